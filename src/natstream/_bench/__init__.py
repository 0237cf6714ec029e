"""``natstream bench``: natstream against raw nats-py (and plain file appends), same run.

Each case measures natstream and its baseline in the same run and reports the ratio,
because this kind of machine is shared and noisy: absolute figures move, ratios less.
Cases: ``stream_128`` and ``stream_1k`` (one long stream), ``packed`` (many small
items, packed), ``first_reply`` (latency), ``responder`` (natstream's responder
feeding a plain nats-py requester), ``concurrent`` (1,000 streams at once),
``memory`` (a slow consumer), ``writer`` (the hour files), ``record`` (the recorder),
``request_cli`` (``natstream request`` against the library), ``serve_memory``
(``natstream serve`` streaming to a slow requester) and ``durable`` (the durable
recorder, from JetStream).
With ``uvloop`` every event loop of the run is uvloop's: this process's and the
responder's and requesters' processes (the record case's publisher process excepted).

Ctrl-C stops the run: the case it interrupted is reported as such, the cases before
it keep their figures (printed, and written to the JSON file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .._ext import STREAM_IMPL
from ._interrupt import interrupted, interrupts_end_the_run

__all__ = ["CASES", "TARGETS", "failed", "main", "run_all"]

# Per case: the figures compared with a target, as (key, operator, target).
TARGETS: dict[str, list[tuple[str, str, float | bool]]] = {
    "stream_128": [("ratio", ">=", 2.0)],
    "stream_1k": [("ratio", ">=", 2.0)],
    "packed": [("items_per_s", ">=", 2_500_000), ("ratio_to_raw", ">=", 5.0)],
    "first_reply": [("first_reply_ratio", "<=", 1.0)],
    "responder": [("ratio", ">=", 1.5), ("responder_cpu_ratio", ">=", 1.5)],
    "concurrent": [
        ("all_complete", "==", True),
        ("ratio_to_stream_128", ">=", 0.8),
        ("fairness_p99_over_p50", "<=", 10.0),
    ],
    "memory": [("natstream_rss_growth_mb", "<", 100.0)],
    "writer": [("ratio", ">=", 0.9)],
    "record": [("ratio", ">=", 0.8)],
    "request_cli": [("ratio", ">=", 0.8)],
    "serve_memory": [("serve_rss_growth_mb", "<", 100.0)],
    "durable": [("ratio", ">=", 0.8)],
}
CASES = tuple(TARGETS)

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}

# Table columns: figure keys of the natstream row ("natstream_...") and the baseline
# row ("raw_..."); the writer and record cases name theirs differently.
_ALIASES = {
    "writer": {
        "natstream_msgs_per_s": "writer_lines_per_s",
        "natstream_mb_per_s": "mb_per_s",
        "raw_msgs_per_s": "plain_lines_per_s",
    },
    "packed": {"natstream_msgs_per_s": "items_per_s"},
    "record": {
        "natstream_msgs_per_s": "recorder_msgs_per_s",
        "natstream_cpu_req_us": "recorder_cpu_us_per_msg",
        "raw_cpu_req_us": "raw_cpu_us_per_msg",
    },
    "request_cli": {
        "natstream_msgs_per_s": "cli_msgs_per_s",
        "natstream_mb_per_s": "cli_mb_per_s",
        "raw_msgs_per_s": "library_msgs_per_s",
        "raw_mb_per_s": "library_mb_per_s",
    },
    "durable": {
        "natstream_msgs_per_s": "durable_msgs_per_s",
        "natstream_cpu_req_us": "durable_cpu_us_per_msg",
        "raw_cpu_req_us": "raw_cpu_us_per_msg",
    },
}
_BASELINE = {
    "writer": "plain file",
    "record": "nats-py",
    "memory": "nats-py, no fc",
    "request_cli": "stream_request",
    "durable": "nats-py fetch",
}
_LABEL = {
    "packed": "natstream items",
    "responder": "natstream resp",
    "request_cli": "request --raw",
}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine(uvloop: bool = False) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "nats_py": _version("nats-py"),
        "natstream": _version("natstream"),
        "event_loop": f"uvloop {_version('uvloop')}" if uvloop else "asyncio",
        "stream_impl": STREAM_IMPL,  # "c": natstream._cstream in use; "python": not
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def _loop_policy(uvloop: bool) -> Iterator[None]:
    """uvloop's policy for cases that call ``asyncio.run`` themselves (record)."""
    if not uvloop:
        yield
        return
    import uvloop as uv

    with warnings.catch_warnings():  # the policy API is deprecated from Python 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(uv.EventLoopPolicy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


