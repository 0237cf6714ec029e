"""The lock-free core of ``HourlyFileWriter.write``, and the choice of its implementation.

``HourlyFileWriter`` subclasses :data:`Core`: this module's pure-Python
:class:`WriterCore`, or its C twin ``natstream._cwriter.WriterCore`` (same name, fields
and ``write``; built at install when a compiler is available, unused when the
environment variable ``NATSTREAM_NO_EXTENSIONS`` is set). :data:`WRITER_IMPL` says which.
Both read the subclass's buffer fields (``_chunks``, ``_fill``, ``_gate``, ``_hi``,
``_live``, ``_lo``) and call its ``_write_locked`` and ``_settle_late``; the subclass
must never declare slots of these names (one would hide the C core's field).

Thread safety rests on the GIL (CPython 3.11+; the free-threaded build is not
supported): see :meth:`WriterCore.write`.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from typing import TYPE_CHECKING, Any, Final, Literal, Self

__all__ = ["WRITER_IMPL", "Core", "WriterCore", "WriterImpl"]

_time: Final = time.time
"""The default clock, in seconds since the epoch; the Python core and the writer's
locked path both read it here (the C core reads the same clock in C)."""


class WriterCore:
    """The lock-free part of :class:`~natstream.HourlyFileWriter`: its fields and ``write()``.

    Everything beyond the fast path is the subclass's: ``_write_locked`` and
    ``_settle_late``.
    """

    __slots__ = ("_chunks", "_fill", "_gate", "_hi", "_live", "_lo")

    _chunks: list[bytes]
    _fill: int
    _gate: int
    _hi: float
    _live: bool
    _lo: float

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # The C type's starting state: shut (an empty hour range), empty, not live.
        self = super().__new__(cls)
        self._lo = math.inf
        self._hi = -math.inf
        self._fill = 0
        self._gate = 0
        self._chunks = []
        self._live = False
        return self

    def write(self, data: bytes) -> int:
        """Accept one record (bytes); return ``len(data)``.

        The record is appended to the buffer for the current hour's file, never split and
        never mixed with other records. No disk I/O happens here unless the buffer is
        full: then the buffer is written out on this thread first.

        Raises:
            WriterError: the writer is closed, or the flush thread stored an error (raised
                once), or writing out a full buffer failed (as in :meth:`flush`); the
                record was not accepted.
            TypeError: ``data`` is not bytes-like.
        """
        # Fast path, without the lock: default clock, inside the current hour, open, no
        # stored error, buffer below the gate. It relies on the GIL (CPython 3.11+ with
        # the GIL; the free-threaded build is not supported): list.append is atomic, so
        # a record enters _chunks whole and in one place, and a take (under the lock)
        # removes whole records from the front. A rotation marks the record number
        # where the new hour starts before it moves _lo/_hi, so a record appended after
        # the mark goes to the new hour: one the clock showed during this call. The
        # rest (clock, rotation, backpressure, errors, close) is _write_locked's.
        # The C fast path (_cwriter.c) takes the same steps and relies on the GIL the
        # same way (it holds it throughout and calls no Python code); the free-threaded
        # build is not supported there either.
        if type(data) is bytes and self._lo <= _time() < self._hi:
            size = len(data)
            fill = self._fill + size
            if fill < self._gate:
                self._chunks.append(data)
                self._fill = fill  # may lose a racing update: see HourlyFileWriter._fill
                if self._live:
                    return size
                return self._settle_late(data)
        return self._write_locked(data)

    def _write_locked(self, data: bytes) -> int:
        raise NotImplementedError  # HourlyFileWriter's

    def _settle_late(self, data: bytes) -> int:
        raise NotImplementedError  # HourlyFileWriter's


WriterImpl = Literal["c", "python"]


def _select_core() -> tuple[type[Any], WriterImpl]:
    if os.environ.get("NATSTREAM_NO_EXTENSIONS"):
        return WriterCore, "python"
    try:
        cwriter = importlib.import_module("natstream._cwriter")
    except ImportError:  # not built (no compiler at install): the Python fallback
        return WriterCore, "python"
    return cwriter.WriterCore, "c"


_core, _impl = _select_core()
WRITER_IMPL: Final[WriterImpl] = _impl
"""``"c"`` when ``HourlyFileWriter.write`` runs the C fast path, else ``"python"``."""

if TYPE_CHECKING:
    Core = WriterCore
else:
    Core = _core
