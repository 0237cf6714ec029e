"""How a stream ended, the same word on both sides (pure)."""

from __future__ import annotations

import enum

from ._states import RequesterState

__all__ = ["Outcome", "attempt_outcome"]


class Outcome(enum.Enum):
    """How one stream (requester: one attempt) ended, as the stats count it."""

    COMPLETED = "completed"  # the end marker, after every data reply
    FAILED = "failed"  # error marker, no responders, timeout, stall, connection lost
    CANCELLED = "cancelled"  # ended first by the other side's choice or the caller's

    __hash__ = object.__hash__


def attempt_outcome(state: RequesterState, *, deadline: float | None, now: float) -> Outcome:
    """Classify a finished requester attempt from its machine's state.

    ENDED is completed and FAILED is failed. Any other state means the caller ended
    the attempt before a terminal reply (the handler returned False, the ``async
    with`` block was left, the task was cancelled): cancelled, unless the stream's
    deadline had passed, in which case ``stream_timeout`` cut it off: failed.
    """
    if state is RequesterState.ENDED:
        return Outcome.COMPLETED
    if state is RequesterState.FAILED or (deadline is not None and now >= deadline):
        return Outcome.FAILED
    return Outcome.CANCELLED
