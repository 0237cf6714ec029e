"""The one seam between natstream and nats-py (and asyncio's private parts).

Nothing outside this package touches a private name of nats-py or asyncio (a test
walks every other module's syntax tree to hold that). Drivers get a :class:`Link`
from :func:`connect` and run the operations below on it; :mod:`._compat` lists what
the fast paths rely on and turns them off, with one warning, when nats-py lacks it.
"""

from ._client import FastClient, Inbox, Listening, RawHandler
from ._compat import fast_paths, missing_names
from ._connect import connect, is_rejection, safe_server, translate_connect_error
from ._link import Link, PlainLink
from ._ops import (
    HEADER_ALLOWANCE,
    check_payload,
    drain_subscription,
    flush_ordered,
    publish,
    subscribe_live,
)
from ._tasks import AVAILABLE as CALL_AS_AVAILABLE
from ._tasks import call_as

__all__ = [
    "CALL_AS_AVAILABLE",
    "HEADER_ALLOWANCE",
    "FastClient",
    "Inbox",
    "Link",
    "Listening",
    "PlainLink",
    "RawHandler",
    "call_as",
    "check_payload",
    "connect",
    "drain_subscription",
    "fast_paths",
    "flush_ordered",
    "is_rejection",
    "missing_names",
    "publish",
    "safe_server",
    "subscribe_live",
    "translate_connect_error",
]
