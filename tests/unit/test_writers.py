"""HourlyFileWriter: rotation, DST, restart, errors, background work, concurrency.

No test sleeps to wait: time is a FakeClock, background work is awaited through the
writer's change notifications (``wait_for``) or driven directly (``_background_tick``).

Every test runs once per implementation of the writer's core (its lock-free
``write()``): the C extension ``natstream._cwriter`` when it is in use, and the
pure-Python fallback (see the ``core`` fixture).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import gzip
import importlib.util
import inspect
import io
import itertools
import json
import math
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from natstream._errors import ConfigError, NatstreamError, WriterError
from natstream._writers import (
    WRITER_IMPL,
    HourlyFileWriter,
    StreamWriter,
    WriterStats,
    parse_retention,
)
from natstream._writers._buffer import Buffer
from natstream._writers._core import WriterCore
from natstream._writers._rotation import Retention
from natstream._writers._sink import _PIECE, _pieces

BERLIN = ZoneInfo("Europe/Berlin")
WAIT = 10.0  # seconds; a bound on waiting for background work, never a sleep

CORE_FIELDS = {"_chunks", "_fill", "_gate", "_hi", "_live", "_lo"}

if WRITER_IMPL == "c":
    import natstream._cwriter as cwriter

    NO_C_REASON = ""
elif os.environ.get("NATSTREAM_NO_EXTENSIONS"):
    NO_C_REASON = "the C core is turned off (NATSTREAM_NO_EXTENSIONS is set)"
else:
    NO_C_REASON = "natstream._cwriter is not built (no compiler at install): pure Python only"
needs_c = pytest.mark.skipif(WRITER_IMPL != "c", reason=NO_C_REASON)


def on_core(core: type) -> type[HourlyFileWriter]:
    """HourlyFileWriter's own code on ``core``: the class in use, or the same methods
    and slots on the other core (to test the Python fallback when the C one is in use).
    """
    if core is Buffer.__base__:
        return HourlyFileWriter

    def rebased(cls: type, base: type) -> type:
        skip = {*cls.__slots__, "__dict__"}  # slot descriptors: type() makes its own
        namespace = {k: v for k, v in vars(cls).items() if k not in skip}
        return type(cls.__name__, (base,), namespace)

    return rebased(HourlyFileWriter, rebased(Buffer, core))


CORES = {"python": WriterCore}
if WRITER_IMPL == "c":
    CORES = {"c": cwriter.WriterCore, **CORES}
WRITERS = {name: on_core(core) for name, core in CORES.items()}


def run_once(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run this test once, with the core in use (it compares the cores itself)."""
    test.run_once = True  # type: ignore[attr-defined]
    return test


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not getattr(metafunc.function, "run_once", False):
        metafunc.parametrize("core", list(CORES), indirect=True)


@pytest.fixture(autouse=True)
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Run the test on each core: the module's ``HourlyFileWriter`` is that core's class
    for the test's duration (tests and helpers look the name up when they run)."""
    name = getattr(request, "param", WRITER_IMPL)
    monkeypatch.setitem(globals(), "HourlyFileWriter", WRITERS[name])
    return CORES[name]


