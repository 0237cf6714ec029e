"""Ctrl-C during ``natstream bench``: the run ends cleanly, with what it measured.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: this
process, and the processes the cases started (the responder, the requesters,
nats-server), which die of it. Inside :func:`interrupts_end_the_run`:

* the first SIGINT cancels the running case's event-loop task, so its clean-up runs
  (servers stopped, processes reaped), and :func:`run_loop` raises
  KeyboardInterrupt, whatever the case raised on its way out (its helper processes
  died of the same Ctrl-C); outside an event loop, and at a second SIGINT,
  KeyboardInterrupt is raised at once;
* from the first SIGINT on, what the interrupt leaves half made (sockets,
  transports, a coroutine never started) is released without a word: the run is
  ending, and those complaints (unraisable exceptions, warnings, nats-py's log of
  connections closed under it) would bury the results.

:func:`run_loop` also makes each event loop with SIGINT held back, so no loop is
left half made, and closes a coroutine it did not get to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

__all__ = ["interrupted", "interrupts_end_the_run", "run_loop"]

T = TypeVar("T")


class _Run:
    """The state of the run in this process (the main thread's)."""

    interrupted = False
    main: asyncio.Task[Any] | None = None  # the task run_loop runs now


_run = _Run()


def interrupted() -> bool:
    """Whether Ctrl-C came during :func:`interrupts_end_the_run`."""
    return _run.interrupted


@contextlib.contextmanager
def interrupts_end_the_run() -> Iterator[None]:
    """Within the block, Ctrl-C ends the run as this module's docstring says (in the
    main thread; elsewhere the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    first = not _run.interrupted
    _run.interrupted = True
    _silence()
    task = _run.main
    if first and task is not None and not task.done():
        task.get_loop().call_soon_threadsafe(task.cancel)
        return
    raise KeyboardInterrupt


def _silence() -> None:
    """From now until the process exits, drop unraisable exceptions, warnings and log
    records (nats-py logs each connection that a dying helper process closed)."""
    sys.unraisablehook = lambda unraisable: None
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def run_loop(coro: Coroutine[Any, Any, T], uvloop: bool = False) -> T:
    """Run ``coro`` on a fresh event loop: asyncio's (the policy's), or uvloop's with
    ``uvloop``; closed afterwards.

    Raises:
        KeyboardInterrupt: Ctrl-C came (see the module's docstring); ``coro`` was
            cancelled, or closed if it had not started.
    """
    factory = None
    if uvloop:
        import uvloop as uv

        factory = uv.new_event_loop
    runner = asyncio.Runner(loop_factory=factory)
    try:
        with _sigint_deferred():
            runner.get_loop()
        result = runner.run(_as_main(coro))
    except BaseException:
        if _run.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        runner.close()
        coro.close()  # a no-op once it ran
    if _run.interrupted:
        raise KeyboardInterrupt
    return result


async def _as_main(coro: Coroutine[Any, Any, T]) -> T:
    """``coro``, as the task a Ctrl-C cancels."""
    _run.main = asyncio.current_task()
    try:
        return await coro
    finally:
        _run.main = None


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """SIGINT arriving inside the block is delivered when it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
