"""A nats-py client with fast paths for natstream's most frequent messages.

nats-py parses the protocol with regular expressions and a coroutine per message,
and builds and parses headers generically. A natstream data message carries a
single header, ``Ns-Seq``, so both directions get a short path here; anything else
goes through nats-py unchanged. This leans on nats-py internals (``Parser``,
``_ps``, ``_process_msg``, ``_process_headers``, ``_pending``, ``_pending_data_size``,
``_max_pending_size``, ``_flush_queue``, ``_status``, ``_transport._io_writer``),
pinned by the ``nats-py<3`` requirement and exercised by every test that streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ProtocolError
from nats.protocol.parser import ERR_RE, INFO_RE, OK_RE, PING_RE, PONG_RE, Parser

__all__ = [
    "DirectHandler",
    "FastClient",
    "hpub_prefix",
    "hpub_seq_command",
    "kick_flusher",
    "kick_soon",
    "parse_headers",
]


_log = logging.getLogger("natstream")

DirectHandler = Callable[[bytes, bytes, bytes, "bytes | None"], "bool | None"]
"""Receives (subject, reply, payload, raw header block) straight from the parser;
returns True when it woke a consumer that should run before the parser goes on (a
stream's first reply), else None or False."""

SEQ_PREFIX = b"NATS/1.0\r\nNs-Seq: "
SEQ_AT = len(SEQ_PREFIX)


_HDR_LINE = b"NATS/1.0"


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """Parse a raw NATS header block as nats-py does (``Status``/``Description`` from the
    status line), synchronously, with a short path for a lone ``Ns-Seq`` header."""
    if not raw:
        return None
    if raw.startswith(SEQ_PREFIX):
        end = len(raw) - 4
        if raw.find(b"\r\n", SEQ_AT) == end:
            value = raw[SEQ_AT:end]
            if value.isdigit():
                return {"Ns-Seq": value.decode()}
    small = len(raw) <= _PARSED_SIZE
    if small:
        known = _parsed.get(raw)
        if known is not None:
            return dict(known) if known else None
    if not raw.startswith(_HDR_LINE):
        return None
    line_end = raw.find(b"\r\n")
    if line_end < 0:
        return None
    headers: dict[str, str] = {}
    status = raw[len(_HDR_LINE) : line_end].strip()
    if status:
        code, _, description = status.partition(b" ")
        if code.isdigit():
            headers["Status"] = code.decode()
        if description:
            headers["Description"] = description.decode("utf-8", "replace")
    headers.update(_parse_header_lines(raw[line_end + 2 :]))
    if small:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[raw] = dict(headers)
    return headers or None


# Header blocks that recur (a natstream request's without a deadline, end markers,
# status replies) are
# parsed once: small blocks and their result, a copy of which each caller gets.
_PARSED_SIZE = 128  # bytes
_PARSED_MAX = 512  # blocks; then forgotten all at once
_parsed: dict[bytes, dict[str, str]] = {}


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines, exactly as nats-py's ``Client._parse_header_lines`` reads
    them (names: ASCII without whitespace, else skipped; values: stripped, UTF-8 with
    replacement), without its per-character check."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:  # whitespace in the name (str.isspace's sense)
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _light_msg_type(client: Client) -> type[Msg]:
    """A ``Msg`` subclass for header-less stream replies and packed items: ``data``,
    ``subject`` and ``reply`` in slots, every other field a class attribute
    (``headers`` None, ``_client`` the connection). Instances are ``Msg`` instances and
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
    """nats-py's client, with fast paths for natstream's hot messages.

    * its protocol parser (:class:`_FastParser`) splits ``MSG``/``HMSG`` lines without
      regular expressions and hands stream replies to a plain function, in order,
      without nats-py's per-message coroutine, ``Msg``, queue and task hop;
    * :meth:`set_direct` does the same for any subscription whose handler is quick;
    * a lone ``Ns-Seq`` header is parsed without the generic parser.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ps = _FastParser(self)
        self._mux: dict[bytes, DirectHandler] = {}
        self._direct: dict[int, Callable[[Msg], None]] = {}
        self._mux_sid = -1
        self._mux_prefix = b""
        self._mux_at = 0
        self._mux_lock = asyncio.Lock()
        self.yield_soon = False  # the parser yields once after the current message
        self.item_type = _light_msg_type(self)

    async def stream_inbox(self, handler: DirectHandler) -> tuple[str, bytes]:
        """A fresh reply subject whose messages go to ``handler``, straight from the
        parser. ``handler`` should not raise (an exception is logged and the message
        dropped) and must keep anything slow (user code) out of the read loop's way.

        All of them share one wildcard subscription per connection,
        ``<inbox_prefix>.<random>.*``; each stream's last token is 96 random bits, so
        nobody can guess another stream's inbox. Returns the subject and its token,
        for :meth:`drop_inbox`.
        """
        if self._mux_sid < 0:
            async with self._mux_lock:
                if self._mux_sid < 0:
                    prefix = bytes(self._inbox_prefix) + b"." + secrets.token_hex(12).encode()
                    sub = await self.subscribe(prefix.decode() + ".*", cb=_never_called)
                    self._mux_prefix = prefix + b"."
                    self._mux_at = len(self._mux_prefix)
                    self._mux_sid = sub._id
        token = secrets.token_hex(12).encode()
        self._mux[token] = handler
        return (self._mux_prefix + token).decode(), token

    def drop_inbox(self, token: bytes) -> None:
        """Stop delivering to a :meth:`stream_inbox`; later replies to it are dropped."""
        self._mux.pop(token, None)

    def set_direct(self, sid: int, handler: Callable[[Msg], None]) -> None:
        """Hand subscription ``sid``'s messages to ``handler`` straight from the parser,
        in order, instead of nats-py's queue and callback task (one event-loop hop
        less per message, and no pending limits: ``handler`` must be quick and must
        not block). An exception it raises is logged, never propagated."""
        self._direct[sid] = handler

    def queue_publish(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bool:
        """Queue a publish for the flusher, as nats-py's ``publish`` does, without its
        per-call header encoding; the caller then awaits :func:`kick_flusher` (or
        writes at once with :meth:`write_now`).

        ``subject`` and ``reply`` must be valid (natstream checks or makes them).
        Returns False, having done nothing, when nats-py must take it: not connected,
        payload over max_payload, or headers :func:`encode_headers` leaves to it.
        """
        if self._status != Client.CONNECTED or len(payload) > self._max_payload:
            return False
        target = f"{subject} {reply}".encode() if reply else subject.encode()
        if headers:
            block = encode_headers(headers)
            if block is None:
                return False
            hlen = len(block)
            cmd = b"HPUB %s %d %d\r\n%s%s\r\n" % (target, hlen, hlen + len(payload), block, payload)
        else:
            cmd = b"PUB %s %d\r\n%s\r\n" % (target, len(payload), payload)
        self._pending.append(cmd)
        self._pending_data_size += len(cmd)
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(payload)
        return True

    def write_now(self) -> bool:
        """Write the queued commands to the socket now, from this call, instead of at
        the flusher's next turn (a stream's request: the caller has more to do before
        it awaits, and the reply cannot come sooner than the request leaves).

        Returns False, having done nothing, when the flusher must take them: not
        connected; not a TCP transport (nats-py's WebSocket transport sends only when
        drained); or anything already waiting for the socket (the flusher then waits
        for it to drain, which is the back-pressure on a fast publisher).
        """
        writer = getattr(self._transport, "_io_writer", None)  # TcpTransport's
        if (
            self._status != Client.CONNECTED
            or not isinstance(writer, asyncio.StreamWriter)
            or not self._pending
            or writer.transport.get_write_buffer_size()
        ):
            return False
        writer.writelines(self._pending)
        self._pending = []
        self._pending_data_size = 0
        return True

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

    def _dispatch(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Deliver a message of the shared stream inbox or of a :meth:`set_direct`
        subscription synchronously; False for any other subscription (nats-py's
        ``_process_msg`` must take it)."""
        if sid == self._mux_sid:
            stats = self.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            handler = self._mux.get(subject[self._mux_at :])
            if handler is not None:
                try:
                    if handler(subject, reply, data, headers):
                        self.yield_soon = True
                except Exception:  # a bug, or input no check foresaw: never the read loop
                    _log.exception("a stream reply could not be handled; message dropped")
            return True
        direct = self._direct.get(sid)
        if direct is None:
            return False
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            # Anyone allowed to publish here picks the reply subject: it may not be UTF-8.
            msg = Msg(
                self,
                subject.decode(errors="replace"),
                reply.decode(errors="replace"),
                data,
                parse_headers(headers),
                _sid=sid,
            )
            direct(msg)
        except Exception:
            _log.exception("a direct subscription handler raised; message dropped")
        return True

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        # Always the tolerant parser: nats-py's raises on a status line that is not
        # UTF-8, inside its read loop, which then stops reading for good.
        return parse_headers(headers)


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token


def encode_headers(headers: dict[str, str]) -> bytes | None:
    """A NATS header block, or None when a name is not a plain token or a value holds
    a line break (nats-py then encodes, rejects or cleans it its own way)."""
    lines = [b"NATS/1.0\r\n"]
    for item in headers.items():
        line = _encoded.get(item)
        if line is None:
            name, value = item
            if not _HEADER_NAME.fullmatch(name) or "\r" in value or "\n" in value:
                return None
            line = f"{name}: {value.strip()}\r\n".encode()
            if len(value) <= _ENCODED_VALUE:
                if len(_encoded) >= _ENCODED_MAX:
                    _encoded.clear()
                _encoded[item] = line
        lines.append(line)
    lines.append(b"\r\n")
    return b"".join(lines)


# Header lines recur too (Ns-V: 1, Ns-Win: ..., Ns-End: 1): each is checked and
# encoded once. Lines with long values (tokens, traces) are not kept.
_ENCODED_MAX = 1024  # lines; then forgotten all at once
_ENCODED_VALUE = 64  # characters
_encoded: dict[tuple[str, str], bytes] = {}


class _FastParser(Parser):
    """The NATS protocol parser, reading messages with ``bytes.find``/``split``
    instead of nats-py's regular expressions, and without a coroutine per message
    for the shared stream inbox (:meth:`FastClient._dispatch`).

    Other operations (``PING``, ``PONG``, ``INFO``, ``-ERR``, ``+OK``) go to the same
    client methods nats-py's parser calls. A malformed ``MSG``/``HMSG`` line or an
    unknown operation raises :class:`nats.errors.ProtocolError`, which makes nats-py
    drop the connection, as its own parser does.
    """

    nc: FastClient

    def reset(self) -> None:
        super().reset()
        self._generation = getattr(self, "_generation", 0) + 1
        self._wanted = 0  # length the buffered bytes must reach before parsing again

    async def parse(self, data: bytes = b"") -> None:
        if self.buf:
            self.buf.extend(data)
            if len(self.buf) < self._wanted:
                return  # a large message still arriving: do not copy and rescan it yet
            data = bytes(self.buf)
            self.buf.clear()
        self._wanted = 0
        generation = self._generation
        nc = self.nc
        dispatch = nc._dispatch
        pos = 0
        size = len(data)
        while pos < size:
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                break
            if data.startswith(b"MSG ", pos):
                args = data[pos + 4 : line_end].split()
                nargs = len(args)
                if nargs == 3:
                    subject, sid_b, len_b = args
                    reply = b""
                elif nargs == 4:
                    subject, sid_b, reply, len_b = args
                else:
                    raise ProtocolError("nats: malformed MSG")
                hlen_b = b"0"
            elif data.startswith(b"HMSG ", pos):
                args = data[pos + 5 : line_end].split()
                nargs = len(args)
                if nargs == 4:
                    subject, sid_b, hlen_b, len_b = args
                    reply = b""
                elif nargs == 5:
                    subject, sid_b, reply, hlen_b, len_b = args
                else:
                    raise ProtocolError("nats: malformed MSG")
            else:
                pos = await self._control(data, pos, line_end + 2)
                if generation != self._generation:
                    return  # the client reset the parser (reconnecting): drop the rest
                continue
            try:
                sid = int(sid_b)
                total = int(len_b)
                hlen = int(hlen_b)
            except ValueError:
                raise ProtocolError("nats: malformed MSG") from None
            if not 0 <= hlen <= total:
                raise ProtocolError("nats: malformed MSG")
            start = line_end + 2
            stop = start + total
            if stop + 2 > size:
                self._wanted = stop + 2 - pos  # bytes this message needs from ``pos``
                break  # the payload has not all arrived
            if hlen:
                headers: bytes | None = data[start : start + hlen]
                payload = data[start + hlen : stop]
            else:
                headers = None
                payload = data[start:stop]
            pos = stop + 2
            if not dispatch(sid, subject, reply, payload, headers):
                await nc._process_msg(sid, subject, reply, payload, headers)  # type: ignore[arg-type]
                if generation != self._generation:
                    return
            elif nc.yield_soon:
                # A consumer waits for this message (a stream's first reply): let it
                # have it before the rest of this read is parsed.
                nc.yield_soon = False
                await asyncio.sleep(0)
                if generation != self._generation:
                    return
        if pos < size:
            self.buf.extend(data[pos:] if pos else data)

    async def _control(self, data: bytes, pos: int, end: int) -> int:
        """Handle the non-message operation in ``data[pos:end]``; returns ``end``."""
        nc = self.nc
        line = data[pos:end]
        if line == b"PING\r\n" or PING_RE.match(line):
            await nc._process_ping()
        elif line == b"PONG\r\n" or PONG_RE.match(line):
            await nc._process_pong()
        elif OK_RE.match(line):
            pass
        elif (info := INFO_RE.match(line)) is not None:
            await nc._process_info(json.loads(info.group(1).decode()))
        elif (err := ERR_RE.match(line)) is not None:
            message = err.group(1)
            await nc._process_err(message.decode().lower() if message else "")
        else:
            raise ProtocolError("nats: unknown protocol")
        return end


async def _never_called(msg: Any) -> None:
    """Callback of the shared stream inbox: its messages are dispatched directly."""


def hpub_prefix(subject: str, reply: str) -> bytes:
    """The start of an ``HPUB`` command to ``subject`` with ``reply`` (see
    :func:`hpub_seq_command`)."""
    target = f"{subject} {reply}" if reply else subject
    return b"HPUB %s " % target.encode()


_SEQ_HDR_LEN = len(b"NATS/1.0\r\nNs-Seq: \r\n\r\n")


def hpub_seq_command(prefix: bytes, seq: int, payload: bytes) -> bytes:
    """The ``HPUB`` command of a data message whose only header is ``Ns-Seq: seq``."""
    hlen = _SEQ_HDR_LEN + len(str(seq))
    return b"%s%d %d\r\nNATS/1.0\r\nNs-Seq: %d\r\n\r\n%s\r\n" % (
        prefix,
        hlen,
        hlen + len(payload),
        seq,
        payload,
    )


def kick_soon(nc: Client) -> None:
    """Wake nats-py's flusher from sync code, after queueing commands. Unlike
    :func:`kick_flusher` it never waits for a full buffer to drain (the callers
    bound what they queue between awaits). Without a flusher: see
    :func:`_written_without_flusher`.
    """
    if _written_without_flusher(nc):
        return
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())


def _written_without_flusher(nc: Client) -> bool:
    """True when nats-py's flusher task died while the connection is up (a transport
    error it did not expect; while reconnecting nats-py starts a new one): the queued
    commands are then written here, as its ``_flush_pending`` does, and the wake-ups
    left in its queue settled, which would otherwise keep every "is the flusher
    idle?" check (``queue.empty()``) false for good."""
    flusher = nc._flusher_task
    if (flusher is not None and not flusher.done()) or not nc.is_connected:
        return False
    queue = nc._flush_queue
    while queue is not None and not queue.empty():
        left = queue.get_nowait()
        if not left.done():
            left.set_result(None)
    transport = nc._transport
    if nc._pending and transport is not None:
        try:
            transport.writelines(nc._pending[:])
        except (OSError, RuntimeError):
            return True  # the connection is going down; nats-py's error handling runs
        nc._pending = []
        nc._pending_data_size = 0
    return True


async def kick_flusher(nc: Client) -> None:
    """After queueing commands on ``nc._pending`` (:meth:`FastClient.queue_publish`,
    the responder's data fast path): wake nats-py's flusher, or wait for it when the
    pending buffer is over nats-py's limit (as its ``publish`` does). Without a
    flusher: see :func:`_written_without_flusher`."""
    if _written_without_flusher(nc):
        return
    if 0 < nc._max_pending_size < nc._pending_data_size:
        await nc._flush_pending(force_flush=True)
    else:
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            await nc._flush_pending()