@pytest.fixture
def locked(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The records that reach ``_write_locked`` (those the lock-free path leaves)."""
    taken: list[bytes] = []
    write_locked = HourlyFileWriter._write_locked

    def counting(self: HourlyFileWriter, data: bytes) -> int:
        taken.append(data)
        return write_locked(self, data)

    monkeypatch.setattr(HourlyFileWriter, "_write_locked", counting)
    return taken


@pytest.fixture
def system_time() -> Iterator[Callable[[Callable[[], float]], None]]:
    """Replace the default clock (``time.time``) for the Python code and the C core."""
    patch = pytest.MonkeyPatch()

    def install(fake: Callable[[], float]) -> None:
        patch.setattr("natstream._writers._core._time", fake)
        if WRITER_IMPL == "c":
            cwriter._set_time(fake)

    yield install
    patch.undo()
    if WRITER_IMPL == "c":
        cwriter._set_time(None)


class FakeClock:
    """A settable clock returning aware datetimes in ``tz`` (thread-safe)."""

    def __init__(self, start: datetime, tz: tzinfo = UTC) -> None:
        self._now = start.astimezone(UTC)
        self._tz = tz
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now.astimezone(self._tz)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("natstream-writer")}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = writer_threads()  # empty unless an earlier test failed and leaked
    yield
    assert sorted(t.name for t in writer_threads() - before) == []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 26, 21, 15, tzinfo=UTC))


def utc_writer(base: Path, clock: FakeClock, **options: object) -> HourlyFileWriter:
    return HourlyFileWriter(base, "stream_data", utc=True, clock=clock, **options)  # type: ignore[arg-type]


def wait_for(
    writer: HourlyFileWriter, predicate: Callable[[WriterStats], bool], timeout: float
) -> WriterStats:
    """Block until ``predicate(writer.stats())`` holds; raise TimeoutError after ``timeout``.

    Woken through the writer's observer hook, which it calls (never holding its lock)
    whenever its counters or state change.
    """
    changed = threading.Condition()

    def notify() -> None:
        with changed:
            changed.notify_all()

    writer._observer = notify
    try:
        deadline = time.monotonic() + timeout
        with changed:
            while not predicate(snapshot := writer.stats()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{writer!r}: condition not reached; last stats {snapshot}")
                changed.wait(remaining)
        return snapshot
    finally:
        writer._observer = None


def read_dir(base: Path) -> dict[str, bytes]:
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# -- naming and rotation ---------------------------------------------------------------


def test_default_name_contents_and_stats(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock) as writer:
        assert writer.write(b"one\n") == 4
        assert writer.write(b"two\n") == 4
        writer.flush()
        stats = writer.stats()
    assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"one\ntwo\n"}
    assert stats == WriterStats(
        records=2,
        bytes_written=8,
        bytes_buffered=0,
        bytes_dropped=0,
        current_path=tmp_path / "stream_data_2026-11-26_21.log",
        files_opened=1,
        lines_repaired=0,
        flushes=1,
        errors=0,
        files_compressed=0,
        files_removed=0,
    )


def test_write_does_no_io_until_a_flush(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, flush_interval=3600) as writer:
        writer.write(b"buffered\n")
        assert list(tmp_path.iterdir()) == []
        assert writer.stats().bytes_buffered == 9
    assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"buffered\n"}


def test_rotation_at_the_hour_boundary(tmp_path: Path, clock: FakeClock) -> None:
    clock.set(datetime(2026, 11, 26, 21, 59, 59, 999999, tzinfo=UTC))
    with utc_writer(tmp_path, clock) as writer:
        writer.write(b"last of 21\n")
        clock.advance(timedelta(microseconds=1))
        writer.write(b"first of 22\n")
        writer.write(b"second of 22\n")
        writer.flush()
        assert writer.stats().current_path == tmp_path / "stream_data_2026-11-26_22.log"
    assert read_dir(tmp_path) == {
        "stream_data_2026-11-26_21.log": b"last of 21\n",
        "stream_data_2026-11-26_22.log": b"first of 22\nsecond of 22\n",
    }


def test_rotation_at_the_hour_boundary_with_the_default_clock(
    tmp_path: Path,
    system_time: Callable[[Callable[[], float]], None],
    locked: list[bytes],
) -> None:
    """The lock-free path decides the hour on its own clock read: it takes the records
    inside the hour and leaves the boundary (and a step back) to ``_write_locked``."""
    now = datetime(2026, 11, 26, 21, 59, 59, 999999, tzinfo=UTC).timestamp()
    system_time(lambda: now)
    with HourlyFileWriter(tmp_path, "s", utc=True) as writer:
        assert writer.write(b"last of 21\n") == 11
        assert locked == []  # the lock-free path took it
        now = datetime(2026, 11, 26, 22, tzinfo=UTC).timestamp()  # exactly the end of 21
        assert writer.write(b"first of 22\n") == 12
        assert writer.write(b"second of 22\n") == 13
        assert locked == [b"first of 22\n"]  # rotated under the lock, then lock-free again
        now -= 0.5  # the clock steps back into hour 21
        assert writer.write(b"late 21\n") == 8
        assert locked[-1] == b"late 21\n"
        assert writer.stats().current_path == tmp_path / "s_2026-11-26_21.log"
    assert read_dir(tmp_path) == {
        "s_2026-11-26_21.log": b"last of 21\nlate 21\n",
        "s_2026-11-26_22.log": b"first of 22\nsecond of 22\n",
    }


def test_flush_thread_finishes_the_hour_without_new_writes(
    tmp_path: Path, clock: FakeClock
) -> None:
    with utc_writer(tmp_path, clock, flush_interval=3600) as writer:
        writer.write(b"a\n")
        clock.advance(timedelta(hours=1))
        assert writer._background_tick()  # what the flush thread does each interval
        assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"a\n"}
        assert writer._sink.fd is None  # the finished hour's file is closed
        assert writer.stats().current_path.name == "stream_data_2026-11-26_22.log"


def test_clock_stepping_back_appends_to_the_earlier_file(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock) as writer:
        writer.write(b"21 a\n")
        clock.advance(timedelta(hours=1))
        writer.write(b"22\n")
        clock.advance(timedelta(hours=-1))
        writer.write(b"21 b\n")
    assert read_dir(tmp_path) == {
        "stream_data_2026-11-26_21.log": b"21 a\n21 b\n",
        "stream_data_2026-11-26_22.log": b"22\n",
    }


def test_pattern_with_directories(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, pattern="rec/%Y/%m/%d/%H.jsonl") as writer:
        writer.write(b"{}\n")
    assert read_dir(tmp_path) == {"rec/2026/11/26/21.jsonl": b"{}\n"}


def test_aware_clock_zone_names_the_hours(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 11, 26, 21, 15, tzinfo=UTC), tz=BERLIN)
    with HourlyFileWriter(tmp_path / "local", "s", clock=clock) as local:
        local.write(b"x\n")
    with HourlyFileWriter(tmp_path / "utc", "s", clock=clock, utc=True) as utc:
        utc.write(b"x\n")
    assert list(read_dir(tmp_path)) == ["local/s_2026-11-26_22.log", "utc/s_2026-11-26_21.log"]


def test_default_clock_uses_system_local_time(tmp_path: Path) -> None:
    before = datetime.now()
    with HourlyFileWriter(tmp_path, "s") as writer:
        writer.write(b"x\n")
    after = datetime.now()
    names = {before.strftime("s_%Y-%m-%d_%H.log"), after.strftime("s_%Y-%m-%d_%H.log")}
    assert set(read_dir(tmp_path)) <= names


def test_fall_back_night_in_berlin(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 10, 24, 22, 10, tzinfo=UTC), tz=BERLIN)
    with HourlyFileWriter(tmp_path, "s", clock=clock) as writer:
        for _ in range(10):  # 00:10 CEST .. 03:40 CET in 30-minute steps
            writer.write(clock().isoformat().encode() + b"\n")
            clock.advance(timedelta(minutes=30))
    assert read_dir(tmp_path) == {
        "s_2026-10-25_00.log": b"2026-10-25T00:10:00+02:00\n2026-10-25T00:40:00+02:00\n",
        "s_2026-10-25_01.log": b"2026-10-25T01:10:00+02:00\n2026-10-25T01:40:00+02:00\n",
        "s_2026-10-25_02+0200.log": b"2026-10-25T02:10:00+02:00\n2026-10-25T02:40:00+02:00\n",
        "s_2026-10-25_02+0100.log": b"2026-10-25T02:10:00+01:00\n2026-10-25T02:40:00+01:00\n",
        "s_2026-10-25_03.log": b"2026-10-25T03:10:00+01:00\n2026-10-25T03:40:00+01:00\n",
    }


def test_spring_forward_has_no_file_for_the_skipped_hour(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 29, 0, 30, tzinfo=UTC), tz=BERLIN)
    with HourlyFileWriter(tmp_path, "s", clock=clock) as writer:
        for _ in range(3):
            writer.write(clock().strftime("%H:%M%z\n").encode())
            clock.advance(timedelta(hours=1))
    assert read_dir(tmp_path) == {
        "s_2026-03-29_01.log": b"01:30+0100\n",
        "s_2026-03-29_03.log": b"03:30+0200\n",
        "s_2026-03-29_04.log": b"04:30+0200\n",
    }


@pytest.fixture
def new_york_local(local_time_zone: Callable[[str], None]) -> None:
    local_time_zone("America/New_York")


@pytest.mark.usefixtures("new_york_local")
def test_fall_back_in_system_local_time_with_naive_clock(tmp_path: Path) -> None:
    instant = datetime(2026, 11, 1, 4, 10, tzinfo=UTC)  # 00:10 EDT

    def naive_local() -> datetime:  # like datetime.now(): naive, fold set on the repeat
        return datetime.fromtimestamp(instant.timestamp())

    with HourlyFileWriter(tmp_path, "s", clock=naive_local) as writer:
        for _ in range(4):
            writer.write(naive_local().strftime("%H:%M fold=").encode())
            writer.write(b"%d\n" % naive_local().fold)
            instant += timedelta(hours=1)
    assert read_dir(tmp_path) == {
        "s_2026-11-01_00.log": b"00:10 fold=0\n",
        "s_2026-11-01_01-0400.log": b"01:10 fold=0\n",
        "s_2026-11-01_01-0500.log": b"01:10 fold=1\n",
        "s_2026-11-01_02.log": b"02:10 fold=0\n",
    }


# -- restart and repair ---------------------------------------------------------------


def test_restart_appends_to_the_current_hour(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock) as first:
        first.write(b"before restart\n")
    with utc_writer(tmp_path, clock) as second:
        second.write(b"after restart\n")
        second.flush()
        assert second.stats().lines_repaired == 0
    assert read_dir(tmp_path) == {
        "stream_data_2026-11-26_21.log": b"before restart\nafter restart\n"
    }


def test_partial_last_line_gets_a_newline(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "stream_data_2026-11-26_21.log").write_bytes(b"whole\ncut off by a cra")
    with utc_writer(tmp_path, clock) as writer:
        writer.write(b"next\n")
        writer.flush()
        assert writer.stats().lines_repaired == 1
    assert read_dir(tmp_path) == {
        "stream_data_2026-11-26_21.log": b"whole\ncut off by a cra\nnext\n"
    }


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"pattern": "/abs/%H.log"},
        {"pattern": "../%H.log"},
        {"flush_interval": 0},
        {"flush_interval": float("inf")},
        {"buffer_size": 0},
        {"buffer_size": True},
        {"compress": "lz4"},
        {"retention": "forever"},
        {"retention": 0},
        {"link_name": "../current"},
        {"link_name": ""},
        {"link_name": "stream_data_2026-01-01_00.log"},
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HourlyFileWriter(tmp_path, "stream_data", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("filename", ["", "a/b"])
def test_bad_filename_is_a_config_error(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ConfigError, match="filename"):
        HourlyFileWriter(tmp_path, filename)


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is not None, reason="zstandard installed")
def test_zstd_without_the_package_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="zstandard"):
        HourlyFileWriter(tmp_path, "s", compress="zstd")


def test_write_takes_bytes(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock) as writer:
        with pytest.raises(TypeError, match="str"):
            writer.write("text\n")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="int"):
            writer.write(7)  # type: ignore[arg-type]
        buffer = bytearray(b"copied\n")
        assert writer.write(buffer) == 7  # type: ignore[arg-type]
        buffer[:] = b"changed"
        view = memoryview(bytearray(b"viewed\n"))
        assert writer.write(view) == 7  # type: ignore[arg-type]
        view[:1] = b"V"
        assert writer.stats().records == 2
    assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"copied\nviewed\n"}


def test_default_clock_write_takes_bytes_only(
    tmp_path: Path, system_time: Callable[[Callable[[], float]], None]
) -> None:
    """The lock-free path takes exact bytes; the rest goes through ``_write_locked``."""
    system_time(lambda: datetime(2026, 11, 26, 21, 15, tzinfo=UTC).timestamp())
    with HourlyFileWriter(tmp_path, "s", utc=True, flush_interval=3600) as writer:
        assert writer._hi > writer._lo  # the lock-free path is open
        with pytest.raises(TypeError, match="str"):
            writer.write("text\n")  # type: ignore[arg-type]
        source = bytearray(b"array\n")
        assert writer.write(source) == 6  # type: ignore[arg-type]
        source[:1] = b"A"  # the writer kept a copy
        assert writer.write(memoryview(b"view\n")) == 5  # type: ignore[arg-type]
        assert writer.write(b"") == 0
        assert writer._chunks == [b"array\n", b"view\n", b""]
        assert all(type(chunk) is bytes for chunk in writer._chunks)
    assert read_dir(tmp_path) == {"s_2026-11-26_21.log": b"array\nview\n"}


def test_closed_writer_refuses_writes_and_close_is_idempotent(
    tmp_path: Path, clock: FakeClock
) -> None:
    writer = utc_writer(tmp_path, clock)
    writer.close()
    writer.close()
    with pytest.raises(WriterError, match="closed; create a new HourlyFileWriter"):
        writer.write(b"late\n")
    with pytest.raises(WriterError, match="closed"):
        writer.flush()


def dev_full_writer(**options: object) -> HourlyFileWriter:
    """A writer whose every file is /dev/full: each write fails with ENOSPC."""
    return HourlyFileWriter("/dev", "full", pattern="full", **options)  # type: ignore[arg-type]


needs_dev_full = pytest.mark.skipif(
    not os.access("/dev/full", os.W_OK), reason="needs a writable /dev/full"
)


@needs_dev_full
def test_disk_full_is_raised_from_flush_and_data_stays_buffered() -> None:
    writer = dev_full_writer(flush_interval=3600)
    writer.write(b"record\n")
    with pytest.raises(WriterError) as caught:
        writer.flush()
    assert caught.value.errno == errno.ENOSPC
    assert isinstance(caught.value, OSError | NatstreamError)
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.filename == "/dev/full"
    stats = writer.stats()
    assert (stats.bytes_buffered, stats.bytes_written, stats.errors) == (7, 0, 1)
    with pytest.raises(WriterError) as at_close:
        writer.close()
    assert at_close.value.errno == errno.ENOSPC
    assert any("7 bytes" in note for note in at_close.value.__notes__)
    assert writer.stats().bytes_dropped == 7


@needs_dev_full
def test_flush_thread_error_is_raised_once_from_the_next_write() -> None:
    writer = dev_full_writer(flush_interval=3600)
    writer.write(b"first\n")
    assert writer._background_tick()  # the flush thread's round: fails, stores the error
    with pytest.raises(WriterError) as caught:
        writer.write(b"refused\n")
    assert caught.value.errno == errno.ENOSPC
    assert writer.stats().records == 1  # the refused record was not accepted
    assert writer.write(b"second\n") == 7  # raised once; the writer goes on
    with pytest.raises(WriterError):
        writer.close()
    assert writer.stats().bytes_dropped == len(b"first\nsecond\n")


@needs_dev_full
def test_full_buffer_on_a_full_disk_raises_instead_of_blocking() -> None:
    writer = dev_full_writer(flush_interval=3600, buffer_size=10)
    # Each write waits for the flush thread to take the full buffer; once its failed
    # write put the records back and stored the error, write() raises it.
    with pytest.raises(WriterError) as caught:  # noqa: PT012
        for _ in range(100):
            writer.write(b"123456789\n")
    assert caught.value.errno == errno.ENOSPC
    accepted = writer.stats().records
    with pytest.raises(WriterError):
        writer.close()
    assert writer.stats().bytes_dropped == 10 * accepted


@needs_dev_full
def test_write_raises_when_writing_out_a_full_buffer_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(HourlyFileWriter, "_background_tick", lambda self: self._live)
    writer = dev_full_writer(buffer_size=10)
    assert writer.write(b"123456789\n") == 10
    with pytest.raises(WriterError) as caught:
        writer.write(b"refused\n")  # the buffer is full: write() writes it out, and fails
    assert caught.value.errno == errno.ENOSPC
    stats = writer.stats()
    assert (stats.records, stats.bytes_buffered) == (1, 10)  # kept, for the next flush
    with pytest.raises(WriterError):
        writer.close()
    assert writer.stats().bytes_dropped == 10


def test_failed_fsync_is_raised_and_not_retried(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync_failing_on_files(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_on_files)
    with utc_writer(tmp_path, clock, fsync=True, pattern="%H.log") as writer:
        writer.write(b"handed to the OS\n")
        with pytest.raises(WriterError) as caught:
            writer.flush()
        assert caught.value.errno == errno.EIO
        assert any("not written again" in note for note in caught.value.__notes__)
        assert writer.stats().bytes_buffered == 0
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert read_dir(tmp_path) == {"21.log": b"handed to the OS\n"}


def test_link_failure_is_raised_from_the_next_call(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "current").mkdir()
    (tmp_path / "current" / "keeps it from being replaced").touch()
    with utc_writer(tmp_path, clock, link_name="current") as writer:
        writer.write(b"written anyway\n")
        writer.flush()  # the data goes out; the link error is stored
        with pytest.raises(WriterError, match="link"):
            writer.write(b"refused\n")
    assert (tmp_path / "stream_data_2026-11-26_21.log").read_bytes() == b"written anyway\n"


def test_open_failure_keeps_records_for_the_retry(tmp_path: Path, clock: FakeClock) -> None:
    blocker = tmp_path / "base"
    blocker.write_bytes(b"a file where the directory should be")
    with utc_writer(blocker, clock) as writer:
        writer.write(b"kept\n")
        with pytest.raises(WriterError):
            writer.flush()
        blocker.unlink()
        writer.flush()
    assert read_dir(blocker) == {"stream_data_2026-11-26_21.log": b"kept\n"}


EFBIG_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from datetime import datetime, UTC
    from natstream._errors import WriterError
    from natstream._writers import HourlyFileWriter

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead
    base = sys.argv[1]
    path = os.path.join(base, "s_2026-11-26_21.log")
    clock = lambda: datetime(2026, 11, 26, 21, 30, tzinfo=UTC)
    records = [b"%029d\\n" % i for i in range(50)]  # 30 bytes each
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    writer = HourlyFileWriter(base, "s", utc=True, clock=clock, flush_interval=3600)
    for record in records:
        writer.write(record)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # room for 33.3 records
    result = {}
    try:
        writer.flush()
    except WriterError as exc:
        result["errno"] = exc.errno
        result["cause"] = type(exc.__cause__).__name__
    result["size_after_error"] = os.path.getsize(path)
    result["buffered_after_error"] = writer.stats().bytes_buffered
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    writer.flush()  # the retry
    writer.close()
    with open(path, "rb") as file:
        result["complete"] = file.read() == b"".join(records)
    print(json.dumps(result))
    """
)


