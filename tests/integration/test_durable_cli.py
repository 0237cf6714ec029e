"""``natstream record --durable`` as a user runs it: a subprocess against nats-server
with JetStream (its store in a temporary directory), killed, restarted, out of space.

Waiting on another process's progress means looking at the consumer every
``durable_help.POLL`` seconds: no event crosses the process boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pty
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cli_run
import nats
import pytest
from durable_help import WAIT, acked, consumer, lines, payloads, publish, until
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from test_record_cli import WITH_FILE_SIZE_LIMIT, _has_interest, _publish, _read_status

from natstream.server import NatsServer

STREAM = CONSUMER = "REC"
ACK_WAIT = "2s"  # a killed recorder's deliveries come back this soon (default: 30s)


@pytest.fixture
def js_server() -> Iterator[NatsServer]:
    """A nats-server with JetStream of the test's own, its store a temporary directory."""
    with NatsServer(jetstream=True) as srv:
        yield srv


def _args(srv: NatsServer, directory: Path, *args: str, subject: str = "dur.>") -> list[str]:
    """``natstream``'s arguments: record ``subject`` into ``rec_*.log``, durably."""
    return [
        "record", subject, "--dir", str(directory), "--name", "rec", "--durable", CONSUMER,
        "--server", srv.url, "--utc", "--ack-wait", ACK_WAIT, *args,
    ]  # fmt: skip


def _argv(srv: NatsServer, directory: Path, *args: str) -> list[str]:
    return cli_run.command(*_args(srv, directory, *args))


async def _start(
    argv: list[str], *, stderr: int | None = None, **env: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
        env=cli_run.env(**env),
    )


