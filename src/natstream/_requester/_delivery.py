"""Every path that hands a reply to the caller's handler (``run_handler``).

* queued replies, taken by the caller's task (:func:`drain_sync`, and
  :func:`drain_pack` for the items of a packed message, counted in runs);
* direct calls: while the caller waits with nothing queued, a sync handler is called
  with each in-order plain data reply straight from the connection's read loop
  (:func:`call_direct`), with the caller's task made current and in its context;
  what such a call leaves undone (the handler raised, returned False or an
  awaitable) is held for the caller's task to finish (:func:`finish_held`);
* markers, and every reply of an async handler, through :meth:`Session.next`.

Whatever the path, calls are in order, one at a time, and the machine counts what
the handler accepted exactly as one ``on_delivered`` per reply would (the property
tests in ``tests/protocol/test_drain_pack.py`` hold the packed loop, and its C twin,
to that). With the C extension in use, direct calls are made by the attempt's C
receive path (see :mod:`._attempt`) and packed items handed out by ``drain_pack``
in C; the Python code here is the reference and the fallback.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from .._ext import cstream
from .._protocol import Reply
from .._transport import CALL_AS_AVAILABLE, call_as

if TYPE_CHECKING:
    from ._attempt import Attempt
    from ._session import Session

__all__ = ["Handler", "Pack", "call_direct", "drain_pack", "drain_sync", "run_handler"]

Handler = Callable[[Msg], bool | Awaitable[bool | None] | None]
_Call = Callable[[Msg], Any]  # a sync handler, maybe bound to a context

_new = object.__new__


class Pack:
    """The items of one packed message not taken yet: one buffer entry. Item ``k`` is
    ``payload[offsets[k]:offsets[k + 1]]``, sliced when taken, and becomes a message
    with the packed message's subject and reply and no headers."""

    __slots__ = ("cls", "next", "offsets", "payload", "reply", "size", "subject")

    def __init__(self, cls: type[Msg], msg: Msg, offsets: list[int]) -> None:
        self.cls = cls  # the link's item_type
        self.payload = msg.data
        self.subject = msg.subject
        self.reply = msg.reply
        self.offsets = offsets
        self.size = len(offsets) - 1  # items
        self.next = 0  # index of the next item to take

    def take(self) -> Msg:
        msg = _new(self.cls)
        i = self.next
        msg.data = self.payload[self.offsets[i] : self.offsets[i + 1]]
        msg.subject = self.subject
        msg.reply = self.reply
        self.next = i + 1
        return msg


# ---------------------------------------------------------------- the handler loop


async def run_handler(session: Session, handler: Handler, *, markers: bool = True) -> None:
    """Feed every reply of ``session`` (end and error markers too, with ``markers``)
    to ``handler`` until the end marker, a False result, or an error (raised).

    A sync handler takes queued replies in :func:`drain_sync`; while the queue is
    empty it is the attempt's direct handler (:meth:`Attempt.wait_direct`).
    """
    is_coro = inspect.iscoroutinefunction(handler)
    call, direct = in_caller_context(handler) if not is_coro else (handler, handler)
    while True:
        attempt = session.attempt
        if attempt is not None and not is_coro:
            if attempt.held is not None:
                if await finish_held(attempt):
                    return
                continue
            if attempt.buffer:
                if await drain_sync(attempt, call):
                    return
                continue
            if not attempt.machine.terminal:
                if CALL_AS_AVAILABLE:
                    await attempt.wait_direct(direct)
                else:
                    await attempt.wait()
                continue
        try:
            kind, msg = await session.next()
        except StopAsyncIteration:
            return
        if kind is not Reply.DELIVER and not markers:
            result: Any = None
        elif is_coro:
            result = await handler(msg)  # type: ignore[misc]
        else:
            result = call(msg)
            if inspect.isawaitable(result):
                result = await result
        if kind is Reply.DELIVER:
            if result is False:
                return
            attempt = session.attempt
            assert attempt is not None
            attempt.delivered(msg)
        elif kind is Reply.END:
            return
        else:
            await session.retry_or_raise()


def in_caller_context(handler: Handler) -> tuple[_Call, _Call]:
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


# ---------------------------------------------------------------- direct calls


def call_direct(attempt: Attempt, msg: Msg, now: float) -> None:
    """Hand an in-order data reply that arrived at ``now`` to the attempt's direct
    handler, as :func:`drain_sync` would, with the caller's task as the current
    task. What the consumer task must finish (the handler raised, returned False or
    an awaitable) is held for it, and later replies are queued behind it."""
    loop = attempt.loop
    try:
        result = call_as(loop, attempt.direct_task, attempt.direct, msg)  # type: ignore[arg-type]
    except BaseException as exc:  # the consumer raises it, as if it had called
        _hold(attempt, msg, None, exc)
        return
    if result is not None and result is not True:
        _hold(attempt, msg, result, None)
        return
    m = attempt.machine
    ack = m.on_taken(len(msg.data))
    if ack is not None:
        attempt.send_ack(ack, now)
    elif m.ack_deferred:
        attempt.defer_ack_check()
    if m.request_timeout is not None and not m.heartbeating():
        m.consumer_back(loop.time())  # (the stall rule alone judges a heartbeating peer)
    attempt.rearm()


def _hold(attempt: Attempt, msg: Msg, result: object, exc: BaseException | None) -> None:
    attempt.direct = None
    attempt.held = (msg, result, exc)
    attempt.machine.consumer_busy()  # until the consumer has finished it
    attempt.wake()


if cstream is not None:
    cstream.configure("hold", _hold)


async def finish_held(attempt: Attempt) -> bool:
    """Finish what a direct call left (see :func:`call_direct`) as :func:`drain_sync`
    would; True when the handler stopped the stream."""
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


# ---------------------------------------------------------------- queued replies


async def drain_sync(attempt: Attempt, handler: _Call) -> bool:
    """Hand every queued data reply to a sync handler; True when it returned False.

    The hot path of a fast stream: no await per message unless an ack is due.
    """
    buf = attempt.buffer
    m = attempt.machine
    m.consumer_busy()
    on_delivered = m.on_delivered
    while buf:
        entry = buf[0]
        if type(entry) is Pack:
            if await drain_pack(attempt, entry, handler):
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


# What the C drain_pack returned (see _cstream_pack.c).
_PACK_DONE, _PACK_STOPPED, _PACK_OTHER = 0, 1, 2


async def drain_pack(attempt: Attempt, pack: Pack, handler: _Call) -> bool:
    """:func:`drain_sync` for the items of one packed message: the machine counts
    them in runs that end where an ack may fall due (see ``on_delivered_many``)."""
    if cstream is not None:
        m = attempt.machine
        while True:
            status, result = cstream.drain_pack(attempt, pack, handler)
            if status == _PACK_DONE:
                return False
            if status == _PACK_STOPPED:
                return True
            if status != _PACK_OTHER:
                break  # not a C attempt: the loop below
            # The items before this one are counted; it is taken, and counted below
            # unless its result (awaited when it must be) stops the stream.
            if inspect.isawaitable(result):
                result = await result
                if result is False:
                    return True
            j = pack.next
            ack = m.on_delivered_many(1, pack.offsets[j] - pack.offsets[j - 1])
            if ack is not None:
                attempt.send_ack(ack)
    return await _drain_pack(attempt, pack, handler)


async def _drain_pack(attempt: Attempt, pack: Pack, handler: _Call) -> bool:
    m = attempt.machine
    payload = pack.payload
    offsets = pack.offsets
    cls = pack.cls
    subject = pack.subject
    reply = pack.reply
    new = _new
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
