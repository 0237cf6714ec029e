"""The flushing side of a writer: its flush thread and the one path from buffer to files.

A flush takes every buffered record from the writer (split by file, in acceptance order),
writes each file's records through the :class:`~natstream._writers._sink.FileSink`, and
closes the file of a finished hour (queuing it for maintenance). One flush runs at a time
(the I/O lock), so each file gets its records in order. Flushes run on the flush thread
(``natstream-writer-{filename}-flush``: every ``flush_interval`` seconds and when woken)
or on the caller's thread (``flush()``, ``close()``, and ``write()`` with a full buffer).

Guarantees kept here:

* When writing fails, the records not fully written go back to the front of the buffer
  (the sink has cut the file back to the last whole record), and the next flush writes
  them, each to its own hour's file: nothing is written twice. The error is raised from
  the flush; the final flush of ``close()`` leaves them in flight instead, for ``close()``
  to count as dropped.
* When ``fsync`` fails, the records were already handed to the OS: they are not written
  again, and whether they reached the disk is unknown (the error says so).
* Errors are never swallowed: a failure is raised from the flush that hit it (the flush
  thread's are stored by the writer, see ``_background_tick``), and a failure to point
  the link, which does not stop the data, is stored and raised from the next call.
* With a checkpoint (``_commits``), a file is listed in it before its first byte is
  written, and a commit is a flush and the checkpoint's save under one hold of the I/O
  lock: the sizes it records are those of exactly the records that flush took.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

from .._errors import WriterError
from ._commits import Checkpoint
from ._failures import Failures
from ._ledger import Ledger, Segment
from ._maintenance import Maintenance
from ._options import Options
from ._rotation import CurrentHour
from ._sink import FileSink, Link

__all__ = ["Flusher", "Host"]


class Host(Protocol):
    """What the flusher uses of its writer (an ``HourlyFileWriter``).

    The ``_locked`` methods are called with the writer's lock held, the others without.
    """

    def _take_locked(self) -> list[Segment]: ...
    def _put_back_locked(self, rest: list[Segment]) -> None: ...
    def _background_tick(self) -> bool: ...
    def _store_error(self, error: BaseException) -> None: ...
    def _notify(self) -> None: ...


class Flusher:
    """One writer's flush thread, I/O lock and flush path.

    The flush thread holds the writer only weakly (strongly only during a round), so a
    writer that was never closed can be collected. Every other method takes the writer
    as an argument and keeps no reference to it.

    Attributes:
        bytes_written: record bytes the operating system accepted into files, under the
            writer's lock.
        flushes: flushes that wrote data, under the writer's lock.
    """

    __slots__ = (
        "_checkpoint",
        "_failures",
        "_hour",
        "_io_lock",
        "_ledger",
        "_link",
        "_lock",
        "_maintenance",
        "_sink",
        "_thread",
        "_wake",
        "bytes_written",
        "flushes",
    )

    def __init__(
        self,
        writer: Host,
        options: Options,
        *,
        lock: threading.Lock,
        ledger: Ledger,
        hour: CurrentHour,
        sink: FileSink,
        maintenance: Maintenance,
        failures: Failures,
        checkpoint: Checkpoint | None,
    ) -> None:
        self._lock = lock
        self._io_lock = threading.Lock()  # one flush at a time, so files get records in order
        self._ledger = ledger
        self._hour = hour  # read under the lock
        self._sink = sink
        self._link = None if options.link is None else Link(options.link)
        self._maintenance = maintenance
        self._failures = failures
        self._checkpoint = checkpoint
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(writer), self._wake, options.flush_interval),
            name=options.thread_name("flush"),
            daemon=True,
        )
        self.bytes_written = 0
        self.flushes = 0

    def start(self) -> None:
        """Start the flush thread."""
        self._thread.start()

    def wake(self) -> None:
        """Have the flush thread do a round now (it does one every ``flush_interval``)."""
        self._wake.set()

    def stop(self) -> None:
        """Wake the flush thread and wait for it to end; the writer must be closing (so
        that its ``_background_tick`` returns False)."""
        self._wake.set()
        self._thread.join()

    def flush(self, writer: Host) -> None:
        """Write out everything buffered, on this thread; close the file of a finished
        hour. Waits for a flush running on another thread.

        Raises:
            WriterError: writing, fsync or closing failed (see the module doc).
        """
        with self._io_lock:
            self._drain_locked(writer, keep=True)

    def commit(self, writer: Host, token: str) -> None:
        """:meth:`flush`, then record ``token`` in the checkpoint with the files' sizes,
        with no flush in between (the writer must have a checkpoint).

        Raises:
            WriterError: the flush or the checkpoint's save failed; the previous commit
                stands.
        """
        checkpoint = self._checkpoint
        assert checkpoint is not None
        with self._io_lock:
            self._drain_locked(writer, keep=True)
            sink = self._sink
            try:
                released = checkpoint.commit(token, sink.path if sink.fd is not None else None)
            except OSError as exc:
                raise self._failures.error(exc, "save the checkpoint", checkpoint.path) from exc
        if released:
            self._maintenance.request()  # files finished before this commit are whole now

    def flush_unless_busy(self, writer: Host) -> None:
        """:meth:`flush`, unless a flush is running on another thread: that one takes
        what this would (the flush thread skips a round rather than queue behind)."""
        if self._io_lock.acquire(blocking=False):
            try:
                self._drain_locked(writer, keep=True)
            finally:
                self._io_lock.release()

    def finish(self, writer: Host) -> list[BaseException]:
        """The final flush of ``close()``: write what is buffered, close the file.

        Records that cannot be written stay in flight (``close()`` counts them as
        dropped). Returns the errors met, as ``WriterError`` s; raises none.
        """
        problems: list[BaseException] = []
        with self._io_lock:  # a flush() running on another thread finishes first
            try:
                self._drain_locked(writer, keep=False)
            except WriterError as exc:
                problems.append(exc)
            if self._sink.fd is not None:
                path = self._sink.path
                try:
                    self._sink.close()
                except OSError as exc:
                    problems.append(self._failures.error(exc, "close the file", path))
        return problems

    def _drain_locked(self, writer: Host, *, keep: bool) -> None:
        with self._lock:
            segments = writer._take_locked()
        if segments:
            self._write_segments(writer, segments, keep=keep)
        sink = self._sink
        with self._lock:
            finished = sink.fd is not None and sink.path != self._hour.path
        if finished:
            path = sink.path
            try:
                self._close_finished()
            except OSError as exc:
                raise self._failures.error(exc, "close the finished file", path) from exc

    def _write_segments(self, writer: Host, segments: list[Segment], *, keep: bool) -> None:
        """Write taken records; on failure put them back (``keep``) or leave them in
        flight (for ``close()`` to count as dropped)."""
        written = 0
        for index, segment in enumerate(segments):
            path = segment.path
            failure: OSError | None
            try:
                self._file_for(writer, path)
            except OSError as exc:
                committed, failure, doing = 0, exc, "open the file"
            else:
                committed, size, failure = self._sink.append(segment)
                doing = f"write {size} bytes"
            written += committed
            if failure is not None:
                rest = [s for s in segments[index:] if s.chunks]
                with self._lock:
                    if keep:
                        writer._put_back_locked(rest)
                    else:
                        self._ledger.inflight = rest
                    self.bytes_written += written
                error = self._failures.error(failure, doing, path)
                if keep:
                    error.add_note(
                        "The records not fully written stay buffered; the next flush retries them."
                    )
                raise error from failure
        durable_error: OSError | None = None
        try:
            self._sink.sync()
        except OSError as exc:
            durable_error = exc
        with self._lock:
            self._ledger.inflight = []
            self.bytes_written += written
            self.flushes += 1
        writer._notify()
        if durable_error is not None:
            error = self._failures.error(durable_error, "fsync", self._sink.path)
            error.add_note(
                "The records were handed to the OS and are not written again; "
                "whether they reached the disk is unknown."
            )
            raise error from durable_error

    def _file_for(self, writer: Host, path: str) -> None:
        """Have ``path`` open in the sink; a newly opened current file gets the link."""
        sink = self._sink
        if sink.fd is not None:
            if sink.path == path:
                return
            self._close_finished()
        fd = sink.open(path)
        if self._checkpoint is not None:
            try:
                self._checkpoint.note(path, os.fstat(fd).st_size)
            except OSError:
                sink.close()  # unlisted: it must not stay open for the next flush
                raise
        if self._link is not None:
            with self._lock:
                current = path == self._hour.path
            if current:
                try:
                    self._link.point_at(path)
                except OSError as exc:
                    doing = "point the link at the current file"
                    writer._store_error(self._failures.error(exc, doing, self._link.path))

    def _close_finished(self) -> None:
        """Close the sink's file and queue it for maintenance (compression, retention)."""
        self._sink.close()
        self._maintenance.request()


def _run(ref: weakref.ref[Host], wake: threading.Event, interval: float) -> None:
    # Holds the writer only during a round, so an unclosed writer can be collected.
    while True:
        wake.wait(interval)
        wake.clear()
        writer = ref()
        if writer is None or not writer._background_tick():
            return
        del writer
