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
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._protocol._frames import (
    encode_headers,
    hpub_seq_command,
    hpub_seq_id_command,
    parse_headers,
    publish_command,
)
from ._denials import Denials, OnDenied
from ._parser import FastParser

__all__ = ["FastClient", "Inbox", "Listening", "RawHandler", "light_msg_type"]

log = logging.getLogger("natstream")

RawHandler = Callable[[bytes, bytes, bytes, "bytes | None"], "bool | None"]
"""Receives (subject, reply, payload, raw header block) straight from the parser;
returns True when it woke a consumer that should run before the parser goes on (a
stream's first reply), else None or False."""

MsgHandler = Callable[[Msg], object]


class Listening(Protocol):
    """A subscription made by :meth:`Link.listen`."""

    async def close(self, *, promptly: bool = True) -> None:
        """Unsubscribe: the server stops delivering. Idempotent. ``promptly=False``
        when nothing more is expected: the UNSUB may then wait for the connection's
        next write instead of costing one of its own."""
        ...


class Inbox(Protocol):
    """A stream's reply subjects, subscribed by :meth:`Link.open_inbox`.

    Attributes:
        base: the inbox; every reply subject is ``<base>.<n>``.
        subject: the request's reply subject, ``<base>.0``.
    """

    base: str
    subject: str

    def renew(self) -> str:
        """A reply subject of this inbox for the next control message to carry,
        subscribed before anything published on the link after this call: a fresh
        one, or the last fresh one again while the responder has not replied to it
        (where the link can tell)."""
        ...

    async def close(self, *, promptly: bool = True) -> None:
        """Unsubscribe every reply subject, as :meth:`Listening.close`. Idempotent."""
        ...


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
      stream replies (:meth:`listen`) and :meth:`set_direct` subscriptions'
      messages to plain functions, without nats-py's per-message coroutine, queue and
      task hop;
    * publishes are queued as whole commands (:meth:`queue_publish`,
      :meth:`queue_seq`) and the flusher woken without a coroutine per call.
    """

    fast = True
    writable = False  # see _status
    _ps: FastParser

    def __init__(self) -> None:
        super().__init__()
        self._ps = FastParser(self)
        self._raw: dict[int, RawHandler] = {}  # sid -> handler (see listen)
        self._direct: dict[int, Callable[[Msg], None]] = {}
        self.yield_soon = False  # the parser yields once after the current message
        self.parsing = False  # the parser is reading (set and reset by it)
        self.write_soon = False  # a kick came meanwhile: the parser writes at its end
        self.item_type = light_msg_type(self)
        self.denials = Denials(exact=True)
        self._inbox_base = ""

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

    def new_inbox(self) -> str:
        """A reply subject nobody can guess: the inbox prefix and 96 random bits."""
        base = self._inbox_base
        if not base:
            base = self._inbox_base = super().new_inbox().rpartition(".")[0]
        return f"{base}.{secrets.token_hex(12)}"

    async def listen(
        self, subject: str, on_raw: RawHandler, on_msg: MsgHandler, *, lane: object = None
    ) -> Listening:
        """Subscribe ``subject``: its messages go to ``on_raw`` straight from the
        parser (or first to ``lane``'s fast path in C, see :meth:`Link.listen`)."""
        return _RawListening(self, self._listen(subject, on_raw, lane))

    async def open_inbox(
        self, on_raw: RawHandler, on_msg: MsgHandler, on_denied: OnDenied, *, lane: object = None
    ) -> Inbox:
        return _RawInbox(self, self.new_inbox(), on_raw, on_denied, lane)

    def _listen(self, subject: str, on_raw: RawHandler, lane: object) -> int:
        """Subscribe ``subject``; its sid. The SUB is queued: it reaches the server
        before anything published on this connection after this call, and it is
        replayed on a reconnect."""
        self._sid += 1
        sid = self._sid
        self._subs[sid] = Subscription(self, sid, subject)
        self._raw[sid] = on_raw
        if lane is not None:
            self._ps.add_lane(sid, lane)
        self._queue_command(b"SUB %s %d\r\n" % (subject.encode(), sid))
        return sid

    def _relisten(self, sid: int, on_raw: RawHandler, lane: object) -> None:
        """Hand subscription ``sid``'s messages to ``on_raw`` (and ``lane``) from now on."""
        if sid in self._raw:
            self._raw[sid] = on_raw
            if lane is not None:
                self._ps.add_lane(sid, lane)

    def _stop_listening(self, sid: int, promptly: bool) -> None:
        if self._raw.pop(sid, None) is None:
            return
        self._ps.remove_lane(sid)
        self._subs.pop(sid, None)
        if self.writable:
            self._queue_command(b"UNSUB %d\r\n" % sid)
            if promptly:
                self.kick_soon()

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
        """Deliver a message of a :meth:`listen` or :meth:`set_direct` subscription
        synchronously (called by the parser); False for any other subscription
        (nats-py's ``_process_msg`` must take it)."""
        raw = self._raw.get(sid)
        if raw is not None:
            stats = self.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            try:
                if raw(subject, reply, data, headers):
                    self.yield_soon = True
            except _PROPAGATE:
                raise
            except BaseException as exc:  # a bug, or input no check foresaw: never the read loop
                self._raw_failed(exc)
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

    def _raw_failed(self, exc: BaseException) -> None:
        """A stream message's handler (or its fast path in C) raised ``exc``."""
        log.error("a stream message could not be handled; message dropped", exc_info=exc)

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

    def queue_seq_id(self, prefix: bytes, seq: int, tail: bytes, payload: bytes) -> int:
        cmd = hpub_seq_id_command(prefix, seq, tail, payload)
        self._pending.append(cmd)
        pending = self._pending_data_size = self._pending_data_size + len(cmd)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(payload)
        queue = self._flush_queue
        if queue is not None and queue.empty():
            self.kick_soon()
        return pending

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

    def queue_batch(self, cmds: bytes, count: int, nbytes: int) -> int:
        # The C fill of the responder's replies: ``count`` data commands in one piece.
        self._pending.append(cmds)
        pending = self._pending_data_size = self._pending_data_size + len(cmds)
        stats = self.stats
        stats["out_msgs"] += count
        stats["out_bytes"] += nbytes
        queue = self._flush_queue
        if queue is not None and queue.empty():
            self.kick_soon()
        return pending

    def _queue_command(self, cmd: bytes) -> None:
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)

    def _queue(self, cmd: bytes, size: int) -> None:
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size

    def write_now(self) -> bool:
        if not self._pending:
            return True
        writer = getattr(self._transport, "_io_writer", None)  # TcpTransport's
        if (
            self._status != _CONNECTED
            or not isinstance(writer, asyncio.StreamWriter)
            or writer.transport.get_write_buffer_size()
        ):
            return False
        writer.writelines(self._pending)
        self._pending = []
        self._pending_data_size = 0
        return True

    def kick_soon(self) -> None:
        if self.parsing:
            # The parser writes when it is done with this read, or kicks then: one
            # write for all that was queued meanwhile, and no wake-up of the flusher
            # for nothing (its task would find the commands written).
            self.write_soon = True
            return
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

    async def _process_err(self, err_msg: str) -> None:
        # The parser passes the server's text as it came (subjects keep their case);
        # nats-py wants it lower-cased. A refusal is also reported to its watchers.
        self.denials.server_error(err_msg)
        await super()._process_err(err_msg.lower())

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        # Always the tolerant parser: nats-py's raises on a status line that is not
        # UTF-8, inside its read loop, which then stops reading for good.
        return parse_headers(headers)


