"""The pool's decisions as pure functions: backoff, jitter, routing, retirement, outcomes.

No server and no sleeping: time and randomness are parameters; the refill loop runs
with a fake connect and a fake sleep.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from natstream import Config, Pool
from natstream._backoff import LIFETIME_JITTER, backoff_delay, lifetime_deadline
from natstream._pool._model import (
    ConnState,
    PoolState,
    RetireReason,
    Slot,
    pick_least_loaded,
    retirement_due,
)
from natstream._protocol import Outcome, RequesterState, attempt_outcome

LOW = lambda: 0.0  # noqa: E731 - the smallest jitter draw
HIGH = lambda: 1.0 - 1e-12  # noqa: E731 - the largest


# ------------------------------------------------------------------ backoff


def test_backoff_doubles_then_caps() -> None:
    highs = [backoff_delay(f, 0.1, 5.0, HIGH) for f in range(10)]
    assert highs[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert highs[6:] == pytest.approx([5.0] * 4)


def test_backoff_equal_jitter_keeps_half() -> None:
    for failures in range(8):
        nominal = min(5.0, 0.1 * 2**failures)
        assert backoff_delay(failures, 0.1, 5.0, LOW) == pytest.approx(nominal / 2)
        assert backoff_delay(failures, 0.1, 5.0, HIGH) == pytest.approx(nominal)


def test_backoff_spreads_reconnects() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff_delay(3, 0.1, 5.0, rng.random) for _ in range(1000)]
    assert min(delays) >= 0.4
    assert max(delays) < 0.8
    assert len({round(d, 3) for d in delays}) > 200  # not in lockstep


def test_backoff_survives_huge_failure_counts() -> None:
    assert backoff_delay(10_000, 0.1, 5.0, HIGH) == pytest.approx(5.0)


# ------------------------------------------------------------------ lifetime jitter


def test_lifetime_deadline_jitter_bounds() -> None:
    assert lifetime_deadline(100.0, 60.0, LOW) == pytest.approx(100 + 60 * (1 - LIFETIME_JITTER))
    assert lifetime_deadline(100.0, 60.0, HIGH) == pytest.approx(100 + 60 * (1 + LIFETIME_JITTER))
    assert lifetime_deadline(100.0, 60.0, lambda: 0.5) == pytest.approx(160.0)


def test_lifetime_none_is_forever() -> None:
    assert lifetime_deadline(100.0, None, HIGH) == math.inf


# ------------------------------------------------------------------ routing


def test_pick_least_loaded_prefers_the_least_loaded() -> None:
    assert pick_least_loaded([3, 1, 2], 0) == 1
    assert pick_least_loaded([3, 1, 2], 2) == 1


def test_pick_skips_connections_out_of_rotation() -> None:
    assert pick_least_loaded([None, 5, None], 0) == 1
    assert pick_least_loaded([None, None], 1) is None
    assert pick_least_loaded([], 0) is None


def test_pick_ties_go_to_the_first_from_start() -> None:
    assert pick_least_loaded([1, 1, 1, 1], 2) == 2
    assert pick_least_loaded([1, 0, 1, 0], 2) == 3
    assert pick_least_loaded([1, 0, 1, 0], 0) == 1


def _route(loads: list[int | None], picks: int) -> list[int]:
    """Route ``picks`` streams that never finish, as the pool does."""
    rr = 0
    chosen = []
    for _ in range(picks):
        i = pick_least_loaded(loads, rr)
        assert i is not None
        chosen.append(i)
        rr = (i + 1) % len(loads)
        load = loads[i]
        assert load is not None
        loads[i] = load + 1
    return chosen


def test_concurrent_streams_are_spread_evenly() -> None:
    chosen = _route([0] * 6, 60)
    assert Counter(chosen) == dict.fromkeys(range(6), 10)
    assert chosen[:6] == [0, 1, 2, 3, 4, 5]  # round-robin among ties


def test_short_streams_go_round_robin() -> None:
    # Streams that finish before the next starts: every load stays 0.
    loads: list[int | None] = [0, 0, None, 0]
    rr = 0
    chosen = []
    for _ in range(9):
        i = pick_least_loaded(loads, rr)
        assert i is not None
        chosen.append(i)
        rr = (i + 1) % len(loads)
    assert chosen == [0, 1, 3] * 3


def test_busy_connections_are_avoided_until_others_catch_up() -> None:
    loads: list[int | None] = [4, 0, 2, None]
    assert _route(loads, 6) == [1, 1, 2, 1, 2, 1]
    assert loads == [4, 4, 4, None]
    assert _route(loads, 3) == [0, 1, 2]  # level again: round-robin


# ------------------------------------------------------------------ retirement


def test_retirement_by_lifetime_ignores_load() -> None:
    due = retirement_due(10.0, expires_at=10.0, last_used=9.9, in_flight=5, max_idle=None)
    assert due is RetireReason.MAX_LIFETIME
    assert retirement_due(9.9, expires_at=10.0, last_used=0, in_flight=5, max_idle=None) is None


def test_retirement_by_idle_only_without_streams() -> None:
    kw = {"expires_at": math.inf, "last_used": 100.0, "max_idle": 30.0}
    assert retirement_due(130.0, in_flight=0, **kw) is RetireReason.MAX_IDLE
    assert retirement_due(129.9, in_flight=0, **kw) is None
    assert retirement_due(500.0, in_flight=1, **kw) is None
    no_idle = {**kw, "max_idle": None}
    assert retirement_due(500.0, in_flight=0, **no_idle) is None


# ------------------------------------------------------------------ outcomes


@pytest.mark.parametrize(
    ("state", "deadline", "now", "outcome"),
    [
        (RequesterState.ENDED, None, 0.0, Outcome.COMPLETED),
        (RequesterState.ENDED, 1.0, 5.0, Outcome.COMPLETED),
        (RequesterState.FAILED, None, 0.0, Outcome.FAILED),
        (RequesterState.CANCELLED, None, 0.0, Outcome.CANCELLED),
        (RequesterState.STREAMING, None, 0.0, Outcome.CANCELLED),
        (RequesterState.WAITING, 10.0, 5.0, Outcome.CANCELLED),
        (RequesterState.STREAMING, 10.0, 10.0, Outcome.FAILED),  # stream_timeout cut it off
    ],
)
def test_attempt_outcome(
    state: RequesterState, deadline: float | None, now: float, outcome: Outcome
) -> None:
    assert attempt_outcome(state, deadline=deadline, now=now) is outcome


# ------------------------------------------------------------------ refilling a slot


class _FakeConn:
    state = ConnState.READY


async def test_a_broken_slot_retries_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The background refill of a slot: waits, attempts, failures, success (fake connect)."""
    config = Config(
        ["nats://127.0.0.1:1"],
        idle_per_server=1,
        reconnect_backoff=0.01,
        reconnect_backoff_max=0.04,
    )
    pool = Pool(config)
    pool._state = PoolState.OPEN
    pool._conns.rand = lambda: 0.0  # the lowest jitter: each wait is half its nominal delay
    server = pool._servers[0]
    slot = Slot(server, 0)
    server.slots.append(slot)
    events: list[object] = []

    async def fake_sleep(delay: float) -> None:
        events.append(round(delay, 6))

    async def fake_connect(s: Slot) -> None:
        events.append("connect")
        if events.count("connect") < 5:
            raise OSError("connection refused")
        s.conn = _FakeConn()  # type: ignore[assignment]

    monkeypatch.setattr(pool._conns, "connect_slot", fake_connect)
    monkeypatch.setattr("natstream._pool._connections.asyncio.sleep", fake_sleep)
    await pool._conns.fill(slot, wait_first=True)
    assert events == [
        0.005, "connect",  # the server just dropped us: wait the base delay first
        0.01, "connect",
        0.02, "connect",
        0.02, "connect",  # capped at reconnect_backoff_max (0.04, halved by the jitter)
        0.02, "connect",
    ]  # fmt: skip
    assert server.connect_errors == slot.failures == 4
    assert not slot.needs_connection()


async def test_a_slot_refill_stops_when_the_pool_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(Config(["nats://127.0.0.1:1"], idle_per_server=1))
    pool._state = PoolState.OPEN
    slot = Slot(pool._servers[0], 0)
    attempts = 0

    async def failing_connect(s: Slot) -> None:
        nonlocal attempts
        attempts += 1
        pool._state = PoolState.CLOSING
        raise OSError("connection refused")

    async def no_sleep(delay: float) -> None:
        return None

    monkeypatch.setattr(pool._conns, "connect_slot", failing_connect)
    monkeypatch.setattr("natstream._pool._connections.asyncio.sleep", no_sleep)
    await pool._conns.fill(slot, wait_first=False)
    assert attempts == 1
