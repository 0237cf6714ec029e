"""Streams with responder and requester in separate processes: natstream against raw nats-py.

Run: ``natstream bench`` or ``python benchmarks/bench_stream.py [messages] [size]``.

The responder process (:mod:`natstream._bench.responder`) serves each natstream subject
next to a hand-written nats-py baseline on one embedded nats-server. This process is
the requester. Four cases:

* :func:`run` (``stream_128`` / ``stream_1k``): one stream of ``messages``
  payloads; raw through an inbox subscription callback that counts, natstream through
  ``Pool.stream_request`` with a sync handler that counts. Rounds alternate; the best
  rate of each is kept. ``ratio`` = natstream / raw messages/s.
* :func:`run_responder` (``responder``): a natstream responder and a nats-py publisher
  loop feeding the same plain requester (an inbox subscription callback that counts),
  alternating; ``ratio`` = delivered rates, ``responder_cpu_ratio`` = the responders'
  CPU per message, raw over natstream.
* :func:`run_first_reply` (``first_reply``): time to first reply of ``pool.stream()`` against
  nats-py ``request()``, alternating, over ``calls`` sequential calls.
* :func:`run_concurrent` (``concurrent``): ``streams`` concurrent streams of ``replies`` each
  through one pool (default configuration), in rounds like ``stream_128`` (the fastest
  round's rate is kept); every stream of every round must complete; fairness is
  p99/p50 of the streams' times to first reply, the worst round's.

Every case also reports CPU microseconds per message (or per call) in this process
(``req``) and in the responder process (``resp``), from ``time.process_time``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from natstream import Config, Pool
from natstream._transport import subscribe_live
from natstream.server import NatsServer, free_port

from ._proc import CpuMeter, Responder, loop_name, percentile, run_loop

_ROUNDS = 3
_CONCURRENT_TIMEOUT = 600.0  # seconds; a case that hangs is reported, not waited for
_PROBE_INTERVAL = 0.5  # seconds between two looks at the server's pending bytes


async def _raw_round(nc: Client, n: int, subject: str = "bench.raw") -> float:
    """A plain requester (nats-py inbox subscription, a callback that counts) receiving
    the stream of ``subject``: a nats-py publisher loop (``bench.raw``), or a natstream
    responder serving a request without natstream headers (``bench.ns``)."""
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
    await nc.publish(subject, b"", reply=inbox)
    await done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    assert count == n, f"{subject} to a plain requester lost messages: {count} of {n}"
    return elapsed


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
    return elapsed


def _cpu_figures(prefix: str, cpu: list[tuple[float, float]]) -> dict[str, float]:
    """The least CPU per message over rounds (the least disturbed), both processes."""
    return {
        f"{prefix}_cpu_req_us": min(c[0] for c in cpu),
        f"{prefix}_cpu_resp_us": min(c[1] for c in cpu),
    }


async def alternate_rounds(
    meter: CpuMeter,
    rounds: int,
    raw: Callable[[], Awaitable[float]],
    raw_messages: int,
    ours: Callable[[], Awaitable[float]],
    our_messages: int,
) -> tuple[float, float, dict[str, float]]:
    """Run the baseline and natstream rounds alternately; return the least elapsed
    seconds of each (raw, ours) and their CPU figures (``_cpu_figures``)."""
    raw_best = ns_best = float("inf")
    raw_cpu: list[tuple[float, float]] = []
    ns_cpu: list[tuple[float, float]] = []
    for _ in range(rounds):
        await meter.start()
        raw_best = min(raw_best, await raw())
        await meter.stop()
        raw_cpu.append(meter.per_message_us(raw_messages))
        await meter.start()
        ns_best = min(ns_best, await ours())
        await meter.stop()
        ns_cpu.append(meter.per_message_us(our_messages))
    return raw_best, ns_best, {**_cpu_figures("raw", raw_cpu), **_cpu_figures("natstream", ns_cpu)}


async def against_raw(
    raw_messages: int,
    size: int,
    rounds: int,
    uvloop: bool,
    ours: Callable[[Pool], Awaitable[float]],
    our_messages: int,
) -> tuple[float, float, dict[str, Any]]:
    """On a fresh server and responder process: the raw stream of ``raw_messages`` of
    ``size`` bytes against ``ours(pool)`` (a one-connection pool), alternately
    (:func:`alternate_rounds`); returns the best elapsed seconds of each and the CPU
    and event-loop figures."""
    with NatsServer() as srv:
        async with Responder(srv.url, raw_messages, size, uvloop=uvloop) as responder:
            nc = await nats.connect(srv.url)
            pool = await Pool.connect(Config([srv.url], idle_per_server=1))
            raw_best, ns_best, cpu = await alternate_rounds(
                CpuMeter(responder),
                rounds,
                lambda: _raw_round(nc, raw_messages),
                raw_messages,
                lambda: ours(pool),
                our_messages,
            )
            await pool.close()
            await nc.close()
            loops = {"requester_loop": loop_name(), "responder_loop": responder.loop}
    return raw_best, ns_best, {**cpu, **loops}


def _rates(n: int, size: int, raw_best: float, ns_best: float) -> dict[str, Any]:
    """The figures of ``n`` messages of ``size`` bytes in the best round's seconds."""
    raw_rate, ns_rate = n / raw_best, n / ns_best
    return {
        "messages": n,
        "size": size,
        "raw_msgs_per_s": raw_rate,
        "natstream_msgs_per_s": ns_rate,
        "ratio": ns_rate / raw_rate,
        "raw_mb_per_s": raw_rate * size / 1e6,
        "natstream_mb_per_s": ns_rate * size / 1e6,
    }