def test_file_size_limit_cuts_back_to_whole_records_and_retry_completes(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == {
        "errno": errno.EFBIG,
        "cause": "OSError",
        "size_after_error": 990,  # 33 whole records; the 10 bytes of the 34th were cut
        "buffered_after_error": 510,
        "complete": True,  # after the retry: every record once, in order
    }


# -- durability -----------------------------------------------------------------------


def test_fsync_covers_the_file_and_new_directories(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with utc_writer(tmp_path, clock, pattern="d/%H.log", fsync=True) as writer:
        writer.write(b"x\n")
        writer.flush()
        assert synced == [str(tmp_path), str(tmp_path / "d"), str(tmp_path / "d/21.log")]
        synced.clear()
    assert synced == [str(tmp_path / "d/21.log")]  # at close


# -- background work ------------------------------------------------------------------


def test_flush_thread_flushes_on_its_interval(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, flush_interval=0.01) as writer:
        writer.write(b"by the thread\n")
        wait_for(writer, lambda s: s.bytes_written == 14, WAIT)
        assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"by the thread\n"}


def test_half_full_buffer_wakes_the_flush_thread(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, flush_interval=3600, buffer_size=100) as writer:
        for _ in range(6):
            writer.write(b"x" * 9 + b"\n")
        wait_for(writer, lambda s: s.bytes_written >= 50, WAIT)


def test_gzip_compresses_finished_hours_only(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, compress="gzip") as writer:
        writer.write(b"hour 21\n")
        clock.advance(timedelta(hours=1))
        writer.write(b"hour 22\n")
        writer.flush()
        wait_for(writer, lambda s: s.files_compressed == 1, WAIT)
        finished = tmp_path / "stream_data_2026-11-26_21.log.gz"
        assert gzip.decompress(finished.read_bytes()) == b"hour 21\n"
        assert sorted(read_dir(tmp_path)) == [
            "stream_data_2026-11-26_21.log.gz",
            "stream_data_2026-11-26_22.log",
        ]


def test_leftovers_are_compressed_at_start(tmp_path: Path, clock: FakeClock) -> None:
    old = tmp_path / "stream_data_2026-11-26_19.log"
    old.write_bytes(b"from a previous run\n")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    (tmp_path / "stream_data_2026-11-26_18.log.gz.tmp").write_bytes(b"interrupted")
    (tmp_path / "notes.txt").write_bytes(b"not ours")
    with utc_writer(tmp_path, clock, compress="gzip") as writer:
        wait_for(writer, lambda s: s.files_compressed == 1, WAIT)
    compressed = tmp_path / "stream_data_2026-11-26_19.log.gz"
    assert gzip.decompress(compressed.read_bytes()) == b"from a previous run\n"
    assert compressed.stat().st_mtime == 1_700_000_000  # mtime kept, for retention
    assert sorted(read_dir(tmp_path)) == ["notes.txt", "stream_data_2026-11-26_19.log.gz"]


def test_compression_failure_is_raised_and_other_files_go_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    for hour in (18, 19):
        (tmp_path / f"stream_data_2026-11-26_{hour}.log").write_bytes(b"%d\n" % hour)
    (tmp_path / "stream_data_2026-11-26_18.log.gz").mkdir()  # blocks compressing 18
    writer = utc_writer(tmp_path, clock, compress="gzip")
    wait_for(writer, lambda s: s.files_compressed == 1 and s.errors == 1, WAIT)
    with pytest.raises(WriterError, match="compress") as caught:
        writer.close()
    assert caught.value.filename == str(tmp_path / "stream_data_2026-11-26_18.log")
    assert (tmp_path / "stream_data_2026-11-26_18.log").read_bytes() == b"18\n"
    assert gzip.decompress((tmp_path / "stream_data_2026-11-26_19.log.gz").read_bytes()) == (
        b"19\n"
    )


def test_reopened_hour_is_appended_as_another_gzip_member(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock, compress="gzip") as writer:
        writer.write(b"first\n")
        clock.advance(timedelta(hours=1))
        writer.flush()
        wait_for(writer, lambda s: s.files_compressed == 1, WAIT)
        clock.advance(timedelta(hours=-1))  # the clock steps back into hour 21
        writer.write(b"late\n")
        clock.advance(timedelta(hours=1))
        writer.flush()
        wait_for(writer, lambda s: s.files_compressed == 2, WAIT)
    data = (tmp_path / "stream_data_2026-11-26_21.log.gz").read_bytes()
    assert gzip.decompress(data) == b"first\nlate\n"


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is None, reason="needs zstandard")
def test_zstd_compression(tmp_path: Path, clock: FakeClock) -> None:
    zstandard = pytest.importorskip("zstandard")
    with utc_writer(tmp_path, clock, compress="zstd") as writer:
        writer.write(b"hour 21\n")
        clock.advance(timedelta(hours=1))
        writer.flush()
        wait_for(writer, lambda s: s.files_compressed == 1, WAIT)
    data = (tmp_path / "stream_data_2026-11-26_21.log.zst").read_bytes()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == b"hour 21\n"


