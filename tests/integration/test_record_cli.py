"""`natstream record` as a user runs it: a subprocess stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import cli_run
import nats
import pytest

from natstream._transport import flush_ordered
from natstream.server import NatsServer, free_port


async def _has_interest(url: str, subject: str) -> None:
    """Wait until a request on ``subject`` reaches a subscriber (the recorder is live)."""
    nc = await nats.connect(url)
    try:
        probe = nc.new_inbox()
        for _ in range(200):
            # A publish with a reply: the server answers 503 while nobody subscribes.
            try:
                await nc.request(subject, b"probe", timeout=0.05)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)
                continue
            except nats.errors.TimeoutError:
                return  # delivered to the recorder, which never answers
        raise AssertionError(f"no subscriber on {subject} ({probe})")
    finally:
        await nc.close()


async def test_record_then_sigterm_flushes_everything(server: NatsServer, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "natstream",
        "record",
        "rec.cli.*",
        "--dir",
        str(tmp_path),
        "--name",
        "stream_data",
        "--server",
        server.url,
        "--utc",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), 30)
        nc = await nats.connect(server.url)
        try:
            for i in range(1000):
                await nc.publish("rec.cli.data", f"line {i}".encode())
            await flush_ordered(nc)  # nats-py's flush() can overtake the publishes
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"recorded" in err
    files = sorted(tmp_path.glob("stream_data_*.log"))  # noqa: ASYNC240 - after the process ended
    text = b"".join(f.read_bytes() for f in files).decode()
    lines = [ln for ln in text.splitlines() if "rec.cli.data" in ln]
    assert [ln.rsplit(": ", 1)[1] for ln in lines] == [f"line {i}" for i in range(1000)]


# ---------------------------------------------------------------- failing, time, status

FILE_SIZE_LIMIT = 20_000  # bytes: RLIMIT_FSIZE of the recorder in the disk-full test
EXIT_TIMEOUT = 20  # seconds; the recorder stops within one, the rest is a loaded machine
# Runs the command in argv[1:] with files limited to FILE_SIZE_LIMIT bytes (Python
# ignores SIGXFSZ, so a write past the limit fails with EFBIG).
WITH_FILE_SIZE_LIMIT = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


async def _start(
    server: NatsServer, directory: Path, *args: str, stderr: int | None = None, **env: str
) -> asyncio.subprocess.Process:
    """``natstream record`` on ``rec.cli.*``, writing ``stream_data_*.log`` files."""
    return await asyncio.create_subprocess_exec(
        *_recorder_argv(server, directory, *args),
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
        env=cli_run.env(**env),
    )


def _recorder_argv(server: NatsServer, directory: Path, *args: str) -> list[str]:
    return cli_run.command(
        "record", "rec.cli.*", "--dir", str(directory), "--name", "stream_data",
        "--server", server.url, *args,
    )  # fmt: skip


async def _publish(url: str, count: int, size: int = 10) -> None:
    nc = await nats.connect(url)
    try:
        for i in range(count):
            await nc.publish("rec.cli.data", f"{i:0{size}d}".encode())
        await flush_ordered(nc)
    finally:
        await nc.close()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def _lines(directory: Path) -> list[str]:
    files = sorted(directory.glob("stream_data_*.log"))
    return b"".join(f.read_bytes() for f in files).decode().splitlines()


async def test_a_writer_failure_stops_the_recorder_with_one_line(
    server: NatsServer, tmp_path: Path
) -> None:
    # The file size limit plays a full disk: writes past it fail with EFBIG.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WITH_FILE_SIZE_LIMIT, *_recorder_argv(server, tmp_path),
        stderr=asyncio.subprocess.PIPE, env=cli_run.env(),
    )  # fmt: skip
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), 30)
        await _publish(server.url, 1000, size=100)  # 120 kB of lines: under half the buffer
        _, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT)  # no signal sent
    finally:
        await _kill(proc)
    assert proc.returncode == 1, err.decode()
    cli_run.assert_one_error_line(err.decode(), "stream_data", "File too large")
    written = b"".join(f.read_bytes() for f in tmp_path.glob("stream_data_*.log"))  # noqa: ASYNC240
    assert len(written) <= FILE_SIZE_LIMIT
    assert written.endswith(b"\n")  # whole lines only


STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d{3}(Z?)\] rec\.cli\.data: "


@pytest.mark.parametrize("utc", [True, False], ids=["utc", "local"])
async def test_lines_are_stamped_in_the_time_base_of_the_file_names(
    server: NatsServer, tmp_path: Path, utc: bool
) -> None:
    # Tokyo is 9 hours off UTC all year: local and UTC stamps cannot be confused.
    args = ["--utc"] if utc else []
    proc = await _start(server, tmp_path, *args, TZ="Asia/Tokyo")
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), 30)
        await _publish(server.url, 3)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT)
    finally:
        await _kill(proc)
    assert proc.returncode == 0, err.decode()
    now = datetime.now(UTC) if utc else datetime.now(ZoneInfo("Asia/Tokyo"))
    (path,) = tmp_path.glob("stream_data_*.log")  # noqa: ASYNC240
    lines = [ln for ln in _lines(tmp_path) if "rec.cli.data" in ln]
    assert len(lines) == 3
    for line in lines:
        m = re.match(STAMP, line)
        assert m is not None, line
        assert m.group(2) == ("Z" if utc else "")  # the local format is unchanged
        stamp = datetime.fromisoformat(m.group(1)).replace(tzinfo=now.tzinfo)
        assert abs((now - stamp).total_seconds()) < 120, (line, now)
        assert path.name.startswith(f"stream_data_{stamp:%Y-%m-%d_%H}"), (path, line)


async def _read_status(fd: int, want: Callable[[str], bool]) -> str:
    """Read the terminal at ``fd`` until ``want`` holds for the status line last drawn
    (within :data:`EXIT_TIMEOUT`)."""
    seen = ""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(EXIT_TIMEOUT):
            while True:
                readable = asyncio.Event()
                loop.add_reader(fd, readable.set)
                try:
                    await readable.wait()
                finally:
                    loop.remove_reader(fd)
                seen += os.read(fd, 65536).decode(errors="replace")
                last = seen.rsplit("\r", 1)[-1].replace("\x1b[K", "")
                if want(last):
                    return last
    raise AssertionError(f"status line never matched; the terminal showed {seen[-2000:]!r}")


def _messages(status: str) -> int:
    return int(status.partition(" msgs")[0].replace(",", ""))


async def test_the_status_line_shows_the_current_rate(server: NatsServer, tmp_path: Path) -> None:
    master, terminal = pty.openpty()
    proc = await _start(server, tmp_path, stderr=terminal)
    os.close(terminal)
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), 30)
        await _publish(server.url, 2000)
        # The probe's requests are recorded too: 2,000 and a few.
        busy = await _read_status(master, lambda s: " msgs " in s and _messages(s) >= 2000)
        assert "msg/s" in busy
        # Traffic stopped: the rate falls to zero (an average since start never would).
        idle = await _read_status(master, lambda s: " 0 msg/s" in s)
        assert _messages(idle) >= 2000
        assert f"-> {tmp_path}{os.sep}stream_data_" in idle
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
    finally:
        await _kill(proc)
        os.close(master)
    assert proc.returncode == 0


async def _next_line(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), EXIT_TIMEOUT)
    assert line, "the recorder closed stderr"
    return line.decode().strip()


@pytest.fixture
def restartable_server() -> Iterator[NatsServer]:
    """A server of the test's own that comes back on the same port when restarted."""
    with NatsServer(port=free_port()) as srv:
        yield srv


async def test_a_lost_connection_is_reported_and_so_is_its_return(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    srv = restartable_server
    proc = await _start(srv, tmp_path)
    assert proc.stderr is not None
    try:
        await asyncio.wait_for(_has_interest(srv.url, "rec.cli.probe"), 30)
        srv.kill()
        lost = await _next_line(proc.stderr)
        assert lost.startswith(f"connection to {srv.url} lost"), lost
        srv.start()  # the same port
        back = await _next_line(proc.stderr)
        assert back == f"connection to {srv.url} back: recording"
        await asyncio.wait_for(_has_interest(srv.url, "rec.cli.probe"), 30)
        await _publish(srv.url, 10)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT)
    finally:
        await _kill(proc)
    assert proc.returncode == 0, err.decode()
    assert len([ln for ln in _lines(tmp_path) if "rec.cli.data" in ln]) == 10