async def _stream(n: int, size: int, rounds: int, uvloop: bool) -> dict[str, Any]:
    raw_best, ns_best, figures = await against_raw(
        n, size, rounds, uvloop, lambda pool: _ns_round(pool, n), n
    )
    return {
        **_rates(n, size, raw_best, ns_best),
        **figures,
    }


async def _responder_side(n: int, size: int, rounds: int, uvloop: bool) -> dict[str, Any]:
    """A natstream responder (``bench.ns``) and a nats-py publisher loop (``bench.raw``)
    feeding the same plain requester, alternately: delivered rates, and the responder
    process's CPU per message (what it could send with a core to itself)."""
    with NatsServer() as srv:
        async with Responder(srv.url, n, size, uvloop=uvloop) as responder:
            nc = await nats.connect(srv.url)
            raw_best, ns_best, cpu = await alternate_rounds(
                CpuMeter(responder),
                rounds,
                lambda: _raw_round(nc, n),
                n,
                lambda: _raw_round(nc, n, "bench.ns"),
                n,
            )
            await nc.close()
            loops = {"requester_loop": loop_name(), "responder_loop": responder.loop}
    return {
        **_rates(n, size, raw_best, ns_best),
        **cpu,
        "responder_cpu_ratio": cpu["raw_cpu_resp_us"] / cpu["natstream_cpu_resp_us"],
        **loops,
    }


async def _first_reply(calls: int, uvloop: bool) -> dict[str, Any]:
    """p50/p99 of nats-py request() round trips and of natstream's time to first reply."""
    with NatsServer() as srv:
        async with Responder(srv.url, 1, 1, uvloop=uvloop) as responder:
            nc = await nats.connect(srv.url)
            pool = await Pool.connect(Config([srv.url], idle_per_server=1))
            raw: list[float] = []
            ours: list[float] = []
            raw_cpu = ns_cpu = 0.0
            resp_raw = resp_ns = 0.0
            for block in range(0, calls, 500):  # CPU read per block: few extra round trips
                count = min(500, calls - block)
                r0, c0 = await responder.cpu(), time.process_time()
                for _ in range(count):
                    start = time.perf_counter()
                    await nc.request("bench.req", b"", timeout=5)
                    raw.append(time.perf_counter() - start)
                r1, c1 = await responder.cpu(), time.process_time()
                for _ in range(count):
                    start = time.perf_counter()
                    async with pool.stream("bench.first") as s:
                        async for _msg in s:
                            ours.append(time.perf_counter() - start)
                r2, c2 = await responder.cpu(), time.process_time()
                raw_cpu += c1 - c0
                ns_cpu += c2 - c1
                resp_raw += r1 - r0
                resp_ns += r2 - r1
            await pool.close()
            await nc.close()
            loops = {"requester_loop": loop_name(), "responder_loop": responder.loop}
    if len(ours) != calls:
        raise AssertionError(f"first_reply: {len(ours)} first replies for {calls} calls")
    return {
        "calls": calls,
        "raw_first_p50_us": percentile(raw, 0.5) * 1e6,
        "raw_first_p99_us": percentile(raw, 0.99) * 1e6,
        "natstream_first_p50_us": percentile(ours, 0.5) * 1e6,
        "natstream_first_p99_us": percentile(ours, 0.99) * 1e6,
        "first_reply_ratio": percentile(ours, 0.5) / percentile(raw, 0.5),
        "raw_cpu_req_us": raw_cpu / calls * 1e6,
        "raw_cpu_resp_us": resp_raw / calls * 1e6,
        "natstream_cpu_req_us": ns_cpu / calls * 1e6,
        "natstream_cpu_resp_us": resp_ns / calls * 1e6,
        **loops,
    }


