"""Closing a subscriber leaves no requester without an answer: requests that reach it
while it closes get a retryable 503 at once, streams cut at the end of the grace
period get one too, and a rolling restart behind a queue group loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from itertools import pairwise

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from natstream import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Config,
    Pool,
    StreamError,
    StreamOptions,
    StreamRequest,
    Subscriber,
)
from natstream._responder import _subscription
from natstream._transport import connect, drain_subscription, flush_ordered, subscribe_live
from natstream.server import NatsServer

HB = 1.0  # requesters' heartbeat: a stall would be noticed after 3 s


@pytest.fixture
async def hb_pool(server: NatsServer) -> AsyncIterator[Pool]:
    config = Config([server.url], idle_per_server=2, stream=StreamOptions(heartbeat=HB))
    async with Pool(config) as p:
        yield p


@pytest.mark.parametrize("plain", [True, False], ids=["nats-py-client", "natstream-link"])
async def test_a_drained_queue_member_handles_every_request_routed_to_it(
    server: NatsServer, subject: str, plain: bool
) -> None:
    """Requests on their way as one of two queue members drains each reach one of them.
    (nats-py's own ``drain()`` writes its PING ahead of its UNSUB and forgets the
    subscription at the PONG: requests the server routes to it between the two, as
    these are here, are dropped and their requesters left waiting.)"""

    async def client() -> Client:
        if plain:
            return await nats.connect(server.url)
        return (await connect([server.url], {}, allow_reconnect=False)).nc

    pub, stay = await nats.connect(server.url), await nats.connect(server.url)
    handled = 0

    async def on_request(msg: Msg) -> None:
        nonlocal handled
        handled += 1

    staying = await subscribe_live(stay, subject, on_request, queue="q")
    rounds, per_round = 30, 50
    for _ in range(rounds):
        going = await client()
        sub = await subscribe_live(going, subject, on_request, queue="q")
        for _ in range(per_round):  # on the wire as the UNSUB goes
            await pub.publish(subject, b"request")
        await drain_subscription(going, sub)
        await going.close()
    await flush_ordered(pub)  # every request is routed
    await flush_ordered(stay)
    await drain_subscription(stay, staying)  # and handled
    await pub.close()
    await stay.close()
    assert handled == rounds * per_round


async def test_a_plain_client_drains_with_its_unsub_ahead_of_the_round_trip(
    server: NatsServer, subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes the drain above lossless, in the bytes nats-py's client writes: a
    PING after the UNSUB (``drain()`` alone writes its PING first)."""

    async def ignore(msg: Msg) -> None:
        return None

    nc = await nats.connect(server.url)
    sub = await subscribe_live(nc, subject, ignore, queue="q")
    written = bytearray()
    transport = nc._transport
    write, writelines = transport.write, transport.writelines

    def record(data: bytes) -> None:
        written.extend(data)
        write(data)

    def record_lines(lines: list[bytes]) -> None:
        written.extend(b"".join(lines))
        writelines(lines)

    monkeypatch.setattr(transport, "write", record)
    monkeypatch.setattr(transport, "writelines", record_lines)
    await drain_subscription(nc, sub)
    await nc.close()
    unsub = written.find(b"UNSUB %d" % sub._id)
    assert 0 <= unsub < written.rfind(b"PING"), bytes(written)


