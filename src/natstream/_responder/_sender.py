"""``Sender``: the one path by which a stream's replies leave, with credit and pacing.

Every data reply goes through :meth:`Sender.send_now` (the fast path: a lone
``Ns-Seq`` header, queued on the link without awaiting) or :meth:`Sender.emit`
(waits for credit, then the fast path or a publish with the machine's headers);
lists of replies through :meth:`Sender.send_items` (packed when the requester
unpacks). Pacing: a stream pauses (:meth:`Sender.pause`) after every
``_PAUSE_EVERY`` replies, and after every ``_PAUSE_EVERY // 2`` (the least window,
so a stream on it pauses at most once per window) while more than
``_PAUSE_BYTES`` wait in the connection's outgoing buffer, so concurrent streams
interleave. (Not more often while the buffer is over: with many streams on a
connection it is over most of the time, and every pause costs a task switch;
with 1,000 streams, a pause every 32 replies made 77,000 pauses per million
replies, every 64 made 41,000.) Each pause costs a ``send()``
system call when the flusher writes, which on a busy machine dominates small
messages: so not more often either. Between pauses the flusher is woken from sync
code (:meth:`Link.kick_soon`), without a coroutine and future per reply.

With the C extension in use (:mod:`natstream._ext`), a sync index handler's replies
are queued by its ``fill_index`` (see :attr:`Sender.fills`), which takes a reply
exactly where :meth:`Sender.send_now` (v1) or :meth:`Sender.emit` (plain) would
and leaves any other to them; and packed payloads are built in C.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from .._errors import PayloadTooLargeError
from .._ext import cstream
from .._protocol import STREAM_END, STREAM_ERROR_PREFIX, ResponderMachine, error_headers
from .._protocol._frames import hpub_prefix, id_tail, pub_prefix
from .._protocol._wire import HDR_VERSION, pack_items
from .._transport import HEADER_ALLOWANCE, Link, publish
from ._request import TOO_LARGE

__all__ = ["PAUSE", "QUEUED", "Sender", "default_position", "send_rejection"]

log = logging.getLogger("natstream")

_PAUSE_EVERY = 256  # replies
_PAUSE_MASK = _PAUSE_EVERY - 1  # a power of two: ``sent & mask`` is 0 every _PAUSE_EVERY
_PAUSE_BYTES = 256 * 1024  # queued on the connection; then a pause every _PAUSE_EVERY // 2
if cstream is not None:
    cstream.configure("pause_mask", _PAUSE_MASK)
    cstream.configure("pause_bytes", _PAUSE_BYTES)
_MONOTONIC = time.monotonic

# What :meth:`Sender.send_now` did (0: nothing, take :meth:`Sender.emit`).
QUEUED = 1  # queued, and the flusher woken if it was idle
PAUSE = 2  # queued; a pause is due: the caller awaits :meth:`Sender.pause`


async def send_rejection(
    link: Link,
    msg: Msg,
    machine: ResponderMachine | None,
    message: str,
    code: int,
    retryable: bool,
    plain_end_empty: bool = False,
) -> None:
    """Answer a request with an error marker alone (no stream was opened for it);
    ``machine`` None for a request whose headers could not be parsed. A failure
    is logged, not raised. ``plain_end_empty``: a plain requester also gets an
    empty message after it (see ``Subscriber(plain_end=...)``)."""
    if machine is not None:
        headers = machine.error_headers(message, code, retryable, 0.0)
    elif msg.headers and HDR_VERSION in msg.headers:  # a v1 request we could not parse
        headers = error_headers(0, message, code, retryable)
    else:
        headers = None
    try:
        await publish(link, msg.reply, STREAM_ERROR_PREFIX + message.encode(), headers=headers)
        if plain_end_empty and headers is None:
            await publish(link, msg.reply, b"")
    except Exception:
        log.debug("could not send a %d reply", code, exc_info=True)


def default_position(i: int) -> None:
    """Positions of items sent at the default position (``seq - 1``)."""
    return None


class Sender:
    """Sends one stream's replies over its link, counting them in its machine.

    Attributes:
        limit: the largest reply payload, in bytes (max_payload less room for headers).
        sent: replies sent so far by this sender (pacing counts them).
        too_large: a reply over ``limit`` ended the stream (its 413 error is sent).
        error: the error marker sent (its code and message), "" before one is.
    """

    __slots__ = (
        "_credit",
        "_mono",
        "_plain",
        "_prefix",
        "_reserve",
        "_tail",
        "end_payload",
        "error",
        "limit",
        "link",
        "loop",
        "machine",
        "reply",
        "reply_field",
        "sent",
        "subject",
        "too_large",
    )

    def __init__(
        self,
        link: Link,
        machine: ResponderMachine,
        reply: str,
        reply_field: str,
        subject: str,
        plain_end_empty: bool = False,
    ) -> None:
        self.link = link
        self.machine = machine
        self.reply = reply  # where replies go: the requester's (latest) reply subject
        self.reply_field = reply_field  # the reply subject our messages carry
        self.subject = subject  # the subscription's, for log lines
        # A plain requester may want the end as an empty message (ADR-47 clients).
        self.end_payload = b"" if plain_end_empty and not machine.v1 else STREAM_END
        self.loop = asyncio.get_running_loop()
        # A plain requester gets no headers from us: no room kept for them.
        self._reserve = HEADER_ALLOWANCE if machine.v1 else 0
        self.limit = link.nc.max_payload - self._reserve
        self.sent = 0
        self.too_large = False
        self.error = ""
        self._credit: asyncio.Future[None] | None = None
        # The fast path needs a v1 requester and a way for it to tell us apart: our
        # control subject as the reply subject, or (service-routed) our stream id.
        stream_id = machine.stream_id
        self._tail = None if stream_id is None else id_tail(stream_id)
        self._prefix = (
            hpub_prefix(reply, reply_field)
            if machine.v1 and (reply_field or stream_id is not None)
            else None
        )
        # What the C fill writes for a plain requester, and how it reads loop.time().
        self._plain = None if machine.v1 else pub_prefix(reply, reply_field)
        self._mono = (
            type(self.loop).time is asyncio.BaseEventLoop.time and time.monotonic is _MONOTONIC
        )

    def retarget(self, reply: str) -> None:
        """Send the replies from now on to ``reply`` (a fresh reply subject of the
        requester's, which the server may have granted us anew)."""
        self.reply = reply
        if self._prefix is not None:
            self._prefix = hpub_prefix(reply, self.reply_field)
        if self._plain is not None:
            self._plain = pub_prefix(reply, self.reply_field)

    @property
    def fill(self) -> Callable[[Sender, Any, Any, int], tuple[int, int, Any]] | None:
        """The C extension's ``fill_index`` when it may queue this stream's replies
        (it is in use, and the requester is v1 with our prefix, or plain), else None."""
        if cstream is None or (self._prefix is None and self._plain is None):
            return None
        fill: Callable[[Sender, Any, Any, int], tuple[int, int, Any]] = cstream.fill_index
        return fill

    @property
    def fast(self) -> bool:
        """Whether :meth:`send_now` can ever take a reply (a v1 requester, our control
        subject); then the end marker may be queued directly too."""
        return self._prefix is not None

    # ------------------------------------------------------------ data

    def send_now(self, data: bytes, pos: int | str | None) -> int:
        """Queue a data reply on the link without awaiting, when the common case
        applies (v1 requester, credit, ``pos`` the default position ``seq - 1``,
        connected, bytes within :attr:`limit`), and apply the pacing rule.

        Returns:
            0, having done nothing, when the reply cannot go this way: use
            :meth:`emit`. :data:`QUEUED`: sent, the flusher woken if idle.
            :data:`PAUSE`: sent, and a pause is due: await :meth:`pause`.
        """
        prefix = self._prefix
        if prefix is None or type(data) is not bytes or type(pos) is not int:
            return 0
        m = self.machine
        link = self.link
        size = len(data)
        if pos != m.sent_seq or size > self.limit or not link.writable:
            return 0
        seq = m.send_next(size, self.loop.time())
        if not seq:
            return 0
        tail = self._tail
        if tail is None:
            pending = link.queue_seq(prefix, seq, data)  # the flusher is woken if idle
        else:
            pending = link.queue_seq_id(prefix, seq, tail, data)
        sent = self.sent = self.sent + 1
        # The pacing rule (see the module docstring), here and not in a method of its
        # own: this runs once per reply, and a call costs as much as the rule.
        if not sent & _PAUSE_MASK or (pending > _PAUSE_BYTES and not sent & _PAUSE_MASK >> 1):
            return PAUSE
        return QUEUED

    async def pause(self) -> None:
        """Let the flusher and other streams in: wake the flusher (waiting for it when
        the connection's buffer is over nats-py's limit), then yield once."""
        await self.link.kick()
        await asyncio.sleep(0)

    async def emit(self, data: bytes, pos: int | str | None) -> bool:
        """Send one data reply once credit allows; False when the stream must stop
        (it is over, or the reply is too large: then its 413 error is sent).

        Cancellation: while waiting for credit, nothing is counted or sent.

        Raises:
            TypeError: ``data`` is not bytes-like.
            ConnectionLostError: the connection is closed or draining.
        """
        m = self.machine
        if m.terminal:
            return False
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"a handler produced {type(data).__name__}, not bytes")
            data = bytes(data)
        size = len(data)
        if size > self.limit:
            error = PayloadTooLargeError(size, self.limit + self._reserve, self._reserve)
            log.error("stream on %r: a reply was not sent: %s", self.subject, error)
            self.too_large = True
            await self.send_error(str(error), TOO_LARGE, False)
            return False
        if not m.has_credit(size):
            await self._wait_credit(size)
            if m.terminal:
                return False
        queued = self.send_now(data, pos)
        if queued:
            if queued == PAUSE:
                await self.pause()
            return True
        if type(pos) is int:
            pos = None if pos == m.sent_seq else str(pos)
        headers = m.data_headers(size, pos, self.loop.time())  # type: ignore[arg-type]
        await self.publish(data, headers)
        sent = self.sent = self.sent + 1
        # The pacing rule of send_now; publish() has woken the flusher.
        if not sent & _PAUSE_MASK or (
            not sent & _PAUSE_MASK >> 1 and self.link.pending_size() > _PAUSE_BYTES
        ):
            await asyncio.sleep(0)
        return True

    async def send_items(
        self, items: list[bytes], start: int, pos: Callable[[int], int | str | None]
    ) -> bool:
        """Send ``items[start:]``, ``pos(i)`` being item ``i``'s position (None: the
        default), packed into as few messages as credit and :attr:`limit` allow when
        the requester unpacks, else one :meth:`emit` each. False when the stream must
        stop.

        Raises:
            TypeError: an item is not bytes-like.
        """
        m = self.machine
        n = len(items)
        if not m.pack:
            for i in range(start, n):
                if not await self.emit(items[i], pos(i)):
                    return False
            return True
        limit = self.limit
        for j in range(start, n):
            item = items[j]
            if type(item) is not bytes:
                if not isinstance(item, (bytes, bytearray, memoryview)):
                    raise TypeError(f"a handler produced {type(item).__name__}, not bytes")
                items[j] = bytes(item)
        i = start
        while i < n:
            if m.terminal:
                return False
            credit_items, credit_bytes = m.credit()
            budget = min(credit_bytes, limit)
            j = i
            used = 0
            stop = min(n, i + credit_items)
            while j < stop:
                size = len(items[j]) + 4
                if used + size > budget:
                    break
                used += size
                j += 1
            if j - i < 2:
                # One item (or none fits): as a plain message, waiting for credit.
                if not await self.emit(items[i], pos(i)):
                    return False
                i += 1
                continue
            payload = pack_items(items[i:j]) if cstream is None else cstream.pack_items(items, i, j)
            seq = m.send_pack(j - i, len(payload) - 4 * (j - i), self.loop.time())
            first = pos(i)
            at = None if first is None or first == seq - 1 else str(first)
            await self.publish(payload, m.pack_headers(seq, j - i, at))
            self.sent += j - i
            i = j
            await asyncio.sleep(0)  # let other streams and the flusher in
        return True

    # ------------------------------------------------------------ markers

    async def publish(self, payload: bytes, headers: dict[str, str] | None) -> None:
        """Publish one message of this stream (carrying our control subject as its
        reply subject, unless control is service-routed).

        Raises:
            ConnectionLostError: the connection is closed or draining.
        """
        await publish(self.link, self.reply, payload, reply=self.reply_field, headers=headers)

    async def send_error(self, message: str, code: int, retryable: bool) -> None:
        """End the stream with an error marker (the machine records it)."""
        headers = self.machine.error_headers(message, code, retryable, self.loop.time())
        self.error = f"{code} {message}"
        await self.publish(STREAM_ERROR_PREFIX + message.encode("utf-8", "replace"), headers)
        if not self.end_payload:
            await self.publish(b"", None)  # what a requester that ends on empty waits for

    # ------------------------------------------------------------ credit

    async def _wait_credit(self, size: int) -> None:
        m = self.machine
        while not m.terminal and not m.has_credit(size):
            fut = self._credit = self.loop.create_future()
            await fut

    def credit_changed(self) -> None:
        """The requester acked or sent a heartbeat: a reply waiting for credit looks again."""
        fut = self._credit
        if fut is not None and not fut.done():
            self._credit = None
            fut.set_result(None)
