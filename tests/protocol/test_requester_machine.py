"""RequesterMachine on its own: each event, each timer, and hostile replies."""

from __future__ import annotations

import copy
from collections import deque
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natstream._errors import (
    ConnectionLostError,
    NoRespondersError,
    ProtocolViolationError,
    RequestTimeoutError,
    StalledError,
    StreamError,
    StreamFailure,
    StreamTimeoutError,
)
from natstream._ext import cstream
from natstream._protocol import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Reply,
    RequesterMachine,
    RequesterState,
    Resume,
    TimerAction,
    cancel_headers,
    parse_request_headers,
)
from natstream._protocol._requester import _MAX_FOREIGN
from natstream._protocol._wire import (
    CTL_ACK,
    CTL_CANCEL,
    CTL_HEARTBEAT,
    HDR_ACK,
    HDR_CONTROL,
    HDR_DEADLINE,
    HDR_END,
    HDR_POS,
    HDR_RESUME,
    HDR_RETRYABLE,
    HDR_SEQ,
    HDR_SERVICE_ERROR,
    HDR_SERVICE_ERROR_CODE,
    HDR_STATUS,
    HDR_VERSION,
    HDR_WINDOW,
    MAX_SEQ,
    pack_items,
    parse_ack,
)

from .conftest import PROFILE

CI = settings.get_profile(PROFILE)
CTL = "_INBOX.ctl.responder-a"
OTHER = "_INBOX.ctl.responder-b"
TERMINAL = {RequesterState.ENDED, RequesterState.FAILED, RequesterState.CANCELLED}


def accept(seq: int = 0) -> dict[str, str]:
    return {HDR_CONTROL: CTL_HEARTBEAT, HDR_SEQ: str(seq)}


def data(seq: int, pos: str | None = None) -> dict[str, str]:
    return {HDR_SEQ: str(seq)} if pos is None else {HDR_SEQ: str(seq), HDR_POS: pos}


def end(seq: int) -> dict[str, str]:
    return {HDR_END: "1", HDR_SEQ: str(seq)}


def error(seq: int, code: str = "503", retry: str = "1") -> dict[str, str]:
    return {
        HDR_SEQ: str(seq),
        HDR_SERVICE_ERROR: "busy",
        HDR_SERVICE_ERROR_CODE: code,
        HDR_RETRYABLE: retry,
    }


def bound(now: float = 0.0, **kw: Any) -> RequesterMachine:
    """A machine whose v1 responder has accepted the stream (at ``now``)."""
    m = RequesterMachine(now, subject="svc", **kw)
    assert m.on_reply(now, accept(m.received_seq), b"", CTL) is Reply.DROP
    return m


# ---------------------------------------------------------------- request


def test_request_headers() -> None:
    m = RequesterMachine(10.0, window_messages=4, window_bytes=100, heartbeat=0.5, deadline=12.5)
    h = m.request_headers(11.0)
    assert h == {
        HDR_VERSION: "1",
        HDR_WINDOW: "4 100",
        "Ns-Hb": "500",
        HDR_DEADLINE: "1500",
        "Ns-Pack": "1",
    }
    opts = parse_request_headers(h)
    assert (opts.window_messages, opts.window_bytes, opts.heartbeat_ms) == (4, 100, 500)
    assert opts.pack
    assert HDR_DEADLINE not in RequesterMachine(0.0).request_headers(0.0)
    assert RequesterMachine(0.0, deadline=1.0).request_headers(5.0)[HDR_DEADLINE] == "0"


def test_request_headers_carry_resume() -> None:
    m = RequesterMachine(0.0, resume=Resume(7, "2.3"))
    assert m.request_headers(0.0)[HDR_RESUME] == "7 2.3"
    assert m.received_seq == m.delivered_seq == 7


@pytest.mark.parametrize(("messages", "nbytes"), [(0, 1), (1, 0), (-1, 5)])
def test_window_must_be_positive(messages: int, nbytes: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RequesterMachine(0.0, window_messages=messages, window_bytes=nbytes)


def test_initial_state() -> None:
    m = RequesterMachine(0.0)
    assert m.state is RequesterState.WAITING
    assert not m.terminal
    assert m.v1 is None
    assert m.control_subject is None
    assert m.error is None
    assert m.resume_point() is None


# ---------------------------------------------------------------- v1 replies


def test_accept_binds_the_responder() -> None:
    m = bound()
    assert m.v1 is True
    assert m.control_subject == CTL
    assert m.state is RequesterState.STREAMING


def test_normal_stream() -> None:
    m = bound()
    for seq in (1, 2, 3):
        assert m.on_reply(0.1, data(seq), b"x" * seq, CTL) is Reply.DELIVER
    assert m.on_reply(0.2, end(3), STREAM_END, CTL) is Reply.END
    assert m.state is RequesterState.ENDED
    assert m.terminal
    assert m.error is None
    # Data already queued is still taken after the end marker.
    for _ in range(3):
        m.on_delivered(None, 1)
    assert m.delivered_seq == 3
    assert m.resume_point() == Resume(3, "2")


def test_nothing_is_accepted_after_the_end() -> None:
    m = bound()
    m.on_reply(0.0, end(0), STREAM_END, CTL)
    for headers, payload in [(data(1), b"x"), (end(0), STREAM_END), (None, b"x"), ({}, b"")]:
        assert m.on_reply(0.0, headers, payload, CTL) is Reply.DROP
    assert m.on_timer(1e9) == TimerAction(None, False)
    assert m.next_deadline() is None
    assert m.cancel() is None
    m.on_connection_lost(ConnectionLostError("x"))
    assert m.state is RequesterState.ENDED
    assert m.error is None


def test_data_that_looks_like_a_marker_is_data_for_v1() -> None:
    m = bound()
    assert m.on_reply(0.0, data(1), STREAM_END, CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(2), STREAM_ERROR_PREFIX + b"no", CTL) is Reply.DELIVER
    assert m.state is RequesterState.STREAMING


def test_duplicate_is_dropped() -> None:
    m = bound()
    assert m.on_reply(0.0, data(1), b"a", CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(1), b"a", CTL) is Reply.DROP
    assert m.on_reply(0.0, data(2), b"b", CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(1), b"a", CTL) is Reply.DROP
    assert m.duplicates == 2
    assert m.received_seq == 2


@pytest.mark.parametrize(
    ("headers", "payload"),
    [(data(3), b"x"), (accept(2), b""), (end(2), STREAM_END), (end(0), STREAM_END)],
)
def test_gap_fails_retryably(headers: dict[str, str], payload: bytes) -> None:
    m = bound()
    m.on_reply(0.0, data(1), b"a", CTL)
    assert m.on_reply(0.0, headers, payload, CTL) is Reply.FAIL
    assert m.state is RequesterState.FAILED
    assert isinstance(m.error, ProtocolViolationError)
    assert m.error.retryable
    assert m.received_seq == 1


def test_old_heartbeat_is_not_a_gap() -> None:
    m = bound()
    m.on_reply(0.0, data(1), b"a", CTL)
    assert m.on_reply(0.0, accept(0), b"", CTL) is Reply.DROP
    assert m.on_reply(0.0, accept(1), b"", CTL) is Reply.DROP
    assert m.on_reply(0.0, {HDR_CONTROL: CTL_CANCEL, HDR_SEQ: "1"}, b"", CTL) is Reply.DROP
    assert m.on_reply(0.0, {HDR_CONTROL: "bogus", HDR_SEQ: "1"}, b"", CTL) is Reply.DROP
    assert m.state is RequesterState.STREAMING


@pytest.mark.parametrize("seq", ["", "-1", "x", "1.0", str(MAX_SEQ + 1), "\u0663"])
def test_malformed_sequence_fails(seq: str) -> None:
    m = bound()
    assert m.on_reply(0.0, {HDR_SEQ: seq}, b"x", CTL) is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)