async def endless(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    if index:
        await asyncio.Event().wait()
    return b"first", True, None


async def test_streams_cut_at_the_end_of_the_grace_period_get_a_retryable_503(
    server: NatsServer, hb_pool: Pool, subject: str
) -> None:
    got_first = asyncio.Event()
    seen: list[bytes] = []

    def on(msg: Msg) -> bool:
        seen.append(msg.data)
        got_first.set()
        return True

    sub = await Subscriber.connect([server.url], close_grace=0.3)
    handle = await sub.stream_subscribe_handler(subject, endless)
    request = asyncio.create_task(hb_pool.stream_request(subject, b"", on))
    await asyncio.wait_for(got_first.wait(), 10)
    closing = time.monotonic()
    await sub.close()
    with pytest.raises(StreamError) as info:
        await request
    assert time.monotonic() - closing < 2 * HB  # not a stall, 3 heartbeats later
    assert (info.value.code, info.value.retryable, info.value.message) == (
        503,
        True,
        "shutting down",
    )
    assert seen[0] == b"first"
    assert handle.stats().streams_active == 0


async def test_requests_reaching_a_closing_subscriber_get_a_retryable_503_at_once(
    server: NatsServer,
    hb_pool: Pool,
    subject: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The subscriber is closing while its subscription is still on the server (held
    here before it stops): a request routed to it is answered at once."""
    stop = _subscription.StreamSubscription.stop
    stopping = asyncio.Event()
    answered = asyncio.Event()

    async def held(self, grace=None):  # type: ignore[no-untyped-def]
        stopping.set()
        await answered.wait()
        await stop(self, grace)

    monkeypatch.setattr(_subscription.StreamSubscription, "stop", held)
    sub = await Subscriber.connect([server.url], close_grace=1.0)
    await sub.stream_subscribe_handler(subject, endless)
    closing = asyncio.create_task(sub.close())
    try:
        await asyncio.wait_for(stopping.wait(), 10)
        with pytest.raises(StreamError) as info:
            await hb_pool.stream_request_with_timeout(subject, b"", 5, None, lambda m: True)
        assert (info.value.code, info.value.retryable, info.value.message) == (
            503,
            True,
            "shutting down",
        )
    finally:
        answered.set()
        await closing


async def test_a_stopping_subscription_turns_requests_away_and_cuts_its_streams(
    subscriber: Subscriber, hb_pool: Pool, subject: str
) -> None:
    """The same for one subscription stopped while its subscriber stays open."""
    got_first = asyncio.Event()
    handle = await subscriber.stream_subscribe_handler(subject, endless)
    other = await subscriber.stream_subscribe_handler(subject + ".other", endless)
    request = asyncio.create_task(
        hb_pool.stream_request(subject, b"", lambda m: got_first.set() or True)
    )
    await asyncio.wait_for(got_first.wait(), 10)
    await handle.stop(grace=0.2)
    with pytest.raises(StreamError, match="shutting down"):
        await request
    async with hb_pool.stream(subject + ".other") as s:  # the other one serves on
        async for msg in s:
            assert msg.data == b"first"
            break
    await other.stop(grace=0)


ITEMS = 20
ITEM_EVERY = 0.05  # seconds: each stream lasts about a second
STREAMS = 300


async def numbers(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    if index >= ITEMS:
        return None, False, None
    await asyncio.sleep(ITEM_EVERY)
    return b"%d" % index, True, None


@pytest.mark.slow
async def test_a_rolling_restart_of_one_of_two_responders_loses_and_repeats_nothing(
    server: NatsServer, subject: str
) -> None:
    """A few hundred streams with retries while one of two queue members closes and a
    new one starts: every stream gets every item once, in order, and no requester
    waits much more than a heartbeat for its next message (a request routed to the
    closing member is answered at once; a stream it cuts gets an error at once; either
    is retried on a live member)."""
    config = Config([server.url], idle_per_server=2, stream=StreamOptions(heartbeat=HB))

    async def member() -> Subscriber:
        sub = await Subscriber.connect(config, close_grace=0.3)
        await sub.stream_subscribe_handler(subject, numbers, queue="q")
        return sub

    old, staying = await member(), await member()
    shutting_down = 0

    async with Pool(config) as pool:

        async def one(k: int) -> tuple[list[bytes], float]:
            nonlocal shutting_down
            await asyncio.sleep(k * 2.0 / STREAMS)  # starts spread over 2 s
            seen: list[bytes] = []
            arrivals = [time.monotonic()]

            def on(msg: Msg) -> bool:
                nonlocal shutting_down
                arrivals.append(time.monotonic())
                if msg.data.startswith(STREAM_ERROR_PREFIX):
                    assert msg.data == STREAM_ERROR_PREFIX + b"shutting down"
                    shutting_down += 1
                else:
                    seen.append(msg.data)
                return True

            await pool.stream_request_with_retry(subject, b"", 10, 0.05, on, stream_timeout=60)
            return seen, max(b - a for a, b in pairwise(arrivals))

        streams = [asyncio.create_task(one(k)) for k in range(STREAMS)]
        await asyncio.sleep(0.7)
        new, _ = await asyncio.gather(member(), old.close())
        results = await asyncio.gather(*streams)
        await asyncio.gather(new.close(), staying.close())

    expected = [b"%d" % i for i in range(ITEMS)] + [STREAM_END]
    assert [seen for seen, _ in results] == [expected] * STREAMS
    assert shutting_down > 0  # the close did cut streams or turn requests away
    longest = max(gap for _, gap in results)
    assert longest < 1.5 * HB, f"a requester waited {longest:.2f} s"
