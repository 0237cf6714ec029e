"""Operations the drivers run on a link: publish, subscribe and know the server has
it, a round trip that proves ordering, drain without loss."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._errors import ConnectionLostError, PayloadTooLargeError, PermissionDeniedError
from ._client import FastClient
from ._compat import lossless_drain
from ._denials import Denials
from ._link import Link

__all__ = [
    "HEADER_ALLOWANCE",
    "check_payload",
    "drain_subscription",
    "flush_ordered",
    "publish",
    "subscribe_live",
]

log = logging.getLogger("natstream")

_LIVE_TIMEOUT = 5.0  # seconds allowed for a new subscription to reach the server
HEADER_ALLOWANCE = 256  # bytes kept free under max_payload for our headers


async def subscribe_live(
    nc: Client,
    subject: str,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    queue: str = "",
    pending_msgs_limit: int = 512 * 1024,
    pending_bytes_limit: int = 128 * 1024 * 1024,
    direct: Callable[[Msg], None] | None = None,
    denials: Denials | None = None,
    refusal_expected: bool = False,
) -> Subscription:
    """Subscribe and return once the server has registered the subscription.

    ``denials``: the link's (:attr:`Link.denials`); with it, a subscription the server
    refuses raises :class:`PermissionDeniedError` (its ``-ERR`` comes back before the
    round trip's PONG). ``refusal_expected``: the caller has a way around a refusal,
    which is then logged at DEBUG instead of WARNING.

    ``direct``: on a :class:`FastClient`, messages go to this quick, non-blocking
    function straight from the protocol parser instead of to ``cb`` through nats-py's
    queue and task (:meth:`Link.set_direct`); ``cb`` serves any other client.

    nats-py writes PING straight to the socket, ahead of commands still queued for
    its flusher, so ``flush()`` right after ``subscribe()`` can return before the
    server has seen the SUB. Waiting for the queue to drain first puts the PING
    behind the SUB; the PONG then proves the SUB was processed.
    """
    sub = await nc.subscribe(
        subject,
        queue=queue,
        cb=cb,
        pending_msgs_limit=pending_msgs_limit,
        pending_bytes_limit=pending_bytes_limit,
    )
    if direct is not None and isinstance(nc, FastClient):
        nc.set_direct(sub, direct)
    refused: list[str] = []

    def on_denied(operation: str, denied: str) -> bool:
        if operation == "subscribe":
            refused.append(denied)
            return refusal_expected
        return False

    if denials is not None:
        denials.watch(subject, on_denied)
    try:
        await flush_ordered(nc)
    except BaseException:
        await _quiet_unsubscribe(sub)
        raise
    finally:
        if denials is not None:
            denials.unwatch(subject, on_denied)
    if refused:
        await _quiet_unsubscribe(sub)
        raise PermissionDeniedError(refused[0], "subscribe")
    return sub


async def flush_ordered(nc: Client) -> None:
    """A round trip to the server that proves everything sent before it arrived.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands
    still queued for its flusher task, so it can return before earlier publishes or
    subscriptions reach the server. Waiting for that queue to drain first puts the
    PING behind them.

    Raises:
        TimeoutError: no answer within 5 seconds.
    """
    async with asyncio.timeout(_LIVE_TIMEOUT):
        # nats-py offers no event for "flusher wrote everything": poll, bounded above.
        while nc.pending_data_size > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        await nc.flush(timeout=int(_LIVE_TIMEOUT))


async def drain_subscription(nc: Client, sub: Subscription) -> None:
    """Stop a subscription without losing what the server already routed to it.

    ``Subscription.drain()`` has the flush-ordering flaw described in
    :func:`flush_ordered`: its PING always overtakes its UNSUB, so messages the server
    sends between the PONG and the UNSUB are dropped (a request lost so waits for its
    requester's ``request_timeout``, or for ever). Sending the UNSUB ourselves and
    making an ordered round trip first closes that window; ``drain()`` then waits for
    the callback to process everything received. This holds with the fast paths off
    too; only a nats-py without :data:`~._compat.DRAIN_NAMES` gets ``drain()`` alone.
    """
    if isinstance(nc, FastClient) or lossless_drain():
        await nc._send_unsubscribe(sub._id)
        await flush_ordered(nc)
    await sub.drain()  # type: ignore[no-untyped-call]


async def _quiet_unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # the connection may be gone; nothing left to undo then
        log.debug("unsubscribe failed", exc_info=True)


# nats-py's publish errors that mean the connection cannot take the message.
_LOST = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    OSError,  # from the socket, when nats-py writes inline (its flusher is gone)
)


async def publish(
    link: Link,
    subject: str,
    payload: bytes,
    *,
    reply: str = "",
    headers: dict[str, str] | None = None,
    now: bool = False,
) -> None:
    """Publish, translating nats-py's errors into natstream's.

    ``now`` writes the message to the socket before returning when it can
    (:meth:`Link.write_now`), instead of at the flusher's next turn.

    Raises:
        PayloadTooLargeError: payload plus headers exceed the server's max_payload.
        ConnectionLostError: the connection is closed or draining.
    """
    # nats-py's errors translated inline, not by a context manager: this is every
    # stream request's path (one generator and two resumptions less per call).
    try:
        if link.queue_publish(subject, reply, payload, headers):
            if not (now and link.write_now()):
                await link.kick()
        else:
            await link.nc.publish(subject, payload, reply=reply, headers=headers)
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLargeError(len(payload), link.nc.max_payload) from exc
    except _LOST as exc:
        raise ConnectionLostError(f"connection lost while publishing to {subject!r}") from exc


def check_payload(nc: Client, payload: bytes) -> None:
    """Raise :class:`PayloadTooLargeError` when ``payload`` cannot be sent on ``nc``."""
    if len(payload) > nc.max_payload - HEADER_ALLOWANCE:
        raise PayloadTooLargeError(len(payload), nc.max_payload, HEADER_ALLOWANCE)