def test_error_marker() -> None:
    m = bound()
    assert m.on_reply(0.0, error(0), STREAM_ERROR_PREFIX + b"busy", CTL) is Reply.ERROR
    assert m.state is RequesterState.FAILED
    assert isinstance(m.error, StreamError)
    assert (m.error.message, m.error.code, m.error.retryable) == ("busy", 503, True)


@pytest.mark.parametrize(
    ("code", "retry", "expected"),
    [("400", "0", (400, False)), ("x", "1", (500, True)), ("5000", "", (500, False))],
)
def test_error_marker_code_and_retryable(code: str, retry: str, expected: tuple[int, bool]) -> None:
    m = bound()
    m.on_reply(0.0, error(0, code, retry), STREAM_ERROR_PREFIX + b"\xff bad utf-8", CTL)
    assert isinstance(m.error, StreamError)
    assert (m.error.code, m.error.retryable) == expected
    assert m.error.message == "\ufffd bad utf-8"


def test_error_reply_without_reply_subject_binds_nothing() -> None:
    """A 503 busy or 400 bad-request rejection carries no control subject."""
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, error(0), STREAM_ERROR_PREFIX + b"busy", "") is Reply.ERROR
    assert m.control_subject is None
    assert m.cancel() is None


def test_v1_responder_without_control_subject_keeps_its_stream() -> None:
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, accept(), b"", "") is Reply.DROP
    assert m.on_reply(0.0, data(1), b"a", "") is Reply.DELIVER
    assert m.on_reply(0.0, end(1), STREAM_END, "") is Reply.END
    assert m.on_delivered(None, 1) is None  # nowhere to send an ack


# ---------------------------------------------------------------- plain peers


def test_plain_responder() -> None:
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, None, b"a", "") is Reply.DELIVER
    assert m.v1 is False
    assert m.state is RequesterState.STREAMING
    assert m.on_reply(0.0, {"Trace": "x"}, b"b", "") is Reply.DELIVER  # headers, none ours
    assert m.on_reply(0.0, None, STREAM_END, "") is Reply.END
    assert m.terminal
    assert m.next_deadline() is None


def test_plain_error_marker_is_retryable_500() -> None:
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, None, STREAM_ERROR_PREFIX + b"boom", "") is Reply.ERROR
    assert isinstance(m.error, StreamError)
    assert (m.error.message, m.error.code, m.error.retryable) == ("boom", 500, True)


def test_an_empty_plain_message_ends_the_stream_when_asked() -> None:
    """ADR-47 responders (request-many) end with an empty message."""
    m = RequesterMachine(0.0, plain_end_empty=True)
    assert m.on_reply(0.0, None, b"a", "") is Reply.DELIVER
    assert m.on_reply(0.0, None, b"", "") is Reply.END
    assert m.state is RequesterState.ENDED
    default = RequesterMachine(0.0)
    assert default.on_reply(0.0, None, b"", "") is Reply.DELIVER  # plain data, by default
    assert default.on_reply(0.0, None, STREAM_END, "") is Reply.END


def test_an_empty_v1_message_is_data_whatever_plain_end_says() -> None:
    m = RequesterMachine(0.0, plain_end_empty=True)
    assert m.on_reply(0.0, {HDR_SEQ: "1"}, b"", CTL) is Reply.DELIVER
    assert m.state is RequesterState.STREAMING


def test_plain_responder_gets_no_acks_heartbeats_or_cancel() -> None:
    m = RequesterMachine(0.0, window_messages=1, heartbeat=0.1, stall_factor=2)
    for _ in range(5):  # no window for a plain peer
        assert m.on_reply(0.0, None, b"x" * 100, "") is Reply.DELIVER
        assert m.on_delivered(None, 100) is None
    assert m.next_deadline() is None  # no stall detection: a plain peer sends no heartbeats
    assert m.on_timer(100.0) == TimerAction(None, False)
    assert m.cancel() is None
    assert m.state is RequesterState.CANCELLED


def test_plain_retry_skips_what_was_delivered() -> None:
    m = RequesterMachine(0.0, resume=Resume(2, "1"))
    assert m.on_reply(0.0, None, b"a", "") is Reply.DROP
    assert m.on_reply(0.0, None, b"b", "") is Reply.DROP
    assert m.on_reply(0.0, None, b"c", "") is Reply.DELIVER
    assert m.duplicates == 2
    assert m.received_seq == 3
    m.on_delivered(None, 1)
    assert m.resume_point() == Resume(3, "2")


# ---------------------------------------------------------------- no responders, others


def test_no_responders_status_fails_before_any_reply() -> None:
    m = RequesterMachine(0.0, subject="svc")
    assert m.on_reply(0.0, {HDR_STATUS: "503"}, b"", "") is Reply.FAIL
    assert isinstance(m.error, NoRespondersError)
    assert m.error.retryable


def test_status_messages_are_otherwise_ignored() -> None:
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, {HDR_STATUS: "408"}, b"", "") is Reply.DROP
    assert m.state is RequesterState.WAITING
    m = bound()
    assert m.on_reply(0.0, {HDR_STATUS: "503"}, b"", "") is Reply.DROP
    assert m.state is RequesterState.STREAMING


def test_second_responder_is_cancelled_once_and_ignored() -> None:
    m = bound()
    assert m.on_reply(0.0, accept(), b"", OTHER) is Reply.CANCEL_FOREIGN
    assert m.on_reply(0.0, data(1), b"b", OTHER) is Reply.DROP
    assert m.on_reply(0.0, data(1), b"a", CTL) is Reply.DELIVER
    assert m.on_reply(0.0, end(1), STREAM_END, OTHER) is Reply.DROP
    assert m.on_reply(0.0, data(2), b"x", "") is Reply.DROP  # no reply subject: nothing to cancel
    assert m.state is RequesterState.STREAMING
    assert m.received_seq == 1
    assert cancel_headers() == {HDR_CONTROL: CTL_CANCEL}