async def _stop(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, and the recorder's stderr; it must exit 0."""
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err.decode()
    return err.decode()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _live(srv: NatsServer) -> None:
    """The recorder has bound its stream and consumer (it pulls right after)."""
    await until(srv.url, STREAM, CONSUMER, lambda info: True)


async def _running(proc: asyncio.subprocess.Process, directory: Path) -> None:
    """The recorder has its checkpoint's lock file open: past its start, its signal
    handlers are installed (a SIGTERM before that ends it as any process). Read from
    /proc, so that the check never takes the lock from under it."""
    fds = f"/proc/{proc.pid}/fd"
    lock = str(directory / ".rec.checkpoint.lock")
    for _ in range(600):  # bounded: 30 s
        with contextlib.suppress(OSError):
            if any(os.readlink(f"{fds}/{fd}") == lock for fd in os.listdir(fds)):
                return
        assert proc.returncode is None, "the recorder ended while starting"
        await asyncio.sleep(0.05)
    raise AssertionError("the recorder did not open its checkpoint within 30 s")


def _checkpoint_sequence(directory: Path) -> int:
    import json

    state = json.loads((directory / ".rec.checkpoint").read_text())
    return int(json.loads(state["token"])["sequence"]) if state["token"] else 0


# ---------------------------------------------------------------- crashes

MESSAGES = 100_000
KILLS = 3


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_killed_three_times_the_files_hold_every_message_once_in_order(
    js_server: NatsServer, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # 300-byte lines: a round of 500 fills past half the writer's buffer, which is then
    # written out before the commit, so a kill can leave uncommitted lines on disk.
    texts = [f"m{i:06d} {'x' * 280}" for i in range(MESSAGES)]
    argv = _argv(js_server, tmp_path)
    proc = await _start(argv, stderr=asyncio.subprocess.DEVNULL)
    kills: list[tuple[int, int, int]] = []  # (delivered, lines in files, committed) at each
    try:
        await _live(js_server)
        publisher = asyncio.create_task(publish(js_server.url, "dur.data", texts, chunk=1000))
        for _ in range(KILLS):
            start = (await consumer(js_server.url, STREAM, CONSUMER)).delivered.stream_seq
            target = min(MESSAGES - 1, start + rng.randint(2_000, 20_000))
            await until(
                js_server.url, STREAM, CONSUMER, lambda i, t=target: i.delivered.stream_seq >= t
            )
            await asyncio.sleep(rng.uniform(0, 0.3))  # a random moment of its work
            await _kill(proc)
            info = await consumer(js_server.url, STREAM, CONSUMER)
            on_disk = len(lines(tmp_path, "rec"))
            kills.append((info.delivered.stream_seq, on_disk, _checkpoint_sequence(tmp_path)))
            proc = await _start(argv, stderr=asyncio.subprocess.DEVNULL)
        await publisher
        await until(js_server.url, STREAM, CONSUMER, acked(MESSAGES), within=300)
        # The run before the last kill may have acknowledged everything already, and
        # the last recorder be still starting.
        await _running(proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), WAIT)
        assert proc.returncode == 0
    finally:
        await _kill(proc)
    got = payloads(tmp_path, "rec")
    duplicates = len(got) - len(set(got))
    sys.stderr.write(  # shown with pytest -s: the figures of this run
        f"seed {seed}; at each kill (delivered, lines on disk, committed): {kills}; "
        f"{len(got)} lines, {duplicates} duplicates\n"
    )
    assert len(kills) == KILLS
    assert duplicates == 0
    assert got == texts  # every message once, in stream order


# A recorder that dies at an exact point of a round: after the files and the checkpoint
# took it, before its acknowledgements went ("committed"), or after its lines were
# written to the files but before the checkpoint took them ("written"). It is the
# library's recording, as the command runs it, in a process that ends with os._exit.
CRASHING = """
import asyncio, os, sys
from natstream import HourlyFileWriter, Subscriber, utc_formatter

url, directory, when = sys.argv[1:]

class Crashing(HourlyFileWriter):
    def commit(self, token):
        if when == "written":
            self.flush()  # the lines are in the files, the checkpoint still the old one
            os._exit(9)
        super().commit(token)
        os._exit(9)  # committed; the round's acknowledgements never go

async def main():
    writer = Crashing(directory, "rec", utc=True, checkpoint=".rec.checkpoint")
    async with Subscriber([url]) as sub:
        await sub.record_durable("dur.>", writer, utc_formatter, durable="REC", ack_wait=2.0)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("when", ["committed", "written"])
async def test_a_crash_between_writing_and_acknowledging_writes_nothing_twice(
    js_server: NatsServer, tmp_path: Path, when: str
) -> None:
    texts = [f"c{i:04d}" for i in range(1000)]
    crashing = [sys.executable, "-c", CRASHING, js_server.url, str(tmp_path), when]
    proc = await _start(crashing)
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", texts[:300])
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)  # dies in its first commit
    finally:
        await _kill(proc)
    assert proc.returncode == 9, err.decode()
    info = await consumer(js_server.url, STREAM, CONSUMER)
    assert info.ack_floor.stream_seq == 0  # nothing acknowledged, something delivered
    assert info.num_ack_pending
    on_disk = payloads(tmp_path, "rec")
    assert on_disk  # the lines were in the files
    assert on_disk == texts[: len(on_disk)]
    held = _checkpoint_sequence(tmp_path)
    assert held == (len(on_disk) if when == "committed" else 0)

    proc = await _start(_argv(js_server, tmp_path))  # the command, restarted
    try:
        await publish(js_server.url, "dur.data", texts[300:])
        await until(js_server.url, STREAM, CONSUMER, acked(len(texts)))
        err_text = await _stop(proc)
    finally:
        await _kill(proc)
    assert payloads(tmp_path, "rec") == texts  # each once, in order
    # The redeliveries of what the checkpoint held were skipped, not written again
    # (and more: what the restarted recorder held while it waited for them can reach
    # its ack wait and come again too).
    skipped = re.search(r"; ([\d,]+) redeliveries skipped,", err_text)
    assert skipped is not None, err_text
    assert int(skipped.group(1).replace(",", "")) >= held, err_text


# ---------------------------------------------------------------- stream and consumer


async def _infos(url: str, stream: str) -> tuple[StreamInfo, ConsumerInfo]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return await js.stream_info(stream), await js.consumer_info(stream, CONSUMER)
    finally:
        await nc.close()


async def test_the_stream_it_creates_has_the_limits_asked_and_a_pull_consumer(
    js_server: NatsServer, tmp_path: Path
) -> None:
    limits = ["--max-age", "2h", "--max-bytes", "10MB", "--max-ack-pending", "321"]
    proc = await _start(_argv(js_server, tmp_path, *limits))
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", ["x"])
        await until(js_server.url, STREAM, CONSUMER, acked(1))
        await _stop(proc)
    finally:
        await _kill(proc)
    stream, pull = await _infos(js_server.url, STREAM)
    assert stream.config.subjects == ["dur.>"]
    assert stream.config.storage == StorageType.FILE
    assert (stream.config.max_age, stream.config.max_bytes) == (7200.0, 10_000_000)
    assert pull.config.durable_name == CONSUMER
    assert pull.config.deliver_subject is None  # pulled
    assert pull.config.ack_policy == AckPolicy.EXPLICIT
    assert (pull.config.ack_wait, pull.config.max_ack_pending) == (2.0, 321)
    assert payloads(tmp_path, "rec") == ["x"]


async def test_a_stream_of_ones_own_is_bound_and_recorded_with_fsync(
    js_server: NatsServer, tmp_path: Path
) -> None:
    await _make(js_server.url, "MINE", ["dur.>", "else.>"], None)
    await publish(js_server.url, "else.data", ["not recorded"])  # another subject of it
    proc = await _start(_argv(js_server, tmp_path, "--stream", "MINE", "--fsync"))
    try:
        await until(js_server.url, "MINE", CONSUMER, lambda info: True)
        await publish(js_server.url, "dur.data", [f"f{i}" for i in range(500)])
        await until(js_server.url, "MINE", CONSUMER, acked(501))
        err = await _stop(proc)
    finally:
        await _kill(proc)
    assert payloads(tmp_path, "rec") == [f"f{i}" for i in range(500)]
    assert "stream MINE, consumer REC: the files hold its messages up to sequence 501" in err
    stream, _ = await _infos(js_server.url, "MINE")
    assert stream.config.subjects == ["dur.>", "else.>"]  # left as it was


# ---------------------------------------------------------------- the stored time

STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})(Z?)\] dur\.data: (.*)")


async def _stored_times(url: str, count: int) -> dict[str, dt.datetime]:
    """Each message's stored time as JetStream has it, by payload."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out = {}
        for seq in range(1, count + 1):
            msg = await js.get_msg(STREAM, seq)
            assert msg.data is not None
            out[msg.data.decode()] = msg.time  # aware, UTC, microseconds
        return out
    finally:
        await nc.close()


async def test_a_backlog_is_stamped_and_filed_by_the_time_it_was_stored(
    js_server: NatsServer, tmp_path: Path
) -> None:
    argv = _argv(js_server, tmp_path)
    proc = await _start(argv)
    try:
        await _live(js_server)
        await _stop(proc)  # down: the consumer stays, and the stream keeps for it
        await publish(js_server.url, "dur.data", [f"early {i}" for i in range(50)])
        await asyncio.sleep(1.2)  # the later half is stored at a later second
        await publish(js_server.url, "dur.data", [f"late {i}" for i in range(50)])
        stored = await _stored_times(js_server.url, 100)
        await asyncio.sleep(1.2)  # and the recorder starts later still
        started = dt.datetime.now(dt.UTC)
        proc = await _start(argv)
        await until(js_server.url, STREAM, CONSUMER, acked(100))
        await _stop(proc)
    finally:
        await _kill(proc)
    files = sorted(tmp_path.glob("rec_*.log"))  # noqa: ASYNC240 - the recorder has ended
    recorded = {}
    for path in files:
        for line in path.read_text().splitlines():
            m = STAMP.fullmatch(line)
            assert m is not None, line
            assert m.group(2) == "Z", line
            stamp = dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.UTC)
            assert path.name == f"rec_{stamp:%Y-%m-%d_%H}.log", (path, line)
            recorded[m.group(3)] = stamp
    assert set(recorded) == set(stored)
    for text, when in stored.items():
        # the stored time to the millisecond, not the replay's
        assert recorded[text] == when.replace(microsecond=when.microsecond // 1000 * 1000)
        assert recorded[text] < started
    assert max(recorded[f"early {i}"] for i in range(50)) < min(
        recorded[f"late {i}"] for i in range(50)
    )


async def test_a_backlog_goes_to_the_hour_file_of_its_stored_time_not_the_replay(
    js_server: NatsServer, tmp_path: Path
) -> None:
    # The recorder runs in a zone whose clocks go forward an hour at an instant chosen
    # between two parts of a backlog: they belong to different hours (files), and a
    # recorder that went by the time it replays them would file both in the later one.
    argv = _argv(js_server, tmp_path)
    proc = await _start(argv)  # the stream and the consumer, then down
    try:
        await _live(js_server)
        await _stop(proc)
        await publish(js_server.url, "dur.data", [f"before {i}" for i in range(20)])
        switch = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        if switch.hour == 0 or switch.hour >= 22 or _julian(switch) >= 365:
            pytest.skip("the hours around the switch would cross midnight or the year's end")
        if switch.minute == 59 and switch.second:
            # Offsets change on whole minutes in real zones, and the writer looks for a
            # change at whole minutes: one in the hour's last minute is not seen as
            # cutting that hour, which is then named without its offset.
            pytest.skip("a switch in an hour's last minute, after its first second")
        await asyncio.sleep((switch - dt.datetime.now(dt.UTC)).total_seconds() + 0.2)
        await publish(js_server.url, "dur.data", [f"after {i}" for i in range(20)])
        zone = f"AAA0BBB-1,J{_julian(switch)}/{switch:%H:%M:%S},J365/23:59:59"
        argv.remove("--utc")  # local time: the zone above (standard time is UTC)
        proc = await _start(argv, TZ=zone)
        await until(js_server.url, STREAM, CONSUMER, acked(40))
        await _stop(proc)
    finally:
        await _kill(proc)
    files = {p.name: p.read_text().splitlines() for p in sorted(tmp_path.glob("rec_*.log"))}  # noqa: ASYNC240
    hour = switch.hour
    after = f"rec_{switch:%Y-%m-%d}_{hour + 1:02d}+0100.log"  # from the switch to the hour's end
    assert [ln.split(": ", 1)[1] for ln in files.pop(after)] == [f"after {i}" for i in range(20)]
    # Before it: the switch's hour (cut short, so named with its offset), or an earlier
    # hour when the first part was stored before the hour began.
    earlier = {
        f"rec_{switch:%Y-%m-%d}_{hour:02d}+0000.log",
        f"rec_{switch:%Y-%m-%d}_{hour - 1:02d}.log",
    }
    assert set(files) <= earlier, files
    assert [ln.split(": ", 1)[1] for name in sorted(files) for ln in files[name]] == [
        f"before {i}" for i in range(20)
    ]


def _julian(day: dt.datetime) -> int:
    """POSIX TZ's ``Jn``: the day of the year, 1-365, February 29th never counted."""
    n = (day.date() - dt.date(day.year, 1, 1)).days + 1
    leap = day.year % 4 == 0 and (day.year % 100 != 0 or day.year % 400 == 0)
    return n - 1 if leap and day.date() > dt.date(day.year, 2, 28) else n


# ---------------------------------------------------------------- a full disk

FILE_SIZE_LIMIT = 20_000  # bytes (WITH_FILE_SIZE_LIMIT's)


async def test_a_full_disk_stops_it_and_after_a_restart_nothing_is_lost(
    js_server: NatsServer, tmp_path: Path
) -> None:
    texts = [f"{i:0100d}" for i in range(1000)]  # 130 kB of lines
    argv = _argv(js_server, tmp_path)
    limited = [sys.executable, "-c", WITH_FILE_SIZE_LIMIT, *argv]
    proc = await _start(limited)
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", texts)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)  # stops by itself
    finally:
        await _kill(proc)
    assert proc.returncode == 1, err.decode()
    cli_run.assert_one_error_line(err.decode(), "File too large", "start again")
    assert "retries" not in err.decode()  # the writer's note: not so, the process ends
    on_disk = payloads(tmp_path, "rec")
    assert on_disk == texts[: len(on_disk)]  # whole lines, in order
    info = await consumer(js_server.url, STREAM, CONSUMER)
    assert info.ack_floor.stream_seq <= len(on_disk)  # nothing acknowledged beyond the disk

    proc = await _start(argv)  # the space is back
    try:
        await until(js_server.url, STREAM, CONSUMER, acked(len(texts)))
        await _stop(proc)
    finally:
        await _kill(proc)
    assert payloads(tmp_path, "rec") == texts


# ---------------------------------------------------------------- status, summary


async def test_the_status_line_shows_rate_backlog_and_last_ack(
    js_server: NatsServer, tmp_path: Path
) -> None:
    master, terminal = pty.openpty()
    proc = await _start(_argv(js_server, tmp_path), stderr=terminal)
    os.close(terminal)
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", [str(i) for i in range(2000)])
        status = await _read_status(master, lambda s: s.startswith("2,000 msgs"))
        assert "msg/s  behind 0  last ack " in status, status
        assert f"-> {tmp_path}{os.sep}rec_" in status
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), WAIT)
    finally:
        await _kill(proc)
        os.close(master)
    assert proc.returncode == 0


