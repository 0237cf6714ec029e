"""The commands themselves: ``natstream request`` and ``natstream serve``, as users run them.

Run: ``natstream bench --case request_cli --case serve_memory``.

* :func:`run_request` (``request_cli``): ``natstream request SUBJECT --raw`` with
  stdout to /dev/null, a process of its own per stream, against the library's own
  ``Pool.stream_request`` with a sync handler that counts (as ``stream_128``), on
  the same responder process (``messages`` replies of ``size`` bytes), rounds
  alternating, the best of each kept. The command's time includes Python's start,
  imports and connecting: its rate is taken over the difference between a stream of
  ``messages`` replies and one of a single reply (``cli_startup_s``), each the best
  of its rounds; ``cli_wall_msgs_per_s`` is the rate with it. ``ratio`` = command /
  library.
* :func:`run_serve_memory` (``serve_memory``): ``natstream serve --chunk 102400 --
  sh -c 'head -c "$(cat)" /dev/zero'`` (the request says how many bytes) streaming
  1 GB to a requester (this process) that sleeps ``pause`` seconds every ``every``
  replies; the serve process's RSS growth (peak,
  ``VmHWM`` after resetting it, minus RSS just before the stream). The command's
  output is read only as fast as the requester takes it, so the growth stays flat.

Every process started here is in a session of its own (Ctrl-C reaches this one,
which stops them) and is stopped when its case ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from natstream import Config, Pool

from ._proc import Responder, run_loop
from .stream import _ns_round

__all__ = ["run_request", "run_serve_memory"]

_COMMAND_TIMEOUT = 300.0  # seconds for one command to run (a hung case is reported)
_CHUNK = 100 * 1024  # serve_memory: bytes per reply, as the memory case's
_SERVE_READY = "natstream.serve: serving "  # the line serve logs once it serves


def _command(*args: str, uvloop: bool) -> list[str]:
    return [sys.executable, "-m", "natstream", *(["--uvloop"] if uvloop else []), *args]


async def _timed_request(url: str, subject: str, data: str, uvloop: bool) -> float:
    """Seconds ``natstream request SUBJECT DATA --raw > /dev/null`` takes, start to exit."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *_command("request", subject, data, "--raw", "--server", url, uvloop=uvloop),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), _COMMAND_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"natstream request exited {proc.returncode}: {err.decode()[-500:]}")
    return elapsed


async def _request(messages: int, size: int, rounds: int, uvloop: bool) -> dict[str, Any]:
    from natstream.server import NatsServer

    with NatsServer() as srv:
        async with Responder(srv.url, messages, size, uvloop=uvloop) as responder:
            library = cli = startup = math.inf
            async with Pool(Config([srv.url], idle_per_server=1)) as pool:
                for _ in range(rounds):
                    library = min(library, await _ns_round(pool, messages))
                    # bench.many with b"1": one reply of the same size (the start-up)
                    startup = min(startup, await _timed_request(srv.url, "bench.many", "1", uvloop))
                    cli = min(cli, await _timed_request(srv.url, "bench.ns", "", uvloop))
            loop = responder.loop
    stream_s = cli - startup
    cli_rate = messages / stream_s if stream_s > 0 else math.nan
    library_rate = messages / library
    return {
        "messages": messages,
        "size": size,
        "rounds": rounds,
        "cli_msgs_per_s": cli_rate,
        "cli_mb_per_s": cli_rate * size / 1e6,
        "cli_wall_msgs_per_s": messages / cli,
        "cli_startup_s": startup,
        "library_msgs_per_s": library_rate,
        "library_mb_per_s": library_rate * size / 1e6,
        "ratio": cli_rate / library_rate,
        "responder_loop": loop,
    }


def run_request(messages: int, size: int, rounds: int, *, uvloop: bool = False) -> dict[str, Any]:
    """The ``request_cli`` case (see the module docstring)."""
    return run_loop(_request(messages, size, rounds, uvloop), uvloop)


# ---------------------------------------------------------------- serve_memory


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _reset_peak(pid: int) -> None:
    """Set the process's VmHWM to its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


_ZEROS = 'head -c "$(cat)" /dev/zero'  # as many zero bytes as the request says


@contextlib.asynccontextmanager
async def _serving(url: str, subject: str, uvloop: bool) -> AsyncIterator[int]:
    """``natstream serve`` of zero bytes, as many as each request says, until it is
    stopped; yields its pid once it serves."""
    args = ("serve", subject, "--server", url, "--chunk", str(_CHUNK), "--", "sh", "-c", _ZEROS)
    proc = await asyncio.create_subprocess_exec(
        *_command(*args, uvloop=uvloop),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        while _SERVE_READY not in (log[-1] if log else ""):
            line = await asyncio.wait_for(proc.stderr.readline(), _COMMAND_TIMEOUT)
            if not line:
                raise RuntimeError(f"natstream serve did not start: {log[-5:]}")
            log.append(line.decode().rstrip())
        drained = asyncio.create_task(_drain(proc.stderr), name="natstream-bench-serve-log")
        yield proc.pid
        proc.terminate()
        await asyncio.wait_for(proc.wait(), _COMMAND_TIMEOUT)
        await drained
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _slow_stream(pool: Pool, subject: str, total: int, every: int, pause: float) -> int:
    """Bytes received of a stream of ``total``, pausing every ``every`` replies."""
    received = replies = 0
    async with pool.stream(subject, str(total).encode()) as s:
        async for msg in s:
            received += len(msg.data)
            replies += 1
            if replies % every == 0:
                await asyncio.sleep(pause)  # the slow requester
    return received


async def _serve_memory(total: int, every: int, pause: float, uvloop: bool) -> dict[str, Any]:
    from natstream.server import NatsServer

    with NatsServer() as srv:
        async with _serving(srv.url, "bench.serve", uvloop) as pid:
            async with Pool(Config([srv.url], idle_per_server=1)) as pool:
                warm_up = 10 * _CHUNK  # allocate what a stream needs once
                await _slow_stream(pool, "bench.serve", warm_up, every, 0.0)
                before = _status_kib(pid, "VmRSS")
                _reset_peak(pid)
                start = time.perf_counter()
                received = await _slow_stream(pool, "bench.serve", total, every, pause)
                elapsed = time.perf_counter() - start
                peak = _status_kib(pid, "VmHWM")
    if received != total:
        raise RuntimeError(f"received {received} of {total} bytes")
    return {
        "stream_mb": total / 1e6,
        "chunk": _CHUNK,
        "pause_every": every,
        "pause_s": pause,
        "seconds": elapsed,
        "serve_rss_before_mb": before * 1024 / 1e6,
        "serve_rss_growth_mb": (peak - before) * 1024 / 1e6,
    }


def run_serve_memory(
    total: int, every: int = 50, pause: float = 0.05, *, uvloop: bool = False
) -> dict[str, Any]:
    """The ``serve_memory`` case (see the module docstring); Linux only (``/proc``)."""
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("serve_memory reads /proc (Linux)")
    return run_loop(_serve_memory(total, every, pause, uvloop), uvloop)
