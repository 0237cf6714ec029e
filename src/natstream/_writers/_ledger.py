"""Which file each buffered record goes to: record numbers and marks; no I/O, no lock.

The writer's buffer (``HourlyFileWriter._chunks``) holds accepted records, oldest first.
The :class:`Ledger` numbers them from 0 in acceptance order and keeps *marks*:
``(number, path)`` pairs saying that records from that number on go to that path, until
the next mark. A flush removes records from the front of the buffer and the ledger splits
them into :class:`Segment` objects, one per file, in acceptance order; records a flush
could not write are put back at the front with marks that send each to its own file
again, so a retry writes every record once, to the file of the hour it was accepted in.

The caller holds the writer's lock around every call and every access to the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Ledger", "Segment"]


@dataclass(slots=True, eq=False)
class Segment:
    """Buffered records bound for one file, in order."""

    path: str
    chunks: list[bytes] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))


class Ledger:
    """Record numbers and marks for one writer's buffer (see the module doc).

    Attributes:
        taken: records taken from the buffer so far: record number ``taken + i`` is
            the buffer's ``i``-th.
        marks: ``(number, path)`` in increasing order of number; ``marks[0][0] <= taken``
            once the first mark is set.
        inflight: the segments of the last take, while they are being written; after a
            failed final flush, those that could not be written (``close()`` counts them
            as dropped).
    """

    __slots__ = ("inflight", "marks", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self.marks: list[tuple[int, str]] = []
        self.inflight: list[Segment] = []

    def mark(self, path: str, *, buffered: int) -> None:
        """Send the records accepted after the ``buffered`` ones in the buffer to ``path``."""
        number = self.taken + buffered
        marks = self.marks
        if marks and marks[-1][0] == number:
            marks[-1] = (number, path)  # no record went to the previous path
        else:
            marks.append((number, path))

    def take(self, batch: list[bytes]) -> list[Segment]:
        """Split ``batch``, the records just removed from the front of the buffer, by file.

        The segments become :attr:`inflight`; marks no longer needed are dropped.
        """
        marks = self.marks
        first = self.taken
        end = self.taken = first + len(batch)
        segments: list[Segment] = []
        path = marks[0][1]
        cut = first
        keep = 0
        for index in range(1, len(marks)):
            number, next_path = marks[index]
            if number > end:
                break
            if number > cut:
                segments.append(Segment(path, batch[cut - first : number - first]))
                cut = number
            path = next_path
            keep = index
        if end > cut:
            segments.append(Segment(path, batch[cut - first :]))
        del marks[:keep]
        self.inflight = segments
        return segments

    def put_back(self, rest: list[Segment]) -> list[bytes]:
        """Undo the take of ``rest``: segments of the last take not written, in order.

        Returns their records, which the caller puts back at the front of the buffer;
        nothing is in flight any more.
        """
        records = [chunk for segment in rest for chunk in segment.chunks]
        number = self.taken = self.taken - len(records)
        marks = []
        for segment in rest:
            marks.append((number, segment.path))
            number += len(segment.chunks)
        self.marks[0] = (number, self.marks[0][1])
        self.marks[0:0] = marks
        self.inflight = []
        return records

    def paths(self) -> set[str]:
        """The paths records in the buffer may go to (maintenance leaves them alone)."""
        return {path for _, path in self.marks}

    def inflight_size(self) -> int:
        """Bytes in flight."""
        return sum(segment.size for segment in self.inflight)