async def test_on_exit_a_summary_says_how_far_the_files_go(
    js_server: NatsServer, tmp_path: Path
) -> None:
    proc = await _start(_argv(js_server, tmp_path))
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", [str(i) for i in range(300)])
        await until(js_server.url, STREAM, CONSUMER, acked(300))
        err = await _stop(proc)
    finally:
        await _kill(proc)
    assert err.splitlines()[-2:] == [
        "stream REC, consumer REC: the files hold its messages up to sequence 300; "
        "0 redeliveries skipped, 0 messages not delivered yet",
        "recorded 300 messages",
    ]


# ---------------------------------------------------------------- user errors


def _one_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    cli_run.assert_one_error_line(proc.stderr, *words)


def _run(
    srv: NatsServer, directory: Path, *args: str, subject: str = "dur.>"
) -> subprocess.CompletedProcess[str]:
    return cli_run.run(*_args(srv, directory, *args, subject=subject))


def test_without_jetstream_it_says_so(server: NatsServer, tmp_path: Path) -> None:
    _one_error(_run(server, tmp_path), "no JetStream", "-js")


async def _make(
    url: str, stream: str, subjects: list[str], consumer: ConsumerConfig | None
) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=subjects))
        if consumer is not None:
            await js.add_consumer(stream, consumer)
    finally:
        await nc.close()


