"""Plain peers at the edges: responders and requesters that speak only the in-band
markers (``__STREAM_END__``, ``__STREAM_ERROR__:``), written here with raw nats-py."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from natstream import Pool
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
