"""The ``natstream`` command, run as a user would: ``python -m natstream ...`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import cli_run
import pytest
from click.testing import CliRunner

from natstream._cli import main
from natstream.server import free_port

EXPECTED = [f"响应_{i}" for i in range(10)]
RUN_TIMEOUT = 60  # seconds; the demo itself takes well under 5
EXAMPLES_PORT = 4222  # where `natstream server` listens and the examples connect


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONUTF8"] = "1"  # the demo prints Chinese; do not depend on the locale
    env.update(extra)
    return env


def _natstream(
    *args: str, warnings: str | None = "error", **env: str
) -> subprocess.CompletedProcess[str]:
    flags = ["-W", warnings] if warnings else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "natstream", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT,
        env=_env(**env),
        check=False,
    )


def _sections(stdout: str) -> dict[str, list[str]]:
    """The demo's output split at its ``== N. title ==`` headings, keyed by N."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in stdout.splitlines():
        m = re.match(r"== (\d)\. ", line)
        if m:
            current = sections.setdefault(m.group(1), [])
        else:
            current.append(line.strip())
    return sections


def _received(lines: list[str]) -> list[str]:
    return [line.removeprefix("received: ") for line in lines if line.startswith("received: ")]


def test_demo_prints_its_three_examples() -> None:
    proc = _natstream("demo")
    assert proc.returncode == 0, proc.stderr
    # -W error turns any warning into output here: nothing unclosed, nothing pending.
    assert proc.stderr == ""
    sections = _sections(proc.stdout)
    assert sorted(sections) == ["1", "2", "3"], proc.stdout

    basic = sections["1"]
    assert _received(basic) == EXPECTED
    assert basic.index("stream ended") > basic.index(f"received: {EXPECTED[-1]}")

    error = sections["2"]
    assert _received(error) == EXPECTED[:3]
    raised = [line for line in error if line.startswith("raised StreamError:")]
    assert len(raised) == 1
    assert "sensor offline at index 3" in raised[0]
    assert "stream ended" not in error

    retry = sections["3"]
    assert _received(retry) == EXPECTED  # every reply once, in order: the retries resumed
    assert retry.count("stream ended") == 1
    assert sum(line.startswith("error marker:") for line in retry) == 2
    attempts = [re.fullmatch(r"attempts: (\d+)\b.*", line) for line in retry]
    counts = [int(m.group(1)) for m in attempts if m]
    assert counts == [3]
    assert counts[0] > 1
    assert "UNEXPECTED" not in proc.stdout


def test_demo_without_nats_server_exits_2_with_one_line() -> None:
    # Python's default warning filters, as a user runs it. Not -W error: NatsServer
    # leaks its temporary directory when start() fails inside ``with`` (a
    # ResourceWarning), which is natstream.server's to fix.
    proc = _natstream("demo", warnings=None, NATS_SERVER_BIN="/nonexistent/nats-server")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    assert "NATS_SERVER_BIN" in lines[0]


def test_help_lists_the_commands() -> None:
    proc = _natstream("--help")
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.partition("Commands:")[2].split()
    assert "demo" in commands
    assert "server" in commands


def test_server_rejects_port_with_cluster() -> None:
    result = CliRunner().invoke(main, ["server", "--port", "4222", "--cluster", "3"])
    assert result.exit_code == 2
    assert "--port and --cluster" in result.output


def test_uvloop_flag_is_accepted() -> None:
    result = CliRunner().invoke(main, ["--uvloop", "server", "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "nodes", "stop"),
    [(["--port", str(free_port())], 1, signal.SIGINT), (["--cluster", "3"], 3, signal.SIGTERM)],
    ids=["single-ctrl-c", "cluster-sigterm"],
)
def test_server_runs_until_stopped(args: list[str], nodes: int, stop: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "natstream", "server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(nodes)]
        for url in urls:
            parts = urlsplit(url)
            assert parts.scheme == "nats"
            assert parts.hostname == "127.0.0.1"
            with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
                assert s.recv(5) == b"INFO "
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert out == ""
    assert err.splitlines() == [f"{nodes} nats-server node(s) running; Ctrl-C to stop", "stopping"]
    for url in urls:  # the servers went with the command
        parts = urlsplit(url)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((parts.hostname, parts.port), timeout=1).close()


def test_demo_ctrl_c_exits_130_without_a_word() -> None:
    proc = cli_run.start("demo")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("natstream demo: nats-server at "), first
        cli_run.ctrl_c(proc)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        cli_run.stop(proc)
    assert proc.returncode == 130
    assert err == ""  # no "Aborted!", no traceback, no warning (-W error)


def _bind(port: int) -> socket.socket | None:
    """A socket listening on loopback ``port``, or None when the port is taken."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    s.listen()
    return s


def _first_url_then_stop(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """The first URL ``natstream server`` prints; then Ctrl-C, and its stderr lines."""
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        cli_run.ctrl_c(proc)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        cli_run.stop(proc)
    assert proc.returncode == 0, err
    return url, err.splitlines()


def test_server_listens_on_4222_where_the_examples_connect() -> None:
    probe = _bind(EXAMPLES_PORT)
    if probe is None:
        pytest.skip(f"port {EXAMPLES_PORT} is taken on this machine")
    probe.close()
    url, err = _first_url_then_stop(cli_run.start("server"))
    assert url == "nats://127.0.0.1:4222"
    assert err == ["1 nats-server node(s) running; Ctrl-C to stop", "stopping"]


def test_server_says_which_port_it_took_when_4222_is_taken() -> None:
    holder = _bind(EXAMPLES_PORT)  # None: someone else holds it, which does as well
    try:
        url, err = _first_url_then_stop(cli_run.start("server"))
    finally:
        if holder is not None:
            holder.close()
    port = urlsplit(url).port
    assert port not in (None, EXAMPLES_PORT), url
    assert err[0] == (
        f"port 4222 is in use (another nats-server?), so this one took port {port}: NATS_URL={url}"
    )
    assert err[1:] == ["1 nats-server node(s) running; Ctrl-C to stop", "stopping"]
