"""Packed batches on a real nats-server: many items per NATS message, one per handler call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
from nats.aio.msg import Msg

import natstream
from natstream import STREAM_END, Config, Pool, StreamOptions, Subscriber
from natstream._protocol._wire import unpack_items
from natstream._transport import subscribe_live
from natstream.server import NatsServer

V1 = {"Ns-V": "1", "Ns-Hb": "0"}


def item(b: int, j: int) -> bytes:
    return f"{b}-{j}|".encode() * (j % 7)  # sizes vary, some items are empty


def data_into(seen: list[bytes]) -> Callable[[Msg], bool]:
    """A requester handler that keeps data replies in ``seen`` and skips the markers."""

    def take(msg: Msg) -> bool:
        if not msg.data.startswith(b"__STREAM_"):
            seen.append(msg.data)
        return True

    return take


async def test_batches_arrive_whole_and_in_order(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [item(b, j) for j in range(500)], b < 199, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    seen: list[bytes] = []
    await pool.stream_request(subject, b"", lambda m: seen.append(m.data) or True)
    assert seen == [item(b, j) for b in range(200) for j in range(500)] + [STREAM_END]


async def test_packs_stay_under_max_payload(
    subscriber: Subscriber, pool: Pool, subject: str, server: NatsServer
) -> None:
    big = 400 * 1024  # max_payload is 1 MiB: at most two of these per message

    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [bytes([j]) * big for j in range(5)], b < 3, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    seen: list[bytes] = []
    await pool.stream_request(subject, b"", lambda m: seen.append(m.data) or True)
    assert seen[:-1] == [bytes([j]) * big for _ in range(4) for j in range(5)]


async def raw_stream(
    nc: nats.NATS, subject: str, headers: dict[str, str] | None, count: int
) -> list[Msg]:
    """Request with raw nats-py and collect ``count`` replies (no acks sent)."""
    got: list[Msg] = []
    done = asyncio.Event()

    async def on(msg: Msg) -> None:
        got.append(msg)
        if len(got) >= count:
            done.set()

    inbox = nc.new_inbox()
    sub = await subscribe_live(nc, inbox, on)
    await nc.publish(subject, b"", reply=inbox, headers=headers)
    await asyncio.wait_for(done.wait(), 10)
    await sub.unsubscribe()
    return got


async def test_wire_format_and_window(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    """A requester granting 16 items gets them packed (Ns-Seq first item, Ns-Pack
    count, Ns-Pos first position), after the accept, and nothing beyond the window
    until it acks."""

    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [b"%d.%d" % (b, j) for j in range(10)], True, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    nc = await nats.connect(server.url)
    try:
        headers = {**V1, "Ns-Win": "16 1000000", "Ns-Pack": "1"}
        accept, *got = await raw_stream(nc, subject, headers, 3)
        await asyncio.sleep(0.3)  # anything past the window would arrive meanwhile
        assert accept.headers == {"Ns-Ctl": "hb", "Ns-Seq": "0"}
        items: list[bytes] = []
        for msg in got:
            assert msg.headers is not None
            assert int(msg.headers["Ns-Seq"]) == len(items) + 1
            count = int(msg.headers["Ns-Pack"])
            b, j = divmod(len(items), 10)
            assert msg.headers["Ns-Pos"] == f"{b}.{j}"
            unpacked = unpack_items(msg.data, count)
            assert unpacked is not None
            items.extend(unpacked)
        assert items == [b"%d.%d" % divmod(i, 10) for i in range(16)]
    finally:
        await nc.close()


@pytest.mark.parametrize("headers", [None, {**V1, "Ns-Win": "100 1000000"}])
async def test_requesters_that_do_not_unpack_get_one_message_per_item(
    subscriber: Subscriber, server: NatsServer, subject: str, headers: dict[str, str] | None
) -> None:
    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [b"%d.%d" % (b, j) for j in range(3)], b < 1, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    nc = await nats.connect(server.url)
    try:
        got = await raw_stream(nc, subject, headers, 7 if headers is None else 8)
    finally:
        await nc.close()
    if headers is not None:  # a v1 requester: the accept comes first
        assert got.pop(0).headers == {"Ns-Ctl": "hb", "Ns-Seq": "0"}
    assert [m.data for m in got] == [b"0.0", b"0.1", b"0.2", b"1.0", b"1.1", b"1.2", STREAM_END]
    assert all(m.headers is None or "Ns-Pack" not in m.headers for m in got)


async def test_retry_resumes_inside_the_batches_without_gap_or_duplicate(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    calls: list[int] = []

    def flaky(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        calls.append(b)
        if b == 5 and calls.count(5) == 1:
            return [], False, "flaky"
        return [item(b, j) for j in range(100)], b < 9, None

    await subscriber.batch_stream_subscribe_handler(subject, flaky)
    seen: list[bytes] = []

    opts = StreamOptions(heartbeat=0.2, window_messages=64)
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        await pool.stream_request_with_retry(subject, b"", 2, 0.0, data_into(seen))
    assert seen == [item(b, j) for b in range(10) for j in range(100)]
    # The retry resumes after item 4.99: batch 4 is asked for again and skipped whole.
    assert calls == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9]


async def test_consumer_stopping_inside_a_pack_resumes_there(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    """The retry's resume point is the last item the caller took, even in mid-pack."""

    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [item(b, j) for j in range(50)], b < 3, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    async with Pool(Config([server.url], idle_per_server=1)) as pool:
        async with pool.stream(subject) as s:
            taken: list[bytes] = []
            async for m in s:
                taken.append(m.data)
                if len(taken) == 73:
                    break
            assert s._session.attempt is not None
            point = s._session.attempt.machine.resume_point()
    assert taken == [item(b, j) for b in range(4) for j in range(50)][:73]
    # Iteration counts a message as taken when the next one is asked for: 72 here.
    assert point == natstream.Resume(72, "1.21")


