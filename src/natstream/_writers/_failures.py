"""How a writer's parts report a failed operation: counted, and turned into a WriterError."""

from __future__ import annotations

import threading

from .._errors import WriterError

__all__ = ["Failures"]


class Failures:
    """The failed operations of one writer (``WriterStats.errors``).

    Attributes:
        count: failures so far, under the writer's lock.
    """

    __slots__ = ("_lock", "_name", "count")

    def __init__(self, lock: threading.Lock, name: str) -> None:
        self._lock = lock
        self._name = name
        self.count = 0

    def error(self, exc: OSError, doing: str, path: str | None) -> WriterError:
        """Count a failure; return the error to raise or store for it, caused by ``exc``.

        Call it without the writer's lock held. ``doing`` completes "could not ...".
        """
        with self._lock:
            self.count += 1
        message = f"writer {self._name!r} could not {doing}: {exc.strerror or exc}"
        error = WriterError(exc.errno, message, path) if exc.errno else WriterError(message)
        error.__cause__ = exc
        return error
