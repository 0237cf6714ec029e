"""The requester machine's states and verdicts (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["TERMINAL", "Reply", "RequesterState", "TimerAction"]


class RequesterState(enum.Enum):
    WAITING = "waiting"  # request sent, nothing received yet
    STREAMING = "streaming"  # replies arriving
    ENDED = "ended"  # end marker received and every message before it
    FAILED = "failed"  # error marker, timeout, stall, gap, no responders
    CANCELLED = "cancelled"  # the caller stopped the stream

    # Members are singletons: identity hashing is correct, and C-level (Enum's own
    # __hash__ is Python code, and state checks run once per message).
    __hash__ = object.__hash__


class Reply(enum.IntEnum):
    """How the driver must treat one received message."""

    DELIVER = 0  # data: queue it for the consumer
    DROP = 1  # heartbeat, duplicate, or noise: nothing to do
    END = 2  # end marker: deliver it to a handler that sees markers, then finish
    ERROR = 3  # error marker: deliver it to such a handler, then raise ``machine.error``
    FAIL = 4  # failure with no marker to show: raise ``machine.error``
    CANCEL_FOREIGN = 5  # a second responder answered: send it a cancel, ignore the message


@dataclass(frozen=True, slots=True)
class TimerAction:
    """What a timer tick asks for: a control message to send, and/or a failure.

    ``control`` holds the headers of a heartbeat (with the current ack) to publish to
    ``machine.control_subject``; ``fail`` is true when ``machine.error`` is now set.
    """

    control: dict[str, str] | None
    fail: bool


TERMINAL = frozenset({RequesterState.ENDED, RequesterState.FAILED, RequesterState.CANCELLED})
