"""What :meth:`Pool.stats` returns: frozen snapshots, counters and gauges."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolStats", "ServerStats"]


@dataclass(frozen=True, slots=True)
class ServerStats:
    """One configured server, as the pool sees it (see :meth:`Pool.stats`).

    Attributes:
        url: the server's URL without credentials.
        slots: connections the pool keeps to it (``Config.idle_per_server``).
        healthy: connections in rotation now (new streams may use them).
        connections: connections open now: ``healthy`` plus retiring ones whose
            streams are still finishing.
        rtt: median, over the healthy connections, of each one's last health-check
            round trip, in seconds; None before the first check.
        streams_in_flight: stream attempts running on its connections now.
        attempts: stream attempts (first tries and retries) routed to it so far.
        reconnects: connections that put an empty slot back in rotation after a
            loss, a lame-duck retirement or a failed first connect.
        connections_lost: connections that broke (disconnected, or failed a health
            check), retiring ones included.
        connections_retired: connections taken out of rotation on purpose
            (max_lifetime, max_idle, lame duck).
        connect_errors: connection attempts that failed.
        health_checks_failed: health checks that failed or timed out.
    """

    url: str
    slots: int
    healthy: int
    connections: int
    rtt: float | None
    streams_in_flight: int
    attempts: int
    reconnects: int
    connections_lost: int
    connections_retired: int
    connect_errors: int
    health_checks_failed: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters since the pool opened and gauges of now (see :meth:`Pool.stats`).

    A *stream* is one call (``stream_request*`` or ``pool.stream``); an *attempt* is
    one request sent for it: the first, and one more per retry. At any moment::

        streams_started + streams_retried
            == streams_completed + streams_failed + streams_cancelled + streams_in_flight

    Attributes:
        servers: per configured server, in the order of ``Config.servers``.
        slots, healthy, connections: sums over ``servers``.
        streams_in_flight: attempts running now (gauge).
        streams_started: streams started (their first attempt).
        streams_retried: retry attempts (a stream retried twice adds 2).
        streams_completed: attempts that ended at the end marker.
        streams_failed: attempts that failed: error marker, no responders, timeout,
            stall, connection lost. A stream retried into success counts its failed
            attempts here and its last one in ``streams_completed``.
        streams_cancelled: attempts the caller ended first (the handler returned
            False, the ``async with`` block was left, the task was cancelled).
        replies_received: data replies received (markers and heartbeats excluded).
        bytes_received: payload bytes of those replies.
        reconnects, connections_lost, connections_retired, connect_errors,
        health_checks_failed: sums over ``servers``.
    """

    servers: tuple[ServerStats, ...]
    slots: int
    healthy: int
    connections: int
    streams_in_flight: int
    streams_started: int
    streams_retried: int
    streams_completed: int
    streams_failed: int
    streams_cancelled: int
    replies_received: int
    bytes_received: int
    reconnects: int
    connections_lost: int
    connections_retired: int
    connect_errors: int
    health_checks_failed: int
