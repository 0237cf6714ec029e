"""Thin helpers over nats-py connections shared by the pool and the subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._errors import ConnectionLostError, NatstreamError, PayloadTooLargeError
from ._fastclient import FastClient, publish_seq

__all__ = ["connect", "publish", "safe_server", "subscribe_live"]

log = logging.getLogger("natstream")

_LIVE_TIMEOUT = 5.0  # seconds allowed for a new subscription to reach the server
HEADER_ALLOWANCE = 256  # bytes kept free under max_payload for our headers

Callback = Callable[[], Awaitable[None]]


def safe_server(url: str) -> str:
    """The URL with any ``user:password@`` removed, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host = rest.rpartition("@")[2]
    return f"{scheme}{sep}{host}"


async def connect(
    servers: list[str],
    options: dict[str, Any],
    *,
    allow_reconnect: bool,
    disconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    lame_duck_cb: Callback | None = None,
    error_counter: Callable[[Exception], None] | None = None,
) -> Client:
    """Open a nats-py connection; errors are logged without credentials.

    Raises:
        whatever nats-py raises on a failed connect (the caller translates it).
    """

    async def error_cb(exc: Exception) -> None:
        if error_counter is not None:
            error_counter(exc)
        if isinstance(exc, nats.errors.SlowConsumerError):
            log.warning("slow consumer on %s: messages dropped", exc.subject)
        else:
            log.debug("nats connection error: %s", type(exc).__name__)

    kwargs: dict[str, Any] = dict(options)
    kwargs.update(
        servers=servers,
        allow_reconnect=allow_reconnect,
        error_cb=error_cb,
        # nats-py counts attempts per server and treats 0 as "forever" on the first
        # connect; 1 means: try each server twice, then raise NoServersError.
        max_reconnect_attempts=-1 if allow_reconnect else 1,
        reconnect_time_wait=0.2,
    )
    if disconnected_cb is not None:
        kwargs["disconnected_cb"] = disconnected_cb
    if closed_cb is not None:
        kwargs["closed_cb"] = closed_cb
    if reconnected_cb is not None:
        kwargs["reconnected_cb"] = reconnected_cb
    if lame_duck_cb is not None:
        kwargs["lame_duck_mode_cb"] = lame_duck_cb
    if not allow_reconnect:
        kwargs["dont_randomize"] = True
    nc = FastClient()
    # With reconnect on, nats-py retries the first connect forever: bound it here.
    first_connect = float(options.get("connect_timeout", 2.0)) * 2 * len(servers) + 1.0
    try:
        async with asyncio.timeout(first_connect):
            await nc.connect(**kwargs)
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


async def subscribe_live(
    nc: Client,
    subject: str,
    cb: Callable[[Msg], Awaitable[None]],
    *,
    queue: str = "",
    pending_msgs_limit: int = 512 * 1024,
    pending_bytes_limit: int = 128 * 1024 * 1024,
) -> Subscription:
    """Subscribe and return once the server has registered the subscription.

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
    try:
        await flush_ordered(nc)
    except BaseException:
        await _quiet_unsubscribe(sub)
        raise
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
    :func:`flush_ordered`: its PING can overtake its UNSUB, so messages the server
    sends between the PONG and the UNSUB are dropped. Sending the UNSUB ourselves and
    making an ordered round trip first closes that window; ``drain()`` then waits for
    the callback to process everything received.
    """
    await nc._send_unsubscribe(sub._id)
    await flush_ordered(nc)
    await sub.drain()  # type: ignore[no-untyped-call]


async def _quiet_unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # the connection may be gone; nothing left to undo then
        log.debug("unsubscribe failed", exc_info=True)


async def publish(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    reply: str = "",
    headers: dict[str, str] | None = None,
) -> None:
    """Publish, translating nats-py's errors into natstream's.

    Raises:
        PayloadTooLargeError: payload plus headers exceed the server's max_payload.
        ConnectionLostError: the connection is closed or draining.
    """
    try:
        await nc.publish(subject, payload, reply=reply, headers=headers)
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLargeError(len(payload), nc.max_payload) from exc
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionDrainingError,
        nats.errors.OutboundBufferLimitError,
    ) as exc:
        raise ConnectionLostError(f"connection lost while publishing to {subject!r}") from exc


async def publish_data(nc: Client, subject: str, reply: str, seq: int, payload: bytes) -> None:
    """Publish a data message whose only header is ``Ns-Seq`` (the hot path).

    Raises:
        PayloadTooLargeError, ConnectionLostError: as :func:`publish`.
    """
    try:
        await publish_seq(nc, subject, reply, seq, payload)
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLargeError(len(payload), nc.max_payload) from exc
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionDrainingError,
        nats.errors.OutboundBufferLimitError,
    ) as exc:
        raise ConnectionLostError(f"connection lost while publishing to {subject!r}") from exc


def check_payload(nc: Client, payload: bytes) -> None:
    """Raise :class:`PayloadTooLargeError` when ``payload`` cannot be sent on ``nc``."""
    limit = nc.max_payload - HEADER_ALLOWANCE
    if len(payload) > limit:
        raise PayloadTooLargeError(len(payload), limit)


def translate_connect_error(exc: BaseException) -> str:
    """A short reason for a failed connect, never including credentials."""
    if isinstance(exc, NatstreamError):
        return str(exc)
    if isinstance(exc, nats.errors.NoServersError):
        return "connection refused or unreachable"
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "timed out"
    text = type(exc).__name__
    if "authorization" in str(exc).lower():
        text = "authorization violation"
    return text
