"""``natstream serve`` as a user runs it (a subprocess) against a real server: shell
commands that print lines, fail, or hang until cancelled (their processes must be
gone after the requester stops), Python handlers, the graceful stop, and memory
under a slow requester."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import cli_run
import pytest
from cli_run import arun, assert_one_error_line, astart, astop

from natstream import Config, Pool, StreamError, StreamOptions
from natstream.server import NatsServer

WAIT = 30  # seconds: generous bounds on a loaded 2-core machine
FAST = StreamOptions(heartbeat=0.2)


class Serving:
    """A running ``natstream serve``: started, read until it says it serves; its
    stderr is collected in :attr:`log`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    async def ready(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), WAIT)
            assert line, f"serve exited before serving: {self.log}"
            self.log.append(line.decode().rstrip())
            if "natstream.serve: serving " in self.log[-1]:
                break
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode().rstrip())
            for text, seen in self._waiting:
                if text in self.log[-1] and not seen.done():
                    seen.set_result(None)

    async def logged(self, text: str) -> None:
        """Wait until a line holding ``text`` is logged."""
        if not any(text in line for line in self.log):
            seen = asyncio.get_running_loop().create_future()
            self._waiting.append((text, seen))
            await asyncio.wait_for(seen, WAIT)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal it; its exit status once it exited and its log is read."""
        self.proc.send_signal(sig)
        status = await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, WAIT)
        return status


@contextlib.asynccontextmanager
async def serving(
    server: NatsServer, *args: str, cwd: Path | None = None, **env: str
) -> AsyncIterator[Serving]:
    proc = await astart("serve", *args, env=cli_run.env(NATS_URL=server.url, **env), cwd=cwd)
    serve = Serving(proc)
    try:
        await serve.ready()
        yield serve
        if proc.returncode is None:
            assert await serve.stop() == 0, serve.log
    finally:
        await astop(proc)


async def _request(
    server: NatsServer, subject: str, data: bytes = b"", **options: object
) -> list[bytes]:
    async with Pool(Config([server.url], stream=FAST)) as pool:
        async with pool.stream(subject, data, stream_timeout=WAIT, **options) as s:  # type: ignore[arg-type]
            return [m.data async for m in s]


async def gone(pid: int) -> None:
    """Wait until process ``pid`` (any process, not only a child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, exited.set_result, None)
    try:
        await asyncio.wait_for(exited, WAIT)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


# ---------------------------------------------------------------- commands


async def test_each_line_is_a_reply(server: NatsServer, subject: str) -> None:
    async with serving(server, subject, "--", "sh", "-c", "for i in 1 2 3; do echo line $i; done"):
        assert await _request(server, subject) == [b"line 1", b"line 2", b"line 3"]


async def test_the_request_reaches_stdin_and_the_environment(
    server: NatsServer, subject: str
) -> None:
    script = 'printf "%s\\n" "$NATSTREAM_SUBJECT" "$NATSTREAM_REQUEST_HEADERS"; cat'
    async with serving(server, f"{subject}.*", "--", "sh", "-c", script):
        replies = await _request(server, f"{subject}.x", b"body", headers={"Tenant": "acme"})
    assert replies[0] == f"{subject}.x".encode()
    assert json.loads(replies[1]) == {"Tenant": "acme"}  # natstream's own headers left out
    assert replies[2:] == [b"body"]


async def test_chunk_sends_fixed_size_replies(server: NatsServer, subject: str) -> None:
    args = ("--chunk", "4096", "--", "head", "-c", "10000", "/dev/zero")
    async with serving(server, subject, *args):
        assert [len(r) for r in await _request(server, subject)] == [4096, 4096, 1808]


@pytest.mark.parametrize(("status", "retryable"), [(3, False), (75, True)])
async def test_a_failing_command_sends_its_last_stderr_line(
    server: NatsServer, subject: str, status: int, retryable: bool
) -> None:
    script = f'echo out; echo "warming up" >&2; echo "disk on fire" >&2; exit {status}'
    received: list[bytes] = []

    async def take_all() -> None:
        async with Pool(Config([server.url], stream=FAST)) as pool:
            async with pool.stream(subject, stream_timeout=WAIT) as s:
                async for msg in s:
                    received.append(msg.data)

    async with serving(server, subject, "--", "sh", "-c", script) as serve:
        with pytest.raises(StreamError) as info:
            await take_all()
    assert received == [b"out"]
    assert (info.value.message, info.value.code) == ("disk on fire", 500)
    assert info.value.retryable is retryable
    assert any(line.endswith(f"exited with status {status}: disk on fire") for line in serve.log)


