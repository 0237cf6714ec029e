"""``Dispatcher``: what a subscriber does with each request and control message.

A request becomes a stream (its machine, its control routing) or is turned away at
once with an error marker: malformed headers (400), a subscriber or subscription
closing (503, retryable), too many streams (503, retryable), too large (413).
Inbox-routed control messages arrive on the subscriber's one wildcard subscription
and go to their stream by token; service-routed ones reach each stream's own
subscription (see docs/protocol.md, "Control routing").
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from .._errors import PermissionDeniedError
from .._protocol import HeaderError, ResponderMachine, parse_request_headers
from .._protocol._frames import IMPORT_REPLY_PREFIX
from .._protocol._wire import HDR_CONTROL
from .._transport import Link, subscribe_live
from ._request import BAD_REQUEST, BUSY, SHUTTING_DOWN, TOO_LARGE
from ._sender import send_rejection
from ._stream import ResponderStream
from ._subscription import StreamSubscription

__all__ = ["Dispatcher", "subscribe_control"]

log = logging.getLogger("natstream")


class Dispatcher:
    """Requests and control messages of one subscriber's connection.

    Args:
        link: the connection.
        control_prefix: the prefix of inbox-routed control subjects, "" when every
            stream routes its control through the service subjects.
        accepting: whether the subscriber takes new streams (else 503 "shutting down").
        spawn: runs a send as a named task the subscriber stops when it closes.
        stall_factor, max_duration, max_request_size, plain_end_empty: the
            subscriber's options (see :class:`~natstream.Subscriber`).
    """

    def __init__(
        self,
        link: Link,
        control_prefix: str,
        *,
        accepting: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        stall_factor: float,
        max_duration: float | None,
        max_request_size: int | None,
        plain_end_empty: bool,
    ) -> None:
        self.link = link
        self.control_prefix = control_prefix
        self.controls: dict[str, ResponderStream] = {}  # inbox-routed streams by token
        self._accepting = accepting
        self._spawn = spawn
        self._stall_factor = stall_factor
        self._max_duration = max_duration
        self._max_request_size = max_request_size
        self._plain_end_empty = plain_end_empty

    def serve(self, handle: StreamSubscription, msg: Msg) -> None:
        """A request for ``handle`` arrived (from the connection's read loop: no I/O
        here but queued or spawned sends)."""
        if not msg.reply:
            return
        headers = msg.headers
        if headers and HDR_CONTROL in headers:
            # A stream's control message caught by a wildcard subscription: the
            # stream's own subscription takes it; it is never a request.
            return
        link = self.link
        now = time.monotonic()
        try:
            options = parse_request_headers(headers)
        except HeaderError as exc:
            self._reject(handle, msg, None, str(exc), BAD_REQUEST, False)
            return
        token = secrets.token_hex(12)
        # Through an account import (the server's _R_ reply subjects) control is
        # always service-routed: a reply subject on every reply would leave the
        # server one mapping per reply.
        imported = msg.reply.startswith(IMPORT_REPLY_PREFIX)
        service = imported or not self.control_prefix
        machine = ResponderMachine(
            options,
            now,
            stall_factor=self._stall_factor,
            max_duration=self._max_duration,
            stream_id=token if service else None,
        )
        if not self._accepting() or handle.stopping:
            self._reject(handle, msg, machine, SHUTTING_DOWN, BUSY, True)
            return
        if not handle._admit():
            self._reject(handle, msg, machine, "busy: too many streams", BUSY, True)
            return
        limit = self._max_request_size
        if limit is not None and len(msg.data) > limit:
            message = f"request of {len(msg.data)} bytes exceeds the limit of {limit}"
            self._reject(handle, msg, machine, message, TOO_LARGE, False)
            return
        if not machine.v1:
            control = None
        elif service:
            control = f"{msg.subject}.{token}"
        else:
            control = f"{self.control_prefix}.{token}"
        stream = handle._open_stream(link, msg, machine, control, token, imported=imported)
        if control is not None and not service:
            self.controls[token] = stream
        handle._serve(stream)

    def control(self, msg: Msg) -> None:
        """An inbox-routed control message: to its stream, by the subject's last token."""
        stream = self.controls.get(msg.subject.rpartition(".")[2])
        if stream is not None:
            stream.on_control(msg)

    def drop(self, token: str) -> None:
        """The stream of ``token`` is over: its control messages go nowhere now."""
        self.controls.pop(token, None)

    def _reject(
        self,
        handle: StreamSubscription,
        msg: Msg,
        machine: ResponderMachine | None,
        message: str,
        code: int,
        retryable: bool,
    ) -> None:
        """Answer a request with an error marker alone, from a task."""
        if code != BUSY:
            handle._refused(code, message)
        self._spawn(
            send_rejection(
                self.link, msg, machine, message, code, retryable, self._plain_end_empty
            ),
            f"natstream-stream-{handle.subject}-rejected-{code}",
        )


async def subscribe_control(
    link: Link, dispatch: Dispatcher, inbox_prefix: str, *, service_routed: bool
) -> str:
    """Subscribe the inbox-routed control subjects of a subscriber and return their
    prefix; "" (every stream routes its control through the service subjects) when
    ``service_routed`` or when the server refuses that subscription (least-privilege
    permissions: logged at INFO, it is expected there)."""
    if service_routed:
        return ""
    prefix = f"{inbox_prefix}.{secrets.token_hex(12)}"

    async def on_control(msg: Msg) -> None:
        dispatch.control(msg)

    try:
        await subscribe_live(
            link.nc,
            f"{prefix}.*",
            on_control,
            pending_bytes_limit=0,
            direct=dispatch.control,
            denials=link.denials,
            refusal_expected=True,
        )
    except PermissionDeniedError:
        log.info(
            "control messages come through the service subjects: this connection may "
            "not subscribe %s.* (see docs/security.md)",
            inbox_prefix,
        )
        return ""
    return prefix
