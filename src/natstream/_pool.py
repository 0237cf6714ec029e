"""Pool: ``idle_per_server`` connections to each server, and the requester API.

Each connection is pinned to one server (nats-py's own reconnect is off, so it never
wanders to another node); the pool reconnects broken ones in the background with
exponential backoff and jitter. A new stream goes to the ready connection with the
fewest streams in flight, round-robin among ties. State changes happen in plain
(non-awaiting) code; I/O happens outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from nats.aio.client import Client

from ._config import Config, StreamOptions
from ._connection import connect, log, safe_server, translate_connect_error
from ._errors import ConnectionLostError, NoServersError, PoolClosedError
from ._requester import Handler, Stream

if TYPE_CHECKING:
    from ._requester import _Attempt

__all__ = ["Pool", "PoolStats", "ServerStats"]


class PoolState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"  # in rotation
    RETIRING = "retiring"  # out of rotation, in-flight streams finishing
    BROKEN = "broken"  # waiting to reconnect
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServerStats:
    """One configured server, as the pool sees it."""

    url: str
    connections: int
    healthy: int
    rtt: float | None  # seconds, the last health check's median over connections
    streams_in_flight: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters (since the pool opened) and gauges (now); see :meth:`Pool.stats`."""

    servers: tuple[ServerStats, ...]
    connections: int
    healthy: int
    streams_in_flight: int
    streams_started: int
    streams_completed: int
    streams_failed: int
    streams_retried: int
    replies_received: int
    bytes_received: int
    reconnects: int
    health_checks_failed: int


@dataclass(eq=False)
class _Conn:
    """One connection slot, pinned to ``url``."""

    url: str
    index: int
    inbox_prefix: str
    state: ConnState = ConnState.CONNECTING
    nc: Client = field(default=None)  # type: ignore[assignment]
    attempts: set[_Attempt] = field(default_factory=set)
    rtt: float | None = None
    expires_at: float = float("inf")
    last_used: float = field(default_factory=time.monotonic)
    failures: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, attempt: _Attempt) -> None:
        self.attempts.add(attempt)
        self.idle.clear()

    def discard(self, attempt: _Attempt) -> None:
        self.attempts.discard(attempt)
        if not self.attempts:
            self.idle.set()

    async def wait_idle(self) -> None:
        """Wait until no stream is in flight on this connection."""
        if self.attempts:
            await self.idle.wait()

    @property
    def safe_url(self) -> str:
        return safe_server(self.url)


