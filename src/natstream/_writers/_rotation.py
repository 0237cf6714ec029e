"""Hour buckets, file names and retention rules: pure functions of time, no I/O.

A *bucket* is the span of time whose records go to one file: a wall-clock hour in the
writer's time zone, cut where the zone's UTC offset changes. Outside DST changes a bucket
is simply the hour ``[HH:00, HH+1:00)``.

Naming rule (documented on :class:`~natstream.HourlyFileWriter`): a file is named by
``start.strftime(pattern)``. When the zone's UTC offset changes *within* a wall-clock hour
(the hour a fall-back day repeats, or an hour cut by a half-hour shift), the two buckets
sharing that wall-clock hour would get one name, so both carry their UTC offset, inserted
before the file's extension: ``stream_data_2026-10-25_02+0200.log`` then
``stream_data_2026-10-25_02+0100.log`` in Europe/Berlin. Nothing is added when the pattern
already holds ``%z`` or does not name hours at all (a daily ``%Y-%m-%d.log`` pattern means
"one file per day", so the repeated hour joins its day's file as asked).
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

from .._errors import ConfigError

__all__ = [
    "LOCAL_TIME",
    "CurrentHour",
    "HourBucket",
    "Retention",
    "clock_reading",
    "compile_pattern",
    "hour_bucket",
    "parse_retention",
    "render_path",
]

_HOUR: Final = timedelta(hours=1)
_MINUTE: Final = timedelta(minutes=1)
_SECOND: Final = timedelta(seconds=1)
_EPOCH: Final = datetime(1970, 1, 1)


class _LocalTime(tzinfo):
    """The system's local time zone (``TZ``, ``/etc/localtime``), folds included.

    Python has no ``ZoneInfo`` for "whatever the system uses"; this asks the C library
    through naive ``astimezone()``, which honours ``fold`` (PEP 495), so the repeated hour
    of a fall-back day is told apart just as with a :class:`zoneinfo.ZoneInfo`.
    """

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return _system_local(dt).utcoffset() or timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return _system_local(dt).tzname() or ""

    def fromutc(self, dt: datetime) -> datetime:
        seconds = (dt.replace(tzinfo=None) - _EPOCH) / _SECOND
        # fromtimestamp sets fold=1 on the second pass through a repeated hour.
        return datetime.fromtimestamp(seconds).replace(tzinfo=self)

    def __repr__(self) -> str:
        return "LOCAL_TIME"


def _system_local(dt: datetime | None) -> datetime:
    naive = datetime.now() if dt is None else dt.replace(tzinfo=None)
    return naive.astimezone()


LOCAL_TIME: Final[tzinfo] = _LocalTime()
"""The system's local time zone as a tzinfo that knows its DST folds."""


@dataclass(frozen=True, slots=True)
class HourBucket:
    """The span ``[start, end)`` whose records go to one file.

    Attributes:
        wall_hour: naive local time at the top of the wall-clock hour (minute 0).
        offset: the zone's UTC offset throughout the bucket.
        tzname: the zone's abbreviation during the bucket (what ``%Z`` renders).
        start: first instant of the bucket, aware, in UTC.
        end: first instant of the next bucket, aware, in UTC.
        shared_hour: the offset changes within this wall-clock hour, so another bucket
            has the same ``wall_hour``; names then carry the offset.
    """

    wall_hour: datetime
    offset: timedelta
    tzname: str
    start: datetime
    end: datetime
    shared_hour: bool

    @property
    def stamp(self) -> datetime:
        """``wall_hour`` with a fixed-offset tzinfo: what ``strftime`` renders."""
        return self.wall_hour.replace(tzinfo=timezone(self.offset, self.tzname))


def _key(instant: datetime, tz: tzinfo) -> tuple[datetime, timedelta]:
    local = instant.astimezone(tz)
    offset = local.utcoffset()
    assert offset is not None  # every tz handed in was checked to be aware
    return local.replace(minute=0, second=0, microsecond=0, tzinfo=None, fold=0), offset


