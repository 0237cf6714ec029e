"""Pool: ``idle_per_server`` connections to each server, and the requester API.

Shape. A *slot* is one of the ``idle_per_server`` places for a connection to one
configured server. Slots of all servers are interleaved (s1, s2, s3, s1, s2, s3, ...)
so that round-robin alternates servers. A slot holds at most one connection *in
rotation* (one that new streams may use). Every connection is pinned to its slot's server:
nats-py's own reconnect is off, so a connection never wanders to another node; the
pool replaces it instead, in a background task per slot.

Routing. A new stream attempt goes to the in-rotation connection with the fewest
streams in flight; among ties, round-robin (:func:`pick_least_loaded`). When no
connection is in rotation, a retiring one that is still up is used rather than
failing.

Life of one connection (:class:`ConnState`)::

    state      leaves on                              to
    READY      max_lifetime or max_idle due           EXPIRING (still in rotation)
    READY      lame duck announced by the server      RETIRING
    EXPIRING   its replacement is connected           RETIRING
    RETIRING   its last stream in flight ended        CLOSED
    any open   disconnect, or a failed health check   BROKEN (its streams fail, retryable)
    any open   Pool.close()                           CLOSED

*Closed* means the pool closed it; *broken* means something outside failed. A slot
whose connection broke or went lame-duck is refilled with exponential backoff and
jitter (:func:`natstream._backoff.backoff_delay`); a slot whose connection expired is
refilled at once, make-before-break, so capacity never dips.

Every state change happens in plain (non-awaiting) code, so a stream never sees a
half-made change; I/O happens outside it. Time (``_clock``) and randomness
(``_rand``) are attributes so that the decision functions can be tested without a
server (see tests/unit/test_pool_logic.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from nats.aio.client import Client

from ._backoff import backoff_delay, lifetime_deadline
from ._config import Config, StreamOptions
from ._connection import connect, log, safe_server, translate_connect_error
from ._errors import ConnectionLostError, NatstreamError, NoServersError, PoolClosedError
from ._protocol import RequesterState
from ._requester import Handler, Stream

if TYPE_CHECKING:
    from ._requester import _Attempt

__all__ = ["Pool", "PoolStats", "ServerStats"]

# After close()'s grace period, streams still running are failed; this is how long
# close() then waits for them to tell their responders to stop before it closes the
# connections under them.
_ABORT_WAIT = 1.0
# A nats-py close flushes what is pending; against a frozen server that could wait
# for ever. Past this, close() gives up on the flush.
_CLOSE_TIMEOUT = 5.0


class PoolState(enum.Enum):
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


_IN_ROTATION = frozenset({ConnState.READY, ConnState.EXPIRING})
_OPEN = frozenset({ConnState.READY, ConnState.EXPIRING, ConnState.RETIRING})


class RetireReason(enum.Enum):
    MAX_LIFETIME = "max_lifetime"
    MAX_IDLE = "max_idle"
    LAME_DUCK = "lame duck"


class Outcome(enum.Enum):
    """How one stream attempt ended, as :meth:`Pool.stats` counts it."""

    COMPLETED = "completed"  # the end marker arrived, after every data reply
    FAILED = "failed"  # error marker, no responders, timeout, stall, connection lost
    CANCELLED = "cancelled"  # the caller ended it first (handler False, left, cancelled)


# ---------------------------------------------------------------- pure decisions


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


def attempt_outcome(state: RequesterState, *, deadline: float | None, now: float) -> Outcome:
    """Classify a finished stream attempt from its requester state.

    ENDED is completed and FAILED is failed. Any other state means the caller ended
    the attempt before a terminal reply (the handler returned False, the ``async
    with`` block was left, the task was cancelled): cancelled, unless the stream's
    deadline had passed, in which case ``stream_timeout`` cut it off: failed.
    """
    if state is RequesterState.ENDED:
        return Outcome.COMPLETED
    if state is RequesterState.FAILED or (deadline is not None and now >= deadline):
        return Outcome.FAILED
    return Outcome.CANCELLED


# ---------------------------------------------------------------- stats


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


# ---------------------------------------------------------------- internals


@dataclass(eq=False)
class _Server:
    """One configured server: its slots, its retiring connections, its counters."""

    url: str
    safe_url: str
    slots: list[_Slot] = field(default_factory=list)
    draining: set[_Conn] = field(default_factory=set)  # RETIRING connections
    live: set[_Attempt] = field(default_factory=set)  # attempts in flight, any state
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
class _Slot:
    """One of a server's ``idle_per_server`` places for a connection."""

    server: _Server
    index: int  # among the server's slots
    conn: _Conn | None = None  # the connection in rotation (READY or EXPIRING)
    failures: int = 0  # connect attempts failed in a row
    task: asyncio.Task[None] | None = None  # connecting in the background

    def needs_connection(self) -> bool:
        return self.conn is None or self.conn.state is ConnState.EXPIRING


