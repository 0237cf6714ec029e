"""The documentation's code is code that runs.

Every Python code block of README.md and docs/guide.md, and every shell block that
runs something long-lived, is an example under ``examples/``: the block is marked
``<!-- example: examples/NAME[#SECTION] -->`` and equals that file (without its
excerpt markers) or the excerpt between ``# --8<-- [start:SECTION]`` and
``# --8<-- [end:SECTION]``. A text block marked ``<!-- output: examples/NAME -->`` is
what that example prints (each of its lines is in the output). Other shell blocks hold
commands: each ``natstream ...`` in them must parse, each ``python examples/...`` name
an example. Every example runs here against a real nats-server ($NATS_URL), within a
bounded time.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cli_run
import nats
import pytest
from cli_run import RUN_TIMEOUT

from natstream._cli import main
from natstream._transport import flush_ordered
from natstream.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DOCS = (ROOT / "README.md", ROOT / "docs" / "guide.md")
EXCERPT = re.compile(r"^\s*# --8<-- \[(start|end):([\w-]+)\]\s*$")
DEFAULT_URL_PORT = 4222  # the examples' default NATS_URL, where `natstream server` listens
PROBE_INTERVAL = 0.05  # seconds between two probes for the recorder's subscription
MARK = re.compile(r"^<!-- example: (examples/[\w.-]+)(?:#([\w-]+))? -->$")
OUTPUT_MARK = re.compile(r"^<!-- output: examples/([\w.-]+) -->$")
ERROR_ID = re.compile(r"error id [0-9a-f]{12}")  # random: compared as "error id <id>"

# What each example prints (a line holding each string), when run to its end.
OUTPUT = {
    "quickstart.py": ["reply_0", "reply_9", "end of stream"],
    "handlers.py": [
        f"rows.{kind}: 1000 replies, the last 'row 999'"
        for kind in ("index", "packed", "batch", "generator")
    ],
    "timeouts.py": [
        "slow reply 2",
        "StreamTimeoutError",
        "retryable=False",
        "RequestTimeoutError",
        "retryable=True",
    ],
    "errors.py": [
        "errors.value: ['reading 0', 'reading 1'] then code 500: 'sensor offline'",
        "code 404",
        "internal error (error id ",
        "errors.nobody: NoRespondersError",
        "in 3 attempts",
    ],
    "recording.py": ["messages=6", "sensors.room1: 22.5"],
    "durable.py": ["last_sequence=2", "last_sequence=5", "sensors.room1: 21.9", "22.3"],
}
# Examples run by a test of their own below: a service, its client, a shell command.
DRIVEN = {"service.py", "client.py", "record.sh"}


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    mark: str | None  # the line before the fence

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), None)
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(doc, i + 1, m.group(1), code, before))
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS for b in _blocks(doc)]


def _shown(path: Path, section: str | None) -> str:
    """What a doc shows of ``path``: all of it, or one excerpt (dedented), without
    excerpt markers."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if section is None:
        return "".join(ln for ln in lines if not EXCERPT.match(ln))
    inside, out = False, []
    for ln in lines:
        m = EXCERPT.match(ln)
        if m and m.group(2) == section:
            inside = m.group(1) == "start"
            continue
        if inside and not m:
            out.append(ln)
    assert out, f"{path.name} has no excerpt {section!r}"
    return textwrap.dedent("".join(out)).strip("\n") + "\n"


def _example(block: Block) -> tuple[Path, str | None] | None:
    m = MARK.match(block.mark or "")
    return (ROOT / m.group(1), m.group(2)) if m else None


def test_the_docs_have_code() -> None:
    assert len([b for b in BLOCKS if b.lang == "python"]) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_each_code_block_is_an_example_or_commands_that_parse(block: Block) -> None:
    example = _example(block)
    if example is not None:
        path, section = example
        assert path.is_file(), f"{block}: {path} does not exist"
        assert block.code == _shown(path, section), f"{block} differs from {path.name}"
        return
    output = OUTPUT_MARK.match(block.mark or "")
    if output is not None:
        assert block.lang == "text", f"{block}: an output block is text"
        assert output.group(1) in OUTPUT, f"{block}: {output.group(1)} is not run to its end"
        return
    assert block.lang == "sh", f"{block}: a {block.lang or 'plain'} block that is no example"
    for line in _commands(block.code):
        words = shlex.split(line, comments=True)
        if words[:1] == ["natstream"]:
            main.make_context("natstream", words[1:])  # raises on a bad option
        for word in words:
            if word.startswith("examples/"):
                assert (ROOT / word).is_file(), f"{block}: {word} does not exist"