def test_foreign_responders_remembered_are_bounded() -> None:
    m = bound()
    verdicts = [m.on_reply(0.0, accept(), b"", f"x.{i}") for i in range(_MAX_FOREIGN + 5)]
    assert verdicts.count(Reply.CANCEL_FOREIGN) == _MAX_FOREIGN
    assert len(m._foreign) == _MAX_FOREIGN


def test_plain_and_v1_responders_do_not_mix() -> None:
    m = bound()
    assert m.on_reply(0.0, None, b"plain", "") is Reply.DROP
    assert m.on_reply(0.0, None, STREAM_END, "") is Reply.DROP
    p = RequesterMachine(0.0)
    p.on_reply(0.0, None, b"plain", "")
    assert p.on_reply(0.0, accept(), b"", CTL) is Reply.CANCEL_FOREIGN
    assert p.on_reply(0.0, data(1), b"x", CTL) is Reply.DROP
    assert p.received_seq == 1


# ---------------------------------------------------------------- flow control


def test_responder_beyond_the_message_window_fails_without_retry() -> None:
    m = bound(window_messages=2)
    assert m.on_reply(0.0, data(1), b"", CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(2), b"", CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(3), b"", CTL) is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)
    assert not m.error.retryable


def test_responder_beyond_the_byte_window_fails() -> None:
    m = bound(window_bytes=10)
    assert m.on_reply(0.0, data(1), b"x" * 6, CTL) is Reply.DELIVER
    assert m.on_reply(0.0, data(2), b"x" * 5, CTL) is Reply.FAIL
    assert "window" in str(m.error)


def test_a_refused_message_is_not_counted() -> None:
    """Found by the fuzzing run: the message over the window was counted as received."""
    m = bound(window_messages=1)
    m.on_reply(0.0, data(1), b"a", CTL)
    assert m.on_reply(0.0, data(2), b"b", CTL) is Reply.FAIL
    assert m.received_seq == 1


def test_a_message_larger_than_the_window_moves_alone() -> None:
    m = bound(window_bytes=10)
    assert m.on_reply(0.0, data(1), b"x" * 1000, CTL) is Reply.DELIVER
    ack = m.on_delivered(None, 1000)
    assert ack is not None
    assert parse_ack(ack[HDR_ACK]) == (1, 1000)
    assert m.on_reply(0.0, data(2), b"x" * 1000, CTL) is Reply.DELIVER


def test_ack_at_half_the_message_window() -> None:
    m = bound(window_messages=4, window_bytes=1 << 20)
    for seq in range(1, 5):
        m.on_reply(0.0, data(seq), b"x", CTL)
    assert m.on_delivered(None, 1) is None
    assert m.on_delivered(None, 1) == {HDR_CONTROL: CTL_ACK, HDR_ACK: "2 2"}
    assert m.on_delivered(None, 1) is None
    assert m.on_delivered(None, 1) == {HDR_CONTROL: CTL_ACK, HDR_ACK: "4 4"}


def test_ack_at_half_the_byte_window() -> None:
    m = bound(window_messages=100, window_bytes=100)
    for seq in range(1, 4):
        m.on_reply(0.0, data(seq), b"x" * 30, CTL)
    assert m.on_delivered(None, 30) is None
    assert m.on_delivered(None, 30) == {HDR_CONTROL: CTL_ACK, HDR_ACK: "2 60"}


def test_window_is_clamped_to_what_a_responder_grants() -> None:
    m = RequesterMachine(0.0, window_messages=10**9, window_bytes=10**15)
    opts = parse_request_headers(m.request_headers(0.0))
    assert (m.window_messages, m.window_bytes) == (opts.window_messages, opts.window_bytes)


def test_ack_counts_from_the_resume_point() -> None:
    m = bound(window_messages=2, resume=Resume(10, "9"))
    m.on_reply(0.0, data(11), b"abc", CTL)
    assert m.on_delivered(data(11), 3) == {HDR_CONTROL: CTL_ACK, HDR_ACK: "11 3"}


def test_no_ack_after_the_stream_is_over() -> None:
    m = bound(window_messages=2)
    m.on_reply(0.0, data(1), b"a", CTL)
    m.on_reply(0.0, end(1), STREAM_END, CTL)
    assert m.on_delivered(None, 1) is None


# ---------------------------------------------------------------- timers


def test_heartbeat_carries_the_ack_and_is_paced_by_sends() -> None:
    m = bound(0.0, heartbeat=1.0, stall_factor=3.0)
    m.on_reply(0.2, data(1), b"abc", CTL)
    m.on_delivered(None, 3)
    assert m.next_deadline() == 1.0
    action = m.on_timer(1.0)
    assert action == TimerAction({HDR_CONTROL: CTL_HEARTBEAT, HDR_ACK: "1 3"}, False)
    assert m.next_deadline() == 2.0
    m.mark_sent(1.5)  # an ack went out: the next heartbeat is a full interval later
    assert m.on_timer(2.0) == TimerAction(None, False)
    assert m.next_deadline() == 2.5


def test_stall_after_stall_factor_intervals_of_silence() -> None:
    m = bound(0.0, heartbeat=1.0, stall_factor=3.0)
    m.on_reply(1.0, accept(), b"", CTL)  # any message, heartbeats included, is life
    for t in (2.0, 3.0, 3.99):
        assert not m.on_timer(t).fail
    assert m.next_deadline() == pytest.approx(4.0)
    action = m.on_timer(4.0)
    assert action.fail
    assert action.control is None
    assert isinstance(m.error, StalledError)
    assert m.error.retryable
    assert isinstance(m.error, TimeoutError)


def test_no_stall_detection_before_the_first_reply_or_with_heartbeats_off() -> None:
    m = RequesterMachine(0.0, heartbeat=1.0, stall_factor=3.0)
    assert m.next_deadline() is None
    assert m.on_timer(1e6) == TimerAction(None, False)
    m = bound(0.0, heartbeat=0.0)
    assert m.next_deadline() is None
    assert m.on_timer(1e6) == TimerAction(None, False)


def test_request_timeout_waiting_for_the_first_reply() -> None:
    m = RequesterMachine(0.0, subject="svc", request_timeout=2.0)
    assert m.next_deadline() == 2.0
    assert not m.on_timer(1.999).fail
    assert m.on_timer(2.0).fail
    assert isinstance(m.error, RequestTimeoutError)
    assert "first reply" in str(m.error)