class _PendingProbe:
    """Polls the server's ``/connz`` every half second, from a thread, for the bytes it
    holds for its clients (written to no socket yet): what per-stream flow control
    lets pile up in front of the requester, ahead of its PONGs and heartbeats."""

    def __init__(self, http_port: int) -> None:
        self.url = f"http://127.0.0.1:{http_port}/connz?subs=0"
        self.max_one = self.max_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="connz-probe")

    def _run(self) -> None:
        while not self._stop.wait(_PROBE_INTERVAL):
            try:
                with urllib.request.urlopen(self.url, timeout=_PROBE_INTERVAL) as r:
                    conns = json.load(r).get("connections") or []
            except (OSError, ValueError):
                continue
            pending = [c.get("pending_bytes", 0) for c in conns]
            self.max_one = max(self.max_one, *pending, 0)
            self.max_total = max(self.max_total, sum(pending))

    def __enter__(self) -> _PendingProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _error_kinds(errors: list[BaseException | str]) -> tuple[dict[str, int], dict[str, str]]:
    """Counts by exception type, and one message of each type."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for err in errors:
        kind = err if isinstance(err, str) else type(err).__name__
        counts[kind] += 1
        examples.setdefault(kind, str(err)[:200])
    return dict(counts.most_common()), examples


async def _concurrent_round(
    pool: Pool, responder: Responder, streams: int, replies: int, size: int, iterate: bool
) -> dict[str, Any]:
    """One round of ``concurrent`` on ``pool`` (fresh, default): ``streams`` concurrent streams
    of ``replies`` each, received by ``stream_request`` with a sync handler that counts
    (as in ``stream_128``), or with ``iterate`` by ``async for`` over ``pool.stream()``."""
    firsts: list[float] = []
    received = 0
    request = f"{replies} {size}".encode()

    async def one() -> int:
        nonlocal received
        t0 = time.perf_counter()
        got = 0
        if iterate:
            async with pool.stream("bench.many", request) as s:
                async for _msg in s:
                    if got == 0:
                        firsts.append(time.perf_counter() - t0)
                    got += 1
                    received += 1
            return got

        def on(msg: Msg) -> bool:  # as stream_128's handler, plus the first reply's time
            nonlocal got, received
            if got == 0:
                firsts.append(time.perf_counter() - t0)
            got += 1
            received += 1
            return True

        await pool.stream_request("bench.many", request, on)
        received -= 1  # the end marker
        return got - 1

    meter = CpuMeter(responder)
    await meter.start()
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(streams)]
    _, pending = await asyncio.wait(tasks, timeout=_CONCURRENT_TIMEOUT)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    await meter.stop()
    failures: list[BaseException | str] = []
    for task in tasks:
        if task in pending:
            failures.append("timed out")
        elif task.exception() is not None:
            failures.append(task.exception() or "")
        elif task.result() != replies:
            failures.append("short stream")
    pool_stats = pool.stats()
    req_us, resp_us = meter.per_message_us(max(received, 1))
    p50 = percentile(firsts, 0.5) if firsts else float("nan")
    p99 = percentile(firsts, 0.99) if firsts else float("nan")
    figures: dict[str, Any] = {
        "complete": streams - len(failures),
        "connections": pool_stats.slots,
        "connections_lost": pool_stats.connections_lost,
        "health_checks_failed": pool_stats.health_checks_failed,
        "natstream_msgs_per_s": received / elapsed,
        "natstream_mb_per_s": received * size / elapsed / 1e6,
        "natstream_first_p50_us": p50 * 1e6,
        "natstream_first_p99_us": p99 * 1e6,
        "fairness_p99_over_p50": p99 / p50,
        "natstream_cpu_req_us": req_us,
        "natstream_cpu_resp_us": resp_us,
    }
    if failures:
        figures["errors"], figures["error_examples"] = _error_kinds(failures)
        figures["responder_log_tail"] = responder.log_tail()
    return figures


async def _concurrent(
    streams: int, replies: int, size: int, rounds: int, single: int, iterate: bool, uvloop: bool
) -> dict[str, Any]:
    """``rounds`` rounds of :func:`_concurrent_round` on one server and responder. The
    figures are the fastest round's (as ``stream_128`` keeps its best round: rate, first-reply
    times, CPU), except that completion, lost connections, failed health checks and
    fairness are the worst over all rounds, and ``errors`` are the first failing
    round's.

    With ``single``, each round starts with ``stream_128``'s natstream round (one stream of
    ``single`` replies, one-connection pool): ``ratio_to_alternating_stream`` compares
    the two fastest rounds measured in turn, the machine's speed being the same for
    both (it drifts by tens of percent over a run here).
    """
    results: list[dict[str, Any]] = []
    single_best = float("inf")
    with NatsServer(http_port=free_port()) as srv, _PendingProbe(srv.http_port or 0) as probe:
        async with Responder(srv.url, max(single, 1), size, uvloop=uvloop) as responder:
            async with Pool(Config([srv.url], idle_per_server=1)) as one:
                for _ in range(rounds):
                    if single:
                        single_best = min(single_best, await _ns_round(one, single))
                    async with Pool(Config([srv.url])) as pool:
                        results.append(
                            await _concurrent_round(
                                pool, responder, streams, replies, size, iterate
                            )
                        )
            loops = {"requester_loop": loop_name(), "responder_loop": responder.loop}
    best = max(results, key=lambda r: float(r["natstream_msgs_per_s"]))
    complete = min(r["complete"] for r in results)
    figures: dict[str, Any] = {
        "streams": streams,
        "replies": replies,
        "size": size,
        "rounds": rounds,
        "consumer": "async for" if iterate else "stream_request",
        **best,
        "complete": complete,
        "all_complete": complete == streams,
        "connections_lost": max(r["connections_lost"] for r in results),
        "health_checks_failed": max(r["health_checks_failed"] for r in results),
        "fairness_p99_over_p50": max(r["fairness_p99_over_p50"] for r in results),
        "server_pending_max_mb": probe.max_one / 1e6,
        "server_pending_total_max_mb": probe.max_total / 1e6,
        **loops,
    }
    if single:
        figures["alternating_stream_msgs_per_s"] = single / single_best
        figures["ratio_to_alternating_stream"] = best["natstream_msgs_per_s"] * single_best / single
    for r in results:
        if "errors" in r:
            for key in ("errors", "error_examples", "responder_log_tail"):
                figures[key] = r[key]
            break
    return figures


def run(
    messages: int = 100_000, size: int = 128, rounds: int = _ROUNDS, *, uvloop: bool = False
) -> dict[str, Any]:
    """``stream_128``, ``stream_1k``: one stream, raw and natstream, ``rounds`` times
    alternating; best rates."""
    return run_loop(_stream(messages, size, rounds, uvloop), uvloop)


def run_responder(
    messages: int = 100_000, size: int = 128, rounds: int = _ROUNDS, *, uvloop: bool = False
) -> dict[str, Any]:
    """``responder``: natstream's responder against a nats-py publisher loop, both
    feeding a plain nats-py requester that counts (:func:`_responder_side`)."""
    return run_loop(_responder_side(messages, size, rounds, uvloop), uvloop)


def run_first_reply(calls: int = 5_000, *, uvloop: bool = False) -> dict[str, Any]:
    """``first_reply``: time to first reply against nats-py ``request()``, ``calls`` of each."""
    return run_loop(_first_reply(calls, uvloop), uvloop)


def run_concurrent(
    streams: int = 1_000,
    replies: int = 1_000,
    size: int = 128,
    rounds: int = _ROUNDS,
    single: int = 100_000,
    *,
    iterate: bool = False,
    uvloop: bool = False,
) -> dict[str, Any]:
    """``concurrent``: ``streams`` concurrent streams of ``replies`` through one pool, ``rounds``
    times, each after a single stream of ``single`` replies (:func:`_concurrent`)."""
    return run_loop(_concurrent(streams, replies, size, rounds, single, iterate, uvloop), uvloop)


def _show(figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"{key:>26}: {value:,.3f}")
        elif isinstance(value, int) and not isinstance(value, bool):
            print(f"{key:>26}: {value:,}")
        else:
            print(f"{key:>26}: {value}")


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv[:2]]
    messages = sizes[0] if sizes else 100_000
    size = sizes[1] if len(sizes) > 1 else 128
    _show(run(messages, size))
    _show(run_first_reply(1_000))
    _show(run_concurrent(100, 1_000, size, 1, messages))