def make_hour_files(base: Path, now: datetime, ages_in_hours: list[int]) -> list[str]:
    names = []
    for age in ages_in_hours:
        when = now - timedelta(hours=age)
        name = when.strftime("stream_data_%Y-%m-%d_%H.log")
        (base / name).write_bytes(b"old\n")
        os.utime(base / name, (when.timestamp(), when.timestamp()))
        names.append(name)
    return names


def test_retention_by_age(tmp_path: Path, clock: FakeClock) -> None:
    now = clock()
    keep = make_hour_files(tmp_path, now, [1, 47, 7 * 24 - 1])
    make_hour_files(tmp_path, now, [7 * 24 + 1, 30 * 24])
    current = tmp_path / "stream_data_2026-11-26_21.log"
    current.write_bytes(b"current, even if its mtime is old\n")
    os.utime(current, (0, 0))
    (tmp_path / "stream_data_backup.log").write_bytes(b"not ours")
    os.utime(tmp_path / "stream_data_backup.log", (0, 0))
    with utc_writer(tmp_path, clock, retention="7d") as writer:
        wait_for(writer, lambda s: s.files_removed == 2, WAIT)
    assert sorted(read_dir(tmp_path)) == sorted([*keep, current.name, "stream_data_backup.log"])


def test_retention_by_count_after_compression(tmp_path: Path, clock: FakeClock) -> None:
    make_hour_files(tmp_path, clock(), [5, 4, 3, 2, 1])
    with utc_writer(tmp_path, clock, compress="gzip", retention=2) as writer:
        wait_for(writer, lambda s: s.files_compressed == 5 and s.files_removed == 3, WAIT)
        writer.write(b"now\n")
    assert sorted(read_dir(tmp_path)) == [
        "stream_data_2026-11-26_19.log.gz",
        "stream_data_2026-11-26_20.log.gz",
        "stream_data_2026-11-26_21.log",
    ]


