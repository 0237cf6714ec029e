"""A sync ``stream_request`` handler fed from the connection's read loop.

While the caller waits with nothing queued, in-order data replies go to its sync
handler as they arrive (``_delivery.call_direct``). Each test checks that this path
really ran (the handler saw a task other than the caller's) and that it keeps the
queued path's guarantees: order, flow control, stopping, errors, awaitables,
context variables, cancellation and ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from nats.aio.msg import Msg

import natstream
from natstream import (
    STREAM_END,
    Config,
    Pool,
    StreamOptions,
    Subscriber,
)
from natstream._requester import _delivery
from natstream._transport import _tasks
from natstream.server import NatsServer

pytestmark = pytest.mark.fast_paths  # direct calls come from the fast parser

# A small window: an ack every 32 replies, sent from the read loop on direct calls.
SMALL = StreamOptions(window_messages=64, heartbeat=0.2)


@pytest.fixture
async def small_pool(server: NatsServer) -> AsyncIterator[Pool]:
    async with Pool(Config([server.url], idle_per_server=1, stream=SMALL)) as p:
        yield p


def numbered(count: int, delay: float = 0.0):  # type: ignore[no-untyped-def]
    """An index handler: ``count`` replies b"0", b"1", ..., ``delay`` s apart."""

    async def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= count:
            return None, False, None
        if delay and index:
            await asyncio.sleep(delay)
        return str(index).encode(), True, None

    return handler


def called_direct() -> bool:
    """The running handler was called from the connection's read loop (its parser:
    through ``_delivery.call_direct``, or its C twin)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "parse" and code.co_filename.endswith("_parser.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class Seen:
    """Records each reply and whether it was handed over by a direct call; checks
    that the caller's task is the current task either way."""

    def __init__(self) -> None:
        self.caller = asyncio.current_task()
        self.data: list[bytes] = []
        self.direct = 0

    def __call__(self, msg: Msg) -> bool:
        assert asyncio.current_task() is self.caller
        self.data.append(msg.data)
        if called_direct():
            self.direct += 1
        return True


async def test_long_stream_in_order_with_acks_from_the_read_loop(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    # Heartbeats off: nothing but the acks sent on direct calls frees the window.
    options = StreamOptions(window_messages=64, heartbeat=0)
    await subscriber.stream_subscribe_handler(subject, numbered(5000))
    seen = Seen()
    async with Pool(Config([server.url], idle_per_server=1, stream=options)) as pool:
        (nc,) = [s.conn.nc for srv in pool._servers for s in srv.slots if s.conn is not None]
        sent_before = nc.stats["out_msgs"]
        async with asyncio.timeout(30):  # a stall fails the test, not the run
            await pool.stream_request(subject, b"", seen)
        controls = nc.stats["out_msgs"] - sent_before - 1  # all but the request
        assert pool.stats().streams_completed == 1
    assert seen.data == [str(i).encode() for i in range(5000)] + [STREAM_END]
    assert seen.direct > 0
    # An ack per 32 replies, plus at most one per read for having caught up (heartbeats
    # off): never one per reply, although a direct call always catches up.
    assert 5000 // 32 <= controls < 5000 // 5, controls


async def test_ack_for_catching_up_frees_a_responder_blocked_on_bytes(
    subscriber: Subscriber, server: NatsServer, subject: str
) -> None:
    # 16 KiB window, replies of 7,000 and 10,000 bytes in turn, heartbeats off: after
    # a 7,000-byte reply the next cannot fit and half the window is not used up, so
    # only the ack for having caught up (sent once the read is handled) frees it.
    options = StreamOptions(window_messages=64, window_bytes=16 * 1024, heartbeat=0)

    def sized(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= 200:
            return None, False, None
        return bytes([index % 256]) * (7000 if index % 2 else 10_000), True, None

    await subscriber.stream_subscribe_handler(subject, sized)
    seen = Seen()
    async with Pool(Config([server.url], idle_per_server=1, stream=options)) as pool:
        async with asyncio.timeout(30):  # a stall fails the test, not the run
            await pool.stream_request(subject, b"", seen)
    assert [len(d) for d in seen.data[:-1]] == [7000 if i % 2 else 10_000 for i in range(200)]
    assert seen.direct > 0


@pytest.mark.parametrize("how", ["returns False", "raises"])
async def test_a_direct_call_can_end_the_stream(
    subscriber: Subscriber, small_pool: Pool, subject: str, how: str
) -> None:
    handle = await subscriber.stream_subscribe_handler(subject, numbered(10_000))
    seen = Seen()

    def stop_at_300(msg: Msg) -> bool:
        seen(msg)
        if len(seen.data) < 300:
            return True
        if how == "raises":
            raise KeyError("boom")  # reaches the caller
        return False  # ends the stream normally

    if how == "raises":
        with pytest.raises(KeyError, match="boom"):
            await small_pool.stream_request(subject, b"", stop_at_300)
    else:
        await small_pool.stream_request(subject, b"", stop_at_300)
    assert seen.data == [str(i).encode() for i in range(300)]
    assert seen.direct > 0
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert handle.stats().streams_cancelled == 1  # the responder was told
    assert small_pool.stats().streams_in_flight == 0


async def test_awaitable_from_a_direct_call_is_awaited_in_order(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, numbered(2000))
    seen = Seen()
    finished: list[bytes] = []

    async def later(data: bytes) -> bool:
        await asyncio.sleep(0)
        finished.append(data)
        return True

    def sometimes_async(msg: Msg) -> bool | Awaitable[bool]:
        seen(msg)
        if len(seen.data) % 100 == 0:
            return later(msg.data)
        finished.append(msg.data)
        return True

    await small_pool.stream_request(subject, b"", sometimes_async)
    assert finished == [str(i).encode() for i in range(2000)] + [STREAM_END]
    assert seen.direct > 0


async def test_direct_calls_see_the_callers_context_variables(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("r-42")
    await subscriber.stream_subscribe_handler(subject, numbered(1000))
    seen = Seen()
    values: set[str] = set()

    def handler(msg: Msg) -> bool:
        values.add(request_id.get("unset"))
        return seen(msg)

    await small_pool.stream_request(subject, b"", handler)
    assert seen.direct > 0
    assert values == {"r-42"}


async def test_no_direct_call_after_the_caller_is_cancelled(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    handle = await subscriber.stream_subscribe_handler(subject, numbered(100_000))
    seen = Seen()
    calls_at_cancel = -1

    def handler(msg: Msg) -> bool:
        nonlocal calls_at_cancel
        seen(msg)
        # The first direct call after 500 replies cancels the caller: the replies
        # right behind it in the same read must not reach the handler.
        caller = seen.caller
        assert caller is not None
        if calls_at_cancel < 0 and len(seen.data) >= 500 and called_direct():
            caller.cancel()
            calls_at_cancel = len(seen.data)
        return True

    await cancelled_stream(small_pool, subject, seen, handler)
    assert len(seen.data) == calls_at_cancel
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert handle.stats().streams_cancelled == 1


# Heartbeats rare enough that only request_timeout can end the next two tests.
RARE_HEARTBEATS = StreamOptions(window_messages=64, heartbeat=5.0)


@pytest.mark.parametrize("work", ["blocking", "awaitable"])
async def test_request_timeout_on_direct_calls_excludes_handler_time(
    subscriber: Subscriber, server: NatsServer, subject: str, work: str
) -> None:
    # Replies 1 s apart, 0.6 s of work in the handler, 0.8 s allowed: 0.4 s of silence
    # after each call. Counting the handler's time would fail at 0.8 s. The work is
    # done in the call, or by an awaitable it returns (a sync function returning a
    # coroutine: a lambda, an object with an async __call__). (Blocking, it holds up
    # the responder in this loop too: its 1 s sleep still ends before 0.4 s are up.)
    await subscriber.stream_subscribe_handler(subject, numbered(3, delay=1.0))
    seen = Seen()

    def handler(msg: Msg) -> bool | Awaitable[bool]:
        seen(msg)
        if msg.data == STREAM_END:
            return True
        if work == "awaitable":
            return asyncio.sleep(0.6, result=True)
        time.sleep(0.6)  # the handler's own blocking work, not a synchronisation
        return True

    async with Pool(Config([server.url], idle_per_server=1, stream=RARE_HEARTBEATS)) as pool:
        await pool.stream_request_with_timeout(subject, b"", 0.8, None, handler)
    assert seen.data == [b"0", b"1", b"2", STREAM_END]
    assert seen.direct > 0


@pytest.mark.parametrize("swap", ["default", "table", "enter/leave"])
async def test_each_way_of_making_the_caller_current(
    subscriber: Subscriber, small_pool: Pool, subject: str, swap: str, monkeypatch: Any
) -> None:
    # The default for this Python (asyncio's swap or table), and the fallbacks for one
    # without: Seen checks that the caller is the current task in every call.
    ways = {"table": _tasks._call_table, "enter/leave": _tasks._call_enter_leave}
    if swap == "table" and _tasks._table is None:
        pytest.skip("this Python has no table of current tasks")
    if swap != "default":
        monkeypatch.setattr(_delivery, "call_as", ways[swap])
    await subscriber.stream_subscribe_handler(subject, numbered(1000))
    seen = Seen()
    await small_pool.stream_request(subject, b"", seen)
    assert seen.direct > 0
    assert asyncio.current_task() is seen.caller  # and the test's task is current again


async def test_the_handlers_context_is_the_same_for_all_its_calls(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    # A handler keeping per-stream state in a context variable (a span, a counter)
    # sees its own writes whether it was called directly or from the caller's task.
    counter: contextvars.ContextVar[int] = contextvars.ContextVar("counter", default=0)
    await subscriber.stream_subscribe_handler(subject, numbered(2000))
    seen = Seen()
    counts: list[int] = []

    def handler(msg: Msg) -> bool:
        counts.append(counter.get())
        counter.set(counts[-1] + 1)
        return seen(msg)

    await small_pool.stream_request(subject, b"", handler)
    assert seen.direct > 0
    assert counts == list(range(2001))


async def test_a_held_coroutine_is_closed_when_the_caller_is_cancelled(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, numbered(100_000))
    seen = Seen()
    started: list[bool] = []

    async def never_resumed() -> bool:
        started.append(True)
        return True

    coroutines: list[Coroutine[Any, Any, bool]] = []

    def handler(msg: Msg) -> bool | Awaitable[bool]:
        seen(msg)
        if not coroutines and len(seen.data) >= 300 and called_direct():
            # The caller is cancelled (a timeout elsewhere firing) as it gets this.
            assert seen.caller is not None
            seen.caller.cancel()
            coroutines.append(never_resumed())
            return coroutines[0]
        return True

    await cancelled_stream(small_pool, subject, seen, handler)
    assert coroutines
    assert inspect.getcoroutinestate(coroutines[0]) == inspect.CORO_CLOSED  # no warning
    assert not started


async def test_cancelling_the_current_task_in_a_direct_call_cancels_the_caller(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    await subscriber.stream_subscribe_handler(subject, numbered(100_000))
    seen = Seen()

    def handler(msg: Msg) -> bool:
        seen(msg)
        if len(seen.data) >= 300 and called_direct():
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # "stop me": the caller, not the connection's read loop
        return True

    await cancelled_stream(small_pool, subject, seen, handler)
    # The connection is intact: the next stream on it completes at once.
    after = Seen()
    await small_pool.stream_request(subject, b"", lambda msg: len(after.data) < 10 and after(msg))
    assert len(after.data) == 10
    assert small_pool.stats().connections_lost == 0


async def cancelled_stream(
    pool: Pool, subject: str, seen: Seen, handler: Callable[[Msg], object]
) -> None:
    """``stream_request`` with ``handler`` in a task of its own (``seen.caller``),
    which the handler has cancelled by the time it ends (within 30 s)."""

    async def caller() -> None:
        seen.caller = asyncio.current_task()
        await pool.stream_request(subject, b"", handler)  # type: ignore[arg-type]

    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(30):
            await asyncio.ensure_future(caller())
