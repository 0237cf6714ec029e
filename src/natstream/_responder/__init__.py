"""The responder: one stream, served over a subscriber's connection.

A ``StreamSubscription`` opens a ``ResponderStream`` per request (``_stream``); the
stream runs its handler's kind (``_kinds``: index, packed index, batch, generator,
behind one ``run(request, sender)``) and every reply leaves through its ``Sender``
(``_sender``: credit, the fast data path, packing, pacing). ``_request`` holds what
handlers see (``StreamRequest``) and return. ``_dispatch`` turns requests into
streams (or turns them away) and routes inbox-routed control messages. This package
never imports the ``Subscriber``: a subscription reaches it through ``Host``.
"""

from ._dispatch import Dispatcher, subscribe_control
from ._kinds import Batch, Generator, Index, Kind, PackedIndex, index_kind
from ._request import (
    BAD_REQUEST,
    BUSY,
    SHUTTING_DOWN,
    TOO_LARGE,
    BatchHandler,
    GeneratorHandler,
    IndexHandler,
    IndexResult,
    StreamRequest,
)
from ._sender import send_rejection
from ._stream import ResponderStream
from ._subscription import Host, StreamSubscription, SubscriptionStats

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "SHUTTING_DOWN",
    "TOO_LARGE",
    "Batch",
    "BatchHandler",
    "Dispatcher",
    "Generator",
    "GeneratorHandler",
    "Host",
    "Index",
    "IndexHandler",
    "IndexResult",
    "Kind",
    "PackedIndex",
    "ResponderStream",
    "StreamRequest",
    "StreamSubscription",
    "SubscriptionStats",
    "index_kind",
    "send_rejection",
    "subscribe_control",
]
