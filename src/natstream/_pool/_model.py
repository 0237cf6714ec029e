"""The pool's parts and its decisions: servers, slots, connections and their
states, the window budget; routing and retirement as pure functions of their inputs
(tested without a server in tests/unit/test_pool_logic.py).

Life of one connection (:class:`ConnState`)::

    state      leaves on                              to
    READY      max_lifetime or max_idle due           EXPIRING (still in rotation)
    READY      lame duck announced by the server      RETIRING
    EXPIRING   its replacement is connected           RETIRING
    RETIRING   its last stream in flight ended        CLOSED
    any open   disconnect, or a failed health check   BROKEN (its streams fail, retryable)
    any open   Pool.close()                           CLOSED

*Closed* means the pool closed it; *broken* means something outside failed.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client

from .._requester import Lease
from .._transport import Link

__all__ = [
    "IN_ROTATION",
    "MIN_STREAM_BYTES",
    "MIN_STREAM_MESSAGES",
    "OPEN_STATES",
    "Conn",
    "ConnState",
    "PoolState",
    "RetireReason",
    "Server",
    "Slot",
    "WindowBudget",
    "pick_least_loaded",
    "retirement_due",
]


class PoolState(enum.Enum):
    """Where the pool is in its life."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  # no new streams; in-flight ones get the grace period
    CLOSED = "closed"


class ConnState(enum.Enum):
    """Where one connection is in its life; see the module docstring's table."""

    READY = "ready"  # in rotation
    EXPIRING = "expiring"  # in rotation until its replacement is connected
    RETIRING = "retiring"  # out of rotation; its streams in flight finish, then CLOSED
    BROKEN = "broken"  # disconnected or failed a health check; its streams failed
    CLOSED = "closed"  # closed by the pool


IN_ROTATION = frozenset({ConnState.READY, ConnState.EXPIRING})
OPEN_STATES = frozenset({ConnState.READY, ConnState.EXPIRING, ConnState.RETIRING})


class RetireReason(enum.Enum):
    MAX_LIFETIME = "max_lifetime"
    MAX_IDLE = "max_idle"
    LAME_DUCK = "lame duck"


def pick_least_loaded(loads: Sequence[int | None], start: int) -> int | None:
    """Index of the smallest load, scanning cyclically from ``start``.

    ``None`` entries (connections not in rotation) are skipped; returns None when
    every entry is None. The first minimum met from ``start`` wins, so a caller that
    moves ``start`` just past each winner goes round-robin among ties.
    """
    n = len(loads)
    best: int | None = None
    best_load = 0
    for k in range(n):
        i = (start + k) % n
        load = loads[i]
        if load is not None and (best is None or load < best_load):
            best, best_load = i, load
            if load == 0:
                break
    return best


def retirement_due(
    now: float,
    *,
    expires_at: float,
    last_used: float,
    in_flight: int,
    max_idle: float | None,
) -> RetireReason | None:
    """Whether a connection in rotation is due for replacement at ``now``, and why.

    ``max_lifetime`` (``expires_at``, jitter included) applies whatever the load: the
    streams in flight finish on the old connection. ``max_idle`` applies only to a
    connection with no stream in flight, ``max_idle`` seconds after its last stream
    started or ended.
    """
    if now >= expires_at:
        return RetireReason.MAX_LIFETIME
    if max_idle is not None and in_flight == 0 and now - last_used >= max_idle:
        return RetireReason.MAX_IDLE
    return None


@dataclass(eq=False)
class Server:
    """One configured server: its slots, its retiring connections, its counters."""

    url: str
    safe_url: str
    slots: list[Slot] = field(default_factory=list)
    draining: set[Conn] = field(default_factory=set)  # RETIRING connections
    live: set[Lease] = field(default_factory=set)  # leases out, on any of its connections
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    reconnects: int = 0
    lost: int = 0
    retired: int = 0
    connect_errors: int = 0
    health_failed: int = 0

    def __post_init__(self) -> None:
        self.idle.set()

    def healthy(self) -> int:
        return sum(1 for s in self.slots if s.conn is not None)