def test_request_timeout_yields_to_the_stall_rule_once_a_heartbeating_responder_binds() -> None:
    """``request_timeout`` shorter than the heartbeat interval: it bounds the wait for
    the accept; once bound, only the stall rule judges the responder's silence."""
    m = RequesterMachine(0.0, subject="svc", heartbeat=1.0, stall_factor=3.0, request_timeout=0.5)
    assert m.next_deadline() == 0.5
    assert m.on_reply(0.01, accept(), b"", CTL) is Reply.DROP
    assert m.next_deadline() == 1.0  # our heartbeat, not the request timeout (0.51)
    for t in (0.6, 1.0, 1.5, 2.0, 3.0):
        assert not m.on_timer(t).fail
    assert m.on_timer(3.01).fail
    assert isinstance(m.error, StalledError)


def test_request_timeout_still_bounds_the_wait_for_the_accept() -> None:
    m = RequesterMachine(0.0, subject="svc", heartbeat=1.0, request_timeout=0.5)
    assert m.on_timer(0.5).fail
    assert isinstance(m.error, RequestTimeoutError)


def test_request_timeout_counts_only_while_the_consumer_waits() -> None:
    m = bound(0.0, heartbeat=0.0, request_timeout=2.0)
    m.on_reply(0.5, data(1), b"a", CTL)
    m.consumer_busy()  # the handler runs for a long time
    assert m.next_deadline() is None
    assert not m.on_timer(100.0).fail
    m.on_delivered(None, 1)
    m.consumer_waiting(100.0)
    m.consumer_waiting(101.0)  # still the same wait
    assert m.next_deadline() == 102.0
    m.on_reply(101.5, data(2), b"b", CTL)  # a reply pushes the timeout back
    assert m.next_deadline() == 103.5
    assert not m.on_timer(103.4).fail
    assert m.on_timer(103.5).fail
    assert isinstance(m.error, RequestTimeoutError)
    assert "next reply" in str(m.error)


def test_consumer_back_restarts_the_silence_after_a_direct_call() -> None:
    m = bound(0.0, heartbeat=0.0, request_timeout=2.0)
    m.consumer_waiting(0.0)
    assert m.on_data(1.0, 1, 1)  # taken by a handler called as it arrived...
    m.on_delivered(None, 1)
    m.consumer_back(2.5)  # ...which returned 1.5 s later
    assert m.next_deadline() == 4.5
    assert not m.on_timer(4.4).fail
    m.consumer_back(4.0)  # a later call: it moves, also backwards (no earlier wait kept)
    assert m.next_deadline() == 6.0
    assert m.on_timer(6.0).fail
    assert isinstance(m.error, RequestTimeoutError)


def test_heartbeats_keep_a_slow_responder_alive_past_request_timeout() -> None:
    m = bound(0.0, heartbeat=1.0, request_timeout=2.0)
    m.consumer_waiting(0.0)
    for t in range(1, 20):
        m.on_reply(float(t), accept(), b"", CTL)
        assert not m.on_timer(float(t) + 0.5).fail
    assert not m.terminal


def test_deadline() -> None:
    m = bound(0.0, heartbeat=1.0, deadline=5.0, request_timeout=1.0)
    m.consumer_busy()
    m.on_reply(4.5, accept(), b"", CTL)
    due = m.next_deadline()
    assert due is not None
    assert due <= 5.0
    action = m.on_timer(5.0)
    assert action.fail
    assert isinstance(m.error, StreamTimeoutError)
    assert not m.error.retryable


def test_timer_after_terminal_does_nothing() -> None:
    m = bound(0.0, heartbeat=1.0)
    m.on_connection_lost(ConnectionLostError("gone"))
    assert m.next_deadline() is None
    assert m.on_timer(100.0) == TimerAction(None, False)


# ---------------------------------------------------------------- cancel, connection


def test_cancel_tells_a_bound_v1_responder() -> None:
    m = bound()
    assert m.cancel() == {HDR_CONTROL: CTL_CANCEL}
    assert m.state is RequesterState.CANCELLED
    assert m.cancel() is None


def test_cancel_before_any_reply() -> None:
    m = RequesterMachine(0.0)
    assert m.cancel() is None
    assert m.state is RequesterState.CANCELLED
    assert m.on_reply(0.0, accept(), b"", CTL) is Reply.DROP


def test_a_local_failure_still_tells_the_responder_to_stop() -> None:
    """After a gap, a stall or a timeout the responder is still running: closing the
    attempt must cancel it rather than leave it to notice missing heartbeats."""
    m = bound()
    m.on_reply(0.0, data(2), b"x", CTL)
    assert m.state is RequesterState.FAILED
    assert m.cancel() == {HDR_CONTROL: CTL_CANCEL}
    assert m.state is RequesterState.FAILED  # the outcome stays the failure


@pytest.mark.parametrize(
    ("headers", "payload"), [(end(0), STREAM_END), (error(0), STREAM_ERROR_PREFIX + b"x")]
)
def test_no_cancel_once_the_responder_finished(headers: dict[str, str], payload: bytes) -> None:
    m = bound()
    m.on_reply(0.0, headers, payload, CTL)
    assert m.cancel() is None


def test_connection_lost() -> None:
    m = bound()
    err = ConnectionLostError("lost")
    m.on_connection_lost(err)
    assert m.state is RequesterState.FAILED
    assert m.error is err
    m.on_connection_lost(ConnectionLostError("again"))
    assert m.error is err


# ---------------------------------------------------------------- resume point


def test_resume_point_follows_positions() -> None:
    m = bound()
    m.on_reply(0.0, data(1), b"a", CTL)
    m.on_reply(0.0, data(2, "4.0"), b"b", CTL)
    m.on_reply(0.0, data(3), b"c", CTL)
    assert m.resume_point() is None  # received is not delivered
    m.on_delivered(data(1), 1)
    assert m.resume_point() == Resume(1, "0")
    m.on_delivered(data(2, "4.0"), 1)
    assert m.resume_point() == Resume(2, "4.0")
    m.on_delivered(data(3), 1)
    assert m.resume_point() == Resume(3, "2")


def test_a_plain_peers_headers_are_not_positions() -> None:
    """Found by the fuzzing run: a plain reply's stray ``Ns-Pos`` became the position."""
    m = RequesterMachine(0.0)
    assert m.on_reply(0.0, {HDR_POS: ""}, b"a", "") is Reply.DELIVER
    m.on_delivered({HDR_POS: ""}, 1)
    assert m.resume_point() == Resume(1, "0")


def test_resume_point_of_a_retry_that_delivered_nothing() -> None:
    m = bound(resume=Resume(5, "1.7"))
    assert m.resume_point() == Resume(5, "1.7")
    m.on_reply(0.0, data(6, "2.0"), b"x", CTL)
    m.on_delivered(data(6, "2.0"), 1)
    assert m.resume_point() == Resume(6, "2.0")


