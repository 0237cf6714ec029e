"""The responder's side of one stream, as a state machine with no I/O.

The driver asks it for the headers of every message it sends (so sequence numbers
and credit are counted in one place), feeds it the requester's control messages
and timer ticks, and obeys what it answers.

Invariants (checked by the property tests):

* the responder never has more than the granted window unacknowledged: at most
  ``window_messages`` messages, and at most ``window_bytes`` bytes unless a single
  message is alone in flight (so a message larger than the window still moves);
* acks are accepted only when they are plausible (monotonic, never beyond what was
  sent); anything else is ignored, so a forged or garbled control message cannot
  extend the window;
* a requester that speaks only the plain protocol gets no headers and no heartbeats.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .._ext import cstream
from ._wire import (
    CTL_ACK,
    CTL_CANCEL,
    CTL_HEARTBEAT,
    HDR_ACK,
    HDR_CONTROL,
    HDR_END,
    HDR_ID,
    HDR_NEXT,
    HDR_PACK,
    HDR_POS,
    HDR_SEQ,
    RequestOptions,
    error_headers,
    parse_ack,
)

__all__ = ["Control", "ResponderMachine", "ResponderState", "ResponderTimer"]


class ResponderState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"  # end marker sent
    FAILED = "failed"  # error marker sent
    CANCELLED = "cancelled"  # requester cancelled, vanished, or its deadline passed

    # Members are singletons: identity hashing is correct, and C-level (Enum's own
    # __hash__ is Python code, and state checks run once per message).
    __hash__ = object.__hash__


class Control(enum.IntEnum):
    """What a control message from the requester did."""

    IGNORED = 0  # malformed, implausible, or after the end
    LIVENESS = 1  # a heartbeat or ack: the requester is alive (credit may have grown)
    CANCEL = 2  # the requester stopped the stream


class ResponderTimer(enum.IntEnum):
    NOTHING = 0
    HEARTBEAT = 1  # publish ``heartbeat_headers()``
    REQUESTER_GONE = 2  # no control message for too long: stop, send nothing more
    DEADLINE = 3  # the stream's deadline passed: send a 504 error and stop
    UNREACHED = 4  # no control message ever came: send an error marker (its headers
    # from ``error_headers``, which ends the stream), naming the control subject


@dataclass(frozen=True, slots=True)
class _Limits:
    window_messages: int
    window_bytes: int
    heartbeat: float  # seconds; 0 when the requester is plain
    stall_factor: float


_TERMINAL = frozenset({ResponderState.ENDED, ResponderState.FAILED, ResponderState.CANCELLED})
_OPEN = ResponderState.OPEN  # Enum member lookup is slow in Python 3.11
if cstream is not None:  # the C fill of index replies checks the state too
    cstream.configure("responder_open", _OPEN)


class ResponderMachine:
    """State of one stream on the responder side.

    Args:
        options: the request's parsed headers (see ``parse_request_headers``).
        now: current time in seconds (monotonic).
        stall_factor: missed requester heartbeat intervals before it is presumed gone.
        max_duration: the responder's own limit on a stream's length in seconds.
        stream_id: with service-routed control (see docs/protocol.md), the stream's
            id: every message then carries it (``Ns-Id``) and has no reply subject.
    """

    def __init__(
        self,
        options: RequestOptions,
        now: float,
        *,
        stall_factor: float = 3.0,
        max_duration: float | None = None,
        stream_id: str | None = None,
    ) -> None:
        self.v1 = options.version is not None
        self.stream_id = stream_id if self.v1 else None
        self._heard = False  # a plausible control message has arrived
        self.pack = self.v1 and options.pack  # the requester takes packed messages
        self.limits = _Limits(
            options.window_messages,
            options.window_bytes,
            options.heartbeat_ms / 1000 if self.v1 else 0.0,
            stall_factor,
        )
        self.state = ResponderState.OPEN
        base = options.resume.seq if options.resume else 0
        self.resume = options.resume
        self.sent_seq = base
        self.acked_seq = base
        self.sent_bytes = 0
        self.acked_bytes = 0
        self._last_tx = now
        self._last_rx = now
        deadline: float | None = None
        if options.deadline_ms is not None:
            deadline = now + options.deadline_ms / 1000
        if max_duration is not None:
            limit = now + max_duration
            deadline = limit if deadline is None else min(deadline, limit)
        self.deadline = deadline

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL

    # ------------------------------------------------------------------ credit

    def has_credit(self, size: int) -> bool:
        """Whether a data message of ``size`` bytes may be sent now."""
        if not self.v1:
            return True
        in_flight = self.sent_seq - self.acked_seq
        if in_flight >= self.limits.window_messages:
            return False
        return (
            in_flight == 0 or self.sent_bytes - self.acked_bytes + size <= self.limits.window_bytes
        )

    # ------------------------------------------------------------------ sending

    def credit(self) -> tuple[int, int]:
        """(messages, bytes) that may be sent now; a single message may exceed the
        bytes when nothing is in flight (see :meth:`has_credit`)."""
        limits = self.limits
        return (
            limits.window_messages - (self.sent_seq - self.acked_seq),
            limits.window_bytes - (self.sent_bytes - self.acked_bytes),
        )

    def send_pack(self, count: int, nbytes: int, now: float) -> int:
        """Count ``count`` items of ``nbytes`` payload bytes in all, about to be sent in
        one packed message; return the first item's sequence number.

        Call only when :attr:`pack` is true and :meth:`credit` allows ``count`` items
        and ``nbytes`` bytes (``count >= 2``; a single item goes as a plain message).

        Raises:
            ValueError: the pack does not fit in the credit (a driver bug).
        """
        items, nbytes_left = self.credit()
        if not self.pack or self.terminal or not 2 <= count <= items or nbytes > nbytes_left:
            raise ValueError(f"a pack of {count} items / {nbytes} bytes is not allowed now")
        first = self.sent_seq + 1
        self.sent_seq += count
        self.sent_bytes += nbytes
        self._last_tx = now
        return first

    def send_next(self, size: int, now: float) -> int:
        """Fast path of :meth:`has_credit` + :meth:`data_headers` for a v1 data message
        at the default position (``seq - 1``): count it and return its sequence number.

        Returns 0, counting nothing, when it may not go this way (no credit, a plain
        requester, or the stream is over); the driver then takes the general path.
        """
        if self.state is not _OPEN or not self.v1:
            return 0
        in_flight = self.sent_seq - self.acked_seq
        limits = self.limits
        if in_flight >= limits.window_messages or (
            in_flight and self.sent_bytes - self.acked_bytes + size > limits.window_bytes
        ):
            return 0
        seq = self.sent_seq = self.sent_seq + 1
        self.sent_bytes += size
        self._last_tx = now
        return seq

    def data_headers(self, size: int, pos: str | None, now: float) -> dict[str, str] | None:
        """Count a data message of ``size`` bytes about to be sent; return its headers.

        ``pos`` is the resume position when it is not ``seq - 1``. Call only when
        :meth:`has_credit` is true. None for a plain requester.
        """
        self.sent_seq += 1
        self.sent_bytes += size
        self._last_tx = now
        if not self.v1:
            return None
        headers = {HDR_SEQ: str(self.sent_seq)}
        if pos is not None:
            headers[HDR_POS] = pos
        if self.stream_id is not None:
            headers[HDR_ID] = self.stream_id
        return headers

    def pack_headers(self, seq: int, count: int, pos: str | None) -> dict[str, str]:
        """Headers of a packed message sent with :meth:`send_pack` (``pos``: the first
        item's position when it is not ``seq - 1``)."""
        headers = {HDR_SEQ: str(seq), HDR_PACK: str(count)}
        if pos is not None:
            headers[HDR_POS] = pos
        if self.stream_id is not None:
            headers[HDR_ID] = self.stream_id
        return headers

    def heartbeat_headers(self, now: float, *, another_follows: bool = False) -> dict[str, str]:
        """Headers of a heartbeat. ``another_follows``: the first of the two messages a
        stream through an account import opens with (``Ns-Next: 1``), so that a
        requester behind an import passing one reply fails at once instead of
        stalling."""
        self._last_tx = now
        headers = {HDR_CONTROL: CTL_HEARTBEAT, HDR_SEQ: str(self.sent_seq)}
        if self.stream_id is not None:
            headers[HDR_ID] = self.stream_id
            if another_follows:
                headers[HDR_NEXT] = "1"
        return headers

    def end_headers(self, now: float) -> dict[str, str] | None:
        """Finish the stream normally; headers of the end marker (None: plain requester).

        The first terminal state sticks: after a cancel the stream stays CANCELLED.
        """
        if self.state not in _TERMINAL:
            self.state = ResponderState.ENDED
        self._last_tx = now
        if not self.v1:
            return None
        if self.stream_id is not None:
            return {HDR_END: "1", HDR_SEQ: str(self.sent_seq), HDR_ID: self.stream_id}
        return {HDR_END: "1", HDR_SEQ: str(self.sent_seq)}

    def error_headers(
        self, message: str, code: int, retryable: bool, now: float
    ) -> dict[str, str] | None:
        """Finish the stream with an error; headers of the error marker.

        The NATS services headers carry the same text and code, so standard NATS
        tooling can read them. None for a plain requester. The first terminal state
        sticks, as in :meth:`end_headers`.
        """
        if self.state not in _TERMINAL:
            self.state = ResponderState.FAILED
        self._last_tx = now
        if not self.v1:
            return None
        headers = error_headers(self.sent_seq, message, code, retryable)
        if self.stream_id is not None:
            headers[HDR_ID] = self.stream_id
        return headers

    # ------------------------------------------------------------------ control

    def on_control(self, headers: dict[str, str] | None, now: float) -> Control:
        """A message arrived on this stream's control subject."""
        if self.state in _TERMINAL or not self.v1 or not headers:
            return Control.IGNORED
        kind = headers.get(HDR_CONTROL)
        if kind == CTL_CANCEL:
            self.state = ResponderState.CANCELLED
            return Control.CANCEL
        if kind not in (CTL_HEARTBEAT, CTL_ACK):
            return Control.IGNORED
        # Heartbeats and acks both carry the requester's cumulative ack: one without
        # a plausible one is noise (and no sign that the requester is alive).
        ack = parse_ack(headers.get(HDR_ACK))
        if ack is None:
            return Control.IGNORED
        seq, nbytes = ack
        if not (self.acked_seq <= seq <= self.sent_seq) or not (
            self.acked_bytes <= nbytes <= self.sent_bytes
        ):
            return Control.IGNORED
        self.acked_seq = seq
        self.acked_bytes = nbytes
        self._last_rx = now
        self._heard = True
        return Control.LIVENESS

    def cancel(self) -> None:
        """Stop the stream locally (the subscriber is closing, or the handler was cancelled)."""
        if self.state not in _TERMINAL:
            self.state = ResponderState.CANCELLED

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        if self.state in _TERMINAL:
            return None
        times: list[float] = []
        if self.deadline is not None:
            times.append(self.deadline)
        hb = self.limits.heartbeat
        if hb > 0:
            times.append(self._last_tx + hb)
            times.append(self._last_rx + hb * self.limits.stall_factor)
        return min(times) if times else None

    def on_timer(self, now: float) -> ResponderTimer:
        if self.state in _TERMINAL:
            return ResponderTimer.NOTHING
        if self.deadline is not None and now >= self.deadline:
            return ResponderTimer.DEADLINE
        hb = self.limits.heartbeat
        if hb > 0:
            if now >= self._last_rx + hb * self.limits.stall_factor:
                if not self._heard:
                    return ResponderTimer.UNREACHED  # error_headers() ends the stream
                self.state = ResponderState.CANCELLED
                return ResponderTimer.REQUESTER_GONE
            if now >= self._last_tx + hb:
                return ResponderTimer.HEARTBEAT
        return ResponderTimer.NOTHING

    def time_remaining(self, now: float) -> float | None:
        """Seconds until the stream's deadline (None: no deadline); never negative."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - now)
