"""The handler kinds, behind one interface: ``await kind.run(request, sender)``.

Each kind calls its handler and hands the replies to the stream's :class:`Sender`;
``run`` returns True when the handler is exhausted (the stream may end) and False
when the sender said stop. Each kind's resume rule (where a retried stream starts,
from the requester's ``Resume``) is here, once:

* index handlers restart at the index after the last one delivered;
* batch handlers restart inside the batch, skipping the items delivered;
* generators are restarted from the beginning and natstream skips the items
  delivered, unless the handler read ``request.resume`` (it then skips them itself).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol

from .._protocol import Resume
from ._handlers import (
    BATCH_SHAPE,
    INDEX_SHAPE,
    HandlerResultError,
    handler_name,
    is_async_function,
    wrong_result,
)
from ._request import (
    PROPAGATE,
    BatchHandler,
    GeneratorHandler,
    IndexHandler,
    StreamRequest,
    handler_error,
)
from ._sender import PAUSE, QUEUED, Sender, default_position

__all__ = [
    "Batch",
    "FirstCall",
    "Generator",
    "Index",
    "Kind",
    "PackedIndex",
    "batch_positions",
    "batch_start",
    "index_kind",
    "index_start",
]

log = logging.getLogger("natstream")

# Packing of index handler results (pack=True): at most this many items held back,
# for at most this many seconds.
_PACK_HOLD = 1024
_PACK_LINGER = 0.005
# A generator skipping a resumed stream's items yields to the loop this often, so a
# huge (or forged) resume cannot freeze it.
_SKIP_YIELD_EVERY = 256
# What the C extension's fill_index returned (see _cstream_send.c).
_FILL_PAUSE, _FILL_DONE = 1, 2


class Kind(Protocol):
    """How a subscription's handler produces a stream's replies."""

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        """Call the handler and send what it produces until it is exhausted (True)
        or the sender says stop (False). A handler's error is raised (returned
        errors as :class:`HandlerError`); cancellation reaches an awaiting handler."""
        ...


def index_start(resume: Resume | None) -> int:
    """The index an index handler's stream (re)starts at."""
    return int(resume.pos.partition(".")[0]) + 1 if resume else 0


def batch_start(resume: Resume | None) -> tuple[int, int]:
    """(batch, items of it to skip) where a batch handler's stream (re)starts."""
    if resume is None:
        return 0, 0
    b, _, o = resume.pos.partition(".")
    if not o:  # position from an index handler: continue after that batch
        return int(b) + 1, 0
    return int(b), int(o) + 1


def batch_positions(batch: int) -> Callable[[int], str]:
    """Positions of a batch's items: ``"<batch>.<item>"``."""
    prefix = f"{batch}."
    return lambda i: prefix + str(i)


def index_kind(handler: IndexHandler, *, pack: bool) -> Index | PackedIndex:
    """The kind of an index handler: packed only when it is sync and ``pack`` is set
    (an async handler's results are never held back)."""
    sync = not is_async_function(handler)
    if sync and pack:
        return PackedIndex(handler)
    return Index(handler, sync=sync)


class Index:
    """An index handler, sync or async: ``handler(request, index) -> (data, more, err)``.

    A sync handler's first call can be made in the request's dispatch
    (:meth:`start`); the stream's task then continues from it.
    """

    __slots__ = ("handler", "sync")

    def __init__(self, handler: IndexHandler, *, sync: bool) -> None:
        self.handler = handler
        self.sync = sync  # not a coroutine function: it may be called in the dispatch

    def start(self, request: StreamRequest, resume: Resume | None) -> FirstCall:
        """Make the first call now; what it returned or raised is kept for the task."""
        index = index_start(resume)
        try:
            return FirstCall(self, index, self.handler(request, index), None)
        except PROPAGATE:
            raise
        except BaseException as exc:  # raised in the stream's task: see PROPAGATE
            return FirstCall(self, index, None, exc)

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        index = index_start(sender.machine.resume)
        return await self.run_from(request, sender, index, self.handler(request, index), False)

    async def run_from(
        self, request: StreamRequest, sender: Sender, index: int, result: Any, queued: bool
    ) -> bool:
        """:meth:`run` from a call already made: ``result`` is what the call at
        ``index`` returned (awaited here if awaitable), ``queued`` whether its reply
        was already sent. With the C extension, the calls after it are made by its
        ``fill_index`` while their replies take the fast path; a result it does not
        take comes back to this loop."""
        handler = self.handler
        send_now = sender.send_now
        emit = sender.emit
        fill = sender.fill if self.sync else None
        while True:
            if type(result) is not tuple:
                if inspect.isawaitable(result):
                    result = await result
                if not (isinstance(result, tuple) and len(result) == 3):
                    raise wrong_result("index", handler, result, INDEX_SHAPE)
            try:
                data, more, err = result
            except ValueError:  # a tuple of another length
                raise wrong_result("index", handler, result, INDEX_SHAPE) from None
            if err is not None:
                raise handler_error(err)
            if data is not None and not queued:
                sent = send_now(data, index)
                if sent != QUEUED:
                    if sent == PAUSE:
                        await sender.pause()
                    elif not await emit(data, index):
                        return False
            if not more:
                return True
            index += 1
            queued = False
            if fill is None:
                result = handler(request, index)
                continue
            status, index, result = fill(sender, handler, request, index)
            while status == _FILL_PAUSE:
                await sender.pause()
                if not result:  # the handler said no more
                    return True
                status, index, result = fill(sender, handler, request, index + 1)
            if status == _FILL_DONE:
                return True