@pytest.mark.parametrize("pos", ["x", "1 2", "-1", "1.", "1" * 17, "\u0663", "1\r\nNs-Ctl: cancel"])
def test_malformed_position_fails_instead_of_poisoning_the_retry(pos: str) -> None:
    """``Ns-Pos`` is echoed in the next request's ``Ns-Resume``: a malformed one would
    make the retry a 400 (or worse, inject text into our header)."""
    m = bound()
    m.on_reply(0.0, data(1, "0"), b"a", CTL)
    m.on_delivered(data(1, "0"), 1)
    assert m.on_reply(0.0, data(2, pos), b"b", CTL) is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)
    point = m.resume_point()
    assert point == Resume(1, "0")
    retry = RequesterMachine(0.0, resume=point)
    assert parse_request_headers(retry.request_headers(0.0)).resume == point


# ---------------------------------------------------------------- hostile responder

NAMES = [HDR_SEQ, HDR_POS, HDR_END, HDR_CONTROL, HDR_ACK, HDR_RETRYABLE, HDR_STATUS,
         HDR_SERVICE_ERROR, HDR_SERVICE_ERROR_CODE, "Ns-Pack", "Ns-Id", "Ns-Next", "X"]  # fmt: skip
TRICKY = ["", "1", "0", "503", "hb", "cancel", "ack", "x", "9" * 21, "\u0663", "1 1", "1.2",
          str(MAX_SEQ), str(MAX_SEQ + 1), "abc123", "zzz", "a.b", "*"]  # fmt: skip
values = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(TRICKY),
    st.text(max_size=12),
)
replies = st.tuples(
    st.one_of(st.none(), st.dictionaries(st.sampled_from(NAMES), values, max_size=5)),
    st.one_of(
        st.sampled_from([b"", STREAM_END, STREAM_ERROR_PREFIX + b"e", b"x" * 40]),
        st.binary(max_size=64),
        st.lists(st.binary(max_size=8), min_size=1, max_size=5).map(pack_items),
    ),
    st.sampled_from([CTL, CTL, OTHER, ""]),
)
steps = st.one_of(
    st.tuples(st.just("reply"), replies),
    st.tuples(st.just("take"), st.none()),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
    st.tuples(st.just("cancel"), st.none()),
    st.tuples(st.just("lost"), st.none()),
)


@pytest.mark.fuzz
@settings(CI)
@given(
    st.lists(steps, max_size=60),
    st.integers(1, 4),
    st.integers(1, 100),
    st.booleans(),
    st.booleans(),
)
def test_fuzz_hostile_responder(
    script: list[tuple[str, Any]], wm: int, wb: int, pre_bound: bool, request_timeout: bool
) -> None:
    """Whatever a responder sends: no exception, data delivered strictly in sequence,
    memory bounded by the window, exactly one terminal state."""
    now = 0.0
    kw: dict[str, Any] = {"window_messages": wm, "window_bytes": wb, "heartbeat": 0.5}
    if request_timeout:
        kw["request_timeout"] = 1.0
    m = bound(now, **kw) if pre_bound else RequesterMachine(now, **kw)
    queue: deque[tuple[dict[str, str] | None, bytes]] = deque()
    delivered: list[int] = []
    first_terminal: RequesterState | None = None
    error: StreamFailure | None = None
    for kind, arg in script:
        before = m.state
        if kind == "reply":
            headers, payload, reply_subject = arg
            verdict = m.on_reply(now, headers, payload, reply_subject)
            assert isinstance(verdict, Reply)
            if before in TERMINAL:
                assert verdict is Reply.DROP
            if verdict is Reply.DELIVER:
                seq = m.received_seq
                offsets = m.pack_offsets
                m.pack_offsets = None
                if offsets is not None:  # a packed message: its items, one by one
                    items = [payload[a:b] for a, b in pairwise(offsets)]
                    assert headers is not None
                    assert int(headers[HDR_SEQ]) == seq - len(items) + 1
                    queue.extend((None, it) for it in items)
                else:
                    if m.v1:
                        assert headers is not None
                        assert int(headers[HDR_SEQ]) == seq
                    queue.append((headers, payload))
            elif verdict in (Reply.FAIL, Reply.ERROR):
                assert m.state is RequesterState.FAILED
                assert m.error is not None
            elif verdict is Reply.END:
                assert m.state is RequesterState.ENDED
            elif verdict is Reply.CANCEL_FOREIGN:
                target = m.foreign_target
                assert target
                assert target != m.control_subject
                if m.stream_id is not None:  # never cancel a message of our own stream
                    assert headers is not None
                    assert headers.get("Ns-Id") != m.stream_id
        elif kind == "take":
            if queue:
                h, p = queue.popleft()
                m.consumer_busy()
                ack = m.on_delivered(h, len(p))
                delivered.append(m.delivered_seq)
                if ack is not None:
                    a = parse_ack(ack[HDR_ACK])
                    assert a == (m.delivered_seq, m.delivered_bytes)
            elif not m.terminal:
                m.consumer_waiting(now)
        elif kind == "tick":
            now += arg
            action = m.on_timer(now)
            assert not (action.fail and action.control is not None)
            if action.fail:
                assert m.state is RequesterState.FAILED
        elif kind == "cancel":
            headers_out = m.cancel()
            assert headers_out is None or headers_out == {HDR_CONTROL: CTL_CANCEL}
        else:
            m.on_connection_lost(ConnectionLostError("lost"))
        # Invariants.
        assert delivered == list(range(1, len(delivered) + 1))
        assert m.delivered_seq + len(queue) == m.received_seq
        if m.v1 and m.state is not RequesterState.FAILED:
            # Memory: what is held is bounded by the window (one message may be larger).
            assert len(queue) <= wm
            assert sum(len(p) for _, p in queue) <= wb or len(queue) <= 1
        if first_terminal is not None:
            assert m.state is first_terminal
            assert m.error is error
        elif m.terminal:
            first_terminal, error = m.state, m.error
        point = m.resume_point()
        if point is not None:
            assert point.seq == m.delivered_seq
            retry = RequesterMachine(now, resume=point)
            assert parse_request_headers(retry.request_headers(now)).resume == point


def _state(m: RequesterMachine) -> tuple[Any, ...]:
    return (
        m.state,
        m.received_seq,
        m.delivered_seq,
        m.delivered_bytes,
        m.control_subject,
        m.v1,
        m.duplicates,
        type(m.error),
        m.next_deadline(),
        m.resume_point(),
    )


def _fast_path_applies(m: RequesterMachine, headers: dict[str, str] | None, reply: str) -> bool:
    """What ``_Attempt._on_raw`` checks before calling ``on_data``."""
    if headers is None or list(headers) != [HDR_SEQ] or reply != m.control_subject:
        return False
    value = headers[HDR_SEQ]
    return 0 < len(value) <= 20 and value.isascii() and value.isdigit()


