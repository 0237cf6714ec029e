"""The requester's side of one stream attempt, as a state machine with no I/O.

The driver feeds it what happens (a reply arrived, the consumer took a message,
a timer fired, the caller cancelled) with the current time, and does what it
answers (deliver, ignore, send a control message, fail). One machine serves one
attempt; a retry builds a new machine from the previous one's :meth:`resume_point`.

Invariants (checked by the property tests):

* messages are delivered in sequence order, each at most once;
* the responder is never allowed more than the window in flight: an ack is only
  sent for messages the consumer has taken;
* a machine reaches exactly one terminal state (ENDED, FAILED or CANCELLED) and
  accepts nothing after it.
"""

from __future__ import annotations

from .._errors import (
    NoRespondersError,
    ProtocolViolationError,
    RequestTimeoutError,
    StalledError,
    StreamError,
    StreamFailure,
    StreamTimeoutError,
)
from ._credit import Credit
from ._states import TERMINAL, Reply, RequesterState, TimerAction
from ._wire import (
    CTL_CANCEL,
    CTL_HEARTBEAT,
    HDR_CONTROL,
    HDR_DEADLINE,
    HDR_END,
    HDR_HEARTBEAT,
    HDR_ID,
    HDR_NEXT,
    HDR_PACK,
    HDR_POS,
    HDR_RESUME,
    HDR_RETRYABLE,
    HDR_SEQ,
    HDR_SERVICE_ERROR_CODE,
    HDR_STATUS,
    HDR_VERSION,
    HDR_WINDOW,
    MAX_DEADLINE_MS,
    MAX_HEARTBEAT_MS,
    MAX_PACK,
    MAX_SEQ,
    MAX_WINDOW_BYTES,
    MAX_WINDOW_MESSAGES,
    MIN_HEARTBEAT_MS,
    PROTOCOL_VERSION,
    STREAM_END,
    STREAM_ERROR_PREFIX,
    STREAM_ID_RE,
    Resume,
    format_window,
    parse_int,
    parse_pos,
    pos_add,
    unpack_offsets,
)

__all__ = ["Reply", "RequesterMachine", "RequesterState", "TimerAction", "cancel_headers"]

_MAX_FOREIGN = 16  # foreign responders we remember (and cancel) per stream
# After a first message saying another follows at once (Ns-Next), seconds allowed for
# it: this, or half the stall limit when that is shorter (but not under the minimum).
NEXT_WAIT = 1.0
_NEXT_WAIT_MIN = 0.1
_RENEW_MIN = 1.0  # seconds between fresh reply subjects, at least
_STREAMING = RequesterState.STREAMING  # Enum member lookup is slow in Python 3.11


