"""The pool's connections over their life: connecting slots, replacing what broke,
expired or went lame-duck, health checks, closing (see :mod:`._model` for the
states).

A slot whose connection broke or went lame-duck is refilled with exponential backoff
and jitter (:func:`natstream._backoff.backoff_delay`); a slot whose connection
expired is refilled at once, make-before-break, so capacity never dips. Every state
change happens in plain (non-awaiting) code, so a stream never sees a half-made
change; I/O happens outside it. Every background task is named
``natstream-pool-...`` and stopped by :meth:`Connections.stop`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from .._backoff import backoff_delay, lifetime_deadline
from .._config import Config
from .._errors import ConnectionLostError
from .._events import ConnectionEventHook, ConnectionEventKind, notify
from .._transport import Link, connect, translate_connect_error
from ._model import (
    IN_ROTATION,
    OPEN_STATES,
    Conn,
    ConnState,
    RetireReason,
    Server,
    Slot,
    WindowBudget,
    retirement_due,
)

__all__ = ["CLOSE_TIMEOUT", "Connections"]

log = logging.getLogger("natstream")

# A nats-py close flushes what is pending; against a frozen server that could wait
# for ever. Past this, closing gives up on the flush.
CLOSE_TIMEOUT = 5.0


class Connections:
    """``idle_per_server`` slots per server, each holding at most one connection in
    rotation.

    Args:
        config: the pool's configuration.
        servers: one per configured server, in order.
        budget: the pool's window budget, shared by its connections.
        accepting: whether the pool is open (slots are refilled only then).
        opening: whether the pool is opening or open (a fresh connection is kept).
        on_event: the pool's ``on_connection_event`` hook, or None.

    Time (``clock``) and randomness (``rand``) are attributes so tests can replace
    them.
    """

    def __init__(
        self,
        config: Config,
        servers: list[Server],
        budget: WindowBudget,
        *,
        accepting: Callable[[], bool],
        opening: Callable[[], bool],
        on_event: ConnectionEventHook | None = None,
    ) -> None:
        self.config = config
        self.servers = servers
        self.budget = budget
        self.slots: list[Slot] = []
        self.clock: Callable[[], float] = time.monotonic
        self.rand: Callable[[], float] = random.random
        self._accepting = accepting
        self._opening = opening
        self._on_event = on_event
        self._tasks: set[asyncio.Task[None]] = set()  # health loop, connects, drains
        self._closers: set[asyncio.Task[None]] = set()  # never cancelled; close_all awaits

    # ------------------------------------------------------------ opening

    async def open_all(self) -> list[BaseException | None]:
        """Make the slots (interleaved: s1, s2, s3, s1, ... so round-robin alternates
        servers) and connect each once, concurrently; each slot's result or error."""
        cfg = self.config
        self.slots = [Slot(s, i) for i in range(cfg.idle_per_server) for s in self.servers]
        for slot in self.slots:
            slot.server.slots.append(slot)
        results = await asyncio.gather(
            *(self.connect_slot(s) for s in self.slots), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    def start(self) -> None:
        """The pool is open: refill the empty slots in the background and start the
        health checks."""
        for slot in self.slots:
            if slot.conn is None:
                self.schedule_fill(slot, wait_first=True)
        self._spawn(self._health_loop(), "natstream-pool-health")

    async def _open_conn(self, slot: Slot) -> Conn:
        """Connect to ``slot``'s server; the connection reports its own loss."""
        holder: list[Conn] = []

        async def on_disconnect() -> None:
            if holder:
                self.lost(holder[0], "disconnected")

        async def on_lame_duck() -> None:
            if holder:
                notify(self._on_event, ConnectionEventKind.LAME_DUCK, slot.server.safe_url)
                self._retire_now(holder[0], RetireReason.LAME_DUCK)

        link = await connect(
            [slot.server.url],
            self.config.nats_options(),
            allow_reconnect=False,
            disconnected_cb=on_disconnect,
            closed_cb=on_disconnect,
            lame_duck_cb=on_lame_duck,
        )
        now = self.clock()
        conn = Conn(
            slot,
            link,
            expires_at=lifetime_deadline(now, self.config.max_lifetime, self.rand),
            clock=self.clock,
            last_used=now,
            budget=self.budget,
        )
        holder.append(conn)
        return conn

    async def connect_slot(self, slot: Slot) -> None:
        """Open a connection for ``slot`` and put it in rotation.

        Raises:
            whatever the connect raised (the caller counts and translates it).
        """
        conn = await self._open_conn(slot)
        if not self._opening() or not conn.nc.is_connected:
            conn.state = ConnState.CLOSED  # never in rotation: no event to tell
            self._close_conn(conn)
            if self._opening():
                raise ConnectionLostError(f"connection to {slot.server.safe_url} closed at once")
            return
        self._install(slot, conn)

    def _install(self, slot: Slot, conn: Conn) -> None:
        """Put ``conn`` in rotation in ``slot``; an expiring predecessor starts retiring."""
        server = slot.server
        old = slot.conn
        slot.conn = conn
        slot.failures = 0
        kind = ConnectionEventKind.CONNECTED
        if old is not None:
            server.retired += 1
            self._drain(old)
        elif self._accepting():
            server.reconnects += 1
            kind = ConnectionEventKind.RECONNECTED
            if server.healthy() == 1:
                log.info("server %s is back in rotation", server.safe_url)
        notify(self._on_event, kind, server.safe_url)

    # ------------------------------------------------------------ losing and retiring

    def lost(self, conn: Conn, why: str) -> None:
        """``conn`` broke: it leaves rotation at once, its streams fail (retryable),
        and its slot reconnects in the background with backoff."""
        if conn.state not in OPEN_STATES:
            return
        slot = conn.slot
        server = slot.server
        conn.state = ConnState.BROKEN
        server.lost += 1
        notify(self._on_event, ConnectionEventKind.DISCONNECTED, server.safe_url)
        server.draining.discard(conn)
        for lease in list(conn.leases):
            lease.lost()
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
            if self._accepting():
                self.schedule_fill(slot, wait_first=True)

    def _retire_now(self, conn: Conn, reason: RetireReason) -> None:
        """Take ``conn`` out of rotation at once (its streams finish on it) and
        connect a replacement."""
        if conn.state not in IN_ROTATION:
            return
        slot = conn.slot
        server = slot.server
        slot.conn = None
        server.retired += 1
        self._drain(conn)
        log.info("retiring a connection to %s (%s)", server.safe_url, reason.value)
        if server.healthy() == 0:
            log.warning("%s: no connection to %s in rotation", reason.value, server.safe_url)
        if self._accepting():
            self.schedule_fill(slot, wait_first=False)

    def _expire(self, conn: Conn, reason: RetireReason) -> None:
        """Replace ``conn``, keeping it in rotation until the replacement is ready."""
        if conn.state is not ConnState.READY:
            return
        conn.state = ConnState.EXPIRING
        log.debug("replacing a connection to %s (%s)", conn.safe_url, reason.value)
        self.schedule_fill(conn.slot, wait_first=False)

    def _drain(self, conn: Conn) -> None:
        conn.state = ConnState.RETIRING
        conn.slot.server.draining.add(conn)
        self._spawn(
            self._close_when_idle(conn), f"natstream-pool-retire-{conn.safe_url}-{conn.slot.index}"
        )

    async def _close_when_idle(self, conn: Conn) -> None:
        await conn.wait_idle()
        if conn.state is ConnState.RETIRING:
            conn.slot.server.draining.discard(conn)
            self._close_conn(conn)

    def _close_conn(self, conn: Conn) -> None:
        """Close ``conn``'s socket in a task of its own that is never cancelled: a
        nats-py close cut short would leave the socket open. :meth:`close_all` awaits
        these."""
        if conn.state not in (ConnState.BROKEN, ConnState.CLOSED):
            conn.state = ConnState.CLOSED  # closed on purpose: a broken one was told
            notify(self._on_event, ConnectionEventKind.CLOSED, conn.safe_url)
        if conn.nc.is_closed:
            return
        task = asyncio.ensure_future(_close_quietly(conn.link))
        task.set_name(f"natstream-pool-close-{conn.safe_url}-{conn.slot.index}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # ------------------------------------------------------------ refilling

    def schedule_fill(self, slot: Slot, *, wait_first: bool) -> None:
        """Make sure a task is connecting ``slot`` (one per slot at most)."""
        if slot.task is not None and not slot.task.done():
            return
        slot.task = self._spawn(
            self.fill(slot, wait_first),
            f"natstream-pool-connect-{slot.server.safe_url}-{slot.index}",
        )

    async def fill(self, slot: Slot, wait_first: bool) -> None:
        """Connect ``slot`` until it holds a fresh connection in rotation.

        Before every attempt but the first (and before the first too when
        ``wait_first``: the server just dropped us) it waits
        ``backoff_delay(slot.failures)``.
        """
        cfg = self.config
        wait = wait_first
        while self._accepting() and slot.needs_connection():
            if wait:
                await asyncio.sleep(
                    backoff_delay(
                        slot.failures, cfg.reconnect_backoff, cfg.reconnect_backoff_max, self.rand
                    )
                )
                if not self._accepting() or not slot.needs_connection():
                    return
            wait = True  # also when a new connection breaks at once: no tight loop
            try:
                await self.connect_slot(slot)
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
        while self._accepting():
            await asyncio.sleep(cfg.health_check_interval)
            now = self.clock()
            conns = [s.conn for s in self.slots if s.conn is not None]
            for conn in conns:
                reason = retirement_due(
                    now,
                    expires_at=conn.expires_at,
                    last_used=conn.last_used,
                    in_flight=len(conn.leases),
                    max_idle=cfg.max_idle,
                )
                if reason is not None:
                    self._expire(conn, reason)
            await asyncio.gather(*(self._check(c) for c in conns))

    async def _check(self, conn: Conn) -> None:
        """Measure ``conn``'s round trip; on failure or timeout it is lost, unless
        messages kept arriving meanwhile (the PONG is queued behind them: busy, not
        dead)."""
        nc = conn.nc
        received = nc.stats["in_msgs"]
        try:
            rtt = await conn.link.round_trip(self.config.health_check_timeout)
        except Exception as exc:
            busy = isinstance(exc, TimeoutError) and nc.stats["in_msgs"] > received
            if busy and nc.is_connected:
                return
            if conn.state in IN_ROTATION:
                conn.slot.server.health_failed += 1
                self.lost(conn, f"health check failed: {type(exc).__name__}")
        else:
            conn.rtt = rtt

    # ------------------------------------------------------------ routing

    def in_rotation(self) -> list[Conn | None]:
        """Per slot, its connection in rotation (None for an empty slot)."""
        return [s.conn for s in self.slots]

    def retiring_up(self) -> list[Conn]:
        """Retiring connections that are still connected."""
        return [c for s in self.servers for c in s.draining if c.nc.is_connected]

    # ------------------------------------------------------------ closing

    async def stop(self) -> None:
        """Stop every background task (health checks, reconnects, retirements) and wait
        for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel_background(self) -> None:
        """Stop health checks and reconnects now, without waiting."""
        for task in list(self._tasks):
            task.cancel()

    async def close_all(self) -> None:
        """Close every connection (in rotation and retiring) and wait for the closes,
        at most :data:`CLOSE_TIMEOUT` seconds each."""
        for server in self.servers:
            conns = [s.conn for s in server.slots if s.conn is not None]
            conns += server.draining
            for slot in server.slots:
                slot.conn = None
            server.draining.clear()
            for conn in conns:
                self._close_conn(conn)
        if self._closers:
            _, pending = await asyncio.wait(set(self._closers), timeout=CLOSE_TIMEOUT)
            for task in pending:
                log.warning("a connection did not close within %g s", CLOSE_TIMEOUT)
                task.cancel()
            if pending:
                await asyncio.wait(pending)


async def _close_quietly(link: Link) -> None:
    if link.nc.is_closed:
        return
    try:
        await link.close()
    except Exception:
        log.debug("closing a connection failed", exc_info=True)