in_order = st.tuples(
    st.just("data"), st.sampled_from([1, 1, 1, 1, 1, 0, 2]), st.binary(max_size=40)
)
take = st.tuples(st.just("take"), st.none())
# Mostly in-order data and takes, so the fast path runs often; hostile steps now and then.
mostly_flowing = st.integers(0, 9).flatmap(
    lambda i: steps if i < 2 else in_order if i < 6 else take
)


IMPLS = ["python", "c"] if cstream is not None else ["python"]


def on_data(impl: str, m: RequesterMachine, now: float, seq: int, size: int) -> bool:
    """``m.on_data``, or its C twin."""
    if impl == "c":
        return bool(cstream.on_data(m, now, seq, size))
    return m.on_data(now, seq, size)


@pytest.mark.fuzz
@pytest.mark.parametrize("impl", IMPLS)
@CI
@given(
    st.lists(mostly_flowing, min_size=20, max_size=80),
    st.integers(1, 8),
    st.integers(1, 400),
    st.booleans(),
)
def test_on_data_is_on_reply_for_the_messages_it_takes(
    impl: str, script: list[tuple[str, Any]], wm: int, wb: int, pre_bound: bool
) -> None:
    """The driver's fast path changes nothing but speed: a machine fed through
    ``on_data`` (or its C twin) where the driver would use it ends every step exactly
    like one fed through ``on_reply`` only."""
    kw: dict[str, Any] = {"window_messages": wm, "window_bytes": wb, "heartbeat": 0.5}
    fast = bound(**kw) if pre_bound else RequesterMachine(0.0, **kw)
    general = bound(**kw) if pre_bound else RequesterMachine(0.0, **kw)
    queue: deque[tuple[dict[str, str] | None, bytes]] = deque()
    now = 0.0
    for kind, *args in script:
        now += 0.01
        if kind == "data":  # mostly the next sequence number; sometimes a duplicate or a gap
            ahead, payload = args
            reply: tuple[Any, ...] = (data(general.received_seq + ahead), payload, CTL)
            kind, args = "reply", [reply]
        if kind == "reply":
            headers, payload, reply_subject = args[0]
            expected = general.on_reply(now, headers, payload, reply_subject)
            if _fast_path_applies(fast, headers, reply_subject):
                assert headers is not None
                if on_data(impl, fast, now, int(headers[HDR_SEQ]), len(payload)):
                    got = Reply.DELIVER
                else:
                    got = fast.on_reply(now, headers, payload, reply_subject)
            else:
                got = fast.on_reply(now, headers, payload, reply_subject)
            assert got is expected
            if got is Reply.DELIVER:
                queue.append((headers, payload))
        elif kind == "take" and queue:
            h, p = queue.popleft()
            assert fast.on_delivered(h, len(p)) == general.on_delivered(h, len(p))
        elif kind == "tick":
            now += args[0]
            assert fast.on_timer(now) == general.on_timer(now)
        elif kind == "cancel":
            assert fast.cancel() == general.cancel()
        elif kind == "lost":
            fast.on_connection_lost(ConnectionLostError("lost"))
            general.on_connection_lost(ConnectionLostError("lost"))
        assert _state(fast) == _state(general)


def _credit_state(m: RequesterMachine) -> tuple[Any, ...]:
    """Everything the credit methods read or write."""
    return (
        *_state(m),
        m.ack_deferred,
        m._acked_seq,
        m._acked_bytes,
        m._largest,
        m._received_bytes,
        m._delivered_pos,
        m._waiting_since,
        m._last_rx,
        m.ack_budget(),
    )


credit_steps = st.one_of(
    steps,
    st.tuples(st.just("data"), st.tuples(st.sampled_from([1, 1, 1, 0, 2]), st.integers(0, 60))),
    st.tuples(st.just("taken"), st.integers(0, 60)),
    st.tuples(st.just("delivered"), st.integers(0, 60)),
    st.tuples(st.just("many"), st.tuples(st.integers(-1, 5), st.integers(0, 120))),
    st.tuples(st.just("deferred"), st.none()),
)


@pytest.mark.fuzz
@pytest.mark.skipif(cstream is None, reason="the C extension is not in use")
@CI
@given(
    st.lists(credit_steps, max_size=80),
    st.integers(1, 8),
    st.integers(1, 400),
    st.sampled_from([0.0, 0.5]),
    st.booleans(),
)
def test_c_credit_is_the_python_credit(
    script: list[tuple[str, Any]], wm: int, wb: int, heartbeat: float, pre_bound: bool
) -> None:
    """The C twins of on_data, on_taken, on_delivered (no headers), on_delivered_many
    and ack_budget, on one machine, against the Python methods on another, fed the
    same steps (hostile replies among them): same answers, same state after each."""
    kw: dict[str, Any] = {"window_messages": wm, "window_bytes": wb, "heartbeat": heartbeat}
    py = bound(**kw) if pre_bound else RequesterMachine(0.0, **kw)
    c = bound(**kw) if pre_bound else RequesterMachine(0.0, **kw)
    now = 0.0
    for kind, arg in script:
        now += 0.01
        if kind == "reply":
            assert py.on_reply(now, *arg) is c.on_reply(now, *arg)
        elif kind == "data":
            ahead, size = arg
            seq = py.received_seq + ahead
            assert py.on_data(now, seq, size) == cstream.on_data(c, now, seq, size)
        elif kind == "taken":
            assert py.on_taken(arg) == cstream.on_taken(c, arg)
        elif kind == "delivered":
            assert py.on_delivered(None, arg) == cstream.on_delivered_many(c, 1, arg)
        elif kind == "many":
            count, nbytes = arg
            assert py.on_delivered_many(count, nbytes) == cstream.on_delivered_many(
                c, count, nbytes
            )
        elif kind == "deferred":
            assert py.deferred_ack() == c.deferred_ack()
        elif kind == "take":
            assert py.on_delivered(None, 1) == c.on_delivered(None, 1)
        elif kind == "tick":
            now += arg
            assert py.on_timer(now) == c.on_timer(now)
        elif kind == "cancel":
            assert py.cancel() == c.cancel()
        elif kind == "lost":
            py.on_connection_lost(ConnectionLostError("lost"))
            c.on_connection_lost(ConnectionLostError("lost"))
        assert tuple(cstream.ack_budget(c)) == c.ack_budget()
        assert _credit_state(py) == _credit_state(c)


def test_a_machine_copies_with_every_field() -> None:
    m = bound(window_messages=8, window_bytes=100, heartbeat=0.5)
    assert m.on_data(1.0, 1, 10)
    m.on_taken(10)
    twin = copy.deepcopy(m)
    assert _credit_state(twin) == _credit_state(m)
    assert (twin.subject, twin.stall_factor) == (m.subject, m.stall_factor)


# ---------------------------------------------------------------- packed messages


