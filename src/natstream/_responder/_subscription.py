"""``StreamSubscription``: one subject served by a handler, and its streams' counts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._protocol import Outcome, ResponderMachine
from .._transport import Link
from ._kinds import Index, Kind
from ._stream import ResponderStream

__all__ = ["Host", "StreamSubscription", "SubscriptionStats"]

log = logging.getLogger("natstream")


class Host(Protocol):
    """What a subscription needs of the subscriber that made it (private names: the
    subscriber is public, this is not part of its API)."""

    close_grace: float
    send_exception_text: bool

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task called ``name``, stopped when the subscriber closes."""
        ...

    def _drop_control(self, token: str) -> None:
        """Stop routing control messages under ``token`` (its stream is over)."""
        ...

    def _forget(self, subscription: StreamSubscription) -> None:
        """``subscription`` has stopped."""
        ...


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one stream subscription."""

    subject: str
    queue: str
    streams_active: int
    streams_started: int
    streams_completed: int
    streams_failed: int
    streams_cancelled: int
    streams_rejected_busy: int
    replies_sent: int


class StreamSubscription:
    """Handle of one stream subscription; :meth:`stop` ends it."""

    def __init__(
        self,
        subscriber: Host,
        subject: str,
        queue: str,
        kind: Kind,
        max_concurrent_streams: int,
    ) -> None:
        self.subscriber = subscriber
        self.subject = subject
        self.queue = queue
        self.max_concurrent_streams = max_concurrent_streams
        self._kind = kind
        # A sync index handler's first reply is made in the request's dispatch.
        self._first_now = kind if isinstance(kind, Index) and kind.sync else None
        self._sub: Subscription | None = None
        self._streams: set[ResponderStream] = set()
        self._outcomes = dict.fromkeys(Outcome, 0)
        self._started = self._busy = self._sent = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no stream of this subscription is being served."""
        await self._idle.wait()

    @property
    def active(self) -> int:
        """Streams being served now."""
        return len(self._streams)

    def stats(self) -> SubscriptionStats:
        """The subscription's counters now (cheap; no I/O)."""
        outcomes = self._outcomes
        return SubscriptionStats(
            self.subject,
            self.queue,
            len(self._streams),
            self._started,
            outcomes[Outcome.COMPLETED],
            outcomes[Outcome.FAILED],
            outcomes[Outcome.CANCELLED],
            self._busy,
            self._sent,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking requests; in-flight streams get ``grace`` seconds (the
        subscriber's ``close_grace`` when None) to finish, then are cancelled.

        Returns once every stream of this subscription has ended.
        """
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("unsubscribe of %r failed", self.subject, exc_info=True)
        self.subscriber._forget(self)
        grace = self.subscriber.close_grace if grace is None else grace
        tasks = [s.task for s in self._streams if s.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)

    # ------------------------------------------------------------ the subscriber's side

    def _attach(self, sub: Subscription) -> None:
        """The NATS subscription whose requests this serves (:meth:`stop` ends it)."""
        self._sub = sub

    def _admit(self) -> bool:
        """Whether one more stream may start now; when not, it counts as rejected busy."""
        if len(self._streams) < self.max_concurrent_streams:
            return True
        self._busy += 1
        return False

    def _open_stream(
        self,
        link: Link,
        msg: Msg,
        machine: ResponderMachine,
        control_subject: str | None,
        token: str,
    ) -> ResponderStream:
        """A new stream of this subscription, counted as started (see :meth:`_serve`)."""
        self._started += 1
        stream = ResponderStream(
            self,
            self._kind,
            link,
            msg,
            machine,
            control_subject,
            token,
            f"natstream-stream-{self.subject}-{self._started}",
        )
        self._streams.add(stream)
        self._idle.clear()
        return stream

    def _serve(self, stream: ResponderStream) -> None:
        """Serve ``stream`` (once it takes its control messages)."""
        stream.start(self._first_now)

    # ------------------------------------------------------------ the streams' side

    @property
    def _send_exception_text(self) -> bool:
        return self.subscriber.send_exception_text

    def _stream_done(self, stream: ResponderStream, outcome: Outcome, replies: int) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._idle.set()
        self.subscriber._drop_control(stream.token)
        self._outcomes[outcome] += 1
        self._sent += replies

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.subscriber._spawn(coro, name)
