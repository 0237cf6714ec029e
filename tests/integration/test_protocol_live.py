"""Stream protocol v1 on a real nats-server: flow control, liveness, cancel, resume."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

import natstream
from natstream import Config, Pool, StreamError, StreamOptions, Subscriber
from natstream._transport import subscribe_live
from natstream.server import NatsServer

HB = 0.2
FAST = StreamOptions(heartbeat=HB)


async def test_200mb_to_a_slow_handler_loses_nothing(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    size, count = 100 * 1024, 2000
    filler = b"." * (size - 8)

    def big(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= count:
            return None, False, None
        return index.to_bytes(8, "big") + filler, True, None

    await subscriber.stream_subscribe_handler(subject, big)
    got = 0

    async def slow(msg: Msg) -> bool:
        nonlocal got
        if msg.data == natstream.STREAM_END:
            return True
        assert int.from_bytes(msg.data[:8], "big") == got
        assert len(msg.data) == size
        got += 1
        if got % 100 == 0:
            await asyncio.sleep(0.1)
        return True

    await pool.stream_request(subject, b"", slow)
    assert got == count


async def test_window_bounds_what_the_responder_sends(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    sent = 0

    def counted(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal sent
        sent = index + 1
        return b"x" * 100, index < 10_000, None

    await subscriber.stream_subscribe_handler(subject, counted)
    opts = StreamOptions(window_messages=16, window_bytes=1 << 20, heartbeat=HB)
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        async with pool.stream(subject) as s:
            it = aiter(s)
            await anext(it)
            await asyncio.sleep(0.3)  # the consumer stops taking; the responder must stop too
            # One produced item may wait for credit inside the responder.
            assert sent <= 16 + 2
            for _ in range(100):
                await anext(it)
            await asyncio.sleep(0.3)
            assert sent <= 101 + 16 + 2


async def test_killed_responder_is_detected_and_retry_resumes(
    server: NatsServer, subject: str
) -> None:
    count = 400
    script = str(Path(__file__).with_name("responder_proc.py"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        script,
        server.url,
        subject,
        "q",
        str(count),
        "0.005",
        stdout=asyncio.subprocess.PIPE,
    )
    sub2 = None
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"ready"
        second_started = asyncio.Event()

        async def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
            second_started.set()
            if index >= count:
                return None, False, None
            return str(index).encode(), True, None

        seen: list[bytes] = []
        killed_at = 0.0

        async def on_reply(msg: Msg) -> bool:
            nonlocal killed_at, sub2
            if msg.data.startswith(b"__"):
                return True
            seen.append(msg.data)
            if len(seen) == 100:
                sub2 = await Subscriber.connect([server.url])
                await sub2.stream_subscribe_handler(subject, handler, queue="q")
                proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
            return True

        async with Pool(Config([server.url], idle_per_server=1, stream=FAST)) as pool:
            task = asyncio.create_task(
                pool.stream_request_with_retry(subject, b"", 3, 0.0, on_reply)
            )
            await asyncio.wait_for(second_started.wait(), 10)
            detected = time.monotonic() - killed_at
            await asyncio.wait_for(task, 20)
        assert seen == [str(i).encode() for i in range(count)]
        assert detected < 3 * HB * 2.5, f"stall detected after {detected:.2f} s"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if sub2 is not None:
            await sub2.close()


async def test_requester_that_vanishes_stops_the_responder(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    serving = asyncio.Event()

    async def endless(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index == 5:
            serving.set()
        await asyncio.sleep(0.01)
        return b"x", True, None

    handle = await subscriber.stream_subscribe_handler(subject, endless)
    nc = await nats.connect(server.url)
    inbox = nc.new_inbox()
    await subscribe_live(nc, inbox, _ignore)
    headers = {"Ns-V": "1", "Ns-Win": "1000000 100000000", "Ns-Hb": str(int(HB * 1000))}
    await nc.publish(subject, b"", reply=inbox, headers=headers)
    await nc.flush()
    await asyncio.wait_for(serving.wait(), 5)
    await nc.close()  # no cancel, no heartbeats: as if the process died
    gone_at = time.monotonic()
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert time.monotonic() - gone_at < 3 * HB * 2.5
    # Never heard from: its control messages may not reach us, so the stream ends
    # with an error marker saying so (which nobody reads here), counted as failed.
    assert handle.stats().streams_failed == 1


async def _ignore(msg: Msg) -> None:
    return None


async def test_cancelled_requester_task_stops_the_responder(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    async def endless(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(0.001)
            yield b"x"

    handle = await subscriber.stream_handler(subject, endless)
    receiving = asyncio.Event()
    task = asyncio.create_task(pool.stream_request(subject, b"", lambda m: receiving.set()))
    await asyncio.wait_for(receiving.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(handle.wait_idle(), 2 * HB * 3)


async def test_deadline_reaches_the_handler(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    seen: list[float | None] = []

    def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        seen.append(request.time_remaining())
        return b"x", index < 2, None

    await subscriber.stream_subscribe_handler(subject, handler)
    await pool.stream_request_with_timeout(subject, b"", None, 5.0, lambda m: True)
    assert seen[0] is not None
    assert 4.0 < seen[0] <= 5.0
    await pool.stream_request(subject, b"", lambda m: True)
    assert seen[-1] is None


async def test_responder_ends_stream_at_its_deadline(server: NatsServer, subject: str) -> None:
    sub = await Subscriber.connect([server.url], max_stream_duration=0.3)
    try:

        async def slow(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.05)
            return b"x", True, None

        await sub.stream_subscribe_handler(subject, slow)
        async with Pool(Config([server.url], idle_per_server=1, stream=FAST)) as pool:
            with pytest.raises(StreamError) as info:
                await pool.stream_request(subject, b"", lambda m: True)
        assert info.value.code == 504
        assert not info.value.retryable
    finally:
        await sub.close()


async def test_busy_over_max_concurrent_streams(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    release = asyncio.Event()
    both_running = asyncio.Event()
    running_count = 0

    async def blocked(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal running_count
        running_count += 1
        if running_count == 2:
            both_running.set()
        await release.wait()
        return None, False, None

    handle = await subscriber.stream_subscribe_handler(subject, blocked, max_concurrent_streams=2)
    running = [
        asyncio.create_task(pool.stream_request(subject, b"", lambda m: True)) for _ in range(2)
    ]
    await asyncio.wait_for(both_running.wait(), 5)
    started = time.monotonic()
    with pytest.raises(StreamError) as info:
        await pool.stream_request(subject, b"", lambda m: True)
    assert time.monotonic() - started < 1
    assert info.value.code == 503
    assert info.value.retryable
    release.set()
    await asyncio.gather(*running)
    assert handle.stats().streams_rejected_busy == 1


async def test_two_responders_without_queue_group(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    subs = [await Subscriber.connect([server.url]) for _ in range(2)]
    try:
        handles = []
        for name in (b"A", b"B"):

            def make(tag: bytes):  # type: ignore[no-untyped-def]
                async def gen(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
                    for i in range(50):
                        await asyncio.sleep(0.002)
                        yield tag + str(i).encode()

                return gen

            handles.append(await subs[len(handles)].stream_handler(subject, make(name)))
        async with pool.stream(subject) as s:
            got = [m.data async for m in s]
        tag = got[0][:1]
        assert got == [tag + str(i).encode() for i in range(50)]
        stats = [h.stats() for h in handles]
        assert sorted((st.streams_completed, st.streams_cancelled) for st in stats) == [
            (0, 1),
            (1, 0),
        ]
    finally:
        for s in subs:
            await s.close()


async def test_malformed_control_headers_get_a_clear_error(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, lambda r, i: (None, False, None))
    nc = await nats.connect(server.url)
    try:
        inbox = nc.new_inbox()
        got: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def on(msg: Msg) -> None:
            if not got.done():
                got.set_result(msg)

        await subscribe_live(nc, inbox, on)
        await nc.publish(subject, b"", reply=inbox, headers={"Ns-V": "1", "Ns-Win": "lots"})
        msg = await asyncio.wait_for(got, 5)
        assert msg.data.startswith(natstream.STREAM_ERROR_PREFIX)
        assert msg.headers is not None
        assert msg.headers["Nats-Service-Error-Code"] == "400"
    finally:
        await nc.close()
    # ... and the responder still serves.
    async with Pool(Config([server.url], idle_per_server=1)) as pool:
        await pool.stream_request(subject, b"", lambda m: True)


async def test_resume_off_restarts_from_zero(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    attempts = 0

    def flaky(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal attempts
        if index == 0:
            attempts += 1
        if attempts == 1 and index == 2:
            return None, False, "flaky"
        return str(index).encode(), index < 3, None

    await subscriber.stream_subscribe_handler(subject, flaky)
    opts = StreamOptions(resume=False, heartbeat=HB)
    seen: list[bytes] = []
    async with Pool(Config([server.url], idle_per_server=1, stream=opts)) as pool:
        await pool.stream_request_with_retry(
            subject, b"", 2, 0.0, lambda m: seen.append(m.data) or True
        )
    assert seen == [
        b"0",
        b"1",
        b"__STREAM_ERROR__:flaky",
        b"0",
        b"1",
        b"2",
        b"3",
        b"__STREAM_END__",
    ]


@pytest.mark.fast_paths
@pytest.mark.parametrize("left_in_queue", [0, 1])
async def test_a_responder_whose_flusher_died_still_sends(
    subscriber: Subscriber, server: NatsServer, subject: str, left_in_queue: int
) -> None:
    # nats-py's flusher task ended while the connection is up (a transport error it
    # did not expect), maybe with a wake-up still in its queue: natstream's queued
    # replies must still be written (a stall would raise StalledError here).
    await subscriber.stream_subscribe_handler(subject, _counting(3000))
    nc = subscriber.nc
    flusher = nc._flusher_task
    assert flusher is not None
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    assert nc.is_connected
    for _ in range(left_in_queue):
        nc._flush_queue.put_nowait(asyncio.get_running_loop().create_future())
    got: list[bytes] = []

    def collect(msg: Msg) -> bool:
        got.append(msg.data)
        return True

    options = StreamOptions(window_messages=64, heartbeat=HB)
    async with Pool(Config([server.url], idle_per_server=1, stream=options)) as pool:
        async with asyncio.timeout(20):
            await pool.stream_request(subject, b"", collect)
    assert got[:-1] == [str(i).encode() for i in range(3000)]
    assert got[-1] == natstream.STREAM_END
    assert nc._flush_queue.empty()  # no stale wake-up left to mislead nats-py's publish


def _counting(count: int):  # type: ignore[no-untyped-def]
    def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= count:
            return None, False, None
        return str(index).encode(), True, None

    return handler


@pytest.mark.parametrize("where", ["first reply", "later reply"])
async def test_a_loop_blocked_by_the_callers_own_code_is_not_a_stall(
    server: NatsServer, pool: Pool, subject: str, where: str
) -> None:
    """The caller's sync handler blocks the event loop for longer than the stall limit
    (3 heartbeats) after the responder, in another process, sent everything: the
    replies wait in the socket, and the late timer must let the reader take them
    before it judges the stream. (The responder finishes within 3 heartbeats: a
    requester silent for longer would rightly look gone to it.)"""
    script = str(Path(__file__).with_name("responder_proc.py"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, server.url, subject, "q", "6", str(HB / 10),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        block_at = b"0" if where == "first reply" else b"2"
        seen: list[bytes] = []

        def blocking(msg: Msg) -> bool:
            seen.append(msg.data)
            if msg.data == block_at:
                time.sleep(HB * 5)  # the caller's own blocking work (> 3 heartbeats)
            return True

        await pool.stream_request(subject, b"", blocking)
        assert seen == [b"0", b"1", b"2", b"3", b"4", b"5", natstream.STREAM_END]
    finally:
        proc.kill()
        await proc.wait()


REQUESTER = """
import asyncio, sys
from natstream import Config, Pool, StreamOptions

async def main(url, subject, hb):
    async with Pool(Config([url], stream=StreamOptions(heartbeat=hb))) as pool:
        await pool.stream_request(subject, b"", lambda m: print(m.data.decode()) or True)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


async def test_a_responder_loop_blocked_by_its_own_handler_keeps_a_live_requester(
    server: NatsServer, subject: str
) -> None:
    """The responder's sync handler blocks its event loop past its requester-gone limit
    (here 1.5 heartbeats) while the requester, in another process, keeps sending
    heartbeats (and, with 3 heartbeats, still waits): they sit in the socket, and the
    late timer must let the reader take them before it judges the requester gone."""
    hb = 0.4

    async def blocking(request: natstream.StreamRequest) -> AsyncIterator[bytes]:
        for index in range(6):
            if index == 2:
                time.sleep(hb * 2.25)  # noqa: ASYNC251 - blocks the loop on purpose
            yield str(index).encode()
            await asyncio.sleep(hb / 4)

    async with Subscriber([server.url], stall_factor=1.5) as sub:
        await sub.stream_handler(subject, blocking)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", REQUESTER, server.url, subject, str(hb),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["0", "1", "2", "3", "4", "5", "__STREAM_END__"]
