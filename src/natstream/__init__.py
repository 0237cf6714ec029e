"""natstream: streaming request-response over NATS.

A requester sends one request and receives a stream of replies until an end marker
(or an error marker); responders turn one request into many replies; a recorder
writes subscribed subjects into hour-split files. See README.md and docs/.
"""

from ._config import Config, StreamOptions
from ._errors import (
    ConfigError,
    ConnectionLostError,
    InvalidSubjectError,
    NatstreamError,
    NoRespondersError,
    NoServersError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PoolClosedError,
    ProtocolViolationError,
    RequestTimeoutError,
    StalledError,
    StreamError,
    StreamFailure,
    StreamTimeoutBase,
    StreamTimeoutError,
    SubscriberClosedError,
    WriterError,
)
from ._events import ConnectionEvent, ConnectionEventHook, ConnectionEventKind
from ._lifecycle import SubscriberState, SubscriberStats
from ._pool import Pool, PoolStats, ServerStats
from ._protocol import STREAM_END, STREAM_ERROR_PREFIX, Resume
from ._recording import Recording, RecordingStats, default_formatter
from ._requester import Stream
from ._responder import StreamRequest, StreamSubscription, SubscriptionStats
from ._subscriber import Subscriber
from ._writers import HourlyFileWriter, Retention, StreamWriter, WriterStats, parse_retention

__version__ = "0.1.0.dev0"

__all__ = [  # noqa: RUF022 - plain sorted(), which a test checks
    "Config",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionEventHook",
    "ConnectionEventKind",
    "ConnectionLostError",
    "HourlyFileWriter",
    "InvalidSubjectError",
    "NatstreamError",
    "NoRespondersError",
    "NoServersError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "ProtocolViolationError",
    "Recording",
    "RecordingStats",
    "RequestTimeoutError",
    "Resume",
    "Retention",
    "STREAM_END",
    "STREAM_ERROR_PREFIX",
    "ServerStats",
    "StalledError",
    "Stream",
    "StreamError",
    "StreamFailure",
    "StreamOptions",
    "StreamRequest",
    "StreamSubscription",
    "StreamTimeoutBase",
    "StreamTimeoutError",
    "StreamWriter",
    "Subscriber",
    "SubscriberClosedError",
    "SubscriberState",
    "SubscriberStats",
    "SubscriptionStats",
    "WriterError",
    "WriterStats",
    "default_formatter",
    "parse_retention",
]
