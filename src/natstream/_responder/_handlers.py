"""What a handler of each kind must be, checked when it is registered, and what it
must return, checked when it returns.

Accepted as a handler: a function or method, a ``functools.partial`` of one, a lambda,
or an object with ``__call__``; its kind (sync, ``async def``, async generator) is
read from the function underneath, and it must accept the arguments the kind
passes. What cannot be told before a call (a plain function that returns an async
iterator, a callable object without a signature) is accepted, and its result is
checked at each call instead.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

__all__ = [
    "BATCH_SHAPE",
    "INDEX_SHAPE",
    "HandlerResultError",
    "check_generator_handler",
    "check_index_handler",
    "handler_name",
    "is_async_function",
    "written_kind",
    "wrong_result",
]

INDEX_SHAPE = "(data, more, err)"
BATCH_SHAPE = "(items, more, err)"


class HandlerResultError(TypeError):
    """A handler returned something of the wrong shape (not what its kind returns)."""


def handler_name(handler: object) -> str:
    """A short name for ``handler`` in messages: ``module.qualname``, through partials."""
    if isinstance(handler, functools.partial):
        return f"functools.partial({handler_name(handler.func)})"
    qualname = getattr(handler, "__qualname__", None)
    if isinstance(qualname, str):
        name, module = qualname, getattr(handler, "__module__", None)
    else:  # a callable object: its class
        name, module = f"{type(handler).__qualname__} object", type(handler).__module__
    return f"{module}.{name}" if isinstance(module, str) and module != "builtins" else name


def _function(handler: object) -> object:
    """The function whose code runs when ``handler`` is called (what tells its kind)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.isfunction(handler) or inspect.ismethod(handler) or inspect.isbuiltin(handler):
        return handler
    if isinstance(handler, type):
        return handler
    return inspect.getattr_static(handler, "__call__", handler)  # a callable object's


def is_async_function(handler: object) -> bool:
    """Whether calling ``handler`` returns a coroutine (``async def``, also behind a
    partial or as a callable object's ``__call__``)."""
    return inspect.iscoroutinefunction(_function(handler))


def _check_arguments(handler: Callable[..., Any], api: str, args: str, count: int) -> None:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call will tell
        return
    try:
        signature.bind(*([None] * count))
    except TypeError as exc:
        raise TypeError(
            f"{api}: {handler_name(handler)} cannot be called as handler({args}): {exc}"
        ) from None


def check_index_handler(handler: object, api: str, shape: str) -> None:
    """Raise TypeError unless ``handler`` can be an index (or batch) handler:
    ``handler(request, index) -> shape``, sync or ``async def``.

    Args:
        api: the registering method's name, for the message.
        shape: what the handler returns, e.g. ``"(data, more, err)"``.
    """
    expected = f"{api} needs a function handler(request, index) -> {shape}, sync or async def"
    if not callable(handler):
        raise TypeError(f"{expected}; got a {type(handler).__name__} object")
    function = _function(handler)
    if inspect.isasyncgenfunction(function):
        raise TypeError(
            f"{handler_name(handler)} is an async generator function: serve it with "
            f"stream_handler; {expected}"
        )
    if inspect.isgeneratorfunction(function):
        raise TypeError(f"{handler_name(handler)} is a generator function; {expected}")
    _check_arguments(handler, api, "request, index", 2)


def check_generator_handler(fn: object, api: str) -> None:
    """Raise TypeError unless ``fn`` can be a generator handler: an async generator
    function ``fn(request)`` (or a plain callable returning an async iterator, whose
    result is then checked at each call)."""
    expected = f"{api} needs an async generator function: async def fn(request): yield b'...'"
    if not callable(fn):
        raise TypeError(f"{expected}; got a {type(fn).__name__} object")
    function = _function(fn)
    if inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{handler_name(fn)} is a coroutine function (async def without yield); {expected}"
        )
    if inspect.isgeneratorfunction(function):
        raise TypeError(
            f"{handler_name(fn)} is a generator function (def with yield, not async); {expected}"
        )
    _check_arguments(fn, api, "request", 1)


def written_kind(handler: object) -> str:
    """The kind ``handler`` is written as, for code that is given a handler without
    its kind (``natstream serve --handler``): ``"generator"`` for an async generator
    function, or a callable of the request alone; ``"batch"`` for a callable of
    (request, batch) whose return annotation is a tuple starting with a list (the
    items); ``"index"`` otherwise. Registering it checks it as usual."""
    function = _function(handler)
    if inspect.isasyncgenfunction(function):
        return "generator"
    try:
        signature = inspect.signature(handler)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "index"
    try:
        signature.bind(None, None)
    except TypeError:
        return "generator"
    return "batch" if _returns_items(function) else "index"


def _returns_items(function: object) -> bool:
    """Whether ``function`` is annotated to return ``tuple[list[...], ...]``."""
    try:
        hint = typing.get_type_hints(function).get("return")
    except Exception:  # an annotation that does not resolve: read its text
        hint = getattr(function, "__annotations__", {}).get("return")
    if isinstance(hint, str):
        return hint.replace(" ", "").lower().startswith("tuple[list")
    if typing.get_origin(hint) is not tuple:
        return False
    first = typing.get_args(hint)[:1]
    return bool(first) and (first[0] is list or typing.get_origin(first[0]) is list)


def _described(value: object) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} items"
    return type(value).__name__


def wrong_result(kind: str, handler: object, value: object, expected: str) -> HandlerResultError:
    """The error for a ``kind`` handler that returned ``value`` instead of ``expected``.
    A coroutine returned where none is awaited is closed (no "never awaited" warning)."""
    if inspect.iscoroutine(value):
        value.close()
    return HandlerResultError(
        f"{kind} handler {handler_name(handler)} returned {_described(value)}; expected {expected}"
    )
