"""One re-armable timer per stream, moved only when the next deadline gets earlier."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["LATE", "RECHECK", "LazyTimer"]

LATE = 0.05
"""Seconds after its deadline past which a firing is late: the event loop was blocked
(by the application's own code, maybe) while messages may sit unread in the socket.
The timer then fires ``RECHECK`` seconds later instead, once the reader has run, so
that its callback never judges silence (a stall, a requester gone) on stale news."""
RECHECK = 0.02


class LazyTimer:
    """Calls ``callback`` at the earliest deadline asked for through :meth:`arm`.

    A later deadline leaves the armed timer alone: when it fires, the callback asks
    its state machine for the real next deadline and arms again. So the hot path
    (every message) never touches the event loop's timer heap. A firing more than
    ``LATE`` seconds after its deadline is put off once, by ``RECHECK`` seconds.
    """

    __slots__ = ("_at", "_callback", "_handle", "_loop", "_rechecking", "armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self.armed = False  # a call is pending (read per message: an attribute)
        self._rechecking = False  # a late firing was put off once

    def arm(self, when: float | None) -> None:
        """Fire at ``when`` (loop time) unless already due earlier; None cancels."""
        if when is None:
            self.cancel()
            return
        if self._handle is not None:
            if self._at <= when:
                return
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._fire)
        self.armed = True

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._at = math.inf
            self.armed = False

    def close(self) -> None:
        """Cancel, and forget the callback: a timer whose callback is a method of its
        owner is a reference cycle, left to the garbage collector otherwise."""
        self.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        now = self._loop.time()
        late = now - self._at
        self._handle = None
        self._at = math.inf
        self.armed = False
        if late > LATE and not self._rechecking:
            self._rechecking = True
            self.arm(now + RECHECK)
            return
        self._rechecking = False
        self._callback()


def _nothing() -> None:
    return None
