"""``natstream bench --quick``: every case runs and lands in the JSON (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cli_run
import pytest
from click.testing import CliRunner

from natstream._bench import CASES, TARGETS, format_table
from natstream._cli import _BENCH_CASES, main

RUN_TIMEOUT = 90  # seconds; the quick bench takes about 5 to 10


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-m", "natstream", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_bench_runs_every_case(tmp_path: Path) -> None:
    proc, results = _bench(tmp_path, "bench", "--quick")
    assert proc.stderr == ""
    assert results["quick"] is True
    assert results["machine"]["event_loop"] == "asyncio"
    for case in CASES:
        figures = results[case]
        assert "error" not in figures, figures
        assert isinstance(figures["met"], bool)
        assert len(figures["targets"]) == len(TARGETS[case])
        assert f"\n{case} " in proc.stdout
    for case in ("stream_128", "stream_1k", "first_reply", "responder"):
        for key in ("natstream_cpu_req_us", "natstream_cpu_resp_us", "raw_cpu_req_us"):
            assert results[case][key] > 0, (case, key)
    assert results["stream_128"]["raw_mb_per_s"] > 0
    assert results["first_reply"]["natstream_first_p99_us"] > 0
    responder = results["responder"]
    assert responder["natstream_msgs_per_s"] > 0
    assert responder["responder_cpu_ratio"] == pytest.approx(
        responder["raw_cpu_resp_us"] / responder["natstream_cpu_resp_us"]
    )

    concurrent = results["concurrent"]
    assert concurrent["streams"] == 50
    assert concurrent["replies"] == 100
    assert concurrent["complete"] == 50
    assert concurrent["all_complete"] is True
    assert "errors" not in concurrent
    assert concurrent["consumer"] == "stream_request"  # as in stream_128: rates comparable
    assert concurrent["health_checks_failed"] == 0
    assert concurrent["server_pending_max_mb"] >= 0
    assert concurrent["ratio_to_stream_128"] > 0
    assert concurrent["fairness_p99_over_p50"] >= 1

    memory = results["memory"]
    assert memory["stream_mb"] == pytest.approx(20.48)
    assert memory["natstream_rss_growth_mb"] >= 0
    assert memory["raw_rss_growth_mb"] >= 0
    assert "1st p50 us" in proc.stdout
    assert "CPU us/msg" in proc.stdout


@pytest.mark.slow
def test_quick_packed_case(tmp_path: Path) -> None:
    proc, results = _bench(tmp_path, "bench", "--quick", "--case", "packed")
    assert set(results) == {"machine", "quick", "packed"}
    packed = results["packed"]
    assert "error" not in packed, packed
    assert packed["items"] == 20_000
    assert packed["items_per_s"] > 0
    assert packed["raw_msgs_per_s"] > 0
    assert packed["ratio_to_raw"] == pytest.approx(packed["items_per_s"] / packed["raw_msgs_per_s"])
    for key in ("natstream_cpu_req_us", "natstream_cpu_resp_us", "raw_cpu_req_us"):
        assert packed[key] > 0, key
    assert len(packed["targets"]) == len(TARGETS["packed"])
    assert "\npacked       natstream items" in proc.stdout


@pytest.mark.slow
def test_uvloop_reaches_both_ends(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    _, results = _bench(
        tmp_path, "bench", "--uvloop", "--quick", "--case", "stream_128", "--case", "memory"
    )
    assert set(results) == {"machine", "quick", "stream_128", "memory"}
    assert results["machine"]["event_loop"].startswith("uvloop")
    for case in ("stream_128", "memory"):
        assert results[case]["requester_loop"] == "uvloop.Loop"
        assert results[case]["responder_loop"] == "uvloop.Loop"


def test_cli_offers_every_case() -> None:
    assert _BENCH_CASES == CASES  # the CLI lists them without importing the bench


def test_uvloop_before_bench_is_the_same_option(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    _, results = _bench(tmp_path, "--uvloop", "bench", "--quick", "--case", "writer")
    assert results["machine"]["event_loop"].startswith("uvloop")


def test_bench_rejects_an_unknown_case() -> None:
    result = CliRunner().invoke(main, ["bench", "--case", "nope"])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_table_shows_a_failed_case_and_missed_targets() -> None:
    results: dict[str, Any] = {
        "machine": {"cores": 2},
        "quick": False,
        "stream_128": {"error": "RuntimeError: boom", "met": False},
        "concurrent": {
            "streams": 1000,
            "complete": 998,
            "all_complete": False,
            "natstream_msgs_per_s": 1000.0,
            "targets": ["all_complete == True: no (NOT met)"],
            "met": False,
            "errors": {"ConnectionLostError: lost": 2},
        },
    }
    table = format_table(results)
    assert "stream_128   failed: RuntimeError: boom" in table
    assert "NOT met" in table
    assert "ConnectionLostError" in table


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_measured(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # Full counts: the memory case (1 GB) is still running when Ctrl-C comes.
    proc = cli_run.start("bench", "--case", "stream_128", "--case", "memory", "--json", str(out))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("running memory"):
                break
        cli_run.ctrl_c(proc)
        rest, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        cli_run.stop(proc)
    assert proc.returncode == 130, rest + err
    assert err == ""  # nothing from the processes it started, no warning (-W error)
    assert "\nstream_128   natstream " in rest
    assert "\nmemory       interrupted" in rest
    results = json.loads(out.read_text())
    assert results["interrupted"] is True
    assert results["memory"] == {"interrupted": True, "met": False}
    assert results["stream_128"]["natstream_msgs_per_s"] > 0
    assert results["stream_128"]["met"] in (True, False)
