"""A Subscriber's life and what it reports: its lifecycle enum, its stats, the
tally that keeps the counts of subscriptions that stopped, and its connection's
opening and closing."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._config import Config
from ._errors import ConfigError, NoServersError, SubscriberClosedError
from ._events import ConnectionWatch, check_hook
from ._responder import StreamSubscription, SubscriptionStats
from ._service import ServiceInfo
from ._transport import Link, connect, safe_server, translate_connect_error

__all__ = [
    "SubscriberState",
    "SubscriberStats",
    "Tally",
    "close_quietly",
    "connect_subscriber",
    "not_open_error",
]

log = logging.getLogger("natstream")


class SubscriberState(enum.Enum):
    """Where a subscriber is in its life; it is opened once and closed once."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  # no new requests; in-flight streams get the grace period
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    """Counters since the subscriber opened and gauges of now (see
    :meth:`Subscriber.stats`).

    Attributes:
        state: where the subscriber is in its life.
        connected: whether its connection is up now (False while it reconnects).
        server: the URL of the server it is connected to (or was last), without
            credentials; None before it first connected.
        subscriptions: one per stream subscription still serving, by subject.
        streams_active, streams_started, streams_completed, streams_failed,
        streams_cancelled, streams_rejected_busy, replies_sent,
        requests_rejected_invalid: sums over every
            stream subscription it made, stopped ones included (see
            :class:`SubscriptionStats`).
        reconnects: times its connection came back after a loss.
        disconnects: times its connection was lost (its own close() aside).
    """

    state: SubscriberState
    connected: bool
    server: str | None
    subscriptions: tuple[SubscriptionStats, ...]
    streams_active: int
    streams_started: int
    streams_completed: int
    streams_failed: int
    streams_cancelled: int
    streams_rejected_busy: int
    replies_sent: int
    reconnects: int
    disconnects: int
    requests_rejected_invalid: int = 0


_TOTALS = (
    "streams_active",
    "streams_started",
    "streams_completed",
    "streams_failed",
    "streams_cancelled",
    "streams_rejected_busy",
    "replies_sent",
    "requests_rejected_invalid",
)


class Tally:
    """The subscriber's totals over every subscription it made: the serving ones are
    read when asked; a stopped one is kept until its last stream ended, then its
    final counts are folded in (so stopped subscriptions never pile up)."""

    def __init__(self) -> None:
        self._stopping: list[StreamSubscription] = []
        self._folded = dict.fromkeys(_TOTALS, 0)

    def stopped(self, subscription: StreamSubscription) -> None:
        """``subscription`` no longer serves; its streams may still be finishing."""
        self._stopping.append(subscription)

    def stats(
        self,
        state: SubscriberState,
        *,
        connected: bool,
        server: str | None,
        serving: Iterable[StreamSubscription],
        reconnects: int,
        disconnects: int,
    ) -> SubscriberStats:
        still = []
        for subscription in self._stopping:
            if subscription.active:
                still.append(subscription)
            else:
                _add(self._folded, subscription.stats())
        self._stopping = still
        listed = tuple(s.stats() for s in sorted(serving, key=lambda s: (s.subject, s.queue)))
        totals = dict(self._folded)
        for counts in listed + tuple(s.stats() for s in still):
            _add(totals, counts)
        return SubscriberStats(
            state=state,
            connected=connected,
            server=server,
            subscriptions=listed,
            reconnects=reconnects,
            disconnects=disconnects,
            **totals,
        )


def _add(totals: dict[str, int], counts: SubscriptionStats) -> None:
    for name in _TOTALS:
        totals[name] += getattr(counts, name)


async def connect_subscriber(
    config: Config, on_error: Callable[[Exception], None], watch: ConnectionWatch
) -> Link:
    """A connection to one of ``config``'s servers, reconnecting by itself; its
    events go to ``watch``.

    Raises:
        NoServersError: none could be reached (named each, with why).
    """
    try:
        return await connect(
            list(config.servers),
            config.nats_options(),
            allow_reconnect=True,
            disconnected_cb=watch.on_disconnected,
            closed_cb=watch.on_closed,
            reconnected_cb=watch.on_reconnected,
            lame_duck_cb=watch.on_lame_duck,
            error_counter=on_error,
        )
    except Exception as exc:
        servers = [safe_server(s) for s in config.servers]
        reason = translate_connect_error(exc)
        raise NoServersError(servers, [reason] * len(servers)) from None


def not_open_error(state: SubscriberState) -> SubscriberClosedError:
    if state in (SubscriberState.NEW, SubscriberState.OPENING):
        return SubscriberClosedError(
            "this subscriber is not open yet; use `async with Subscriber(...)` "
            "or `await Subscriber.connect(...)`"
        )
    return SubscriberClosedError("this subscriber is closed; create a new Subscriber")


async def close_quietly(link: Link) -> None:
    try:
        await link.close()
    except Exception:
        log.debug("closing the subscriber's connection failed", exc_info=True)


def check_options(
    *,
    close_grace: float,
    max_concurrent_streams: int,
    max_request_size: int | None,
    max_stream_duration: float | None,
    stall_factor: float,
    control: str,
    plain_end: str,
    on_connection_event: object,
    service: object,
) -> None:
    """Check a Subscriber's keyword options (see its docstring for their meaning).

    Raises:
        ConfigError: a value is out of range.
        TypeError: ``on_connection_event`` or ``service`` is not of the right kind.
    """
    check_limit("max_concurrent_streams", max_concurrent_streams)
    check_hook(on_connection_event)
    if service is not None and not isinstance(service, ServiceInfo):
        raise TypeError(f"service must be a ServiceInfo, not {type(service).__name__}")
    if control not in ("auto", "service"):
        raise ConfigError(f"control must be 'auto' or 'service', got {control!r}")
    if plain_end not in ("marker", "empty"):
        raise ConfigError(f"plain_end must be 'marker' or 'empty', got {plain_end!r}")
    if close_grace < 0:
        raise ConfigError(f"close_grace must be >= 0 seconds, got {close_grace}")
    if max_request_size is not None and max_request_size < 0:
        raise ConfigError(f"max_request_size must be >= 0 bytes or None, got {max_request_size}")
    if max_stream_duration is not None and max_stream_duration <= 0:
        raise ConfigError(
            f"max_stream_duration must be > 0 seconds or None, got {max_stream_duration}"
        )
    if stall_factor < 1:
        raise ConfigError(f"stall_factor must be >= 1, got {stall_factor}")


def check_limit(name: str, value: int) -> None:
    """A concurrency limit: at least 1."""
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