# Budget of flow-control windows per pool (Config.window_budget_*, see _Conn.window).
# What streams may have in flight waits in socket buffers and in nats-server, whose
# max_pending (64 MiB by default) cuts a connection off; and messages queued ahead of
# a stream's heartbeats make them late (false stalls, failed health checks). The
# pool's requester handles roughly 50,000-200,000 small messages/s, so the default
# budget in flight is well under a second of work; with the minimum per stream (an
# ack every 32 replies; 16 made acks cost more than the data with 1,000 streams),
# 1,000 streams have about 96,000. A new stream gets at most half of what is left
# while others are open, so the streams after it get a share too.
MIN_STREAM_MESSAGES = 64
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
class _Conn:
    """One nats-py connection, pinned to ``slot.server``. Streams attach to it."""

    slot: _Slot
    nc: Client
    expires_at: float
    clock: Callable[[], float]
    last_used: float
    budget: WindowBudget  # shared by the pool's connections
    state: ConnState = ConnState.READY
    attempts: set[_Attempt] = field(default_factory=set)
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

    def add(self, attempt: _Attempt) -> None:
        """An attempt starts on this connection (called by the attempt)."""
        server = self.slot.server
        if attempt not in self.attempts:
            self.budget.messages += attempt.machine.window_messages
            self.budget.nbytes += attempt.machine.window_bytes
        self.attempts.add(attempt)
        server.live.add(attempt)
        self.idle.clear()
        server.idle.clear()
        self.last_used = self.clock()

    def discard(self, attempt: _Attempt) -> None:
        """The attempt is over (called by the attempt; idempotent)."""
        server = self.slot.server
        if attempt in self.attempts:
            self.attempts.discard(attempt)
            self.budget.messages -= attempt.machine.window_messages
            self.budget.nbytes -= attempt.machine.window_bytes
        server.live.discard(attempt)
        if not self.attempts:
            self.idle.set()
            self.last_used = self.clock()
        if not server.live:
            server.idle.set()

    async def wait_idle(self) -> None:
        """Wait until no stream is in flight on this connection."""
        await self.idle.wait()

    @property
    def safe_url(self) -> str:
        return self.slot.server.safe_url