def _cases(quick: bool, uvloop: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    from . import cli, durable, memory, packed, record, stream, writer

    n = 5_000 if quick else 100_000
    rounds = 1 if quick else 3
    return {
        "stream_128": lambda: stream.run(n, 128, rounds, uvloop=uvloop),
        "stream_1k": lambda: stream.run(n, 1024, rounds, uvloop=uvloop),
        # 1,000,000 x 128 B items, 1,000 a batch; baseline: stream_128's raw round
        "packed": lambda: packed.run(
            20_000 if quick else 1_000_000, 128, raw_messages=n, rounds=rounds, uvloop=uvloop
        ),
        "first_reply": lambda: stream.run_first_reply(200 if quick else 5_000, uvloop=uvloop),
        # natstream responder vs a nats-py publisher loop, to a plain requester that counts
        "responder": lambda: stream.run_responder(n, 128, rounds, uvloop=uvloop),
        "concurrent": lambda: stream.run_concurrent(
            *((50, 100) if quick else (1_000, 1_000)), 128, rounds, n, uvloop=uvloop
        ),
        # 1 GB (10,000 x 100 KiB) to a handler that sleeps 0.05 s every 50 messages; quick: 20 MB
        "memory": lambda: memory.run(200 if quick else 10_000, 100 * 1024, uvloop=uvloop),
        "writer": lambda: writer.run(50_000 if quick else 1_000_000, 100),
        "record": lambda: record.run(n, 128),
        "request_cli": lambda: cli.run_request(n, 128, 1 if quick else 5, uvloop=uvloop),
        # 1 GB (10,000 x 100 KiB) from serve to a requester that sleeps 0.05 s every 50
        "serve_memory": lambda: cli.run_serve_memory(
            (200 if quick else 10_000) * 100 * 1024, uvloop=uvloop
        ),
        # 100,000 x 128 B stored in a stream, drained by each receiver; 3 rounds
        "durable": lambda: durable.run(n, 128, rounds),
    }


def _check(name: str, figures: dict[str, Any]) -> None:
    """Add ``targets`` (one line per criterion) and ``met`` (all of them) to ``figures``."""
    lines, met = [], True
    for key, op, target in TARGETS[name]:
        value = figures.get(key)
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        ok = ok and _OPS[op](value, target)
        met = met and ok
        lines.append(f"{key} {op} {target}: {_fmt(value)} ({'met' if ok else 'NOT met'})")
    figures["targets"] = lines
    figures["met"] = met


def run_all(
    *,
    quick: bool,
    echo: Callable[[str], None],
    uvloop: bool = False,
    cases: tuple[str, ...] | list[str] = CASES,
) -> dict[str, Any]:
    """Run the ``cases`` (all by default; small counts with ``quick``) and return their
    figures, by case name, with ``machine`` and ``quick``. A case that raises is
    reported under ``error`` and the others still run. Ctrl-C (KeyboardInterrupt)
    ends the run: the case it interrupted has ``interrupted`` True (and no figures),
    and so have the results."""
    results: dict[str, Any] = {"machine": machine(uvloop), "quick": quick}
    runners = _cases(quick, uvloop)
    with _loop_policy(uvloop), interrupts_end_the_run():
        for name in CASES:
            if name not in cases:
                continue
            echo(f"running {name} ...")
            stopped = False
            try:
                figures = runners[name]()
            except KeyboardInterrupt:
                stopped = True
            except Exception as exc:
                stopped = interrupted()  # a helper process died of the same Ctrl-C
                if not stopped:
                    results[name] = {"error": f"{type(exc).__name__}: {exc}", "met": False}
                    echo(f"  {name} failed: {type(exc).__name__}: {exc}")
                    continue
            if stopped:
                results[name] = {"interrupted": True, "met": False}
                results["interrupted"] = True
                echo(f"  {name} interrupted")
                break
            if name == "concurrent" and "stream_128" in results:
                base = results["stream_128"].get("natstream_msgs_per_s")
                if base:
                    figures["ratio_to_stream_128"] = figures["natstream_msgs_per_s"] / base
            _check(name, figures)
            results[name] = figures
    return results


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def format_table(results: dict[str, Any]) -> str:
    """The figures as a table: one row per implementation per case, then the targets."""
    machine_line = ", ".join(f"{k}={v}" for k, v in results["machine"].items() if k != "platform")
    head = (
        f"{'case':<12} {'impl':<15} {'msgs/s':>10} {'MB/s':>8} {'1st p50 us':>11} "
        f"{'1st p99 us':>11} {'CPU us/msg req':>15} {'resp':>6}"
    )
    lines = [
        f"machine: {machine_line}"
        + (" (quick: figures not meaningful)" if results.get("quick") else ""),
        head,
    ]
    targets: list[str] = []
    for name in CASES:
        figures = results.get(name)
        if figures is None:
            continue
        if "error" in figures:
            lines.append(f"{name:<12} failed: {figures['error']}")
            targets.append(f"{name:<12} failed")
            continue
        if figures.get("interrupted"):
            lines.append(f"{name:<12} interrupted (Ctrl-C): no figures")
            targets.append(f"{name:<12} interrupted")
            continue
        for label, prefix in (
            (_LABEL.get(name, "natstream"), "natstream"),
            (_BASELINE.get(name, "nats-py"), "raw"),
        ):
            row = _row(name, figures, prefix)
            if row["msgs_per_s"] is None and row["first_p50_us"] is None:
                continue
            lines.append(
                f"{name if prefix == 'natstream' else '':<12} {label:<15} "
                f"{_fmt(row['msgs_per_s'], 0):>10} {_fmt(row['mb_per_s'], 1):>8} "
                f"{_fmt(row['first_p50_us'], 0):>11} {_fmt(row['first_p99_us'], 0):>11} "
                f"{_fmt(row['cpu_req_us']):>15} {_fmt(row['cpu_resp_us']):>6}"
            )
        for i, line in enumerate(figures["targets"]):
            targets.append(f"{name if i == 0 else '':<12} {line}")
        extra = _extra(name, figures)
        if extra:
            targets.append(f"{'':<12} ({extra})")
    return "\n".join([*lines, "targets:", *targets])


_COLUMNS = ("msgs_per_s", "mb_per_s", "first_p50_us", "first_p99_us", "cpu_req_us", "cpu_resp_us")


def _row(name: str, figures: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One implementation's table columns (``prefix``: natstream or raw)."""
    alias = _ALIASES.get(name, {})
    return {c: figures.get(alias.get(f"{prefix}_{c}", f"{prefix}_{c}")) for c in _COLUMNS}


def _extra(name: str, figures: dict[str, Any]) -> str:
    """Figures worth a glance that the table has no column for."""
    keys = {
        "concurrent": (
            "streams",
            "replies",
            "rounds",
            "complete",
            "connections",
            "connections_lost",
            "health_checks_failed",
            "server_pending_max_mb",
            "ratio_to_alternating_stream",
        ),
        "memory": ("stream_mb", "raw_rss_growth_mb", "natstream_rss_before_mb"),
        "request_cli": ("cli_wall_msgs_per_s", "cli_startup_s", "rounds"),
        "serve_memory": ("stream_mb", "serve_rss_growth_mb", "serve_rss_before_mb", "seconds"),
        "packed": ("items", "per_batch", "raw_messages"),
        "durable": ("core_recorder_msgs_per_s", "ratio_to_core", "raw_batch", "max_ack_pending"),
    }.get(name, ())
    shown = [f"{k} {_fmt(figures[k], 1)}" for k in keys if k in figures]
    if "errors" in figures:
        shown.append(f"errors: {figures['errors']}")
    return ", ".join(shown)


def main(
    quick: bool,
    json_path: str | None,
    echo: Callable[[str], None],
    *,
    uvloop: bool = False,
    cases: tuple[str, ...] | list[str] = CASES,
) -> dict[str, Any]:
    """Run, print the table, write JSON; return the results.

    After Ctrl-C the table and the JSON file hold the cases measured before it, and
    ``results["interrupted"]`` is True.
    """
    results = run_all(quick=quick, echo=echo, uvloop=uvloop, cases=cases)
    echo(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2, default=str)
    sys.stdout.flush()
    return results


def failed(results: dict[str, Any]) -> bool:
    """Whether a case of ``results`` failed to run (a missed target is not a failure,
    nor is a case interrupted by Ctrl-C)."""
    return any(isinstance(v, dict) and "error" in v and k != "machine" for k, v in results.items())
