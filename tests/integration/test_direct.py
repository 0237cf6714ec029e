"""A sync ``stream_request`` handler fed from the connection's read loop.

While the caller waits with nothing queued, in-order data replies go to its sync
handler as they arrive (``_Attempt._call_direct``). Each test checks that this path
really ran (the handler saw a task other than the caller's) and that it keeps the
queued path's guarantees: order, flow control, stopping, errors, awaitables,
context variables, cancellation and ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable

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
from natstream.server import NatsServer

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


class Seen:
    """Records each reply and whether it came outside the caller's task."""

    def __init__(self) -> None:
        self.caller = asyncio.current_task()
        self.data: list[bytes] = []
        self.direct = 0

    def __call__(self, msg: Msg) -> bool:
        self.data.append(msg.data)
        if asyncio.current_task() is not self.caller:
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
        await asyncio.wait_for(pool.stream_request(subject, b"", seen), 30)
        assert pool.stats().streams_completed == 1
    assert seen.data == [str(i).encode() for i in range(5000)] + [STREAM_END]
    assert seen.direct > 0


async def test_false_from_a_direct_call_stops_the_stream(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    handle = await subscriber.stream_subscribe_handler(subject, numbered(10_000))
    seen = Seen()

    def stop_at_300(msg: Msg) -> bool:
        seen(msg)
        return len(seen.data) < 300

    await small_pool.stream_request(subject, b"", stop_at_300)
    assert seen.data == [str(i).encode() for i in range(300)]
    assert seen.direct > 0
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert handle.stats().streams_cancelled == 1


async def test_exception_from_a_direct_call_reaches_the_caller(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    handle = await subscriber.stream_subscribe_handler(subject, numbered(10_000))
    seen = Seen()

    def fail_at_300(msg: Msg) -> bool:
        seen(msg)
        if len(seen.data) == 300:
            raise KeyError("boom")
        return True

    with pytest.raises(KeyError, match="boom"):
        await small_pool.stream_request(subject, b"", fail_at_300)
    assert len(seen.data) == 300
    assert seen.direct > 0
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert handle.stats().streams_cancelled == 1
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
        if calls_at_cancel < 0 and len(seen.data) >= 500 and asyncio.current_task() is not caller:
            caller.cancel()
            calls_at_cancel = len(seen.data)
        return True

    async def caller() -> None:
        seen.caller = asyncio.current_task()
        await small_pool.stream_request(subject, b"", handler)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.ensure_future(caller()), 30)
    assert len(seen.data) == calls_at_cancel
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert handle.stats().streams_cancelled == 1


async def test_request_timeout_on_direct_calls_excludes_handler_time(
    subscriber: Subscriber, small_pool: Pool, subject: str
) -> None:
    # Replies 0.6 s apart, 0.4 s of work in the handler, 0.5 s allowed: the silence
    # after each call is 0.2 s. Counting the handler's time would fail at 0.5 s.
    await subscriber.stream_subscribe_handler(subject, numbered(3, delay=0.6))
    seen = Seen()

    def busy(msg: Msg) -> bool:
        if msg.data != STREAM_END:
            time.sleep(0.4)  # the handler's own blocking work, not a synchronisation
        return seen(msg)

    await small_pool.stream_request_with_timeout(subject, b"", 0.5, None, busy)
    assert seen.data == [b"0", b"1", b"2", STREAM_END]
    assert seen.direct > 0