def test_retention_prunes_emptied_directories(tmp_path: Path, clock: FakeClock) -> None:
    old = tmp_path / "2026/10/01/05.log"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old\n")
    os.utime(old, (0, 0))
    with utc_writer(tmp_path, clock, pattern="%Y/%m/%d/%H.log", retention="1d") as writer:
        wait_for(writer, lambda s: s.files_removed == 1, WAIT)
    assert list(tmp_path.iterdir()) == []


def test_link_follows_the_current_file(tmp_path: Path, clock: FakeClock) -> None:
    link = tmp_path / "current.log"
    with utc_writer(tmp_path, clock, link_name="current.log") as writer:
        writer.write(b"21\n")
        writer.flush()
        assert os.readlink(link) == "stream_data_2026-11-26_21.log"
        clock.advance(timedelta(hours=1))
        writer.write(b"22\n")
        writer.flush()
        assert os.readlink(link) == "stream_data_2026-11-26_22.log"
        assert link.read_bytes() == b"22\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "current.log",
        "stream_data_2026-11-26_21.log",
        "stream_data_2026-11-26_22.log",
    ]


def test_unclosed_writer_warns_and_its_threads_end(tmp_path: Path, clock: FakeClock) -> None:
    writer = utc_writer(tmp_path, clock, retention=3)
    threads = writer_threads()
    assert len(threads) == 2
    # Collected at the del, or, if a background thread holds it for a moment, when that
    # thread lets go; either way the threads end only after the warning was issued.
    with pytest.warns(ResourceWarning, match="was never closed"):  # noqa: PT031
        del writer
        for thread in threads:
            thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)


# -- concurrency ----------------------------------------------------------------------


async def test_threads_and_tasks_write_at_once_without_loss_or_interleaving(
    tmp_path: Path,
) -> None:
    ticks = itertools.count()
    start = datetime(2026, 11, 26, 21, 50, tzinfo=UTC)

    def clock() -> datetime:  # half a second per call: several rotations during the run
        return start + timedelta(seconds=next(ticks) / 2)

    per_thread, per_task = 2000, 100
    writer = HourlyFileWriter(tmp_path, "s", utc=True, clock=clock, buffer_size=4096)
    go = threading.Event()

    def thread_body(index: int) -> None:
        go.wait(WAIT)
        for seq in range(per_thread):
            writer.write(b"thread-%02d %06d %s\n" % (index, seq, b"t" * (seq % 50)))

    async def task_body(index: int) -> None:
        for seq in range(per_task):
            writer.write(b"task-%03d %06d %s\n" % (index, seq, b"a" * (seq % 30)))
            await asyncio.sleep(0)

    threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    async with asyncio.TaskGroup() as group:
        for index in range(100):
            group.create_task(task_body(index))
    for thread in threads:
        thread.join(WAIT)
    writer.close()

    files = read_dir(tmp_path)
    assert len(files) >= 3  # the run crossed hour boundaries
    lines = b"".join(files[name] for name in sorted(files)).split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == 8 * per_thread + 100 * per_task
    last_seen: dict[bytes, int] = {}
    for line in lines:
        producer, seq, pad = line.split(b" ")
        fill = b"t" if producer.startswith(b"thread") else b"a"
        assert pad == fill * (int(seq) % (50 if fill == b"t" else 30)), line
        assert int(seq) == last_seen.get(producer, -1) + 1, line  # none lost, in order
        last_seen[producer] = int(seq)
    assert writer.stats().records == len(lines)


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Switch threads as often as CPython allows, so that races show up."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


