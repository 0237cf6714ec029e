"""The header codec: every parser returns a value in range or None (or raises
:class:`HeaderError` where documented), whatever text a peer sends."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from natstream._protocol import RequesterMachine, _wire
from natstream._protocol._wire import (
    HDR_DEADLINE,
    HDR_HEARTBEAT,
    HDR_RESUME,
    HDR_VERSION,
    HDR_WINDOW,
    MAX_DEADLINE_MS,
    MAX_HEARTBEAT_MS,
    MAX_SEQ,
    MAX_WINDOW_BYTES,
    MAX_WINDOW_MESSAGES,
    MIN_HEARTBEAT_MS,
    PROTOCOL_VERSION,
    STREAM_END,
    STREAM_ERROR_PREFIX,
    HeaderError,
    RequestOptions,
    Resume,
    format_ack,
    format_window,
    parse_ack,
    parse_int,
    parse_request_headers,
    parse_resume,
    parse_window,
)

from .conftest import PROFILE

CI = settings.get_profile(PROFILE)

# Text a hostile or broken peer might put in a header value.
TRICKY = [
    "",
    " ",
    "0",
    "-1",
    "+1",
    "1 ",
    " 1",
    "1  1",
    "1\t1",
    "1 1 1",
    "0 0",
    "1.5",
    "1e3",
    "0x10",
    "1_000",
    "NaN",
    "inf",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() is true, not ASCII
    "\u00b2",  # SUPERSCRIPT TWO: isdigit() true, int() refuses it
    "\uff11\uff12",  # fullwidth digits
    "9" * 16,
    "9" * 20,
    "9" * 21,
    str(MAX_SEQ),
    str(MAX_SEQ + 1),
    "1\r\nNs-Ctl: cancel",
    "\x00",
    "\ud800",  # a lone surrogate, as a lenient decoder might produce
]

hostile_text = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=40),
    st.text(alphabet="0123456789 .-+\t\u0663\u00b2", max_size=30),
    st.integers(-(2**80), 2**80).map(str),
    st.tuples(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70)).map(
        lambda t: f"{t[0]} {t[1]}"
    ),
    st.tuples(st.integers(-5, 2**60), st.text(alphabet="0123456789.ab ", max_size=40)).map(
        lambda t: f"{t[0]} {t[1]}"
    ),
)

HEADER_NAMES = [getattr(_wire, n) for n in _wire.__all__ if n.startswith("HDR_")]
hostile_headers = st.dictionaries(
    st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=10)), hostile_text, max_size=8
)


# ---------------------------------------------------------------- constants


def test_header_names_are_distinct_ascii_tokens() -> None:
    assert len(set(HEADER_NAMES)) == len(HEADER_NAMES)
    for name in HEADER_NAMES:
        # RFC 7230 token characters: what NATS (and nats-py) accept as a header name.
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name), name


def test_in_band_markers_are_the_seeds() -> None:
    assert STREAM_END == b"__STREAM_END__"
    assert STREAM_ERROR_PREFIX == b"__STREAM_ERROR__:"
    assert PROTOCOL_VERSION == "1"


# ---------------------------------------------------------------- integers


@settings(CI)
@given(hostile_text)
def test_parse_int_is_none_or_in_range(value: str) -> None:
    n = parse_int(value)
    assert n is None or (type(n) is int and 0 <= n <= MAX_SEQ)
    if n is not None:
        assert value.isascii()
        assert value.isdigit()


@settings(CI)
@given(st.integers(0, MAX_SEQ))
def test_parse_int_round_trips(n: int) -> None:
    assert parse_int(str(n)) == n


@settings(CI)
@given(st.integers(), st.integers(0, 1000), st.integers(0, 1000))
def test_parse_int_honours_bounds(n: int, lo: int, span: int) -> None:
    hi = lo + span
    expected = n if lo <= n <= hi else None
    assert parse_int(str(n), lo, hi) == expected


@pytest.mark.parametrize("value", [None, *TRICKY[:2], "-1", "+1", " 1", "1.5", "\u0663", "\u00b2"])
def test_parse_int_rejects(value: str | None) -> None:
    assert parse_int(value) is None


def test_parse_int_rejects_more_than_twenty_digits_without_converting() -> None:
    assert parse_int("0" * 20) == 0
    assert parse_int("0" * 21) is None
    assert parse_int("9" * 5000) is None  # no giant int() conversion of hostile input


# ---------------------------------------------------------------- pairs


@settings(CI)
@given(hostile_text)
def test_parse_window_is_none_or_clamped(value: str) -> None:
    w = parse_window(value)
    if w is not None:
        assert 1 <= w[0] <= MAX_WINDOW_MESSAGES
        assert 1 <= w[1] <= MAX_WINDOW_BYTES


@settings(CI)
@given(st.integers(1, MAX_SEQ), st.integers(1, MAX_SEQ))
def test_window_round_trips_and_clamps(messages: int, nbytes: int) -> None:
    assert parse_window(format_window(messages, nbytes)) == (
        min(messages, MAX_WINDOW_MESSAGES),
        min(nbytes, MAX_WINDOW_BYTES),
    )


@pytest.mark.parametrize("value", ["0 1", "1 0", "0 0", "1", "1 1 1", "-1 5", "1,1", ""])
def test_parse_window_rejects(value: str) -> None:
    assert parse_window(value) is None


@settings(CI)
@given(hostile_text)
def test_parse_ack_is_none_or_in_range(value: str) -> None:
    a = parse_ack(value)
    if a is not None:
        assert 0 <= a[0] <= MAX_SEQ
        assert 0 <= a[1] <= MAX_SEQ


@settings(CI)
@given(st.integers(0, MAX_SEQ), st.integers(0, MAX_SEQ))
def test_ack_round_trips(seq: int, nbytes: int) -> None:
    assert parse_ack(format_ack(seq, nbytes)) == (seq, nbytes)


# ---------------------------------------------------------------- resume

positions = st.one_of(
    st.integers(0, 10**16 - 1).map(str),
    st.tuples(st.integers(0, 10**16 - 1), st.integers(0, 10**16 - 1)).map(
        lambda t: f"{t[0]}.{t[1]}"
    ),
)


@settings(CI)
@given(st.integers(0, MAX_SEQ), positions)
def test_resume_round_trips(seq: int, pos: str) -> None:
    assert parse_resume(f"{seq} {pos}") == Resume(seq, pos)


@settings(CI)
@given(hostile_text)
def test_parse_resume_is_none_or_well_formed(value: str) -> None:
    r = parse_resume(value)
    if r is not None:
        assert 0 <= r.seq <= MAX_SEQ
        assert re.fullmatch(r"[0-9]{1,16}(\.[0-9]{1,16})?", r.pos)
        assert r.pos.isascii()


@pytest.mark.parametrize(
    "value", ["5", "5 ", " 5", "5 x", "5 1.", "5 .1", "5 1.2.3", "5 -1", "x 1", "5 " + "1" * 17]
)
def test_parse_resume_rejects(value: str) -> None:
    assert parse_resume(value) is None


def test_resume_is_frozen() -> None:
    r = Resume(1, "0")
    with pytest.raises(AttributeError):
        r.seq = 2  # type: ignore[misc]


# ---------------------------------------------------------------- request headers


@pytest.mark.parametrize("headers", [None, {}, {"X-Other": "1"}, {HDR_WINDOW: "garbage"}])
def test_requests_without_version_are_plain(headers: dict[str, str] | None) -> None:
    assert parse_request_headers(headers) == RequestOptions()
    assert RequestOptions().version is None


def _v1(**extra: str) -> dict[str, str]:
    return {HDR_VERSION: "1", HDR_WINDOW: "10 1000", HDR_HEARTBEAT: "500", **extra}


def test_v1_request_is_parsed() -> None:
    opts = parse_request_headers(_v1(**{HDR_DEADLINE: "2500", HDR_RESUME: "7 3.4"}))
    assert opts == RequestOptions("1", 10, 1000, 500, 2500, Resume(7, "3.4"))


@pytest.mark.parametrize(
    "headers",
    [
        {HDR_VERSION: "2", HDR_WINDOW: "1 1", HDR_HEARTBEAT: "1"},
        {HDR_VERSION: "", HDR_WINDOW: "1 1", HDR_HEARTBEAT: "1"},
        {HDR_VERSION: "1"},
        {HDR_VERSION: "1", HDR_WINDOW: "1 1"},
        _v1(**{HDR_WINDOW: "0 5"}),
        _v1(**{HDR_HEARTBEAT: "-1"}),
        _v1(**{HDR_HEARTBEAT: str(MAX_HEARTBEAT_MS + 1)}),
        _v1(**{HDR_DEADLINE: ""}),
        _v1(**{HDR_DEADLINE: str(MAX_DEADLINE_MS + 1)}),
        _v1(**{HDR_RESUME: "1"}),
        _v1(**{HDR_RESUME: "1 x"}),
    ],
)
def test_malformed_v1_request_raises_header_error(headers: dict[str, str]) -> None:
    with pytest.raises(HeaderError):
        parse_request_headers(headers)


def test_header_error_does_not_echo_huge_values() -> None:
    with pytest.raises(HeaderError) as info:
        parse_request_headers(_v1(**{HDR_WINDOW: "x" * 100_000}))
    assert len(str(info.value)) < 200
    with pytest.raises(HeaderError) as info:
        parse_request_headers({HDR_VERSION: "v" * 100_000})
    assert len(str(info.value)) < 200


def test_heartbeat_is_clamped_to_the_minimum() -> None:
    assert parse_request_headers(_v1(**{HDR_HEARTBEAT: "1"})).heartbeat_ms == MIN_HEARTBEAT_MS


def test_heartbeat_zero_means_off() -> None:
    # The requester's ``heartbeat=0`` turns heartbeats and stall detection off; a
    # responder that turned it into its minimum would declare the requester gone
    # after a few milliseconds without an ack.
    assert parse_request_headers(_v1(**{HDR_HEARTBEAT: "0"})).heartbeat_ms == 0


@settings(CI)
@given(hostile_headers)
@example({HDR_VERSION: "1", HDR_WINDOW: "\u00b2 1", HDR_HEARTBEAT: "1"})
@example({HDR_VERSION: "1", HDR_WINDOW: "1 1", HDR_HEARTBEAT: "1", HDR_RESUME: "1 \u0663"})
def test_parse_request_headers_raises_only_header_error(headers: dict[str, str]) -> None:
    try:
        opts = parse_request_headers(headers)
    except HeaderError as exc:
        error: HeaderError | None = exc
    else:
        error = None
    if error is not None:
        assert HDR_VERSION in headers
        assert len(str(error)) < 200
        return
    if opts.version is None:
        assert opts == RequestOptions()
        return
    assert 1 <= opts.window_messages <= MAX_WINDOW_MESSAGES
    assert 1 <= opts.window_bytes <= MAX_WINDOW_BYTES
    assert opts.heartbeat_ms == 0 or MIN_HEARTBEAT_MS <= opts.heartbeat_ms <= MAX_HEARTBEAT_MS
    assert opts.deadline_ms is None or 0 <= opts.deadline_ms <= MAX_DEADLINE_MS


@pytest.mark.fuzz
@settings(CI)
@given(hostile_headers, hostile_text, hostile_text)
def test_fuzz_codec_never_raises_unexpectedly(headers: dict[str, str], a: str, b: str) -> None:
    for value in (a, b, f"{a} {b}"):
        parse_int(value)
        parse_window(value)
        parse_ack(value)
        parse_resume(value)
    try:
        parse_request_headers(headers)
    except HeaderError:
        pass


# ---------------------------------------------------------------- requester to responder


@settings(CI)
@given(
    window_messages=st.integers(1, 2 * MAX_WINDOW_MESSAGES),
    window_bytes=st.integers(1, 2 * MAX_WINDOW_BYTES),
    heartbeat=st.one_of(st.just(0.0), st.floats(0.01, 2 * MAX_HEARTBEAT_MS / 1000)),
    remaining=st.one_of(st.none(), st.floats(-10.0, 60 * 24 * 3600.0)),
    resume=st.one_of(st.none(), st.builds(Resume, st.integers(0, MAX_SEQ), positions)),
)
def test_what_a_requester_sends_a_responder_accepts(
    window_messages: int,
    window_bytes: int,
    heartbeat: float,
    remaining: float | None,
    resume: Resume | None,
) -> None:
    """Any configuration a requester accepts produces a request no responder rejects,
    and both sides end up with the same window and heartbeat."""
    m = RequesterMachine(
        100.0,
        window_messages=window_messages,
        window_bytes=window_bytes,
        heartbeat=heartbeat,
        deadline=None if remaining is None else 100.0 + remaining,
        resume=resume,
    )
    opts = parse_request_headers(m.request_headers(100.0))
    assert opts.version == PROTOCOL_VERSION
    assert (opts.window_messages, opts.window_bytes) == (m.window_messages, m.window_bytes)
    assert opts.heartbeat_ms == round(m.heartbeat * 1000)
    assert (heartbeat == 0) == (opts.heartbeat_ms == 0)
    assert opts.resume == resume
    if remaining is None:
        assert opts.deadline_ms is None
    else:
        assert opts.deadline_ms is not None
        assert opts.deadline_ms == min(MAX_DEADLINE_MS, max(0, round(remaining * 1000)))


@CI
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=50))
def test_pack_then_unpack_gives_the_items_back(items: list[bytes]) -> None:
    payload = _wire.pack_items(items)
    assert _wire.unpack_items(payload, len(items)) == items
    assert _wire.unpack_items(payload, len(items) + 1) is None
    assert _wire.unpack_items(payload + b"x", len(items)) is None
    unpacked = _wire.unpack_offsets(payload, len(items))
    assert unpacked is not None
    offsets, largest = unpacked
    assert [payload[a:b] for a, b in itertools.pairwise(offsets)] == items
    assert offsets[0] == 4 * len(items)
    assert largest == max(map(len, items))


@pytest.mark.fuzz
@CI
@given(st.binary(max_size=200), st.integers(-2, 70_000))
def test_fuzz_unpack_never_raises(payload: bytes, count: int) -> None:
    items = _wire.unpack_items(payload, count)
    if items is not None:
        assert len(items) == count
        assert _wire.pack_items(items) == payload


@pytest.mark.parametrize(
    ("pos", "k", "expected"),
    [("7", 2, "9"), ("3.4", 0, "3.4"), ("3.4", 5, "3.9"), ("0.9", 1, "0.10"), ("9" * 16, 1, None)],
)
def test_pos_add(pos: str, k: int, expected: str | None) -> None:
    assert _wire.pos_add(pos, k) == expected
