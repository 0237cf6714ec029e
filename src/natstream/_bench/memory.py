"""``memory``: the requester's memory while a large stream meets a slow handler.

Run: ``natstream bench`` or ``python benchmarks/bench_memory.py [messages] [size]``.

The responder process (:mod:`natstream._bench.responder`) streams ``messages``
payloads of ``size`` bytes (1 GB by default: 10,000 x 100 KiB) as fast as it can. The
requester runs in a fresh process of its own (so that its peak RSS is this stream's
alone) and handles replies slowly: it sleeps ``pause`` seconds every ``every``
messages, without blocking the event loop (as an ``async for`` body that awaits
something would). Two requesters, one after the other:

* natstream: ``async with pool.stream(...)``; the credit window bounds what is in
  flight, so the requester holds at most about one window (default: 8 MiB);
* raw nats-py: an inbox subscription callback, no flow control. nats-py keeps reading
  while the callback sleeps and queues what it reads; its pending limits are raised
  to the stream's size so it drops nothing, and the whole backlog is held in memory.

RSS growth = peak RSS during the stream minus RSS just before it (``VmHWM`` after
resetting it through ``/proc/self/clear_refs``, and ``VmRSS`` sampled every 5 ms;
``ru_maxrss`` where ``/proc`` is missing). Target: natstream's growth under 100 MB.
A requester whose growth passes ``limit`` (default 4 GiB) aborts, so the machine never
swaps.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

from natstream.server import NatsServer

from ._proc import Responder, loop_name, run_loop

_SAMPLE_INTERVAL = 0.005  # seconds between RSS samples
_CHILD_TIMEOUT = 600.0  # seconds for one requester process


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in bytes, None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int:
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: best effort
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Sampler:
    """Peak RSS from a thread sampling every 5 ms; aborts the process past ``limit``."""

    def __init__(self, base: int, limit: int) -> None:
        self.base, self.limit, self.peak = base, limit, base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL):
            rss = _rss()
            self.peak = max(self.peak, rss)
            if rss - self.base > self.limit:
                print(json.dumps({"error": f"RSS grew past {self.limit} bytes"}), flush=True)
                os._exit(3)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _natstream(url: str, request: bytes, every: int, pause: float) -> int:
    from natstream import Config, Pool

    async with Pool(Config([url], idle_per_server=1)) as pool:
        async with pool.stream("bench.many", b"10 1024") as s:  # warm-up: allocate once
            async for _msg in s:
                pass
        count = await _measured(_natstream_stream(pool, request, every, pause))
    return count


async def _natstream_stream(pool: Any, request: bytes, every: int, pause: float) -> int:
    count = 0
    async with pool.stream("bench.many", request) as s:
        async for _msg in s:
            count += 1
            if count % every == 0:
                await asyncio.sleep(pause)
    return count


async def _raw(url: str, request: bytes, every: int, pause: float, limit: int) -> int:
    import nats
    from nats.aio.msg import Msg

    from natstream._transport import subscribe_live

    nc = await nats.connect(url)
    count = 0
    done = asyncio.Event()

    async def on(msg: Msg) -> None:
        nonlocal count
        if msg.data == b"__STREAM_END__":
            done.set()
            return
        count += 1
        if count % every == 0:
            await asyncio.sleep(pause)

    # Without flow control, what nats-py reads ahead of the callback waits in its
    # pending queue: raise its limits past the stream so that nothing is dropped.
    sub = await subscribe_live(
        nc, nc.new_inbox(), on, pending_msgs_limit=10**9, pending_bytes_limit=limit
    )

    async def stream() -> int:
        await nc.publish("bench.rawmany", request, reply=sub.subject)
        await done.wait()
        return count

    await nc.request("bench.req", b"", timeout=5)  # warm-up
    try:
        return await _measured(stream())
    finally:
        await sub.unsubscribe()
        await nc.close()


_result: dict[str, Any] = {}


async def _measured(coro: Any) -> int:
    """Run ``coro`` (the stream) and record RSS before and at peak in ``_result``."""
    gc.collect()
    before = _rss()
    hwm_reset = _reset_peak()
    with _Sampler(before, _result["limit"]) as sampler:
        start, cpu = time.perf_counter(), time.process_time()
        count: int = await coro
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = sampler.peak
    hwm = _status_bytes("VmHWM")
    if hwm_reset and hwm is not None:
        peak = max(peak, hwm)
    elif hwm is None:  # no /proc: the process's lifetime peak (it is a fresh process)
        peak = max(peak, _rss())
    _result.update(
        rss_before=before, rss_peak=peak, seconds=elapsed, cpu=cpu, peak_from_hwm=hwm_reset
    )
    return count


def child(argv: list[str]) -> None:
    """``python -m natstream._bench.memory KIND URL N SIZE EVERY PAUSE LIMIT [--uvloop]``."""
    uvloop = "--uvloop" in argv
    kind, url, n, size, every, pause, limit = [a for a in argv if a != "--uvloop"]
    _result["limit"] = int(limit)
    request = f"{n} {size}".encode()

    async def go() -> int:
        _result["loop"] = loop_name()
        if kind == "natstream":
            return await _natstream(url, request, int(every), float(pause))
        return await _raw(url, request, int(every), float(pause), int(limit))

    count = run_loop(go(), uvloop)
    _result["received"] = count
    del _result["limit"]
    print(json.dumps(_result), flush=True)


def _requester(
    kind: str, url: str, n: int, size: int, every: int, pause: float, limit: int, uvloop: bool
) -> dict[str, Any]:
    args = [kind, url, str(n), str(size), str(every), str(pause), str(limit)]
    proc = subprocess.run(
        [sys.executable, "-m", "natstream._bench.memory", *args, *(["--uvloop"] if uvloop else [])],
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "error" in result:
        raise RuntimeError(
            f"{kind} requester failed ({proc.returncode}): {result.get('error', '')}"
            f"{proc.stderr[-2000:]}"
        )
    return result


async def _run(
    n: int, size: int, every: int, pause: float, limit: int, uvloop: bool
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "messages": n,
        "size": size,
        "stream_mb": n * size / 1e6,
        "pause_s": pause,
        "pause_every": every,
    }
    with NatsServer() as srv:
        async with Responder(srv.url, 1, 1, uvloop=uvloop) as responder:
            for kind in ("natstream", "raw"):
                resp_cpu = await responder.cpu()
                r = await asyncio.to_thread(
                    _requester, kind, srv.url, n, size, every, pause, limit, uvloop
                )
                resp_cpu = await responder.cpu() - resp_cpu
                if r["received"] != n:
                    raise AssertionError(f"{kind}: received {r['received']} of {n}")
                figures[f"{kind}_rss_growth_mb"] = (r["rss_peak"] - r["rss_before"]) / 1e6
                figures[f"{kind}_rss_before_mb"] = r["rss_before"] / 1e6
                figures[f"{kind}_msgs_per_s"] = n / r["seconds"]
                figures[f"{kind}_mb_per_s"] = n * size / r["seconds"] / 1e6
                figures[f"{kind}_cpu_req_us"] = r["cpu"] / n * 1e6
                figures[f"{kind}_cpu_resp_us"] = resp_cpu / n * 1e6  # warm-up included
                figures[f"{kind}_peak_from_hwm"] = r["peak_from_hwm"]
                figures["requester_loop"] = r["loop"]
            figures["responder_loop"] = responder.loop
    return figures


def run(
    messages: int = 10_000,
    size: int = 100 * 1024,
    *,
    every: int = 50,
    pause: float = 0.05,
    limit: int = 4 << 30,
    uvloop: bool = False,
) -> dict[str, Any]:
    """Stream ``messages`` x ``size`` bytes to a slow handler, natstream then raw nats-py
    (each requester in a fresh process), and return both RSS growths."""
    return run_loop(_run(messages, size, every, pause, limit, uvloop), uvloop)


def main(argv: list[str]) -> None:
    args = [int(a) for a in argv[:2]]
    for key, value in run(*args).items():
        print(f"{key:>24}: {value:,.3f}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    child(sys.argv[1:])
