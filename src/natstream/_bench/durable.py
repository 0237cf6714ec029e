"""Messages/s recorded from JetStream durably, against a raw nats-py pull consumer that
only acknowledges, and against the core recorder.

Run: ``natstream bench --case durable`` or ``python benchmarks/bench_durable.py
[messages] [size] [rounds]``. A stream is filled with ``messages`` payloads of ``size``
bytes first (each publish acknowledged by JetStream); then each round every receiver
drains it through a durable consumer of its own (all of the stream, explicit acks):

* ``raw``: nats-py's ``pull_subscribe`` and ``fetch(RAW_BATCH)``, each message
  acknowledged with ``msg.ack()``: the baseline;
* ``durable``: ``Subscriber.record_durable`` into an ``HourlyFileWriter`` with a
  checkpoint and :func:`default_formatter`: pulled, judged, written into the hour it was
  stored, committed (flushed and checkpointed), acknowledged; its time ends when
  ``stop()`` returns (the last acknowledgement confirmed);
* ``core``: ``stream_subscribe_with_writer`` (the core recorder, as the ``record`` case
  measures it: a subject outside the stream, published while the loop is held).

Rounds alternate and the best of each is kept. ``ratio`` is durable / raw messages/s
(target: at least 0.8); ``ratio_to_core`` is durable / core.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from natstream import HourlyFileWriter, Subscriber
from natstream._recording import default_formatter
from natstream.server import NatsServer

from ._proc import run_loop
from .record import _SERVER_CONFIG, _recorder

RAW_BATCH = 1000  # messages per fetch of the raw pull consumer
MAX_ACK_PENDING = 1000  # both consumers'; the durable recording pulls up to this many at once
_STREAM = "BENCH"
_SUBJECT = "bench.durable"
_ROUNDS = 3
_FETCH_TIMEOUT = 5.0  # seconds one raw fetch may wait


async def _fill(url: str, n: int, size: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=_STREAM, subjects=[_SUBJECT], storage=StorageType.FILE)
        payload = b"x" * size
        for start in range(0, n, 1000):
            acks = [await js.publish_async(_SUBJECT, payload) for _ in range(min(1000, n - start))]
            await asyncio.gather(*acks)
    finally:
        await nc.close()


async def _raw(url: str, name: str, n: int) -> tuple[float, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=MAX_ACK_PENDING)
        psub = await js.pull_subscribe(_SUBJECT, durable=name, stream=_STREAM, config=config)
        start, cpu = time.perf_counter(), time.process_time()
        count = 0
        while count < n:
            for msg in await psub.fetch(RAW_BATCH, timeout=_FETCH_TIMEOUT):
                await msg.ack()
                count += 1
        await nc.flush()  # the acknowledgements reached the server
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        await nc.close()


async def _durable(url: str, name: str, n: int) -> tuple[float, float]:
    directory = tempfile.mkdtemp(prefix="natstream-bench-")
    writer = HourlyFileWriter(directory, "bench", checkpoint=".bench.checkpoint")
    try:
        async with Subscriber([url]) as sub:
            start, cpu = time.perf_counter(), time.process_time()
            recording = await sub.record_durable(
                _SUBJECT,
                writer,
                default_formatter,
                durable=name,
                stream=_STREAM,
                max_ack_pending=MAX_ACK_PENDING,
            )
            await recording.wait_recorded(n)  # the stream holds sequences 1..n
            await recording.stop()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        written = recording.stats().messages
        if written != n:
            raise AssertionError(f"durable wrote {written} messages, expected {n}")
        return elapsed, cpu
    finally:
        writer.close()
        shutil.rmtree(directory)


async def _run(n: int, size: int, rounds: int) -> dict[str, Any]:
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="natstream-bench-js-") as store,
        NatsServer(config=_SERVER_CONFIG, jetstream=True, store_dir=store) as srv,
    ):
        await _fill(srv.url, n, size)
        for round_ in range(rounds):
            cases: list[tuple[str, Callable[[], Awaitable[tuple[float, float]]]]] = [
                ("raw", partial(_raw, srv.url, f"raw{round_}", n)),
                ("durable", partial(_durable, srv.url, f"durable{round_}", n)),
                ("core", partial(_core, srv.url, f"bench.core.{round_}", n, size)),
            ]
            for name, case in cases if round_ % 2 == 0 else cases[::-1]:
                elapsed, cpu = await case()
                best[name] = min(best.get(name, float("inf")), elapsed)
                best_cpu[name] = min(best_cpu.get(name, float("inf")), cpu)
    raw, durable, core = (n / best[k] for k in ("raw", "durable", "core"))
    return {
        "messages": n,
        "size": size,
        "rounds": rounds,
        "raw_batch": RAW_BATCH,
        "max_ack_pending": MAX_ACK_PENDING,
        "raw_msgs_per_s": raw,
        "durable_msgs_per_s": durable,
        "core_recorder_msgs_per_s": core,
        "ratio": durable / raw,
        "ratio_to_core": durable / core,
        "raw_cpu_us_per_msg": best_cpu["raw"] / n * 1e6,
        "durable_cpu_us_per_msg": best_cpu["durable"] / n * 1e6,
        "core_cpu_us_per_msg": best_cpu["core"] / n * 1e6,
    }


async def _core(url: str, subject: str, n: int, size: int) -> tuple[float, float]:
    elapsed, cpu, count = await _recorder(url, subject, n, size, default_formatter)
    if count != n:
        raise AssertionError(f"the core recorder wrote {count} messages, expected {n}")
    return elapsed, cpu


def run(messages: int = 100_000, size: int = 128, rounds: int = _ROUNDS) -> dict[str, Any]:
    """Fill a stream, drain it with each receiver ``rounds`` times (alternating), and
    return the best figures."""
    return run_loop(_run(messages, size, rounds))


def main(argv: list[str]) -> None:
    args = [int(a) for a in argv[:3]]
    for key, value in run(*args).items():
        print(f"{key:>26}: {value:,.3f}" if isinstance(value, float) else f"{key:>26}: {value:,}")
