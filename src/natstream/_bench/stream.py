"""Streams with responder and requester in separate processes: natstream against raw nats-py.

Run: ``natstream bench`` or ``python benchmarks/bench_stream.py [messages] [size]``.

The responder process serves two subjects on one embedded nats-server:

* ``bench.raw``: a hand-written nats-py stream, publishing ``messages`` payloads to the
  request's reply inbox, then ``__STREAM_END__`` (what one writes without natstream);
* ``bench.ns``: a natstream index handler producing the same payloads, with sequence
  numbers, flow control and heartbeats on.

The requester (this process) receives each stream with a handler that only counts:
raw through an inbox subscription callback, natstream through ``Pool.stream_request``.
Rounds alternate; the best of each is kept. ``ratio`` = natstream / raw messages/s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from natstream import Config, Pool
from natstream._connection import subscribe_live
from natstream.server import NatsServer

_RESPONDER = """
import asyncio, sys, nats
from natstream import Subscriber
async def main(url, n, size):
    payload = b"x" * size
    nc = await nats.connect(url)
    async def raw(msg):
        for _ in range(n):
            await nc.publish(msg.reply, payload)
        await nc.publish(msg.reply, b"__STREAM_END__")
    await nc.subscribe("bench.raw", cb=raw)
    await nc.flush()
    sub = await Subscriber.connect([url])
    def handler(request, index):
        if index >= n:
            return None, False, None
        return payload, True, None
    await sub.stream_subscribe_handler("bench.ns", handler)
    async def reply_once(msg):
        await msg.respond(b"x")
    await nc.subscribe("bench.req", cb=reply_once)
    def first(request, index):
        return (b"x", False, None) if index == 0 else (None, False, None)
    await sub.stream_subscribe_handler("bench.first", first)
    def many(request, index):
        k = int(request.data)
        return (payload, True, None) if index < k else (None, False, None)
    await sub.stream_subscribe_handler("bench.many", many)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await sub.close()
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""

_ROUNDS = 3


async def _raw_round(nc: Client, n: int) -> float:
    done = asyncio.Event()
    count = 0

    async def on(msg: Msg) -> None:
        nonlocal count
        if msg.data == b"__STREAM_END__":
            done.set()
        else:
            count += 1

    inbox = nc.new_inbox()
    sub = await subscribe_live(nc, inbox, on)
    start = time.perf_counter()
    await nc.publish("bench.raw", b"", reply=inbox)
    await done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    assert count == n, f"raw stream lost messages: {count} of {n}"
    return n / elapsed


async def _ns_round(pool: Pool, n: int) -> float:
    count = 0

    def on(msg: Msg) -> bool:
        nonlocal count
        count += 1
        return True

    start = time.perf_counter()
    await pool.stream_request("bench.ns", b"", on)
    elapsed = time.perf_counter() - start
    assert count == n + 1, f"natstream stream lost messages: {count - 1} of {n}"
    return n / elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _first_reply(nc: Client, pool: Pool, calls: int) -> dict[str, float]:
    """p50/p99 of nats-py request() round trips and of natstream's time to first reply."""
    raw: list[float] = []
    ours: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        await nc.request("bench.req", b"", timeout=5)
        raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        async with pool.stream("bench.first") as s:
            async for _msg in s:
                ours.append(time.perf_counter() - start)
    return {
        "request_p50_us": _percentile(raw, 0.5) * 1e6,
        "first_reply_p50_us": _percentile(ours, 0.5) * 1e6,
        "first_reply_p99_us": _percentile(ours, 0.99) * 1e6,
        "first_reply_ratio": _percentile(ours, 0.5) / _percentile(raw, 0.5),
    }


async def _concurrent(pool: Pool, streams: int, replies: int) -> dict[str, float]:
    """``streams`` concurrent streams of ``replies`` each through one pool."""
    firsts: list[float] = []
    start = time.perf_counter()

    async def one() -> int:
        t0 = time.perf_counter()
        got = 0
        async with pool.stream("bench.many", str(replies).encode()) as s:
            async for _msg in s:
                if got == 0:
                    firsts.append(time.perf_counter() - t0)
                got += 1
        return got

    counts = await asyncio.gather(*(one() for _ in range(streams)))
    elapsed = time.perf_counter() - start
    if any(c != replies for c in counts):
        raise AssertionError("a concurrent stream lost replies")
    p50, p99 = _percentile(firsts, 0.5), _percentile(firsts, 0.99)
    return {
        "concurrent_streams": float(streams),
        "concurrent_msgs_per_s": streams * replies / elapsed,
        "concurrent_first_p50_ms": p50 * 1e3,
        "concurrent_first_p99_ms": p99 * 1e3,
        "concurrent_fairness_p99_over_p50": p99 / p50,
    }


async def _run(
    n: int, size: int, rounds: int, first_calls: int, concurrent: tuple[int, int] | None
) -> dict[str, Any]:
    with NatsServer() as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RESPONDER,
            srv.url,
            str(n),
            str(size),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.strip() != b"ready":
                raise RuntimeError("the responder process did not start")
            nc = await nats.connect(srv.url)
            pool = await Pool.connect(Config([srv.url], idle_per_server=1))
            raw_best = ns_best = 0.0
            for _ in range(rounds):
                raw_best = max(raw_best, await _raw_round(nc, n))
                ns_best = max(ns_best, await _ns_round(pool, n))
            extra: dict[str, float] = {}
            if first_calls:
                extra.update(await _first_reply(nc, pool, first_calls))
            if concurrent:
                extra.update(await _concurrent(pool, *concurrent))
            await pool.close()
            await nc.close()
        finally:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return {
        "messages": n,
        "size": size,
        "raw_msgs_per_s": raw_best,
        "natstream_msgs_per_s": ns_best,
        "ratio": ns_best / raw_best,
        "natstream_mb_per_s": ns_best * size / 1e6,
        **extra,
    }


def run(
    messages: int = 100_000,
    size: int = 128,
    rounds: int = _ROUNDS,
    first_calls: int = 0,
    concurrent: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Measure both streams ``rounds`` times (alternating) and return the best figures.

    ``first_calls`` > 0 adds time to first reply against nats-py ``request()`` over that
    many sequential calls; ``concurrent=(streams, replies)`` adds a concurrency round.
    """
    return asyncio.run(_run(messages, size, rounds, first_calls, concurrent))


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv[:2]]
    messages = sizes[0] if sizes else 100_000
    size = sizes[1] if len(sizes) > 1 else 128
    for key, value in run(messages, size, first_calls=1000, concurrent=(100, 1000)).items():
        print(f"{key:>22}: {value:,.3f}" if isinstance(value, float) else f"{key:>22}: {value:,}")