def hour_file(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("s_%Y-%m-%d_%H.log")


def check_lines(files: dict[str, bytes], expected: dict[bytes, int]) -> list[bytes]:
    """Every producer's lines once, whole, in order, across the files sorted by hour."""
    lines = b"".join(files[name] for name in sorted(files)).split(b"\n")
    assert lines.pop() == b""
    last_seen: dict[bytes, int] = {}
    for line in lines:
        producer, seq, _, pad = line.split(b" ")
        fill = b"t" if producer.startswith(b"thread") else b"a"
        assert pad == fill * (int(seq) % (50 if fill == b"t" else 30)), line
        assert int(seq) == last_seen.get(producer, -1) + 1, line
        last_seen[producer] = int(seq)
    assert last_seen == {producer: count - 1 for producer, count in expected.items()}
    return lines


async def run_producers(
    write: Callable[[bytes, int, bytes], None], per_thread: int = 2000, per_task: int = 100
) -> dict[bytes, int]:
    """8 threads and 100 asyncio tasks call ``write(producer, seq, pad)`` at once."""
    go = threading.Event()

    def thread_body(index: int) -> None:
        go.wait(WAIT)
        for seq in range(per_thread):
            write(b"thread-%02d" % index, seq, b"t" * (seq % 50))

    async def task_body(index: int) -> None:
        for seq in range(per_task):
            write(b"task-%03d" % index, seq, b"a" * (seq % 30))
            await asyncio.sleep(0)

    threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    async with asyncio.TaskGroup() as group:
        for index in range(100):
            group.create_task(task_body(index))
    for thread in threads:
        thread.join(WAIT)
    expected = {b"thread-%02d" % i: per_thread for i in range(8)}
    expected.update({b"task-%03d" % i: per_task for i in range(100)})
    return expected


@pytest.mark.usefixtures("frequent_switches")
async def test_lock_free_writes_land_in_an_hour_the_clock_showed_during_the_call(
    tmp_path: Path, system_time: Callable[[Callable[[], float]], None]
) -> None:
    """The default clock's path (no lock) with hour boundaries crossed mid-run.

    The system clock is replaced by one that moves 0.1 s per read (one ``next`` on an
    itertools.count: thread-safe). Each line carries the clock read just before its
    ``write()``, and the read just after is kept aside: the line's file must be the hour
    of one or the other or one between.
    """
    ticks = itertools.count()
    start = datetime(2026, 11, 26, 21, 58, tzinfo=UTC).timestamp()

    def fake_time() -> float:
        return start + next(ticks) / 10

    system_time(fake_time)
    writer = HourlyFileWriter(tmp_path, "s", utc=True, buffer_size=4096)
    assert writer._hi > writer._lo  # the lock-free path is open
    after: dict[tuple[bytes, int], float] = {}

    def write(producer: bytes, seq: int, pad: bytes) -> None:
        before = fake_time()
        writer.write(b"%s %06d %.1f %s\n" % (producer, seq, before, pad))
        after[producer, seq] = fake_time()

    expected = await run_producers(write)
    writer.close()

    files = read_dir(tmp_path)
    assert len(files) >= 3  # the run crossed hour boundaries
    check_lines(files, expected)
    for name, content in files.items():
        for line in content.splitlines():
            producer, seq, before, _ = line.split(b" ")
            assert hour_file(float(before)) <= name <= hour_file(after[producer, int(seq)])
    assert writer.stats().records == sum(expected.values())


async def test_injected_clock_places_every_line_exactly_under_concurrency(
    tmp_path: Path,
) -> None:
    """An injected clock returning each caller's own time: the file is exactly its hour.

    Producers cross the 22:00 boundary at different moments, so the writer sees the
    clock jump back and forth between hours (a rotation, or a step back, on almost every
    call): each line still lands in the file of the hour its own clock read showed.
    """
    start = datetime(2026, 11, 26, 21, 55, tzinfo=UTC)
    caller_time: contextvars.ContextVar[datetime] = contextvars.ContextVar("t", default=start)
    writer = HourlyFileWriter(tmp_path, "s", utc=True, clock=caller_time.get, buffer_size=4096)

    def write(producer: bytes, seq: int, pad: bytes) -> None:
        # Threads advance 0.3 s per line, tasks 6 s: both cross 22:00, at different times.
        step = 0.3 if producer.startswith(b"thread") else 6.0
        when = start + timedelta(seconds=seq * step + len(pad) / 1000)
        caller_time.set(when)
        writer.write(b"%s %06d %.3f %s\n" % (producer, seq, when.timestamp(), pad))

    expected = await run_producers(write)
    writer.close()

    files = read_dir(tmp_path)
    assert sorted(files) == ["s_2026-11-26_21.log", "s_2026-11-26_22.log"]
    for name, content in files.items():
        for line in content.splitlines():
            assert name == hour_file(float(line.split(b" ")[2])), line
    # Per producer, in order and complete: the 21 file holds each producer's first lines.
    check_lines(files, expected)


def close_while_writing(base: Path) -> None:
    writer = HourlyFileWriter(base, "s", buffer_size=1 << 20)
    accepted: list[list[bytes]] = [[] for _ in range(4)]
    started = threading.Barrier(5)

    def body(index: int) -> None:
        started.wait(WAIT)
        for seq in itertools.count():
            line = b"%d %d\n" % (index, seq)
            try:
                writer.write(line)
            except WriterError:
                return
            accepted[index].append(line)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    started.wait(WAIT)
    wait_for(writer, lambda s: s.records > 20_000, WAIT)
    writer.close()
    for thread in threads:
        thread.join(WAIT)
    written = b"".join(read_dir(base).values()).splitlines(keepends=True)
    assert sorted(written) == sorted(line for lines in accepted for line in lines)


@pytest.mark.usefixtures("frequent_switches")
@pytest.mark.parametrize("attempt", range(5))
def test_writes_racing_close_are_written_or_refused(tmp_path: Path, attempt: int) -> None:
    """A lock-free ``write()`` racing ``close()``: returned means written, raised means not.

    (With frequent thread switches, a few runs in ten see a write append after close's
    last take; ``test_a_late_append_after_close_is_refused`` covers that branch always.)
    """
    close_while_writing(tmp_path)


def test_a_late_append_after_close_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    """What ``write()`` does when it finds, after appending, that close() has begun."""
    writer = utc_writer(tmp_path, clock)
    writer.write(b"taken by close\n")
    writer.close()
    assert writer._settle_late(b"taken by close\n") == 15  # close wrote it: accepted
    writer._chunks.append(b"too late\n")  # as a lock-free append after close's take
    with pytest.raises(WriterError, match="closed"):
        writer._settle_late(b"too late\n")
    assert writer._chunks == []
    assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"taken by close\n"}


