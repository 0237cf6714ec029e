"""Durable recording's sans-IO parts: the acknowledgement subject, pull requests,
status messages, subject coverage, and the sequencer's verdicts (property tests)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natstream._cli._record_options import parse_duration, parse_size
from natstream._durable._sequencer import Sequencer, Verdict
from natstream._durable._wire import (
    StatusKind,
    next_subject,
    parse_ack_subject,
    pull_request,
    status_kind,
)
from natstream._errors import ConfigError
from natstream._subjects import subject_covers


def test_ack_subjects_of_both_forms_are_read() -> None:
    v1 = "$JS.ACK.ORDERS.rec.1.42.7.1764190800123456789.9"
    assert parse_ack_subject(v1) == (42, 7, 1764190800123456789, 9)
    v2 = "$JS.ACK.hub.ACCHASH.ORDERS.rec.2.43.8.1764190800123456789.0.rnd"
    assert parse_ack_subject(v2) == (43, 8, 1764190800123456789, 0)
    assert parse_ack_subject(v2.rpartition(".")[0]) == (43, 8, 1764190800123456789, 0)


@pytest.mark.parametrize(
    "reply", ["", "_INBOX.abc", "$JS.ACK.a.b.c", "$JS.NAK.S.c.1.2.3.4.5", "$JS.ACK.S.c.1.x.3.4.5"]
)
def test_other_subjects_are_not_taken_for_deliveries(reply: str) -> None:
    with pytest.raises(ValueError, match=r"JetStream acknowledgement|invalid literal"):
        parse_ack_subject(reply)


def test_a_pull_request_asks_in_nanoseconds() -> None:
    assert next_subject("S", "c") == "$JS.API.CONSUMER.MSG.NEXT.S.c"
    assert json.loads(pull_request(500, 15.0, 3.0)) == {
        "batch": 500,
        "expires": 15_000_000_000,
        "idle_heartbeat": 3_000_000_000,
    }


@pytest.mark.parametrize(
    ("status", "description", "kind"),
    [
        ("100", "Idle Heartbeat", StatusKind.HEARTBEAT),
        ("408", "Request Timeout", StatusKind.ENDED),
        ("404", "No Messages", StatusKind.ENDED),
        ("409", "Exceeded MaxWaiting", StatusKind.ENDED),
        ("409", "Leadership Change", StatusKind.RETRY),
        ("503", "No Responders", StatusKind.RETRY),
        ("409", "Consumer Deleted", StatusKind.FATAL),
        ("409", "Consumer is push based", StatusKind.FATAL),
        ("400", "Bad Request", StatusKind.FATAL),
        # the consumer's own limits on requests: every request would end so, at once
        ("409", "Exceeded MaxRequestBatch of 10", StatusKind.FATAL),
        ("409", "Exceeded MaxRequestExpires of 1s", StatusKind.FATAL),
        ("409", "Exceeded MaxRequestMaxBytes of 1024", StatusKind.FATAL),
    ],
)
def test_status_messages_are_told_apart(status: str, description: str, kind: StatusKind) -> None:
    assert status_kind(status, description) is kind


@pytest.mark.parametrize(
    ("wide", "narrow", "covers"),
    [
        ("a.>", "a.b.*", True),
        ("a.>", "a", False),
        ("a.*", "a.b", True),
        ("a.*", "a.>", False),
        ("a.*", "a.b.c", False),
        (">", "x.y", True),
        ("a.b", "a.*", False),
        ("*.b", "a.b", True),
        ("a.*.>", "a.x", False),
    ],
)
def test_subject_coverage(wide: str, narrow: str, covers: bool) -> None:
    assert subject_covers(wide, narrow) is covers


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("1.5", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--max-age", text) == seconds


@pytest.mark.parametrize(("text", "size"), [("1000", 1000), ("10MB", 10**7), ("2GiB", 2 * 2**30)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size("--max-bytes", text) == size


@pytest.mark.parametrize("text", ["0s", "7days", "-1h", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="--max-age"):
        parse_duration("--max-age", text)


# ---------------------------------------------------------------- the sequencer


def test_in_order_deliveries_are_written_and_redeliveries_skipped() -> None:
    seq: Sequencer[str] = Sequencer(written=10, delivered=4)
    assert seq.judge(11, 5, "a") is Verdict.WRITE
    assert seq.judge(13, 6, "b") is Verdict.WRITE  # 12 is another subject's
    assert seq.judge(11, 7, "a again") is Verdict.SKIP  # redelivered: in the files
    assert seq.written == 13
    assert not seq.in_doubt


def test_a_lost_delivery_puts_the_sequencer_in_doubt_until_nothing_is_missing() -> None:
    seq: Sequencer[str] = Sequencer(written=0, delivered=0)
    assert seq.judge(1, 1, "1") is Verdict.WRITE
    # consumer sequence 2 (stream 2) was lost on the way
    assert seq.judge(3, 3, "3") is Verdict.HOLD
    assert seq.gaps == 1
    assert seq.judge(4, 4, "4") is Verdict.HOLD
    assert seq.release(server_pending=3, in_hand=2) is None  # 2 is still out there
    assert seq.judge(2, 5, "2") is Verdict.HOLD  # redelivered after the ack wait
    assert seq.release(server_pending=3, in_hand=3) == [(2, "2"), (3, "3"), (4, "4")]
    assert seq.written == 4
    assert not seq.in_doubt
    assert seq.judge(5, 6, "5") is Verdict.WRITE


def test_a_start_with_pending_deliveries_holds_new_ones() -> None:
    seq: Sequencer[str] = Sequencer(written=5, delivered=9, in_doubt=True)
    assert seq.judge(10, 10, "10") is Verdict.HOLD
    assert seq.judge(4, 11, "4") is Verdict.SKIP  # the crashed run had it in the files
    assert seq.judge(7, 12, "7") is Verdict.HOLD
    assert seq.held == 2
    assert seq.release(server_pending=2, in_hand=2) == [(7, "7"), (10, "10")]


def test_held_ones_the_stream_removed_are_not_counted_against_the_server() -> None:
    seq: Sequencer[str] = Sequencer(written=0, delivered=5, in_doubt=True)
    for stream_seq in (8, 9, 12):
        assert seq.judge(stream_seq, stream_seq, str(stream_seq)) is Verdict.HOLD
    assert (seq.held_from(1), seq.held_from(9), seq.held_from(10), seq.held_from(13)) == (
        3,
        2,
        1,
        0,
    )
    # the stream's max_age removed 1..9: the server counts only 12, and so do we
    assert seq.release(server_pending=1, in_hand=seq.held_from(10)) == [
        (8, "8"),
        (9, "9"),
        (12, "12"),
    ]
    assert seq.written == 12


def test_a_held_message_delivered_twice_is_held_once() -> None:
    seq: Sequencer[str] = Sequencer(written=0, in_doubt=True)
    assert seq.judge(3, 1, "first") is Verdict.HOLD
    assert seq.judge(3, 2, "second") is Verdict.HOLD
    assert seq.held == 1
    assert seq.drop_held() == ["second"]


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 60),
    lose=st.sets(st.integers(0, 59), max_size=10),
    crash_at=st.integers(0, 60),
    seed=st.integers(0, 2**32),
)
def test_every_message_is_written_once_in_order(
    count: int, lose: set[int], crash_at: int, seed: int
) -> None:
    """A model of a JetStream consumer: deliveries get consumer sequences; lost ones are
    redelivered (sorted) after the ack wait; a crash loses what was not committed.
    Whatever happens, the files get 1..count, once each, in order."""
    rng = random.Random(seed)
    files: list[int] = []
    committed = 0
    pending: dict[int, int] = {}  # stream seq -> deliveries
    dseq = 0
    next_new = 1

    def run(seq: Sequencer[int], crash_after: int | None) -> None:
        nonlocal committed, dseq, next_new
        done = 0
        while next_new <= count or pending:
            # redeliveries (sorted) of what is pending and not in hand, else new ones
            if rng.random() < 0.3 and pending:
                batch = sorted(pending)
            elif next_new <= count:
                batch = list(range(next_new, min(count, next_new + rng.randint(1, 5)) + 1))
                next_new = batch[-1] + 1
            else:
                batch = sorted(pending)
            written: list[int] = []
            acks: list[int] = []
            for s in batch:
                dseq += 1
                pending[s] = pending.get(s, 0) + 1
                if s - 1 in lose and pending[s] == 1:
                    continue  # lost on the way: the consumer sequence jumps
                verdict = seq.judge(s, dseq, s)
                if verdict is Verdict.WRITE:
                    written.append(s)
                    acks.append(s)
                elif verdict is Verdict.SKIP:
                    acks.append(s)
            done += 1
            if crash_after is not None and done > crash_after:
                return  # written but not committed: cut off by the checkpoint
            files.extend(written)
            committed = seq.written
            for s in acks:
                pending.pop(s, None)
            if seq.in_doubt:
                released = seq.release(len(pending), seq.held)
                if released:
                    files.extend(s for s, _ in released)
                    committed = seq.written
                    for s, _ in released:
                        pending.pop(s, None)

    run(Sequencer(0, delivered=0), crash_after=crash_at // 10)
    # the next run: starts from the checkpoint; in doubt when deliveries are pending
    in_doubt = bool(pending) and max(pending) > committed
    run(Sequencer(committed, delivered=dseq, in_doubt=in_doubt), crash_after=None)
    assert files == list(range(1, count + 1))
