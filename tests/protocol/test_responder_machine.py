"""ResponderMachine on its own: credit, control messages, timers, hostile control."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natstream._protocol import (
    Control,
    RequestOptions,
    ResponderMachine,
    ResponderState,
    ResponderTimer,
    Resume,
    parse_request_headers,
)
from natstream._protocol._wire import (
    CTL_ACK,
    CTL_CANCEL,
    CTL_HEARTBEAT,
    HDR_ACK,
    HDR_CONTROL,
    HDR_END,
    HDR_HEARTBEAT,
    HDR_POS,
    HDR_RETRYABLE,
    HDR_SEQ,
    HDR_SERVICE_ERROR,
    HDR_SERVICE_ERROR_CODE,
    HDR_VERSION,
    HDR_WINDOW,
    MAX_SEQ,
)

from .conftest import PROFILE

CI = settings.get_profile(PROFILE)
TERMINAL = {ResponderState.ENDED, ResponderState.FAILED, ResponderState.CANCELLED}


def v1(
    window: tuple[int, int] = (4, 100),
    heartbeat_ms: int = 1000,
    deadline_ms: int | None = None,
    resume: Resume | None = None,
) -> RequestOptions:
    return RequestOptions("1", window[0], window[1], heartbeat_ms, deadline_ms, resume)


def ack(seq: int, nbytes: int, kind: str = CTL_ACK) -> dict[str, str]:
    return {HDR_CONTROL: kind, HDR_ACK: f"{seq} {nbytes}"}


def send(r: ResponderMachine, size: int, now: float = 0.0) -> dict[str, str] | None:
    assert r.has_credit(size)
    return r.data_headers(size, None, now)


# ---------------------------------------------------------------- plain requester


def test_plain_requester_gets_no_headers_and_no_flow_control() -> None:
    r = ResponderMachine(parse_request_headers(None), 0.0)
    assert not r.v1
    for _ in range(1000):
        assert r.has_credit(1 << 20)
        assert r.data_headers(1 << 20, "3", 0.0) is None
    assert r.next_deadline() is None
    assert r.on_timer(1e9) is ResponderTimer.NOTHING
    assert r.on_control(ack(1, 1), 0.0) is Control.IGNORED
    assert r.on_control({HDR_CONTROL: CTL_CANCEL}, 0.0) is Control.IGNORED
    assert r.end_headers(0.0) is None
    assert r.state is ResponderState.ENDED


def test_plain_requester_error_has_no_headers() -> None:
    r = ResponderMachine(RequestOptions(), 0.0)
    assert r.error_headers("boom", 500, True, 0.0) is None
    assert r.state is ResponderState.FAILED


# ---------------------------------------------------------------- v1 headers


def test_data_headers_number_messages_and_carry_positions() -> None:
    r = ResponderMachine(v1(), 0.0)
    assert r.data_headers(3, None, 0.0) == {HDR_SEQ: "1"}
    assert r.data_headers(3, "7.2", 0.0) == {HDR_SEQ: "2", HDR_POS: "7.2"}
    assert (r.sent_seq, r.sent_bytes) == (2, 6)


def test_heartbeat_end_and_error_carry_the_count_sent() -> None:
    r = ResponderMachine(v1(), 0.0)
    assert r.heartbeat_headers(0.0) == {HDR_CONTROL: CTL_HEARTBEAT, HDR_SEQ: "0"}
    send(r, 1)
    assert r.heartbeat_headers(0.0) == {HDR_CONTROL: CTL_HEARTBEAT, HDR_SEQ: "1"}
    assert r.end_headers(0.0) == {HDR_END: "1", HDR_SEQ: "1"}
    assert r.state is ResponderState.ENDED
    assert r.terminal


def test_error_headers() -> None:
    r = ResponderMachine(v1(), 0.0)
    h = r.error_headers("x" * 5000, 503, True, 0.0)
    assert h is not None
    assert h[HDR_SEQ] == "0"
    assert h[HDR_SERVICE_ERROR] == "x" * 1024
    assert (h[HDR_SERVICE_ERROR_CODE], h[HDR_RETRYABLE]) == ("503", "1")
    assert r.state is ResponderState.FAILED
    h = ResponderMachine(v1(), 0.0).error_headers("bad", 400, False, 0.0)
    assert h is not None
    assert h[HDR_RETRYABLE] == "0"


def test_first_terminal_state_sticks() -> None:
    r = ResponderMachine(v1(), 0.0)
    assert r.on_control({HDR_CONTROL: CTL_CANCEL}, 0.0) is Control.CANCEL
    r.end_headers(0.0)
    r.error_headers("late", 500, False, 0.0)
    r.cancel()
    assert r.state is ResponderState.CANCELLED
    r = ResponderMachine(v1(), 0.0)
    r.end_headers(0.0)
    r.cancel()
    assert r.state is ResponderState.ENDED


def test_resume_starts_counting_after_the_resume_point() -> None:
    r = ResponderMachine(v1(resume=Resume(7, "6")), 0.0)
    assert r.resume == Resume(7, "6")
    assert (r.sent_seq, r.acked_seq) == (7, 7)
    assert send(r, 1) == {HDR_SEQ: "8"}
    assert r.on_control(ack(8, 1), 0.0) is Control.LIVENESS


# ---------------------------------------------------------------- credit


def test_message_window() -> None:
    r = ResponderMachine(v1(window=(3, 1000)), 0.0)
    for _ in range(3):
        send(r, 1)
    assert not r.has_credit(0)
    assert r.on_control(ack(1, 1), 0.0) is Control.LIVENESS
    assert r.has_credit(1)
    send(r, 1)
    assert not r.has_credit(1)


def test_byte_window_is_inclusive() -> None:
    r = ResponderMachine(v1(window=(100, 10)), 0.0)
    send(r, 4)
    assert r.has_credit(6)
    assert not r.has_credit(7)
    send(r, 6)
    assert r.has_credit(0)
    assert not r.has_credit(1)


def test_a_message_larger_than_the_window_goes_alone() -> None:
    r = ResponderMachine(v1(window=(100, 10)), 0.0)
    assert r.has_credit(10_000)
    send(r, 10_000)
    assert not r.has_credit(0)
    r.on_control(ack(1, 10_000), 0.0)
    assert r.has_credit(10_000)
    send(r, 1)
    assert not r.has_credit(10_000)


# ---------------------------------------------------------------- control


def test_ack_must_be_plausible() -> None:
    r = ResponderMachine(v1(window=(10, 1000)), 0.0)
    for _ in range(4):
        send(r, 10)
    assert r.on_control(ack(2, 20), 1.0) is Control.LIVENESS
    assert (r.acked_seq, r.acked_bytes) == (2, 20)
    for bogus in [ack(5, 20), ack(2, 41), ack(1, 20), ack(2, 19), ack(MAX_SEQ, MAX_SEQ)]:
        assert r.on_control(bogus, 2.0) is Control.IGNORED
    assert (r.acked_seq, r.acked_bytes) == (2, 20)
    assert r.on_control(ack(4, 40, CTL_HEARTBEAT), 2.0) is Control.LIVENESS
    assert (r.acked_seq, r.acked_bytes) == (4, 40)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {HDR_ACK: "1 1"},
        {HDR_CONTROL: "bogus"},
        {HDR_CONTROL: "ACK", HDR_ACK: "0 0"},
        {HDR_CONTROL: CTL_ACK, HDR_ACK: ""},
        {HDR_CONTROL: CTL_ACK, HDR_ACK: "1"},
        {HDR_CONTROL: CTL_ACK, HDR_ACK: "-1 0"},
        {HDR_CONTROL: CTL_ACK, HDR_ACK: "\u0663 0"},
        {HDR_CONTROL: CTL_ACK, HDR_ACK: "9" * 30 + " 0"},
    ],
)
def test_malformed_control_is_ignored_and_is_not_liveness(headers: dict[str, str] | None) -> None:
    r = ResponderMachine(v1(heartbeat_ms=1000), 0.0)
    assert r.on_control(headers, 2.9) is Control.IGNORED
    assert r.on_timer(3.0) is ResponderTimer.UNREACHED  # nothing plausible ever came


def test_heartbeat_without_ack_is_not_liveness() -> None:
    """A requester's heartbeat always carries its ack: a bare one (forged, or from a
    broken peer) must not keep the stream, and its concurrency slot, alive."""
    r = ResponderMachine(v1(heartbeat_ms=1000), 0.0)
    assert r.on_control({HDR_CONTROL: CTL_HEARTBEAT}, 2.9) is Control.IGNORED
    assert r.on_timer(3.0) is ResponderTimer.UNREACHED
    r = ResponderMachine(v1(heartbeat_ms=1000), 0.0)
    assert r.on_control(ack(0, 0, CTL_HEARTBEAT), 2.9) is Control.LIVENESS
    assert r.on_timer(3.0) not in (ResponderTimer.REQUESTER_GONE, ResponderTimer.UNREACHED)


def test_a_requester_never_heard_from_is_told_once_heard_from_is_gone() -> None:
    """Silence after a first control message: the requester is gone, nothing more is
    sent. Silence from the start: its control messages may not reach us (permissions,
    an import that does not cover the control subject): the driver sends an error
    marker saying so, which ends the stream."""
    never = ResponderMachine(v1(heartbeat_ms=1000), 0.0)
    assert never.on_timer(2.99) is ResponderTimer.HEARTBEAT
    never.heartbeat_headers(2.99)
    assert never.on_timer(3.0) is ResponderTimer.UNREACHED
    assert never.state is ResponderState.OPEN  # the error marker ends it
    never.error_headers("no control message reached me", 502, False, 3.0)
    assert never.state is ResponderState.FAILED
    assert never.next_deadline() is None
    heard = ResponderMachine(v1(heartbeat_ms=1000), 0.0)
    assert heard.on_control(ack(0, 0, CTL_HEARTBEAT), 1.0) is Control.LIVENESS
    assert heard.on_timer(4.0) is ResponderTimer.REQUESTER_GONE
    assert heard.state is ResponderState.CANCELLED


def test_cancel() -> None:
    r = ResponderMachine(v1(), 0.0)
    assert r.on_control({HDR_CONTROL: CTL_CANCEL, HDR_ACK: "junk"}, 0.0) is Control.CANCEL
    assert r.state is ResponderState.CANCELLED
    assert r.on_control({HDR_CONTROL: CTL_CANCEL}, 0.0) is Control.IGNORED
    assert r.on_control(ack(0, 0), 0.0) is Control.IGNORED
    assert r.next_deadline() is None


def test_local_cancel() -> None:
    r = ResponderMachine(v1(), 0.0)
    r.cancel()
    assert r.state is ResponderState.CANCELLED
    assert r.on_timer(1e9) is ResponderTimer.NOTHING


# ---------------------------------------------------------------- timers


def test_heartbeat_when_quiet() -> None:
    r = ResponderMachine(v1(heartbeat_ms=500), 0.0, stall_factor=3.0)
    assert r.next_deadline() == 0.5
    assert r.on_timer(0.49) is ResponderTimer.NOTHING
    assert r.on_timer(0.5) is ResponderTimer.HEARTBEAT
    r.heartbeat_headers(0.5)
    assert r.next_deadline() == 1.0
    send(r, 1, now=0.8)  # data counts as a heartbeat
    assert r.next_deadline() == pytest.approx(1.3)
    assert r.on_timer(1.0) is ResponderTimer.NOTHING


def test_requester_gone_after_stall_factor_intervals() -> None:
    r = ResponderMachine(v1(heartbeat_ms=500), 0.0, stall_factor=3.0)
    assert r.on_control(ack(0, 0, CTL_HEARTBEAT), 1.0) is Control.LIVENESS
    r.heartbeat_headers(2.0)
    assert r.on_timer(2.49) is ResponderTimer.NOTHING
    assert r.on_timer(2.5) is ResponderTimer.REQUESTER_GONE
    assert r.state is ResponderState.CANCELLED


def test_heartbeat_off() -> None:
    opts = parse_request_headers({HDR_VERSION: "1", HDR_WINDOW: "1 1", HDR_HEARTBEAT: "0"})
    r = ResponderMachine(opts, 0.0)
    assert r.v1
    assert r.next_deadline() is None
    assert r.on_timer(1e6) is ResponderTimer.NOTHING


def test_deadline_and_time_remaining() -> None:
    r = ResponderMachine(v1(deadline_ms=2500), 10.0)
    assert r.time_remaining(11.0) == pytest.approx(1.5)
    assert r.time_remaining(99.0) == 0.0
    assert r.on_timer(12.5) is ResponderTimer.DEADLINE
    assert r.state is ResponderState.OPEN  # the driver sends the 504 and ends it
    r.error_headers("stream deadline exceeded", 504, False, 12.5)
    assert r.on_timer(12.6) is ResponderTimer.NOTHING


def test_max_duration_caps_the_requesters_deadline() -> None:
    assert ResponderMachine(v1(deadline_ms=5000), 0.0, max_duration=2.0).deadline == 2.0
    assert ResponderMachine(v1(deadline_ms=1000), 0.0, max_duration=2.0).deadline == 1.0
    assert ResponderMachine(v1(), 0.0, max_duration=2.0).deadline == 2.0
    r = ResponderMachine(RequestOptions(), 0.0, max_duration=2.0)  # plain requesters too
    assert r.next_deadline() == 2.0
    assert r.on_timer(2.0) is ResponderTimer.DEADLINE
    assert ResponderMachine(v1(), 0.0).time_remaining(5.0) is None


# ---------------------------------------------------------------- hostile control

control_values = st.one_of(
    st.tuples(st.integers(-2, 30), st.integers(-2, 3000)).map(lambda t: f"{t[0]} {t[1]}"),
    st.sampled_from(["", "1", "1 1 1", "x y", "\u0663 1", "9" * 25 + " 1", f"{MAX_SEQ} 0"]),
    st.text(max_size=12),
)
controls = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {HDR_CONTROL: st.sampled_from([CTL_ACK, CTL_HEARTBEAT, "x", ""])},
        optional={HDR_ACK: control_values},
    ),
    st.dictionaries(st.sampled_from([HDR_CONTROL, HDR_ACK, HDR_SEQ, "X"]), control_values),
)
steps = st.one_of(
    st.tuples(st.just("control"), controls),
    st.tuples(st.just("send"), st.integers(0, 300)),
    st.tuples(st.just("tick"), st.floats(0.0, 1.0)),
    st.tuples(st.just("cancel"), st.booleans()),
)


@pytest.mark.fuzz
@settings(CI)
@given(
    st.lists(steps, max_size=80),
    st.integers(1, 5),
    st.integers(1, 500),
    st.integers(0, 2000),
    st.one_of(st.none(), st.integers(0, 5)),
)
def test_fuzz_hostile_control(
    script: list[tuple[str, Any]],
    wm: int,
    wb: int,
    heartbeat_ms: int,
    resume_seq: int | None,
) -> None:
    """Whatever arrives on the control subject: no exception, credit only from plausible
    acks, never more than the window in flight, exactly one terminal state."""
    resume = None if resume_seq is None else Resume(resume_seq, str(resume_seq))
    r = ResponderMachine(v1((wm, wb), heartbeat_ms, resume=resume), 0.0, stall_factor=2.0)
    now = 0.0
    first_terminal: ResponderState | None = None
    for kind, arg in script:
        before = (r.acked_seq, r.acked_bytes, r.sent_seq, r.sent_bytes, r.state)
        if kind == "control":
            verdict = r.on_control(arg, now)
            assert isinstance(verdict, Control)
            if before[4] in TERMINAL:
                assert verdict is Control.IGNORED
            if verdict is not Control.CANCEL:
                assert r.state is before[4]
            if verdict is Control.IGNORED:
                assert (r.acked_seq, r.acked_bytes) == before[:2]
        elif kind == "send":
            if not r.terminal and r.has_credit(arg):
                r.data_headers(arg, None, now)
                in_flight = r.sent_seq - r.acked_seq
                assert in_flight <= wm
                assert r.sent_bytes - r.acked_bytes <= wb or in_flight == 1
        elif kind == "tick":
            now += arg
            action = r.on_timer(now)
            if action is ResponderTimer.HEARTBEAT:
                r.heartbeat_headers(now)
            elif action is ResponderTimer.DEADLINE:
                r.error_headers("deadline", 504, False, now)
        elif arg:
            r.cancel()
        else:
            r.on_control({HDR_CONTROL: CTL_CANCEL}, now)
        assert before[0] <= r.acked_seq <= r.sent_seq
        assert before[1] <= r.acked_bytes <= r.sent_bytes
        if first_terminal is not None:
            assert r.state is first_terminal
        elif r.terminal:
            first_terminal = r.state


def _snapshot(r: ResponderMachine) -> tuple[Any, ...]:
    return (r.state, r.sent_seq, r.sent_bytes, r.acked_seq, r.acked_bytes, r.next_deadline())


@pytest.mark.fuzz
@CI
@given(
    v1_requester=st.booleans(),
    window=st.tuples(st.integers(1, 6), st.integers(1, 300)),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 120)),
            st.tuples(st.just("ack"), st.integers(0, 8)),
            st.tuples(st.just("cancel"), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_send_next_is_has_credit_plus_data_headers(
    v1_requester: bool, window: tuple[int, int], steps: list[tuple[str, int]]
) -> None:
    """The driver's fast path counts exactly what the general path counts, or nothing."""
    opts = v1(window) if v1_requester else RequestOptions(None, 256, 8 << 20, 0, None, None)
    fast, general = ResponderMachine(opts, 0.0), ResponderMachine(opts, 0.0)
    sizes: list[int] = []
    for now, (kind, arg) in enumerate(steps, start=1):
        if kind == "send":
            expected = general.v1 and not general.terminal and general.has_credit(arg)
            seq = fast.send_next(arg, float(now))
            assert bool(seq) == expected
            if expected:
                general.data_headers(arg, None, float(now))
                assert seq == general.sent_seq
                sizes.append(arg)
        elif kind == "ack":
            upto = min(arg, len(sizes))
            headers = ack(upto, sum(sizes[:upto]))
            assert fast.on_control(headers, float(now)) == general.on_control(headers, float(now))
        else:
            fast.cancel()
            general.cancel()
        assert _snapshot(fast) == _snapshot(general)


