"""Subscriber: turns one request into many replies, driving :class:`ResponderMachine`.

Every request is served in its own task. A stream's control traffic (acks,
heartbeats, cancel) arrives on one wildcard subscription per connection, under an
unguessable per-stream token, and is dispatched to the stream it names.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._config import Config
from ._errors import (
    ConfigError,
    ConnectionLostError,
    NoServersError,
    PayloadTooLargeError,
    StreamError,
    SubscriberClosedError,
)
from ._protocol import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Control,
    HeaderError,
    Outcome,
    ResponderMachine,
    ResponderTimer,
    Resume,
    error_headers,
    parse_request_headers,
)
from ._protocol._frames import hpub_prefix
from ._protocol._wire import HDR_PACK, HDR_POS, HDR_SEQ, HDR_VERSION, pack_items
from ._recording import Recording, default_formatter
from ._subjects import validate_queue, validate_subscribe_subject
from ._timer import LazyTimer
from ._transport import (
    HEADER_ALLOWANCE,
    Link,
    connect,
    publish,
    safe_server,
    subscribe_live,
    translate_connect_error,
)

log = logging.getLogger("natstream")

__all__ = [
    "BatchHandler",
    "GeneratorHandler",
    "IndexHandler",
    "StreamRequest",
    "StreamSubscription",
    "Subscriber",
]

ErrorValue = str | BaseException | None
IndexResult = tuple[bytes | None, bool, ErrorValue]
BatchResult = tuple[list[bytes], bool, ErrorValue]
IndexHandler = Callable[["StreamRequest", int], "IndexResult | Awaitable[IndexResult]"]
BatchHandler = Callable[["StreamRequest", int], "BatchResult | Awaitable[BatchResult]"]
GeneratorHandler = Callable[["StreamRequest"], AsyncIterator["bytes | list[bytes]"]]
# What a handler form produces: a reply (or, from a generator, a list of replies to
# send together) and its position (None: the default, seq - 1).
_Item = tuple["bytes | list[bytes]", int | str | None]


class StreamWriterLike(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


# A serving loop yields to the event loop after this many replies, or once this many
# bytes wait in the connection's outgoing buffer, so concurrent streams interleave.
# Yielding lets nats-py's flusher write: every yield costs a send() system call,
# which on a busy machine dominates small messages, so not too often either.
_YIELD_EVERY = 256
_YIELD_MASK = _YIELD_EVERY - 1  # a power of two
# Packing of index handler results (pack=True): at most this many items held back,
# for at most this many seconds.
_PACK_HOLD = 1024
_PACK_LINGER = 0.005
_NOTHING: Any = object()
_YIELD_BYTES = 256 * 1024
_BUSY_CODE, _BAD_REQUEST, _TOO_LARGE, _INTERNAL, _DEADLINE = 503, 400, 413, 500, 504


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class StreamRequest:
    """The request a responder handler serves.

    Attributes:
        msg: the raw nats-py message.
        data, subject, headers: of the request.
    """

    __slots__ = ("_machine", "_resume_read", "msg")

    def __init__(self, msg: Msg, machine: ResponderMachine) -> None:
        self.msg = msg
        self._machine = machine
        self._resume_read = False

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def headers(self) -> dict[str, str] | None:
        return self.msg.headers

    def time_remaining(self) -> float | None:
        """Seconds left before the stream's deadline (the requester's ``stream_timeout``
        or the subscriber's ``max_stream_duration``); None when there is none. When it
        reaches 0 the stream is ended with a 504 error and the handler is cancelled."""
        return self._machine.time_remaining(time.monotonic())

    @property
    def resume(self) -> Resume | None:
        """Where a retried stream continues (None for a fresh one).

        A generator handler that reads this is trusted to start after
        ``resume.seq`` items itself; otherwise natstream skips that many items.
        """
        self._resume_read = True
        return self._machine.resume

    @property
    def is_v1(self) -> bool:
        """Whether the requester speaks natstream's protocol (else the plain markers)."""
        return self._machine.v1

    def __repr__(self) -> str:
        return f"<StreamRequest subject={self.subject!r} {len(self.data)} bytes>"


