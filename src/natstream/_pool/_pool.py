"""Pool: ``idle_per_server`` connections to each server, and the requester API.

Shape. A *slot* is one of the ``idle_per_server`` places for a connection to one
configured server. A slot holds at most one connection *in rotation* (one that new
streams may use). Every connection is pinned to its slot's server: nats-py's own
reconnect is off, so a connection never wanders to another node; the pool replaces
it instead (:mod:`._connections`). Stream attempts lease connections
(:mod:`._lending`); the requester never sees the pool itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType

from .._config import Config, StreamOptions, as_config
from .._errors import NatstreamError, NoServersError, PoolClosedError
from .._events import ConnectionEventHook, check_hook
from .._requester import Handler, Stream
from .._tracing import tracing_for
from .._transport import safe_server, translate_connect_error
from ._connections import Connections
from ._lending import Lender
from ._model import PoolState, Server, WindowBudget
from ._stats import PoolStats, ServerStats

__all__ = ["Pool"]

log = logging.getLogger("natstream")

# After close()'s grace period, streams still running are failed; this is how long
# close() then waits for them to tell their responders to stop before it closes the
# connections under them.
_ABORT_WAIT = 1.0


class Pool:
    """Connections to every configured server, and streamed requests over them.

    ``pool = await Pool.connect(config)`` or ``async with Pool(config) as pool:``,
    ``config`` being a :class:`Config` or server URLs alone.
    See the module docstring for routing, health checks and connection lifecycle;
    :meth:`stats` for what is counted; :meth:`close` for how it drains.

    Args:
        on_connection_event: called with a :class:`ConnectionEvent` for each of the
            pool's connections: connected (at open, and a replacement of one that
            expired), disconnected (it broke), reconnected (a new connection in a
            lost one's place), lame_duck (its server is shutting down), closed (the
            pool closed it). See :data:`ConnectionEventHook`.

    Raises:
        TypeError: ``on_connection_event`` is not a plain callable.
        ConfigError: ``config`` asks for tracing and OpenTelemetry is not installed.
    """

    def __init__(
        self,
        config: Config | Sequence[str] | str,
        *,
        on_connection_event: ConnectionEventHook | None = None,
    ) -> None:
        check_hook(on_connection_event)
        config = as_config(config)
        tracing = tracing_for(config)
        self.config = config
        self._state = PoolState.NEW
        self._servers = [Server(url, safe_server(url)) for url in config.servers]
        self._conns = Connections(
            config,
            self._servers,
            WindowBudget(config.window_budget_messages, config.window_budget_bytes),
            accepting=lambda: self._state is PoolState.OPEN,
            opening=lambda: self._state in (PoolState.OPENING, PoolState.OPEN),
            on_event=on_connection_event,
        )
        self._lender = Lender(self._conns, config.stream, lambda: self._state, tracing)
        self._closed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        config: Config | Sequence[str] | str,
        *,
        on_connection_event: ConnectionEventHook | None = None,
    ) -> Pool:
        """Create a pool and open it (see :meth:`open`). ``config`` may also be server
        URLs alone (a list, or one str of comma-separated URLs).

        Raises:
            NoServersError: see :meth:`open`.
            TypeError, ConfigError: ``config`` is not a Config or valid server URLs.
        """
        pool = cls(config, on_connection_event=on_connection_event)
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
        conns = self._conns
        try:
            results = await conns.open_all()
        except BaseException:
            self._state = PoolState.CLOSED
            self._closed.set()
            await conns.close_all()
            raise
        if self._state is not PoolState.OPENING:  # close() was called meanwhile
            await conns.close_all()
            raise PoolClosedError("this pool was closed while it was opening")
        reasons: dict[Server, str] = {}
        for slot, result in zip(conns.slots, results, strict=True):
            if result is not None:
                slot.failures = 1
                slot.server.connect_errors += 1
                reasons.setdefault(slot.server, translate_connect_error(result))
        if not any(s.conn is not None for s in conns.slots):
            self._state = PoolState.CLOSED
            self._closed.set()
            await conns.close_all()
            raise NoServersError(
                [s.safe_url for s in self._servers],
                [reasons.get(s, "disconnected right after connecting") for s in self._servers],
            )
        self._state = PoolState.OPEN
        for server, reason in reasons.items():
            log.warning(
                "server %s unreachable (%s); retrying in the background", server.safe_url, reason
            )
        conns.start()

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
        conns = self._conns
        try:
            conns.cancel_background()  # no health checks or reconnects from now on
            if grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await self._wait_idle()
            aborted = [lease for s in self._servers for lease in s.live]
            for lease in aborted:
                lease.lost()
            if aborted:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ABORT_WAIT):
                        await self._wait_idle()
        finally:
            await conns.stop()
            await conns.close_all()
            self._state = PoolState.CLOSED
            self._closed.set()

    async def _wait_idle(self) -> None:
        """Wait until no stream is in flight on any connection."""
        for server in self._servers:
            await server.idle.wait()

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
        seconds; ``request_timeout`` bounds silence before and between replies (see
        :meth:`stream_request_with_timeout`), ``stream_timeout`` the whole stream
        (retries included).

        Raises:
            InvalidSubjectError: ``subject`` is empty, has whitespace or wildcards.
        """
        return Stream(
            self._lender,
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
        :class:`RequestTimeoutError`. A natstream responder answers at once (with
        its accept when its first reply is slow) and then heartbeats: from then on
        its stall time (``heartbeat`` x ``stall_factor``) judges it instead, so a
        slow but alive responder is never cut off, even with a ``request_timeout``
        shorter than a heartbeat interval. ``stream_timeout``: deadline of the whole
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
        live = [lease for s in self._servers for lease in s.live]
        lender = self._lender
        return PoolStats(
            servers=servers,
            slots=sum(s.slots for s in servers),
            healthy=sum(s.healthy for s in servers),
            connections=sum(s.connections for s in servers),
            streams_in_flight=len(live),
            streams_started=lender.started,
            streams_retried=lender.retried,
            streams_completed=lender.completed,
            streams_failed=lender.failed,
            streams_cancelled=lender.cancelled,
            replies_received=lender.replies + sum(lease.replies for lease in live),
            bytes_received=lender.bytes + sum(lease.bytes for lease in live),
            reconnects=sum(s.reconnects for s in servers),
            connections_lost=sum(s.connections_lost for s in servers),
            connections_retired=sum(s.connections_retired for s in servers),
            connect_errors=sum(s.connect_errors for s in servers),
            health_checks_failed=sum(s.health_checks_failed for s in servers),
        )

    def _server_stats(self, server: Server) -> ServerStats:
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
