"""The rule of the ``natstream`` command group: a user error is one line, ``Error: ...``,
on stderr, and exit status 2, in every command; nothing is started before it is found.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import assert_one_error_line, run

from natstream.server import NatsServer

# (id, arguments, words the error line must hold). In the arguments, {url} is a running
# server's URL, {tmp} a fresh directory, {file} a regular file and {busy} a port taken.
CASES = [
    ("group-unknown-command", ["bogus"], ["bogus", "natstream --help"]),
    ("group-unknown-option", ["--bogus", "demo"], ["--bogus"]),
    ("demo-unknown-option", ["demo", "--bogus"], ["--bogus", "natstream demo --help"]),
    ("server-port-and-cluster", ["server", "--port", "4222", "--cluster", "3"], ["--cluster"]),
    ("server-port-out-of-range", ["server", "--port", "0"], ["--port"]),
    ("server-cluster-of-one", ["server", "--cluster", "1"], ["--cluster"]),
    ("server-port-in-use", ["server", "--port", "{busy}"], ["{busy}", "in use"]),
    ("record-no-subject", ["record", "--dir", "{tmp}", "--name", "n"], ["SUBJECTS"]),
    ("record-no-dir", ["record", "a.b", "--name", "n"], ["--dir"]),
    ("record-retention", ["record", "a.b", "--retention", "7days"], ["7days"]),
    ("record-name", ["record", "a.b", "--name", "a/b"], ["a/b"]),
    ("record-subject", ["record", "a..b"], ["a..b"]),
    ("record-wildcard-inside", ["record", "ok.>", "a.>.b"], ["a.>.b"]),
    ("record-queue", ["record", "a.b", "--queue", "q q"], ["q q"]),
    ("record-server-scheme", ["record", "a.b", "--server", "http://127.0.0.1:4222"], ["http"]),
    ("record-dir-is-a-file", ["record", "a.b", "--dir", "{file}"], ["{file}", "not a directory"]),
    ("record-dir-under-a-file", ["record", "a.b", "--dir", "{file}/sub"], ["{file}/sub"]),
    ("record-server-unreachable", ["record", "a.b", "--server", "nats://127.0.0.1:{busy}"], []),
    ("bench-unknown-case", ["bench", "--case", "nope"], ["nope"]),
    ("bench-json-unwritable", ["bench", "--quick", "--json", "{file}/x.json"], ["{file}/x.json"]),
]
# Record arguments every record case has unless it tests their absence.
RECORD_DEFAULTS = {"--dir": "{tmp}/rec", "--name": "n", "--server": "{url}"}


@pytest.fixture(scope="module")
def busy() -> Iterator[int]:
    """A loopback port some other program listens on (it never answers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _arguments(args: list[str], case: str) -> list[str]:
    if args[0] != "record" or case == "record-no-subject":
        return args
    missing = case.removeprefix("record-no-")
    extra = [
        part
        for option, value in RECORD_DEFAULTS.items()
        if option not in args and option != f"--{missing}"
        for part in (option, value)
    ]
    return [*args, *extra]


@pytest.mark.parametrize(("case", "args", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_and_exit_2(
    case: str,
    args: list[str],
    words: list[str],
    server: NatsServer,
    tmp_path: Path,
    busy: int,
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    values = {"url": server.url, "tmp": str(tmp_path), "file": str(file), "busy": str(busy)}
    argv = [a.format(**values) for a in _arguments(args, case)]
    proc = run(*argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, *(w.format(**values) for w in words))
    assert not (tmp_path / "rec").exists() or case.startswith("record-server")


@pytest.mark.skipif(
    importlib.util.find_spec("zstandard") is not None, reason="zstandard is installed"
)
def test_record_compress_zstd_without_the_package(server: NatsServer, tmp_path: Path) -> None:
    proc = run(
        "record", "a.b", "--dir", str(tmp_path), "--name", "n", "--server", server.url,
        "--compress", "zstd",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "zstandard", "natstream[zstd]")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_record_into_a_read_only_directory(server: NatsServer, tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        proc = run(
            "record", "a.b", "--dir", str(tmp_path), "--name", "n", "--server", server.url
        )  # fmt: skip
    finally:
        tmp_path.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, str(tmp_path), "not writable")
