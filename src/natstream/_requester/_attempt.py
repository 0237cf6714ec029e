"""One request sent and the replies it draws, until a terminal state.

The attempt takes a fresh inbox on its lease's connection, sends the request, and
classifies every reply through its :class:`RequesterMachine`: data goes to a buffer
(bounded by the flow-control window), markers end it, heartbeats and foreign
responders are dealt with here. Handing replies to the caller's handler is
:mod:`._delivery`'s job; retrying is :mod:`._session`'s.

With the C extension in use (:mod:`natstream._ext`), :class:`Attempt` subclasses its
``AttemptCore``: the fields its receive path reads live in a C struct under the same
names, and the connection's parser runs the fast path of :meth:`Attempt._on_raw`
(and :func:`~._delivery.call_direct`) in C on them; this module's code is the
reference.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from .._errors import ConnectionLostError, PermissionDeniedError, ProtocolViolationError
from .._ext import cstream
from .._protocol import (
    Outcome,
    Reply,
    RequesterMachine,
    attempt_outcome,
    cancel_headers,
)
from .._protocol._frames import LONE_TAIL, data_seq, id_tail
from .._timer import LazyTimer
from .._transport import Inbox, check_payload, publish
from ._delivery import Pack, call_direct
from ._lease import Lease

__all__ = ["Attempt"]

log = logging.getLogger("natstream")

# A peer without flow control can outrun us: past these we fail loudly instead of
# growing without bound (nats-py's own per-subscription defaults).
_PLAIN_MAX_BUFFERED = 512 * 1024

_new = object.__new__

if TYPE_CHECKING:
    _Core = object
else:
    _Core = object if cstream is None else cstream.AttemptCore


def _monotonic_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.time()`` is asyncio's, ``time.monotonic()`` (the C paths then
    read that clock themselves)."""
    return type(loop).time is asyncio.BaseEventLoop.time and time.monotonic is _MONOTONIC


_MONOTONIC = time.monotonic


