"""The private parts of nats-py (and asyncio) natstream's fast paths rely on, and the
check that turns the fast paths off when an installed version lacks one.

nats-py is pinned (``nats-py>=2.16,<3``), but a release within that range may still
rename an internal. Then natstream falls back to nats-py's public API: slower, never
broken, with one warning. ``NATSTREAM_NO_FAST_PATHS`` set to a non-empty value forces
the fallback (the test suite runs the streaming tests that way too).

What is not a speed-up is not optional: the TLS downgrade check needs
:data:`TLS_CHECK_NAMES`; without them a connection that asks for TLS is refused
rather than risk sending credentials in plaintext. Draining a subscription without
losing a message needs :data:`DRAIN_NAMES`; without them it falls back to
``Subscription.drain()``, which can drop what arrives as it ends (one warning).
"""

from __future__ import annotations

import asyncio.tasks
import inspect
import logging
import os
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.protocol import parser

__all__ = [
    "CLIENT_ATTRIBUTES",
    "CLIENT_METHODS",
    "DRAIN_NAMES",
    "TLS_CHECK_NAMES",
    "fast_paths",
    "lossless_drain",
    "missing_drain_names",
    "missing_names",
    "missing_tls_check_names",
]

log = logging.getLogger("natstream")

ENV_OFF = "NATSTREAM_NO_FAST_PATHS"

# Attributes of a fresh Client() read or written by FastClient and the fast paths.
CLIENT_ATTRIBUTES = (
    "_ps",  # the parser nats-py's read loop feeds; FastClient installs its own
    "_pending",  # list of commands waiting for the flusher
    "_pending_data_size",
    "_max_pending_size",
    "_flush_queue",  # wake-ups of the flusher task
    "_flusher_task",
    "_status",
    "_transport",
    "_max_payload",
    "_pongs",
    "_pongs_received",
    "_pings_outstanding",
    "_sid",  # the last subscription id given out (FastClient.listen takes the next)
    "_subs",  # subscriptions by id, replayed on reconnect
)

# Methods called or overridden, with the parameter names relied on.
CLIENT_METHODS: dict[str, tuple[str, ...]] = {
    "_process_msg": ("sid", "subject", "reply", "data", "headers"),
    "_process_headers": ("headers",),
    "_process_ping": (),
    "_process_pong": (),
    "_process_info": ("info",),
    "_process_err": ("err_msg",),
    "_flush_pending": ("force_flush",),
    "_remove_sub": ("sid", "max_msgs"),
    "_send_unsubscribe": ("sid",),
}

PARSER_ATTRIBUTES = ("nc", "buf")
PARSER_METHODS = ("reset", "parse")
PARSER_PATTERNS = ("ERR_RE", "INFO_RE", "OK_RE", "PING_RE", "PONG_RE")
SUBSCRIPTION_ATTRIBUTES = ("_id",)
TCP_TRANSPORT_ATTRIBUTES = ("_io_writer",)  # the (TLS-upgraded) stream writer

TLS_CHECK_NAMES = ("Client._connect_command", "Client._current_server", "TcpTransport._io_writer")
DRAIN_NAMES = ("Client._send_unsubscribe", "Subscription._id")


def _method_gaps(cls: type, name: str, params: tuple[str, ...]) -> list[str]:
    method = getattr(cls, name, None)
    if not callable(method):
        return [f"{cls.__name__}.{name}"]
    try:
        names = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return []
    return [f"{cls.__name__}.{name}({p}=...)" for p in params if p not in names]


def _subscription_gaps(client: Any, attributes: tuple[str, ...]) -> list[str]:
    try:
        sub: Any = Subscription(client, 1)
    except Exception:  # a changed constructor
        return ["Subscription(conn, id)"]
    return [f"Subscription.{a}" for a in attributes if not hasattr(sub, a)]


def missing_names() -> list[str]:
    """Every private name the fast paths rely on that the installed nats-py (or
    asyncio) does not have; empty when all are there."""
    missing: list[str] = []
    client: Any = Client()
    missing += [f"Client.{a}" for a in CLIENT_ATTRIBUTES if not hasattr(client, a)]
    for name, params in CLIENT_METHODS.items():
        missing += _method_gaps(Client, name, params)
    ps = getattr(client, "_ps", None)
    missing += [f"Parser.{a}" for a in PARSER_ATTRIBUTES if ps is not None and not hasattr(ps, a)]
    missing += [
        f"Parser.{m}" for m in PARSER_METHODS if not callable(getattr(parser.Parser, m, None))
    ]
    missing += [f"nats.protocol.parser.{p}" for p in PARSER_PATTERNS if not hasattr(parser, p)]
    missing += _subscription_gaps(client, SUBSCRIPTION_ATTRIBUTES)
    missing += missing_tls_check_names()
    if not (
        hasattr(asyncio.tasks, "_swap_current_task")
        or hasattr(asyncio.tasks, "_current_tasks")
        or (hasattr(asyncio.tasks, "_enter_task") and hasattr(asyncio.tasks, "_leave_task"))
    ):
        missing.append("asyncio.tasks._swap_current_task (or _current_tasks)")
    return missing


def missing_tls_check_names() -> list[str]:
    """The names of :data:`TLS_CHECK_NAMES` the installed nats-py lacks."""
    missing = []
    client: Any = Client()
    if not callable(getattr(client, "_connect_command", None)):
        missing.append("Client._connect_command")
    if not hasattr(client, "_current_server"):
        missing.append("Client._current_server")
    if not hasattr(TcpTransport(), "_io_writer"):  # type: ignore[no-untyped-call]
        missing.append("TcpTransport._io_writer")
    return missing


def missing_drain_names() -> list[str]:
    """The names of :data:`DRAIN_NAMES` the installed nats-py lacks."""
    name = "_send_unsubscribe"
    return _method_gaps(Client, name, CLIENT_METHODS[name]) + _subscription_gaps(Client(), ("_id",))


_lossless_drain: bool | None = None


def lossless_drain() -> bool:
    """Whether :data:`DRAIN_NAMES` are there, with the fast paths on or off (decided
    once per process; logs one warning when they are not)."""
    global _lossless_drain
    if _lossless_drain is None:
        missing = missing_drain_names()
        _lossless_drain = not missing
        if missing:
            log.warning(
                "the installed nats-py lacks %s: subscriptions end through its "
                "Subscription.drain(), which can drop a request that reaches one as it "
                "ends (its requester then waits for request_timeout)",
                ", ".join(missing),
            )
    return _lossless_drain


_fast: bool | None = None


def fast_paths() -> bool:
    """Whether natstream's fast paths are on (decided once per process; logs one
    warning when they are off because nats-py lacks something)."""
    global _fast
    if _fast is None:
        if os.environ.get(ENV_OFF):
            _fast = False
            log.info("natstream fast paths off (%s is set)", ENV_OFF)
        else:
            missing = missing_names()
            _fast = not missing
            if missing:
                log.warning(
                    "natstream fast paths off: the installed nats-py lacks %s; streams "
                    "work through nats-py's public API, slower (pin nats-py to a version "
                    "natstream was tested with to get them back)",
                    ", ".join(missing),
                )
    return _fast
