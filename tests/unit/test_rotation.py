"""Hour buckets, names and retention rules: pure functions, property-tested."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natstream._errors import ConfigError
from natstream._writers._rotation import (
    LOCAL_TIME,
    HourBucket,
    Retention,
    compile_pattern,
    hour_bucket,
    parse_retention,
    render_path,
)

# Zones with DST, half-hour and 45-minute offsets, a 30-minute DST shift, and no DST.
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Chatham",
    "Europe/Dublin",
]
DEFAULT = compile_pattern("stream_data_%Y-%m-%d_%H.log")

instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES).map(ZoneInfo)


def walk(start: datetime, count: int) -> Iterator[HourBucket]:
    bucket = hour_bucket(start)
    for _ in range(count):
        yield bucket
        bucket = hour_bucket(bucket.end.astimezone(start.tzinfo))


@settings(max_examples=150, deadline=None)
@given(instant=instants, tz=zones)
def test_bucket_holds_the_instant_and_is_at_most_an_hour(instant: datetime, tz: ZoneInfo) -> None:
    bucket = hour_bucket(instant.astimezone(tz))
    assert bucket.start <= instant < bucket.end
    assert timedelta(0) < bucket.end - bucket.start <= timedelta(hours=1)
    assert instant.astimezone(tz).utcoffset() == bucket.offset
    # Every instant of the bucket gets the same bucket, hence the same file.
    last = bucket.end - timedelta(microseconds=1)
    assert hour_bucket(last.astimezone(tz)) == bucket
    assert hour_bucket(bucket.start.astimezone(tz)) == bucket


@settings(max_examples=60, deadline=None)
@given(instant=instants, tz=zones)
def test_consecutive_buckets_tile_time_and_never_share_a_name(
    instant: datetime, tz: ZoneInfo
) -> None:
    buckets = list(walk(instant.astimezone(tz), 30))
    for before, after in itertools.pairwise(buckets):
        assert before.end == after.start
    names = [render_path(DEFAULT, b) for b in buckets]
    assert len(set(names)) == len(names)
    for bucket, name in zip(buckets, names, strict=True):
        assert DEFAULT.regex.fullmatch(name)
        assert fnmatch.fnmatchcase(name, DEFAULT.glob)
        # Offsets appear exactly when the wall-clock hour is shared.
        assert (name != bucket.stamp.strftime(DEFAULT.pattern)) == bucket.shared_hour


@pytest.mark.parametrize(
    ("zone", "first_utc", "expected"),
    [
        (
            "Europe/Berlin",  # fall back: 03:00 CEST -> 02:00 CET
            datetime(2026, 10, 24, 23, 0, tzinfo=UTC),
            ["2026-10-25_01", "2026-10-25_02+0200", "2026-10-25_02+0100", "2026-10-25_03"],
        ),
        (
            "Europe/Berlin",  # spring forward: 02:00 CET -> 03:00 CEST, no hour 02
            datetime(2026, 3, 29, 0, 0, tzinfo=UTC),
            ["2026-03-29_01", "2026-03-29_03", "2026-03-29_04"],
        ),
        (
            "America/New_York",  # fall back: 02:00 EDT -> 01:00 EST
            datetime(2026, 11, 1, 4, 0, tzinfo=UTC),
            ["2026-11-01_00", "2026-11-01_01-0400", "2026-11-01_01-0500", "2026-11-01_02"],
        ),
        (
            "Australia/Lord_Howe",  # 02:00 +11 -> 01:30 +1030: hour 01 cut in two
            datetime(2026, 4, 4, 14, 0, tzinfo=UTC),
            ["2026-04-05_01+1100", "2026-04-05_01+1030", "2026-04-05_02"],
        ),
    ],
)
def test_dst_days_name_files_by_the_documented_rule(
    zone: str, first_utc: datetime, expected: list[str]
) -> None:
    tz = ZoneInfo(zone)
    names = [render_path(DEFAULT, b) for b in walk(first_utc.astimezone(tz), len(expected))]
    assert names == [f"stream_data_{stem}.log" for stem in expected]


def test_half_hour_zone_buckets_start_at_half_past_utc() -> None:
    instant = datetime(2026, 4, 4, 13, 10, tzinfo=UTC)
    bucket = hour_bucket(instant.astimezone(ZoneInfo("Asia/Kolkata")))
    assert (bucket.start, bucket.end) == (
        datetime(2026, 4, 4, 12, 30, tzinfo=UTC),
        datetime(2026, 4, 4, 13, 30, tzinfo=UTC),
    )
    assert render_path(DEFAULT, bucket) == "stream_data_2026-04-04_18.log"


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        hour_bucket(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("%Y/%m/%d/%H.jsonl", ["2026/10/25/02+0200.jsonl", "2026/10/25/02+0100.jsonl"]),
        ("data-%Y%m%d%H", ["data-2026102502+0200", "data-2026102502+0100"]),
        ("%Y-%m-%d_%H%z.log", ["2026-10-25_02+0200.log", "2026-10-25_02+0100.log"]),
        ("day-%Y-%m-%d.log", ["day-2026-10-25.log", "day-2026-10-25.log"]),  # one file a day
        ("100%%_%H.log", ["100%_02+0200.log", "100%_02+0100.log"]),
    ],
)
def test_offset_suffix_respects_the_pattern(pattern: str, expected: list[str]) -> None:
    compiled = compile_pattern(pattern)
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    names = [render_path(compiled, b) for b in walk(first, 2)]
    assert names == expected
    for name in names:
        assert compiled.regex.fullmatch(name)
        assert compiled.regex.fullmatch(name + ".gz")
        assert not compiled.regex.fullmatch(name + ".bak")


@pytest.mark.parametrize(
    "pattern", ["", "/abs/%H.log", "a//b", "../%H.log", "a/./b", "x/", "%D.log"]
)
def test_bad_patterns_are_config_errors(pattern: str) -> None:
    with pytest.raises(ConfigError):
        compile_pattern(pattern)


def test_pattern_regex_does_not_match_neighbours() -> None:
    for name in ["stream_data_2026-1-25_02.log", "stream_data_current.log", "notes.txt"]:
        assert not DEFAULT.regex.fullmatch(name)


@pytest.fixture
def new_york_local(local_time_zone: Callable[[str], None]) -> None:
    local_time_zone("America/New_York")


@pytest.mark.usefixtures("new_york_local")
def test_local_time_agrees_with_zoneinfo_through_a_fall_back_night() -> None:
    zone = ZoneInfo("America/New_York")
    start = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    for step in range(0, 6 * 3600, 600):
        instant = start + timedelta(seconds=step)
        local, reference = instant.astimezone(LOCAL_TIME), instant.astimezone(zone)
        assert local.utcoffset() == reference.utcoffset()
        assert (local.replace(tzinfo=None), local.fold) == (
            reference.replace(tzinfo=None),
            reference.fold,
        )
        assert hour_bucket(local) == hour_bucket(reference)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", Retention(max_age=timedelta(days=7))),
        ("24h", Retention(max_age=timedelta(hours=24))),
        ("90m", Retention(max_age=timedelta(minutes=90))),
        ("2w", Retention(max_age=timedelta(weeks=2))),
        ("30s", Retention(max_age=timedelta(seconds=30))),
        ("48", Retention(max_files=48)),
        ("48files", Retention(max_files=48)),
        (" 7D , 100 ", Retention(max_age=timedelta(days=7), max_files=100)),
    ],
)
def test_parse_retention(text: str, expected: Retention) -> None:
    assert parse_retention(text) == expected


@pytest.mark.parametrize("text", ["", "7x", "0d", "0", "-1d", "7d,8d", "3,4", "d7", "1.5h"])
def test_parse_retention_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_retention(text)


@given(number=st.integers(1, 10_000), unit=st.sampled_from(["s", "m", "h", "d", "w"]))
def test_parse_retention_ages(number: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_retention(f"{number}{unit}").max_age == timedelta(seconds=number * seconds)


def test_retention_coerce() -> None:
    assert Retention.coerce(3) == Retention(max_files=3)
    assert Retention.coerce(timedelta(hours=1)) == Retention(max_age=timedelta(hours=1))
    assert Retention.coerce("1h") == Retention(max_age=timedelta(hours=1))
    for bad in [True, 0, -1, 1.5, timedelta(0)]:
        with pytest.raises(ConfigError):
            Retention.coerce(bad)  # type: ignore[arg-type]
