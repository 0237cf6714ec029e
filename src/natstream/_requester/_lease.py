"""A connection lent to one stream attempt, and who lends it.

The requester never sees the pool: a :class:`Stream` asks a :class:`LeaseSource` for
a :class:`Lease` per attempt and gives it back with the attempt's outcome. The pool
is one such source; a test may be another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .._config import StreamOptions
from .._protocol import Outcome
from .._protocol._credit import Credit
from .._tracing import Tracing
from .._transport import Link

__all__ = ["Lease", "LeaseSource"]


class Lease:
    """One connection lent to one stream attempt.

    Attributes:
        link: the connection.
        window_messages, window_bytes: the flow-control window the attempt may grant
            (the source's budget has counted it until :meth:`release`).
        where: the server's URL without credentials, for error messages.
        replies, bytes: data replies and payload bytes received so far, as counted
            by the attempt's machine (the source reads them for its stats).
        on_lost: set by the attempt; called when the connection broke under it.
    """

    __slots__ = (
        "_counts",
        "_release",
        "link",
        "on_lost",
        "where",
        "window_bytes",
        "window_messages",
    )

    def __init__(
        self,
        link: Link,
        window_messages: int,
        window_bytes: int,
        where: str,
        release: Callable[[Lease, Outcome], None],
    ) -> None:
        self.link = link
        self.window_messages = window_messages
        self.window_bytes = window_bytes
        self.where = where
        self._counts: Credit | None = None
        self.on_lost: Callable[[], None] | None = None
        self._release: Callable[[Lease, Outcome], None] | None = release

    def count_by(self, machine: Credit) -> None:
        """Take :attr:`replies` and :attr:`bytes` from ``machine`` (the attempt's)."""
        self._counts = machine

    @property
    def replies(self) -> int:
        return 0 if self._counts is None else self._counts.received()[0]

    @property
    def bytes(self) -> int:
        return 0 if self._counts is None else self._counts.received()[1]

    def lost(self) -> None:
        """The source saw the connection break: the attempt fails (retryable)."""
        if self.on_lost is not None:
            self.on_lost()

    def release(self, outcome: Outcome) -> None:
        """Give the connection back, saying how the attempt ended. Idempotent: only
        the first call counts."""
        release, self._release = self._release, None
        if release is not None:
            release(self, outcome)

    @property
    def released(self) -> bool:
        return self._release is None


class LeaseSource(Protocol):
    """Lends connections to stream attempts (the pool)."""

    @property
    def stream_options(self) -> StreamOptions:
        """The options a stream uses unless it is given its own."""
        ...

    @property
    def tracing(self) -> Tracing | None:
        """What traces its streams; None when tracing is off."""
        ...

    def lease(self, window_messages: int, window_bytes: int, *, retry: bool) -> Lease:
        """A connection for one attempt that asks for this window (the lease may grant
        less); ``retry`` says whether it is a stream's first attempt or a retry.

        Raises:
            PoolClosedError: the source is closed (or not open yet).
            ConnectionLostError: no connection is up right now (retryable).
        """
        ...
