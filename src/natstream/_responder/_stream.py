"""``ResponderStream``: one stream being served, from its request to its outcome."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from nats.aio.msg import Msg

from .._errors import ConnectionLostError, StreamError
from .._protocol import STREAM_END, Control, Outcome, ResponderMachine, ResponderTimer
from .._timer import LazyTimer
from .._tracing import ResponderSpan
from .._transport import Link, Listening
from ._handlers import HandlerResultError
from ._kinds import Index, Kind
from ._request import (
    BUSY,
    DEADLINE,
    FORBIDDEN,
    INTERNAL,
    PROPAGATE,
    SHUTTING_DOWN,
    UNREACHED,
    HandlerError,
    StreamRequest,
)
from ._sender import Sender

__all__ = ["Owner", "ResponderStream"]

log = logging.getLogger("natstream")

# Seconds a stopping subscription waits for one stream's shutting-down marker to be
# queued (more only when the connection's buffer is full: the server is not reading).
_MARKER_SEND = 1.0


class Owner(Protocol):
    """What a stream needs of the subscription it serves (private names: the
    subscription is public, this is not part of its API)."""

    @property
    def subject(self) -> str: ...

    @property
    def _plain_end(self) -> str:
        """How a stream to a plain requester ends: ``"marker"`` or ``"empty"``."""
        ...

    @property
    def _send_exception_text(self) -> bool:
        """Whether a handler's exception text goes to the requester (else an error id)."""
        ...

    def _stream_done(self, stream: ResponderStream, outcome: Outcome, replies: int) -> None:
        """``stream`` is over: count it; it takes no more control messages."""
        ...

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a send that must not hold up the stream, as a task called ``name`` that
        the subscriber stops when it closes."""
        ...


class ResponderStream:
    """One stream being served: the machine, the timer (heartbeats, requester gone,
    deadline), control messages, and the task that runs the handler's kind and sends
    the end (none when :meth:`start_now` finished the stream in the dispatch).

    Attributes:
        machine: the stream's :class:`ResponderMachine`.
        token: the last token of ``control_subject``, where the requester's control
            messages arrive (None ``control_subject`` for a plain requester).
        name: of the task, and the prefix of its sends' tasks.
        born: when the stream was made (``time.perf_counter_ns()``), for its duration.
        span: the stream's trace span, when tracing is on (its context is the task's).
    """

    def __init__(
        self,
        owner: Owner,
        kind: Kind,
        link: Link,
        msg: Msg,
        machine: ResponderMachine,
        control_subject: str | None,
        token: str,
        name: str,
        *,
        imported: bool = False,
    ) -> None:
        self.owner = owner
        self.kind = kind
        self.link = link
        self.machine = machine
        self.control_subject = control_subject
        self.token = token
        self.name = name
        self.born = time.perf_counter_ns()
        self.span: ResponderSpan | None = None
        self.request = StreamRequest(msg, machine)
        # Service-routed control (the machine has a stream id): the requester's control
        # messages come to our own subscription of control_subject, ours carry no
        # reply subject. Through an account import (``imported``) replies keep going
        # to the request's reply subject; otherwise to the requester's latest one.
        self.service = machine.stream_id is not None
        self.imported = imported
        self._reply_base = msg.reply.rpartition(".")[0]
        self._listening: Listening | None = None
        reply_field = "" if self.service else (control_subject or "")
        self.sender = Sender(
            link, machine, msg.reply, reply_field, owner.subject, owner._plain_end == "empty"
        )
        self.task: asyncio.Task[None] | None = None
        self.loop = self.sender.loop
        self._timer = LazyTimer(self.loop, self._on_timer)
        # The error marker the task sends when it is cancelled (deadline, unreached).
        self._stop_error: tuple[str, int] | None = None

    def start(self, first_now: Index | None) -> None:
        """Serve the stream: ``first_now``'s first reply at once (see
        :meth:`start_now`), the rest in a task.

        Unless a reply was queued in this dispatch, the requester is bound at once by
        an *accept* (the stream's first heartbeat): it learns our control subject,
        its stall detection takes over from its ``request_timeout``, and it can
        cancel the stream, however slow the handler's first reply. (Service-routed,
        the task sends it, once the stream's control subscription is made.)

        With a trace span, the handler runs in its context (the span is current)."""
        context = None if self.span is None else self.span.context
        if self.service:
            self.task = asyncio.create_task(self.run(), name=self.name, context=context)
            return
        if first_now is not None:
            if context is None:
                finished = self.start_now(first_now)
            else:
                finished = context.run(self.start_now, first_now)
            if finished:
                return  # a one-reply stream, already finished
        self._accept()
        self.task = asyncio.create_task(self.run(), name=self.name, context=context)

    def _accept(self) -> None:
        """Queue the accept, when the requester speaks v1 and nothing was sent yet
        (heartbeats restart from it, one interval later)."""
        m = self.machine
        control = self.control_subject
        if control is None or m.sent_seq != (m.resume.seq if m.resume else 0):
            return
        headers = m.heartbeat_headers(self.loop.time())
        link = self.link
        if link.queue_publish(self.sender.reply, self.sender.reply_field, b"", headers):
            link.kick_soon()
        else:  # a plain link: from a task, which runs before the stream's
            self._send_later(b"", headers, "accept")

    def start_now(self, kind: Index) -> bool:
        """Call a sync index handler for the first reply at once, in the request's
        dispatch, and queue that reply if it can go the fast way: the stream's task
        starts an event-loop iteration later, which would delay the first reply. The
        task continues from that call (its result or its exception).

        Returns True when that was the whole stream (the handler said no more): the
        end marker is queued too, the stream is finished, and no task is needed.
        """
        first = kind.start(self.request, self.machine.resume)
        self.kind = first
        result = first.result
        if type(result) is not tuple or len(result) != 3 or result[2] is not None:
            return False
        data, more, _ = result
        try:
            done = not more
        except PROPAGATE:
            raise
        except BaseException:  # e.g. an array's ambiguous truth value: the task raises it
            return False
        link = self.link
        # Finishing here needs a v1 requester (the end marker's headers, our control
        # subject) and a link that queues commands now; else the task sends the end.
        finish = done and self.sender.fast and link.writable
        if data is not None:
            if not self.sender.send_now(data, first.index):
                return False
            first.queued = True
        elif not finish:
            return False
        if finish:
            self._end_now()
        # Within the parser's read (the usual case), written when it is done with
        # that read, not at the flusher's turn an event-loop iteration later.
        link.kick_soon()
        return finish

    def _end_now(self) -> None:
        """Finish a stream whose handler is done from :meth:`start_now`: queue the end
        marker behind its reply (one write for both), count it, let it go."""
        headers = self.machine.end_headers(self.loop.time())
        if not self.link.queue_publish(
            self.sender.reply, self.control_subject or "", STREAM_END, headers
        ):  # not expected (start_now checked): send it from a task instead
            self._send_later(STREAM_END, headers, "end", logging.WARNING)
        self._finish(Outcome.COMPLETED)

    async def run(self) -> None:
        """The stream's task: run the handler's kind, then send the end marker, or the
        error marker of what it raised. Cancelled when the requester cancels or
        vanishes, at the deadline (it then sends the 504 error), or on close.

        Whatever the handler raises ends the stream with an error marker at once, a
        ``BaseException`` too (a 500), and so does a ``CancelledError`` it raised
        itself, with no cancellation requested: only ``KeyboardInterrupt`` and
        ``SystemExit`` propagate (see ``PROPAGATE``)."""
        m = self.machine
        sender = self.sender
        outcome = Outcome.FAILED
        try:
            if self.service:
                await self._open_control()
                now = self.loop.time()
                # The accept. Through an import, two messages at once: where the
                # import passes one reply, the requester sees that the second never
                # comes and fails at once.
                await sender.publish(b"", m.heartbeat_headers(now, another_follows=self.imported))
                if self.imported:
                    await sender.publish(b"", m.heartbeat_headers(now))
            self._arm()
            ended = await self.kind.run(self.request, sender)
            if sender.too_large:
                return
            if ended and not m.terminal:
                await sender.publish(sender.end_payload, m.end_headers(self.loop.time()))
                outcome = Outcome.COMPLETED
                return
            outcome = Outcome.CANCELLED
        except (HandlerError, StreamError) as e:  # StreamError: raised on purpose, sent as is
            if not m.terminal:
                await sender.send_error(e.message, e.code, e.retryable)
        except asyncio.CancelledError as exc:
            if not _cancel_requested():  # the handler raised it: a failure, not a stop
                await self._internal_error(exc)
                return
            stop_error = self._stop_error
            if stop_error is None:
                outcome = Outcome.CANCELLED
            elif not m.terminal:
                await sender.send_error(stop_error[0], stop_error[1], False)
            raise
        except ConnectionLostError:
            log.debug("stream on %r: connection lost", self.owner.subject)
        except PROPAGATE:
            raise
        except BaseException as exc:
            await self._internal_error(exc)
        finally:
            self._finish(outcome)

    async def _internal_error(self, exc: BaseException) -> None:
        owner = self.owner
        error_id = secrets.token_hex(6)
        if isinstance(exc, HandlerResultError):  # the handler's value, not our traceback
            described = str(exc)
            log.error("stream on %r failed (error id %s): %s", owner.subject, error_id, exc)
        else:
            text = str(exc)
            described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            log.error(
                "stream handler for %r raised (error id %s)", owner.subject, error_id, exc_info=exc
            )
        if owner._send_exception_text:
            message = f"{described} (error id {error_id})"
        else:
            message = f"internal error (error id {error_id})"
        if not self.machine.terminal:
            try:
                await self.sender.send_error(message, INTERNAL, False)
            except ConnectionLostError:
                pass

    async def _open_control(self) -> None:
        """Subscribe this stream's own control subject (service-routed control); a
        refusal ends the stream with a 403 error marker saying so."""
        subject = self.control_subject
        assert subject is not None
        self.link.denials.watch(subject, self._on_denied)
        self._listening = await self.link.listen(subject, self._on_raw_control, self.on_control)

    def _on_denied(self, operation: str, subject: str) -> None:
        if operation == "subscribe":
            self._stop_with(
                f"the responder may not subscribe {subject!r} for this stream's control "
                "messages: grant it subscribe permission on the service's subjects and "
                "their children (see docs/security.md)",
                FORBIDDEN,
            )

    def _on_raw_control(
        self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.on_control(self.link.message(subject, reply, data, headers))

    def _finish(self, outcome: Outcome) -> None:
        m = self.machine
        self._timer.close()  # its callback is our method: a cycle, dropped now
        listening, self._listening = self._listening, None
        if listening is not None:
            assert self.control_subject is not None
            self.link.denials.unwatch(self.control_subject, self._on_denied)
            self.owner._spawn(listening.close(), f"{self.name}-unsubscribe")
        self.owner._stream_done(self, outcome, m.sent_seq - (m.resume.seq if m.resume else 0))

    # ------------------------------------------------------------ control

    def on_control(self, msg: Msg) -> None:
        """A message arrived on this stream's control subject."""
        verdict = self.machine.on_control(msg.headers, self.loop.time())
        if verdict is Control.CANCEL:
            self._stop()
        elif verdict is Control.LIVENESS:
            self.sender.credit_changed()
            reply = msg.reply
            if (
                reply
                and not self.imported
                and reply != self.sender.reply
                and reply.rpartition(".")[0] == self._reply_base
            ):
                # A fresh reply subject of the requester's inbox: replies go there,
                # where the server may have granted us anew (allow_responses).
                self.sender.retarget(reply)

    def _stop(self) -> None:
        self.machine.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def shut_down(self) -> None:
        """The subscription stops and this stream's grace period is over: tell the
        requester with a retryable 503 "shutting down" error marker (a retry resumes
        after the last reply it took, on another responder), then cancel the handler.

        Waits at most ``_MARKER_SEND`` seconds for the marker to be queued; a marker
        that cannot be sent is logged (the requester then notices the stall)."""
        if not self.machine.terminal:
            try:
                async with asyncio.timeout(_MARKER_SEND):
                    await self.sender.send_error(SHUTTING_DOWN, BUSY, True)
            except Exception:
                log.warning(
                    "stream on %r: the shutting-down marker was not sent",
                    self.owner.subject,
                    exc_info=True,
                )
        self._stop()

    # ------------------------------------------------------------ timers

    def _arm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _on_timer(self) -> None:
        m = self.machine
        action = m.on_timer(self.loop.time())
        if action is ResponderTimer.HEARTBEAT:
            self._send_later(b"", m.heartbeat_headers(self.loop.time()), "heartbeat")
        elif action is ResponderTimer.REQUESTER_GONE:
            log.debug("stream on %r: requester gone, stopping", self.owner.subject)
            self._stop()
            return
        elif action is ResponderTimer.DEADLINE:
            self._stop_with("stream deadline exceeded", DEADLINE)
            return
        elif action is ResponderTimer.UNREACHED:
            waited = m.limits.heartbeat * m.limits.stall_factor
            message = (
                f"no control message from the requester reached {self.control_subject!r} "
                f"in {waited:g} s: it may not be allowed to publish there, or an account "
                "import may not cover it (see docs/security.md)"
            )
            log.info("stream on %r: %s", self.owner.subject, message)
            self._stop_with(message, UNREACHED)
            return
        self._arm()

    def _stop_with(self, message: str, code: int) -> None:
        """Cancel the task, which sends this error marker as it stops."""
        self._stop_error = (message, code)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _send_later(
        self,
        payload: bytes,
        headers: dict[str, str] | None,
        what: str,
        level: int = logging.DEBUG,
    ) -> None:
        """Send from a task of its own (the subscriber's, named after this stream): a
        failure is logged at ``level``, not raised."""
        self.owner._spawn(self._quiet_send(payload, headers, what, level), f"{self.name}-{what}")

    async def _quiet_send(
        self, payload: bytes, headers: dict[str, str] | None, what: str, level: int
    ) -> None:
        try:
            await self.sender.publish(payload, headers)
        except Exception:
            log.log(level, "stream on %r: %s not sent", self.owner.subject, what, exc_info=True)


def _cancel_requested() -> bool:
    """Whether the current task was asked to stop (``Task.cancel()``: by the stream, the
    subscription, or whoever else cancels it), as opposed to a ``CancelledError`` that
    code running in it raised by itself."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
