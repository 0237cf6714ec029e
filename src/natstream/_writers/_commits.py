"""Commits: a checkpoint beside a writer's files that makes appends exactly-once.

A writer given a checkpoint keeps in it the token of its last commit and, for each file
records may have gone to since that commit, the file's size at the commit (or, for a
file first opened after it, the size it had when it was opened). A writer opened with
the same checkpoint cuts each listed file back to that size: what was written after
the last commit is gone, and the caller, who knows what the token covers, writes it
again. So a record is in the files once, however the process ended.

Guarantees kept here:

* Before the first byte goes to a file the checkpoint does not list, the checkpoint is
  saved listing it (:meth:`Checkpoint.note`): no file ever holds bytes past a size the
  checkpoint knows.
* A commit records the token and the sizes after the flush in one atomic step: a
  temporary file renamed over the checkpoint (with ``fsync``, the temporary file is
  synced before the rename and the directory after it, so a power loss leaves the old
  or the new checkpoint, whole).
* Listed files are in use: maintenance neither compresses nor removes them before their
  bytes are committed.
* One writer at a time: an exclusive lock (``flock``) on ``{checkpoint}.lock`` for the
  writer's life; a second writer on the same checkpoint fails to open.

Threads: :meth:`Checkpoint.note` and :meth:`Checkpoint.commit` run under the writer's
I/O lock (one flush at a time); :attr:`Checkpoint.paths` is replaced whole, under the
writer's lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from typing import Any, Final

from .._errors import WriterError
from ._sink import fsync_dir

__all__ = ["Checkpoint"]

log = logging.getLogger("natstream")

_VERSION: Final = 1


class Checkpoint:
    """The commit record of one writer: the last token and the listed files' sizes.

    Attributes:
        path: the checkpoint file, absolute.
        token: the token of the last commit (None before the first).
        paths: the listed files (absolute paths), in use for maintenance.
        bytes_cut: bytes cut off listed files when the checkpoint was opened.
    """

    __slots__ = (
        "_base",
        "_fsync",
        "_lock",
        "_lock_fd",
        "_sizes",
        "bytes_cut",
        "path",
        "paths",
        "token",
    )

    def __init__(self, base: str, path: str, lock: threading.Lock, *, fsync: bool) -> None:
        self._base = base
        self.path = path
        self._lock = lock  # the writer's
        self._fsync = fsync
        self._lock_fd: int | None = None
        self._sizes: dict[str, int] = {}
        self.token: str | None = None
        self.paths: frozenset[str] = frozenset()
        self.bytes_cut = 0

    def open(self) -> None:
        """Lock the checkpoint, read it and cut every listed file back to its size.

        Raises:
            WriterError: another writer holds the checkpoint, it cannot be read or is
                damaged, or a file cannot be cut (nothing is held then).
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriterError(
                    errno.EBUSY,
                    f"checkpoint {self.path!r} is in use by another writer "
                    "(one writer, one process, per checkpoint)",
                    self.path,
                ) from None
            self._load()
            self._cut_back()
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the checkpoint file stays). Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def note(self, path: str, size: int) -> None:
        """List ``path`` at ``size`` bytes, saved before anything is written to it.

        Raises:
            OSError: the checkpoint could not be saved (``path`` is not listed then).
        """
        if path in self._sizes:
            return
        sizes = {**self._sizes, path: size}
        self._save(self.token, sizes)
        self._sizes = sizes
        with self._lock:
            self.paths = frozenset(sizes)

    def commit(self, token: str, open_path: str | None) -> bool:
        """Record ``token`` with the listed files' sizes now; keep only ``open_path``
        listed (every other listed file is whole and needs no cutting any more).

        Call it right after a flush, with no write in between. Returns True when files
        were released from the list (maintenance may now take them).

        Raises:
            OSError: a size could not be read or the checkpoint could not be saved; the
                previous commit stands.
        """
        sizes: dict[str, int] = {}
        if open_path is not None:
            sizes[open_path] = os.stat(open_path).st_size
        self._save(token, sizes)
        released = bool(set(self._sizes) - set(sizes))
        self._sizes = sizes
        self.token = token
        with self._lock:
            self.paths = frozenset(sizes)
        return released

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as file:
                raw = file.read()
        except FileNotFoundError:
            return
        try:
            state: Any = json.loads(raw)
            if state.get("version") != _VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {_VERSION}")
            token = state["token"]
            files = state["files"]
            if not (token is None or isinstance(token, str)) or not isinstance(files, dict):
                raise ValueError("unexpected fields")
            sizes = {os.path.join(self._base, rel): int(size) for rel, size in files.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise WriterError(
                f"checkpoint {self.path!r} is damaged ({exc}): which records the files hold "
                "is unknown; move the files and the checkpoint away to start afresh",
            ) from None
        self.token = token
        self._sizes = sizes
        self.paths = frozenset(sizes)

    def _cut_back(self) -> None:
        for path, size in self._sizes.items():
            try:
                actual = os.stat(path).st_size
            except FileNotFoundError:
                continue
            if actual > size:
                with open(path, "r+b") as file:
                    file.truncate(size)
                    if self._fsync:
                        os.fsync(file.fileno())
                self.bytes_cut += actual - size
            elif actual < size:
                log.warning(
                    "%s is %d bytes shorter than at its last commit: records committed "
                    "to it were lost (a power loss without fsync?)",
                    path,
                    size - actual,
                )
        # Every listed file now holds committed bytes only: none is in use any more, and
        # a file written again is listed afresh at its size then (it may have been
        # compressed and started over meanwhile).
        self._sizes = {}
        self.paths = frozenset()

    def _save(self, token: str | None, sizes: dict[str, int]) -> None:
        files = {os.path.relpath(path, self._base): size for path, size in sizes.items()}
        data = json.dumps({"version": _VERSION, "token": token, "files": files}).encode()
        temp = self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        if self._fsync:
            fsync_dir(os.path.dirname(self.path))
