"""Messages/s recorded from NATS into HourlyFileWriter, against a raw counting subscription.

Run: ``natstream bench`` or ``python benchmarks/bench_record.py [messages] [size] [rounds]``.
Each round, a receiver subscribes, then a publisher in a separate process sends
``messages`` payloads of ``size`` bytes and an end message while the receiver's event
loop is held (nats-server buffers them for it); the clock starts when the loop is let go
and stops when the end message has been handled. So each receiver runs at its own full
speed, not at the publisher's pace, and neither competes with the publisher for the CPU.
The receivers: a nats-py subscription whose callback only counts (the baseline), and
``stream_subscribe_with_writer`` into an ``HourlyFileWriter`` with a one-line formatter
(``recorder``; its time includes flushing the writer), and the same with
:func:`default_formatter`, the line ``natstream record`` writes (``recorder_default``).
Rounds alternate and the best of each receiver is kept. ``ratio`` is recorder / raw
messages/s (target: at least 0.8); ``cpu_ratio`` compares the CPU time the receiving
process used (all its threads, so the writer's I/O counts), which a shared machine
disturbs less than wall time.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.msg import Msg

from natstream import Subscriber
from natstream._recording import default_formatter
from natstream._transport import subscribe_live
from natstream._writers import HourlyFileWriter
from natstream.server import NatsServer

from ._proc import run_loop

_PUBLISHER = """
import asyncio, sys, nats
async def main(url, subject, n, size):
    nc = await nats.connect(url)
    payload = b"x" * size
    for i in range(n):
        await nc.publish(subject, payload)
        if i % 10000 == 9999:
            await nc.flush()
    await nc.publish(subject, b"END")
    await nc.flush()
    await nc.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

# The receiver holds its messages while the publisher runs: room for them in the server.
_SERVER_CONFIG = "max_pending: 512MB\nwrite_deadline: 60s\n"
_ROUNDS = 5


def _publish_all(url: str, subject: str, n: int, size: int) -> None:
    """Publish and wait, blocking the event loop: the receiver reads nothing meanwhile."""
    proc = subprocess.run(
        [sys.executable, "-c", _PUBLISHER, url, subject, str(n), str(size)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the publisher failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _line(msg: Msg) -> bytes:
    return msg.data + b"\n"


async def _raw(url: str, subject: str, n: int, size: int) -> tuple[float, float, int]:
    nc = await nats.connect(url)
    done = asyncio.Event()
    count = 0

    async def on(msg: Msg) -> None:
        nonlocal count
        if msg.data == b"END":
            done.set()
            return
        count += 1

    await subscribe_live(nc, subject, on)
    _publish_all(url, subject, n, size)
    start, cpu = time.perf_counter(), time.process_time()
    await done.wait()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await nc.close()
    return elapsed, cpu, count


async def _recorder(
    url: str, subject: str, n: int, size: int, formatter: Callable[[Msg], bytes]
) -> tuple[float, float, int]:
    directory = tempfile.mkdtemp(prefix="natstream-bench-")
    sub = await Subscriber.connect([url])
    writer = HourlyFileWriter(directory, "bench")
    done = asyncio.Event()

    def fmt(msg: Msg) -> bytes:
        if msg.data == b"END":
            done.set()
        return formatter(msg)

    try:
        rec = await sub.stream_subscribe_with_writer(subject, writer, fmt)
        _publish_all(url, subject, n, size)
        start, cpu = time.perf_counter(), time.process_time()
        await done.wait()
        await asyncio.to_thread(writer.flush)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        count = rec.stats().messages - 1
    finally:
        await sub.close()
        writer.close()
        shutil.rmtree(directory)
    return elapsed, cpu, count


async def _run(n: int, size: int, rounds: int) -> dict[str, Any]:
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    received: dict[str, int] = {}
    with NatsServer(config=_SERVER_CONFIG) as srv:
        cases: list[tuple[str, Callable[[str], Any]]] = [
            ("raw", lambda subject: _raw(srv.url, subject, n, size)),
            ("recorder", lambda subject: _recorder(srv.url, subject, n, size, _line)),
            (
                "recorder_default",
                lambda subject: _recorder(srv.url, subject, n, size, default_formatter),
            ),
        ]
        for round_ in range(rounds):
            order = cases if round_ % 2 == 0 else cases[::-1]
            for name, case in order:
                elapsed, cpu, count = await case(f"bench.{name}.{round_}")
                if count != n:
                    raise AssertionError(f"{name} handled {count} messages, expected {n}")
                best[name] = min(best.get(name, float("inf")), elapsed)
                best_cpu[name] = min(best_cpu.get(name, float("inf")), cpu)
                received[name] = count
    raw_rate = n / best["raw"]
    rec_rate = n / best["recorder"]
    default_rate = n / best["recorder_default"]
    return {
        "messages": n,
        "size": size,
        "rounds": rounds,
        "raw_msgs_per_s": raw_rate,
        "recorder_msgs_per_s": rec_rate,
        "recorder_default_msgs_per_s": default_rate,
        "raw_received": received["raw"],
        "recorder_written": received["recorder"],
        "ratio": rec_rate / raw_rate,
        "ratio_default_formatter": default_rate / raw_rate,
        "raw_cpu_us_per_msg": best_cpu["raw"] / n * 1e6,
        "recorder_cpu_us_per_msg": best_cpu["recorder"] / n * 1e6,
        "recorder_default_cpu_us_per_msg": best_cpu["recorder_default"] / n * 1e6,
        "cpu_ratio": best_cpu["raw"] / best_cpu["recorder"],
        "cpu_ratio_default_formatter": best_cpu["raw"] / best_cpu["recorder_default"],
    }


def run(messages: int = 100_000, size: int = 128, rounds: int = _ROUNDS) -> dict[str, Any]:
    """Run the receivers ``rounds`` times each, alternating; return the best figures."""
    return run_loop(_run(messages, size, rounds))


def main(argv: list[str]) -> None:
    args = [int(a) for a in argv[:3]]
    for key, value in run(*args).items():
        print(f"{key:>28}: {value:,.3f}" if isinstance(value, float) else f"{key:>28}: {value:,}")
