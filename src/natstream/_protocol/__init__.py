"""natstream's stream protocol, sans-IO: no asyncio, no nats imports, only state.

The requester and responder machines take events (a reply arrived, a control
message arrived, the consumer took a message, a timer fired) with the current time
and answer what to do. ``natstream._requester`` and ``natstream._responder`` drive
them over a transport link. ``_frames`` spells the NATS framing natstream writes
and recognises. The wire format is described in ``docs/protocol.md``.
"""

from ._outcome import Outcome, attempt_outcome
from ._requester import Reply, RequesterMachine, RequesterState, TimerAction, cancel_headers
from ._responder import Control, ResponderMachine, ResponderState, ResponderTimer
from ._wire import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    HeaderError,
    RequestOptions,
    Resume,
    error_headers,
    parse_request_headers,
)

__all__ = [
    "STREAM_END",
    "STREAM_ERROR_PREFIX",
    "Control",
    "HeaderError",
    "Outcome",
    "Reply",
    "RequestOptions",
    "RequesterMachine",
    "RequesterState",
    "ResponderMachine",
    "ResponderState",
    "ResponderTimer",
    "Resume",
    "TimerAction",
    "attempt_outcome",
    "cancel_headers",
    "error_headers",
    "parse_request_headers",
]
