"""The seed's API end to end against a real nats-server."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

import natstream
from natstream import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Config,
    NoRespondersError,
    Pool,
    RequestTimeoutError,
    StreamError,
    StreamTimeoutError,
    Subscriber,
)
from natstream._transport import FastClient, subscribe_live
from natstream.server import NatsServer


def seed_handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
    if index >= 10:
        return None, False, None
    return f"响应_{index}".encode(), True, None


class Collect:
    """A requester handler that records what it sees."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def __call__(self, msg: Msg) -> bool:
        self.data.append(msg.data)
        return True


async def test_seed_basic_stream(subscriber: Subscriber, pool: Pool, subject: str) -> None:
    await subscriber.stream_subscribe_handler(subject, seed_handler)
    seen = Collect()
    await pool.stream_request(subject, "请求数据".encode(), seen)
    assert seen.data == [f"响应_{i}".encode() for i in range(10)] + [STREAM_END]


async def test_async_handlers_on_both_sides(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    async def responder(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        if index == 3:
            return None, False, None
        return request.data + str(index).encode(), True, None

    await subscriber.stream_subscribe_handler(subject, responder)
    seen: list[bytes] = []

    async def handler(msg: Msg) -> bool:
        await asyncio.sleep(0)
        seen.append(msg.data)
        return True

    await pool.stream_request(subject, b"q", handler)
    assert seen == [b"q0", b"q1", b"q2", STREAM_END]


async def test_error_marker_raises_after_handler_saw_it(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    def responder(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index == 3:
            return None, False, "database unavailable"
        return b"row", True, None

    await subscriber.stream_subscribe_handler(subject, responder)
    seen = Collect()
    with pytest.raises(StreamError) as info:
        await pool.stream_request(subject, b"", seen)
    assert "database unavailable" in str(info.value)
    assert info.value.message == "database unavailable"
    assert seen.data == [b"row"] * 3 + [STREAM_ERROR_PREFIX + b"database unavailable"]


async def test_handler_false_stops_early_and_responder_stops(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    calls = 0

    async def endless(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls = index + 1
        await asyncio.sleep(0.001)
        return b"tick", True, None

    handle = await subscriber.stream_subscribe_handler(subject, endless)
    seen = Collect()

    def stop_after_five(msg: Msg) -> bool:
        seen(msg)
        return len(seen.data) < 5

    await pool.stream_request(subject, b"", stop_after_five)
    assert seen.data == [b"tick"] * 5
    await asyncio.wait_for(handle.wait_idle(), 2)
    stopped_at = calls
    await asyncio.sleep(0.1)
    assert calls == stopped_at
    assert handle.stats().streams_cancelled == 1


async def test_batch_handler(subscriber: Subscriber, pool: Pool, subject: str) -> None:
    def batches(request: natstream.StreamRequest, b: int):  # type: ignore[no-untyped-def]
        return [f"{b}-{j}".encode() for j in range(3)], b < 2, None

    await subscriber.batch_stream_subscribe_handler(subject, batches)
    seen = Collect()
    await pool.stream_request(subject, b"", seen)
    assert seen.data == [f"{b}-{j}".encode() for b in range(3) for j in range(3)] + [STREAM_END]


async def test_generator_handler_and_exception(
    subscriber: Subscriber, pool: Pool, subject: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def gen(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        yield b"a"
        yield b"b"
        if request.data == b"boom":
            raise RuntimeError("secret internal detail")

    await subscriber.stream_handler(subject, gen)
    async with pool.stream(subject, b"ok") as s:
        assert [m.data async for m in s] == [b"a", b"b"]
    caplog.set_level(logging.ERROR, logger="natstream")
    with pytest.raises(StreamError) as info:
        await pool.stream_request(subject, b"boom", lambda m: True)
    text = str(info.value)
    assert "secret internal detail" not in text
    assert "error id" in text
    error_id = text.rsplit("error id ", 1)[1].rstrip(")")
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert info.value.retryable is False
    # The responder still serves.
    async with pool.stream(subject, b"again") as s:
        assert [m.data async for m in s] == [b"a", b"b"]


async def test_silent_responder_request_timeout(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    nc = await nats.connect(server.url)
    try:
        await subscribe_live(nc, subject, _ignore)  # takes the request, never answers
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            await pool.stream_request_with_timeout(subject, b"", 0.3, None, Collect())
        assert isinstance(info.value, TimeoutError)
        assert 0.25 < time.monotonic() - started < 3
    finally:
        await nc.close()


async def _ignore(msg: Msg) -> None:
    return None


async def test_endless_stream_stream_timeout(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    async def endless(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.005)
        return b"x", True, None

    await subscriber.stream_subscribe_handler(subject, endless)
    seen = Collect()
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError) as info:
        await pool.stream_request_with_timeout(subject, b"", 1.0, 0.5, seen)
    assert isinstance(info.value, TimeoutError)
    assert not isinstance(info.value, RequestTimeoutError)
    assert 0.45 < time.monotonic() - started < 3
    assert len(seen.data) > 5


async def test_request_timeout_excludes_handler_time(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, seed_handler)

    async def slow(msg: Msg) -> bool:
        await asyncio.sleep(0.1)  # the handler's own work: 1 s in total
        return True

    await pool.stream_request_with_timeout(subject, b"", 0.3, None, slow)


async def test_no_responders_is_immediate(pool: Pool, subject: str) -> None:
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await pool.stream_request(subject, b"", Collect())
    assert time.monotonic() - started < 1.0


async def test_retry_recovers_without_duplicates(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    requests = 0

    def flaky(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal requests
        if index == 0 or (request.resume is not None and index == int(request.resume.pos) + 1):
            requests += 1
        if index >= 10:
            return None, False, None
        if requests <= 2 and index in (3, 6):
            return None, False, "temporarily unavailable"
        return f"item-{index}".encode(), True, None

    await subscriber.stream_subscribe_handler(subject, flaky)
    seen: list[bytes] = []

    def handler(msg: Msg) -> bool:
        if not msg.data.startswith(STREAM_ERROR_PREFIX):
            seen.append(msg.data)
        return True

    await pool.stream_request_with_retry(subject, b"", 3, 0.05, handler)
    assert seen == [f"item-{i}".encode() for i in range(10)] + [STREAM_END]
    assert requests == 3


async def test_retry_exhausted_raises_last_error(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    attempts = 0

    def broken(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        return None, False, f"down #{attempts}"

    await subscriber.stream_subscribe_handler(subject, broken)
    with pytest.raises(StreamError) as info:
        await pool.stream_request_with_retry(subject, b"", 2, 0.01, Collect())
    assert attempts == 3
    assert "down #3" in str(info.value)


async def test_our_pool_with_a_plain_responder(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    nc = await nats.connect(server.url)

    async def plain(msg: Msg) -> None:
        for i in range(5):
            await nc.publish(msg.reply, f"p{i}".encode())
        if msg.data == b"fail":
            await nc.publish(msg.reply, b"__STREAM_ERROR__:plain failure")
        else:
            await nc.publish(msg.reply, b"__STREAM_END__")

    try:
        await subscribe_live(nc, subject, plain)
        seen = Collect()
        await pool.stream_request(subject, b"", seen)
        assert seen.data == [f"p{i}".encode() for i in range(5)] + [STREAM_END]
        with pytest.raises(StreamError) as info:
            await pool.stream_request(subject, b"fail", Collect())
        assert info.value.message == "plain failure"
        assert info.value.retryable
    finally:
        await nc.close()


async def test_plain_requester_with_our_subscriber(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, seed_handler)
    nc = await nats.connect(server.url)
    try:
        inbox = nc.new_inbox()
        got: list[Msg] = []
        done = asyncio.Event()

        async def on_reply(msg: Msg) -> None:
            got.append(msg)
            if msg.data == b"__STREAM_END__" or msg.data.startswith(b"__STREAM_ERROR__"):
                done.set()

        await nc.subscribe(inbox, cb=on_reply)
        await nc.publish(subject, b"plain request", reply=inbox)
        async with asyncio.timeout(5):
            await done.wait()
        assert [m.data for m in got] == [f"响应_{i}".encode() for i in range(10)] + [STREAM_END]
        assert all(not m.headers for m in got)
    finally:
        await nc.close()


async def test_200_concurrent_streams_of_100(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    # Default heartbeats (1 s), not the short ones of the other tests: 200 streams on
    # one loop with the responder, on a loaded machine and on nats-py's slower paths
    # (NATSTREAM_NO_FAST_PATHS), may delay the first control message past 3 x 0.2 s,
    # which a responder rightly takes for a requester that cannot reach it.
    def hundred(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= 100:
            return None, False, None
        return request.data + b":" + str(index).encode(), True, None

    await subscriber.stream_subscribe_handler(subject, hundred)

    async def one(pool: Pool, n: int) -> list[bytes]:
        async with pool.stream(subject, str(n).encode()) as s:
            return [m.data async for m in s]

    async with Pool(Config([server.url], idle_per_server=2)) as pool:
        results = await asyncio.gather(*(one(pool, n) for n in range(200)))
        for n, data in enumerate(results):
            assert data == [f"{n}:{i}".encode() for i in range(100)]
        stats = pool.stats()
        assert stats.streams_completed >= 200
        assert stats.streams_in_flight == 0


async def test_pool_with_a_dead_server_listed(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    from natstream.server import free_port

    dead = f"nats://127.0.0.1:{free_port()}"
    await subscriber.stream_subscribe_handler(subject, seed_handler)
    config = Config([dead, server.url], idle_per_server=2, connect_timeout=0.5)
    async with Pool(config) as pool:
        for _ in range(10):
            seen = Collect()
            await pool.stream_request(subject, b"", seen)
            assert len(seen.data) == 11
        stats = pool.stats()
        assert [s.healthy for s in stats.servers] == [0, 2]


async def test_pool_connect_fails_fast_naming_servers() -> None:
    from natstream.server import free_port

    urls = [f"nats://127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(natstream.NoServersError) as info:
        await Pool.connect(Config(urls, idle_per_server=1, connect_timeout=0.5))
    assert time.monotonic() - started < 5
    for url in urls:
        assert url in str(info.value)


async def test_iterator_left_early_stops_responder(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    async def endless(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        i = 0
        while True:
            yield str(i).encode()
            i += 1
            await asyncio.sleep(0.001)

    handle = await subscriber.stream_handler(subject, endless)
    async with pool.stream(subject) as s:
        got = []
        async for msg in s:
            got.append(msg.data)
            if len(got) == 20:
                break
    assert got == [str(i).encode() for i in range(20)]
    await asyncio.wait_for(handle.wait_idle(), 2)
    assert handle.stats().streams_cancelled == 1


async def test_subscription_is_live_when_subscribe_returns(server: NatsServer, pool: Pool) -> None:
    sub = await Subscriber.connect([server.url])
    try:
        for i in range(300):
            handle = await sub.stream_subscribe_handler(f"live.{i}", seed_handler)
            seen = Collect()
            await pool.stream_request(f"live.{i}", b"", seen)
            assert len(seen.data) == 11
            await handle.stop()
    finally:
        await sub.close()


async def test_closed_pool_refuses(server: NatsServer) -> None:
    pool = await Pool.connect(Config([server.url], idle_per_server=1))
    await pool.close()
    with pytest.raises(natstream.PoolClosedError):
        await pool.stream_request("a.b", b"", Collect())
    await pool.close()  # idempotent


@pytest.mark.parametrize("bad", ["", "a b", "a.*", "a.>", "a..b", ".a"])
async def test_bad_request_subjects(pool: Pool, bad: str) -> None:
    with pytest.raises(natstream.InvalidSubjectError):
        await pool.stream_request(bad, b"", Collect())


async def test_a_stream_error_raised_by_a_handler_is_sent_as_it_is(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    async def gen(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        yield b"a"
        raise StreamError("out of stock", code=409, retryable=False)

    await subscriber.stream_handler(subject, gen)
    with pytest.raises(StreamError) as caught:
        await pool.stream_request(subject, b"", lambda m: True)
    assert (caught.value.message, caught.value.code, caught.value.retryable) == (
        "out of stock",
        409,
        False,
    )


async def test_windows_of_a_pool_share_a_budget(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    """Many concurrent streams must not let nats-server see a slow consumer: the
    windows granted by a pool add up to its budget (plus a small minimum per
    stream), and come back when the streams end."""
    from natstream._pool._model import MIN_STREAM_BYTES, MIN_STREAM_MESSAGES

    await subscriber.stream_subscribe_handler(subject, lambda r, i: (b"x", True, None))
    async with Pool(Config([server.url], idle_per_server=2)) as pool:
        streams = [pool.stream(subject) for _ in range(40)]
        for s in streams:
            await s.__aenter__()
        windows = [s._session.attempt.machine.window_bytes for s in streams]  # type: ignore[union-attr]
        messages = [s._session.attempt.machine.window_messages for s in streams]  # type: ignore[union-attr]
        assert messages[:4] == [16_384, 8_192, 4_096, 2_048]
        assert min(messages) == MIN_STREAM_MESSAGES == 128
        assert windows[0] == 8 << 20
        assert sum(windows) <= pool.config.window_budget_bytes + 40 * MIN_STREAM_BYTES
        assert min(windows) == MIN_STREAM_BYTES
        for s in streams:
            await s.aclose()
        async with pool.stream(subject) as again:
            assert again._session.attempt is not None
            assert again._session.attempt.machine.window_bytes == 8 << 20


async def test_a_stream_alone_may_have_the_whole_budget_which_is_configurable(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, lambda r, i: (b"x", True, None))
    big = natstream.StreamOptions(window_messages=65_536, window_bytes=1 << 30)
    for budget, expected in [
        ((32_768, 32 << 20), (32_768, 32 << 20)),
        ((1 << 20, 2 << 30), (65_536, 1 << 30)),
    ]:
        config = Config(
            [server.url],
            idle_per_server=1,
            stream=big,
            window_budget_messages=budget[0],
            window_budget_bytes=budget[1],
        )
        async with Pool(config) as pool, pool.stream(subject) as s:
            assert s._session.attempt is not None
            m = s._session.attempt.machine
            assert (m.window_messages, m.window_bytes) == expected
    with pytest.raises(natstream.ConfigError):
        Config([server.url], window_budget_messages=0)


@pytest.mark.fast_paths
async def test_a_timed_out_round_trip_does_not_stop_the_connection(server: NatsServer) -> None:
    """nats-py resolves a cancelled PING future when its PONG comes late, which ended
    its read loop: the connection looked connected and delivered nothing more."""
    from natstream._transport import connect

    nc = await connect([server.url], {}, allow_reconnect=False)
    try:
        got = asyncio.Event()

        async def on(msg: Msg) -> None:
            got.set()

        await subscribe_live(nc, "probe", on)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await nc.rtt()
        await nc.flush()  # the late PONG has been read by now
        await nc.publish("probe", b"x")
        await asyncio.wait_for(got.wait(), 5)
    finally:
        await nc.close()


@pytest.mark.parametrize("fails", [False, True])
async def test_the_first_reply_sent_from_the_request_dispatch(
    subscriber: Subscriber, pool: Pool, subject: str, fails: bool
) -> None:
    """A sync index handler's first call runs as the request arrives; what it returns
    or raises reaches the requester as from any other call."""
    calls: list[int] = []

    def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        calls.append(index)
        if fails:
            raise RuntimeError("no")
        return b"only", False, None

    await subscriber.stream_subscribe_handler(subject, handler)
    seen = Collect()
    if fails:
        with pytest.raises(StreamError, match="internal error"):
            await pool.stream_request(subject, b"", seen)
        assert seen.data[-1].startswith(STREAM_ERROR_PREFIX)
    else:
        await pool.stream_request(subject, b"", seen)
        assert seen.data == [b"only", STREAM_END]
    assert calls == [0]


@pytest.mark.fast_paths
@pytest.mark.parametrize("first", [b"only", None])
async def test_streams_finished_in_the_request_dispatch(
    subscriber: Subscriber,
    pool: Pool,
    subject: str,
    server: NatsServer,
    first: bytes | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync index handler whose first call says "no more" is finished as the request
    arrives (reply and end marker queued together, no task): requesters see the same
    stream, plain requesters included, and the subscription counts it as completed."""

    from natstream._responder._stream import ResponderStream

    runs = 0
    run = ResponderStream.run

    async def counted(self: ResponderStream) -> None:
        nonlocal runs
        runs += 1
        await run(self)

    monkeypatch.setattr(ResponderStream, "run", counted)

    def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        return first, False, None

    handle = await subscriber.stream_subscribe_handler(subject, handler)
    for _ in range(20):
        seen = Collect()
        await pool.stream_request(subject, b"", seen)
        assert seen.data == ([first] if first else []) + [STREAM_END]
    assert runs == 0
    nc = await nats.connect(server.url)
    try:
        plain = await nc.request(subject, b"", timeout=5)  # no headers: the task's way
    finally:
        await nc.close()
    assert plain.data == (first or STREAM_END)
    assert runs == 1
    stats = handle.stats()
    assert (stats.streams_active, stats.streams_started, stats.streams_completed) == (0, 21, 21)
    assert stats.replies_sent == (21 if first else 0)


async def test_a_more_flag_without_a_truth_value_fails_the_stream_not_the_subscription(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    """``more`` is read in the request dispatch: one that cannot be read as a bool
    fails that stream (a 500, as any handler error) and frees its slot."""

    class Ambiguous:
        def __bool__(self) -> bool:
            raise ValueError("the truth value is ambiguous")

    handle = await subscriber.stream_subscribe_handler(
        subject, lambda r, i: (b"x", Ambiguous(), None)
    )
    async with asyncio.timeout(20):  # a leaked stream would stall the requester instead
        for _ in range(3):
            with pytest.raises(StreamError, match="internal error"):
                await pool.stream_request(subject, b"", Collect())
    stats = handle.stats()
    assert (stats.streams_active, stats.streams_failed) == (0, 3)


@pytest.mark.fast_paths
async def test_the_request_is_on_the_socket_when_the_stream_is_open(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    """The request is written as the stream opens, not at the flusher's next turn."""
    await subscriber.stream_subscribe_handler(subject, lambda r, i: (b"x", False, None))
    async with pool.stream(subject) as s:
        assert s._session.attempt is not None
        nc = s._session.attempt.link
        assert (nc._pending, nc._pending_data_size) == ([], 0)
        assert [m.data async for m in s] == [b"x"]


@pytest.mark.fast_paths
async def test_write_now_leaves_to_the_flusher_what_it_must(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct writes only on a TCP transport with nothing waiting for the socket: a
    WebSocket transport sends only when drained, and a backlog keeps the flusher's
    back-pressure (it waits for the socket to drain)."""
    from types import SimpleNamespace

    async with Pool(Config([server.url], idle_per_server=1)) as pool:
        nc = pool._conns.slots[0].conn.nc  # type: ignore[union-attr]
        assert isinstance(nc, FastClient)
        assert nc.queue_publish("a.b", "", b"x", None)
        assert nc.write_now()
        assert (nc._pending, nc._pending_data_size) == ([], 0)
        assert nc.write_now()  # nothing queued: nothing left for the flusher

        socket = nc._transport._io_writer.transport  # type: ignore[union-attr]
        monkeypatch.setattr(socket, "get_write_buffer_size", lambda: 1)
        assert nc.queue_publish("a.b", "", b"y", None)
        assert not nc.write_now()
        assert len(nc._pending) == 1
        monkeypatch.undo()

        transport = nc._transport
        monkeypatch.setattr(nc, "_transport", SimpleNamespace())  # no _io_writer: not TCP
        assert not nc.write_now()
        assert len(nc._pending) == 1
        monkeypatch.setattr(nc, "_transport", transport)
        assert nc.write_now()
        await nc.flush()


@pytest.mark.fast_paths
@pytest.mark.parametrize("busy", [False, True])
async def test_a_reply_queued_in_the_read_is_written_at_its_end(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch, busy: bool
) -> None:
    """A handler the parser calls queues a reply and kicks: the flusher is not woken
    for it, the parser writes it when the read is done; with the socket busy, the
    parser kicks the flusher then, which writes it."""
    async with Pool(Config([server.url], idle_per_server=1)) as pool:
        nc = pool._conns.slots[0].conn.nc  # type: ignore[union-attr]
        assert isinstance(nc, FastClient)
        seen: list[tuple[bool, bool]] = []  # (write held for the read's end, flusher idle)

        def echo(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
            assert nc.queue_publish(reply.decode(), "", data, None)
            nc.kick_soon()
            queue = nc._flush_queue
            seen.append((nc.write_soon, queue is not None and queue.empty()))
            return False

        listening = await nc.listen("t.echo", echo, lambda msg: None)
        await nc.flush()
        if busy:
            socket = nc._transport._io_writer.transport  # type: ignore[union-attr]
            monkeypatch.setattr(socket, "get_write_buffer_size", lambda: 1)
        other = await nats.connect(server.url)
        try:
            # Well under the health check's interval, whose PING would flush it too.
            reply = await other.request("t.echo", b"hi", timeout=1)
        finally:
            await other.close()
        assert reply.data == b"hi"
        assert seen == [(True, True)]
        assert (nc.parsing, nc.write_soon) == (False, False)
        await listening.close()


async def test_a_stream_is_iterated_inside_its_block(pool: Pool, subject: str) -> None:
    """Outside ``async with`` nothing would end the stream after a ``break``."""
    with pytest.raises(TypeError, match="async with"):
        async for _msg in pool.stream(subject):
            pass


@pytest.mark.parametrize("kind", ["index", "generator"])
async def test_finished_streams_leave_nothing_to_the_garbage_collector(
    subscriber: Subscriber, pool: Pool, subject: str, kind: str
) -> None:
    """A stream's objects on both sides are freed by reference counting when it ends,
    not left in reference cycles for the collector (which would pause the loop every
    few dozen streams)."""

    def one(request: natstream.StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        return (b"x", True, None) if index == 0 else (None, False, None)

    async def gen(request: natstream.StreamRequest) -> AsyncIterator[bytes]:
        yield b"x"

    if kind == "index":
        await subscriber.stream_subscribe_handler(subject, one)
    else:
        await subscriber.stream_handler(subject, gen)
    for _ in range(3):  # warm up: first-use caches, the connection's buffers
        await pool.stream_request(subject, b"", lambda m: True)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            await pool.stream_request(subject, b"", lambda m: True)
        await asyncio.sleep(0)  # let the finished streams' last callbacks run
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 50, f"{left} objects in reference cycles after 50 streams"


async def test_run_handler_without_markers_sees_data_replies_only(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    def three_then(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index < 3:
            return b"__STREAM_END__" if index == 1 else b"%d" % index, True, None
        return None, False, "boom" if request.data == b"fail" else None

    await subscriber.stream_subscribe_handler(subject, three_then)
    seen: list[bytes] = []
    await pool.stream(subject, b"").run_handler(lambda m: seen.append(m.data), markers=False)
    # A data reply whose payload reads like the end marker is data, and is seen.
    assert seen == [b"0", b"__STREAM_END__", b"2"]
    seen.clear()
    with pytest.raises(natstream.StreamError, match="boom"):
        await pool.stream(subject, b"fail").run_handler(seen.append, markers=False)
    assert [bytes(d.data) for d in seen] == [b"0", b"__STREAM_END__", b"2"]