async def test_a_stream_that_does_not_cover_the_subjects(
    js_server: NatsServer, tmp_path: Path
) -> None:
    await _make(js_server.url, "OTHER", ["other.>"], None)
    proc = await asyncio.to_thread(_run, js_server, tmp_path, "--stream", "OTHER")
    _one_error(proc, "'OTHER' does not cover 'dur.>'", "other.>")


def test_every_subject_and_a_missing_stream_are_refused_with_what_to_do(
    js_server: NatsServer, tmp_path: Path
) -> None:
    _one_error(_run(js_server, tmp_path, subject=">"), "subject '>'", "narrower subjects")
    missing = _run(js_server, tmp_path, "--stream", "NOPE")
    _one_error(missing, "stream 'NOPE' does not exist", "create it first")


async def test_subjects_another_stream_holds(js_server: NatsServer, tmp_path: Path) -> None:
    await _make(js_server.url, "HOLDER", ["dur.>"], None)
    proc = await asyncio.to_thread(_run, js_server, tmp_path)
    _one_error(proc, "overlap", "HOLDER", "--stream")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (ConsumerConfig(durable_name=CONSUMER, filter_subject="dur.a"), "subjects ['dur.a']"),
        (
            ConsumerConfig(durable_name=CONSUMER, deliver_subject="push.here"),
            "push delivery",
        ),
        (ConsumerConfig(durable_name=CONSUMER, max_deliver=3), "max_deliver 3"),
    ],
    ids=["subjects", "push", "max-deliver"],
)
async def test_a_consumer_with_another_configuration(
    js_server: NatsServer, tmp_path: Path, config: ConsumerConfig, says: str
) -> None:
    await _make(js_server.url, STREAM, ["dur.>"], config)
    proc = await asyncio.to_thread(_run, js_server, tmp_path)
    _one_error(proc, f"consumer {CONSUMER!r}", says)


