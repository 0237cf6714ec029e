"""The exceptions natstream raises, all rooted in :class:`NatstreamError`.

::

    NatstreamError
    ├── ConfigError (ValueError)             bad argument or option
    │   └── InvalidSubjectError              empty, whitespace, wildcard in a request subject
    ├── PoolClosedError                      the pool was closed by your code
    ├── SubscriberClosedError                the subscriber was closed by your code
    ├── NoServersError (ConnectionError)     no configured server could be reached
    ├── ServerStartError                     embedded nats-server failed (natstream.server)
    ├── WriterError (OSError)                a writer could not write, flush or close
    ├── JetStreamError                       JetStream cannot serve a durable recording
    └── StreamFailure                        a stream did not end normally
        ├── StreamError                      the responder sent an error marker (.code, .retryable)
        ├── NoRespondersError                nobody subscribes to the subject
        ├── PayloadTooLargeError             data exceeds the server's max_payload
        ├── ConnectionLostError              the connection carrying the stream broke
        ├── PermissionDeniedError            the server refused a subscribe or publish
        ├── ProtocolViolationError           sequence gap or malformed control traffic
        └── StreamTimeoutBase (TimeoutError)
            ├── RequestTimeoutError          silence longer than request_timeout
            ├── StreamTimeoutError           the whole-stream deadline passed
            └── StalledError                 the responder's heartbeats stopped

Every :class:`StreamFailure` has ``retryable``: whether ``stream_request_with_retry``
may send the request again. Errors from nats-py are translated at the boundary and
chained (``raise ... from exc``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionLostError",
    "InvalidSubjectError",
    "JetStreamError",
    "NatstreamError",
    "NoRespondersError",
    "NoServersError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PoolClosedError",
    "ProtocolViolationError",
    "RequestTimeoutError",
    "StalledError",
    "StreamError",
    "StreamFailure",
    "StreamTimeoutBase",
    "StreamTimeoutError",
    "SubscriberClosedError",
    "WriterError",
]


class NatstreamError(Exception):
    """Root of every exception natstream raises on purpose."""


class ConfigError(NatstreamError, ValueError):
    """An argument or option is invalid; the message names it and the accepted range."""


class InvalidSubjectError(ConfigError):
    """A subject is empty, holds whitespace, or has wildcards where none are allowed."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"invalid subject {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


class PoolClosedError(NatstreamError):
    """The pool was closed (by your code); create a new one to send more requests."""


class SubscriberClosedError(NatstreamError):
    """The subscriber was closed (by your code); it takes no new subscriptions."""


class NoServersError(NatstreamError, ConnectionError):
    """None of the configured servers could be reached."""

    def __init__(self, servers: list[str], reasons: list[str]) -> None:
        detail = "; ".join(f"{s}: {r}" for s, r in zip(servers, reasons, strict=False))
        super().__init__(f"could not connect to any of {len(servers)} server(s): {detail}")
        self.servers = servers
        self.reasons = reasons


class WriterError(NatstreamError, OSError):
    """A writer failed to write, flush or close; ``__cause__`` is the OS error."""


class JetStreamError(NatstreamError):
    """JetStream cannot serve a durable recording: the server has no JetStream, a stream
    does not cover the subjects, a consumer of that name has a conflicting
    configuration, or the consumer went away while recording. The message says which,
    and what to do instead."""


class StreamFailure(NatstreamError):
    """A stream ended other than by its end marker.

    ``retryable`` says whether sending the request again may succeed; it is what
    ``stream_request_with_retry`` looks at.
    """

    retryable: bool = False


class StreamError(StreamFailure):
    """The responder ended the stream with an error marker.

    Attributes:
        message: the peer's error text (``__STREAM_ERROR__:<message>``).
        code: numeric code (HTTP-like, as NATS services use: 500 internal, 503 busy,
            504 deadline exceeded, 400 bad request, 413 too large); 500 for peers that
            send no code.
        retryable: as sent by the peer; error markers from peers that speak only the
            plain in-band protocol are retryable (they cannot say otherwise).
    """

    def __init__(self, message: str, *, code: int = 500, retryable: bool = True) -> None:
        super().__init__(f"stream error {code}: {message}")
        self.message = message
        self.code = code
        self.retryable = retryable


class NoRespondersError(StreamFailure):
    """No subscriber exists for the subject (the server's 503 no-responders status)."""

    retryable = True

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on subject {subject!r}")
        self.subject = subject


class PayloadTooLargeError(StreamFailure, ConfigError):
    """A payload is larger than the server accepts (its ``max_payload``), less the room
    natstream keeps for its own headers when it sends them.

    Attributes:
        size: the payload's size in bytes.
        max_payload: the server's limit for a whole message, in bytes.
        reserve: bytes of it kept for natstream's headers (0 when none are sent).
    """

    def __init__(self, size: int, max_payload: int, reserve: int = 0) -> None:
        if reserve:
            message = (
                f"payload of {size} bytes exceeds the {max_payload - reserve} bytes allowed: "
                f"the server's max_payload of {max_payload} less {reserve} kept for "
                "natstream's headers"
            )
        else:
            message = f"payload of {size} bytes exceeds the server's max_payload of {max_payload}"
        super().__init__(message)
        self.size = size
        self.max_payload = max_payload
        self.reserve = reserve


class ConnectionLostError(StreamFailure, ConnectionError):
    """The connection carrying the stream closed or broke mid-stream."""

    retryable = True


class PermissionDeniedError(StreamFailure):
    """The server refused a subscription or a publish (a permissions violation).

    Raised at once where it happens: by a subscribe (``Subscriber.connect``,
    ``stream_subscribe_handler``...) or by the stream whose request, inbox or control
    messages were refused. Not retryable: the same permissions refuse it again.
    docs/security.md lists the permissions each side needs.

    Attributes:
        subject: the refused subject, as the server names it.
        operation: ``"subscribe"`` or ``"publish"``.
    """

    def __init__(self, subject: str, operation: str, hint: str = "") -> None:
        message = f"the server refused to let this connection {operation} {subject!r}"
        super().__init__(f"{message} ({hint})" if hint else message)
        self.subject = subject
        self.operation = operation


class ProtocolViolationError(StreamFailure):
    """The peer broke the stream protocol: a sequence gap, or malformed control data.

    A gap (messages lost, e.g. across a reconnect) is retryable: with resume the retry
    continues after the last delivered message, so nothing is lost or repeated.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class StreamTimeoutBase(StreamFailure, TimeoutError):
    """Base of the stream's timeouts; also a builtin :class:`TimeoutError`."""

    retryable = True


class RequestTimeoutError(StreamTimeoutBase):
    """Nothing arrived for ``request_timeout`` seconds while the caller waited for a reply."""


class StreamTimeoutError(StreamTimeoutBase):
    """The whole-stream deadline (``stream_timeout``) passed; never retried."""

    retryable = False


class StalledError(StreamTimeoutBase):
    """The responder stopped sending heartbeats: it is dead or cut off."""
