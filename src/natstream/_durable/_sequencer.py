"""Which deliveries of a durable consumer to write, skip or hold: sans-IO.

The files must get every message of the consumer's subjects once, in stream order. The
recorder writes a message, commits, then acknowledges; JetStream redelivers what was not
acknowledged. A :class:`Sequencer` judges each delivery from two numbers the server puts
in it (its stream sequence and its consumer sequence) and from what is written:

* ``written`` is the highest stream sequence written; every message of the subjects
  up to it is in the files (or on its way there, in the uncommitted batch). A delivery
  at or below it is a redelivery of a written message: **skip** it (acknowledge it).
* Deliveries reach the recorder in stream order, except for redeliveries, which are of
  written messages. So in the normal case a delivery above ``written`` is the next
  message: **write** it.
* A delivery can be lost on the way (the connection dropped with it in flight), and a
  recorder that crashed leaves its deliveries pending on the server: they come back only
  after the consumer's ack wait. Writing past such a message would put it out of order
  later, or, worse, skip it as "written". Every delivery increments the consumer
  sequence, so a jump in it shows one was lost; a start with deliveries pending shows
  the crash. Then the sequencer is *in doubt*: deliveries above ``written`` are
  **held**, until the server's count of unacknowledged deliveries equals the number
  the recorder holds unacknowledged (:meth:`Sequencer.release`): nothing is missing
  any more, and the held ones are written in stream order.

The caller keeps the messages; the sequencer keeps the held ones' stream sequences and
whatever object the caller gives with each.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

__all__ = ["Sequencer", "Verdict"]

T = TypeVar("T")


class Verdict(enum.Enum):
    """What to do with one delivery."""

    WRITE = "write"  # the next message: write it (then commit, then acknowledge)
    SKIP = "skip"  # already written: acknowledge it once what is written is committed
    HOLD = "hold"  # in doubt: keep it unacknowledged until :meth:`Sequencer.release`


class Sequencer(Generic[T]):
    """Judges deliveries (see the module doc).

    Args:
        written: the highest stream sequence already in the files (0: none).
        delivered: the consumer sequence of the consumer's last delivery so far, when
            known (the next one is then checked to follow it).
        in_doubt: start in doubt (deliveries of an earlier run may still be pending).

    Attributes:
        written: the highest stream sequence written.
        in_doubt: whether deliveries above ``written`` are being held.
        gaps: how many times a lost delivery was noticed.
    """

    __slots__ = ("_expected", "_held", "gaps", "in_doubt", "written")

    def __init__(
        self, written: int = 0, *, delivered: int | None = None, in_doubt: bool = False
    ) -> None:
        self.written = written
        self._expected = None if delivered is None else delivered + 1
        self.in_doubt = in_doubt
        self._held: dict[int, T] = {}
        self.gaps = 0

    def judge(self, stream_seq: int, consumer_seq: int, item: T) -> Verdict:
        """The verdict on one delivery, in the order deliveries arrived; a WRITE
        advances :attr:`written`, a HOLD keeps ``item`` (the latest item of a stream
        sequence delivered twice replaces the earlier)."""
        expected = self._expected
        self._expected = consumer_seq + 1
        if expected is not None and consumer_seq != expected:
            self.in_doubt = True  # deliveries between were lost on the way
            self.gaps += 1
        if stream_seq <= self.written:
            return Verdict.SKIP
        if self.in_doubt:
            self._held[stream_seq] = item
            return Verdict.HOLD
        self.written = stream_seq
        return Verdict.WRITE

    @property
    def held(self) -> int:
        """How many stream sequences are held."""
        return len(self._held)

    def held_from(self, first: int) -> int:
        """How many held stream sequences are ``first`` or above (the ones below a
        stream's first sequence were removed from it, and the server counts them no
        more)."""
        return sum(1 for seq in self._held if seq >= first)

    def held_items(self) -> list[T]:
        """The held items in stream order (they stay held)."""
        return [self._held[seq] for seq in sorted(self._held)]

    def release(self, server_pending: int, in_hand: int) -> list[tuple[int, T]] | None:
        """End the doubt when no delivery is missing, and return the held messages to
        write, in stream order (:attr:`written` advanced past them); None while some
        may still be missing.

        Args:
            server_pending: deliveries the server counts as not acknowledged (its
                ``num_ack_pending``), looked up after every acknowledgement sent so far.
            in_hand: distinct stream sequences delivered and not yet acknowledged that
                the caller holds (the held ones included).
        """
        # Equal, not "at most": a held message the server no longer counts (the stream's
        # limits removed it) must not stand in for one still missing.
        if not self.in_doubt or server_pending != in_hand:
            return None
        self.in_doubt = False
        released = sorted(self._held.items())
        self._held.clear()
        if released:
            self.written = released[-1][0]
        return released

    def drop_held(self) -> list[T]:
        """Forget the held items (the recording stops: they are to be redelivered),
        returning them in stream order."""
        items = self.held_items()
        self._held.clear()
        return items
