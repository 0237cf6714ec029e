"""The accept: a responder whose first reply is not ready in the request's dispatch
binds its requester at once with its first heartbeat, so ``request_timeout`` never
kills a slow but alive responder, whatever the heartbeat interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.msg import Msg

from natstream import (
    STREAM_END,
    Config,
    Pool,
    StreamOptions,
    StreamRequest,
    Subscriber,
)
from natstream._protocol._wire import (
    CTL_HEARTBEAT,
    HDR_CONTROL,
    HDR_HEARTBEAT,
    HDR_SEQ,
    HDR_VERSION,
    HDR_WINDOW,
)
from natstream.server import NatsServer

FIRST_AFTER = 2.5  # seconds the slow handlers take for their first reply


@pytest.fixture
async def default_pool(server: NatsServer) -> AsyncIterator[Pool]:
    """Heartbeats every second, the default."""
    async with Pool(Config([server.url], idle_per_server=1)) as p:
        yield p


async def slow_index(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    if index == 0:
        await asyncio.sleep(FIRST_AFTER)
    return b"%d" % index, index < 2, None


async def slow_generator(request: StreamRequest) -> AsyncIterator[bytes]:
    await asyncio.sleep(FIRST_AFTER)
    for i in range(3):
        yield b"%d" % i


@pytest.mark.slow
@pytest.mark.parametrize("request_timeout", [1.0, 0.5])
@pytest.mark.parametrize("kind", ["index", "generator"])
async def test_a_request_timeout_at_or_below_the_heartbeat_spares_a_slow_responder(
    subscriber: Subscriber, default_pool: Pool, subject: str, kind: str, request_timeout: float
) -> None:
    if kind == "index":
        await subscriber.stream_subscribe_handler(subject, slow_index)
    else:
        await subscriber.stream_handler(subject, slow_generator)
    seen: list[bytes] = []
    await default_pool.stream_request_with_timeout(
        subject, b"", request_timeout, None, lambda m: seen.append(m.data) or True
    )
    assert seen == [b"0", b"1", b"2", STREAM_END]


async def _first_messages(server: NatsServer, subject: str, count: int) -> list[tuple[Msg, float]]:
    """Send a v1 request (heartbeat 1 s) from a bare client; the first ``count``
    replies and how long after the request each came."""
    nc = await nats.connect(server.url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        started = time.monotonic()
        headers = {HDR_VERSION: "1", HDR_WINDOW: "16 65536", HDR_HEARTBEAT: "1000"}
        await nc.publish(subject, b"", reply=inbox, headers=headers)
        got = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            got.append((msg, time.monotonic() - started))
        return got
    finally:
        await nc.close()


async def test_the_accept_comes_at_once(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    await subscriber.stream_handler(subject, slow_generator)
    [(accept, after)] = await _first_messages(server, subject, 1)
    assert after < 0.5  # not one heartbeat interval (1 s) later
    assert accept.headers == {HDR_CONTROL: CTL_HEARTBEAT, HDR_SEQ: "0"}
    assert accept.reply.startswith("_INBOX.")  # the control subject the requester binds to
    assert accept.data == b""


@pytest.mark.fast_paths  # without them the first reply leaves from the task: accept first
@pytest.mark.parametrize("more", [False, True])
async def test_no_accept_when_the_first_reply_leaves_in_the_dispatch(
    server: NatsServer, subscriber: Subscriber, subject: str, more: bool
) -> None:
    """A sync index handler's first reply is the first message: nothing is added."""

    def quick(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        return (b"first", more, None) if index == 0 else (None, False, None)

    await subscriber.stream_subscribe_handler(subject, quick)
    (first, _), (second, _) = await _first_messages(server, subject, 2)
    assert (first.data, first.headers) == (b"first", {HDR_SEQ: "1"})
    assert second.data == STREAM_END


async def test_a_requester_that_stops_before_the_first_reply_stops_the_responder_at_once(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    """Bound by the accept, the requester knows where to send its cancel: the handler
    is cancelled at once, not after the responder's stall time (3 heartbeats)."""
    cancelled = asyncio.Event()

    async def waits(request: StreamRequest) -> AsyncIterator[bytes]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield b""

    await subscriber.stream_handler(subject, waits)
    config = Config([server.url], idle_per_server=1, stream=StreamOptions(heartbeat=2.0))
    async with Pool(config) as pool:
        async with pool.stream(subject) as s:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(s))
        left = time.monotonic()
        await asyncio.wait_for(cancelled.wait(), 10)
        assert time.monotonic() - left < 2.0  # the stall time would be 6 s