def _first_second(lo: datetime, hi: datetime, wanted: object, tz: tzinfo, same: bool) -> datetime:
    """First whole second in ``[lo, hi]`` where ``(_key == wanted) is same``; ``hi`` must match."""
    lo_s, hi_s = math.floor(lo.timestamp()), math.floor(hi.timestamp())
    while lo_s < hi_s:
        mid = (lo_s + hi_s) // 2
        if (_key(datetime.fromtimestamp(mid, UTC), tz) == wanted) is same:
            hi_s = mid
        else:
            lo_s = mid + 1
    return datetime.fromtimestamp(hi_s, UTC)


def _hour_is_shared(wall_hour: datetime, tz: tzinfo) -> bool:
    # Any wall time of the hour that is repeated (fold) or skipped (gap) means the offset
    # changes inside it. Offsets change on whole minutes in every tz database zone.
    for minute in range(60):
        wall = wall_hour + minute * _MINUTE
        if (
            wall.replace(tzinfo=tz, fold=0).utcoffset()
            != wall.replace(tzinfo=tz, fold=1).utcoffset()
        ):
            return True
    return False


def hour_bucket(now: datetime) -> HourBucket:
    """The bucket holding the instant ``now``, in ``now``'s own time zone.

    Args:
        now: an aware datetime; its tzinfo is the zone the hours are counted in.

    Raises:
        ValueError: ``now`` is naive.
    """
    tz = now.tzinfo
    if tz is None or now.utcoffset() is None:
        raise ValueError(f"hour_bucket needs an aware datetime, got {now!r}")
    instant = now.astimezone(UTC)
    key = _key(instant, tz)
    wall_hour, offset = key
    start = (wall_hour - offset).replace(tzinfo=UTC)
    if _key(start, tz) != key:  # the offset changed earlier in this wall-clock hour
        start = _first_second(start, instant, key, tz, same=True)
    end = (wall_hour + _HOUR - offset).replace(tzinfo=UTC)
    if _key(end - _SECOND, tz) != key:  # the offset changes later in this wall-clock hour
        end = _first_second(instant + _SECOND, end - _SECOND, key, tz, same=False)
    return HourBucket(
        wall_hour=wall_hour,
        offset=offset,
        tzname=instant.astimezone(tz).tzname() or "",
        start=start,
        end=end,
        shared_hour=_hour_is_shared(wall_hour, tz),
    )


# One strftime directive: %, glibc flags and width, an E/O modifier, the conversion.
_DIRECTIVE: Final = re.compile(r"%[-_0^#]?\d*[EO]?[A-Za-z%+]")
_DIRECTIVE_RE: Final = {
    "%Y": r"\d{4}",
    "%G": r"\d{4}",
    "%y": r"\d{2}",
    "%m": r"\d{2}",
    "%d": r"\d{2}",
    "%H": r"\d{2}",
    "%I": r"\d{2}",
    "%M": r"\d{2}",
    "%S": r"\d{2}",
    "%U": r"\d{2}",
    "%W": r"\d{2}",
    "%V": r"\d{2}",
    "%j": r"\d{3}",
    "%u": r"\d",
    "%w": r"\d",
    "%z": r"[+-]\d{4}(?:\d{2})?",
}
_OFFSET_RE: Final = r"(?:[+-]\d{4}(?:\d{2})?)?"
COMPRESSED_SUFFIXES: Final = {"gzip": ".gz", "zstd": ".zst"}


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    """A checked file-name pattern, split where the offset suffix goes.

    Attributes:
        head: everything before the literal extension (strftime syntax).
        ext: the literal extension of the last path component (``".log"``), or ``""``.
        glob: a glob (relative to the base directory) matching every name the pattern
            can produce, plus compressed and temporary variants.
        regex: matches exactly the names the pattern produces (relative, ``/``-separated),
            with the optional offset suffix; group ``compressed`` holds ``.gz``/``.zst``,
            group ``tmp`` holds ``.tmp`` for an unfinished compression.
    """

    pattern: str
    head: str
    ext: str
    glob: str
    regex: re.Pattern[str]


