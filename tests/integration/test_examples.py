"""The documentation's code is code that runs.

Every Python code block of README.md, docs/guide.md and docs/cli.md, and every shell
block that runs something long-lived, is an example under ``examples/``: the block is
marked ``<!-- example: examples/NAME[#SECTION] -->`` and equals that file (without its
excerpt markers) or the excerpt between ``# --8<-- [start:SECTION]`` and
``# --8<-- [end:SECTION]``. A text block marked ``<!-- output: examples/NAME -->`` is
what that example prints (each of its lines is in the output), one marked
``<!-- log: examples/NAME -->`` what the service it runs logs. Other shell blocks hold
commands: each ``natstream ...`` in them (also as a container's command) must parse,
each ``python examples/...`` name an example. Every example runs here against a real
nats-server ($NATS_URL), within a bounded time; the systemd unit of docs/cli.md runs
its ``ExecStart`` command.
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
DOCS = (ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "cli.md")
EXCERPT = re.compile(r"^\s*# --8<-- \[(start|end):([\w-]+)\]\s*$")
DEFAULT_URL_PORT = 4222  # the examples' default NATS_URL, where `natstream server` listens
PROBE_INTERVAL = 0.05  # seconds between two probes for the recorder's subscription
MARK = re.compile(r"^<!-- example: (examples/[\w.-]+)(?:#([\w-]+))? -->$")
OUTPUT_MARK = re.compile(r"^<!-- output: examples/([\w.-]+) -->$")
LOG_MARK = re.compile(r"^<!-- log: examples/([\w.-]+) -->$")
# Shell operators that end a command, and redirections (whose target is no argument).
OPERATORS = {"&&", "||", "|", ";", "&"}
REDIRECTIONS = {"<", ">", ">>", "2>", "2>>", "&>"}
CONTAINER_RUNNERS = {"docker", "podman"}
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
    "discovery.py": [
        "serving as prices ",
        "EURUSD 1.0854",
        "span 'process prices.ticks', child of 'request prices.ticks'",
    ],
    "durable.py": ["last_sequence=2", "last_sequence=5", "sensors.room1: 21.9", "22.3"],
}
# Examples run by a test of their own below: a service, its client, a shell command,
# a handler module for `natstream serve` and the systemd unit that serves it.
DRIVEN = {"service.py", "client.py", "record.sh", "reports.py", "reports.service"}
SUFFIXES = (".py", ".sh", ".service")  # of the files under examples/ that are examples
# Services whose logs a doc shows (a log block), run by a test below.
LOGGED = {"reports.service"}
UNIT = EXAMPLES / "reports.service"  # a systemd unit running reports.py
KILL_GRACE = 5.0  # natstream serve's default --kill-grace


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
    log = LOG_MARK.match(block.mark or "")
    if log is not None:
        assert block.lang == "text", f"{block}: a log block is text"
        assert log.group(1) in LOGGED, f"{block}: nothing runs {log.group(1)}'s service"
        return
    assert block.lang == "sh", f"{block}: a {block.lang or 'plain'} block that is no example"
    for words in _commands(block.code):
        _parses(words)
        for word in words:
            if word.startswith("examples/"):
                assert (ROOT / word).is_file(), f"{block}: {word} does not exist"


def _parses(words: list[str]) -> None:
    """A natstream command parses (raises on a bad option); run by a container runner
    too (``docker run ... IMAGE natstream ...``)."""
    if words[:1] and words[0] in CONTAINER_RUNNERS and "natstream" in words:
        words = words[words.index("natstream") :]
    if not words[:1] or os.path.basename(words[0]) != "natstream":
        return
    group = main.make_context("natstream", words[1:])
    args = words[1:]
    while args and args[0].startswith("-"):  # the group's own options (--uvloop)
        args = args[1:]
    if args:  # the command's options and arguments too (the group leaves them unparsed)
        command = main.get_command(group, args[0])
        assert command is not None, f"no command {args[0]!r}: {words}"
        command.make_context(args[0], args[1:], parent=group)


def _commands(code: str) -> list[list[str]]:
    """The commands of a shell block, as words: continuation lines joined, split at
    ``&&``, ``|``, ``;`` and ``&``, comments and redirections left out."""
    commands: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        skip = False
        for token in lexer:
            if skip:
                skip = False
            elif token in OPERATORS:
                commands.append(words)
                words = []
            elif token in REDIRECTIONS or token.rstrip("0123456789") in REDIRECTIONS:
                skip = True
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def test_commands_are_split_as_a_shell_splits_them() -> None:
    code = (
        "natstream request a.b --raw < in.txt > out.bin  # a comment\n"
        "cd examples && natstream serve x -- sh -c 'echo a | tr a b' &\n"
        "docker run --rm image \\\n    natstream server | head -1\n"
    )
    assert _commands(code) == [
        ["natstream", "request", "a.b", "--raw"],
        ["cd", "examples"],
        ["natstream", "serve", "x", "--", "sh", "-c", "echo a | tr a b"],
        ["docker", "run", "--rm", "image", "natstream", "server"],
        ["head", "-1"],
    ]


def test_every_example_is_shown_and_run() -> None:
    shown = {p.name for b in BLOCKS if (ex := _example(b)) for p in [ex[0]]}
    files = {p.name for p in EXAMPLES.iterdir() if p.suffix in SUFFIXES}
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
    assert "natstream INFO SIGTERM: closing; streams in flight get 10 s to finish" in err
    last = err.rstrip().splitlines()[-1]
    assert "reports INFO stopped: SubscriptionStats(" in last
    assert "streams_completed=1" in last


def _unit_settings() -> dict[str, str]:
    """The ``Key=Value`` settings of the systemd unit (sections and comments left out)."""
    settings = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def test_the_unit_runs_natstream_serve_and_gives_it_its_grace() -> None:
    unit = _unit_settings()
    command = shlex.split(unit["ExecStart"])
    assert os.path.basename(command[0]) == "natstream"
    _parses(command)
    grace = float(command[command.index("--grace") + 1])
    assert float(unit["TimeoutStopSec"]) > grace + KILL_GRACE
    assert unit["KillMode"] == "mixed"  # SIGTERM to natstream alone, not its commands
    module = command[command.index("--handler") + 1].partition(":")[0]
    assert (EXAMPLES / f"{module}.py").is_file()


async def test_the_unit_serves_reports_and_logs_what_the_docs_show(server: NatsServer) -> None:
    """The unit's ExecStart in examples/ (its WorkingDirectory): reports.py served,
    a request from the command line, a stop with SIGTERM (systemctl stop)."""
    command = shlex.split(_unit_settings()["ExecStart"])[1:]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "natstream",
        *command,
        cwd=EXAMPLES,
        env=_env(server),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        logged = []
        while not logged or "natstream.serve: serving" not in logged[-1]:
            line = await asyncio.wait_for(proc.stderr.readline(), RUN_TIMEOUT)
            assert line, f"serve ended: {logged}"
            logged.append(line.decode().rstrip())
        request = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "natstream",
            "request",
            "reports.rows",
            "3",
            env=_env(server),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(request.communicate(), RUN_TIMEOUT)
        assert request.returncode == 0
        assert out.decode().splitlines() == ["row 0 of 3", "row 1 of 3", "row 2 of 3"]
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    lines = [*logged, *rest.decode().splitlines()]
    shown = {ln.replace(server.url, f"nats://127.0.0.1:{DEFAULT_URL_PORT}") for ln in lines}
    for block in BLOCKS:
        m = LOG_MARK.match(block.mark or "")
        if m is not None and m.group(1) == UNIT.name:
            for line in block.code.splitlines():
                assert line in shown, f"{block}: {line!r} is not logged"


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
