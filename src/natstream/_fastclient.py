"""A nats-py client with fast paths for natstream's most frequent messages.

nats-py builds and parses headers generically: a dict walk and a regex per header
on publish, a line split per header on receive. A natstream data message carries a
single header, ``Ns-Seq``, so both directions get a short path here; anything else
goes through nats-py unchanged. This leans on two nats-py internals
(``_process_headers``, ``_send_command``), pinned by the ``nats-py<3`` requirement
and exercised by every test that streams.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

__all__ = ["DirectHandler", "FastClient", "hpub_seq", "parse_headers", "publish_seq"]


DirectHandler = Callable[[bytes, bytes, bytes, "bytes | None"], None]
"""Receives (subject, reply, payload, raw header block) straight from the parser."""

_SEQ_PREFIX = b"NATS/1.0\r\nNs-Seq: "
_SEQ_AT = len(_SEQ_PREFIX)


_HDR_LINE = b"NATS/1.0"


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """Parse a raw NATS header block as nats-py does (``Status``/``Description`` from the
    status line), synchronously, with a short path for a lone ``Ns-Seq`` header."""
    if not raw:
        return None
    if raw.startswith(_SEQ_PREFIX):
        end = len(raw) - 4
        if raw.find(b"\r\n", _SEQ_AT) == end:
            value = raw[_SEQ_AT:end]
            if value.isdigit():
                return {"Ns-Seq": value.decode()}
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
    headers.update(Client._parse_header_lines(raw[line_end + 2 :]))
    return headers or None


class FastClient(Client):
    """nats-py's client, with two additions for natstream's hot paths.

    * a lone ``Ns-Seq`` header is parsed without the generic parser;
    * a subscription registered with :meth:`set_direct` gets its messages handed to a
      plain function straight from the protocol parser, in order, without nats-py's
      per-message ``Msg``, queue and task hop. The function must not block or raise.
    """

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DirectHandler] = {}
        self._mux: dict[bytes, DirectHandler] = {}
        self._mux_sid = -1
        self._mux_prefix = b""
        self._mux_lock = asyncio.Lock()

    async def stream_inbox(self, handler: DirectHandler) -> tuple[str, bytes]:
        """A fresh reply subject whose messages go to ``handler`` (see :meth:`set_direct`).

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
                    self._mux_sid = sub._id
        token = secrets.token_hex(12).encode()
        self._mux[token] = handler
        return (self._mux_prefix + token).decode(), token

    def drop_inbox(self, token: bytes) -> None:
        """Stop delivering to a :meth:`stream_inbox`; later replies to it are dropped."""
        self._mux.pop(token, None)

    def set_direct(self, sid: int, handler: DirectHandler) -> None:
        self._direct[sid] = handler

    def clear_direct(self, sid: int) -> None:
        self._direct.pop(sid, None)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if sid == self._mux_sid:
            stats = self.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            mux_handler = self._mux.get(subject[len(self._mux_prefix) :])
            if mux_handler is not None:
                mux_handler(subject, reply, data, headers)
            return
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        # Always the tolerant parser: nats-py's raises on a status line that is not
        # UTF-8, inside its read loop, which then stops reading for good.
        return parse_headers(headers)


async def _never_called(msg: Any) -> None:
    """Callback of the shared stream inbox: its messages are dispatched directly."""


def hpub_seq(subject: str, reply: str, seq: int, payload: bytes) -> bytes:
    """The HPUB command of a data message whose only header is ``Ns-Seq: seq``."""
    hdr = b"NATS/1.0\r\nNs-Seq: %d\r\n\r\n" % seq
    hlen = len(hdr)
    target = f"{subject} {reply}" if reply else subject
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (target.encode(), hlen, hlen + len(payload), hdr, payload)


async def publish_seq(nc: Client, subject: str, reply: str, seq: int, payload: bytes) -> None:
    """Publish a data message with ``Ns-Seq: seq`` as its only header.

    Same checks and effects as ``nc.publish`` (closed/draining connection, max_payload,
    stats, flusher kick), without nats-py's generic header encoding. The caller has
    validated ``subject`` and ``reply`` (ours, generated).

    Raises:
        the nats-py errors ``nc.publish`` raises in the same cases.
    """
    if nc.is_closed or nc.is_draining_pubs or not nc.is_connected:
        # Rare paths: let nats-py raise or buffer exactly as it does.
        await nc.publish(subject, payload, reply=reply, headers={"Ns-Seq": str(seq)})
        return
    size = len(payload)
    if size > nc._max_payload:
        await nc.publish(subject, payload, reply=reply, headers={"Ns-Seq": str(seq)})
        return
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    await nc._send_command(hpub_seq(subject, reply, seq, payload))
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        await nc._flush_pending()
