"""Calling a function as if another task were running: the current-task swap.

The requester hands replies to a sync handler straight from the connection's read
loop; the handler must see the caller's task as ``asyncio.current_task()`` (it may
cancel it, or key state on it). asyncio has no public way to do this: Python 3.12+
has ``_swap_current_task``; 3.11 keeps a table ``_current_tasks``; older code paths
``_enter_task``/``_leave_task``. :data:`AVAILABLE` is False when none exists, and
the requester then does not call handlers from the read loop.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
from collections.abc import Callable
from typing import Any, TypeVar

from .._ext import cstream

__all__ = ["AVAILABLE", "call_as"]

T = TypeVar("T")
A = TypeVar("A")

_swap: Callable[..., Any] | None = getattr(asyncio.tasks, "_swap_current_task", None)
_table: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)
_enter: Callable[..., Any] | None = getattr(asyncio.tasks, "_enter_task", None)
_leave: Callable[..., Any] | None = getattr(asyncio.tasks, "_leave_task", None)

AVAILABLE = _swap is not None or _table is not None or (_enter is not None and _leave is not None)


def _call_swap(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], fn: Callable[[A], T], arg: A
) -> T:
    assert _swap is not None
    previous = _swap(loop, task)
    try:
        return fn(arg)
    finally:
        _swap(loop, previous)


def _call_table(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], fn: Callable[[A], T], arg: A
) -> T:
    table = _table
    assert table is not None
    previous = table.get(loop)
    table[loop] = task
    try:
        return fn(arg)
    finally:
        if previous is not None:
            table[loop] = previous
        else:
            table.pop(loop, None)


def _call_enter_leave(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], fn: Callable[[A], T], arg: A
) -> T:
    assert _enter is not None
    assert _leave is not None
    previous = asyncio.current_task(loop)
    if previous is not None:
        _leave(loop, previous)
    _enter(loop, task)
    try:
        return fn(arg)
    finally:
        _leave(loop, task)
        if previous is not None:
            _enter(loop, previous)


call_as: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any], Callable[[A], T], A], T]
"""``call_as(loop, task, fn, arg)``: ``fn(arg)`` with ``task`` as the loop's current
task, the previous one restored after (also when ``fn`` raises). Only meaningful
when :data:`AVAILABLE`."""
if _swap is not None:
    call_as = _call_swap
elif _table is not None:
    call_as = _call_table
else:
    call_as = _call_enter_leave

if cstream is not None:  # its direct calls swap the current task the same way
    cstream.configure("task_swap", _swap)
    cstream.configure("task_table", None if _swap is not None else _table)