@dataclass(eq=False)
class Slot:
    """One of a server's ``idle_per_server`` places for a connection."""

    server: Server
    index: int  # among the server's slots
    conn: Conn | None = None  # the connection in rotation (READY or EXPIRING)
    failures: int = 0  # connect attempts failed in a row
    task: asyncio.Task[None] | None = None  # connecting in the background

    def needs_connection(self) -> bool:
        return self.conn is None or self.conn.state is ConnState.EXPIRING


# Budget of flow-control windows per pool (Config.window_budget_*, see Conn.window).
# What streams may have in flight waits in socket buffers and in nats-server, whose
# max_pending (64 MiB by default) cuts a connection off; and messages queued ahead of
# a stream's heartbeats make them late (false stalls, failed health checks). The
# pool's requester handles roughly 200,000-1,000,000 small messages/s, so the default
# budget in flight is well under a second of work; with the minimum per stream (an
# ack every 64 replies: with 1,000 streams, acks cost more than the data at a minimum
# of 16, and were still a large share at 64), 1,000 streams have about 160,000. A new
# stream gets at most half of what is left while others are open, so the streams
# after it get a share too.
MIN_STREAM_MESSAGES = 128
MIN_STREAM_BYTES = 16 << 10


@dataclass(eq=False)
class WindowBudget:
    """Flow-control windows granted by the pool's open stream attempts, in total, and
    what they may add up to (``Config.window_budget_*``)."""

    limit_messages: int
    limit_bytes: int
    messages: int = 0
    nbytes: int = 0


@dataclass(eq=False)
class Conn:
    """One connection, pinned to ``slot.server``; stream attempts lease it."""

    slot: Slot
    link: Link
    expires_at: float
    clock: Callable[[], float]
    last_used: float
    budget: WindowBudget  # shared by the pool's connections
    state: ConnState = ConnState.READY
    leases: set[Lease] = field(default_factory=set)  # lent out now
    rtt: float | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def window(self, messages: int, nbytes: int) -> tuple[int, int]:
        """The window a new stream may grant: what is configured, cut down to what the
        pool's budget has left (half of it when other streams are open), but not below
        the minimum (unless configured below). With the defaults the first stream gets
        16,384 messages / 8 MiB, one opened while it runs 8,192, and so on down to the
        minimum; a stream alone may have the whole budget (32,768 messages, 32 MiB by
        default: ``Config.window_budget_*``).

        nats-server disconnects a client (as a slow consumer) whose undelivered
        messages pass its ``max_pending`` (64 MiB by default), and a long backlog
        delays heartbeats and health checks. Every stream's window may be in that
        backlog at once, so the windows of the pool's streams add up to about
        the budget at most (plus the minimum per stream).
        """
        budget = self.budget
        share = 2 if budget.messages else 1  # another stream is open: half of what is left
        left_messages = (budget.limit_messages - budget.messages) // share
        left_bytes = (budget.limit_bytes - budget.nbytes) // share
        return (
            min(messages, max(MIN_STREAM_MESSAGES, left_messages)),
            min(nbytes, max(MIN_STREAM_BYTES, left_bytes)),
        )

    def lend(self, lease: Lease) -> None:
        """``lease`` (made for this connection) goes out: count its window."""
        server = self.slot.server
        self.budget.messages += lease.window_messages
        self.budget.nbytes += lease.window_bytes
        self.leases.add(lease)
        server.live.add(lease)
        self.idle.clear()
        server.idle.clear()
        self.last_used = self.clock()

    def take_back(self, lease: Lease) -> None:
        """``lease`` came back (once per lease)."""
        server = self.slot.server
        self.leases.discard(lease)
        self.budget.messages -= lease.window_messages
        self.budget.nbytes -= lease.window_bytes
        server.live.discard(lease)
        if not self.leases:
            self.idle.set()
            self.last_used = self.clock()
        if not server.live:
            server.idle.set()

    @property
    def nc(self) -> Client:
        return self.link.nc

    async def wait_idle(self) -> None:
        """Wait until no stream is in flight on this connection."""
        await self.idle.wait()

    @property
    def safe_url(self) -> str:
        return self.slot.server.safe_url
