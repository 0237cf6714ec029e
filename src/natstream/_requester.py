"""Drives :class:`RequesterMachine` over nats-py: one stream, with retries.

A stream attempt owns a private inbox subscription. Its callback classifies each
reply (through the machine) and queues data; the caller's task takes data from the
queue and runs the handler, so memory stays bounded by the flow-control window. One
shortcut: while the caller's task waits with an empty queue in ``stream_request``
with a sync handler, a data reply that arrives in order is handed to that handler
from the callback at once (no queue, no task wake-up per burst); see
:meth:`Stream._feed`.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import contextvars
import inspect
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from ._config import StreamOptions
from ._connection import check_payload, log, publish
from ._errors import (
    ConnectionLostError,
    ProtocolViolationError,
    StreamFailure,
    StreamTimeoutError,
)
from ._fastclient import SEQ_AT, SEQ_PREFIX, FastClient, kick_soon, parse_headers
from ._protocol import Reply, RequesterMachine, RequesterState, Resume, cancel_headers
from ._subjects import validate_publish_subject
from ._timer import LazyTimer

if TYPE_CHECKING:
    from ._pool import Pool, _Conn

__all__ = ["Handler", "Stream"]

Handler = Callable[[Msg], "bool | Awaitable[bool | None] | None"]

# A peer without flow control can outrun us: past these we fail loudly instead of
# growing without bound (nats-py's own per-subscription defaults).
_PLAIN_MAX_BUFFERED = 512 * 1024


_new = object.__new__


# How a direct call makes the caller's task the loop's current task: asyncio's own
# swap (3.12+), else its table of current tasks (3.11; _enter_task and _leave_task
# would do it in four calls, 0.3 us per reply).
def _swap_by_enter_leave(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None
) -> asyncio.Task[Any] | None:
    """The loop's current task becomes ``task``; returns the previous one. Through
    ``_leave_task``/``_enter_task``: for a Python with neither of the others."""
    previous = asyncio.current_task(loop)
    if previous is not None:
        asyncio.tasks._leave_task(loop, previous)
    if task is not None:
        asyncio.tasks._enter_task(loop, task)
    return previous


_swap_current_task: Callable[..., Any] | None = getattr(asyncio.tasks, "_swap_current_task", None)
_current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = getattr(
    asyncio.tasks, "_current_tasks", {}
)
if _swap_current_task is None and not hasattr(asyncio.tasks, "_current_tasks"):
    _swap_current_task = _swap_by_enter_leave


class _Pack:
    """The items of one packed message not taken yet: one buffer entry. Item ``k`` is
    ``payload[offsets[k]:offsets[k + 1]]``, sliced when taken, and becomes a message
    with the packed message's subject and reply and no headers."""

    __slots__ = ("cls", "next", "offsets", "payload", "reply", "size", "subject")

    def __init__(self, cls: type[Msg], msg: Msg, offsets: list[int]) -> None:
        self.cls = cls  # FastClient.item_type
        self.payload = msg.data
        self.subject = msg.subject
        self.reply = msg.reply
        self.offsets = offsets
        self.size = len(offsets) - 1  # items
        self.next = 0  # index of the next item to take

    def take(self) -> Msg:
        msg = object.__new__(self.cls)
        i = self.next
        msg.data = self.payload[self.offsets[i] : self.offsets[i + 1]]
        msg.subject = self.subject
        msg.reply = self.reply
        self.next = i + 1
        return msg


