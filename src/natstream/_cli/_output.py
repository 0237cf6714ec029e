"""Where ``natstream request`` writes: replies to stdout, a progress line to stderr.

:class:`Output` writes from a thread of its own, so that a slow reader (a pipe, a
terminal scrolled back) never blocks the event loop, whose heartbeats keep the
stream alive; instead the consumer waits (:attr:`Output.full`, :meth:`Output.room`)
and the responder is paced by flow control. Memory is bounded by ``high_water``.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

__all__ = ["Output", "Progress"]

_CHUNK = 64 << 10  # bytes gathered before they go to the writing thread
_HIGH_WATER = 1 << 20  # bytes waiting to be written beyond which the consumer waits
_PROGRESS_INTERVAL = 0.5  # seconds between two progress lines
_CLEAR_TO_END = "\x1b[K"  # a terminal's "erase to the end of the line"


class Output:
    """Bytes to the file descriptor ``fd``, in order, written by a thread.

    :meth:`write` only appends to a buffer; what it holds goes to the thread once
    it reaches 64 KiB, and anyway before the event loop's next turn (so that a
    terminal shows each reply as it comes). When more than ``high_water`` bytes
    wait for the thread, :attr:`full` is True: await :meth:`room` before the next
    write. A failed write (``BrokenPipeError`` when the reader went away, a full
    disk) is raised by :meth:`room` and :meth:`close`; later writes are dropped.
    """

    def __init__(self, fd: int, *, high_water: int = _HIGH_WATER) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._high = high_water
        self._buf = bytearray()
        self._scheduled = False
        self._chunks: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self.waiting = 0  # bytes handed to the thread, not written yet
        self.error: OSError | None = None
        # Whether the writer is behind by more than ``high_water`` (or failed): read
        # once per reply, so an attribute kept up to date under the lock.
        self.full = False
        self._room: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="natstream-output", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; it is written soon (see the class docstring)."""
        buf = self._buf
        buf += data
        if len(buf) >= _CHUNK:
            self._hand_over()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._hand_over)

    async def room(self) -> None:
        """Wait until the writer is at most half ``high_water`` behind.

        Raises:
            OSError: a write failed.
        """
        while self.waiting > self._high // 2 and self.error is None:
            with self._ready:
                if self.waiting > self._high // 2 and self.error is None:
                    self._room = self._loop.create_future()
            if self._room is not None:
                await self._room
                self._room = None
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """Write out everything and stop the thread. Cancellation leaves the thread
        writing what it holds (it ends by itself).

        Raises:
            OSError: a write failed.
        """
        self._hand_over()
        with self._ready:
            self._closing = True
            self._ready.notify()
        await asyncio.shield(self._done)
        if self.error is not None:
            raise self.error

    def _hand_over(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        chunk = bytes(self._buf)
        self._buf.clear()
        with self._ready:
            if self.error is None:
                self._chunks.append(chunk)
                self.waiting += len(chunk)
                self.full = self.waiting > self._high
                self._ready.notify()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._chunks and not self._closing:
                        self._ready.wait()
                    if not self._chunks:
                        return
                    chunk = self._chunks.popleft()
                try:
                    _write_all(self._fd, chunk)
                except OSError as exc:
                    with self._ready:
                        self.error = exc
                        self.full = True
                        self._chunks.clear()
                        self._wake()
                    return
                with self._ready:
                    self.waiting -= len(chunk)
                    self.full = self.waiting > self._high
                    if self.waiting <= self._high // 2:
                        self._wake()
        finally:
            self._loop.call_soon_threadsafe(_set_result, self._done)

    def _wake(self) -> None:
        """Release a consumer awaiting :meth:`room` (called holding the lock)."""
        if self._room is not None:
            self._loop.call_soon_threadsafe(_set_result, self._room)


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting when it is non-blocking and full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


class Progress:
    """A line on a terminal, rewritten in place: replies, megabytes and the rate over
    the last interval; :meth:`end` leaves a summary in its place."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._start = self._then = time.monotonic()
        self._before = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Show ``counts()`` (replies, bytes) every half second until :meth:`end`."""
        self._task = asyncio.create_task(self._show(counts), name="natstream-request-progress")

    async def _show(self, counts: Callable[[], tuple[int, int]]) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            replies, size = counts()
            now = time.monotonic()
            rate = (replies - self._before) / (now - self._then)
            self._before, self._then = replies, now
            self._line(f"{replies:,} replies  {size / 1e6:,.1f} MB  {rate:,.0f} replies/s")

    def _line(self, text: str) -> None:
        self._stream.write(f"\r{text}{_CLEAR_TO_END}")
        self._stream.flush()

    async def end(self, replies: int, size: int) -> None:
        """Stop updating; leave the totals and the mean rate on the line."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        elapsed = time.monotonic() - self._start
        rate = replies / elapsed if elapsed > 0 else 0.0
        self._line(
            f"{replies:,} replies  {size / 1e6:,.1f} MB in {elapsed:,.1f} s  {rate:,.0f} replies/s"
        )
        self._stream.write("\n")
        self._stream.flush()
