"""The request a responder handler serves, the handler types, and handler errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.msg import Msg

from .._errors import StreamError
from .._protocol import ResponderMachine, Resume

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "DEADLINE",
    "FORBIDDEN",
    "INTERNAL",
    "PROPAGATE",
    "SHUTTING_DOWN",
    "TOO_LARGE",
    "UNREACHED",
    "BatchHandler",
    "BatchResult",
    "ErrorValue",
    "GeneratorHandler",
    "HandlerError",
    "IndexHandler",
    "IndexResult",
    "StreamRequest",
    "handler_error",
]

ErrorValue = str | BaseException | None
IndexResult = tuple[bytes | None, bool, ErrorValue]
BatchResult = tuple[list[bytes], bool, ErrorValue]

# What a handler raises is the stream's failure (a 500), BaseExceptions included: a
# CancelledError it raised itself (``fut.result()`` of a cancelled future) or a custom
# BaseException must not end the stream silently, nor the connection's read loop when
# the first call is made in the request's dispatch. These two alone propagate: they
# stop the process (Ctrl-C, sys.exit() in a handler), and a responder has no business
# keeping it alive.
PROPAGATE = (KeyboardInterrupt, SystemExit)

# Codes of the error markers natstream sends itself (HTTP-like, as NATS services use).
BAD_REQUEST = 400
FORBIDDEN = 403  # the server refused the responder something the stream needs
TOO_LARGE = 413
INTERNAL = 500
UNREACHED = 502  # the requester's control messages never reached the responder
BUSY = 503
DEADLINE = 504

# The text of the retryable 503 sent while a subscription stops: to requests that
# arrive meanwhile, and to streams still running when its grace period ends.
SHUTTING_DOWN = "shutting down"


class StreamRequest:
    """The request a responder handler serves.

    Attributes:
        msg: the raw nats-py message.
        data, subject, headers: of the request.
    """

    __slots__ = ("_machine", "_resume_read", "data", "headers", "msg", "subject")

    def __init__(self, msg: Msg, machine: ResponderMachine) -> None:
        self.msg = msg
        # Copied, not properties: an index handler may read them once per reply.
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        self.headers: dict[str, str] | None = msg.headers
        self._machine = machine
        self._resume_read = False

    def time_remaining(self) -> float | None:
        """Seconds left before the stream's deadline (the requester's ``stream_timeout``
        or the subscriber's ``max_stream_duration``); None when there is none. When it
        reaches 0 the stream is ended with a 504 error and the handler is cancelled."""
        return self._machine.time_remaining(time.monotonic())

    @property
    def resume(self) -> Resume | None:
        """Where a retried stream continues (None for a fresh one).

        A generator handler that reads this is trusted to start after
        ``resume.seq`` items itself; otherwise natstream skips that many items.
        """
        self._resume_read = True
        return self._machine.resume

    @property
    def is_v1(self) -> bool:
        """Whether the requester speaks natstream's protocol (else the plain markers)."""
        return self._machine.v1

    def __repr__(self) -> str:
        return f"<StreamRequest subject={self.subject!r} {len(self.data)} bytes>"


# The handler kinds (public as natstream.IndexHandler, ...). Defined after StreamRequest,
# without strings, so that tools (pdoc, get_type_hints) resolve them from any module.
IndexHandler = Callable[[StreamRequest, int], IndexResult | Awaitable[IndexResult]]
BatchHandler = Callable[[StreamRequest, int], BatchResult | Awaitable[BatchResult]]
GeneratorHandler = Callable[[StreamRequest], AsyncIterator[bytes | list[bytes]]]


class HandlerError(Exception):
    """A handler returned an error: the stream ends with this error marker."""

    def __init__(self, message: str, code: int, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


def handler_error(err: str | BaseException) -> HandlerError:
    """The error marker for the ``err`` a handler returned: a :class:`StreamError`'s
    own message, code and retryability; anything else is a retryable 500 with its
    text (or its type's name when it has none)."""
    if isinstance(err, StreamError):
        return HandlerError(err.message, err.code, err.retryable)
    return HandlerError(str(err) or type(err).__name__, INTERNAL, True)