class _RawInbox:
    """A stream's reply subjects on a fast link, each subscribed without a wildcard.

    nats-server adds or removes a subscription with a wildcard at a cost of its own
    (10-30 us here), which a request sent behind it waits for; a literal one costs
    about nothing. So ``<base>.0`` is subscribed for the request, each renewal
    subscribes ``<base>.<n>``, and the older subjects are unsubscribed once a message
    arrives on a newer one: the responder has moved, and what it sent to them has
    arrived before (the server keeps the order of one connection's messages; a
    message for a dropped subject would be lost). A responder that never moves
    (through an import) is offered the same fresh subject again, never a third.
    """

    __slots__ = (
        "_generation",
        "_lane",
        "_listened",
        "_moved",
        "_nc",
        "_on_denied",
        "_on_raw",
        "base",
        "subject",
    )

    def __init__(
        self, nc: FastClient, base: str, on_raw: RawHandler, on_denied: OnDenied, lane: object
    ) -> None:
        self._nc = nc
        self.base = base
        self.subject = f"{base}.0"
        self._on_raw = on_raw
        self._on_denied = on_denied
        self._lane = lane
        self._listened: list[tuple[int, str]] = []  # (sid, subject), oldest first
        self._moved = True  # the responder has replied to the newest subject
        self._generation = 0
        self._add(self.subject, on_raw, lane)

    def _add(self, subject: str, on_raw: RawHandler, lane: object) -> None:
        self._nc.denials.watch(subject, self._on_denied)
        self._listened.append((self._nc._listen(subject, on_raw, lane), subject))

    def renew(self) -> str:
        if not self._listened:  # closed
            return ""
        if self._moved:
            self._moved = False
            self._generation += 1
            self._add(f"{self.base}.{self._generation}", self._on_first, None)
        return self._listened[-1][1]

    def _on_first(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """The first message on the newest subject: the responder moved there."""
        self._moved = True
        *old, (newest, _) = self._listened
        self._nc._relisten(newest, self._on_raw, self._lane)
        self._drop(old, promptly=False)
        del self._listened[:-1]
        return bool(self._on_raw(subject, reply, data, headers))

    def _drop(self, listened: list[tuple[int, str]], *, promptly: bool) -> None:
        for sid, subject in listened:
            self._nc._stop_listening(sid, promptly)
            self._nc.denials.unwatch(subject, self._on_denied)

    async def close(self, *, promptly: bool = True) -> None:
        self._drop(self._listened, promptly=promptly)
        self._listened.clear()


class _RawListening:
    """A :meth:`FastClient.listen` subscription; :meth:`close` ends it."""

    __slots__ = ("_nc", "_sid")

    def __init__(self, nc: FastClient, sid: int) -> None:
        self._nc = nc
        self._sid = sid

    async def close(self, *, promptly: bool = True) -> None:
        self._nc._stop_listening(self._sid, promptly)
