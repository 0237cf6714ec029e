"""The file sink: the hour file a writer appends to, and the link to it.

Guarantees kept here:

* Records go to disk in batches, one ``os.writev`` per batch (more only after a short
  write or past ``IOV_MAX`` pieces) on a file opened with ``O_APPEND``, so they are not
  interleaved with bytes other writers append to the same file.
* When writing fails (disk full, file too large, permissions), the file is cut back to
  the end of the last record written whole (``ftruncate``) and closed, and the caller
  learns which records were not fully written: nothing is written twice and no partial
  record is left behind. (If another process appended to the file meanwhile, it is not
  cut; the file is reopened as after a crash, below.)
* A file that does not end in ``b"\\n"`` when opened (a crash cut its last line) first
  gets a ``b"\\n"``, so the next record starts on a fresh line.
* With ``fsync``: the file is synced by :meth:`FileSink.sync` and before it is closed,
  and a directory when a file or directory is created in it.

Threads: the sink is used by one flushing thread at a time (the writer's I/O lock),
except :attr:`FileSink.path` and the counters, which the writer's lock guards.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Final

from ._ledger import Segment

__all__ = ["FileSink", "Link", "fsync_dir"]

_PIECE: Final = 64 * 1024
"""Bytes to aim at when joining records into the pieces one ``writev`` takes."""
_IOV_MAX: Final = max(16, os.sysconf("SC_IOV_MAX")) if "SC_IOV_MAX" in os.sysconf_names else 16


class FileSink:
    """The one file a writer has open for appending at a time.

    Attributes:
        fd: the open file's descriptor, or None.
        path: the open file's path, set just before it is opened and cleared when it is
            closed (so maintenance never touches a file about to be opened); read and
            written under the writer's lock.
        files_opened: files opened for appending (new or existing), under the lock.
        lines_repaired: files found not ending in ``b"\\n"`` and given one, under the
            lock.
    """

    __slots__ = ("_fsync", "_lock", "fd", "files_opened", "lines_repaired", "path")

    def __init__(self, lock: threading.Lock, *, fsync: bool) -> None:
        self._lock = lock
        self._fsync = fsync
        self.fd: int | None = None
        self.path: str | None = None
        self.files_opened = 0
        self.lines_repaired = 0

    def open(self, path: str) -> int:
        """Open ``path`` for appending, creating it and its directories as needed.

        No other file may be open. Raises OSError (then no file is open).
        """
        assert self.fd is None
        with self._lock:
            self.path = path  # in use before it exists: maintenance leaves it alone
        try:
            fd = self._open(path)
        except BaseException:
            with self._lock:
                self.path = None
            raise
        self.fd = fd
        return fd

    def append(self, segment: Segment) -> tuple[int, int, OSError | None]:
        """Write a segment to the open file (its path) in one ``os.writev`` if it can.

        Returns the bytes of whole records written, the segment's size, and the error if
        one stopped it; then ``segment.chunks`` holds the records not fully written, and
        the file is cut back to the last whole record and closed.
        """
        fd = self.fd
        assert fd is not None
        chunks = segment.chunks
        pieces = _pieces(chunks)
        total = sum(map(len, pieces))
        done = 0
        try:
            first = 0
            while first < len(pieces):
                step = os.writev(fd, pieces[first : first + _IOV_MAX])
                done += step
                while first < len(pieces) and step >= len(pieces[first]):
                    step -= len(pieces[first])
                    first += 1
                if step:
                    pieces[first] = pieces[first][step:]
        except OSError as exc:
            committed = kept = 0
            for chunk in chunks:
                if committed + len(chunk) > done:
                    break
                committed += len(chunk)
                kept += 1
            segment.chunks = chunks[kept:]
            self._abandon(fd, cut=done - committed, error=exc)
            return committed, total, exc
        return total, total, None

    def sync(self) -> None:
        """With ``fsync``, make what was written to the open file durable. Raises OSError."""
        if self._fsync and self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the open file (synced first, with ``fsync``); it is closed even when this
        raises OSError."""
        fd = self.fd
        assert fd is not None
        self.fd = None
        try:
            if self._fsync:
                os.fsync(fd)
        finally:
            try:
                os.close(fd)
            finally:
                with self._lock:
                    self.path = None

    def drop(self) -> None:
        """Close the open file, if any, without syncing (the writer was never closed)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _abandon(self, fd: int, *, cut: int, error: OSError) -> None:
        """After a failed write: cut the partial record off, close the file."""
        try:
            if cut:
                end = os.lseek(fd, 0, os.SEEK_CUR)
                if os.fstat(fd).st_size == end:
                    os.ftruncate(fd, end - cut)
                else:
                    error.add_note(
                        f"{cut} bytes of a partial record stay: the file grew meanwhile; "
                        "the next record starts on a fresh line"
                    )
        except OSError as exc:
            error.add_note(f"could not cut {cut} bytes of a partial record: {exc}")
        finally:
            self.fd = None
            with self._lock:
                self.path = None
            try:
                os.close(fd)
            except OSError as exc:
                error.add_note(f"closing the file also failed: {exc}")

    def _open(self, path: str) -> int:
        directory = os.path.dirname(path)
        self._make_dirs(directory)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
            created = True
        except FileExistsError:
            fd = os.open(path, flags | os.O_CREAT, 0o666)
            created = False
        try:
            if created:
                if self._fsync:
                    fsync_dir(directory)
            else:
                self._repair_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self.files_opened += 1
        return fd

    def _repair_tail(self, fd: int) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not info.st_size:
            return
        if os.pread(fd, 1, info.st_size - 1) != b"\n":
            os.write(fd, b"\n")
            with self._lock:
                self.lines_repaired += 1

    def _make_dirs(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        missing = []
        probe = directory
        while not os.path.exists(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        os.makedirs(directory, exist_ok=True)
        if self._fsync:
            for created in reversed(missing):
                fsync_dir(os.path.dirname(created))


class Link:
    """A symlink kept pointing at the current hour's file (relative to the link's
    directory), replaced atomically: a temporary link is renamed over it."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def point_at(self, target: str) -> None:
        """Make the link point at ``target``. Raises OSError (the old link stays)."""
        link_dir = os.path.dirname(self.path)
        temp = os.path.join(
            link_dir,
            f".{os.path.basename(self.path)}.{os.getpid()}.{threading.get_ident()}.tmp",
        )
        os.makedirs(link_dir, exist_ok=True)
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        os.symlink(os.path.relpath(target, link_dir), temp)
        os.replace(temp, self.path)


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` durable. Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pieces(chunks: list[bytes]) -> list[bytes]:
    """Join records into pieces of about ``_PIECE`` bytes (a record is never cut).

    One big join would allocate a fresh block past glibc's mmap threshold each time and
    fault its pages in, which costs more than the copy; pieces reuse heap memory.
    """
    pieces = []
    start, per, count = 0, 16, len(chunks)
    while start < count:
        piece = b"".join(chunks[start : start + per])
        pieces.append(piece)
        start += per
        per = max(1, min(4 * per, per * _PIECE // max(1, len(piece))))
    return pieces
