"""natstream's NATS protocol parser, for :class:`~._client.FastClient`.

It reads ``MSG``/``HMSG`` lines with ``bytes.find``/``split`` instead of nats-py's
regular expressions, and hands messages to ``FastClient._dispatch`` synchronously;
only messages that client does not take go through nats-py's per-message coroutine.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from nats.errors import ProtocolError
from nats.protocol.parser import ERR_RE, INFO_RE, OK_RE, PING_RE, PONG_RE, Parser

if TYPE_CHECKING:
    from ._client import FastClient

__all__ = ["FastParser"]


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
            # As it came: FastClient lower-cases it for nats-py, and keeps the case of
            # a refused subject for natstream.
            await nc._process_err(message.decode(errors="replace") if message else "")
        else:
            raise ProtocolError("nats: unknown protocol")
        return end