class _Attempt:
    """One request sent and the replies it draws, until a terminal state."""

    def __init__(
        self,
        conn: _Conn,
        subject: str,
        machine: RequesterMachine,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.conn = conn
        nc = conn.nc
        if not isinstance(nc, FastClient):
            raise TypeError("natstream streams need connections made by natstream (FastClient)")
        self.nc: FastClient = nc
        self.subject = subject
        self.machine = machine
        self.loop = loop
        self.buffer: deque[Msg | _Pack] = deque()
        self.marker: Msg | None = None
        self._token: bytes | None = None  # of our inbox on the connection's shared subscription
        self.inbox = ""
        # The bound responder's control subject, once known (the fast path compares bytes).
        self._control: bytes | None = None
        self._control_str = ""
        # Class of header-less messages (see FastClient.item_type, _on_raw, _unpack).
        self._item_type: type[Msg] = nc.item_type
        self._waiter: asyncio.Future[None] | None = None
        self._timer = LazyTimer(self.loop, self._on_timer)
        self._tasks: set[asyncio.Task[None]] = set()
        self.replies = 0
        self.bytes = 0
        # While the consumer waits (Stream._feed): the sync handler that in-order
        # replies go to straight from _on_raw (bound to the caller's context), and
        # the caller's task (the current task during such a call). The outcome of a
        # call the consumer must finish: (message, result, exception raised).
        self.direct: Callable[[Msg], object] | None = None
        self.direct_task: asyncio.Task[Any] | None = None
        self.held: tuple[Msg, object, BaseException | None] | None = None
        self._deferred_soon = False  # a deferred_ack check is scheduled

    async def start(self, data: bytes, user_headers: dict[str, str] | None) -> None:
        """Take a fresh inbox on the connection's shared subscription; send the request."""
        nc = self.nc
        check_payload(nc, data)
        self.conn.add(self)
        inbox, self._token = await nc.stream_inbox(self._on_raw)
        self.inbox = inbox
        headers = dict(user_headers) if user_headers else {}
        headers.update(self.machine.request_headers(self.loop.time()))
        await publish(nc, self.subject, data, reply=inbox, headers=headers, now=True)
        self._arm()

    # ------------------------------------------------------------ nats callback

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """A reply straight from the parser (FastClient): build the message, handle it.

        Data from the bound responder with a lone ``Ns-Seq`` header, in order and
        within the window, takes a short path (:meth:`RequesterMachine.on_data`) and
        becomes a message without headers, as packed items do (see :meth:`_unpack`);
        it goes to the direct handler when the consumer waits with one set.
        """
        if (
            headers is not None
            and reply == self._control
            and headers.startswith(SEQ_PREFIX)
            and headers.find(b"\r\n", SEQ_AT) == len(headers) - 4
        ):
            seq_b = headers[SEQ_AT:-4]
            # At most 20 digits: int() of a huge digit string is slow, then raises.
            if (
                len(seq_b) <= 20
                and seq_b.isdigit()
                and self.machine.on_data(now := self.loop.time(), int(seq_b), len(data))
            ):
                msg = _new(self._item_type)
                msg.data = data
                msg.subject = self.inbox
                msg.reply = self._control_str
                self.replies += 1
                self.bytes += len(data)
                w = self._waiter
                if w is not None:
                    # A waiting consumer has an empty queue: nothing is ahead of this.
                    if self.direct is not None and not w.done():
                        self._call_direct(msg, now)
                        return False
                    self._waiter = None  # _wake, inlined: once per burst
                    if not w.done():
                        w.set_result(None)
                self.buffer.append(msg)
                if not self._timer.armed:
                    self._arm()
                return False
        return self._handle(
            Msg(
                _client=self.nc,
                subject=subject.decode(errors="replace"),
                reply=reply.decode(errors="replace"),  # a hostile responder chooses it
                data=data,
                headers=parse_headers(headers),
            )
        )

    def _handle(self, msg: Msg) -> bool:
        """Classify a reply and queue what the consumer gets; True when it woke the
        consumer for the stream's first reply (the parser then lets it run first)."""
        m = self.machine
        first = self.replies == 0 and self.marker is None
        verdict = m.on_reply(self.loop.time(), msg.headers, msg.data, msg.reply)
        if self._control is None and m.control_subject is not None:
            self._bind(m.control_subject)
        if verdict is Reply.DELIVER:
            offsets = m.pack_offsets
            if offsets is None:
                self.buffer.append(msg)
                self.replies += 1
                self.bytes += len(msg.data)
            else:
                m.pack_offsets = None
                self._unpack(msg, offsets)
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
            self._spawn(self._send(msg.reply, cancel_headers()))
            return False
        elif verdict is Reply.END or verdict is Reply.ERROR:
            self.marker = msg
        woke = self._waiter is not None
        self._wake()
        if self.replies == 1 or not self._timer.armed or verdict is not Reply.DELIVER:
            self._arm()
        return first and woke

    def _bind(self, control_subject: str) -> None:
        """The machine bound its responder: prepare the fast path for its messages."""
        self._control_str = control_subject
        self._control = control_subject.encode()

    def _unpack(self, msg: Msg, offsets: list[int]) -> None:
        """Queue the items of a packed message, as one buffer entry; each becomes a
        message when taken.

        Item messages share the packed message's subject and reply and have no
        headers: each is one small object of the connection's ``Msg`` subclass
        (:attr:`FastClient.item_type`).
        """
        count = len(offsets) - 1
        self.buffer.append(_Pack(self._item_type, msg, offsets))
        self.replies += count
        self.bytes += len(msg.data) - 4 * count

    def _call_direct(self, msg: Msg, now: float) -> None:
        """Hand an in-order data reply that arrived at ``now`` to the direct handler,
        as :meth:`Stream._drain_sync` would, with the caller's task as the current
        task. What the consumer task must finish (the handler raised, returned False
        or an awaitable) is held for it, and later replies are queued behind it."""
        loop = self.loop
        swap = _swap_current_task
        if swap is not None:
            reader = swap(loop, self.direct_task)
        else:
            reader = _current_tasks.get(loop)
            _current_tasks[loop] = self.direct_task  # type: ignore[assignment]
        try:
            result = self.direct(msg)  # type: ignore[misc]
        except BaseException as exc:  # the consumer raises it, as if it had called
            self._hold(msg, None, exc)
            return
        finally:
            if swap is not None:
                swap(loop, reader)
            elif reader is not None:
                _current_tasks[loop] = reader
            else:
                _current_tasks.pop(loop, None)
        if result is not None and result is not True:
            self._hold(msg, result, None)
            return
        m = self.machine
        ack = m.on_taken(len(msg.data))
        if ack is not None:
            self.send_ack(ack, now)
        elif m.ack_deferred and not self._deferred_soon:
            self._deferred_soon = True
            loop.call_soon(self._deferred_ack)  # after this read is parsed
        if m.request_timeout is not None:
            m.consumer_back(loop.time())
        if not self._timer.armed:
            self._arm()

    def _deferred_ack(self) -> None:
        self._deferred_soon = False
        ack = self.machine.deferred_ack()
        if ack is not None:
            self.send_ack(ack)

    def _hold(self, msg: Msg, result: object, exc: BaseException | None) -> None:
        self.direct = None
        self.held = (msg, result, exc)
        self.machine.consumer_busy()  # until the consumer has finished it
        self._wake()

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
        m = self.machine
        if not buf:
            await self.wait()
            if not buf:
                return None
        m.consumer_busy()
        entry = buf[0]
        if type(entry) is _Pack:
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
        """Queue ``ack`` for the connection's flusher without awaiting (an ack is small:
        no back-pressure to wait for); ``now``: loop time, if the caller has it."""
        m = self.machine
        subject = m.control_subject
        if subject is None:
            return
        m.mark_sent(self.loop.time() if now is None else now)
        nc = self.nc
        if nc.queue_publish(subject, "", b"", ack):
            kick_soon(nc)
        else:  # nats-py must take it (e.g. reconnecting)
            self._spawn(self._send(subject, ack))

    @property
    def failed_at_once(self) -> bool:
        """The attempt failed with no marker and before any data (e.g. stall, gap)."""
        return self.machine.state is RequesterState.FAILED and self.marker is None

    # ------------------------------------------------------------ timers

    def _arm(self) -> None:
        self._timer.arm(self.machine.next_deadline())

    def _on_timer(self) -> None:
        m = self.machine
        action = m.on_timer(self.loop.time())
        if action.control is not None and m.control_subject is not None:
            self._spawn(self._send(m.control_subject, action.control))
        if action.fail:
            self._wake()
        self._arm()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def connection_lost(self) -> None:
        """Called by the pool when this attempt's connection broke."""
        self.machine.on_connection_lost(
            ConnectionLostError(f"connection to {self.conn.safe_url} lost mid-stream")
        )
        self._wake()

    # ------------------------------------------------------------ sending

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, subject: str, headers: dict[str, str]) -> None:
        try:
            await publish(self.nc, subject, b"", headers=headers)
        except ConnectionLostError:
            log.debug("control message to %s not sent: connection lost", subject)

    async def close(self) -> None:
        """End the attempt: tell the responder when it is not finished, unsubscribe.

        Safe to call more than once and during cancellation.
        """
        self._timer.cancel()
        cancel = self.machine.cancel()
        self.conn.discard(self)
        if cancel is not None and self.machine.control_subject is not None:
            await self._send(self.machine.control_subject, cancel)
        token, self._token = self._token, None
        if token is not None:
            self.nc.drop_inbox(token)
        held, self.held = self.held, None
        if held is not None and inspect.iscoroutine(held[1]):
            held[1].close()  # a direct call's result the consumer never got to await
        for task in list(self._tasks):
            task.cancel()


