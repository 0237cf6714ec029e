"""A snapshot of a writer's counters: :class:`WriterStats`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WriterStats"]


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of a writer's counters (:meth:`HourlyFileWriter.stats`).

    Attributes:
        records: ``write()`` calls accepted since the writer was created.
        bytes_written: record bytes the operating system accepted into files.
        bytes_buffered: accepted record bytes not written yet.
        bytes_dropped: accepted record bytes lost because ``close()`` could not write them.
        current_path: the file for the current hour (it may not exist before its first
            flush).
        files_opened: files opened for appending (new or existing).
        lines_repaired: files found not ending in ``b"\\n"`` and given one.
        flushes: flushes that wrote data.
        errors: failed operations; each was raised as a :class:`WriterError`.
        files_compressed: finished hour files compressed.
        files_removed: finished hour files removed by retention.
    """

    records: int
    bytes_written: int
    bytes_buffered: int
    bytes_dropped: int
    current_path: Path
    files_opened: int
    lines_repaired: int
    flushes: int
    errors: int
    files_compressed: int
    files_removed: int