async def test_index_handler_opt_in_packing_with_a_retry(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    """pack=True: consecutive results go out together; a retry resumes at the index
    after the last one taken, also when indices were skipped (positions kept)."""
    failed = False

    def numbers(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal failed
        if index == 3001 and not failed:
            failed = True
            return None, False, "flaky"
        if index % 10 == 3:
            return None, True, None  # skipped indices break a pack's positions
        return str(index).encode(), index < 5000, None

    await subscriber.stream_subscribe_handler(subject, numbers, pack=True)
    seen: list[bytes] = []

    opts = StreamOptions(heartbeat=0.2, window_messages=500)
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        await pool.stream_request_with_retry(subject, b"", 1, 0.0, data_into(seen))
    assert failed
    assert seen == [str(i).encode() for i in range(5001) if i % 10 != 3]


async def test_generator_lists_are_sent_together_and_resumed_inside(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    runs = 0

    async def lists(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        nonlocal runs
        runs += 1
        for b in range(30):
            if runs == 1 and b == 12:
                raise natstream.StreamError("flaky", code=503, retryable=True)
            yield [item(b, j) for j in range(40)]
        yield b"last"

    await subscriber.stream_handler(subject, lists)
    seen: list[bytes] = []

    opts = StreamOptions(heartbeat=0.2, window_messages=100)  # packs end mid-list
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        await pool.stream_request_with_retry(subject, b"", 1, 0.0, data_into(seen))
    assert runs == 2
    assert seen == [item(b, j) for b in range(30) for j in range(40)] + [b"last"]


@pytest.mark.parametrize("stop", ["false", "raise"])
@pytest.mark.parametrize("window", [(64, 3000), (4096, 8 << 20)])
async def test_sync_handler_returning_awaitables_and_stopping_inside_a_pack(
    subscriber: Subscriber, server: NatsServer, subject: str, stop: str, window: tuple[int, int]
) -> None:
    """Items are counted exactly once across awaitable results, small windows (an
    ack run ends every few items, by count or by bytes) and a stop in mid-pack:
    the item that stops the stream is taken but not counted. With the large window
    every batch is one pack (items 1,500 to 1,599 for the stop)."""
    expected = [item(b, j) for b in range(20) for j in range(100)]

    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return expected[100 * b : 100 * b + 100], b < 19, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    taken: list[bytes] = []
    awaited = 0
    opts = StreamOptions(heartbeat=0.2, window_messages=window[0], window_bytes=window[1])
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        async with pool.stream(subject) as s:

            async def later() -> None:
                nonlocal awaited
                await asyncio.sleep(0)
                awaited += 1

            def handler(msg: Msg) -> object:
                taken.append(msg.data)
                if len(taken) == 1550:
                    if stop == "raise":
                        raise LookupError("handler failed")
                    return False
                return later() if len(taken) % 17 == 0 else True

            attempt = s._session.attempt
            assert attempt is not None
            if stop == "raise":
                with pytest.raises(LookupError):
                    await s.run_handler(handler)
            else:
                await s.run_handler(handler)
    assert taken == expected[:1550]
    assert awaited == 1549 // 17
    assert attempt.machine.delivered_seq == 1549
    assert attempt.machine.delivered_bytes == sum(map(len, expected[:1549]))


@pytest.mark.fast_paths
async def test_header_less_messages_are_full_msgs_of_one_class_per_connection(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    """Fast-path replies and packed items: ``Msg`` instances with the inbox as subject,
    the responder's control subject as reply and no headers; their class is the
    connection's (not one per stream), and a field set on one message stays on it.
    (A stream's first reply binds the responder: it comes the general way.)"""
    await subscriber.stream_subscribe_handler(subject, lambda r, i: (b"%d" % i, i < 2, None))
    await subscriber.batch_stream_subscribe_handler(
        subject + ".b", lambda r, b: ([b"p", b"q"], b < 1, None)
    )
    got: list[tuple[str, Msg, str, str]] = []
    async with Pool(Config([server.url], idle_per_server=1)) as pool:
        for subj in (subject, subject, subject + ".b"):
            async with pool.stream(subj) as s:
                async for m in s:
                    attempt = s._session.attempt
                    assert attempt is not None
                    got.append((subj, m, attempt.inbox, attempt.machine.control_subject))
    assert [m.data for _, m, _, _ in got] == [b"0", b"1", b"2"] * 2 + [b"p", b"q"] * 2
    light = [g for g in got if type(g[1]) is not Msg]
    assert [m.data for _, m, _, _ in light] == [b"1", b"2"] * 2 + [b"p", b"q"] * 2
    assert len({type(m) for _, m, _, _ in light}) == 1
    for _, m, inbox, control in light:
        assert isinstance(m, Msg)
        assert (m.subject, m.reply, m.headers) == (inbox, control, None)
        assert m._client is not None
    first, second = light[0][1], light[1][1]
    first.subject = "changed"
    assert second.subject == light[1][2]
    assert len({inbox for _, _, inbox, _ in light}) == 3