_Call = Callable[[Msg], Any]  # a sync handler, maybe bound to a context


def _in_caller_context(handler: Handler) -> tuple[_Call, _Call]:
    """``handler`` bound to the calling task's context: (for calls from that task,
    for calls from elsewhere, i.e. direct calls). Python 3.12+ exposes the task's
    own context; on 3.11 both are bound to one copy of it, taken now, so the
    handler's calls all see the same context (what it sets is not seen by the caller).
    """
    get: Callable[[], contextvars.Context] | None
    get = getattr(asyncio.current_task(), "get_context", None)
    run: Callable[..., object] = (contextvars.copy_context() if get is None else get()).run
    bound = partial(run, handler)
    return (bound if get is None else handler), bound


class Stream:
    """One streamed request, with retries; created by :meth:`Pool.stream`.

    Use ``async with pool.stream(...) as s: async for msg in s: ...`` (iterating
    outside the block raises ``TypeError``: nothing would end the stream). Iteration
    yields data replies only and ends at the end marker; an error marker raises
    :class:`StreamError`, timeouts raise :class:`RequestTimeoutError` /
    :class:`StreamTimeoutError`. Leaving the block early (``break``, an exception, or
    cancellation) ends the stream and tells the responder to stop.

    Retryable failures are retried up to ``max_retries`` times, ``retry_delay``
    seconds apart; with resume on (the default) a retry continues after the last
    message delivered, so iteration never sees a duplicate or a gap.
    """

    def __init__(
        self,
        pool: Pool,
        subject: str,
        data: bytes,
        *,
        request_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.5,
        headers: dict[str, str] | None = None,
        options: StreamOptions | None = None,
    ) -> None:
        validate_publish_subject(subject)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0 seconds, got {retry_delay}")
        for name, value in (
            ("request_timeout", request_timeout),
            ("stream_timeout", stream_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds or None, got {value}")
        self._pool = pool
        self.subject = subject
        self._data = bytes(data)
        self._request_timeout = request_timeout
        self._stream_timeout = stream_timeout
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._headers = headers
        self._options = options or pool.config.stream
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None
        self._attempt: _Attempt | None = None
        self._resume: Resume | None = None
        self._to_ack: Msg | None = None
        self.attempts = 0
        self._closed = False
        self._entered = False  # by ``async with``: leaving the block ends the stream

    # ------------------------------------------------------------ lifecycle

    async def _open(self) -> _Attempt:
        if self._deadline is None and self._stream_timeout is not None:
            self._deadline = self._loop.time() + self._stream_timeout
        opts = self._options
        self.attempts += 1
        conn = self._pool._acquire()
        window_messages, window_bytes = conn.window(opts.window_messages, opts.window_bytes)
        machine = RequesterMachine(
            self._loop.time(),
            subject=self.subject,
            window_messages=window_messages,
            window_bytes=window_bytes,
            heartbeat=opts.heartbeat,
            stall_factor=opts.stall_factor,
            request_timeout=self._request_timeout,
            deadline=self._deadline,
            resume=self._resume if opts.resume else None,
        )
        attempt = _Attempt(conn, self.subject, machine, self._loop)
        self._attempt = attempt
        self._pool._stream_started(self.attempts > 1)
        try:
            await attempt.start(self._data, self._headers)
        except BaseException:
            self._attempt = None
            self._pool._stream_finished(attempt, ok=False)
            await attempt.close()
            raise
        return attempt

    async def __aenter__(self) -> Stream:
        self._entered = True
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream; the responder is told to stop if it has not finished."""
        if self._closed:
            return
        self._closed = True
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            self._pool._stream_finished(attempt, attempt.machine.state is RequesterState.ENDED)
            await attempt.close()

    # ------------------------------------------------------------ iteration

    def __aiter__(self) -> Stream:
        if not self._entered:
            # Iterating alone, nothing would end the stream after a ``break``: the
            # responder would keep sending and heartbeats would flow until exit.
            raise TypeError(
                "iterate a stream inside its block: "
                "`async with pool.stream(...) as s: async for msg in s: ...`"
            )
        return self

    async def __anext__(self) -> Msg:
        if self._to_ack is not None:
            msg, self._to_ack = self._to_ack, None
            assert self._attempt is not None
            self._attempt.delivered(msg)
        kind, msg = await self._next()
        if kind is Reply.DELIVER:
            self._to_ack = msg
            return msg
        if kind is Reply.ERROR:
            await self._retry_or_raise()
            return await self.__anext__()
        raise StopAsyncIteration

    async def _next(self) -> tuple[Reply, Msg]:
        """The next reply: (DELIVER, data), (END, marker) or (ERROR, marker).

        Failures without a marker are retried here or raised.
        """
        while True:
            attempt = self._attempt
            if attempt is None:
                if self._closed:
                    raise StopAsyncIteration
                try:
                    attempt = await self._open()
                except ConnectionLostError as exc:
                    await self._retry_or_raise(exc)  # no connection up: retryable
                    continue
            msg = await attempt.next_data()
            if msg is not None:
                return Reply.DELIVER, msg
            m = attempt.machine
            if m.state is RequesterState.ENDED:
                assert attempt.marker is not None
                return Reply.END, attempt.marker
            if m.state is RequesterState.CANCELLED:
                raise StopAsyncIteration
            if attempt.marker is not None:
                return Reply.ERROR, attempt.marker
            await self._retry_or_raise()

    async def _retry_or_raise(self, failure: StreamFailure | None = None) -> None:
        """Retry after a failure when allowed; otherwise raise it.

        ``failure`` is the error when no attempt was made (no connection was up);
        otherwise the current attempt's error is used.
        """
        attempt = self._attempt
        if attempt is not None:
            error = attempt.machine.error
            assert error is not None
            self._resume = attempt.machine.resume_point() or self._resume
            self._attempt = None
            self._pool._stream_finished(attempt, ok=False)
            await attempt.close()
        else:
            assert failure is not None
            error = failure
        if not error.retryable or self.attempts > self._max_retries:
            self._closed = True
            raise error
        delay = self._retry_delay
        if self._deadline is not None and self._loop.time() + delay >= self._deadline:
            self._closed = True
            raise error
        log.debug("retrying stream on %r after %s", self.subject, type(error).__name__)
        await asyncio.sleep(delay)

    async def run_handler(self, handler: Handler) -> None:
        """Feed every reply (end and error markers included) to ``handler``.

        Returns at the end marker or when the handler returns False; raises the
        stream's error otherwise. The whole run, handler calls included, is bounded
        by ``stream_timeout``: past it the handler is cancelled and
        :class:`StreamTimeoutError` is raised.
        """
        is_coro = inspect.iscoroutinefunction(handler)
        try:
            async with asyncio.timeout_at(self._deadline_for_handler()) as cm:
                await self._feed(handler, is_coro)
        except TimeoutError as exc:
            if isinstance(exc, StreamFailure) or not cm.expired():
                raise
            raise StreamTimeoutError(
                f"stream on {self.subject!r} passed its deadline ({self._stream_timeout:g} s)"
            ) from None
        finally:
            await self.aclose()

    def _deadline_for_handler(self) -> float | None:
        if self._stream_timeout is None:
            return None
        if self._deadline is None:
            self._deadline = self._loop.time() + self._stream_timeout
        return self._deadline

    async def _feed(self, handler: Handler, is_coro: bool) -> None:
        """The handler loop of :meth:`run_handler`.

        A sync handler takes queued replies in :meth:`_drain_sync`; while the queue is
        empty it is the attempt's direct handler (:meth:`_Attempt.wait_direct`):
        in-order data replies go to it from the connection's read loop as they
        arrive, with this task as the current task and in its context (see
        :func:`_in_caller_context`).
        """
        call, direct = _in_caller_context(handler) if not is_coro else (handler, handler)
        while True:
            attempt = self._attempt
            if attempt is not None and not is_coro:
                if attempt.held is not None:
                    if await self._finish_held(attempt):
                        return
                    continue
                if attempt.buffer:
                    if await self._drain_sync(attempt, call):
                        return
                    continue
                if not attempt.machine.terminal:
                    await attempt.wait_direct(direct)
                    continue
            try:
                kind, msg = await self._next()
            except StopAsyncIteration:
                return
            if is_coro:
                result: Any = await handler(msg)  # type: ignore[misc]
            else:
                result = call(msg)
                if inspect.isawaitable(result):
                    result = await result
            if kind is Reply.DELIVER:
                if result is False:
                    return
                attempt = self._attempt
                assert attempt is not None
                attempt.delivered(msg)
            elif kind is Reply.END:
                return
            else:
                await self._retry_or_raise()

    async def _finish_held(self, attempt: _Attempt) -> bool:
        """Finish what a direct call left (see :meth:`_Attempt._call_direct`) as
        :meth:`_drain_sync` would; True when the handler stopped the stream."""
        assert attempt.held is not None
        msg, result, exc = attempt.held
        attempt.held = None
        if exc is not None:
            raise exc
        if inspect.isawaitable(result):
            result = await result
        if result is False:
            return True
        attempt.delivered(msg)
        return False

    async def _drain_sync(self, attempt: _Attempt, handler: _Call) -> bool:
        """Hand every queued data reply to a sync handler; True when it returned False.

        The hot path of a fast stream: no await per message unless an ack is due.
        """
        buf = attempt.buffer
        m = attempt.machine
        m.consumer_busy()
        on_delivered = m.on_delivered
        while buf:
            entry = buf[0]
            if type(entry) is _Pack:
                if await self._drain_pack(attempt, entry, handler):
                    if entry.next == entry.size:
                        buf.popleft()
                    return True
                buf.popleft()
                continue
            msg: Msg = buf.popleft()  # type: ignore[assignment]
            result = handler(msg)
            if result is not None and result is not True:
                if inspect.isawaitable(result):
                    result = await result
                if result is False:
                    return True
            ack = on_delivered(msg.headers, len(msg.data))
            if ack is not None:
                attempt.send_ack(ack)
        return False

    async def _drain_pack(self, attempt: _Attempt, pack: _Pack, handler: _Call) -> bool:
        """:meth:`_drain_sync` for the items of one packed message: the machine counts
        them in runs that end where an ack may fall due (see ``on_delivered_many``)."""
        m = attempt.machine
        payload = pack.payload
        offsets = pack.offsets
        cls = pack.cls
        subject = pack.subject
        reply = pack.reply
        new = object.__new__
        n = pack.size
        i = j = pack.next  # items before i are counted; items before j are taken
        try:
            while i < n:
                msgs_left, bytes_left = m.ack_budget()
                a = offsets[i]
                # The run: items i to stop - 1, the last one where an ack may fall due.
                stop = min(n, i + msgs_left, bisect_left(offsets, a + bytes_left, i + 1))
                for j in range(i + 1, stop + 1):
                    b = offsets[j]
                    msg = new(cls)
                    msg.data = payload[a:b]
                    msg.subject = subject
                    msg.reply = reply
                    a = b
                    result = handler(msg)
                    if result is not None and result is not True:
                        if inspect.isawaitable(result):
                            # Count the items before this one before anything arrives,
                            # and this one once its result is in; then a new run.
                            ack = m.on_delivered_many(j - 1 - i, offsets[j - 1] - offsets[i])
                            i = j - 1
                            if ack is not None:
                                attempt.send_ack(ack)
                            result = await result
                            if result is False:
                                return True
                            ack = m.on_delivered_many(1, b - offsets[i])
                            i = j
                            if ack is not None:
                                attempt.send_ack(ack)
                            break
                        if result is False:
                            return True
                else:
                    ack = m.on_delivered_many(stop - i, offsets[stop] - offsets[i])
                    i = stop
                    if ack is not None:
                        attempt.send_ack(ack)
            return False
        finally:
            pack.next = j
            if j - 1 > i:  # the handler raised or stopped the stream: count what it took
                m.on_delivered_many(j - 1 - i, offsets[j - 1] - offsets[i])
