"""Running the ``natstream`` command as a user does: ``python -m natstream`` in a subprocess.

:func:`start` puts the command in a session of its own, so that :func:`ctrl_c` can do
what Ctrl-C in a terminal does: SIGINT to every process of the foreground group (the
command and the processes it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

RUN_TIMEOUT = 60  # seconds for one command to finish on a loaded 2-core machine


def env(**extra: str) -> dict[str, str]:
    """The test's environment for the command, UTF-8 whatever the locale."""
    out = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out["PYTHONUTF8"] = "1"
    out.update(extra)
    return out


def command(*args: str, warnings: str | None = "error") -> list[str]:
    """``python [-W warnings] -m natstream args...``."""
    flags = ["-W", warnings] if warnings else []
    return [sys.executable, *flags, "-m", "natstream", *args]


def run(
    *args: str, warnings: str | None = "error", timeout: float = RUN_TIMEOUT, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; its output as text."""
    return subprocess.run(
        command(*args, warnings=warnings),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        env=env(**extra_env),
        check=False,
    )


def start(*args: str, warnings: str | None = "error", **popen: Any) -> subprocess.Popen[str]:
    """Start the command in its own session, stdout and stderr piped (unless given)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        command(*args, warnings=warnings),
        text=True,
        encoding="utf-8",
        env=popen.pop("env", None) or env(),
        start_new_session=True,
        **popen,
    )


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the command's whole process group."""
    os.killpg(proc.pid, signal.SIGINT)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill what is left of the command's process group (a test that failed midway)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=RUN_TIMEOUT)


def assert_one_error_line(stderr: str, *words: str) -> str:
    """``stderr`` is exactly one line, ``Error: ...``, holding each of ``words``."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    for word in words:
        assert word in lines[0], (word, stderr)
    return lines[0]


async def arun(
    *args: str, stdin: bytes | None = None, cwd: str | None = None, **extra_env: str
) -> tuple[int, bytes, str]:
    """:func:`run` for async tests (their event loop keeps serving meanwhile):
    (exit status, stdout as bytes, stderr as text)."""
    proc = await asyncio.create_subprocess_exec(
        *command(*args),
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(**extra_env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def astart(*args: str, **popen: Any) -> asyncio.subprocess.Process:
    """:func:`start` for async tests: in its own session, stdout and stderr piped
    (unless given)."""
    popen.setdefault("stdout", asyncio.subprocess.PIPE)
    popen.setdefault("stderr", asyncio.subprocess.PIPE)
    popen.setdefault("stdin", asyncio.subprocess.DEVNULL)
    return await asyncio.create_subprocess_exec(
        *command(*args), env=popen.pop("env", None) or env(), start_new_session=True, **popen
    )


async def astop(proc: asyncio.subprocess.Process) -> None:
    """:func:`stop` for :func:`astart`'s processes."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
