"""Maintenance of finished hour files: compression, retention, pruning of directories.

A writer with ``compress`` or ``retention`` set has one maintenance thread
(``natstream-writer-{filename}-maintenance``), run by :class:`Maintenance`: it does a
round at start (files left by earlier runs) and one each time the writer finishes an
hour's file, and ends when the writer's ``close()`` stops it (or when the writer is
collected unclosed). Each kind of work is a small :class:`MaintenanceTask` (as in
psycopg_pool) holding only a weak reference to its writer.

Guarantees kept here:

* Only files whose path relative to the base directory matches the writer's pattern are
  touched, and never one in use: the current hour's, the open one, or one that buffered
  records go to. The check is made under the writer's lock, under which the flush
  thread marks a path in use before it opens it.
* Compression never loses a record: the compressed copy goes to a temporary file, which
  replaces nothing until it is complete, and the plain file is removed only after that
  and only if it was not written to meanwhile (else the next round tries again). An hour
  reopened after it was compressed (the clock stepped back) is appended as another gzip
  member / zstd frame. The compressed file keeps the plain file's mtime (for retention).
* Errors are never swallowed: a failure is counted and stored in the writer, which raises
  it once from the next ``write()``, ``flush()`` or ``close()``; the round goes on with
  the other files, so one unreadable file does not stop compression or retention.
* A compression in progress when the thread is stopped is abandoned: its temporary file
  is removed and the plain file stays, for the next writer.
"""

from __future__ import annotations

import functools
import glob
import gzip
import os
import re
import stat
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import tzinfo
from typing import IO, Any, Final, Protocol

from ._failures import Failures
from ._options import Compression, Options
from ._rotation import COMPRESSED_SUFFIXES, Retention
from ._sink import fsync_dir

__all__ = ["Compress", "Host", "Maintenance", "MaintenanceTask", "Retain"]

_COPY_CHUNK: Final = 1024 * 1024
_GZIP_LEVEL: Final = 6
_ZSTD_LEVEL: Final = 3


class Host(Protocol):
    """What the tasks use of their writer (an ``HourlyFileWriter``).

    ``_in_use_locked`` is called with the writer's lock held, the others without.
    """

    def _in_use_locked(self) -> set[str]: ...
    def _now(self) -> tuple[float, tzinfo]: ...
    def _store_error(self, error: BaseException) -> None: ...
    def _notify(self) -> None: ...


class Signal:
    """Wakes the maintenance thread; stop wins over a pending request."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requested = False
        self.stopped = False

    def request(self) -> None:
        with self._cond:
            self._requested = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify()

    def wait(self) -> bool:
        """Block until work is requested (True) or stop is asked (False)."""
        with self._cond:
            while not (self._requested or self.stopped):
                self._cond.wait()
            self._requested = False
            return not self.stopped


class Maintenance:
    """One writer's maintenance thread and the tasks it runs, in order, each round:
    compression, then retention.

    Without ``compress`` and ``retention`` there is no thread and requests are ignored.
    """

    __slots__ = ("_compress", "_retain", "_signal", "_thread")

    def __init__(
        self, writer: Host, options: Options, *, lock: threading.Lock, failures: Failures
    ) -> None:
        self._compress: Compress | None = None
        self._retain: Retain | None = None
        if options.compress is not None:
            self._compress = Compress(writer, options, lock, failures, options.compress)
        if options.retention is not None:
            self._retain = Retain(writer, options, lock, failures, options.retention)
        tasks = tuple(task for task in (self._compress, self._retain) if task is not None)
        self._signal = Signal()
        self._thread: threading.Thread | None = None
        if tasks:
            self._thread = threading.Thread(
                target=_run,
                args=(self._signal, tasks),
                name=options.thread_name("maintenance"),
                daemon=True,
            )

    @property
    def files_compressed(self) -> int:
        """Finished files compressed, under the writer's lock."""
        return 0 if self._compress is None else self._compress.done

    @property
    def files_removed(self) -> int:
        """Finished files removed by retention, under the writer's lock."""
        return 0 if self._retain is None else self._retain.done

    def start(self) -> None:
        """Start the thread with a first round (for files left by earlier runs)."""
        if self._thread is not None:
            self._thread.start()
            self._signal.request()

    def request(self) -> None:
        """Ask for a round (a file was finished); returns at once."""
        self._signal.request()

    def stop(self) -> None:
        """Ask the thread to end: a compression in progress is abandoned; the rest of the
        round is skipped. Returns at once; :meth:`join` waits."""
        self._signal.stop()

    def join(self) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        if self._thread is not None:
            self._thread.join()


def _run(signal: Signal, tasks: tuple[MaintenanceTask, ...]) -> None:
    while signal.wait():
        for task in tasks:
            if signal.stopped:
                break
            if not task.run(signal):
                return  # the writer was collected