class FirstCall:
    """A sync index handler's first call, made in the request's dispatch: the kind
    of the stream's task, which continues from it (raising what the call raised)."""

    __slots__ = ("error", "index", "kind", "queued", "result")

    def __init__(self, kind: Index, index: int, result: Any, error: BaseException | None) -> None:
        self.kind = kind
        self.index = index
        self.result = result
        self.error = error
        self.queued = False  # its reply is already sent

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        if self.error is not None:
            raise self.error
        return await self.kind.run_from(request, sender, self.index, self.result, self.queued)


class PackedIndex:
    """A sync index handler with ``pack=True``: for a requester that unpacks, results
    of consecutive calls are sent together, once ``_PACK_HOLD`` (or a message's
    worth of bytes) are held, ``_PACK_LINGER`` seconds after the first of them,
    before awaiting an async result, or at the end. Other requesters get one
    message per reply, as from :class:`Index`."""

    __slots__ = ("handler", "plain")

    def __init__(self, handler: IndexHandler) -> None:
        self.handler = handler
        self.plain = Index(handler, sync=True)

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        if not sender.machine.pack:
            return await self.plain.run(request, sender)
        handler = self.handler
        index = index_start(sender.machine.resume)
        loop = sender.loop
        limit = sender.limit
        held: list[bytes] = []
        held_bytes = 0
        first = index
        since = 0.0

        async def flush() -> bool:
            nonlocal held, held_bytes
            items, held, held_bytes = held, [], 0
            base = first
            return not items or await sender.send_items(items, 0, lambda i: base + i)

        while True:
            result: Any = handler(request, index)
            if type(result) is not tuple:
                if inspect.isawaitable(result):
                    if not await flush():
                        return False
                    result = await result
                if not (isinstance(result, tuple) and len(result) == 3):
                    raise wrong_result("index", handler, result, INDEX_SHAPE)
            try:
                data, more, err = result
            except ValueError:  # a tuple of another length
                raise wrong_result("index", handler, result, INDEX_SHAPE) from None
            if err is not None:
                if not await flush():
                    return False
                raise handler_error(err)
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
                    or held_bytes >= limit
                    or loop.time() - since >= _PACK_LINGER
                ) and not await flush():
                    return False
            if not more:
                return await flush()
            index += 1


class Batch:
    """A batch handler: ``handler(request, batch) -> (items, more, err)``; item ``j``
    of batch ``b`` is at position ``"b.j"``."""

    __slots__ = ("handler",)

    def __init__(self, handler: BatchHandler) -> None:
        self.handler = handler

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        handler = self.handler
        batch, skip = batch_start(sender.machine.resume)
        while True:
            result: Any = handler(request, batch)
            if inspect.isawaitable(result):
                result = await result
            if not (isinstance(result, tuple) and len(result) == 3):
                raise wrong_result("batch", handler, result, BATCH_SHAPE)
            data, more, err = result
            if type(data) is not list:
                if not isinstance(data, (list, tuple)):
                    raise HandlerResultError(
                        f"batch handler {handler_name(handler)} returned items as "
                        f"{type(data).__name__}; expected a list of bytes"
                    )
                data = list(data)
            if err is not None:
                raise handler_error(err)
            if not await sender.send_items(data, skip, batch_positions(batch)):
                return False
            skip = 0
            if not more:
                return True
            batch += 1


class Generator:
    """An async generator handler: ``fn(request)`` yields a reply, or a list of
    replies to send together. The generator is closed when the stream stops using
    it (an error closing it is logged, not raised)."""

    __slots__ = ("fn",)

    def __init__(self, fn: GeneratorHandler) -> None:
        self.fn = fn

    async def run(self, request: StreamRequest, sender: Sender) -> bool:
        gen = self.fn(request)
        if not hasattr(gen, "__anext__"):
            raise wrong_result("stream", self.fn, gen, "an async iterator (async def with yield)")
        resume = sender.machine.resume
        skip = resume.seq if resume is not None else 0
        emit = sender.emit
        try:
            async for item in gen:
                # A handler that read request.resume skips the delivered items itself.
                if skip and not request._resume_read:
                    if type(item) is list and skip < len(item):
                        item, skip = item[skip:], 0  # its rest is sent below
                    else:
                        skip -= len(item) if type(item) is list else 1
                        if skip % _SKIP_YIELD_EVERY == 0:
                            await asyncio.sleep(0)
                        continue
                if type(item) is list:
                    if not await sender.send_items(item, 0, default_position):
                        return False
                elif not await emit(item, None):  # type: ignore[arg-type]  # (bytes, or rejected)
                    return False
            return True
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing a stream handler failed", exc_info=True)
