"""natstream's NATS protocol parser, for :class:`~._client.FastClient`.

It reads ``MSG``/``HMSG`` lines with ``bytes.find``/``split`` instead of nats-py's
regular expressions, and hands messages to ``FastClient._dispatch`` synchronously;
only messages that client does not take go through nats-py's per-message coroutine.

With the C extension in use (:mod:`natstream._ext`), its ``Scanner`` reads the
messages and runs the fast path of the stream inboxes registered as lanes
(:meth:`FastParser.add_lane`); this module's loop is the reference, and reads any
message whose numbers are not plain digits.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from nats.errors import ProtocolError
from nats.protocol.parser import ERR_RE, INFO_RE, OK_RE, PING_RE, PONG_RE, Parser

from .._ext import cstream

if TYPE_CHECKING:
    from ._client import FastClient

__all__ = ["FastParser"]

# Why the C scanner stopped (see _cstream_scan.c).
_END, _CONTROL, _MSG, _YIELD, _SLOW = range(5)


class FastParser(Parser):
    """The NATS protocol parser, reading messages with ``bytes.find``/``split``
    instead of nats-py's regular expressions, and without a coroutine per message
    for the shared stream inbox (``FastClient._dispatch``).

    Other operations (``PING``, ``PONG``, ``INFO``, ``-ERR``, ``+OK``) go to the same
    client methods nats-py's parser calls. A malformed ``MSG``/``HMSG`` line or an
    unknown operation raises :class:`nats.errors.ProtocolError`, which makes nats-py
    drop the connection, as its own parser does.
    """

    nc: FastClient

    def __init__(self, nc: Any) -> None:
        self._scanner: Any = None if cstream is None else cstream.Scanner(nc, ProtocolError)
        super().__init__(nc)

    def reset(self) -> None:
        super().reset()
        self._generation = getattr(self, "_generation", 0) + 1
        self._wanted = 0  # length the buffered bytes must reach before parsing again

    def add_lane(self, sid: int, lane: object) -> None:
        """Run subscription ``sid``'s messages through ``lane``'s fast path in C first
        (an ``AttemptCore``); nothing without the extension."""
        if self._scanner is not None:
            self._scanner.add(sid, lane)

    def remove_lane(self, sid: int) -> None:
        if self._scanner is not None:
            self._scanner.remove(sid)

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        if buf:
            if len(buf) + len(data) < self._wanted:
                buf.extend(data)
                return  # a large message still arriving: do not copy and rescan it yet
            data = b"".join((buf, data))  # one copy (extending, then bytes(), made two)
            buf.clear()
        self._wanted = 0
        nc = self.nc
        # Until this returns (also while it awaits), a kick of the flusher is left to
        # the end of the read (FastClient.kick_soon): what was queued meanwhile is
        # written then, in one write, or the flusher kicked if it cannot be.
        nc.parsing = True
        try:
            scanner = self._scanner
            if scanner is None:
                pos = await self._parse(data, 0, False)
            else:
                pos = await self._scan(scanner, data)
            if 0 <= pos < len(data):
                self.buf.extend(data[pos:] if pos else data)
        finally:
            nc.parsing = False
            if nc.write_soon:
                nc.write_soon = False
                if not nc.write_now():
                    nc.kick_soon()

    async def _scan(self, scanner: Any, data: bytes) -> int:
        """:meth:`_parse` with the C scanner; the position to keep from, or -1 when
        the parser was reset meanwhile."""
        generation = self._generation
        nc = self.nc
        scan = scanner.scan
        pos = 0
        size = len(data)
        while pos < size:
            pos = scan(data, pos)
            stop = scanner.stop
            if stop == _END:
                self._wanted = scanner.wanted
                break
            if stop == _CONTROL:
                pos = await self._control(data, pos, scanner.line_end + 2)
            elif stop == _MSG:
                await nc._process_msg(*scanner.taken)
            elif stop == _YIELD:
                nc.yield_soon = False
                await asyncio.sleep(0)
            else:
                pos = await self._parse(data, pos, True)
                if pos < 0:
                    return pos
                if pos < size and self._wanted:
                    break
                continue
            if generation != self._generation:
                return -1
        return pos

    async def _parse(self, data: bytes, pos: int, one: bool) -> int:
        """Read operations from ``pos`` on (only one message when ``one``); the
        position to keep from, or -1 when the parser was reset meanwhile."""
        generation = self._generation
        nc = self.nc
        dispatch = nc._dispatch
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
                    return -1  # the client reset the parser (reconnecting): drop the rest
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
                    return -1
            elif nc.yield_soon:
                # A consumer waits for this message (a stream's first reply): let it
                # have it before the rest of this read is parsed.
                nc.yield_soon = False
                await asyncio.sleep(0)
                if generation != self._generation:
                    return -1
            if one:
                break
        return pos

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
            # As it came: FastClient lower-cases it for nats-py, and keeps the case of
            # a refused subject for natstream.
            await nc._process_err(message.decode(errors="replace") if message else "")
        else:
            raise ProtocolError("nats: unknown protocol")
        return end
