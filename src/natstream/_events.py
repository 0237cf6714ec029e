"""Connection events: what the ``on_connection_event`` hook of a :class:`Pool` or a
:class:`Subscriber` receives, and the Subscriber's watch over its one connection
(counted, logged at INFO, passed on to the hook)."""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client

from ._transport import safe_server

__all__ = [
    "ConnectionEvent",
    "ConnectionEventHook",
    "ConnectionEventKind",
    "ConnectionWatch",
    "check_hook",
    "notify",
]

log = logging.getLogger("natstream")


class ConnectionEventKind(enum.Enum):
    """What happened to a connection."""

    CONNECTED = "connected"  # opened (a Pool: each of its connections)
    DISCONNECTED = "disconnected"  # broke (not closed on purpose)
    RECONNECTED = "reconnected"  # back after a loss (a Pool: a new one in the lost one's place)
    LAME_DUCK = "lame_duck"  # the server announced it is shutting down
    CLOSED = "closed"  # closed: by close(), a Pool retiring it, or a loss nothing repairs


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One event of a connection of a :class:`Pool` or :class:`Subscriber`.

    Attributes:
        kind: what happened.
        server: the server's URL, without credentials (None when not known).
        time: when, in seconds of ``time.monotonic()``.
    """

    kind: ConnectionEventKind
    server: str | None
    time: float


ConnectionEventHook = Callable[[ConnectionEvent], object]
"""``on_connection_event``: a plain (not ``async``) function of one
:class:`ConnectionEvent`, called on the event loop as the event happens: it must
return quickly (start a task for slow work). What it raises is logged, not raised."""


def check_hook(hook: object) -> None:
    """Raise TypeError unless ``hook`` is None or a plain callable."""
    if hook is None:
        return
    function = hook
    while isinstance(function, functools.partial):
        function = function.func
    if not callable(hook) or inspect.iscoroutinefunction(function):
        raise TypeError(
            "on_connection_event must be a plain function taking a ConnectionEvent "
            f"(called on the event loop; start a task for async work), not {hook!r}"
        )


def notify(hook: ConnectionEventHook | None, kind: ConnectionEventKind, server: str | None) -> None:
    """Call ``hook`` with a new event now; whatever it raises is logged, not raised
    (the callers are connection callbacks that must not fail)."""
    if hook is None:
        return
    try:
        hook(ConnectionEvent(kind, server, time.monotonic()))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        log.exception("the on_connection_event hook raised on %s of %s", kind.value, server)


class ConnectionWatch:
    """A Subscriber's connection as events: nats-py's callbacks land here, are
    counted, logged at INFO with the server's URL (without credentials), and passed
    on to the hook.

    Args:
        hook: the application's ``on_connection_event``, or None.
        closing: whether the subscriber is closing (a disconnect is then its own).
    """

    def __init__(self, hook: ConnectionEventHook | None, closing: Callable[[], bool]) -> None:
        self.hook = hook
        self.nc: Client | None = None
        self.server: str | None = None  # the current or last server, without credentials
        self.reconnects = 0
        self.disconnects = 0
        self._closing = closing

    def connected(self, nc: Client) -> None:
        """The first connect succeeded on ``nc``."""
        self.nc = nc
        self._event(ConnectionEventKind.CONNECTED, "subscriber connected to %s")

    def _event(self, kind: ConnectionEventKind, message: str) -> None:
        nc = self.nc
        url = nc.connected_url if nc is not None else None
        if url is not None:
            self.server = safe_server(url.geturl())
        log.info(message, self.server)
        notify(self.hook, kind, self.server)

    async def on_disconnected(self) -> None:
        if self._closing() or self.nc is None:  # close() itself, or the first connect
            return
        self.disconnects += 1
        self._event(ConnectionEventKind.DISCONNECTED, "subscriber disconnected from %s")

    async def on_reconnected(self) -> None:
        self.reconnects += 1
        self._event(ConnectionEventKind.RECONNECTED, "subscriber reconnected to %s")

    async def on_lame_duck(self) -> None:
        self._event(ConnectionEventKind.LAME_DUCK, "subscriber: %s is in lame duck mode")

    async def on_closed(self) -> None:
        if self.nc is None:  # a first connect that failed: NoServersError says it
            return
        self._event(ConnectionEventKind.CLOSED, "subscriber: connection to %s closed")
