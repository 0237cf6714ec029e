"""HourlyFileWriter's records of given times (``write_at``) and commits (``checkpoint``).

A crash is a child process that ends with ``os._exit`` (no close, no final flush of
the writer's own): what it left on disk is what the next writer finds. No test sleeps
to wait: background work is awaited through the writer's change notifications.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from natstream._errors import ConfigError, WriterError
from natstream._writers import HourlyFileWriter, WriterStats

WAIT = 10.0  # seconds; a bound on waiting for background work, never a sleep
H21 = datetime(2026, 11, 26, 21, 15, tzinfo=UTC)
CHECKPOINT = ".stream_data.checkpoint"


class FakeClock:
    """A settable clock of aware UTC datetimes (thread-safe)."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(H21)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("natstream-writer")]
    assert left == []


def writer(base: Path, clock: FakeClock | None = None, **options: object) -> HourlyFileWriter:
    return HourlyFileWriter(base, "stream_data", utc=True, clock=clock, **options)  # type: ignore[arg-type]


def at(hour: int, minute: int = 0) -> float:
    return datetime(2026, 11, 26, hour, minute, tzinfo=UTC).timestamp()


def name(hour: int) -> str:
    return f"stream_data_2026-11-26_{hour:02d}.log"


def files(base: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(base.glob("stream_data_*"))}


