"""One stream, responder and requester in separate processes: natstream against raw nats-py.

Run: ``python benchmarks/bench_stream.py [messages] [size]``.

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
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await sub.close()
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""

_ROUNDS = 3


async def _raw_round(nc: nats.NATS, n: int) -> float:
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


async def _run(n: int, size: int, rounds: int) -> dict[str, Any]:
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
    }


def run(messages: int = 100_000, size: int = 128, rounds: int = _ROUNDS) -> dict[str, Any]:
    """Measure both streams ``rounds`` times (alternating) and return the best figures."""
    return asyncio.run(_run(messages, size, rounds))


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    for key, value in run(*args).items():
        print(f"{key:>22}: {value:,.3f}" if isinstance(value, float) else f"{key:>22}: {value:,}")
