"""``StreamSubscription``: one subject served by a handler, and its streams' counts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._protocol import Outcome, ResponderMachine
from .._tracing import Tracing
from .._transport import Link, drain_subscription
from ._kinds import Index, Kind
from ._stream import ResponderStream

__all__ = ["Host", "StreamSubscription", "SubscriptionStats"]

log = logging.getLogger("natstream")


class Host(Protocol):
    """What a subscription needs of the subscriber that made it (private names: the
    subscriber is public, this is not part of its API)."""

    close_grace: float
    send_exception_text: bool
    plain_end: str
    _tracing: Tracing | None

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
    """Counters of one stream subscription.

    Attributes:
        bytes_sent: payload bytes of the data replies sent.
        streams_resumed: streams that resumed a requester's earlier attempt.
        last_error: the error marker (code and message) of the last stream that
            failed or request refused as invalid, "" while none has.
        processing_time: seconds the finished streams lasted, each from its request
            to its end, added up.
        requests_rejected_invalid: requests refused at once as malformed (400) or
            too large (413); they are not streams.
    """

    subject: str
    queue: str
    streams_active: int
    streams_started: int
    streams_completed: int
    streams_failed: int
    streams_cancelled: int
    streams_rejected_busy: int
    replies_sent: int
    bytes_sent: int = 0
    streams_resumed: int = 0
    last_error: str = ""
    processing_time: float = 0.0
    requests_rejected_invalid: int = 0


class StreamSubscription:
    """Handle of one stream subscription; :meth:`stop` ends it.

    Attributes:
        endpoint: its name as an endpoint of the subscriber's NATS service (see
            :class:`ServiceInfo`): given when subscribing, or made from the subject.
    """

    def __init__(
        self,
        subscriber: Host,
        subject: str,
        queue: str,
        kind: Kind,
        max_concurrent_streams: int,
        endpoint: str = "",
    ) -> None:
        self.subscriber = subscriber
        self.subject = subject
        self.queue = queue
        self.endpoint = endpoint
        self.max_concurrent_streams = max_concurrent_streams
        self._kind = kind
        # A sync index handler's first reply is made in the request's dispatch.
        self._first_now = kind if isinstance(kind, Index) and kind.sync else None
        self._sub: Subscription | None = None
        self._nc: Client | None = None
        self._stopping = False
        self._streams: set[ResponderStream] = set()
        self._outcomes = dict.fromkeys(Outcome, 0)
        self._started = self._busy = self._sent = 0
        self._bytes = self._resumed = self._invalid = 0
        self._processing_ns = 0  # of the finished streams, each from request to end
        self._last_error = ""
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
            self._bytes,
            self._resumed,
            self._last_error,
            self._processing_ns / 1e9,
            self._invalid,
        )

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: requests that still arrive are turned away
        with a retryable 503 "shutting down" error."""
        return self._stopping

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking requests; let in-flight streams finish within ``grace`` seconds
        (the subscriber's ``close_grace`` when None), counted from this call.

        No request is left unanswered: the subscription is drained (the server is
        told, and a round trip proves it stopped routing requests here), and the
        requests it routed meanwhile get a retryable 503 "shutting down" error at
        once. Streams still running when the grace period ends get the same error
        marker, then their handlers are cancelled: a requester that retries resumes
        on another responder after the last reply it took.

        Returns once every stream of this subscription has ended.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        grace = self.subscriber.close_grace if grace is None else grace
        deadline = loop.time() + grace
        sub, self._sub = self._sub, None
        if sub is not None:
            await self._drain(sub)
        self.subscriber._forget(self)
        tasks = [s.task for s in self._streams if s.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        if pending:
            running = [s for s in list(self._streams) if s.task in pending]
            await asyncio.gather(*(s.shut_down() for s in running))
            await asyncio.wait(pending)

    async def _drain(self, sub: Subscription) -> None:
        """End ``sub`` without dropping a request the server already routed to it;
        on a broken connection (nothing can arrive) just forget it."""
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await drain_subscription(nc, sub)
                return
            except Exception:
                log.debug("draining the subscription to %r failed", self.subject, exc_info=True)
        try:
            await sub.unsubscribe()
        except Exception:
            log.debug("unsubscribe of %r failed", self.subject, exc_info=True)

    # ------------------------------------------------------------ the subscriber's side

    def _attach(self, sub: Subscription, nc: Client) -> None:
        """The NATS subscription whose requests this serves, on ``nc`` (:meth:`stop`
        drains it)."""
        self._sub = sub
        self._nc = nc

    def _admit(self) -> bool:
        """Whether one more stream may start now; when not, it counts as rejected busy."""
        if len(self._streams) < self.max_concurrent_streams:
            return True
        self._busy += 1
        return False

    def _refused(self, code: int, message: str) -> None:
        """A request was refused as invalid (400, 413) with the error ``message``."""
        self._invalid += 1
        self._last_error = f"{code} {message}"

    def _open_stream(
        self,
        link: Link,
        msg: Msg,
        machine: ResponderMachine,
        control_subject: str | None,
        token: str,
        *,
        imported: bool = False,
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
            imported=imported,
        )
        tracing = self.subscriber._tracing
        if tracing is not None:
            stream.span = tracing.responder(msg, self.subject, self.queue, machine.resume)
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

    @property
    def _plain_end(self) -> str:
        return self.subscriber.plain_end

    def _stream_done(self, stream: ResponderStream, outcome: Outcome, replies: int) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._idle.set()
        self.subscriber._drop_control(stream.token)
        self._outcomes[outcome] += 1
        self._sent += replies
        m = stream.machine
        self._bytes += m.sent_bytes
        self._processing_ns += time.perf_counter_ns() - stream.born
        if m.resume is not None:
            self._resumed += 1
        if outcome is Outcome.FAILED:
            self._last_error = stream.sender.error or "connection lost"
        span = stream.span
        if span is not None:
            span.end(outcome, replies, m.sent_bytes, stream.sender.error)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.subscriber._spawn(coro, name)
