"""Plain peers at the edges: responders and requesters that speak only the in-band
markers (``__STREAM_END__``, ``__STREAM_ERROR__:``), written here with raw nats-py."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from natstream import (
    STREAM_END,
    Pool,
    RequestTimeoutError,
    StreamError,
    StreamOptions,
    StreamRequest,
    Subscriber,
)
from natstream._transport import flush_ordered, subscribe_live
from natstream.server import NatsServer

PLAIN_REPLIES = 20_000


@pytest.mark.parametrize("how", ["handler returns False", "iteration left"])
async def test_stopping_early_stops_the_delivery_of_a_plain_responder(
    server: NatsServer, pool: Pool, subject: str, how: str
) -> None:
    """A plain responder cannot be told to stop; the server must stop delivering the
    rest once natstream stops listening (the attempt's inbox is unsubscribed)."""
    responder = await nats.connect(server.url)
    done = asyncio.Event()

    async def plain(msg: Msg) -> None:
        # Paced by round trips, as a real producer is by its source: still sending
        # long after the requester stopped listening.
        for i in range(PLAIN_REPLIES):
            await responder.publish(msg.reply, b"%d" % i)
            if i % 200 == 199:
                await responder.flush()
        await responder.publish(msg.reply, b"__STREAM_END__")
        await flush_ordered(responder)  # the server has routed every reply
        done.set()

    try:
        await subscribe_live(responder, subject, plain)
        clients = [s.conn.nc for srv in pool._servers for s in srv.slots if s.conn is not None]

        def received_so_far() -> int:
            return sum(nc.stats["in_msgs"] for nc in clients)

        received_before = received_so_far()
        taken = 0
        if how == "handler returns False":

            def take(msg: Msg) -> bool:
                nonlocal taken
                taken += 1
                return taken < 100

            await pool.stream_request(subject, b"", take)
        else:
            async with pool.stream(subject) as s:
                async for _ in s:
                    taken += 1
                    if taken == 100:
                        break
        assert taken == 100
        await asyncio.wait_for(done.wait(), 60)
        for nc in clients:  # whatever the server still sent us has arrived
            await flush_ordered(nc)
        received = received_so_far() - received_before
        # What was in flight when the UNSUB reached the server, not the whole stream.
        assert received < PLAIN_REPLIES // 2, f"{received} of {PLAIN_REPLIES} delivered"
    finally:
        await responder.close()


async def test_a_plain_requester_may_get_replies_of_the_whole_max_payload(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    """No headers go to a plain requester, so no room is kept for them."""
    requester = await nats.connect(server.url)
    try:
        size = requester.max_payload
        await subscriber.stream_subscribe_handler(
            subject, lambda r, i: (b"x" * size, False, None) if i == 0 else (None, False, None)
        )
        got: list[bytes] = []
        done = asyncio.Event()

        async def on(msg: Msg) -> None:
            got.append(msg.data)
            if msg.data.startswith(b"__STREAM"):
                done.set()

        inbox = requester.new_inbox()
        await subscribe_live(requester, inbox, on)
        await requester.publish(subject, b"", reply=inbox)
        await asyncio.wait_for(done.wait(), 10)
        assert [len(g) for g in got] == [size, len(STREAM_END)]
        assert got[-1] == STREAM_END
    finally:
        await requester.close()


async def test_too_large_names_the_server_limit_and_the_header_reserve(
    subscriber: Subscriber, pool: Pool, subject: str
) -> None:
    size = 1 << 20  # the server's default max_payload: no room left for our headers
    await subscriber.stream_subscribe_handler(subject, lambda r, i: (b"x" * size, False, None))
    with pytest.raises(StreamError) as info:
        await pool.stream_request(subject, b"", lambda m: True)
    assert info.value.code == 413
    assert info.value.message == (
        f"payload of {size} bytes exceeds the {size - 256} bytes allowed: the server's "
        f"max_payload of {size} less 256 kept for natstream's headers"
    )


async def _request_many(url: str, subject: str) -> list[bytes]:
    """An ADR-47 requester (request-many with the empty-message sentinel), raw nats-py."""
    requester = await nats.connect(url)
    try:
        got: list[bytes] = []
        done = asyncio.Event()

        async def on(msg: Msg) -> None:
            if msg.data == b"":
                done.set()
            else:
                got.append(msg.data)

        inbox = requester.new_inbox()
        await subscribe_live(requester, inbox, on)
        await requester.publish(subject, b"", reply=inbox)
        await asyncio.wait_for(done.wait(), 10)
        return got
    finally:
        await requester.close()


async def test_a_responder_can_end_plain_streams_the_way_request_many_clients_expect(
    server: NatsServer, subject: str
) -> None:
    def five(request: StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index == 5:
            return None, False, None
        return b"r%d" % index, True, None

    def failing(request: StreamRequest, index: int):  # type: ignore[no-untyped-def]
        return None, False, "disk on fire"

    async with (
        Subscriber([server.url], plain_end="empty", send_exception_text=True) as sub,
        Pool([server.url]) as pool,
    ):
        await sub.stream_subscribe_handler(subject, five)
        await sub.stream_subscribe_handler(f"{subject}.bad", failing)
        assert await _request_many(server.url, subject) == [b"r0", b"r1", b"r2", b"r3", b"r4"]
        assert await _request_many(server.url, f"{subject}.bad") == [
            b"__STREAM_ERROR__:disk on fire"
        ]
        # natstream requesters (and every peer by default) still get the end marker.
        got: list[bytes] = []
        await pool.stream_request(subject, b"", lambda m: got.append(m.data) or True)
        assert got == [b"r0", b"r1", b"r2", b"r3", b"r4", STREAM_END]


async def test_a_requester_can_end_on_the_empty_message_of_a_request_many_responder(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    """An ADR-47 responder (raw nats-py): replies, then an empty message and nothing more."""
    responder = await nats.connect(server.url)

    async def adr47(msg: Msg) -> None:
        for i in range(3):
            await responder.publish(msg.reply, b"r%d" % i)
        await responder.publish(msg.reply, b"")

    try:
        await subscribe_live(responder, subject, adr47)
        empty_ends = StreamOptions(heartbeat=0.2, plain_end="empty")
        async with pool.stream(subject, options=empty_ends, stream_timeout=10) as s:
            assert [m.data async for m in s] == [b"r0", b"r1", b"r2"]
        # By default the empty message is data, and the stream waits for the marker.
        got: list[bytes] = []

        async def take_all() -> None:
            async with pool.stream(subject, request_timeout=0.5) as s:
                async for m in s:
                    got.append(m.data)

        with pytest.raises(RequestTimeoutError):
            await take_all()
        assert got == [b"r0", b"r1", b"r2", b""]
    finally:
        await responder.close()
