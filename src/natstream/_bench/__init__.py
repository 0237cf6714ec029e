"""``natstream bench``: natstream against raw nats-py (and plain file appends), same run.

Each case measures natstream and its baseline in the same run and reports the ratio,
because this kind of machine is shared and noisy: absolute figures move, ratios less.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

__all__ = ["run_all"]

# (case name, target, key of the figure compared with the target, higher is better)
TARGETS = {
    "stream_128": ("ratio", 0.9, True),
    "stream_1k": ("ratio", 0.9, True),
    "first_reply": ("first_reply_ratio", 1.2, False),
    "concurrent": ("concurrent_fairness_p99_over_p50", 10.0, False),
    "writer": ("ratio", 0.9, True),
    "record": ("ratio", 0.8, True),
}


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "nats_py": version("nats-py"),
        "natstream": version("natstream"),
        "platform": platform.platform(),
    }


_STREAM_KEYS = ("messages", "size", "raw_msgs_per_s", "natstream_msgs_per_s", "ratio")


def _without_stream(figures: dict[str, Any]) -> dict[str, Any]:
    """Drop the throughput round's figures from a latency or concurrency case."""
    return {k: v for k, v in figures.items() if k not in _STREAM_KEYS and k != "natstream_mb_per_s"}


def run_all(*, quick: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Run every case (small counts with ``quick``) and return figures per case."""
    from . import record, stream, writer

    n = 5_000 if quick else 100_000
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    cases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("stream_128", lambda: stream.run(n, 128, rounds=1 if quick else 3)),
        ("stream_1k", lambda: stream.run(n, 1024, rounds=1 if quick else 3)),
        (
            "first_reply",
            lambda: _without_stream(
                stream.run(1, 128, rounds=1, first_calls=200 if quick else 5_000)
            ),
        ),
        (
            "concurrent",
            lambda: _without_stream(
                stream.run(1, 128, rounds=1, concurrent=(50, 100) if quick else (1_000, 1_000))
            ),
        ),
        ("writer", lambda: writer.run(50_000 if quick else 1_000_000, 100)),
        ("record", lambda: record.run(n, 128)),
    ]
    for name, case in cases:
        echo(f"running {name} ...")
        figures = case()
        key, target, higher = TARGETS[name]
        value = figures[key]
        figures["target"] = f"{key} {'>=' if higher else '<='} {target}"
        figures["met"] = value >= target if higher else value <= target
        results[name] = figures
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "machine: "
        + ", ".join(f"{k}={v}" for k, v in results["machine"].items() if k != "platform"),
        f"{'case':<12} {'figure':<34} {'value':>14}   target",
    ]
    for name in TARGETS:
        figures = results.get(name)
        if figures is None:
            continue
        key = TARGETS[name][0]
        for fkey, fval in figures.items():
            if fkey in ("target", "met") or not isinstance(fval, (int, float)):
                continue
            mark = ""
            if fkey == key:
                mark = f"   {figures['target']} ({'met' if figures['met'] else 'NOT met'})"
            lines.append(f"{name:<12} {fkey:<34} {fval:>14,.2f}{mark}")
    return "\n".join(lines)


def main(quick: bool, json_path: str | None, echo: Callable[[str], None]) -> None:
    results = run_all(quick=quick, echo=echo)
    echo(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2, default=str)
    sys.stdout.flush()