def wait_for(
    w: HourlyFileWriter, predicate: Callable[[WriterStats], bool], timeout: float = WAIT
) -> WriterStats:
    """Block until ``predicate(w.stats())`` holds, woken by the writer's observer hook."""
    changed = threading.Condition()

    def notify() -> None:
        with changed:
            changed.notify_all()

    w._observer = notify
    try:
        deadline = time.monotonic() + timeout
        with changed:
            while not predicate(snapshot := w.stats()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not reached; last stats {snapshot}")
                changed.wait(remaining)
        return snapshot
    finally:
        w._observer = None


# ---------------------------------------------------------------- write_at


def test_write_at_puts_records_in_the_hour_of_the_time_given(
    tmp_path: Path, clock: FakeClock
) -> None:
    with writer(tmp_path, clock) as w:
        w.write(b"now\n")  # 21:15 by the clock
        w.write_at(at(18, 59), b"a\n")
        w.write_at(at(19, 0), b"b\n")
        w.write_at(at(18, 30), b"c\n")  # back: appended to 18's file
    assert files(tmp_path) == {
        name(18): b"a\nc\n",
        name(19): b"b\n",
        name(21): b"now\n",
    }


def test_after_write_at_hours_follow_the_given_times_not_the_clock(
    tmp_path: Path, clock: FakeClock
) -> None:
    with writer(tmp_path, clock) as w:
        w.write_at(at(18, 10), b"a\n")
        assert w._background_tick()  # the flush thread's round: the clock shows 21:15
        assert w.stats().current_path == tmp_path / name(18)
        w.flush()
        assert w.stats().current_path == tmp_path / name(18)
        w.write_at(at(18, 20), b"b\n")
        w.flush()
        assert w.stats().files_opened == 1  # the past hour's file stayed open
        w.write(b"c\n")  # the clock leads again
        assert w.stats().current_path == tmp_path / name(21)
    assert files(tmp_path) == {name(18): b"a\nb\n", name(21): b"c\n"}


def test_write_at_shuts_the_lock_free_path_until_the_next_write(tmp_path: Path) -> None:
    with writer(tmp_path) as w:  # the default clock: write() may skip the lock
        now = time.time()
        w.write(b"x\n")
        assert w._lo <= now < w._hi
        w.write_at(now, b"y\n")  # the same hour: no rotation, but the path is shut
        assert (w._lo, w._hi) == (math.inf, -math.inf)
        w.write(b"z\n")  # through the lock, which opens it again
        assert w._lo <= time.time() < w._hi
    assert b"".join(files(tmp_path).values()) == b"x\ny\nz\n"


@pytest.mark.parametrize(
    ("when", "error"), [(math.nan, ValueError), (math.inf, ValueError), ("1", TypeError)]
)
def test_write_at_needs_a_finite_time(
    tmp_path: Path, clock: FakeClock, when: object, error: type[Exception]
) -> None:
    with writer(tmp_path, clock) as w:
        with pytest.raises(error):
            w.write_at(when, b"x\n")  # type: ignore[arg-type]
        assert w.stats().records == 0


def test_write_at_on_a_closed_writer_raises(tmp_path: Path, clock: FakeClock) -> None:
    w = writer(tmp_path, clock)
    w.close()
    with pytest.raises(WriterError, match="closed"):
        w.write_at(at(20), b"x\n")


def test_write_at_with_a_full_buffer_writes_it_out_first(tmp_path: Path, clock: FakeClock) -> None:
    with writer(tmp_path, clock, buffer_size=64) as w:
        for i in range(40):
            w.write_at(at(20, i), b"%02d\n" % i)
        assert w.stats().flushes >= 1
    assert files(tmp_path) == {name(20): b"".join(b"%02d\n" % i for i in range(40))}


# ---------------------------------------------------------------- commits

CRASH = """
import os, sys
from natstream._writers import HourlyFileWriter
base, steps = sys.argv[1], sys.argv[2:]
w = HourlyFileWriter(base, "stream_data", utc=True, checkpoint={checkpoint!r})
for step in steps:
    kind, _, arg = step.partition("=")
    if kind == "at":
        hour, text = arg.split(":", 1)
        w.write_at({day} + int(hour) * 3600, text.encode() + b"\\n")
    elif kind == "commit":
        w.commit(arg)
    elif kind == "flush":
        w.flush()
os._exit(0)  # a crash: no close
"""


def crash_after(base: Path, *steps: str) -> None:
    """Run ``steps`` in a child process that then ends without closing its writer:
    ``at=HOUR:text`` (write_at), ``commit=TOKEN``, ``flush``."""
    day = datetime(2026, 11, 26, tzinfo=UTC).timestamp()
    script = CRASH.format(checkpoint=CHECKPOINT, day=day)
    subprocess.run([sys.executable, "-c", script, str(base), *steps], check=True, timeout=60)


def test_a_writer_reopened_after_a_crash_keeps_exactly_what_was_committed(
    tmp_path: Path,
) -> None:
    crash_after(tmp_path, "at=20:a", "at=20:b", "commit=2", "at=20:c", "flush")
    assert files(tmp_path) == {name(20): b"a\nb\nc\n"}  # c was written, not committed
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        assert w.committed == "2"
        assert files(tmp_path) == {name(20): b"a\nb\n"}  # cut back before anything else
        w.write_at(at(20, 30), b"c\n")
        w.commit("3")
    assert files(tmp_path) == {name(20): b"a\nb\nc\n"}
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        assert w.committed == "3"


def test_a_file_opened_after_the_last_commit_is_cut_back_too(tmp_path: Path) -> None:
    # 21's file is first written after the commit: it was listed before its first byte.
    crash_after(tmp_path, "at=20:a", "commit=1", "at=21:b", "at=22:c", "flush")
    assert files(tmp_path) == {name(20): b"a\n", name(21): b"b\n", name(22): b"c\n"}
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        assert w.committed == "1"
    assert files(tmp_path) == {name(20): b"a\n", name(21): b"", name(22): b""}


def test_a_crash_before_any_commit_leaves_empty_files_and_no_token(tmp_path: Path) -> None:
    crash_after(tmp_path, "at=20:a", "flush")
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        assert w.committed is None
        assert w.checkpoint == tmp_path / CHECKPOINT
    assert files(tmp_path) == {name(20): b""}


def test_existing_bytes_before_the_checkpoint_are_kept(tmp_path: Path) -> None:
    (tmp_path / name(20)).write_bytes(b"older\n")  # a file from before commits
    crash_after(tmp_path, "at=20:a", "flush")
    with writer(tmp_path, checkpoint=CHECKPOINT):
        pass
    assert files(tmp_path) == {name(20): b"older\n"}


def test_the_checkpoint_names_files_relative_to_the_base_directory(tmp_path: Path) -> None:
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        w.write_at(at(20), b"a\n")
        w.commit("t")
    state = json.loads((tmp_path / CHECKPOINT).read_text())
    assert state == {"version": 1, "token": "t", "files": {name(20): 2}}


def test_maintenance_leaves_a_finished_file_alone_until_its_bytes_are_committed(
    tmp_path: Path,
) -> None:
    with writer(tmp_path, checkpoint=CHECKPOINT, compress="gzip") as w:
        w.write_at(at(20), b"a\n")
        w.write_at(at(21), b"b\n")  # 20 is finished
        w.flush()  # 20 is closed and maintenance asked: it must not take it yet
        with w._lock:
            assert str(tmp_path / name(20)) in w._in_use_locked()
        w.write_at(at(21, 1), b"c\n")
        w.commit("2")
        wait_for(w, lambda s: s.files_compressed == 1)
    assert gzip.decompress((tmp_path / (name(20) + ".gz")).read_bytes()) == b"a\n"
    assert files(tmp_path)[name(21)] == b"b\nc\n"


def test_one_writer_per_checkpoint(tmp_path: Path, clock: FakeClock) -> None:
    with writer(tmp_path, clock, checkpoint=CHECKPOINT):
        with pytest.raises(WriterError, match="in use by another writer") as caught:
            writer(tmp_path, clock, checkpoint=CHECKPOINT)
        assert caught.value.errno == errno.EBUSY
    with writer(tmp_path, clock, checkpoint=CHECKPOINT):  # released by close()
        pass


def test_a_damaged_checkpoint_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / CHECKPOINT).write_text('{"version": 1, "token": 3}')
    with pytest.raises(WriterError, match="is damaged"):
        writer(tmp_path, clock, checkpoint=CHECKPOINT)
    with writer(tmp_path, clock, checkpoint=".other.checkpoint"):  # nothing was left held
        pass