def packing(window: tuple[int, int] = (4, 100)) -> ResponderMachine:
    return ResponderMachine(RequestOptions("1", window[0], window[1], 1000, None, None, True), 0.0)


def test_send_pack_counts_items_and_needs_credit() -> None:
    r = packing()
    assert r.pack
    assert r.credit() == (4, 100)
    assert r.send_pack(3, 30, 0.0) == 1
    assert (r.sent_seq, r.sent_bytes) == (3, 30)
    assert r.credit() == (1, 70)
    with pytest.raises(ValueError, match="not allowed"):
        r.send_pack(2, 2, 0.0)
    r.on_control(ack(3, 30), 0.0)
    with pytest.raises(ValueError, match="not allowed"):
        r.send_pack(2, 101, 0.0)
    with pytest.raises(ValueError, match="not allowed"):
        r.send_pack(1, 1, 0.0)  # a single item goes as a plain message


def test_no_packing_unless_the_requester_asks() -> None:
    assert not ResponderMachine(v1(), 0.0).pack
    plain = RequestOptions(None, 256, 8 << 20, 0, None, None, True)
    assert not ResponderMachine(plain, 0.0).pack
    with pytest.raises(ValueError, match="not allowed"):
        ResponderMachine(v1(), 0.0).send_pack(2, 2, 0.0)
    assert parse_request_headers({"Ns-V": "1", "Ns-Win": "4 100", "Ns-Hb": "0"}).pack is False
