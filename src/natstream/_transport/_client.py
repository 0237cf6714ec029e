"""``FastClient``: nats-py's client with fast paths for natstream's hot messages.

nats-py parses the protocol with regular expressions and a coroutine per message,
and builds and parses headers generically. Here the parser (:mod:`._parser`) hands
stream replies and chosen subscriptions' messages to plain functions, in order, and
publishes are queued as ready-made commands. This leans on nats-py internals, all
listed in :mod:`._compat`; when one is missing natstream uses :class:`PlainLink`
(in :mod:`._link`) over nats-py's own client instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._protocol._frames import encode_headers, hpub_seq_command, parse_headers, publish_command
from ._parser import FastParser

__all__ = ["FastClient", "RawHandler", "light_msg_type"]

log = logging.getLogger("natstream")

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], "bool | None"]
"""Receives (subject, reply, payload, raw header block) straight from the parser;
returns True when it woke a consumer that should run before the parser goes on (a
stream's first reply), else None or False."""

MsgHandler = Callable[[Msg], object]

# Handlers called from the parser run in the read loop's task, synchronously: no
# cancellation of that task can reach them, so a CancelledError (or any other
# BaseException) one raises is its own failure, and would end the read loop for good.
# These two alone go on: they stop the process.
_PROPAGATE = (KeyboardInterrupt, SystemExit)
_CONNECTED = Client.CONNECTED


def light_msg_type(client: Client) -> type[Msg]:
    """A ``Msg`` subclass for header-less stream replies and packed items: ``data``,
    ``subject`` and ``reply`` in slots, every other field a class attribute
    (``headers`` None, the client the connection). Instances are ``Msg`` instances and
    print as such; setting another field on one sets it on that instance only.

    One class per connection: a class per stream would cost about 10 us to make and
    leave a reference cycle for the garbage collector at every stream's end.
    """
    return type(
        "Msg",
        (Msg,),
        {
            "__slots__": ("data", "subject", "reply"),
            "__module__": Msg.__module__,
            "__qualname__": Msg.__qualname__,
            "_client": client,
        },
    )


class FastClient(Client):
    """nats-py's client, with natstream's fast paths; also its own link (see
    :class:`natstream._transport._link.Link` for what each method promises).

    * its parser splits ``MSG``/``HMSG`` lines without regular expressions and hands
      stream replies (:meth:`stream_inbox`) and :meth:`set_direct` subscriptions'
      messages to plain functions, without nats-py's per-message coroutine, queue and
      task hop;
    * publishes are queued as whole commands (:meth:`queue_publish`,
      :meth:`queue_seq`) and the flusher woken without a coroutine per call.
    """

    fast = True
    writable = False  # see _status

    def __init__(self) -> None:
        super().__init__()
        self._ps = FastParser(self)
        self._mux: dict[bytes, RawHandler] = {}
        self._direct: dict[int, Callable[[Msg], None]] = {}
        self._mux_sid = -1
        self._mux_prefix = b""
        self._mux_at = 0
        self._mux_lock = asyncio.Lock()
        self.yield_soon = False  # the parser yields once after the current message
        self.item_type = light_msg_type(self)

    @property
    def nc(self) -> Client:
        return self

    # nats-py keeps its state in ``_status``; the drivers' per-message paths read
    # ``writable`` instead (a plain attribute, kept in step here), so they need no call.
    @property
    def _status(self) -> int:
        return self._state_now

    @_status.setter
    def _status(self, value: int) -> None:
        self._state_now = value
        self.writable = value == _CONNECTED

    # ------------------------------------------------------------ receiving

    async def stream_inbox(self, on_raw: RawHandler, on_msg: MsgHandler) -> tuple[str, bytes]:
        """A fresh reply subject whose messages go to ``on_raw``, straight from the
        parser (``on_msg`` is for links without a fast parser).

        All of them share one wildcard subscription per connection,
        ``<inbox>.*``; each stream's last token is 96 random bits, so nobody can guess
        another stream's inbox. Returns the subject and its token, for
        :meth:`drop_inbox`.
        """
        if self._mux_sid < 0:
            async with self._mux_lock:
                if self._mux_sid < 0:
                    prefix = self.new_inbox().encode()
                    sub = await self.subscribe(prefix.decode() + ".*", cb=_never_called)
                    self._mux_prefix = prefix + b"."
                    self._mux_at = len(self._mux_prefix)
                    self._mux_sid = sub._id
        token = secrets.token_hex(12).encode()
        self._mux[token] = on_raw
        return (self._mux_prefix + token).decode(), token

    def drop_inbox(self, token: bytes) -> None:
        self._mux.pop(token, None)

    def set_direct(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        self._direct[sub._id] = handler

    def message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Msg:
        """A ``Msg`` of this connection from the parser's raw parts. Anyone allowed to
        publish picks the subjects: they may not be UTF-8."""
        return Msg(
            _client=self,
            subject=subject.decode(errors="replace"),
            reply=reply.decode(errors="replace"),
            data=data,
            headers=parse_headers(headers),
        )

    def _dispatch(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Deliver a message of the shared stream inbox or of a :meth:`set_direct`
        subscription synchronously (called by the parser); False for any other
        subscription (nats-py's ``_process_msg`` must take it)."""
        if sid == self._mux_sid:
            stats = self.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            handler = self._mux.get(subject[self._mux_at :])
            if handler is not None:
                try:
                    if handler(subject, reply, data, headers):
                        self.yield_soon = True
                except _PROPAGATE:
                    raise
                except BaseException:  # a bug, or input no check foresaw: never the read loop
                    log.exception("a stream reply could not be handled; message dropped")
            return True
        direct = self._direct.get(sid)
        if direct is None:
            return False
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            msg = Msg(
                self,
                subject.decode(errors="replace"),
                reply.decode(errors="replace"),
                data,
                parse_headers(headers),
                _sid=sid,
            )
            direct(msg)
        except _PROPAGATE:
            raise
        except BaseException:  # see _PROPAGATE: nats-py's read loop ends on any of them
            log.exception("a direct subscription handler raised; message dropped")
        return True

    # ------------------------------------------------------------ sending

    def pending_size(self) -> int:
        return self._pending_data_size

    def queue_publish(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bool:
        if self._status != _CONNECTED or len(payload) > self._max_payload:
            return False
        block = None
        if headers:
            block = encode_headers(headers)
            if block is None:
                return False
        self._queue(publish_command(subject, reply, payload, block), len(payload))
        return True

    def queue_seq(self, prefix: bytes, seq: int, payload: bytes) -> int:
        # The responder's per-reply path: one call, the command's bytes built here.
        cmd = hpub_seq_command(prefix, seq, payload)
        self._pending.append(cmd)
        pending = self._pending_data_size = self._pending_data_size + len(cmd)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(payload)
        queue = self._flush_queue
        if queue is not None and queue.empty():
            self.kick_soon()
        return pending

    def _queue(self, cmd: bytes, size: int) -> None:
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size

    def write_now(self) -> bool:
        writer = getattr(self._transport, "_io_writer", None)  # TcpTransport's
        if (
            self._status != _CONNECTED
            or not isinstance(writer, asyncio.StreamWriter)
            or not self._pending
            or writer.transport.get_write_buffer_size()
        ):
            return False
        writer.writelines(self._pending)
        self._pending = []
        self._pending_data_size = 0
        return True

    def kick_soon(self) -> None:
        if self._written_without_flusher():
            return
        queue = self._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())

    async def round_trip(self, limit: float) -> float:
        # A late PONG is harmless here (see _process_pong), so a plain timeout is fine.
        async with asyncio.timeout(limit):
            return await self.rtt()

    async def kick(self) -> None:
        if self._written_without_flusher():
            return
        if 0 < self._max_pending_size < self._pending_data_size:
            await self._flush_pending(force_flush=True)
        else:
            queue = self._flush_queue
            if queue is not None and queue.empty():
                await self._flush_pending()

    def _written_without_flusher(self) -> bool:
        """True when nats-py's flusher task died while the connection is up (a
        transport error it did not expect; while reconnecting nats-py starts a new
        one): the queued commands are then written here, as its ``_flush_pending``
        does, and the wake-ups left in its queue settled, which would otherwise keep
        every "is the flusher idle?" check (``queue.empty()``) false for good."""
        flusher = self._flusher_task
        if (flusher is not None and not flusher.done()) or not self.is_connected:
            return False
        queue = self._flush_queue
        while queue is not None and not queue.empty():
            left = queue.get_nowait()
            if not left.done():
                left.set_result(None)
        transport = self._transport
        if self._pending and transport is not None:
            try:
                transport.writelines(self._pending[:])
            except (OSError, RuntimeError):
                return True  # the connection is going down; nats-py's error handling runs
            self._pending = []
            self._pending_data_size = 0
        return True

    # ------------------------------------------------------------ nats-py overrides

    async def _process_pong(self) -> None:
        # nats-py sets the result of the oldest PING's future even when its waiter was
        # cancelled (a timed-out flush() or rtt()): InvalidStateError then ends the
        # read loop for good while the connection still looks connected.
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        # nats-py calls this when a subscription ends (unsubscribe, drain).
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        # Always the tolerant parser: nats-py's raises on a status line that is not
        # UTF-8, inside its read loop, which then stops reading for good.
        return parse_headers(headers)


async def _never_called(msg: Any) -> None:
    """Callback of the shared stream inbox: its messages are dispatched directly."""