def packed(seq: int, count: int, pos: str | None = None) -> dict[str, str]:
    headers = {HDR_SEQ: str(seq), "Ns-Pack": str(count)}
    if pos is not None:
        headers[HDR_POS] = pos
    return headers


def test_a_pack_delivers_its_items_and_counts_each() -> None:
    m = bound(window_messages=8, window_bytes=100)
    items = [b"a", b"", b"ccc"]
    assert m.on_reply(0.0, packed(1, 3, "4.0"), pack_items(items), CTL) is Reply.DELIVER
    assert m.pack_offsets == [12, 13, 13, 16]
    assert m.received_seq == 3
    for it in items:
        m.on_delivered(None, len(it))
    assert m.resume_point() == Resume(3, "4.2")
    assert m.on_reply(0.0, data(4), b"d", CTL) is Reply.DELIVER  # the next plain message
    m.on_delivered(data(4), 1)
    assert m.resume_point() == Resume(4, "3")


def test_resume_point_inside_a_pack() -> None:
    m = bound()
    m.on_reply(0.0, packed(1, 4, "0.5"), pack_items([b"x"] * 4), CTL)
    m.on_reply(0.0, packed(5, 2), pack_items([b"y"] * 2), CTL)  # default positions
    m.on_delivered(None, 1)
    m.on_delivered(None, 1)
    assert m.resume_point() == Resume(2, "0.6")
    for _ in range(3):
        m.on_delivered(None, 1)
    assert m.resume_point() == Resume(5, "4")


@pytest.mark.parametrize(
    ("count", "payload"),
    [
        ("0", b""),
        ("x", b""),
        ("2", pack_items([b"a", b"b"]) + b"extra"),
        ("3", pack_items([b"a", b"b"])),
        ("2", b"\x00\x00"),
        ("2", b"\xff\xff\xff\xff\x00\x00\x00\x00"),
        (str(70_000), b""),
    ],
)
def test_a_malformed_pack_fails_the_stream(count: str, payload: bytes) -> None:
    m = bound()
    headers = {HDR_SEQ: "1", "Ns-Pack": count}
    assert m.on_reply(0.0, headers, payload, CTL) is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)
    assert m.received_seq == 0


@pytest.mark.parametrize(("count", "size"), [(5, 1), (2, 60)])
def test_a_pack_beyond_the_window_fails_the_stream(count: int, size: int) -> None:
    m = bound(window_messages=4, window_bytes=100)
    payload = pack_items([b"z" * size] * count)
    assert m.on_reply(0.0, packed(1, count), payload, CTL) is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)
    assert not m.error.retryable


def test_a_pack_position_that_would_overflow_fails() -> None:
    m = bound()
    headers = packed(1, 2, "9" * 16)
    assert m.on_reply(0.0, headers, pack_items([b"a", b"b"]), CTL) is Reply.FAIL


@CI
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=40),
    st.lists(st.integers(1, 50), min_size=1, max_size=30),
    st.integers(2, 16),
    st.integers(20, 400),
    st.booleans(),
)
def test_on_delivered_many_is_on_delivered_repeated(
    sizes: list[int], runs: list[int], wm: int, wb: int, heartbeats: bool
) -> None:
    """Runs cut where ack_budget says give the same acks and the same state as one
    on_delivered per message (what _drain_pack relies on)."""
    kw: dict[str, Any] = {"window_messages": wm, "window_bytes": wb}
    kw["heartbeat"] = 0.5 if heartbeats else 0.0
    one, many = bound(**kw), bound(**kw)
    sizes = sizes[:wm]
    payload = pack_items([b"p" * n for n in sizes])
    for m in (one, many):
        verdict = m.on_reply(0.0, packed(1, len(sizes)), payload, CTL)
    if verdict is not Reply.DELIVER:
        return  # over the byte window: refused identically
    i = 0
    for want in runs:
        if i == len(sizes):
            break
        msgs_left, bytes_left = many.ack_budget()
        run: list[int] = []
        while i < len(sizes) and len(run) < min(want, msgs_left):
            run.append(sizes[i])
            i += 1
            if sum(run) >= bytes_left:
                break
        acks = [one.on_delivered(None, n) for n in run]
        assert all(a is None for a in acks[:-1])  # the budget held
        assert many.on_delivered_many(len(run), sum(run)) == acks[-1]
        assert _state(one) == _state(many)


# ---------------------------------------------------------------- on_taken / deferred_ack


def test_on_taken_defers_the_caught_up_ack_to_the_end_of_the_read() -> None:
    m = bound(0.0, heartbeat=0.0, window_messages=64)
    for seq in range(1, 11):  # each taken as it arrives: always caught up
        assert m.on_data(1.0, seq, 10)
        assert m.on_taken(10) is None
        assert m.ack_deferred
    ack = m.deferred_ack()
    assert ack is not None
    assert ack[HDR_ACK] == "10 100"
    assert not m.ack_deferred
    assert m.deferred_ack() is None  # once


def test_on_taken_returns_the_half_window_ack_and_clears_the_deferral() -> None:
    m = bound(0.0, heartbeat=0.0, window_messages=64)
    acks = []
    for seq in range(1, 33):
        assert m.on_data(1.0, seq, 1)
        acks.append(m.on_taken(1))
    assert acks[:31] == [None] * 31
    assert acks[31] is not None
    assert acks[31][HDR_ACK] == "32 32"
    assert not m.ack_deferred
    assert m.deferred_ack() is None


def test_deferred_ack_is_left_to_whoever_takes_what_was_queued() -> None:
    m = bound(0.0, heartbeat=0.0, window_messages=64)
    for seq in range(1, 4):
        assert m.on_data(1.0, seq, 1)
    m.on_taken(1)  # 1 of 3 taken: not caught up, nothing deferred
    assert not m.ack_deferred
    m.on_taken(1)
    m.on_taken(1)
    assert m.ack_deferred
    assert m.on_data(1.0, 4, 1)  # arrived (queued) before the read ended
    assert m.deferred_ack() is None  # whoever takes it catches up and acks
    assert m.on_delivered(None, 1) is not None


def test_deferred_ack_with_heartbeats_only_when_the_byte_window_may_block() -> None:
    m = bound(0.0, heartbeat=1.0, window_messages=64, window_bytes=1000)
    assert m.on_data(1.0, 1, 600)
    assert m.on_taken(600) is not None  # over half the byte window
    assert m.on_data(1.0, 2, 100)
    assert m.on_taken(100) is None
    assert not m.ack_deferred  # 100 unacked + 600 largest fit: heartbeats will ack it
    assert m.on_data(1.0, 3, 350)
    assert m.on_taken(350) is None  # 450 unacked + 600 largest > 1000: may block
    assert m.ack_deferred
    ack = m.deferred_ack()
    assert ack is not None
    assert ack[HDR_ACK] == "3 1050"


