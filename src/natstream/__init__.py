"""natstream: streaming request-response over NATS.

A requester sends one request and receives a stream of replies until an end marker
(or an error marker); responders turn one request into many replies; a recorder
writes subscribed subjects into hour-split files. See README.md and docs/.
"""

from typing import Final, TypeAlias

from . import _events, _protocol, _requester, _responder
from ._config import Config, StreamOptions
from ._durable import DurableRecording, DurableRecordingStats
from ._errors import (
    ConfigError,
    ConnectionLostError,
    InvalidSubjectError,
    JetStreamError,
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
from ._events import ConnectionEvent, ConnectionEventKind
from ._lifecycle import SubscriberState, SubscriberStats
from ._pool import Pool, PoolStats, ServerStats
from ._protocol import Resume
from ._recording import Recording, RecordingStats, default_formatter, utc_formatter
from ._requester import Stream
from ._responder import StreamRequest, StreamSubscription, SubscriptionStats
from ._service import ServiceInfo
from ._subscriber import Subscriber
from ._writers import HourlyFileWriter, Retention, StreamWriter, WriterStats, parse_retention

# Constants and type aliases are assigned here, each with its docstring (imported
# under their own names they would have none in the API reference).

STREAM_END: Final = _protocol.STREAM_END
"""Payload of the end marker, the reply that ends a stream normally (``__STREAM_END__``).

A handler of ``Pool.stream_request`` sees it as the last reply; iteration over a
:class:`Stream` never yields it."""

STREAM_ERROR_PREFIX: Final = _protocol.STREAM_ERROR_PREFIX
"""Start of an error marker's payload: ``__STREAM_ERROR__:<message>``; the stream
ends with it and :class:`StreamError` is raised."""

IndexHandler: TypeAlias = _responder.IndexHandler
"""A handler called once per reply: ``handler(request, index) -> (data, more, err)``.

``index`` counts calls from 0; ``data`` (bytes or None) is sent, ``more=False``
ends the stream, ``err`` (a str, an exception, or None) ends it with an error
marker. Sync or async. Served by :meth:`Subscriber.stream_subscribe_handler`."""

BatchHandler: TypeAlias = _responder.BatchHandler
"""A handler called once per batch: ``handler(request, batch) -> (items, more, err)``.

``items`` is a list of bytes, each one reply (packed into few NATS messages).
Sync or async. Served by :meth:`Subscriber.batch_stream_subscribe_handler`."""

GeneratorHandler: TypeAlias = _responder.GeneratorHandler
"""An async generator: ``async def handler(request): yield b"..."``.

Each yielded bytes is one reply, a yielded list several (packed); returning ends
the stream, raising ends it with an error marker. Served by
:meth:`Subscriber.stream_handler`."""

Handler: TypeAlias = IndexHandler | BatchHandler | GeneratorHandler
"""A responder handler of any of the three kinds: :data:`IndexHandler`,
:data:`BatchHandler` or :data:`GeneratorHandler`."""

ConnectionEventHook: TypeAlias = _events.ConnectionEventHook
"""``on_connection_event`` of :class:`Pool` and :class:`Subscriber`: a plain (not
``async``) function of one :class:`ConnectionEvent`, called on the event loop as the
event happens: it must return quickly (start a task for slow work). What it raises is
logged, not raised."""

ReplyHandler: TypeAlias = _requester.Handler
"""What ``Pool.stream_request*`` calls with each reply: ``handler(msg) -> bool | None``.

Sync or async; it sees data replies and the end or error marker. Returning False
stops the stream early; anything else continues."""

__version__ = "0.1.0.dev0"

__all__ = [  # noqa: RUF022 - plain sorted(), which a test checks
    "BatchHandler",
    "Config",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionEventHook",
    "ConnectionEventKind",
    "ConnectionLostError",
    "DurableRecording",
    "DurableRecordingStats",
    "GeneratorHandler",
    "Handler",
    "HourlyFileWriter",
    "IndexHandler",
    "InvalidSubjectError",
    "JetStreamError",
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
    "ReplyHandler",
    "RequestTimeoutError",
    "Resume",
    "Retention",
    "STREAM_END",
    "STREAM_ERROR_PREFIX",
    "ServerStats",
    "ServiceInfo",
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
    "utc_formatter",
]