def test_full_buffer_is_written_by_write_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a flush thread that never flushes, a full buffer is written out by ``write()``."""
    monkeypatch.setattr(HourlyFileWriter, "_background_tick", lambda self: self._live)
    with HourlyFileWriter(tmp_path, "s", buffer_size=100) as writer:
        for index in range(50):
            writer.write(b"%08d\n" % index)
        stats = writer.stats()
        assert stats.bytes_written >= 400
        assert stats.bytes_buffered <= 100
    (content,) = read_dir(tmp_path).values()
    assert content == b"".join(b"%08d\n" % index for index in range(50))


def test_failed_segment_keeps_its_hour_and_later_records_theirs(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records put back after a failure go to their own hours' files on the retry."""
    monkeypatch.setattr(HourlyFileWriter, "_background_tick", lambda self: self._live)
    with utc_writer(tmp_path, clock, pattern="%H/x.log") as writer:
        writer.write(b"21\n")
        clock.advance(timedelta(hours=1))
        writer.write(b"22 a\n")
        (tmp_path / "22").write_bytes(b"")  # a file where hour 22's directory goes
        with pytest.raises(WriterError):
            writer.flush()
        assert writer.stats().bytes_buffered == 5
        writer.write(b"22 b\n")
        clock.advance(timedelta(hours=1))
        writer.write(b"23\n")
        (tmp_path / "22").unlink()
        writer.flush()
    assert read_dir(tmp_path) == {
        "21/x.log": b"21\n",
        "22/x.log": b"22 a\n22 b\n",
        "23/x.log": b"23\n",
    }