class Attempt(_Core):
    """One request sent on a lease's connection and the replies it draws.

    Attributes:
        buffer: data replies not yet taken by the consumer (messages, or
            :class:`~._delivery.Pack` entries for packed ones), in order.
        marker: the end or error marker, once received.
        outcome: how the attempt ended, once :meth:`close` has run.
        direct, direct_task, held: see :func:`~._delivery.call_direct`.
    """

    def __init__(
        self,
        lease: Lease,
        subject: str,
        machine: RequesterMachine,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.lease = lease
        self.link = lease.link
        self.subject = subject
        self.machine = machine
        self.loop = loop
        self.buffer: deque[Msg | Pack] = deque()
        self.marker: Msg | None = None
        self.outcome: Outcome | None = None
        self._inbox: Inbox | None = None  # the reply subjects, subscribed
        self.inbox = ""  # the request's reply subject: <base>.0
        # What the bound responder's data messages look like, for the fast path: their
        # reply subject (its control subject, or none for service-routed control) and
        # the end of their header block after the sequence number.
        self._reply_match: bytes | None = None
        self._reply_str = ""
        self._tail = LONE_TAIL
        self._watched: list[str] = []  # subjects whose refusal fails this attempt
        self._item_type: type[Msg] = self.link.item_type  # header-less messages
        self._waiter: asyncio.Future[None] | None = None
        self._timer = LazyTimer(self.loop, self._on_timer)
        self._tasks: set[asyncio.Task[None]] = set()
        # While the consumer waits (see _delivery): the sync handler that in-order
        # replies go to straight from _on_raw, and the caller's task (the current task
        # during such a call). The outcome of a call the consumer must finish:
        # (message, result, exception raised).
        self.direct: Callable[[Msg], object] | None = None
        self.direct_task: asyncio.Task[Any] | None = None
        self.held: tuple[Msg, object, BaseException | None] | None = None
        self._deferred_soon = False  # a deferred_ack check is scheduled
        self._clock = loop.time  # what the C receive path reads the time with
        self._mono = _monotonic_loop(loop)  # or the monotonic clock, the same
        lease.on_lost = self.connection_lost
        lease.count_by(machine)

    async def start(self, data: bytes, user_headers: dict[str, str] | None) -> None:
        """Take a fresh inbox on the connection; send the request."""
        link = self.link
        check_payload(link.nc, data)
        self._watch(self.subject)
        box = self._inbox = await link.open_inbox(
            self._on_raw, self._on_msg, self._on_denied, lane=self
        )
        inbox = self.inbox = box.subject
        headers = dict(user_headers) if user_headers else {}
        headers.update(self.machine.request_headers(self.loop.time()))
        await publish(link, self.subject, data, reply=inbox, headers=headers, now=True)
        self._arm()

    # ------------------------------------------------------------ receiving

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A reply straight from the parser (fast link): build the message, handle it.

        Plain data from the bound responder (its reply subject, and a header block of
        ``Ns-Seq`` alone or with its ``Ns-Id``), in order and within the window, takes
        a short path (:meth:`RequesterMachine.on_data`) and becomes a message without
        headers, as packed items do; it goes to the direct handler when the consumer
        waits with one set.
        """
        if headers is not None and reply == self._reply_match:
            seq = data_seq(headers, self._tail)
            if seq and self.machine.on_data(now := self.loop.time(), seq, len(data)):
                msg = _new(self._item_type)
                msg.data = data
                msg.subject = self.inbox
                msg.reply = self._reply_str
                w = self._waiter
                if w is not None:
                    # A waiting consumer has an empty queue: nothing is ahead of this.
                    if self.direct is not None and not w.done():
                        call_direct(self, msg, now)
                        return False
                    self._waiter = None  # _wake, inlined: once per burst
                    if not w.done():
                        w.set_result(None)
                self.buffer.append(msg)
                if not self._timer.armed:
                    self._arm()
                return False
        return self._handle(self.link.message(subject, reply, data, headers))

    def _on_msg(self, msg: Msg) -> None:
        """A reply from nats-py's subscription task (plain link)."""
        self._handle(msg)

    def _handle(self, msg: Msg) -> bool:
        """Classify a reply and queue what the consumer gets; True when it woke the
        consumer for the stream's first reply (the parser then lets it run first)."""
        m = self.machine
        lease = self.lease
        first = lease.replies == 0 and self.marker is None
        verdict = m.on_reply(self.loop.time(), msg.headers, msg.data, msg.reply)
        if self._reply_match is None and m.control_subject is not None:
            self._bound(m.control_subject, m.stream_id)
        if verdict is Reply.DELIVER:
            offsets = m.pack_offsets
            if offsets is None:
                self.buffer.append(msg)
            else:
                m.pack_offsets = None
                self.buffer.append(Pack(self._item_type, msg, offsets))
            if len(self.buffer) > _PLAIN_MAX_BUFFERED:
                m.on_connection_lost(
                    ProtocolViolationError(
                        f"more than {_PLAIN_MAX_BUFFERED} replies buffered from a responder "
                        "without flow control; the consumer is too slow",
                        retryable=False,
                    )
                )
        elif verdict is Reply.DROP:
            self._arm()  # a heartbeat or the first reply may bring a deadline forward
            return False
        elif verdict is Reply.CANCEL_FOREIGN:
            target = m.foreign_target
            if target is not None:
                self._spawn(self._send(target, cancel_headers()), "cancel-foreign")
            return False
        elif verdict is Reply.END or verdict is Reply.ERROR:
            self.marker = msg
        woke = self._waiter is not None
        self._wake()
        if lease.replies == 1 or not self._timer.armed or verdict is not Reply.DELIVER:
            self._arm()
        return first and woke

    def _bound(self, control_subject: str, stream_id: str | None) -> None:
        """The machine bound its responder: prepare the fast path for its data, and
        fail at once if the server refuses our control messages."""
        if stream_id is None:  # identified by its reply subject, its control subject
            self._reply_match = control_subject.encode()
            self._reply_str = control_subject
        else:  # service-routed: no reply subject, Ns-Id on every message
            self._reply_match = b""
            self._tail = id_tail(stream_id)
        self._watch(control_subject)

    def connection_lost(self) -> None:
        """The lease's connection broke (the source says so)."""
        self.machine.on_connection_lost(
            ConnectionLostError(f"connection to {self.lease.where} lost mid-stream")
        )
        self._wake()

    def _watch(self, subject: str) -> None:
        self.link.denials.watch(subject, self._on_denied)
        self._watched.append(subject)

    def _on_denied(self, operation: str, subject: str) -> None:
        """The server refused our request, inbox or control messages: fail at once."""
        if subject == self.subject or operation == "subscribe":
            hint = "the request cannot be sent or answered"
        else:
            hint = (
                "the responder's control subject: acks, heartbeats and cancel cannot "
                "reach it (see docs/security.md)"
            )
        self.machine.on_connection_lost(PermissionDeniedError(subject, operation, hint))
        self._wake()
        self._arm()

    # ------------------------------------------------------------ consumer

    async def wait(self) -> None:
        """Until a reply is queued, a direct call's outcome is held, or the attempt is over.

        Cancellation: the waiting is abandoned; the attempt stays usable.
        """
        m = self.machine
        while not self.buffer and self.held is None and not m.terminal:
            w = self._waiter = self.loop.create_future()
            m.consumer_waiting(self.loop.time())
            self._arm()
            await w

    async def wait_direct(self, call: Callable[[Msg], object]) -> None:
        """:meth:`wait`, handing in-order data replies to ``call`` (the sync handler in
        the caller's context) as they arrive meanwhile, with this task current."""
        self.direct = call
        self.direct_task = asyncio.current_task()
        try:
            await self.wait()
        finally:
            self.direct = None

    async def next_data(self) -> Msg | None:
        """The next data reply; None once the attempt is over and its data consumed.

        Cancellation: the waiting is abandoned; the attempt stays usable.
        """
        buf = self.buffer
        if not buf:
            await self.wait()
            if not buf:
                return None
        return self.take()

    def take(self) -> Msg:
        """The next data reply, which has arrived (the buffer is not empty)."""
        buf = self.buffer
        self.machine.consumer_busy()
        entry = buf[0]
        if type(entry) is Pack:
            msg = entry.take()
            if entry.next == entry.size:
                buf.popleft()
            return msg
        return buf.popleft()  # type: ignore[return-value]

    def delivered(self, msg: Msg) -> None:
        """The consumer accepted ``msg``: count it and ack when credit runs low."""
        ack = self.machine.on_delivered(msg.headers, len(msg.data))
        if ack is not None:
            self.send_ack(ack)

    def send_ack(self, ack: dict[str, str], now: float | None = None) -> None:
        """Queue ``ack`` without awaiting (an ack is small: no back-pressure to wait
        for); ``now``: loop time, if the caller has it."""
        m = self.machine
        subject = m.control_subject
        if subject is None:
            return
        now = self.loop.time() if now is None else now
        m.mark_sent(now)
        link = self.link
        reply = self._renewal(now)
        if link.queue_publish(subject, reply, b"", ack):
            link.kick_soon()
        else:  # nats-py must take it (e.g. reconnecting, or a plain link)
            self._spawn(self._send(subject, ack, reply), "ack")

    def _renewal(self, now: float) -> str:
        """The reply subject a control message carries: one of our inbox's at most
        once per heartbeat interval (see :meth:`Inbox.renew`), else none. A responder
        whose server grants replies only to the reply subjects of messages it
        received (``allow_responses``) is granted anew by each, and replies to the
        latest."""
        box = self._inbox
        if box is None or not self.machine.renewal_due(now):
            return ""
        return box.renew()

    def defer_ack_check(self) -> None:
        """After a direct call left an ack deferred: send it once this read is parsed."""
        if not self._deferred_soon:
            self._deferred_soon = True
            self.loop.call_soon(self._deferred_ack)

    def _deferred_ack(self) -> None:
        self._deferred_soon = False
        ack = self.machine.deferred_ack()
        if ack is not None:
            self.send_ack(ack)

    def rearm(self) -> None:
        """Arm the timer if nothing is armed (after a reply taken outside the buffer)."""
        if not self._timer.armed:
            self._arm()

    def wake(self) -> None:
        """Wake the waiting consumer (a direct call left something for it)."""
        self._wake()

    # ------------------------------------------------------------ timers

    def _arm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _on_timer(self) -> None:
        m = self.machine
        now = self.loop.time()
        action = m.on_timer(now)
        if action.control is not None and m.control_subject is not None:
            reply = self._renewal(now)
            self._spawn(self._send(m.control_subject, action.control, reply), "heartbeat")
        if action.fail:
            self._wake()
        self._arm()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # ------------------------------------------------------------ sending

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"natstream-request-{what}-{self.subject}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, subject: str, headers: dict[str, str], reply: str = "") -> None:
        try:
            await publish(self.link, subject, b"", reply=reply, headers=headers)
        except ConnectionLostError:
            log.debug("control message to %s not sent: connection lost", subject)

    async def close(self, *, ok: bool = False) -> None:
        """End the attempt: give the lease back with its outcome (``ok``: it ended at
        the end marker), tell the responder when it is not finished, drop the inbox,
        stop the attempt's tasks.

        Safe to call more than once and during cancellation.
        """
        m = self.machine
        if not self.lease.released:
            outcome = self.outcome = (
                Outcome.COMPLETED
                if ok
                else attempt_outcome(m.state, deadline=m.deadline, now=self.loop.time())
            )
            self.lease.release(outcome)
        # The lease's and the timer's callbacks are methods of this attempt: drop
        # them (reference cycles) so that the stream's objects are freed as soon as
        # it ends, not by the garbage collector. The machine is terminal from here
        # on (m.cancel()): nothing arms the timer again.
        self.lease.on_lost = None
        self._timer.close()
        cancel = m.cancel()
        if cancel is not None and m.control_subject is not None:
            await self._send(m.control_subject, cancel)
        for subject in self._watched:
            self.link.denials.unwatch(subject, self._on_denied)
        self._watched.clear()
        box, self._inbox = self._inbox, None
        if box is not None:
            # A responder that sent its end or error marker sends nothing more: the
            # UNSUB can go with the next write. Otherwise (stopped early, a plain peer
            # that cannot be told, a failure) the server must stop delivering now.
            await box.close(promptly=self.marker is None)
        held, self.held = self.held, None
        if held is not None and inspect.iscoroutine(held[1]):
            held[1].close()  # a direct call's result the consumer never got to await
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
