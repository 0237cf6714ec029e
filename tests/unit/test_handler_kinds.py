"""A handler of the wrong kind is refused when it is registered, not at each request;
every shape of callable that can serve is accepted."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from natstream import Config, StreamRequest, Subscriber, SubscriberClosedError
from natstream._responder import Index
from natstream._responder._handlers import written_kind


def one_arg(request: StreamRequest) -> tuple[bytes, bool, None]:
    return b"x", False, None


def index_handler(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    return b"x", False, None


def with_extra(extra: str, request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    return extra.encode(), False, None


async def async_index(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    return b"x", False, None


async def agen(request: StreamRequest) -> AsyncIterator[bytes]:
    yield b"x"


async def agen_extra(extra: str, request: StreamRequest) -> AsyncIterator[bytes]:
    yield extra.encode()


async def agen_two(request: StreamRequest, index: int) -> AsyncIterator[bytes]:
    yield b"x"


async def coroutine(request: StreamRequest) -> bytes:
    return b"x"


def sync_gen(request: StreamRequest) -> Any:
    yield b"x"


class CallableIndex:
    def __call__(self, request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        return b"x", False, None


class AsyncCallableIndex:
    async def __call__(self, request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        return b"x", False, None


class CallableGen:
    async def __call__(self, request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"x"

    async def method(self, request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"x"


@pytest.fixture
def sub() -> Subscriber:
    """Never opened: a handler that passes the check reaches "not open yet"."""
    return Subscriber(Config(["nats://127.0.0.1:4222"]))


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (one_arg, "test_handler_kinds.one_arg cannot be called as handler(request, index)"),
        (agen, "test_handler_kinds.agen is an async generator function: serve it with stream_"),
        (sync_gen, "sync_gen is a generator function"),
        (b"x", "handler(request, index) -> (data, more, err), sync or async def; got a bytes"),
        (functools.partial(with_extra, "a", "b"), "functools.partial(test_handler_kinds.with_"),
        (CallableGen(), "CallableGen object is an async generator function"),
    ],
)
async def test_stream_subscribe_handler_refuses_what_is_no_index_handler(
    sub: Subscriber, handler: Any, words: str
) -> None:
    with pytest.raises(TypeError) as info:
        await sub.stream_subscribe_handler("a.b", handler)
    assert words in str(info.value)
    assert "stream_subscribe_handler" in str(info.value)


async def test_batch_handlers_are_checked_the_same_way(sub: Subscriber) -> None:
    with pytest.raises(TypeError, match=r"batch_stream_subscribe_handler.*-> \(items, more, err"):
        await sub.batch_stream_subscribe_handler("a.b", agen)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (coroutine, "test_handler_kinds.coroutine is a coroutine function (async def without"),
        (sync_gen, "sync_gen is a generator function (def with yield, not async)"),
        (index_handler, "cannot be called as handler(request)"),
        (agen_two, "agen_two cannot be called as handler(request)"),
        (None, "stream_handler needs an async generator function"),
    ],
)
async def test_stream_handler_refuses_what_is_no_async_generator(
    sub: Subscriber, fn: Any, words: str
) -> None:
    with pytest.raises(TypeError) as info:
        await sub.stream_handler("a.b", fn)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "handler",
    [
        index_handler,
        async_index,
        lambda r, i: (b"x", False, None),
        functools.partial(with_extra, "a"),
        CallableIndex(),
        AsyncCallableIndex(),
        CallableIndex().__call__,
        print,  # no signature to read: accepted, the call will tell
    ],
)
async def test_every_shape_of_index_handler_is_accepted(sub: Subscriber, handler: Any) -> None:
    with pytest.raises(SubscriberClosedError, match="not open yet"):
        await sub.stream_subscribe_handler("a.b", handler)
    with pytest.raises(SubscriberClosedError, match="not open yet"):
        await sub.batch_stream_subscribe_handler("a.b", handler)


@pytest.mark.parametrize(
    "fn",
    [
        agen,
        functools.partial(agen_extra, "a"),
        CallableGen(),
        CallableGen().method,
        lambda r: agen(r),
    ],
)
async def test_every_shape_of_generator_handler_is_accepted(sub: Subscriber, fn: Any) -> None:
    with pytest.raises(SubscriberClosedError, match="not open yet"):
        await sub.stream_handler("a.b", fn)


def test_an_async_callable_object_is_not_called_in_the_dispatch() -> None:
    """Its calls are awaited in the stream's task, like an ``async def``'s."""
    from natstream._responder import index_kind

    kind = index_kind(AsyncCallableIndex(), pack=False)
    assert isinstance(kind, Index)
    assert not kind.sync
    assert index_kind(functools.partial(async_index), pack=True).sync is False


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_still_propagate_from_the_first_call(
    stop: type[BaseException],
) -> None:
    """They stop the process: the dispatch does not keep them for the stream's task."""

    def stopping(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        raise stop

    with pytest.raises(stop):
        Index(stopping, sync=True).start(None, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the kind a handler is written as


async def _generator(request: StreamRequest) -> AsyncIterator[bytes]:
    yield b""


def _index(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    return None, False, None


async def _batch(request: StreamRequest, batch: int) -> tuple[list[bytes], bool, None]:
    return [], False, None


def _batch_by_name(request: StreamRequest, batch: int) -> tuple[list[bytes], bool, Unknown]:  # type: ignore[name-defined]  # noqa: F821
    return [], False, None


class _Methods:
    async def rows(self, request: StreamRequest) -> AsyncIterator[bytes]:
        yield b""

    def pages(self, request: StreamRequest, batch: int) -> tuple[list[bytes], bool, None]:
        return [], False, None


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (_generator, "generator"),
        (lambda request: _generator(request), "generator"),  # returns an async iterator
        (_index, "index"),
        (lambda request, index: (None, False, None), "index"),
        (_batch, "batch"),
        (_batch_by_name, "batch"),  # an annotation that does not resolve
        (functools.partial(_batch), "batch"),
        (_Methods().rows, "generator"),
        (_Methods().pages, "batch"),
        (print, "index"),  # no signature to read: registration will tell
    ],
)
def test_the_kind_a_handler_is_written_as(handler: object, kind: str) -> None:
    assert written_kind(handler) == kind
