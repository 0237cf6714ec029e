"""The consumer side of a requester stream, sans-IO: what arrived and what the
consumer took, when credit goes back to the responder (acks), and where a retry
resumes. :class:`~._requester.RequesterMachine` builds on it; the fields it shares
with the receiving side (``received_seq``, ``_largest``...) are kept here, so the
per-message paths read them without an extra hop.

With the C extension in use (:mod:`natstream._ext`), :class:`Credit` subclasses its
``CreditCore``: the counters and fields the per-message paths read live in a C
struct, under the same names, and the C twins of :meth:`Credit.on_taken`,
:meth:`Credit.on_delivered_many`, :meth:`Credit.ack_budget` and
``RequesterMachine.on_data`` work on them (the methods here are the reference; the
property tests hold the twins to them).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .._ext import cstream
from ._states import TERMINAL, RequesterState
from ._wire import CTL_ACK, HDR_ACK, HDR_CONTROL, HDR_POS, Resume, format_ack, parse_pos, pos_add

__all__ = ["Credit"]

if TYPE_CHECKING:
    _Core = object
else:
    _Core = object if cstream is None else cstream.CreditCore
if cstream is not None:
    cstream.configure("streaming", RequesterState.STREAMING)
    cstream.configure("terminal", TERMINAL)
    cstream.configure("ctl_ack", CTL_ACK)


class Credit(_Core):
    """Counts of a requester stream attempt and its ack rule.

    An ack carries (delivered seq, delivered bytes) and goes out when half the
    window is used by messages the consumer took, or when the consumer has caught up
    and the responder may be blocked on credit. Never for messages not yet taken:
    the responder is never allowed more than the window in flight.
    """

    # Set by the receiving side (RequesterMachine).
    state: RequesterState
    v1: bool | None
    control_subject: str | None
    heartbeat: float

    def __init__(self, window_messages: int, window_bytes: int, resume: Resume | None) -> None:
        self.window_messages = window_messages
        self.window_bytes = window_bytes
        self.resume = resume
        base = resume.seq if resume else 0
        self.received_seq = base  # last data message accepted into the consumer's queue
        self.delivered_seq = base  # last data message the consumer took
        self.delivered_bytes = 0
        self._delivered_pos: str | None = resume.pos if resume else None
        self._received_bytes = 0
        self._largest = 0  # largest data payload so far: what the responder may be holding
        self.ack_deferred = False  # see on_taken
        self._acked_seq = base
        self._acked_bytes = 0
        self._ack_every_msgs = max(1, window_messages // 2)
        self._ack_every_bytes = max(1, window_bytes // 2)
        self._last_tx = 0.0  # when a control message last went out
        self._waiting_since: float | None = None  # the consumer waits on an empty queue
        # Packed messages received: (first seq, last seq, position of the first item or
        # None for the default), while the consumer may still stop inside one.
        self._packs: deque[tuple[int, int, str | None]] = deque()

    def received(self) -> tuple[int, int]:
        """(data messages accepted so far by this attempt, their payload bytes); each
        item of a packed message counts as one, its length prefix as no byte."""
        return self.received_seq - (self.resume.seq if self.resume else 0), self._received_bytes

    def on_delivered(self, headers: dict[str, str] | None, size: int) -> dict[str, str] | None:
        """The consumer took the next data message (``size`` payload bytes).

        Returns the headers of an ack to publish to ``control_subject`` when enough
        credit has been used up (half the window), or when the consumer has caught up
        and the responder may be waiting for credit, else None.
        """
        seq = self.delivered_seq = self.delivered_seq + 1
        delivered_bytes = self.delivered_bytes = self.delivered_bytes + size
        if headers is None:
            self._delivered_pos = None
            if (
                seq - self._acked_seq < self._ack_every_msgs
                and delivered_bytes - self._acked_bytes < self._ack_every_bytes
                and seq != self.received_seq
            ):
                return None  # the commonest case, decided early: no ack due
        elif headers:
            # Only a v1 responder's Ns-Pos is a position (checked on arrival); a plain
            # peer's headers may hold anything.
            pos = headers.get(HDR_POS) if self.v1 else None
            self._delivered_pos = None if pos is None else parse_pos(pos)
        else:
            self._delivered_pos = None
        if not self.v1 or self.control_subject is None or self.state in TERMINAL:
            return None
        unacked_bytes = self.delivered_bytes - self._acked_bytes
        if (
            seq - self._acked_seq >= self._ack_every_msgs
            or unacked_bytes >= self._ack_every_bytes
            # Caught up, and a message as large as the largest so far would not fit in
            # what is left of the byte window: the responder may be blocked on credit,
            # and without this ack only the next heartbeat (none when off) frees it.
            or (
                seq == self.received_seq
                and (self.heartbeat <= 0 or unacked_bytes + self._largest > self.window_bytes)
            )
        ):
            return self._ack_headers(CTL_ACK)
        return None

    def on_taken(self, size: int) -> dict[str, str] | None:
        """:meth:`on_delivered` for a header-less data message the consumer took as it
        arrived, while more may follow in the same read: the ack for having caught up
        is put off (:attr:`ack_deferred` set) instead of sent for every message; the
        driver then calls :meth:`deferred_ack` once that read is handled. The
        half-window acks are returned as by :meth:`on_delivered`.
        """
        seq = self.delivered_seq = self.delivered_seq + 1
        delivered_bytes = self.delivered_bytes = self.delivered_bytes + size
        unacked_bytes = delivered_bytes - self._acked_bytes
        self._delivered_pos = None
        if seq - self._acked_seq < self._ack_every_msgs and unacked_bytes < self._ack_every_bytes:
            if seq == self.received_seq and (
                self.heartbeat <= 0 or unacked_bytes + self._largest > self.window_bytes
            ):
                self.ack_deferred = True
            return None
        if not self.v1 or self.control_subject is None or self.state in TERMINAL:
            return None
        return self._ack_headers(CTL_ACK)

    def deferred_ack(self) -> dict[str, str] | None:
        """The ack :meth:`on_taken` put off, if still due: the consumer has taken all
        that arrived and the stream goes on. (The reason it was due, heartbeats off or
        little byte window left, still holds: unacked bytes only grow until an ack,
        which clears :attr:`ack_deferred`.) Clears :attr:`ack_deferred`."""
        if not self.ack_deferred:
            return None
        self.ack_deferred = False
        if (
            not self.v1
            or self.control_subject is None
            or self.state in TERMINAL
            or self.delivered_seq != self.received_seq
        ):
            return None
        return self._ack_headers(CTL_ACK)

    def ack_budget(self) -> tuple[int, int]:
        """(messages, bytes) the consumer may take, counting from now, before an ack
        falls due by the half-window rule; both at least 1. See :meth:`on_delivered_many`."""
        return (
            max(1, self._ack_every_msgs - (self.delivered_seq - self._acked_seq)),
            max(1, self._ack_every_bytes - (self.delivered_bytes - self._acked_bytes)),
        )

    def on_delivered_many(self, count: int, nbytes: int) -> dict[str, str] | None:
        """The consumer took the next ``count`` data messages, none with headers,
        ``nbytes`` payload bytes in all: the same as ``count`` calls of
        :meth:`on_delivered` with no headers, provided no ack fell due before the last
        of them, which holds when ``count`` and ``nbytes`` stay within
        :meth:`ack_budget` (reaching either bound is allowed) and only the last may
        be the last message received. Returns the ack the last call would return.
        """
        if count <= 0:
            return None
        self.delivered_seq += count - 1
        self.delivered_bytes += nbytes
        return self.on_delivered(None, 0)

    def _ack_headers(self, kind: str) -> dict[str, str]:
        self.ack_deferred = False
        self._acked_seq = self.delivered_seq
        self._acked_bytes = self.delivered_bytes
        return {HDR_CONTROL: kind, HDR_ACK: format_ack(self.delivered_seq, self.delivered_bytes)}

    def mark_sent(self, now: float) -> None:
        """The driver published a control message (ack or heartbeat) at ``now``."""
        self._last_tx = now

    def consumer_waiting(self, now: float) -> None:
        """The consumer is blocked on an empty queue from ``now`` on."""
        if self._waiting_since is None:
            self._waiting_since = now

    def consumer_busy(self) -> None:
        """The consumer took a message and is no longer waiting."""
        self._waiting_since = None

    def consumer_back(self, now: float) -> None:
        """The consumer took a message as it arrived and is waiting again from ``now``
        (:meth:`consumer_busy` then :meth:`consumer_waiting`): the time it spent on
        the message does not count as silence."""
        self._waiting_since = now

    def resume_point(self) -> Resume | None:
        """Where a retry continues: after the last message the consumer took."""
        if self.delivered_seq == 0:
            return None
        pos = self._delivered_pos
        if pos is None:
            pos = self._pack_pos(self.delivered_seq)
        if pos is None:
            if self.resume is not None and self.delivered_seq == self.resume.seq:
                pos = self.resume.pos
            else:
                pos = str(self.delivered_seq - 1)
        return Resume(self.delivered_seq, pos)

    def _pack_pos(self, seq: int) -> str | None:
        """Position of item ``seq`` when it came in a packed message with ``Ns-Pos``."""
        for first, last, pos in reversed(self._packs):
            if first <= seq <= last:
                return None if pos is None else pos_add(pos, seq - first)
        return None