# A command that says its pids (its own and a background child's), then hangs; one
# variant ignores SIGTERM.
HANGS = 'echo $$ >> "$PIDS"; sleep 1000 & echo $! >> "$PIDS"; echo started; wait'
DEAF = 'trap "" TERM; echo $$ >> "$PIDS"; echo started; while :; do sleep 1; done'


@pytest.mark.parametrize("script", [HANGS, DEAF], ids=["hangs", "ignores-sigterm"])
async def test_count_stops_the_command(
    server: NatsServer, subject: str, tmp_path: Path, script: str
) -> None:
    pids = tmp_path / "pids"
    args = ("--kill-grace", "1", "--", "sh", "-c", script)
    async with serving(server, subject, *args, PIDS=str(pids)):
        status, out, err = await arun("request", subject, "--count", "1", NATS_URL=server.url)
        assert (status, out, err) == (0, b"started\n", "")
        for pid in pids.read_text().split():
            await gone(int(pid))


async def test_ctrl_c_of_the_requester_stops_the_command(
    server: NatsServer, subject: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    async with serving(server, subject, "--", "sh", "-c", HANGS, PIDS=str(pids)):
        request = await astart("request", subject, env=cli_run.env(NATS_URL=server.url))
        try:
            assert request.stdout is not None
            assert await asyncio.wait_for(request.stdout.readline(), WAIT) == b"started\n"
            cli_run_ctrl_c(request)
            assert await asyncio.wait_for(request.wait(), WAIT) == 130
        finally:
            await astop(request)
        for pid in pids.read_text().split():
            await gone(int(pid))


def cli_run_ctrl_c(proc: asyncio.subprocess.Process) -> None:
    os.killpg(proc.pid, signal.SIGINT)


# ---------------------------------------------------------------- stopping the service


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_lets_streams_in_flight_finish(
    server: NatsServer, subject: str, tmp_path: Path, sig: signal.Signals
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    script = 'echo first; cat "$RELEASE"; echo last'
    async with serving(server, subject, "--", "sh", "-c", script, RELEASE=str(fifo)) as serve:
        async with Pool(Config([server.url], stream=FAST)) as pool:
            async with pool.stream(subject, stream_timeout=WAIT) as s:
                it = aiter(s)
                assert (await anext(it)).data == b"first"
                stopped = asyncio.create_task(serve.stop(sig))
                await serve.logged("closing; streams in flight get 10 s")
                await asyncio.to_thread(fifo.write_bytes, b"middle\n")
                assert [m.data async for m in it] == [b"middle", b"last"]
        assert await stopped == 0
    assert serve.log[-1].endswith(f"stopped ({sig.name})")


async def test_streams_beyond_the_grace_end_with_a_retryable_error(
    server: NatsServer, subject: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    args = ("--grace", "0.5", "--", "sh", "-c", HANGS)
    async with serving(server, subject, *args, PIDS=str(pids)) as serve:

        async def take_all(pool: Pool) -> None:
            async with pool.stream(subject, stream_timeout=WAIT) as s:
                async for _ in s:
                    serve.proc.send_signal(signal.SIGTERM)  # at the first reply

        async with Pool(Config([server.url], stream=FAST)) as pool:
            with pytest.raises(StreamError) as info:
                await take_all(pool)
        assert (info.value.code, info.value.retryable) == (503, True)
        assert await asyncio.wait_for(serve.proc.wait(), WAIT) == 0
    for pid in pids.read_text().split():
        await gone(int(pid))


# ---------------------------------------------------------------- options


async def test_a_queue_group_shares_the_requests(
    server: NatsServer, subject: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    script = 'echo run >> "$RUNS"; echo ok'
    args = ("--queue", "workers", "--", "sh", "-c", script)
    async with (
        serving(server, subject, *args, RUNS=str(runs)),
        serving(server, subject, *args, RUNS=str(runs)),
    ):
        for _ in range(10):
            assert await _request(server, subject) == [b"ok"]
    assert len(runs.read_text().split()) == 10


async def test_max_concurrent_turns_the_next_one_away(
    server: NatsServer, subject: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    script = 'echo first; cat "$RELEASE"'
    args = ("--max-concurrent", "1", "--", "sh", "-c", script)
    async with serving(server, subject, *args, RELEASE=str(fifo)):
        async with Pool(Config([server.url], stream=FAST)) as pool:
            async with pool.stream(subject, stream_timeout=WAIT) as s:
                it = aiter(s)
                assert (await anext(it)).data == b"first"
                with pytest.raises(StreamError) as info:
                    await _request(server, subject)
                await asyncio.to_thread(fifo.write_bytes, b"")
                assert [m.data async for m in it] == []
    assert (info.value.code, info.value.retryable) == (503, True)


# ---------------------------------------------------------------- Python handlers

HANDLERS = textwrap.dedent(
    """
    import asyncio

    async def rows(request):
        for i in range(int(request.data or b"3")):
            await asyncio.sleep(0)
            yield b"row %d" % i

    def index(request, i):
        return (b"index %d" % i, True, None) if i < 3 else (None, False, None)

    def pages(request, batch: int) -> tuple[list[bytes], bool, None]:
        return [b"page %d item %d" % (batch, i) for i in range(2)], batch < 1, None

    async def not_a_handler(request):
        return b"x"
    """
)


@pytest.mark.parametrize(
    ("spec", "extra", "replies"),
    [
        ("handlers:rows", [], [b"row 0", b"row 1", b"row 2"]),
        ("handlers:index", [], [b"index 0", b"index 1", b"index 2"]),
        ("handlers:index", ["--pack"], [b"index 0", b"index 1", b"index 2"]),
        ("handlers:pages", [], [b"page %d item %d" % (b, i) for b in (0, 1) for i in (0, 1)]),
    ],
    ids=["generator", "index", "packed-index", "batch"],
)
async def test_a_python_handler_of_each_kind(
    server: NatsServer,
    subject: str,
    tmp_path: Path,
    spec: str,
    extra: list[str],
    replies: list[bytes],
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    async with serving(server, subject, "--handler", spec, *extra, cwd=tmp_path) as serve:
        assert await _request(server, subject) == replies
    assert any(f"handler {spec}" in line for line in serve.log)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--handler", "handlers"], ["MODULE:FUNCTION"]),
        (["--handler", "nowhere:rows"], ["nowhere"]),
        (["--handler", "handlers:missing"], ["missing"]),
        (["--handler", "handlers:not_a_handler"], ["coroutine function"]),
        (["--handler", "handlers:rows", "--kind", "index"], ["async generator"]),
        (["--handler", "handlers:rows", "--pack"], ["--pack"]),
        (["--handler", "handlers:rows", "--", "echo"], ["--handler"]),
        ([], ["--handler"]),
        (["--", "no-such-command-here"], ["no-such-command-here"]),
        (["--chunk", "5", "--handler", "handlers:rows"], ["--chunk"]),
        (["--kind", "batch", "--", "echo"], ["--kind"]),
        (["--chunk", "100000000", "--", "echo"], ["--chunk", "max_payload"]),
        (["--queue", "a b", "--", "echo"], ["a b"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None,
)
async def test_a_usage_error_exits_2_with_one_line(
    server: NatsServer, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    proc = await asyncio.create_subprocess_exec(
        *cli_run.command("serve", "usage.x", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_run.env(NATS_URL=server.url),
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert (proc.returncode, out) == (2, b"")
    lines = [ln for ln in err.decode().splitlines() if not ln.startswith("INFO ")]
    assert_one_error_line("\n".join(lines), *words)


async def test_a_handler_module_that_raises_on_import_exits_1_with_its_traceback(
    server: NatsServer, tmp_path: Path
) -> None:
    (tmp_path / "broken.py").write_text('raise RuntimeError("no database configured")\n')
    status, out, err = await arun(
        "serve", "x.y", "--handler", "broken:rows", NATS_URL=server.url, cwd=str(tmp_path)
    )
    assert (status, out) == (1, b"")
    assert "Traceback" in err
    assert err.rstrip().endswith("RuntimeError: no database configured")


# ---------------------------------------------------------------- memory


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_memory_stays_flat_when_the_requester_is_slow(
    server: NatsServer, subject: str
) -> None:
    """128 MiB through a command, to a requester that pauses often: serve's peak RSS
    grows by far less than the stream (it reads only as fast as the requester takes)."""
    total, chunk = 128 << 20, 64 << 10
    args = ("--chunk", str(chunk), "--", "head", "-c", str(total), "/dev/zero")
    async with serving(server, subject, *args) as serve:
        before = _rss_kib(serve.proc.pid, "VmRSS")
        received = 0
        async with Pool(Config([server.url], stream=FAST)) as pool:
            async with pool.stream(subject, stream_timeout=120) as s:
                async for msg in s:
                    received += len(msg.data)
                    if received % (2 << 20) == 0:
                        await asyncio.sleep(0.02)  # the slow requester under test
        growth_mib = (_rss_kib(serve.proc.pid, "VmHWM") - before) / 1024
    assert received == total
    assert growth_mib < 48, f"serve grew by {growth_mib:.1f} MiB for a 128 MiB stream"