class Pool:
    """Connections to every configured server, and streamed requests over them.

    ``pool = await Pool.connect(config)`` or ``async with Pool(config) as pool:``.
    See the module docstring for routing, health checks and connection lifecycle;
    :meth:`stats` for what is counted; :meth:`close` for how it drains.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._state = PoolState.NEW
        self._clock: Callable[[], float] = time.monotonic
        self._rand: Callable[[], float] = random.random
        self._servers = [_Server(url, safe_server(url)) for url in config.servers]
        self._slots: list[_Slot] = []
        self._rr = 0
        # Windows granted by all streams of this pool.
        self._budget = WindowBudget(config.window_budget_messages, config.window_budget_bytes)
        self._tasks: set[asyncio.Task[None]] = set()  # health loop, connects, drains
        self._closers: set[asyncio.Task[None]] = set()  # never cancelled; close() awaits
        self._closed = asyncio.Event()
        self._started = self._retried = 0
        self._completed = self._failed = self._cancelled = 0
        self._replies = self._bytes = 0

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, config: Config) -> Pool:
        """Create a pool and open it (see :meth:`open`)."""
        pool = cls(config)
        await pool.open()
        return pool

    async def open(self) -> None:
        """Open ``idle_per_server`` connections to each server, all at once.

        Returns once every connection has been tried (each try is bounded by
        ``config.connect_timeout``); servers that are down are retried in the
        background with backoff while the others serve. Opening an open pool does
        nothing. Cancellation closes whatever was opened.

        Raises:
            NoServersError: no server could be reached (names each and why).
            PoolClosedError: the pool was closed (before or while opening).
        """
        if self._state is PoolState.OPEN:
            return
        if self._state is PoolState.OPENING:
            raise NatstreamError("this pool is already opening; await the first open()")
        if self._state is not PoolState.NEW:
            raise PoolClosedError("this pool is closed; create a new Pool")
        self._state = PoolState.OPENING
        cfg = self.config
        self._slots = [_Slot(s, i) for i in range(cfg.idle_per_server) for s in self._servers]
        for slot in self._slots:
            slot.server.slots.append(slot)
        try:
            results = await asyncio.gather(
                *(self._connect_slot(s) for s in self._slots), return_exceptions=True
            )
        except BaseException:
            self._state = PoolState.CLOSED
            self._closed.set()
            await self._close_all()
            raise
        if self._state is not PoolState.OPENING:  # close() was called meanwhile
            await self._close_all()
            raise PoolClosedError("this pool was closed while it was opening")
        reasons: dict[_Server, str] = {}
        for slot, result in zip(self._slots, results, strict=True):
            if isinstance(result, BaseException):
                slot.failures = 1
                slot.server.connect_errors += 1
                reasons.setdefault(slot.server, translate_connect_error(result))
        if not any(s.conn is not None for s in self._slots):
            self._state = PoolState.CLOSED
            self._closed.set()
            await self._close_all()
            raise NoServersError(
                [s.safe_url for s in self._servers],
                [reasons.get(s, "disconnected right after connecting") for s in self._servers],
            )
        self._state = PoolState.OPEN
        for server, reason in reasons.items():
            log.warning(
                "server %s unreachable (%s); retrying in the background", server.safe_url, reason
            )
        for slot in self._slots:
            if slot.conn is None:
                self._schedule_fill(slot, wait_first=True)
        self._spawn(self._health_loop(), "natstream-pool-health")

    async def close(self, grace: float | None = None) -> None:
        """Close the pool, draining it.

        New streams (and retries) are refused with :class:`PoolClosedError` at once.
        Streams in flight get ``grace`` seconds (``config.close_grace`` when None) to
        finish; those still running then fail with :class:`ConnectionLostError` (a
        retrying stream then gets :class:`PoolClosedError`) and their responders are
        told to stop. Then every connection is closed and every background task of
        the pool has ended.

        Idempotent; a second concurrent call waits for the first. Cancelling
        ``close()`` skips what is left of the grace period and closes the
        connections at once.
        """
        if self._state is PoolState.CLOSED:
            return
        if self._state is PoolState.CLOSING:
            await self._closed.wait()
            return
        if self._state in (PoolState.NEW, PoolState.OPENING):
            # An open() in progress sees this and closes what it opened.
            self._state = PoolState.CLOSED
            self._closed.set()
            return
        self._state = PoolState.CLOSING
        grace = self.config.close_grace if grace is None else grace
        try:
            for task in list(self._tasks):  # no health checks or reconnects from now on
                task.cancel()
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self._wait_idle()
            aborted = [a for s in self._servers for a in s.live]
            for attempt in aborted:
                attempt.connection_lost()
            if aborted:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ABORT_WAIT):
                        await self._wait_idle()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close_all()
            self._state = PoolState.CLOSED
            self._closed.set()

    async def _wait_idle(self) -> None:
        """Wait until no stream is in flight on any connection."""
        for server in self._servers:
            await server.idle.wait()

    async def _close_all(self) -> None:
        for server in self._servers:
            conns = [s.conn for s in server.slots if s.conn is not None]
            conns += server.draining
            for slot in server.slots:
                slot.conn = None
            server.draining.clear()
            for conn in conns:
                self._close_conn(conn)
        if self._closers:
            _, pending = await asyncio.wait(set(self._closers), timeout=_CLOSE_TIMEOUT)
            for task in pending:
                log.warning("a connection did not close within %g s", _CLOSE_TIMEOUT)
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def __aenter__(self) -> Pool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ connections

    async def _open_conn(self, slot: _Slot) -> _Conn:
        """Connect to ``slot``'s server; the connection reports its own loss."""
        holder: list[_Conn] = []

        async def on_disconnect() -> None:
            if holder:
                self._lost(holder[0], "disconnected")

        async def on_lame_duck() -> None:
            if holder:
                self._retire_now(holder[0], RetireReason.LAME_DUCK)

        nc = await connect(
            [slot.server.url],
            self.config.nats_options(),
            allow_reconnect=False,
            disconnected_cb=on_disconnect,
            closed_cb=on_disconnect,
            lame_duck_cb=on_lame_duck,
        )
        now = self._clock()
        conn = _Conn(
            slot,
            nc,
            expires_at=lifetime_deadline(now, self.config.max_lifetime, self._rand),
            clock=self._clock,
            last_used=now,
            budget=self._budget,
        )
        holder.append(conn)
        return conn

    async def _connect_slot(self, slot: _Slot) -> None:
        """Open a connection for ``slot`` and put it in rotation.

        Raises:
            whatever the connect raised (the caller counts and translates it).
        """
        conn = await self._open_conn(slot)
        if self._state not in (PoolState.OPENING, PoolState.OPEN):
            self._close_conn(conn)
            return
        if not conn.nc.is_connected:
            self._close_conn(conn)
            raise ConnectionLostError(f"connection to {slot.server.safe_url} closed at once")
        self._install(slot, conn)

    def _install(self, slot: _Slot, conn: _Conn) -> None:
        """Put ``conn`` in rotation in ``slot``; an expiring predecessor starts retiring."""
        server = slot.server
        old = slot.conn
        slot.conn = conn
        slot.failures = 0
        if old is not None:
            server.retired += 1
            self._drain(old)
        elif self._state is PoolState.OPEN:
            server.reconnects += 1
            if server.healthy() == 1:
                log.info("server %s is back in rotation", server.safe_url)

    def _lost(self, conn: _Conn, why: str) -> None:
        """``conn`` broke: it leaves rotation at once, its streams fail (retryable),
        and its slot reconnects in the background with backoff."""
        if conn.state not in _OPEN:
            return
        slot = conn.slot
        server = slot.server
        conn.state = ConnState.BROKEN
        server.lost += 1
        server.draining.discard(conn)
        for attempt in list(conn.attempts):
            attempt.connection_lost()
        self._close_conn(conn)
        if slot.conn is conn:
            slot.conn = None
            log.info("a connection to %s broke (%s)", server.safe_url, why)
            if server.healthy() == 0:
                log.warning(
                    "no healthy connection to %s left (%s); reconnecting in the background",
                    server.safe_url,
                    why,
                )
            if self._state is PoolState.OPEN:
                self._schedule_fill(slot, wait_first=True)

    def _retire_now(self, conn: _Conn, reason: RetireReason) -> None:
        """Take ``conn`` out of rotation at once (its streams finish on it) and
        connect a replacement."""
        if conn.state not in _IN_ROTATION:
            return
        slot = conn.slot
        server = slot.server
        slot.conn = None
        server.retired += 1
        self._drain(conn)
        log.info("retiring a connection to %s (%s)", server.safe_url, reason.value)
        if server.healthy() == 0:
            log.warning("%s: no connection to %s in rotation", reason.value, server.safe_url)
        if self._state is PoolState.OPEN:
            self._schedule_fill(slot, wait_first=False)

    def _expire(self, conn: _Conn, reason: RetireReason) -> None:
        """Replace ``conn``, keeping it in rotation until the replacement is ready."""
        if conn.state is not ConnState.READY:
            return
        conn.state = ConnState.EXPIRING
        log.debug("replacing a connection to %s (%s)", conn.safe_url, reason.value)
        self._schedule_fill(conn.slot, wait_first=False)

    def _drain(self, conn: _Conn) -> None:
        conn.state = ConnState.RETIRING
        conn.slot.server.draining.add(conn)
        self._spawn(
            self._close_when_idle(conn), f"natstream-pool-retire-{conn.safe_url}-{conn.slot.index}"
        )

    async def _close_when_idle(self, conn: _Conn) -> None:
        await conn.wait_idle()
        if conn.state is ConnState.RETIRING:
            conn.slot.server.draining.discard(conn)
            self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        """Close ``conn``'s socket in a task of its own that is never cancelled: a
        nats-py close cut short would leave the socket open. close() awaits these."""
        if conn.state is not ConnState.BROKEN:
            conn.state = ConnState.CLOSED
        if conn.nc.is_closed:
            return
        task = asyncio.ensure_future(_close_quietly(conn.nc))
        task.set_name(f"natstream-pool-close-{conn.safe_url}-{conn.slot.index}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _schedule_fill(self, slot: _Slot, *, wait_first: bool) -> None:
        """Make sure a task is connecting ``slot`` (one per slot at most)."""
        if slot.task is not None and not slot.task.done():
            return
        slot.task = self._spawn(
            self._fill(slot, wait_first),
            f"natstream-pool-connect-{slot.server.safe_url}-{slot.index}",
        )

    async def _fill(self, slot: _Slot, wait_first: bool) -> None:
        """Connect ``slot`` until it holds a fresh connection in rotation.

        Before every attempt but the first (and before the first too when
        ``wait_first``: the server just dropped us) it waits
        ``backoff_delay(slot.failures)``.
        """
        cfg = self.config
        wait = wait_first
        while self._state is PoolState.OPEN and slot.needs_connection():
            if wait:
                await asyncio.sleep(
                    backoff_delay(
                        slot.failures, cfg.reconnect_backoff, cfg.reconnect_backoff_max, self._rand
                    )
                )
                if self._state is not PoolState.OPEN or not slot.needs_connection():
                    return
            wait = True  # also when a new connection breaks at once: no tight loop
            try:
                await self._connect_slot(slot)
            except Exception as exc:
                slot.failures += 1
                slot.server.connect_errors += 1
                log.debug(
                    "connecting to %s failed (%s)",
                    slot.server.safe_url,
                    translate_connect_error(exc),
                )

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ health

    async def _health_loop(self) -> None:
        """Every ``health_check_interval``: replace connections past max_lifetime or
        max_idle, and ping every connection in rotation (concurrently)."""
        cfg = self.config
        while self._state is PoolState.OPEN:
            await asyncio.sleep(cfg.health_check_interval)
            now = self._clock()
            conns = [s.conn for s in self._slots if s.conn is not None]
            for conn in conns:
                reason = retirement_due(
                    now,
                    expires_at=conn.expires_at,
                    last_used=conn.last_used,
                    in_flight=len(conn.attempts),
                    max_idle=cfg.max_idle,
                )
                if reason is not None:
                    self._expire(conn, reason)
            await asyncio.gather(*(self._check(c) for c in conns))

    async def _check(self, conn: _Conn) -> None:
        """Measure ``conn``'s round trip; on failure or timeout it is lost, unless
        messages kept arriving meanwhile (the PONG is queued behind them: busy, not
        dead)."""
        received = conn.nc.stats["in_msgs"]
        try:
            async with asyncio.timeout(self.config.health_check_timeout):
                rtt = await conn.nc.rtt()
        except Exception as exc:
            busy = isinstance(exc, TimeoutError) and conn.nc.stats["in_msgs"] > received
            if busy and conn.nc.is_connected:
                return
            if conn.state in _IN_ROTATION:
                conn.slot.server.health_failed += 1
                self._lost(conn, f"health check failed: {type(exc).__name__}")
        else:
            conn.rtt = rtt

    # ------------------------------------------------------------ routing

    def _acquire(self) -> _Conn:
        """The connection for a new stream attempt (see the module docstring).

        Raises:
            PoolClosedError: the pool is not open.
            ConnectionLostError: no connection is up right now (retryable).
        """
        if self._state is not PoolState.OPEN:
            raise PoolClosedError(
                "this pool is not open yet; use `await Pool.connect(config)`"
                if self._state in (PoolState.NEW, PoolState.OPENING)
                else "this pool is closed; create a new Pool"
            )
        slots = self._slots
        i = pick_least_loaded(
            [None if s.conn is None else len(s.conn.attempts) for s in slots], self._rr
        )
        if i is not None:
            self._rr = (i + 1) % len(slots)
            conn = slots[i].conn
            assert conn is not None
        else:
            conn = self._fallback()
        conn.slot.server.attempts += 1
        return conn

    def _fallback(self) -> _Conn:
        """A retiring connection still up, when none is in rotation."""
        up = [c for s in self._servers for c in s.draining if c.nc.is_connected]
        if not up:
            servers = ", ".join(s.safe_url for s in self._servers)
            raise ConnectionLostError(
                f"no connection to any of [{servers}] is up right now; the pool keeps "
                "reconnecting in the background (retry later, or pass max_retries)"
            )
        return min(up, key=lambda c: len(c.attempts))

    def _stream_started(self, retry: bool) -> None:
        """An attempt was acquired: the first of a stream, or a retry."""
        if retry:
            self._retried += 1
        else:
            self._started += 1

    def _stream_finished(self, attempt: _Attempt, ok: bool) -> None:
        """An attempt is over (called once per attempt, before it detaches)."""
        self._replies += attempt.replies
        self._bytes += attempt.bytes
        attempt.replies = attempt.bytes = 0
        machine = attempt.machine
        outcome = (
            Outcome.COMPLETED
            if ok
            else attempt_outcome(machine.state, deadline=machine.deadline, now=attempt.loop.time())
        )
        if outcome is Outcome.COMPLETED:
            self._completed += 1
        elif outcome is Outcome.FAILED:
            self._failed += 1
        else:
            self._cancelled += 1

    # ------------------------------------------------------------ requests

    def stream(
        self,
        subject: str,
        data: bytes = b"",
        *,
        request_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.5,
        headers: dict[str, str] | None = None,
        options: StreamOptions | None = None,
    ) -> Stream:
        """A streamed request to use as ``async with pool.stream(...) as s: async for m in s``.

        See :class:`Stream` for what iteration yields and raises. Timeouts are in
        seconds; ``request_timeout`` bounds silence before and between replies,
        ``stream_timeout`` the whole stream (retries included).

        Raises:
            InvalidSubjectError: ``subject`` is empty, has whitespace or wildcards.
        """
        return Stream(
            self,
            subject,
            data,
            request_timeout=request_timeout,
            stream_timeout=stream_timeout,
            max_retries=max_retries,
            retry_delay=retry_delay,
            headers=headers,
            options=options,
        )

    async def stream_request(self, subject: str, data: bytes, handler: Handler) -> None:
        """Send ``data`` to ``subject`` and pass every reply to ``handler``.

        The handler (sync or async) sees data replies and the end or error marker.
        Returning False stops the stream early (the responder is told) and this
        returns normally; any other return value continues. The call returns at the
        end marker and raises :class:`StreamError` at an error marker.

        A sync handler is called with plain data replies as they arrive, from the
        connection's read loop, whenever the caller has nothing queued (the fast
        path: no task switch per reply); otherwise (the first reply, packed items,
        replies with other headers, markers) from the caller's task. Either
        way calls are in order, one at a time, the caller's task is the current task
        (``asyncio.current_task()``), and an exception it raises is raised here. It
        runs in the caller's context variables; on Python 3.11 in a copy taken when
        the call starts, the same for all its calls (what it sets is not seen by the
        caller). Like any sync code it blocks the event loop while it runs.

        Cancellation: the stream is ended and the responder is told to stop.

        Raises:
            StreamError, NoRespondersError, StalledError, ConnectionLostError,
            PoolClosedError, InvalidSubjectError.
        """
        await self.stream(subject, data).run_handler(handler)

    async def stream_request_with_timeout(
        self,
        subject: str,
        data: bytes,
        request_timeout: float | None,
        stream_timeout: float | None,
        handler: Handler,
    ) -> None:
        """Like :meth:`stream_request`, with timeouts in seconds (None: no limit).

        ``request_timeout``: the longest silence allowed before the first reply and
        between replies (time spent in ``handler`` does not count) ->
        :class:`RequestTimeoutError`. ``stream_timeout``: deadline of the whole
        stream, handler included (the handler is cancelled) ->
        :class:`StreamTimeoutError`. Both are :class:`TimeoutError`.
        """
        await self.stream(
            subject, data, request_timeout=request_timeout, stream_timeout=stream_timeout
        ).run_handler(handler)

    async def stream_request_with_retry(
        self,
        subject: str,
        data: bytes,
        max_retries: int,
        retry_delay: float,
        handler: Handler,
        *,
        request_timeout: float | None = None,
        stream_timeout: float | None = None,
    ) -> None:
        """Like :meth:`stream_request`, retrying retryable failures.

        On an error marker, no responders, a timeout, a stall or a lost connection,
        wait ``retry_delay`` seconds and send the request again, up to
        ``max_retries`` more times, then raise the last error. With resume on (the
        default, ``Config.stream.resume``) the retry continues after the last
        reply the handler accepted: the handler never sees a duplicate or a gap.
        """
        await self.stream(
            subject,
            data,
            max_retries=max_retries,
            retry_delay=retry_delay,
            request_timeout=request_timeout,
            stream_timeout=stream_timeout,
        ).run_handler(handler)

    # ------------------------------------------------------------ stats

    def stats(self) -> PoolStats:
        """Counters since the pool opened and gauges of now (cheap; no I/O).

        See :class:`PoolStats` and :class:`ServerStats` for what each field means.
        """
        servers = tuple(self._server_stats(s) for s in self._servers)
        live = [a for s in self._servers for a in s.live]
        return PoolStats(
            servers=servers,
            slots=sum(s.slots for s in servers),
            healthy=sum(s.healthy for s in servers),
            connections=sum(s.connections for s in servers),
            streams_in_flight=len(live),
            streams_started=self._started,
            streams_retried=self._retried,
            streams_completed=self._completed,
            streams_failed=self._failed,
            streams_cancelled=self._cancelled,
            replies_received=self._replies + sum(a.replies for a in live),
            bytes_received=self._bytes + sum(a.bytes for a in live),
            reconnects=sum(s.reconnects for s in servers),
            connections_lost=sum(s.connections_lost for s in servers),
            connections_retired=sum(s.connections_retired for s in servers),
            connect_errors=sum(s.connect_errors for s in servers),
            health_checks_failed=sum(s.health_checks_failed for s in servers),
        )

    def _server_stats(self, server: _Server) -> ServerStats:
        healthy = [s.conn for s in server.slots if s.conn is not None]
        rtts = sorted(c.rtt for c in healthy if c.rtt is not None)
        return ServerStats(
            url=server.safe_url,
            slots=self.config.idle_per_server,
            healthy=len(healthy),
            connections=len(healthy) + len(server.draining),
            rtt=rtts[len(rtts) // 2] if rtts else None,
            streams_in_flight=len(server.live),
            attempts=server.attempts,
            reconnects=server.reconnects,
            connections_lost=server.lost,
            connections_retired=server.retired,
            connect_errors=server.connect_errors,
            health_checks_failed=server.health_failed,
        )

    def __repr__(self) -> str:
        servers = ", ".join(s.safe_url for s in self._servers)
        return f"<Pool {self._state.value} servers=[{servers}]>"


async def _close_quietly(nc: Client) -> None:
    if nc.is_closed:
        return
    try:
        await nc.close()
    except Exception:
        log.debug("closing a connection failed", exc_info=True)