def compile_pattern(pattern: str) -> CompiledPattern:
    """Check a strftime file-name pattern and prepare it for naming and matching.

    Raises:
        ConfigError: the pattern is empty, absolute, has empty, ``.`` or ``..``
            components, or a directive renders a ``/``.
    """
    if not pattern or pattern.startswith("/") or pattern.endswith("/"):
        raise ConfigError(
            f"pattern {pattern!r} must be a relative file path such as '%Y/%m/%d/%H.log'"
        )
    parts = pattern.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"pattern {pattern!r} has an empty, '.' or '..' path component")
    sample = datetime(2001, 12, 31, 23, tzinfo=timezone(timedelta(hours=-11), "X"))
    if sample.strftime(pattern).count("/") != pattern.count("/"):
        raise ConfigError(f"pattern {pattern!r}: a directive renders '/'; use '/' literally")

    last = parts[-1]
    ext = ""
    # The extension is the literal text from the last '.' of the last component, when no
    # directive follows it and it is not the first character (".hidden" has no extension).
    dot = last.rfind(".")
    if dot > 0 and "%" not in last[dot:]:
        ext = last[dot:]
    head = pattern[: len(pattern) - len(ext)]

    glob_parts: list[str] = []
    regex_parts: list[str] = []
    pos = 0
    for match in _DIRECTIVE.finditer(head):
        literal = head[pos : match.start()]
        glob_parts.append(glob.escape(literal))
        regex_parts.append(re.escape(literal))
        token = match.group()
        if token == "%%":
            glob_parts.append("%")
            regex_parts.append("%")
        else:
            glob_parts.append("*")
            regex_parts.append(_DIRECTIVE_RE.get(token, r"[^/]+?"))
        pos = match.end()
    glob_parts.append(glob.escape(head[pos:]))
    regex_parts.append(re.escape(head[pos:]))
    glob_text = re.sub(r"\*+", "*", "".join(glob_parts) + "*" + glob.escape(ext) + "*")
    regex_text = (
        "".join(regex_parts)
        + _OFFSET_RE
        + re.escape(ext)
        + r"(?P<compressed>\.gz|\.zst)?(?P<tmp>\.tmp)?"
    )
    return CompiledPattern(pattern, head, ext, glob_text, re.compile(regex_text))


def render_path(compiled: CompiledPattern, bucket: HourBucket) -> str:
    """The file name (relative to the base directory) for a bucket; see the module doc."""
    stamp = bucket.stamp
    head = stamp.strftime(compiled.head)
    ext = stamp.strftime(compiled.ext)
    tell_apart = _names_hours(compiled, bucket) and not _names_offset(compiled, bucket)
    if bucket.shared_hour and tell_apart:
        return head + stamp.strftime("%z") + ext
    return head + ext


def clock_reading(now: datetime, utc: bool) -> tuple[float, tzinfo]:
    """What a clock's ``now`` says: seconds since the epoch, and the zone hours are
    counted in (UTC with ``utc``; else ``now``'s own zone, or the system's local time
    when ``now`` is naive).

    ``utc`` is positional because an injected clock is read on every ``write()``:
    passing it by keyword measurably slows that path.
    """
    tz = now.tzinfo
    if tz is None:
        tz = UTC if utc else LOCAL_TIME
        now = now.replace(tzinfo=tz)
    elif utc:
        tz = UTC
    return now.timestamp(), tz