class RequesterMachine(Credit):
    """State of one stream attempt on the requester side.

    Args:
        now: current time in seconds (any monotonic clock; the same one throughout).
        subject: the request subject (for error messages).
        window_messages, window_bytes: credit granted to the responder.
        heartbeat: interval in seconds both peers use; 0 disables heartbeats.
        stall_factor: missed heartbeat intervals before the stream is declared stalled.
        request_timeout: longest silence allowed while the consumer waits (None: no
            limit), until a v1 responder with heartbeats binds the stream: its stall
            time applies from then on (its accept comes at once).
        deadline: absolute time the whole stream must end by (None: no limit).
        resume: continue after this message (a retry); None starts from the beginning.
        plain_end_empty: an empty message from a plain responder ends the stream too
            (the NATS request-many pattern, ADR-47); its end marker always does.
    """

    def __init__(
        self,
        now: float,
        *,
        subject: str = "",
        window_messages: int = 256,
        window_bytes: int = 8 << 20,
        heartbeat: float = 1.0,
        stall_factor: float = 3.0,
        request_timeout: float | None = None,
        deadline: float | None = None,
        resume: Resume | None = None,
        plain_end_empty: bool = False,
    ) -> None:
        if window_messages < 1 or window_bytes < 1:
            raise ValueError("window_messages and window_bytes must be at least 1")
        # Use what a responder will use: it clamps the window to its maxima (acking at
        # half of a larger window would stall it until the next heartbeat) and takes
        # a heartbeat between its bounds (rejecting a larger one outright).
        window_messages = min(window_messages, MAX_WINDOW_MESSAGES)
        window_bytes = min(window_bytes, MAX_WINDOW_BYTES)
        if heartbeat > 0:
            heartbeat = min(max(heartbeat, MIN_HEARTBEAT_MS / 1000), MAX_HEARTBEAT_MS / 1000)
        super().__init__(window_messages, window_bytes, resume)
        self.subject = subject
        self.heartbeat = heartbeat
        self.stall_factor = stall_factor
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.plain_end_empty = plain_end_empty
        self.state = RequesterState.WAITING
        self.error: StreamFailure | None = None
        self.control_subject: str | None = None  # the bound responder's, once known
        # Service-routed control (see docs/protocol.md): the bound stream's Ns-Id, which
        # every message of it carries; None when the reply subject identifies it.
        self.stream_id: str | None = None
        self.foreign_target: str | None = None  # where to cancel the last foreign reply
        self._next_by: float | None = None  # the message announced by Ns-Next is due
        self._renewed = now  # the last control message that carried a fresh reply subject
        self.v1: bool | None = None  # None until the first reply tells
        self._skip_legacy = resume.seq if resume else 0  # a plain responder restarts from 0
        self._legacy_count = 0
        self._last_rx = now
        self._last_tx = now
        self._waiting_since = now  # the caller awaits the first reply
        self._foreign: set[str] = set()
        # Item offsets of the last packed DELIVER's payload (see _wire.unpack_offsets).
        self.pack_offsets: list[int] | None = None
        self._responder_done = False  # it sent its end or error marker, or was told to stop
        self.duplicates = 0

    # ------------------------------------------------------------------ request

    def request_headers(self, now: float) -> dict[str, str]:
        """Headers for the request message (v1: version, window, heartbeat, deadline, resume)."""
        headers = {
            HDR_VERSION: PROTOCOL_VERSION,
            HDR_WINDOW: format_window(self.window_messages, self.window_bytes),
            HDR_HEARTBEAT: str(round(self.heartbeat * 1000)),
            HDR_PACK: "1",
        }
        if self.deadline is not None:
            left = round((self.deadline - now) * 1000)
            headers[HDR_DEADLINE] = str(min(MAX_DEADLINE_MS, max(0, left)))
        if self.resume is not None:
            headers[HDR_RESUME] = f"{self.resume.seq} {self.resume.pos}"
        return headers

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    # ------------------------------------------------------------------ replies

    def on_reply(
        self, now: float, headers: dict[str, str] | None, payload: bytes, reply_subject: str
    ) -> Reply:
        """Classify one message received on the stream's inbox.

        ``reply_subject`` is the message's reply field: v1 responders put their
        control subject there, which identifies them.
        """
        if self.state in TERMINAL:
            return Reply.DROP
        if headers is None:
            return self._on_plain(now, payload)
        status = headers.get(HDR_STATUS)
        if status is not None:
            if status == "503" and self.state is RequesterState.WAITING:
                return self._fail(NoRespondersError(self.subject))
            return Reply.DROP
        seq_s = headers.get(HDR_SEQ)
        if seq_s is None:
            # Headers, but none of ours: a plain peer whose publisher adds headers.
            return self._on_plain(now, payload)
        stream_id = headers.get(HDR_ID)
        if self.v1 is None:
            verdict = self._bind(now, headers, stream_id, reply_subject)
            if verdict is not None:
                return verdict
        elif not self.v1:
            return self._foreign_reply(reply_subject, stream_id)
        elif self.stream_id is not None:
            if stream_id != self.stream_id:
                return self._foreign_reply(reply_subject, stream_id)
            self._next_by = None
        elif (reply_subject or None) != self.control_subject:
            return self._foreign_reply(reply_subject, stream_id)
        self.state = RequesterState.STREAMING
        self._last_rx = now
        seq = parse_int(seq_s)
        if seq is None:
            return self._fail(ProtocolViolationError(f"malformed {HDR_SEQ} {seq_s[:40]!r}"))
        ctl = headers.get(HDR_CONTROL)
        if ctl is not None:
            if ctl == CTL_HEARTBEAT:
                if seq > self.received_seq:
                    return self._gap(seq)
                return Reply.DROP
            if ctl == CTL_CANCEL:
                return Reply.DROP
            return Reply.DROP
        if payload == STREAM_END and headers.get(HDR_END) is not None:
            if seq != self.received_seq:
                return self._gap(seq)
            self.state = RequesterState.ENDED
            self._responder_done = True
            return Reply.END
        if payload.startswith(STREAM_ERROR_PREFIX) and HDR_SERVICE_ERROR_CODE in headers:
            code = parse_int(headers.get(HDR_SERVICE_ERROR_CODE), 0, 999) or 500
            retryable = headers.get(HDR_RETRYABLE) == "1"
            return self._error_marker(payload, code, retryable)
        # Data.
        if seq != self.received_seq + 1:
            if seq <= self.received_seq:
                self.duplicates += 1
                return Reply.DROP
            return self._gap(seq)
        pos = headers.get(HDR_POS)
        if pos is not None and parse_pos(pos) is None:
            # It would come back in the retry's Ns-Resume header: refuse it here.
            return self._fail(ProtocolViolationError(f"malformed {HDR_POS} {pos[:40]!r}"))
        pack = headers.get(HDR_PACK)
        if pack is not None:
            return self._on_pack(seq, pack, pos, payload)
        in_flight = seq - self._acked_seq
        in_flight_bytes = self._received_bytes + len(payload) - self._acked_bytes
        if in_flight > self.window_messages or (
            in_flight > 1 and in_flight_bytes > self.window_bytes
        ):
            # Refused before counting it: received_seq stays what the consumer can take.
            return self._fail(
                ProtocolViolationError(
                    f"responder exceeded the flow-control window ({in_flight} messages, "
                    f"{in_flight_bytes} bytes in flight)",
                    retryable=False,
                )
            )
        self.received_seq = seq
        self._received_bytes += len(payload)
        self._largest = max(self._largest, len(payload))
        return Reply.DELIVER

    def _bind(
        self, now: float, headers: dict[str, str], stream_id: str | None, reply_subject: str
    ) -> Reply | None:
        """The first v1 message binds the stream to its responder: by its reply
        subject (the responder's control subject), or, without one, by its Ns-Id
        (control messages then go to ``<request subject>.<id>``)."""
        self.v1 = True
        if reply_subject:
            self.control_subject = reply_subject
            return None
        if stream_id is None:
            return None  # nowhere to send control messages: heartbeats, acks, cancel
        if STREAM_ID_RE.fullmatch(stream_id) is None:
            return self._fail(ProtocolViolationError(f"malformed {HDR_ID} {stream_id[:40]!r}"))
        self.stream_id = stream_id
        self.control_subject = f"{self.subject}.{stream_id}"
        if headers.get(HDR_NEXT) == "1":
            # Sent right behind the first: wait well under the stall limit for it.
            wait = NEXT_WAIT
            if self.heartbeat > 0:
                wait = max(_NEXT_WAIT_MIN, min(wait, self.heartbeat * self.stall_factor / 2))
            self._next_by = now + wait
        return None

    def _on_pack(self, seq: int, count_s: str, pos: str | None, payload: bytes) -> Reply:
        """A packed data message: items ``seq`` to ``seq + count - 1``, counted and
        flow-controlled one by one; where they lie is left in :attr:`pack_offsets`."""
        count = parse_int(count_s, 1, MAX_PACK)
        unpacked = None if count is None else unpack_offsets(payload, count)
        if count is None or unpacked is None:
            return self._fail(
                ProtocolViolationError(f"malformed packed message ({HDR_PACK} {count_s[:40]!r})")
            )
        if pos is not None and pos_add(pos, count - 1) is None:
            return self._fail(ProtocolViolationError(f"{HDR_POS} {pos!r} overflows in the pack"))
        last = seq + count - 1
        nbytes = len(payload) - 4 * count
        in_flight = last - self._acked_seq
        if (
            last > MAX_SEQ
            or in_flight > self.window_messages
            or (
                in_flight > 1
                and self._received_bytes + nbytes - self._acked_bytes > self.window_bytes
            )
        ):
            return self._fail(
                ProtocolViolationError(
                    f"responder exceeded the flow-control window ({in_flight} messages, "
                    f"{self._received_bytes + nbytes - self._acked_bytes} bytes in flight)",
                    retryable=False,
                )
            )
        self.received_seq = last
        self._received_bytes += nbytes
        offsets, largest = unpacked
        if largest > self._largest:
            self._largest = largest
        packs = self._packs
        while packs and packs[0][1] < self.delivered_seq:
            packs.popleft()  # the consumer is past it: no position will come from it
        packs.append((seq, last, pos))
        self.pack_offsets = offsets
        return Reply.DELIVER

    def on_data(self, now: float, seq: int, size: int) -> bool:
        """Fast path of :meth:`on_reply` for the commonest message: data from the bound
        responder (its reply subject is ``control_subject``, the driver checks) whose
        only header is ``Ns-Seq: seq``, with a ``size``-byte payload.

        True: the message is accepted exactly as :meth:`on_reply` would (DELIVER).
        False: nothing was done; the driver must call :meth:`on_reply`.
        """
        if (
            seq != self.received_seq + 1
            or seq > MAX_SEQ
            or self.state is not _STREAMING
            or not self.v1
            or self.control_subject is None
        ):
            return False
        in_flight = seq - self._acked_seq
        if in_flight > self.window_messages or (
            in_flight > 1 and self._received_bytes + size - self._acked_bytes > self.window_bytes
        ):
            return False
        self.received_seq = seq
        self._received_bytes += size
        self._last_rx = now
        if size > self._largest:
            self._largest = size
        return True

    def _on_plain(self, now: float, payload: bytes) -> Reply:
        """A message without natstream headers: the plain in-band protocol."""
        if self.v1 is None:
            self.v1 = False
        elif self.v1:
            return Reply.DROP  # a plain responder talking over our bound v1 responder
        self.state = RequesterState.STREAMING
        self._last_rx = now
        if payload == STREAM_END or (not payload and self.plain_end_empty):
            self.state = RequesterState.ENDED
            self._responder_done = True
            return Reply.END
        if payload.startswith(STREAM_ERROR_PREFIX):
            return self._error_marker(payload, 500, True)
        self._legacy_count += 1
        if self._legacy_count <= self._skip_legacy:
            self.duplicates += 1
            return Reply.DROP
        self.received_seq += 1
        self._received_bytes += len(payload)
        return Reply.DELIVER

    def _error_marker(self, payload: bytes, code: int, retryable: bool) -> Reply:
        text = payload[len(STREAM_ERROR_PREFIX) :].decode("utf-8", "replace")
        self.error = StreamError(text, code=code, retryable=retryable)
        self.state = RequesterState.FAILED
        self._responder_done = True
        return Reply.ERROR

    def _foreign_reply(self, reply_subject: str, stream_id: str | None) -> Reply:
        """A message of another responder: cancel it once (at :attr:`foreign_target`)
        when it can be told, else ignore it."""
        target = reply_subject
        if not target and stream_id is not None and STREAM_ID_RE.fullmatch(stream_id):
            target = f"{self.subject}.{stream_id}"
        if not target or target in self._foreign or len(self._foreign) >= _MAX_FOREIGN:
            return Reply.DROP
        self._foreign.add(target)
        self.foreign_target = target
        return Reply.CANCEL_FOREIGN

    def _gap(self, seq: int) -> Reply:
        return self._fail(
            ProtocolViolationError(
                f"sequence gap on {self.subject!r}: expected {self.received_seq + 1}, got {seq}"
            )
        )

    def _fail(self, error: StreamFailure) -> Reply:
        self.error = error
        self.state = RequesterState.FAILED
        return Reply.FAIL

    # ------------------------------------------------------------------ consumer

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`on_timer` has something to do; None for never."""
        if self.state in TERMINAL:
            return None
        times: list[float] = []
        if self.deadline is not None:
            times.append(self.deadline)
        if (
            self._waiting_since is not None
            and self.request_timeout is not None
            and not self.heartbeating()
        ):
            times.append(max(self._last_rx, self._waiting_since) + self.request_timeout)
        if self._next_by is not None:
            times.append(self._next_by)
        if self.v1 and self.heartbeat > 0:
            times.append(self._last_rx + self.heartbeat * self.stall_factor)
            if self.control_subject is not None:
                times.append(self._last_tx + self.heartbeat)
        return min(times) if times else None

    def heartbeating(self) -> bool:
        """Whether the stream is bound to a v1 responder with heartbeats on: its
        silence is then judged by the stall rule alone (it sends something every
        interval while alive), never by ``request_timeout``, which may be shorter
        than an interval."""
        return bool(self.v1) and self.heartbeat > 0 and self.control_subject is not None

    def on_timer(self, now: float) -> TimerAction:
        """Check the clocks at ``now``: deadline, silence, stall, heartbeat due."""
        if self.state in TERMINAL:
            return TimerAction(None, False)
        if self.deadline is not None and now >= self.deadline:
            self._fail(StreamTimeoutError(f"stream on {self.subject!r} passed its deadline"))
            return TimerAction(None, True)
        if (
            self._waiting_since is not None
            and self.request_timeout is not None
            and now >= max(self._last_rx, self._waiting_since) + self.request_timeout
            and not self.heartbeating()
        ):
            what = "first reply" if self.state is RequesterState.WAITING else "next reply"
            self._fail(
                RequestTimeoutError(
                    f"no {what} on {self.subject!r} within {self.request_timeout:g} s"
                )
            )
            return TimerAction(None, True)
        if self._next_by is not None and now >= self._next_by:
            self._fail(
                ProtocolViolationError(
                    f"only the first message of the stream on {self.subject!r} arrived: it "
                    "crosses an account import that passes one reply, the server's default "
                    "(export the service with response_type: stream)",
                    retryable=False,
                )
            )
            return TimerAction(None, True)
        if self.v1 and self.heartbeat > 0:
            if now >= self._last_rx + self.heartbeat * self.stall_factor:
                self._fail(
                    StalledError(
                        f"responder on {self.subject!r} sent nothing for "
                        f"{now - self._last_rx:.3g} s (heartbeat {self.heartbeat:g} s)"
                    )
                )
                return TimerAction(None, True)
            if self.control_subject is not None and now >= self._last_tx + self.heartbeat:
                self._last_tx = now
                return TimerAction(self._ack_headers(CTL_HEARTBEAT), False)
        return TimerAction(None, False)

    def renewal_due(self, now: float) -> bool:
        """Whether the control message about to go out should carry a fresh reply
        subject (once per heartbeat interval, at least every second): a responder
        whose permission to reply expires (``allow_responses``) is granted anew by
        each, and replies to the latest. Marks it done when True."""
        if now - self._renewed < max(self.heartbeat, _RENEW_MIN):
            return False
        self._renewed = now
        return True

    def on_connection_lost(self, error: StreamFailure) -> None:
        """The connection broke: the stream fails with ``error`` (retryable)."""
        if self.state not in TERMINAL:
            self._fail(error)

    # ------------------------------------------------------------------ cancel

    def cancel(self) -> dict[str, str] | None:
        """The caller stops the stream. Returns the headers of a cancel message to
        publish to ``control_subject`` when the responder can be told, else None.

        After a failure found on this side (gap, stall, timeout, window violation,
        connection lost) the responder may still be running: the cancel is returned
        once, and the state stays FAILED.
        """
        if self._responder_done:
            return None
        self._responder_done = True
        if self.state not in TERMINAL:
            self.state = RequesterState.CANCELLED
        if self.v1 and self.control_subject is not None:
            return {HDR_CONTROL: CTL_CANCEL}
        return None


def cancel_headers() -> dict[str, str]:
    """Headers of a cancel sent to a responder we did not pick (a second responder)."""
    return {HDR_CONTROL: CTL_CANCEL}