def test_a_failed_commit_leaves_the_previous_one_standing(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with writer(tmp_path, clock, checkpoint=CHECKPOINT, fsync=True) as w:
        w.write_at(at(20), b"a\n")
        w.commit("1")
        w.write_at(at(20, 1), b"b\n")

        def no_space(src: str, dst: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("natstream._writers._commits.os.replace", no_space)
        with pytest.raises(WriterError, match="could not save the checkpoint"):
            w.commit("2")
        assert w.committed == "1"
        monkeypatch.undo()
    with writer(tmp_path, clock, checkpoint=CHECKPOINT) as w:
        assert w.committed == "1"
    assert files(tmp_path) == {name(20): b"a\n"}


def test_commit_needs_a_checkpoint_and_a_str_token(tmp_path: Path, clock: FakeClock) -> None:
    with writer(tmp_path, clock) as w:
        assert w.committed is None
        assert w.checkpoint is None
        with pytest.raises(WriterError, match="has no checkpoint"):
            w.commit("1")
    with writer(tmp_path, clock, checkpoint=CHECKPOINT) as w:
        with pytest.raises(TypeError):
            w.commit(1)  # type: ignore[arg-type]


@pytest.mark.parametrize("checkpoint", ["", "a/b", "..", "stream_data_2026-11-26_20.log"])
def test_a_checkpoint_must_be_a_plain_name_outside_the_pattern(
    tmp_path: Path, checkpoint: str
) -> None:
    with pytest.raises(ConfigError, match="checkpoint"):
        writer(tmp_path, checkpoint=checkpoint)


def test_commit_with_fsync_syncs_the_data_before_the_checkpoint(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    with writer(tmp_path, clock, checkpoint=CHECKPOINT, fsync=True) as w:
        w.write_at(at(20), b"a\n")
        w.flush()
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr("natstream._writers._commits.os.replace", replace)
        w.write_at(at(20, 1), b"b\n")
        w.commit("1")
        monkeypatch.undo()
    # the data file, the new checkpoint, then (after the rename) the directory
    assert events == ["fsync", "fsync", f"replace {CHECKPOINT}", "fsync"]


def test_records_accepted_after_a_commit_are_not_covered_by_it(tmp_path: Path) -> None:
    crash_after(tmp_path, "at=20:a", "commit=1", "at=20:b")  # b only buffered: never written
    with writer(tmp_path, checkpoint=CHECKPOINT) as w:
        assert w.committed == "1"
    assert files(tmp_path) == {name(20): b"a\n"}


def test_a_later_day_writer_still_cuts_back_a_file_of_the_past(tmp_path: Path) -> None:
    crash_after(tmp_path, "at=20:a", "commit=1", "at=20:b", "flush")
    clock = FakeClock(H21 + timedelta(days=3))
    with writer(tmp_path, clock, checkpoint=CHECKPOINT, compress="gzip") as w:
        # cut back on opening; whole then, so maintenance may compress it at once
        assert files(tmp_path).get(name(20), b"a\n") == b"a\n"
        wait_for(w, lambda s: s.files_compressed == 1)
    assert name(20) not in files(tmp_path)
    assert gzip.decompress((tmp_path / (name(20) + ".gz")).read_bytes()) == b"a\n"
