"""A Subscriber's life and what it reports: its lifecycle enum, its stats, the
tally that keeps the counts of subscriptions that stopped, and its connection's
opening and closing."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._config import Config
from ._errors import NoServersError, SubscriberClosedError
from ._events import ConnectionWatch
from ._responder import StreamSubscription, SubscriptionStats
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
        streams_cancelled, streams_rejected_busy, replies_sent: sums over every
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


_TOTALS = (
    "streams_active",
    "streams_started",
    "streams_completed",
    "streams_failed",
    "streams_cancelled",
    "streams_rejected_busy",
    "replies_sent",
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