def test_short_writes_and_many_pieces_complete_the_batch(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        nonlocal calls
        calls += 1
        return os.write(fd, buffers[0][:7])  # at most 7 bytes of the first piece

    monkeypatch.setattr("natstream._writers._sink._PIECE", 16)
    monkeypatch.setattr("natstream._writers._sink._IOV_MAX", 2)
    monkeypatch.setattr(os, "writev", short_writev)
    records = [b"%d\n" % i * (i % 7 + 1) for i in range(40)]
    with utc_writer(tmp_path, clock) as writer:
        for record in records:
            writer.write(record)
    assert read_dir(tmp_path) == {"stream_data_2026-11-26_21.log": b"".join(records)}
    assert calls > 10


def test_pieces_join_records_without_cutting_them() -> None:
    records = [bytes([65 + i % 26]) * (i * 37 % 3000) for i in range(500)]
    ends = set(itertools.accumulate(map(len, records)))
    pieces = _pieces(records)
    assert b"".join(pieces) == b"".join(records)
    assert set(itertools.accumulate(map(len, pieces))) <= ends  # cut between records only
    lines = [b"x" * 99 + b"\n"] * 5000
    assert max(map(len, _pieces(lines))) <= _PIECE  # the size aimed at, for even records
    assert _pieces([]) == []
    assert _pieces([b"one"]) == [b"one"]


# -- the core: C and Python ------------------------------------------------------------


class Recording:
    """A core with the slow paths replaced by recorders (what the subclass provides)."""

    calls: list[tuple[str, bytes]]

    def _write_locked(self, data: bytes) -> int:
        self.calls.append(("locked", data))
        return -1

    def _settle_late(self, data: bytes) -> int:
        self.calls.append(("late", data))
        return -2


def recording(core: type, *, lo: float, hi: float, gate: int, live: bool) -> Recording:
    class Core(Recording, core):  # type: ignore[misc, valid-type]
        __slots__ = ("calls",)

    obj = Core()
    obj.calls = []
    obj._lo, obj._hi, obj._gate, obj._live = lo, hi, gate, live
    return obj


@pytest.mark.parametrize(
    ("data", "lo", "hi", "gate", "live", "result", "path", "appended"),
    [
        (b"abc", -math.inf, math.inf, 10, True, 3, None, True),  # the fast path
        (b"abc", -math.inf, math.inf, 3, True, -1, "locked", False),  # fill + size == gate
        (b"abc", -math.inf, math.inf, 4, False, -2, "late", True),  # close began
        (b"abc", math.inf, -math.inf, 10, True, -1, "locked", False),  # shut
        (b"abc", -math.inf, 0.0, 10, True, -1, "locked", False),  # past the hour
        (b"abc", 4e9, math.inf, 10, True, -1, "locked", False),  # before the hour
        (bytearray(b"abc"), -math.inf, math.inf, 10, True, -1, "locked", False),
        ("abc", -math.inf, math.inf, 10, True, -1, "locked", False),
    ],
)
def test_core_write_takes_the_fast_path_only_when_every_condition_holds(
    core: type,
    data: object,
    lo: float,
    hi: float,
    gate: int,
    live: bool,
    result: int,
    path: str | None,
    appended: bool,
) -> None:
    obj = recording(core, lo=lo, hi=hi, gate=gate, live=live)
    obj._fill = 0
    assert obj.write(data) == result  # type: ignore[attr-defined]
    assert obj.calls == ([] if path is None else [(path, data)])
    assert obj._chunks == ([data] if appended else [])  # type: ignore[attr-defined]
    assert obj._fill == (3 if appended else 0)  # type: ignore[attr-defined]


def test_core_starts_shut_and_its_fields_are_plain_attributes(core: type) -> None:
    obj = core()
    assert (obj._lo, obj._hi, obj._fill, obj._gate, obj._chunks, obj._live) == (
        math.inf,
        -math.inf,
        0,
        0,
        [],
        False,
    )
    chunks: list[bytes] = [b"x"]
    obj._lo, obj._hi, obj._fill, obj._gate, obj._chunks, obj._live = 1.5, 2, 7, 9, chunks, True
    assert (obj._lo, obj._hi, obj._fill, obj._gate, obj._live) == (1.5, 2.0, 7, 9, True)
    assert obj._chunks is chunks
    with pytest.raises(AttributeError):
        obj.other = 1


@needs_c
@run_once
def test_c_core_has_the_python_core_fields_and_write() -> None:
    members = {
        name
        for name, value in vars(cwriter.WriterCore).items()
        if type(value).__name__ == "member_descriptor"
    }
    assert members == set(WriterCore.__slots__) == CORE_FIELDS
    public = {name for name in dir(cwriter.WriterCore) if not name.startswith("__")}
    assert public == CORE_FIELDS | {"write"}
    assert cwriter.WriterCore.__name__ == WriterCore.__name__
    # The same documentation: help(HourlyFileWriter.write) reads the same either way.
    assert cwriter.WriterCore.write.__doc__ == inspect.cleandoc(WriterCore.write.__doc__ or "")
    with pytest.raises(TypeError, match="callable"):
        cwriter._set_time(3)  # type: ignore[arg-type]


def test_writer_fields_are_the_cores_not_shadowed(core: type) -> None:
    """HourlyFileWriter declares no slot of its own for the core's fields (a shadowing
    slot would leave the C fast path reading fields that Python never sets)."""
    assert not CORE_FIELDS & set(HourlyFileWriter.__slots__)
    for name in CORE_FIELDS:
        assert getattr(HourlyFileWriter, name) is vars(core)[name]
    assert HourlyFileWriter.write is core.write


@pytest.mark.parametrize("injected", [False, True], ids=["default-clock", "injected-clock"])
def test_write_returns_the_length_and_holds_one_reference(
    tmp_path: Path,
    clock: FakeClock,
    system_time: Callable[[Callable[[], float]], None],
    injected: bool,
) -> None:
    """Fast path (default clock) and slow path (injected clock, through
    ``_write_locked``): one reference while buffered, none once written."""
    system_time(lambda: clock().timestamp())
    data = b"%d refcounted\n" % os.getpid()  # a fresh object: no other holder
    options: dict[str, Any] = {"flush_interval": 3600, "utc": True}
    if injected:
        options["clock"] = clock
    with HourlyFileWriter(tmp_path, "s", **options) as writer:
        assert (writer._hi > writer._lo) is not injected  # which path write() takes
        before = sys.getrefcount(data)
        assert writer.write(data) == len(data)
        assert sys.getrefcount(data) == before + 1  # in _chunks once
        writer.flush()
        assert sys.getrefcount(data) == before  # written and released
        assert writer.write(data) == len(data)
    assert sys.getrefcount(data) == before
    assert read_dir(tmp_path) == {"s_2026-11-26_21.log": data * 2}


@run_once
@pytest.mark.skipif(
    os.environ.get("NATSTREAM_REQUIRE_EXTENSIONS") != "1",
    reason="only where the extension must be built (CI sets NATSTREAM_REQUIRE_EXTENSIONS=1)",
)
def test_the_extension_is_built_where_required() -> None:
    assert WRITER_IMPL == "c", NO_C_REASON


def test_write_takes_data_by_position_or_by_name_only(tmp_path: Path) -> None:
    with HourlyFileWriter(tmp_path, "s", utc=True) as writer:
        assert writer.write(b"a\n") == 2
        assert writer.write(data=b"bc\n") == 3
        with pytest.raises(TypeError):
            writer.write(b"a\n", b"b\n")  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            writer.write(record=b"a\n")  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            writer.write()  # type: ignore[call-arg]
    assert b"".join(read_dir(tmp_path).values()) == b"a\nbc\n"


def test_core_in_a_reference_cycle_is_collected(core: type) -> None:
    class Core(core):  # type: ignore[misc, valid-type]
        __slots__ = ("__weakref__",)

    obj = Core()
    obj._chunks = [obj]  # a cycle through the core's own field
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None


def test_a_late_append_through_write_is_settled(
    tmp_path: Path,
    system_time: Callable[[Callable[[], float]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``write()`` appending lock-free after close() began calls ``_settle_late``: the
    record is refused, unless close's final take got it (then it was written)."""
    system_time(lambda: datetime(2026, 11, 26, 21, 15, tzinfo=UTC).timestamp())
    writer = HourlyFileWriter(tmp_path, "s", utc=True, flush_interval=3600)
    lo, hi, gate = writer._lo, writer._hi, writer._gate
    assert writer.write(b"before close\n") == 13
    writer.close()
    assert (writer._lo, writer._hi, writer._live) == (math.inf, -math.inf, False)
    writer._lo, writer._hi, writer._gate = lo, hi, gate  # as a racing write() saw them
    with pytest.raises(WriterError, match="closed"):
        writer.write(b"refused\n")
    assert writer._chunks == []
    settle_late = HourlyFileWriter._settle_late
    settled: list[bytes] = []

    def taken_by_close(self: HourlyFileWriter, data: bytes) -> int:
        settled.append(data)
        self._chunks.clear()  # as if close's final take had got it first
        return settle_late(self, data)

    monkeypatch.setattr(HourlyFileWriter, "_settle_late", taken_by_close)
    assert writer.write(b"taken\n") == 6
    assert settled == [b"taken\n"]
    assert read_dir(tmp_path) == {"s_2026-11-26_21.log": b"before close\n"}


def test_the_lock_free_clock_reads_as_time_time(tmp_path: Path, locked: list[bytes]) -> None:
    """The lock-free path reads the clock time.time() reads (the C core: CLOCK_REALTIME,
    in seconds): an hour starting at a time.time() read already includes a read made
    after it; one starting a minute later does not."""
    with HourlyFileWriter(tmp_path, "s", utc=True, flush_interval=3600) as writer:
        start = time.time()
        writer._lo, writer._hi = start, start + 3600
        assert writer.write(b"now\n") == 4
        assert locked == []  # lock-free: the C read was inside [start, start + 3600)
        writer._lo, writer._hi = time.time() + 60, math.inf
        assert writer.write(b"later\n") == 6
        assert locked == [b"later\n"]  # not yet in that range: the locked path
        writer._lo, writer._hi = -math.inf, time.time() - 60
        assert writer.write(b"earlier\n") == 8
        assert locked == [b"later\n", b"earlier\n"]


@run_once
@pytest.mark.parametrize("disabled", ["1", ""])
def test_natstream_no_extensions_selects_the_python_core(disabled: str) -> None:
    script = (
        "import natstream._writers as w; "
        "print(w.WRITER_IMPL, w.HourlyFileWriter.__base__.__base__.__module__)"
    )
    env = {**os.environ, "NATSTREAM_NO_EXTENSIONS": disabled}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    if disabled:
        assert done.stdout.split() == ["python", "natstream._writers._core"]
    elif importlib.util.find_spec("natstream._cwriter") is not None:
        assert done.stdout.split() == ["c", "natstream._cwriter"]
    else:
        assert done.stdout.split() == ["python", "natstream._writers._core"]


# -- protocol ---------------------------------------------------------------------------


def test_stream_writer_protocol(tmp_path: Path, clock: FakeClock) -> None:
    with utc_writer(tmp_path, clock) as writer:
        assert isinstance(writer, StreamWriter)
    assert isinstance(io.BytesIO(), StreamWriter)
    assert not isinstance(object(), StreamWriter)


def test_parse_retention_is_reexported() -> None:
    assert parse_retention("24h") == Retention(max_age=timedelta(hours=24))