class CurrentHour:
    """The bucket a writer's records go to now: its file's path and its bounds.

    Starts with no path and an empty range, so the first :meth:`move` sets both.

    Attributes:
        path: the file's path, ``base`` joined with the rendered pattern.
        start: the bucket's first instant, in seconds since the epoch.
        end: the next bucket's first instant, in seconds since the epoch.
    """

    __slots__ = ("_base", "_pattern", "end", "path", "start")

    def __init__(self, base: str, pattern: CompiledPattern) -> None:
        self._base = base
        self._pattern = pattern
        self.path = ""
        self.start = math.inf
        self.end = -math.inf

    def move(self, now: float, tz: tzinfo) -> bool:
        """Make the bucket of ``now`` (seconds since the epoch; hours counted in ``tz``)
        the current one; True when its file is another."""
        bucket = hour_bucket(datetime.fromtimestamp(now, tz))
        path = os.path.join(self._base, render_path(self._pattern, bucket))
        changed = path != self.path
        self.path = path
        self.start = bucket.start.timestamp()
        self.end = bucket.end.timestamp()
        return changed


def _names_hours(compiled: CompiledPattern, bucket: HourBucket) -> bool:
    stamp = bucket.stamp
    return stamp.strftime(compiled.pattern) != (stamp + _HOUR).strftime(compiled.pattern)


def _names_offset(compiled: CompiledPattern, bucket: HourBucket) -> bool:
    other = bucket.wall_hour.replace(tzinfo=timezone(bucket.offset + _MINUTE, bucket.tzname))
    return bucket.stamp.strftime(compiled.pattern) != other.strftime(compiled.pattern)


@dataclass(frozen=True, slots=True)
class Retention:
    """Which finished hour files to keep; the file being written is never removed.

    A finished file (plain or compressed) is removed when its modification time is older
    than ``max_age``, or when more than ``max_files`` finished files are newer than it.
    Either limit may be None; at least one must be set.

    Attributes:
        max_age: remove files last modified longer ago than this.
        max_files: keep at most this many finished files, newest first by mtime.
    """

    max_age: timedelta | None = None
    max_files: int | None = None

    def __post_init__(self) -> None:
        if self.max_age is None and self.max_files is None:
            raise ConfigError("retention needs max_age, max_files or both")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ConfigError(f"retention max_age must be positive, got {self.max_age}")
        if self.max_files is not None and (isinstance(self.max_files, bool) or self.max_files < 1):
            raise ConfigError(f"retention max_files must be >= 1, got {self.max_files!r}")

    @classmethod
    def coerce(cls, value: Retention | str | int | timedelta) -> Retention:
        """A Retention from itself, a string (:func:`parse_retention`), a count or an age.

        Raises:
            ConfigError: the value is none of these or out of range.
        """
        if isinstance(value, Retention):
            return value
        if isinstance(value, str):
            return parse_retention(value)
        if isinstance(value, timedelta):
            return cls(max_age=value)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_files=value)
        raise ConfigError(
            f"retention must be a Retention, a string like '7d', a file count or a "
            f"timedelta, not {value!r}"
        )


_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RETENTION_PART: Final = re.compile(r"(\d+)\s*([smhdw]|files?)?")


def parse_retention(text: str) -> Retention:
    """Parse a retention string, as the CLI's ``--retention`` takes it.

    Forms: an age ``<n><unit>`` with unit ``s``, ``m``, ``h``, ``d`` or ``w`` (``"7d"``,
    ``"24h"``); a count of files ``<n>`` or ``<n>files`` (``"48"``); or both, comma
    separated (``"7d,100"``: at most 100 files, none older than 7 days).

    Raises:
        ConfigError: the text is not one of these forms, or a number is zero.
    """
    max_age: timedelta | None = None
    max_files: int | None = None
    for raw in text.split(","):
        match = _RETENTION_PART.fullmatch(raw.strip().lower())
        if match is None:
            raise ConfigError(
                f"retention {text!r}: {raw.strip()!r} is neither an age like '7d', '24h', "
                f"'90m', '2w' nor a file count like '48'"
            )
        number, unit = int(match.group(1)), match.group(2)
        if unit is None or unit.startswith("file"):
            if max_files is not None:
                raise ConfigError(f"retention {text!r} gives the file count twice")
            max_files = number
        else:
            if max_age is not None:
                raise ConfigError(f"retention {text!r} gives the age twice")
            max_age = timedelta(seconds=number * _UNIT_SECONDS[unit])
    return Retention(max_age=max_age, max_files=max_files)
