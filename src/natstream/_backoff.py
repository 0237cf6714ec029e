"""Reconnect backoff and lifetime jitter: pure functions (no clock, no I/O).

Callers pass the current time (``now``) and a source of randomness (``rand``: a
function returning a float in [0, 1), such as ``random.random``), so tests pin both
and never sleep.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["LIFETIME_JITTER", "backoff_delay", "lifetime_deadline"]

LIFETIME_JITTER = 0.1
"""``max_lifetime`` is stretched or shrunk by up to this fraction, per connection, so
connections opened together are not all retired together."""

_MAX_EXPONENT = 32  # 2**32 times any sane base is past any cap; keeps the float finite


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Seconds to wait before the next connect attempt, after ``failures`` failures in a row.

    Exponential backoff with "equal jitter": the nominal delay is
    ``min(cap, base * 2**failures)`` and the result is uniform in
    ``[nominal / 2, nominal)``. The fixed half keeps a flapping server from being
    hammered; the random half spreads the connections of a pool (and the pools of
    many processes) so they do not reconnect in lockstep.

    Args:
        failures: failed attempts in a row (0 for the first retry after a loss).
        base: nominal delay after no failure, in seconds (> 0).
        cap: largest nominal delay, in seconds (>= ``base``).
        rand: returns a float in [0, 1).
    """
    nominal = min(cap, base * 2.0 ** min(failures, _MAX_EXPONENT))
    return nominal * (0.5 + 0.5 * rand())


def lifetime_deadline(now: float, max_lifetime: float | None, rand: Callable[[], float]) -> float:
    """When a connection opened at ``now`` is due for retirement.

    ``now + max_lifetime * (1 + j)`` with ``j`` uniform in
    ``[-LIFETIME_JITTER, +LIFETIME_JITTER)``; ``math.inf`` when ``max_lifetime`` is
    None (connections are kept for ever).
    """
    if max_lifetime is None:
        return math.inf
    return now + max_lifetime * (1.0 + LIFETIME_JITTER * (2.0 * rand() - 1.0))
