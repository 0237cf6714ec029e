"""Messages/s recorded from NATS into HourlyFileWriter, against a raw counting subscription.

Run: ``natstream bench`` or ``python benchmarks/bench_record.py [messages] [size]``.
A publisher in a separate process sends ``messages`` payloads of ``size`` bytes, then
an end message, paced by a flush every 1,000 messages so neither receiver is cut off
as a slow consumer. Two
receivers take turns on the same embedded nats-server: a nats-py subscription whose
callback only counts (the baseline), and ``stream_subscribe_with_writer`` into an
``HourlyFileWriter`` (its time includes the final flush). ``ratio`` is recorder / raw
(target: at least 0.8).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from typing import Any

import nats
from nats.aio.msg import Msg

from natstream import Subscriber
from natstream._connection import subscribe_live
from natstream._writers import HourlyFileWriter
from natstream.server import NatsServer

_PUBLISHER = """
import asyncio, sys, nats
async def main(url, subject, n, size):
    nc = await nats.connect(url)
    payload = b"x" * size
    for i in range(n):
        await nc.publish(subject, payload)
        if i % 1000 == 999:
            await nc.flush()
    await nc.publish(subject, b"END")
    await nc.flush()
    await nc.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def _publish(url: str, subject: str, n: int, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _PUBLISHER, url, subject, str(n), str(size)])


def _line(msg: Msg) -> bytes:
    return msg.data + b"\n"


async def _raw(url: str, n: int, size: int) -> tuple[float, int]:
    nc = await nats.connect(url)
    done = asyncio.Event()
    count = 0
    first = 0.0

    async def on(msg: Msg) -> None:
        nonlocal count, first
        if count == 0:
            first = time.perf_counter()
        if msg.data == b"END":
            done.set()
            return
        count += 1

    await subscribe_live(nc, "bench.raw", on)
    proc = await asyncio.to_thread(_publish, url, "bench.raw", n, size)
    await done.wait()
    elapsed = time.perf_counter() - first
    await asyncio.to_thread(proc.wait)
    await nc.close()
    return elapsed, count


async def _recorder(url: str, n: int, size: int, directory: str) -> tuple[float, int]:
    sub = await Subscriber.connect([url])
    writer = HourlyFileWriter(directory, "bench")
    done = asyncio.Event()
    first = 0.0
    seen = 0

    def fmt(msg: Msg) -> bytes:
        nonlocal first, seen
        if seen == 0:
            first = time.perf_counter()
        seen += 1
        if msg.data == b"END":
            done.set()
        return msg.data + b"\n"

    rec = await sub.stream_subscribe_with_writer("bench.rec", writer, fmt)
    proc = await asyncio.to_thread(_publish, url, "bench.rec", n, size)
    await done.wait()
    await asyncio.to_thread(writer.flush)
    elapsed = time.perf_counter() - first
    await asyncio.to_thread(proc.wait)
    count = rec.stats().messages - 1
    await sub.close()
    writer.close()
    return elapsed, count


async def _run(n: int, size: int) -> dict[str, Any]:
    with NatsServer() as srv, tempfile.TemporaryDirectory(prefix="natstream-bench-") as tmp:
        raw_t, raw_n = await _raw(srv.url, n, size)
        rec_t, rec_n = await _recorder(srv.url, n, size, tmp)
    raw_rate, rec_rate = raw_n / raw_t, rec_n / rec_t
    return {
        "messages": n,
        "size": size,
        "raw_msgs_per_s": raw_rate,
        "recorder_msgs_per_s": rec_rate,
        "raw_received": raw_n,
        "recorder_written": rec_n,
        "ratio": rec_rate / raw_rate,
    }


def run(messages: int = 100_000, size: int = 128) -> dict[str, Any]:
    """Run both receivers once each and return their figures and the ratio."""
    return asyncio.run(_run(messages, size))


def main(argv: list[str]) -> None:
    args = [int(a) for a in argv[:2]]
    for key, value in run(*args).items():
        print(f"{key:>22}: {value:,.3f}" if isinstance(value, float) else f"{key:>22}: {value:,}")