class Pool:
    """Connections to every configured server, and streamed requests over them.

    ``pool = await Pool.connect(config)`` or ``async with Pool(config) as pool:``.
    Closing (:meth:`close`) refuses new streams, lets in-flight ones finish for
    ``config.close_grace`` seconds, then cancels them.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._state = PoolState.NEW
        self._conns: list[_Conn] = []
        self._rr = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_task: asyncio.Task[None] | None = None
        self._reconnects: dict[str, int] = {url: 0 for url in config.servers}
        self._started = self._completed = self._failed = self._retried = 0
        self._replies = self._bytes = 0
        self._health_failed = 0

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, config: Config) -> Pool:
        """Create a pool and open it (see :meth:`open`)."""
        pool = cls(config)
        await pool.open()
        return pool

    async def open(self) -> None:
        """Open ``idle_per_server`` connections to each server.

        Returns once they have all been tried; servers that are down are retried in
        the background.

        Raises:
            NoServersError: no server could be reached (names each and why).
            PoolClosedError: the pool was closed.
        """
        if self._state is not PoolState.NEW:
            if self._state is PoolState.OPEN:
                return
            raise PoolClosedError("this pool is closed; create a new Pool")
        cfg = self.config
        self._conns = [
            _Conn(url, i, cfg.inbox_prefix)
            for url in cfg.servers
            for i in range(cfg.idle_per_server)
        ]
        results = await asyncio.gather(
            *(self._connect_conn(c) for c in self._conns), return_exceptions=True
        )
        if not any(c.state is ConnState.READY for c in self._conns):
            await self._close_all()
            self._state = PoolState.CLOSED
            reasons: dict[str, str] = {}
            for c, r in zip(self._conns, results, strict=True):
                if isinstance(r, BaseException):
                    reasons.setdefault(c.safe_url, translate_connect_error(r))
            servers = [safe_server(u) for u in cfg.servers]
            raise NoServersError(servers, [reasons.get(s, "unknown") for s in servers])
        self._state = PoolState.OPEN
        warned: set[str] = set()
        for c, r in zip(self._conns, results, strict=True):
            if isinstance(r, BaseException):
                if c.url not in warned:
                    warned.add(c.url)
                    log.warning(
                        "server %s unreachable (%s); retrying in the background",
                        c.safe_url,
                        translate_connect_error(r),
                    )
                self._schedule_reconnect(c)
        self._health_task = asyncio.create_task(self._health_loop(), name="natstream-pool-health")

    async def _connect_conn(self, c: _Conn) -> None:
        c.state = ConnState.CONNECTING

        async def on_closed() -> None:
            self._conn_lost(c, nc_ref)

        async def on_lame_duck() -> None:
            self._retire(c, reason="lame duck")

        nc_ref: list[Client] = []
        nc = await connect(
            [c.url],
            self.config.nats_options(),
            allow_reconnect=False,
            closed_cb=on_closed,
            disconnected_cb=on_closed,
            lame_duck_cb=on_lame_duck,
        )
        nc_ref.append(nc)
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            await _close_quietly(nc)
            return
        c.nc = nc
        c.state = ConnState.READY
        c.failures = 0
        c.last_used = time.monotonic()
        lifetime = self.config.max_lifetime
        c.expires_at = (
            time.monotonic() + lifetime * random.uniform(0.9, 1.1) if lifetime else float("inf")
        )

    def _conn_lost(self, c: _Conn, nc_ref: list[Client]) -> None:
        """The connection closed under us: fail its streams, reconnect later."""
        if not nc_ref or c.nc is not nc_ref[0] or c.state in (ConnState.BROKEN, ConnState.CLOSED):
            return
        c.state = ConnState.BROKEN
        for attempt in list(c.attempts):
            attempt.connection_lost()
        if self._state is PoolState.OPEN:
            log.warning("connection to %s lost; reconnecting", c.safe_url)
            self._schedule_reconnect(c)

    def _retire(self, c: _Conn, reason: str) -> None:
        """Take ``c`` out of rotation; close it once its streams finish, then replace it."""
        if c.state is not ConnState.READY:
            return
        log.info("retiring a connection to %s (%s)", c.safe_url, reason)
        c.state = ConnState.RETIRING
        self._spawn(self._drain_and_replace(c), f"natstream-retire-{c.index}")

    async def _drain_and_replace(self, c: _Conn) -> None:
        old = c.nc
        await c.wait_idle()
        if c.state is ConnState.RETIRING:
            c.state = ConnState.BROKEN
        await _close_quietly(old)
        if self._state is PoolState.OPEN:
            self._schedule_reconnect(c, immediate=True)

    def _schedule_reconnect(self, c: _Conn, *, immediate: bool = False) -> None:
        c.state = ConnState.BROKEN
        self._spawn(self._reconnect(c, immediate), f"natstream-reconnect-{c.index}")

    async def _reconnect(self, c: _Conn, immediate: bool) -> None:
        cfg = self.config
        while self._state is PoolState.OPEN and c.state is ConnState.BROKEN:
            if not immediate or c.failures:
                delay = min(cfg.reconnect_backoff_max, cfg.reconnect_backoff * 2**c.failures)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if self._state is not PoolState.OPEN:
                return
            try:
                await self._connect_conn(c)
            except Exception as exc:
                c.state = ConnState.BROKEN
                c.failures += 1
                log.debug("reconnect to %s failed: %s", c.safe_url, translate_connect_error(exc))
            else:
                self._reconnects[c.url] += 1
                log.info("reconnected to %s", c.safe_url)
                return

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _health_loop(self) -> None:
        cfg = self.config
        while self._state is PoolState.OPEN:
            await asyncio.sleep(cfg.health_check_interval)
            now = time.monotonic()
            ready = [c for c in self._conns if c.state is ConnState.READY]
            for c in ready:
                if now >= c.expires_at:
                    self._retire(c, "max_lifetime")
                elif (
                    cfg.max_idle is not None and not c.attempts and now - c.last_used > cfg.max_idle
                ):
                    self._retire(c, "max_idle")
            await asyncio.gather(*(self._check(c) for c in ready if c.state is ConnState.READY))

    async def _check(self, c: _Conn) -> None:
        nc = c.nc
        try:
            c.rtt = await asyncio.wait_for(nc.rtt(), self.config.health_check_timeout)
        except Exception:
            if c.nc is not nc or c.state is not ConnState.READY:
                return
            self._health_failed += 1
            log.warning("health check of %s failed; reconnecting", c.safe_url)
            c.state = ConnState.BROKEN
            for attempt in list(c.attempts):
                attempt.connection_lost()
            await _close_quietly(nc)
            self._schedule_reconnect(c)

    async def close(self, grace: float | None = None) -> None:
        """Close the pool: no new streams; in-flight ones get ``grace`` seconds
        (``config.close_grace`` when None) to finish, then are cancelled.

        Idempotent. Cancelling ``close()`` itself closes the connections at once.
        """
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            return
        self._state = PoolState.CLOSING
        grace = self.config.close_grace if grace is None else grace
        try:
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        for c in self._conns:
                            await c.wait_idle()
            for c in self._conns:
                for attempt in list(c.attempts):
                    attempt.connection_lost()
        finally:
            if self._health_task is not None:
                self._health_task.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(
                *self._tasks,
                *([self._health_task] if self._health_task else []),
                return_exceptions=True,
            )
            await self._close_all()
            self._state = PoolState.CLOSED

    async def _close_all(self) -> None:
        conns = [c for c in self._conns if c.nc is not None]
        for c in self._conns:
            c.state = ConnState.CLOSED
        await asyncio.gather(*(_close_quietly(c.nc) for c in conns))

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

    # ------------------------------------------------------------ routing

    def _acquire(self) -> _Conn:
        """The ready connection with the fewest streams in flight (round-robin on ties)."""
        if self._state is not PoolState.OPEN:
            raise PoolClosedError(
                "this pool is closed"
                if self._state is not PoolState.NEW
                else "this pool is not open; use `await Pool.connect(config)`"
            )
        conns = self._conns
        n = len(conns)
        best: _Conn | None = None
        best_load = 0
        start = self._rr
        for i in range(n):
            c = conns[(start + i) % n]
            if c.state is ConnState.READY and (best is None or len(c.attempts) < best_load):
                best = c
                best_load = len(c.attempts)
                if best_load == 0:
                    break
        if best is None:
            raise ConnectionLostError("no healthy connection to any server right now")
        self._rr = (best.index + best_load + start + 1) % n
        best.last_used = time.monotonic()
        return best

    def _stream_started(self, retry: bool) -> None:
        if retry:
            self._retried += 1
        else:
            self._started += 1

    def _stream_finished(self, attempt: _Attempt, ok: bool) -> None:
        self._replies += attempt.replies
        self._bytes += attempt.bytes
        attempt.replies = attempt.bytes = 0
        if ok:
            self._completed += 1
        else:
            self._failed += 1

    def _in_flight(self) -> int:
        return sum(len(c.attempts) for c in self._conns)

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
        """Counters since the pool opened and gauges of now (cheap; no I/O)."""
        servers = []
        for url in self.config.servers:
            conns = [c for c in self._conns if c.url == url]
            rtts = sorted(c.rtt for c in conns if c.rtt is not None and c.state is ConnState.READY)
            servers.append(
                ServerStats(
                    url=safe_server(url),
                    connections=sum(c.state is not ConnState.CLOSED for c in conns),
                    healthy=sum(c.state is ConnState.READY for c in conns),
                    rtt=rtts[len(rtts) // 2] if rtts else None,
                    streams_in_flight=sum(len(c.attempts) for c in conns),
                    reconnects=self._reconnects[url],
                )
            )
        live = [c for c in self._conns if c.attempts]
        return PoolStats(
            servers=tuple(servers),
            connections=sum(s.connections for s in servers),
            healthy=sum(s.healthy for s in servers),
            streams_in_flight=self._in_flight(),
            streams_started=self._started,
            streams_completed=self._completed,
            streams_failed=self._failed,
            streams_retried=self._retried,
            replies_received=self._replies + sum(a.replies for c in live for a in c.attempts),
            bytes_received=self._bytes + sum(a.bytes for c in live for a in c.attempts),
            reconnects=sum(self._reconnects.values()),
            health_checks_failed=self._health_failed,
        )

    def __repr__(self) -> str:
        servers = ", ".join(safe_server(u) for u in self.config.servers)
        return f"<Pool {self._state.value} servers=[{servers}]>"


async def _close_quietly(nc: Client | None) -> None:
    if nc is None or nc.is_closed:
        return
    try:
        await nc.close()
    except Exception:
        log.debug("closing a connection failed", exc_info=True)
