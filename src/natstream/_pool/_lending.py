"""Lending connections to stream attempts: routing, the window budget, and what the
stats count of each attempt.

Routing: a new attempt goes to the in-rotation connection with the fewest leases
out; among ties, round-robin (:func:`~._model.pick_least_loaded`). When no
connection is in rotation, a retiring one that is still up is used rather than
failing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .._config import StreamOptions
from .._errors import ConnectionLostError, PoolClosedError
from .._protocol import Outcome
from .._requester import Lease
from .._tracing import Tracing
from ._connections import Connections
from ._model import Conn, PoolState, pick_least_loaded

__all__ = ["Lender"]


class Lender:
    """The pool's :class:`~natstream._requester.LeaseSource`.

    Counters (see :class:`~natstream.PoolStats`): ``started``, ``retried``,
    ``completed``, ``failed``, ``cancelled``, and ``replies``/``bytes`` of the
    attempts already over (live leases hold their own).
    """

    def __init__(
        self,
        connections: Connections,
        options: StreamOptions,
        state: Callable[[], PoolState],
        tracing: Tracing | None = None,
    ) -> None:
        self._conns = connections
        self._options = options
        self._state = state
        self._tracing = tracing
        self._rr = 0
        self.started = self.retried = 0
        self.completed = self.failed = self.cancelled = 0
        self.replies = self.bytes = 0

    @property
    def stream_options(self) -> StreamOptions:
        return self._options

    @property
    def tracing(self) -> Tracing | None:
        return self._tracing

    def lease(self, window_messages: int, window_bytes: int, *, retry: bool) -> Lease:
        """A connection for one attempt, with the window it may grant (see
        :meth:`Conn.window <natstream._pool._model.Conn.window>`).

        Raises:
            PoolClosedError: the pool is not open.
            ConnectionLostError: no connection is up right now (retryable).
        """
        state = self._state()
        if state is not PoolState.OPEN:
            raise PoolClosedError(
                "this pool is not open yet; use `await Pool.connect(config)`"
                if state in (PoolState.NEW, PoolState.OPENING)
                else "this pool is closed; create a new Pool"
            )
        conn = self._route()
        grant_messages, grant_bytes = conn.window(window_messages, window_bytes)
        lease = Lease(
            conn.link, grant_messages, grant_bytes, conn.safe_url, partial(self._release, conn)
        )
        conn.lend(lease)
        conn.slot.server.attempts += 1
        if retry:
            self.retried += 1
        else:
            self.started += 1
        return lease

    def _route(self) -> Conn:
        conns = self._conns.in_rotation()
        i = pick_least_loaded([None if c is None else len(c.leases) for c in conns], self._rr)
        if i is not None:
            self._rr = (i + 1) % len(conns)
            conn = conns[i]
            assert conn is not None
            return conn
        up = self._conns.retiring_up()
        if not up:
            servers = ", ".join(s.safe_url for s in self._conns.servers)
            raise ConnectionLostError(
                f"no connection to any of [{servers}] is up right now; the pool keeps "
                "reconnecting in the background (retry later, or pass max_retries)"
            )
        return min(up, key=lambda c: len(c.leases))

    def _release(self, conn: Conn, lease: Lease, outcome: Outcome) -> None:
        conn.take_back(lease)
        self.replies += lease.replies
        self.bytes += lease.bytes
        if outcome is Outcome.COMPLETED:
            self.completed += 1
        elif outcome is Outcome.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1
