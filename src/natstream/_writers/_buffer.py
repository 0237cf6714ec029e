"""The hourly writer's buffer: accepted records waiting for a flush, and their files.

:class:`Buffer` sits between the lock-free core (``_core``: ``_chunks``, ``_fill``,
``_gate``) and :class:`~natstream.HourlyFileWriter`, which calls these methods under its
lock. Records are taken whole from the front while lock-free appends go on at the end
(atomic with the GIL), and put back at the front when a flush could not write them, so
the order in which records were accepted is the order they reach their files.
"""

from __future__ import annotations

from ._core import Core
from ._ledger import Ledger, Segment

__all__ = ["Buffer"]


class Buffer(Core):
    """The buffer's accounting; the writer's lock is held for every method here.

    ``_chunks`` holds the accepted records not yet taken by a flush, oldest first; the
    list object is never replaced (the fast path appends to it without the lock).
    ``_fill`` is their size in bytes, an estimate: the fast path updates it without the
    lock, so two racing writers may lose an update; every take and every decision to
    block recounts it exactly. ``_gate`` is what the fast path needs ``_fill + size``
    to stay under: half the buffer, then all of it once the flush thread was woken.
    """

    __slots__ = ("_half", "_ledger", "_size")

    def _init_buffer(self, size: int) -> None:
        """Start empty, holding at most ``size`` bytes before ``write()`` flushes."""
        self._size = size
        self._half = max(1, size // 2)
        self._gate = self._half
        self._ledger = Ledger()  # which file each record in _chunks goes to

    def _half_full(self) -> None:
        """Half the buffer is used: wake the flush thread (the writer's)."""
        raise NotImplementedError

    def _recount_locked(self) -> int:
        # One C-level pass: with the GIL no other thread appends during it.
        fill = self._fill = sum(map(len, self._chunks))
        return fill

    def _has_room_locked(self, size: int) -> bool:
        """Wake the flush thread at half the buffer; False when it is full."""
        if self._gate < self._size:
            # Half full: wake the flush thread once; come back here when full.
            self._gate = self._size
            self._half_full()
        # On the estimate: if it is high, the flush comes a little early; the take
        # recounts.
        return self._fill < self._size

    def _take_locked(self) -> list[Segment]:
        """Remove every buffered record, split by file; lock-free appends go on meanwhile.

        Reading the length, copying the slice and deleting it are each atomic with the
        GIL, and appends only add after the end, so exactly the first ``count`` records
        are taken, whole.
        """
        chunks = self._chunks
        count = len(chunks)
        batch = chunks[:count]
        del chunks[:count]
        self._recount_locked()
        self._gate = self._half
        return self._ledger.take(batch)

    def _put_back_locked(self, rest: list[Segment]) -> None:
        """Return records a flush could not write to the front of the buffer."""
        records = self._ledger.put_back(rest)
        self._chunks[0:0] = records  # atomic with the GIL, like the take
        self._fill += sum(map(len, records))

    def _buffered_locked(self) -> int:
        """Bytes accepted and not written: buffered, or taken by a flush in progress."""
        return sum(map(len, self._chunks)) + self._ledger.inflight_size()