def _commands(code: str) -> list[str]:
    """The commands of a shell block, continuation lines joined, split at ``&&``."""
    joined = code.replace("\\\n", " ")
    return [c.strip() for ln in joined.splitlines() for c in ln.split("&&") if c.strip()]


def test_every_example_is_shown_and_run() -> None:
    shown = {p.name for b in BLOCKS if (ex := _example(b)) for p in [ex[0]]}
    files = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert files == shown, "an example no doc shows, or a doc naming a missing one"
    assert files == set(OUTPUT) | DRIVEN, "an example this module does not run"


def _env(server: NatsServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    bin_dir = str(Path(sys.executable).parent)  # natstream, for the shell example
    env.update(NATS_URL=server.url, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


@pytest.mark.parametrize("name", sorted(OUTPUT))
def test_the_example_runs(name: str, server: NatsServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_env(server),
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for want in OUTPUT[name]:
        assert want in proc.stdout, (want, proc.stdout)
    printed = set(ERROR_ID.sub("error id <id>", proc.stdout).splitlines())
    for block in BLOCKS:
        m = OUTPUT_MARK.match(block.mark or "")
        if m is not None and m.group(1) == name:
            for line in ERROR_ID.sub("error id <id>", block.code).splitlines():
                assert line in printed, f"{block}: {line!r} is not printed"
    assert "Traceback" not in proc.stderr or name == "errors.py", proc.stderr


def test_the_service_serves_the_client_and_stops_on_sigterm(server: NatsServer) -> None:
    service = subprocess.Popen(
        [sys.executable, "-W", "error", str(EXAMPLES / "service.py")],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(server),
    )
    try:
        assert service.stderr is not None
        logged = []  # the subscriber's own INFO lines (connected...) come first
        for _ in range(10):
            logged.append(service.stderr.readline())
            if logged[-1].rstrip().endswith("reports INFO serving reports.rows"):
                break
        else:
            raise AssertionError(f"the service did not say it serves: {logged}")
        client = subprocess.run(
            [sys.executable, "-W", "error", str(EXAMPLES / "client.py"), "3"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_env(server),
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ["row 0 of 3", "row 1 of 3", "row 2 of 3"]
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=RUN_TIMEOUT)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate(timeout=RUN_TIMEOUT)
    assert service.returncode == 0, err
    assert "streams_completed=1" in err
    assert err.rstrip().endswith("reports INFO stopped")


async def _publish_when_recorded(url: str, count: int) -> None:
    """Publish ``count`` readings once a probe shows the recorder subscribed."""
    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            while True:
                try:
                    await nc.request("sensors.probe", b"", timeout=0.05)
                except nats.errors.NoRespondersError:
                    await asyncio.sleep(PROBE_INTERVAL)  # not subscribed yet: ask again
                    continue
                except nats.errors.TimeoutError:
                    break  # delivered to the recorder, which never answers
        for i in range(count):
            await nc.publish("sensors.room1", f"{20 + i}".encode())
        await flush_ordered(nc)
    finally:
        await nc.close()


async def test_the_record_command_records(server: NatsServer, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sh",
        str(EXAMPLES / "record.sh"),
        stderr=asyncio.subprocess.PIPE,
        env=_env(server, RECORD_DIR=str(tmp_path)),
    )
    try:
        await _publish_when_recorded(server.url, 3)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    (path,) = tmp_path.glob("sensors_*.log")  # noqa: ASYNC240 - the recorder has ended
    lines = path.read_text().splitlines()
    assert [ln.rsplit(" ", 1)[1] for ln in lines if "sensors.room1" in ln] == ["20", "21", "22"]
    assert all(re.match(r"\[[\d\- :.]+Z\] sensors\.", ln) for ln in lines), lines


def test_the_readme_example_runs_as_written_against_natstream_server() -> None:
    """The quick start: `natstream server` in one terminal, the example in another,
    no NATS_URL set."""
    if not _port_free(DEFAULT_URL_PORT):
        pytest.skip(f"port {DEFAULT_URL_PORT} is taken on this machine")
    server = cli_run.start("server")
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == f"nats://127.0.0.1:{DEFAULT_URL_PORT}"
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "PYTHONWARNINGS")}
        proc = subprocess.run(
            [sys.executable, "-W", "error", str(EXAMPLES / "quickstart.py")],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
            check=False,
        )
        cli_run.ctrl_c(server)
        server.communicate(timeout=RUN_TIMEOUT)
    finally:
        cli_run.stop(server)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "end of stream"
    assert server.returncode == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
