"""``packed``: items of a batch handler, packed into few NATS messages, against
raw nats-py sending one message per item.

Run: ``natstream bench --case packed`` or
``python benchmarks/bench_packed.py [items] [size] [per]``.

The responder process serves ``bench.pack`` with a batch handler returning ``per``
items a call; this process receives them with ``Pool.stream_request`` and a sync
handler that counts (one call per item, as for unpacked replies). The baseline is the
``stream_128`` raw round (nats-py, one message per item, subscription callback that
counts) on the same server, in alternating rounds; the best rate of each is kept.
"""

from __future__ import annotations

import time
from typing import Any

from nats.aio.msg import Msg

from natstream import Pool

from ._proc import run_loop
from .stream import against_raw

__all__ = ["run"]

_PER = 1_000  # items a batch handler call returns


async def _packed_round(pool: Pool, count: int, size: int, per: int) -> float:
    got = 0

    def on(msg: Msg) -> bool:
        nonlocal got
        got += 1
        return True

    start = time.perf_counter()
    # Returns normally only at the end marker: got counts the items and that marker.
    await pool.stream_request("bench.pack", f"{count} {size} {per}".encode(), on)
    elapsed = time.perf_counter() - start
    if got != count + 1:
        raise AssertionError(f"packed stream: {got - 1} items of {count}")
    return elapsed


async def _packed(
    count: int, size: int, per: int, raw_messages: int, rounds: int, uvloop: bool
) -> dict[str, Any]:
    raw_best, ns_best, figures = await against_raw(
        raw_messages,
        size,
        rounds,
        uvloop,
        lambda pool: _packed_round(pool, count, size, per),
        count,
    )
    raw_rate, items_rate = raw_messages / raw_best, count / ns_best
    return {
        "items": count,
        "size": size,
        "per_batch": per,
        "raw_messages": raw_messages,
        "items_per_s": items_rate,
        "raw_msgs_per_s": raw_rate,
        "ratio_to_raw": items_rate / raw_rate,
        "natstream_mb_per_s": items_rate * size / 1e6,
        "raw_mb_per_s": raw_rate * size / 1e6,
        **figures,
    }


def run(
    items: int = 1_000_000,
    size: int = 128,
    per: int = _PER,
    *,
    raw_messages: int = 100_000,
    rounds: int = 3,
    uvloop: bool = False,
) -> dict[str, Any]:
    """``items`` of ``size`` bytes, ``per`` a batch, against ``raw_messages`` sent one
    a message by nats-py; ``rounds`` alternating, best rates."""
    return run_loop(_packed(items, size, per, raw_messages, rounds, uvloop), uvloop)


def main(argv: list[str]) -> None:
    from .stream import _show

    args = [int(a) for a in argv[:3]]
    defaults = [1_000_000, 128, _PER]
    _show(run(*(args + defaults[len(args) :])))