class MaintenanceTask(ABC):
    """One kind of work on a writer's finished files, run on its maintenance thread.

    Holds its writer only weakly (and strongly only while it runs), so a writer that was
    never closed can be collected; its ``__del__`` then stops the thread.

    Attributes:
        done: files this task compressed or removed, under the writer's lock.
    """

    __slots__ = ("_failures", "_lock", "_options", "_writer", "done")

    def __init__(
        self, writer: Host, options: Options, lock: threading.Lock, failures: Failures
    ) -> None:
        self._writer = weakref.ref(writer)
        self._options = options
        self._lock = lock  # the writer's
        self._failures = failures
        self.done = 0

    def run(self, signal: Signal) -> bool:
        """Do one round of this work; False once the writer is gone.

        A failure is stored in the writer (raised from its next call), never raised here.
        """
        writer = self._writer()
        if writer is None:
            return False
        try:
            self._run(writer, signal)
        except Exception as exc:  # not an OSError: a bug; still raised to the user
            writer._store_error(exc)
        finally:
            writer._notify()
        return True

    @abstractmethod
    def _run(self, writer: Host, signal: Signal) -> None: ...

    def _finished_files(self, writer: Host) -> list[tuple[str, os.stat_result, re.Match[str]]]:
        """Regular files matching the pattern and not in use, with their stat and match."""
        base, pattern = self._options.base, self._options.pattern
        found = []
        for path in glob.glob(os.path.join(glob.escape(base), pattern.glob)):
            match = pattern.regex.fullmatch(os.path.relpath(path, base))
            if match is None:
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((path, info, match))
        with self._lock:
            used = writer._in_use_locked()
        return [entry for entry in found if entry[0] not in used]

    def _guarded(self, writer: Host, doing: str, path: str, action: Callable[[str], None]) -> None:
        """Run ``action(path)``; an OSError is counted and stored in the writer, not raised."""
        try:
            action(path)
        except OSError as exc:
            writer._store_error(self._failures.error(exc, doing, path))


class Compress(MaintenanceTask):
    """Compress each finished hour file to ``.gz`` or ``.zst``, keeping its mtime, and
    remove the temporary files of compressions a crash interrupted."""

    __slots__ = ("_mode",)

    def __init__(
        self,
        writer: Host,
        options: Options,
        lock: threading.Lock,
        failures: Failures,
        mode: Compression,
    ) -> None:
        super().__init__(writer, options, lock, failures)
        self._mode = mode

    def _run(self, writer: Host, signal: Signal) -> None:
        files = self._finished_files(writer)
        for path, _, match in files:
            if match.group("tmp"):
                self._guarded(writer, "remove a stale temporary file", path, _unlink_quietly)
        for path, info, match in files:
            if signal.stopped:
                return
            if not match.group("tmp") and not match.group("compressed"):
                compress = functools.partial(self._compress, writer, info=info, signal=signal)
                self._guarded(writer, "compress a finished file", path, compress)

    def _compress(self, writer: Host, path: str, info: os.stat_result, signal: Signal) -> None:
        target = path + COMPRESSED_SUFFIXES[self._mode]
        temp = target + ".tmp"
        with open(path, "rb") as source, open(temp, "wb") as raw:
            with self._compressor(raw) as sink:
                while chunk := source.read(_COPY_CHUNK):
                    if signal.stopped:
                        break
                    sink.write(chunk)
            if signal.stopped:
                raw.close()
                _unlink_quietly(temp)
                return
            if self._options.fsync:
                raw.flush()
                os.fsync(raw.fileno())
        os.utime(temp, ns=(info.st_atime_ns, info.st_mtime_ns))
        with self._lock:
            # Under the lock: the flush thread marks a path in use before opening it.
            now = os.stat(path)
            if path in writer._in_use_locked() or (now.st_size, now.st_mtime_ns) != (
                info.st_size,
                info.st_mtime_ns,
            ):
                _unlink_quietly(temp)  # written to meanwhile: next round
                return
            try:
                existing = os.stat(target)
            except FileNotFoundError:
                os.replace(temp, target)
            else:
                if existing.st_mtime_ns != info.st_mtime_ns:
                    # The hour was reopened after it was compressed (the clock stepped
                    # back): add the new part as another gzip member / zstd frame.
                    _append_file(temp, target)
                    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
                # else a crash came between compressing and removing: already contained.
                _unlink_quietly(temp)
            os.unlink(path)
            self.done += 1
        if self._options.fsync:
            fsync_dir(os.path.dirname(path))

    def _compressor(self, raw: IO[bytes]) -> Any:
        if self._mode == "gzip":
            return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0)
        return self._options.zstd.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(
            raw, closefd=False
        )


class Retain(MaintenanceTask):
    """Remove the finished files the retention rule no longer keeps, then the
    directories under the base directory that this leaves empty."""

    __slots__ = ("_retention",)

    def __init__(
        self,
        writer: Host,
        options: Options,
        lock: threading.Lock,
        failures: Failures,
        retention: Retention,
    ) -> None:
        super().__init__(writer, options, lock, failures)
        self._retention = retention

    def _run(self, writer: Host, signal: Signal) -> None:
        retention = self._retention
        files = [
            (path, info)
            for path, info, match in self._finished_files(writer)
            if not match.group("tmp")
        ]
        files.sort(key=lambda entry: (entry[1].st_mtime_ns, entry[0]), reverse=True)
        doomed: list[str] = []
        if retention.max_files is not None:
            doomed += [path for path, _ in files[retention.max_files :]]
        if retention.max_age is not None:
            now, _ = writer._now()
            oldest = (now - retention.max_age.total_seconds()) * 1e9
            doomed += [path for path, info in files if info.st_mtime_ns < oldest]
        remove = functools.partial(self._remove, writer)
        for path in dict.fromkeys(doomed):
            self._guarded(writer, "remove an expired file", path, remove)

    def _remove(self, writer: Host, path: str) -> None:
        with self._lock:
            if path in writer._in_use_locked():
                return
            try:
                os.unlink(path)
            except FileNotFoundError:
                return
            self.done += 1
        self._prune_dirs(os.path.dirname(path))

    def _prune_dirs(self, directory: str) -> None:
        base = self._options.base
        while directory != base and directory.startswith(base + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (or not removable): it stays, and so do its parents
            directory = os.path.dirname(directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _append_file(source: str, target: str) -> None:
    with open(source, "rb") as src, open(target, "ab") as dst:
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)