async def test_one_recorder_per_directory_and_name(js_server: NatsServer, tmp_path: Path) -> None:
    first = await _start(_argv(js_server, tmp_path))
    try:
        await _live(js_server)
        proc = await asyncio.to_thread(_run, js_server, tmp_path)
        _one_error(proc, "in use by another writer", "stop the recorder that holds it")
        assert "Errno" not in proc.stderr
        await _stop(first)
    finally:
        await _kill(first)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--queue", "q"], "--queue and --durable exclude each other"),
        (["--stream", "S", "--max-age", "1h"], "--max-age and --max-bytes"),
        (["--max-bytes", "lots"], "--max-bytes 'lots'"),
        (["--ack-wait", "0s"], "--ack-wait '0s'"),
    ],
)
def test_durable_options_are_checked_first(
    server: NatsServer, tmp_path: Path, args: list[str], says: str
) -> None:
    _one_error(_run(server, tmp_path, *args), says)


def test_durable_options_need_durable(tmp_path: Path) -> None:
    proc = cli_run.run("record", "a.b", "--dir", str(tmp_path), "--name", "n", "--stream", "S")
    _one_error(proc, "--stream: only with --durable")


async def test_files_of_another_stream_are_not_mixed_in(
    js_server: NatsServer, tmp_path: Path
) -> None:
    proc = await _start(_argv(js_server, tmp_path))
    try:
        await _live(js_server)
        await publish(js_server.url, "dur.data", ["x"])
        await until(js_server.url, STREAM, CONSUMER, acked(1))
        await _stop(proc)
    finally:
        await _kill(proc)
    await _make(js_server.url, "ELSE", ["else.>"], None)
    run = await asyncio.to_thread(_run, js_server, tmp_path, "--stream", "ELSE", subject="else.>")
    _one_error(run, "recorded from stream 'REC', not 'ELSE'")


async def test_core_recording_takes_fsync_too(server: NatsServer, tmp_path: Path) -> None:
    args = ["rec.cli.*", "--dir", str(tmp_path), "--name", "stream_data", "--fsync"]
    proc = await _start(cli_run.command("record", *args, "--server", server.url))
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), WAIT)
        await _publish(server.url, 5)
        await _stop(proc)
    finally:
        await _kill(proc)
    recorded = [text for text in payloads(tmp_path, "stream_data") if text.isdigit()]
    assert recorded == [f"{i:010d}" for i in range(5)]