def test_deferred_ack_is_dropped_once_the_stream_is_over() -> None:
    m = bound(0.0, heartbeat=0.0)
    assert m.on_data(1.0, 1, 1)
    m.on_taken(1)
    assert m.ack_deferred
    assert m.cancel() is not None
    assert m.deferred_ack() is None


@settings(CI)
@given(
    reads=st.lists(
        st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
        min_size=1,
        max_size=30,
    ),
    heartbeat=st.sampled_from([0.0, 1.0]),
    window_messages=st.integers(min_value=2, max_value=64),
    window_bytes=st.integers(min_value=400, max_value=4000),
)
def test_direct_delivery_never_leaves_the_responder_blocked(
    reads: list[list[int]], heartbeat: float, window_messages: int, window_bytes: int
) -> None:
    """Each read brings replies of the given sizes, each taken as it arrives
    (on_data, on_taken), then deferred_ack: the responder, which sends while its
    window allows, always has room for a reply as large as the largest so far."""
    m = bound(0.0, heartbeat=heartbeat, window_messages=window_messages, window_bytes=window_bytes)
    seq = 0
    for read in reads:
        for size in read:
            in_flight = seq + 1 - m._acked_seq
            in_bytes = m.delivered_bytes - m._acked_bytes + size
            if in_flight > window_messages or (in_flight > 1 and in_bytes > window_bytes):
                break  # the responder would not send it
            seq += 1
            assert m.on_data(1.0, seq, size)
            m.on_taken(size)
        m.deferred_ack()
        assert m.delivered_seq == m.received_seq == seq
        unacked_msgs = seq - m._acked_seq
        unacked_bytes = m.delivered_bytes - m._acked_bytes
        if heartbeat <= 0:
            assert unacked_msgs == 0  # nothing else would ever ack it
        else:  # the next heartbeat acks the rest; until then room is left
            assert unacked_msgs < window_messages
            assert unacked_bytes + m._largest <= window_bytes or unacked_msgs == 0


# ---------------------------------------------------------------- service-routed control

SVC = "remote.svc.orders"


def with_id(headers: dict[str, str], sid: str = "abc123") -> dict[str, str]:
    return {**headers, "Ns-Id": sid}


def test_a_stream_without_reply_subject_is_bound_by_its_id() -> None:
    """Service-routed control (account imports, locked-down inboxes): no reply subject;
    every message carries Ns-Id; control goes to <request subject>.<id>."""
    m = RequesterMachine(0.0, subject=SVC, heartbeat=1.0)
    assert m.on_reply(0.1, with_id(accept()), b"", "") is Reply.DROP
    assert (m.stream_id, m.control_subject) == ("abc123", f"{SVC}.abc123")
    assert m.on_reply(0.2, with_id(data(1)), b"a", "") is Reply.DELIVER
    # Through an import each message may arrive with a fresh reply subject, or none:
    # the id, not the reply subject, says whose it is. Never cancel our own stream.
    assert m.on_reply(0.3, with_id(data(2)), b"b", "_R_.x.y") is Reply.DELIVER
    assert m.on_reply(0.4, with_id(end(2)), STREAM_END, "_R_.x.z") is Reply.END


def test_another_id_is_a_foreign_responder_cancelled_at_its_own_control_subject() -> None:
    m = RequesterMachine(0.0, subject=SVC, heartbeat=1.0)
    m.on_reply(0.1, with_id(data(1)), b"a", "")
    assert m.on_reply(0.2, with_id(data(1), "zzz"), b"x", "") is Reply.CANCEL_FOREIGN
    assert m.foreign_target == f"{SVC}.zzz"
    assert m.on_reply(0.3, with_id(data(2), "zzz"), b"y", "") is Reply.DROP  # told once
    assert m.on_reply(0.4, data(2), b"y", "") is Reply.DROP  # no id, no way to tell it
    assert m.on_reply(0.5, data(2), b"y", OTHER) is Reply.CANCEL_FOREIGN
    assert m.foreign_target == OTHER
    assert m.received_seq == 1


@pytest.mark.parametrize("sid", ["a.b", "*", ">", "a b", "", "x" * 65, "é"])
def test_a_malformed_stream_id_fails_the_stream(sid: str) -> None:
    m = RequesterMachine(0.0, subject=SVC)
    assert m.on_reply(0.1, with_id(data(1), sid), b"a", "") is Reply.FAIL
    assert isinstance(m.error, ProtocolViolationError)
    assert m.control_subject is None


def test_a_reply_subject_still_binds_as_before() -> None:
    m = RequesterMachine(0.0, subject=SVC)
    assert m.on_reply(0.1, data(1), b"a", CTL) is Reply.DELIVER
    assert (m.stream_id, m.control_subject) == (None, CTL)


def test_only_the_first_message_through_an_import_fails_fast_and_says_why() -> None:
    """The first of an opening pair says another follows at once (Ns-Next); through
    an import that passes one reply, the second never comes."""
    fast = RequesterMachine(0.0, subject=SVC, heartbeat=0.2, stall_factor=3.0)
    fast.on_reply(0.0, with_id({**accept(), "Ns-Next": "1"}), b"", "")
    assert fast.next_deadline() == pytest.approx(0.2)  # our heartbeat is due first
    assert fast.on_timer(0.2).control is not None
    assert fast.next_deadline() == pytest.approx(0.3)  # half the stall limit (0.6)
    assert fast.on_timer(0.31).fail
    assert isinstance(fast.error, ProtocolViolationError)
    m2 = RequesterMachine(0.0, subject=SVC, heartbeat=1.0)
    m2.on_reply(0.0, with_id({**accept(), "Ns-Next": "1"}), b"", "")
    assert m2.next_deadline() == pytest.approx(1.0)
    action = m2.on_timer(1.0)
    assert action.fail
    assert isinstance(m2.error, ProtocolViolationError)
    assert not m2.error.retryable
    assert "response_type: stream" in str(m2.error)


def test_the_second_message_of_the_pair_clears_the_wait() -> None:
    m = RequesterMachine(0.0, subject=SVC, heartbeat=1.0)
    m.on_reply(0.0, with_id({**accept(), "Ns-Next": "1"}), b"", "")
    m.on_reply(0.001, with_id(accept()), b"", "")
    m.on_timer(1.5)  # our heartbeat is due; no failure
    assert not m.terminal
    assert m.error is None


def test_a_fresh_reply_subject_at_most_once_per_heartbeat() -> None:
    m = RequesterMachine(0.0, subject=SVC, heartbeat=2.0)
    assert not m.renewal_due(1.9)
    assert m.renewal_due(2.0)
    assert not m.renewal_due(3.9)
    assert m.renewal_due(4.0)
    fast = RequesterMachine(0.0, subject=SVC, heartbeat=0.2)
    assert not fast.renewal_due(0.5)  # at least a second apart
    assert fast.renewal_due(1.0)
