"""Wire constants and the codec for natstream's control headers (pure, no I/O).

See ``docs/protocol.md`` for the protocol these names make up. Header values are
short ASCII strings; every parser here returns ``None`` (or raises
:class:`HeaderError`) on malformed input and never anything else, so hostile
traffic cannot crash a peer.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

__all__ = [
    "CTL_ACK",
    "CTL_CANCEL",
    "CTL_HEARTBEAT",
    "HDR_ACK",
    "HDR_CONTROL",
    "HDR_DEADLINE",
    "HDR_END",
    "HDR_HEARTBEAT",
    "HDR_ID",
    "HDR_NEXT",
    "HDR_PACK",
    "HDR_POS",
    "HDR_RESUME",
    "HDR_RETRYABLE",
    "HDR_SEQ",
    "HDR_SERVICE_ERROR",
    "HDR_SERVICE_ERROR_CODE",
    "HDR_STATUS",
    "HDR_VERSION",
    "HDR_WINDOW",
    "MAX_PACK",
    "MAX_SEQ",
    "PROTOCOL_VERSION",
    "STREAM_END",
    "STREAM_ERROR_PREFIX",
    "STREAM_ID_RE",
    "HeaderError",
    "RequestOptions",
    "Resume",
    "error_headers",
    "format_ack",
    "format_window",
    "pack_items",
    "parse_ack",
    "parse_int",
    "parse_pos",
    "parse_request_headers",
    "parse_resume",
    "parse_window",
    "pos_add",
    "unpack_items",
    "unpack_offsets",
]

STREAM_END = b"__STREAM_END__"
"""Payload of the end marker (the plain in-band protocol's, kept on the wire)."""

STREAM_ERROR_PREFIX = b"__STREAM_ERROR__:"
"""Prefix of the error marker's payload; the error text follows it."""

PROTOCOL_VERSION = "1"

# Request (requester -> responder).
HDR_VERSION = "Ns-V"  # protocol version the requester speaks
HDR_WINDOW = "Ns-Win"  # "<messages> <bytes>": initial credit
HDR_HEARTBEAT = "Ns-Hb"  # heartbeat interval in milliseconds, both directions
HDR_DEADLINE = "Ns-Dl"  # milliseconds left until the requester gives up on the stream
HDR_RESUME = "Ns-Resume"  # "<seq> <pos>": continue after this delivered message
HDR_PACK = "Ns-Pack"  # request: "1", packed replies welcome; data: items in this message

# Replies (responder -> requester) and control (requester -> responder).
HDR_ID = "Ns-Id"  # service-routed control: the stream's id, on every responder message
HDR_NEXT = "Ns-Next"  # "1": another message of the stream follows at once (see docs)
HDR_SEQ = "Ns-Seq"  # data: sequence number (from 1); end/error/heartbeat: data messages sent
HDR_POS = "Ns-Pos"  # data: resume position when it is not "seq - 1"
HDR_END = "Ns-End"  # end marker from a v1 responder (value: "1")
HDR_CONTROL = "Ns-Ctl"  # kind of control message, see CTL_*
HDR_ACK = "Ns-Ack"  # "<seq> <bytes>": delivered through seq, bytes delivered in total
HDR_RETRYABLE = "Ns-Retry"  # error marker: "1" retryable, "0" not
HDR_SERVICE_ERROR = "Nats-Service-Error"  # NATS services (ADR-32) error text
HDR_SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
HDR_STATUS = "Status"  # set by nats-py for server status messages (503 no responders)

CTL_HEARTBEAT = "hb"
CTL_ACK = "ack"
CTL_CANCEL = "cancel"

MAX_SEQ = 2**53  # a sequence or byte count above this is hostile, not real

# Bounds a requester may ask for; values outside are clamped by the responder.
MAX_WINDOW_MESSAGES = 65_536
MAX_WINDOW_BYTES = 1 << 30
MIN_HEARTBEAT_MS = 10
MAX_HEARTBEAT_MS = 3_600_000
MAX_DEADLINE_MS = 30 * 24 * 3_600_000
MAX_PACK = MAX_WINDOW_MESSAGES  # items in one packed message
_POS_DIGITS = 16

_POS_RE = re.compile(r"[0-9]{1,16}(\.[0-9]{1,16})?")  # _POS_DIGITS
STREAM_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")  # one subject token, no wildcards


class HeaderError(ValueError):
    """A control header is malformed; the message names the header and the value."""


def parse_int(value: str | None, lo: int = 0, hi: int = MAX_SEQ) -> int | None:
    """Parse a decimal integer in ``[lo, hi]``; None when absent or malformed."""
    if value is None or not (0 < len(value) <= 20) or not value.isdigit() or not value.isascii():
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def _parse_pair(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.split(" ")
    if len(parts) != 2:
        return None
    a, b = parse_int(parts[0]), parse_int(parts[1])
    if a is None or b is None:
        return None
    return a, b


def parse_window(value: str | None) -> tuple[int, int] | None:
    """Parse ``"<messages> <bytes>"``; both at least 1. Values above the maxima are clamped."""
    pair = _parse_pair(value)
    if pair is None or pair[0] < 1 or pair[1] < 1:
        return None
    return min(pair[0], MAX_WINDOW_MESSAGES), min(pair[1], MAX_WINDOW_BYTES)


def format_window(messages: int, nbytes: int) -> str:
    return f"{messages} {nbytes}"


def parse_ack(value: str | None) -> tuple[int, int] | None:
    """Parse ``"<seq> <bytes>"`` of an ack."""
    return _parse_pair(value)


def format_ack(seq: int, nbytes: int) -> str:
    return f"{seq} {nbytes}"


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a retried stream continues: after data message ``seq`` at position ``pos``.

    ``pos`` is the responder's own position token for that message: the handler index
    (``"7"``) or ``"<batch>.<item>"`` for batch handlers.
    """

    seq: int
    pos: str


def parse_pos(value: str | None) -> str | None:
    """Return a resume position (``"7"`` or ``"3.4"``) if well formed, else None."""
    if value is None or not _POS_RE.fullmatch(value):
        return None
    return value


def pos_add(pos: str, k: int) -> str | None:
    """The position ``k`` items after ``pos`` in one packed message: the last number
    grows (``"7"`` -> ``"9"``, ``"3.4"`` -> ``"3.6"``); None when it would overflow."""
    head, dot, last = pos.rpartition(".")
    value = str(int(last) + k)
    if len(value) > _POS_DIGITS:
        return None
    return f"{head}{dot}{value}"


def pack_items(items: Sequence[bytes]) -> bytes:
    """The payload of a packed message: each item's length (4 bytes, big-endian), then
    the items, back to back. ``len(items)`` travels in the ``Ns-Pack`` header."""
    return struct.pack(f">{len(items)}I", *map(len, items)) + b"".join(items)


def unpack_offsets(payload: bytes, count: int) -> tuple[list[int], int] | None:
    """Where the ``count`` items of a packed payload lie: ``(offsets, largest)``, item
    ``k`` being ``payload[offsets[k]:offsets[k + 1]]`` (``count + 1`` offsets, the last
    ``len(payload)``) and ``largest`` the longest item's length; None when the payload
    is not exactly ``count`` items. Items are sliced only when taken."""
    if not 0 < count <= MAX_PACK:
        return None
    head = 4 * count
    if len(payload) < head:
        return None
    lengths = struct.unpack_from(f">{count}I", payload)
    offsets = list(accumulate(lengths, initial=head))
    if offsets[-1] != len(payload):
        return None
    return offsets, max(lengths)


def unpack_items(payload: bytes, count: int) -> list[bytes] | None:
    """The ``count`` items of a packed payload; None when it is not exactly that."""
    unpacked = unpack_offsets(payload, count)
    if unpacked is None:
        return None
    return [payload[a:b] for a, b in pairwise(unpacked[0])]


def error_headers(seq: int, message: str, code: int, retryable: bool) -> dict[str, str]:
    """Headers of an error marker after ``seq`` data messages. The NATS services
    headers (ADR-32) carry the text and code, so standard NATS tooling reads them;
    the text is cut to 1,024 characters."""
    return {
        HDR_SEQ: str(seq),
        HDR_SERVICE_ERROR: message[:1024],
        HDR_SERVICE_ERROR_CODE: str(code),
        HDR_RETRYABLE: "1" if retryable else "0",
    }


def parse_resume(value: str | None) -> Resume | None:
    if value is None:
        return None
    seq_s, sep, pos = value.partition(" ")
    seq = parse_int(seq_s)
    if not sep or seq is None or parse_pos(pos) is None:
        return None
    return Resume(seq, pos)


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a v1 requester asked for, as parsed and clamped by the responder.

    ``version`` is None for a peer that speaks only the plain in-band protocol: such a
    peer gets no headers, heartbeats or flow control.
    """

    version: str | None = None
    window_messages: int = 0
    window_bytes: int = 0
    heartbeat_ms: int = 0
    deadline_ms: int | None = None
    resume: Resume | None = None
    pack: bool = False  # the requester unpacks packed messages (Ns-Pack: 1)


_PLAIN_OPTIONS = RequestOptions()
# Parsed options of requests without a deadline or a resume point, by their header
# values: a pool's requests repeat them (the same window, heartbeat, pack). Only
# well-formed values (bounded in length) are kept; forgotten all at once when full.
_OPTIONS_MAX = 256
_options: dict[tuple[str, str | None, str | None, str | None], RequestOptions] = {}


def parse_request_headers(headers: dict[str, str] | None) -> RequestOptions:
    """Read a request's natstream headers.

    Raises:
        HeaderError: a v1 request whose control headers are missing or malformed.
            Requests without ``Ns-V`` are plain (legacy) and never raise.
    """
    if not headers or HDR_VERSION not in headers:
        return _PLAIN_OPTIONS  # frozen: one instance serves every plain request
    if HDR_DEADLINE in headers or HDR_RESUME in headers:
        return _parse_request_headers(headers)
    pack = headers.get(HDR_PACK)
    key = (headers[HDR_VERSION], headers.get(HDR_WINDOW), headers.get(HDR_HEARTBEAT), pack)
    options = _options.get(key)
    if options is None:
        options = _parse_request_headers(headers)  # raises for malformed values
        if pack is None or pack == "1":
            if len(_options) >= _OPTIONS_MAX:
                _options.clear()
            _options[key] = options
    return options


def _parse_request_headers(headers: dict[str, str]) -> RequestOptions:
    version = headers[HDR_VERSION]
    if version != PROTOCOL_VERSION:
        raise HeaderError(f"unsupported protocol version {version[:16]!r}")
    window = parse_window(headers.get(HDR_WINDOW))
    if window is None:
        raise HeaderError(f"malformed {HDR_WINDOW} header {headers.get(HDR_WINDOW, '')[:40]!r}")
    hb_raw = headers.get(HDR_HEARTBEAT)
    hb = parse_int(hb_raw, 0, MAX_HEARTBEAT_MS)
    if hb is None:
        raise HeaderError(f"malformed {HDR_HEARTBEAT} header {(hb_raw or '')[:40]!r}")
    if hb:  # 0 is "off": the requester neither sends heartbeats nor expects them
        hb = max(hb, MIN_HEARTBEAT_MS)
    deadline: int | None = None
    if HDR_DEADLINE in headers:
        deadline = parse_int(headers[HDR_DEADLINE], 0, MAX_DEADLINE_MS)
        if deadline is None:
            raise HeaderError(f"malformed {HDR_DEADLINE} header {headers[HDR_DEADLINE][:40]!r}")
    resume: Resume | None = None
    if HDR_RESUME in headers:
        resume = parse_resume(headers[HDR_RESUME])
        if resume is None:
            raise HeaderError(f"malformed {HDR_RESUME} header {headers[HDR_RESUME][:40]!r}")
    pack = headers.get(HDR_PACK) == "1"
    return RequestOptions(version, window[0], window[1], hb, deadline, resume, pack)