class _HandlerError(Exception):
    """A handler returned an error: end the stream with this error marker."""

    def __init__(self, message: str, code: int, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


def _error_from_value(err: str | BaseException) -> _HandlerError:
    if isinstance(err, StreamError):
        return _HandlerError(err.message, err.code, err.retryable)
    return _HandlerError(str(err) or type(err).__name__, _INTERNAL, True)


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
        subscriber: Subscriber,
        subject: str,
        queue: str,
        make_items: Callable[[StreamRequest], AsyncIterator[_Item]],
        max_concurrent_streams: int,
    ) -> None:
        self.subscriber = subscriber
        self.subject = subject
        self.queue = queue
        self._make_items = make_items
        self._sync_index: IndexHandler | None = None  # fast path for a sync index handler
        self._batch: BatchHandler | None = None  # packs its batches for requesters that unpack
        self._pack = False  # pack consecutive results of a sync index handler
        self.max_concurrent_streams = max_concurrent_streams
        self._sub: Subscription | None = None
        self._streams: set[_ResponderStream] = set()
        self._started = self._completed = self._failed = self._cancelled = self._busy = 0
        self._sent = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no stream of this subscription is being served."""
        await self._idle.wait()

    def _add(self, stream: _ResponderStream) -> None:
        self._streams.add(stream)
        self._started += 1
        self._idle.clear()

    def _discard(self, stream: _ResponderStream) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._idle.set()

    @property
    def active(self) -> int:
        """Streams being served now."""
        return len(self._streams)

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            self.subject,
            self.queue,
            len(self._streams),
            self._started,
            self._completed,
            self._failed,
            self._cancelled,
            self._busy,
            self._sent,
        )

    async def _on_request(self, msg: Msg) -> None:
        self._request_now(msg)

    def _request_now(self, msg: Msg) -> None:
        self.subscriber._serve(self, msg)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking requests; in-flight streams get ``grace`` seconds (the
        subscriber's ``close_grace`` when None) to finish, then are cancelled."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("unsubscribe of %r failed", self.subject, exc_info=True)
        self.subscriber._subscriptions.discard(self)
        grace = self.subscriber.close_grace if grace is None else grace
        await _finish_streams(list(self._streams), grace)


async def _finish_streams(streams: list[_ResponderStream], grace: float) -> None:
    tasks = [s.task for s in streams if s.task is not None]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)


class _ResponderStream:
    """One stream being served: the task that runs the handler and sends replies (none
    for a sync index handler done at its first call: see :meth:`start_now`)."""

    def __init__(
        self,
        owner: StreamSubscription,
        link: Link,
        msg: Msg,
        machine: ResponderMachine,
        control_subject: str | None,
        token: str,
    ) -> None:
        self.owner = owner
        self.link = link
        self.reply = msg.reply
        self.machine = machine
        self.control_subject = control_subject
        self.token = token
        self.request = StreamRequest(msg, machine)
        self.task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self._credit: asyncio.Future[None] | None = None
        self._timer = LazyTimer(self.loop, self._on_timer)
        self._cancel_reason: str | None = None
        self._limit = link.nc.max_payload - HEADER_ALLOWANCE
        self._too_large = False
        self._sent = 0
        self._first: Any = _NOTHING  # see start_now
        self._first_sent = False
        # The fast path (_send_now) needs a v1 requester and our own control subject.
        self._prefix = (
            hpub_prefix(self.reply, control_subject) if control_subject and machine.v1 else None
        )

    # ------------------------------------------------------------ sending

    async def _send(self, payload: bytes, headers: dict[str, str] | None) -> None:
        await publish(
            self.link, self.reply, payload, reply=self.control_subject or "", headers=headers
        )

    async def _send_error(self, message: str, code: int, retryable: bool) -> None:
        m = self.machine
        headers = m.error_headers(message, code, retryable, self.loop.time())
        await self._send(STREAM_ERROR_PREFIX + message.encode("utf-8", "replace"), headers)

    async def run(self) -> None:
        m = self.machine
        owner = self.owner
        items: AsyncIterator[_Item] | None = None
        outcome = Outcome.FAILED
        try:
            # No separate accept: the first reply (data, end, error, or the first
            # heartbeat if the handler is slow) tells the requester our control subject.
            self._arm()
            if owner._sync_index is not None:
                if owner._pack and m.pack:
                    ended = await self._pump_index_packed(owner._sync_index)
                else:
                    ended = await self._pump_index(owner._sync_index)
            elif owner._batch is not None and m.pack:
                ended = await self._pump_batch(owner._batch)
            else:
                items = owner._make_items(self.request)
                ended = await self._pump(items)
            if self._too_large:
                return
            if ended and not m.terminal:
                await self._send(STREAM_END, m.end_headers(self.loop.time()))
                outcome = Outcome.COMPLETED
                return
            outcome = Outcome.CANCELLED
        except _HandlerError as e:
            if not m.terminal:
                await self._send_error(e.message, e.code, e.retryable)
        except StreamError as e:  # raised by the handler on purpose: sent as it is
            if not m.terminal:
                await self._send_error(e.message, e.code, e.retryable)
        except asyncio.CancelledError:
            outcome = Outcome.CANCELLED
            if self._cancel_reason == "deadline" and not m.terminal:
                await self._send_error("stream deadline exceeded", _DEADLINE, False)
            raise
        except ConnectionLostError:
            log.debug("stream on %r: connection lost", owner.subject)
        except Exception as exc:
            await self._internal_error(exc)
        finally:
            owner._sent += m.sent_seq - (m.resume.seq if m.resume else 0)
            self._finish(outcome)
            if items is not None and hasattr(items, "aclose"):
                try:
                    await items.aclose()
                except Exception:
                    log.debug("closing a stream handler failed", exc_info=True)

    async def _pump(self, items: AsyncIterator[_Item]) -> bool:
        """Send what ``items`` yields; True when it is exhausted (the stream may end)."""
        emit = self._emit
        async for data, pos in items:
            if type(data) is list:
                if not await self._send_items(data, 0, _default_position):
                    return False
            elif not await emit(data, pos):  # type: ignore[arg-type]
                return False
        return True

    def start_now(self, handler: IndexHandler) -> bool:
        """Call a sync index handler for the first reply at once, in the request's
        dispatch, and queue that reply if it can go the fast way: the stream's task
        starts an event-loop iteration later, which would delay the first reply.
        :meth:`_pump_index` takes the result (or the exception) from there.

        Returns True when that was the whole stream (the handler said no more): the
        end marker is queued too, the stream is finished, and no task is needed.
        """
        index = self._first_index()
        try:
            result: Any = handler(self.request, index)
        except Exception as exc:
            self._first = exc
            return False
        self._first = result
        if type(result) is not tuple or len(result) != 3 or result[2] is not None:
            return False
        data, more, _ = result
        try:
            done = not more
        except Exception:  # e.g. an array's ambiguous truth value: the task raises it
            return False
        link = self.link
        # Finishing here needs a v1 requester (the end marker's headers, our control
        # subject) and a link that queues commands now; else the task sends the end.
        finish = done and self._prefix is not None and link.ready()
        if data is not None:
            if not self._send_now(data, index):
                return False
            self._first_sent = True
        elif not finish:
            return False
        if finish:
            self._end_now()
        link.kick_soon()
        return finish

    def _end_now(self) -> None:
        """Finish a stream whose handler is done from :meth:`start_now`: queue the end
        marker behind its reply (one write for both), count it, let it go."""
        m = self.machine
        headers = m.end_headers(self.loop.time())
        if not self.link.queue_publish(
            self.reply, self.control_subject or "", STREAM_END, headers
        ):  # not expected (start_now checked): send it from a task instead
            self.owner.subscriber._spawn(
                self._quiet_send(STREAM_END, headers, "end marker", logging.WARNING)
            )
        self.owner._sent += m.sent_seq - (m.resume.seq if m.resume else 0)
        self._finish(Outcome.COMPLETED)

    def _first_index(self) -> int:
        resume = self.machine.resume
        return int(resume.pos.partition(".")[0]) + 1 if resume else 0

    async def _pump_index(self, handler: IndexHandler) -> bool:
        """:meth:`_pump` for a sync index handler, without an async generator per item."""
        request = self.request
        index = self._first_index()
        emit = self._emit
        send_now = self._send_now
        link = self.link
        first, self._first = self._first, _NOTHING
        while True:
            if first is _NOTHING:
                result: Any = handler(request, index)
            else:
                result, first = first, _NOTHING
                if isinstance(result, Exception):
                    raise result
            if type(result) is not tuple:
                result = await result
            data, more, err = result
            if err is not None:
                raise _error_from_value(err)
            if data is not None:
                if self._first_sent:
                    self._first_sent = False  # start_now sent it
                elif send_now(data, index):
                    if not self._sent & _YIELD_MASK or link.pending_size() > _YIELD_BYTES:
                        await self._after_send()
                    elif link.flusher_idle():
                        link.kick_soon()
                elif not await emit(data, index):
                    return False
            if not more:
                return True
            index += 1

    async def _pump_batch(self, handler: BatchHandler) -> bool:
        """:meth:`_pump` for a batch handler whose requester takes packed messages:
        each batch goes out in as few messages as credit and max_payload allow."""
        request = self.request
        batch, skip = _batch_start(self.machine.resume)
        while True:
            result: Any = handler(request, batch)
            if inspect.isawaitable(result):
                result = await result
            data, more, err = result
            if err is not None:
                raise _error_from_value(err)
            if not await self._send_items(data, skip, _batch_positions(batch)):
                return False
            skip = 0
            if not more:
                return True
            batch += 1

    async def _send_items(
        self, items: list[bytes], start: int, pos: Callable[[int], int | str | None]
    ) -> bool:
        """Send ``items[start:]``, ``pos(i)`` being item ``i``'s position (None: the
        default), packed when the requester unpacks; False when the stream must stop."""
        m = self.machine
        n = len(items)
        if not m.pack:
            for i in range(start, n):
                if not await self._emit(items[i], pos(i)):
                    return False
            return True
        limit = self._limit
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
                if not await self._emit(items[i], pos(i)):
                    return False
                i += 1
                continue
            payload = pack_items(items[i:j])
            seq = m.send_pack(j - i, len(payload) - 4 * (j - i), self.loop.time())
            headers = {HDR_SEQ: str(seq), HDR_PACK: str(j - i)}
            first = pos(i)
            if first is not None and first != seq - 1:
                headers[HDR_POS] = str(first)
            await self._send(payload, headers)
            self._sent += j - i
            i = j
            await asyncio.sleep(0)  # let other streams and the flusher in
        return True

    async def _pump_index_packed(self, handler: IndexHandler) -> bool:
        """:meth:`_pump_index` with packing (``pack=True``): results of consecutive
        calls are sent together, once 1,024 are held, ``_PACK_LINGER`` seconds after
        the first of them, before awaiting an async result, or at the end."""
        request = self.request
        resume = self.machine.resume
        index = int(resume.pos.partition(".")[0]) + 1 if resume else 0
        loop = self.loop
        held: list[bytes] = []
        held_bytes = 0
        first = index
        since = 0.0

        async def flush() -> bool:
            nonlocal held, held_bytes
            items, held, held_bytes = held, [], 0
            base = first
            return not items or await self._send_items(items, 0, lambda i: base + i)

        while True:
            result: Any = handler(request, index)
            if type(result) is not tuple:
                if not await flush():
                    return False
                result = await result
            data, more, err = result
            if err is not None:
                if not await flush():
                    return False
                raise _error_from_value(err)
            if data is not None:
                if held and index != first + len(held) and not await flush():
                    return False
                if not held:
                    first = index
                    since = loop.time()
                held.append(data)
                held_bytes += len(data) + 4
                if (
                    len(held) >= _PACK_HOLD
                    or held_bytes >= self._limit
                    or loop.time() - since >= _PACK_LINGER
                ) and not await flush():
                    return False
            if not more:
                return await flush()
            index += 1

    def _send_now(self, data: bytes, pos: int | str | None) -> bool:
        """Queue a data reply on the connection without awaiting, when the common case
        applies (v1 requester, credit, default position, connected, bytes within the
        size limit); False, having done nothing, otherwise: use :meth:`_emit`.

        The caller must then call :meth:`_after_send` when the connection's flusher
        needs a kick or it is time to yield (see :meth:`_pump_index`).
        """
        prefix = self._prefix
        if prefix is None or type(data) is not bytes or type(pos) is not int:
            return False
        m = self.machine
        link = self.link
        size = len(data)
        if pos != m.sent_seq or size > self._limit or not link.ready():
            return False
        seq = m.send_next(size, self.loop.time())
        if not seq:
            return False
        link.queue_seq(prefix, seq, data)
        self._sent += 1
        return True

    def _yield_due(self) -> bool:
        """Every ``_YIELD_EVERY`` sends, or with over ``_YIELD_BYTES`` queued, a stream
        yields so concurrent streams interleave (``_pump_index`` inlines this)."""
        return not self._sent & _YIELD_MASK or self.link.pending_size() > _YIELD_BYTES

    async def _after_send(self) -> None:
        """Kick the connection's flusher if idle; when a yield is due, bound its
        buffer (:meth:`Link.kick`'s back-pressure) and yield. Otherwise the kick is
        sync (:meth:`Link.kick_soon`): no coroutine chain and future per burst of replies."""
        link = self.link
        if self._yield_due():
            await link.kick()
            await asyncio.sleep(0)
        else:
            link.kick_soon()

    async def _emit(self, data: bytes, pos: int | str | None) -> bool:
        """Send one data reply once credit allows; False when the stream must stop."""
        m = self.machine
        if m.terminal:
            return False
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"a handler produced {type(data).__name__}, not bytes")
            data = bytes(data)
        size = len(data)
        if size > self._limit:
            log.error(
                "stream on %r: a reply of %d bytes exceeds max_payload (%d)",
                self.owner.subject,
                size,
                self._limit,
            )
            self._too_large = True
            await self._send_error(str(PayloadTooLargeError(size, self._limit)), _TOO_LARGE, False)
            return False
        if not m.has_credit(size):
            await self._wait_credit(size)
            if m.terminal:
                return False
        if self._send_now(data, pos):
            await self._after_send()
            return True
        if type(pos) is int:
            pos = None if pos == m.sent_seq else str(pos)
        headers = m.data_headers(size, pos, self.loop.time())  # type: ignore[arg-type]
        await self._send(data, headers)
        self._sent += 1
        if self._yield_due():
            await asyncio.sleep(0)
        return True

    async def _internal_error(self, exc: Exception) -> None:
        owner = self.owner
        error_id = secrets.token_hex(6)
        log.error(
            "stream handler for %r raised (error id %s)", owner.subject, error_id, exc_info=exc
        )
        if owner.subscriber.send_exception_text:
            message = f"{type(exc).__name__}: {exc} (error id {error_id})"
        else:
            message = f"internal error (error id {error_id})"
        if not self.machine.terminal:
            try:
                await self._send_error(message, _INTERNAL, False)
            except ConnectionLostError:
                pass

    def _finish(self, outcome: Outcome) -> None:
        owner = self.owner
        owner._discard(self)
        self.owner.subscriber._controls.pop(self.token, None)
        self._timer.cancel()
        if outcome is Outcome.COMPLETED:
            owner._completed += 1
        elif outcome is Outcome.CANCELLED:
            owner._cancelled += 1
        else:
            owner._failed += 1

    # ------------------------------------------------------------ credit

    async def _wait_credit(self, size: int) -> None:
        m = self.machine
        while not m.terminal and not m.has_credit(size):
            fut = self._credit = self.loop.create_future()
            await fut

    def on_control(self, msg: Msg) -> None:
        verdict = self.machine.on_control(msg.headers, self.loop.time())
        if verdict is Control.CANCEL:
            self._stop("cancelled by the requester")
        elif verdict is Control.LIVENESS:
            fut = self._credit
            if fut is not None and not fut.done():
                self._credit = None
                fut.set_result(None)

    def _stop(self, reason: str) -> None:
        self._cancel_reason = reason
        self.machine.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # ------------------------------------------------------------ timers

    def _arm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _on_timer(self) -> None:
        m = self.machine
        action = m.on_timer(self.loop.time())
        if action is ResponderTimer.HEARTBEAT:
            headers = m.heartbeat_headers(self.loop.time())
            self.owner.subscriber._spawn(self._quiet_send(b"", headers, "heartbeat"))
        elif action is ResponderTimer.REQUESTER_GONE:
            log.debug("stream on %r: requester gone, stopping", self.owner.subject)
            self._stop("requester gone")
            return
        elif action is ResponderTimer.DEADLINE:
            self._cancel_reason = "deadline"
            if self.task is not None and not self.task.done():
                self.task.cancel()
            return
        self._arm()

    async def _quiet_send(
        self,
        payload: bytes,
        headers: dict[str, str] | None,
        what: str,
        level: int = logging.DEBUG,
    ) -> None:
        """Send from a spawned task: a failure is logged (at ``level``), not raised."""
        try:
            await self._send(payload, headers)
        except Exception:
            log.log(level, "stream on %r: %s not sent", self.owner.subject, what, exc_info=True)


def _as_error(err: ErrorValue) -> _HandlerError | None:
    if err is None:
        return None
    return _error_from_value(err)


async def _call(fn: Callable[..., Any], is_coro: bool, *args: Any) -> Any:
    result = fn(*args)
    if is_coro or inspect.isawaitable(result):
        result = await result
    return result


def _index_items(
    handler: IndexHandler,
) -> Callable[[StreamRequest], AsyncIterator[_Item]]:
    is_coro = inspect.iscoroutinefunction(handler)

    async def items(request: StreamRequest) -> AsyncIterator[_Item]:
        resume = request._machine.resume
        index = int(resume.pos.partition(".")[0]) + 1 if resume else 0
        while True:
            data, more, err = await _call(handler, is_coro, request, index)
            e = _as_error(err)
            if e is not None:
                raise e
            if data is not None:
                yield data, index
            if not more:
                return
            index += 1

    return items


def _batch_positions(batch: int) -> Callable[[int], str]:
    """Positions of a batch's items: ``"<batch>.<item>"``."""
    prefix = f"{batch}."
    return lambda i: prefix + str(i)


def _default_position(i: int) -> None:
    return None


def _batch_start(resume: Resume | None) -> tuple[int, int]:
    """(batch, items of it to skip) where a batch handler's stream (re)starts."""
    if resume is None:
        return 0, 0
    b, _, o = resume.pos.partition(".")
    if not o:  # position from an index handler: continue after that batch
        return int(b) + 1, 0
    return int(b), int(o) + 1


def _batch_items(
    handler: BatchHandler,
) -> Callable[[StreamRequest], AsyncIterator[_Item]]:
    is_coro = inspect.iscoroutinefunction(handler)

    async def items(request: StreamRequest) -> AsyncIterator[_Item]:
        batch, skip = _batch_start(request._machine.resume)
        while True:
            data, more, err = await _call(handler, is_coro, request, batch)
            e = _as_error(err)
            if e is not None:
                raise e
            for j in range(skip, len(data)):
                yield data[j], f"{batch}.{j}"
            skip = 0
            if not more:
                return
            batch += 1

    return items


def _generator_items(
    fn: GeneratorHandler,
) -> Callable[[StreamRequest], AsyncIterator[_Item]]:
    async def items(request: StreamRequest) -> AsyncIterator[_Item]:
        gen = fn(request)
        if not hasattr(gen, "__anext__"):
            raise TypeError("stream_handler needs an async generator function")
        resume = request._machine.resume
        skip = resume.seq if resume is not None else 0
        try:
            async for item in gen:
                if skip and not request._resume_read:
                    if type(item) is list:
                        if skip < len(item):
                            item, skip = item[skip:], 0
                            yield item, None
                            continue
                        skip -= len(item)
                    else:
                        skip -= 1
                    if skip % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # a huge (or forged) resume must not freeze us
                    continue
                yield item, None
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()

    return items


class Subscriber:
    """Responds to streamed requests; also records subjects into writers.

    ``sub = await Subscriber.connect(servers)``; ``await sub.close()``.

    Args:
        close_grace: seconds :meth:`close` lets in-flight streams finish (max 5 by
            default), after which they are cancelled.
        max_concurrent_streams: default per-subscription limit; requests beyond it
            get an immediate retryable 503 "busy" error.
        max_request_size: larger requests get a 413 error reply (None: only the
            server's max_payload limits them).
        max_stream_duration: seconds any one stream may last (None: no limit).
        send_exception_text: when a handler raises, send the exception's text to the
            requester (off by default: a generic message with an error id is sent and
            the traceback is logged locally with that id).
        stall_factor: missed requester heartbeats before its stream is stopped.
    """

    def __init__(
        self,
        config: Config,
        *,
        close_grace: float = 5.0,
        max_concurrent_streams: int = 1000,
        max_request_size: int | None = None,
        max_stream_duration: float | None = None,
        send_exception_text: bool = False,
        stall_factor: float = 3.0,
    ) -> None:
        if max_concurrent_streams < 1:
            raise ConfigError(f"max_concurrent_streams must be >= 1, got {max_concurrent_streams}")
        if close_grace < 0:
            raise ConfigError(f"close_grace must be >= 0 seconds, got {close_grace}")
        self.config = config
        self.close_grace = close_grace
        self.max_concurrent_streams = max_concurrent_streams
        self.max_request_size = max_request_size
        self.max_stream_duration = max_stream_duration
        self.send_exception_text = send_exception_text
        self.stall_factor = stall_factor
        self._state = _State.CLOSED
        self._link: Link | None = None
        self._control_sub: Subscription | None = None
        self._control_prefix = ""
        self._controls: dict[str, _ResponderStream] = {}
        self._subscriptions: set[StreamSubscription] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._recordings: dict[int, Recording] = {}

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run a small fire-and-forget send; a reference is kept until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @classmethod
    async def connect(cls, servers: list[str] | str | Config, **options: Any) -> Subscriber:
        """Connect to ``servers`` (a list of URLs, or a :class:`Config` for auth/TLS).

        Keyword options are those of :class:`Subscriber`.

        Raises:
            NoServersError: no server could be reached.
        """
        if isinstance(servers, Config):
            config = servers
        else:
            config = Config(servers=[servers] if isinstance(servers, str) else list(servers))
        sub = cls(config, **options)
        await sub._open()
        return sub

    @property
    def nc(self) -> Client:
        """The underlying nats-py connection."""
        if self._link is None:
            raise SubscriberClosedError("this subscriber is closed")
        return self._link.nc

    async def _open(self) -> None:
        cfg = self.config
        try:
            self._link = await connect(
                list(cfg.servers),
                cfg.nats_options(),
                allow_reconnect=True,
                error_counter=self._on_nats_error,
            )
        except Exception as exc:
            servers = [safe_server(s) for s in cfg.servers]
            reason = translate_connect_error(exc)
            raise NoServersError(servers, [reason] * len(servers)) from None
        self._state = _State.OPEN
        self._control_prefix = f"{cfg.inbox_prefix}.{secrets.token_hex(12)}"
        self._control_sub = await subscribe_live(
            self._link.nc,
            f"{self._control_prefix}.*",
            self._on_control,
            pending_bytes_limit=0,
            direct=self._control_now,
        )

    def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            recording = self._recordings.get(id(exc.sub))
            if recording is not None:
                recording._slow_consumer()

    async def _on_control(self, msg: Msg) -> None:
        self._control_now(msg)

    def _control_now(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        stream = self._controls.get(token)
        if stream is not None:
            stream.on_control(msg)

    def _check_open(self) -> Link:
        if self._state is not _State.OPEN or self._link is None:
            raise SubscriberClosedError("this subscriber is closed; create a new one")
        return self._link

    # ------------------------------------------------------------ responders

    async def _subscribe(
        self,
        subject: str,
        make_items: Callable[[StreamRequest], AsyncIterator[_Item]],
        queue: str | None,
        max_concurrent_streams: int | None,
        *,
        sync_index: IndexHandler | None = None,
        batch: BatchHandler | None = None,
        pack: bool = False,
    ) -> StreamSubscription:
        link = self._check_open()
        validate_subscribe_subject(subject)
        q = validate_queue(queue)
        handle = StreamSubscription(
            self, subject, q, make_items, max_concurrent_streams or self.max_concurrent_streams
        )
        handle._sync_index = sync_index
        handle._batch = batch
        handle._pack = pack
        handle._sub = await subscribe_live(
            link.nc, subject, handle._on_request, queue=q, direct=handle._request_now
        )
        self._subscriptions.add(handle)
        return handle

    async def stream_subscribe_handler(
        self,
        subject: str,
        handler: IndexHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
        pack: bool = False,
    ) -> StreamSubscription:
        """Serve ``subject`` with an index handler (sync or async).

        ``handler(request, index) -> (data | None, more, err)``, ``index`` counting
        calls from 0. If ``err`` is set, the error marker is sent and the stream ends;
        else ``data`` (when not None) is sent; when ``more`` is False the end marker
        follows. Returns once the subscription is live on the server.

        ``pack=True`` (for many small replies): results of consecutive calls of a
        sync handler are packed into few NATS messages for requesters that unpack
        (natstream's do); a reply is held back at most 5 ms, or until an async
        result is awaited. The requester still sees one message per reply.

        Cancellation: when the requester cancels or vanishes, or the deadline passes,
        the handler's task is cancelled (``CancelledError`` inside an async handler).
        """
        sync = None if inspect.iscoroutinefunction(handler) else handler
        return await self._subscribe(
            subject,
            _index_items(handler),
            queue,
            max_concurrent_streams,
            sync_index=sync,
            pack=pack,
        )

    async def batch_stream_subscribe_handler(
        self,
        subject: str,
        batch_handler: BatchHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
    ) -> StreamSubscription:
        """Serve ``subject`` with a batch handler: ``(request, batch_index) ->
        (items, more, err)``; items reach the requester's handler in order, one message
        each. A natstream requester gets each batch packed into as few NATS messages
        as flow control and the server's max_payload allow; a plain one, one reply per
        item."""
        return await self._subscribe(
            subject, _batch_items(batch_handler), queue, max_concurrent_streams, batch=batch_handler
        )

    async def stream_handler(
        self,
        subject: str,
        fn: GeneratorHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
    ) -> StreamSubscription:
        """Serve ``subject`` with an async generator: ``async def fn(request): yield b"..."``.

        Each yielded bytes is one reply; a yielded list of bytes is several replies
        sent together (packed into few NATS messages for requesters that unpack:
        the way to stream many small replies fast). Returning ends the stream; an
        exception ends it with an error marker (raise :class:`StreamError` to choose
        the message, code and retryability sent).
        """
        return await self._subscribe(subject, _generator_items(fn), queue, max_concurrent_streams)

    async def stream_subscribe_with_writer(
        self,
        subject: str,
        writer: StreamWriterLike,
        formatter: Callable[[Msg], bytes] = default_formatter,
        *,
        queue: str | None = None,
    ) -> Recording:
        """Write every message on ``subject`` (wildcards allowed) to ``writer``.

        Each message goes through ``formatter(msg) -> bytes`` (default: one
        ``[YYYY-MM-DD HH:MM:SS.mmm] subject: data`` line) and one ``writer.write``
        call, in arrival order. Returns once the subscription is live.
        :meth:`Recording.stop`, or closing this subscriber, drains what was received
        and flushes the writer (it does not close it: the writer is yours). Messages
        nats-py dropped because the recorder fell behind are counted in
        ``stats().dropped`` and logged.
        """
        link = self._check_open()
        validate_subscribe_subject(subject)
        q = validate_queue(queue)
        recording = Recording(subject, writer, formatter)
        sub = await subscribe_live(link.nc, subject, recording._on_msg, queue=q)
        recording._attach(sub, link.nc)
        self._recordings[id(sub)] = recording

        async def closer() -> None:
            self._recordings.pop(id(sub), None)
            try:
                await recording.stop()
            except Exception:
                log.exception("recording of %r: flushing the writer failed", subject)

        self._add_closer(closer)
        return recording

    def _serve(self, handle: StreamSubscription, msg: Msg) -> None:
        """A request arrived (in nats-py's callback task: do no I/O here but spawn)."""
        link = self._link
        if not msg.reply or link is None or self._state is not _State.OPEN:
            return
        now = time.monotonic()
        try:
            options = parse_request_headers(msg.headers)
        except HeaderError as exc:
            self._spawn(self._reject(link, msg, None, str(exc), _BAD_REQUEST, False))
            return
        machine = ResponderMachine(
            options, now, stall_factor=self.stall_factor, max_duration=self.max_stream_duration
        )
        if len(handle._streams) >= handle.max_concurrent_streams:
            handle._busy += 1
            self._spawn(
                self._reject(link, msg, machine, "busy: too many streams", _BUSY_CODE, True)
            )
            return
        if self.max_request_size is not None and len(msg.data) > self.max_request_size:
            self._spawn(
                self._reject(
                    link,
                    msg,
                    machine,
                    f"request of {len(msg.data)} bytes exceeds the limit of "
                    f"{self.max_request_size}",
                    _TOO_LARGE,
                    False,
                )
            )
            return
        token = secrets.token_hex(12)
        control = f"{self._control_prefix}.{token}" if machine.v1 else None
        stream = _ResponderStream(handle, link, msg, machine, control, token)
        if control is not None:
            self._controls[token] = stream
        handle._add(stream)
        if handle._sync_index is not None and not handle._pack:
            if stream.start_now(handle._sync_index):
                return  # a one-reply stream, already finished
        stream.task = asyncio.create_task(
            stream.run(), name=f"natstream-stream-{handle.subject}-{handle._started}"
        )

    async def _reject(
        self,
        link: Link,
        msg: Msg,
        machine: ResponderMachine | None,
        message: str,
        code: int,
        retryable: bool,
    ) -> None:
        if machine is not None:
            headers = machine.error_headers(message, code, retryable, 0.0)
        elif msg.headers and HDR_VERSION in msg.headers:  # a v1 request we could not parse
            headers = error_headers(0, message, code, retryable)
        else:
            headers = None
        try:
            await publish(link, msg.reply, STREAM_ERROR_PREFIX + message.encode(), headers=headers)
        except Exception:
            log.debug("could not send a %d reply", code, exc_info=True)

    # ------------------------------------------------------------ lifecycle

    def _add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def close(self, grace: float | None = None) -> None:
        """Stop taking requests; let in-flight streams finish within ``grace`` seconds
        (``close_grace`` when None), cancel the rest, flush recorders, disconnect.

        Idempotent.
        """
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSING
        grace = self.close_grace if grace is None else grace
        try:
            subs = list(self._subscriptions)
            await asyncio.gather(*(s.stop(grace) for s in subs))
            for closer in self._closers:
                await closer()
        finally:
            link, self._link = self._link, None
            if link is not None:
                try:
                    await link.nc.close()
                except Exception:
                    log.debug("closing the subscriber's connection failed", exc_info=True)
            self._state = _State.CLOSED

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


logging.getLogger("natstream").addHandler(logging.NullHandler())
