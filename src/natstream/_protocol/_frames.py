"""NATS framing natstream writes and recognises: header blocks, ``PUB``/``HPUB``
commands, and the lone ``Ns-Seq`` header of a plain data message (pure, no I/O).

A header block is ``NATS/1.0[ <status>[ <description>]]\\r\\n`` followed by
``Name: Value\\r\\n`` lines and an empty line. Parsing here matches nats-py's own
reader (so either may read a message) but never raises on hostile input; recurring
blocks and lines are parsed or encoded once (small bounded caches).
"""

from __future__ import annotations

import re

__all__ = [
    "IMPORT_REPLY_PREFIX",
    "LONE_TAIL",
    "SEQ_AT",
    "SEQ_PREFIX",
    "data_seq",
    "encode_headers",
    "hpub_prefix",
    "hpub_seq_command",
    "hpub_seq_id_command",
    "id_tail",
    "lone_seq",
    "parse_denial",
    "parse_header_lines",
    "parse_headers",
    "pub_prefix",
    "publish_command",
]

SEQ_PREFIX = b"NATS/1.0\r\nNs-Seq: "
"""Start of the header block of a plain data message: ``Ns-Seq`` is its only header."""
SEQ_AT = len(SEQ_PREFIX)

_HDR_LINE = b"NATS/1.0"
_SEQ_HDR_LEN = len(b"NATS/1.0\r\nNs-Seq: \r\n\r\n")
_MAX_SEQ_DIGITS = 20  # int() of a huge digit string is slow; the machine bounds it anyway


IMPORT_REPLY_PREFIX = "_R_."
"""How the reply subjects start that nats-server gives messages crossing an account's
service import (a fresh one per message carrying a reply subject)."""

LONE_TAIL = b"\r\n\r\n"
"""What follows the sequence number in a plain data message's header block."""


def id_tail(stream_id: str) -> bytes:
    """What follows the sequence number in a service-routed data message's header
    block (``Ns-Seq``, then ``Ns-Id``)."""
    return b"\r\nNs-Id: %s\r\n\r\n" % stream_id.encode()


def data_seq(raw: bytes, tail: bytes) -> int:
    """The sequence number of a header block made of ``Ns-Seq: <n>`` and ``tail``
    (:data:`LONE_TAIL` or an :func:`id_tail`); 0 for any other block (or a malformed
    number)."""
    if raw.startswith(SEQ_PREFIX) and raw.endswith(tail):
        end = len(raw) - len(tail)
        if raw.find(b"\r\n", SEQ_AT) == end and end - SEQ_AT <= _MAX_SEQ_DIGITS:
            digits = raw[SEQ_AT:end]
            if digits.isdigit():
                return int(digits)
    return 0


def lone_seq(raw: bytes) -> int:
    """:func:`data_seq` of a block whose only header is ``Ns-Seq``."""
    return data_seq(raw, LONE_TAIL)


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """Parse a raw header block as nats-py does (``Status``/``Description`` from the
    status line); None when there is none. Never raises."""
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
    headers.update(parse_header_lines(raw[line_end + 2 :]))
    if small:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[raw] = dict(headers)
    return headers or None


# Header blocks that recur (a request's without a deadline, end markers, status
# replies) are parsed once: small blocks and their result, a copy of which each
# caller gets.
_PARSED_SIZE = 128  # bytes
_PARSED_MAX = 512  # blocks; then forgotten all at once
_parsed: dict[bytes, dict[str, str]] = {}


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines, exactly as nats-py reads them (names: ASCII without
    whitespace, else skipped; values: stripped, UTF-8 with replacement), without its
    per-character check."""
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


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token


def encode_headers(headers: dict[str, str]) -> bytes | None:
    """A header block, or None when a name is not a plain token or a value holds a
    line break (nats-py then encodes, rejects or cleans it its own way)."""
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


_DENIAL = re.compile(
    r"permissions violation for (subscription|publish) to \"([^\"]*)\"", re.IGNORECASE
)


def parse_denial(text: str) -> tuple[str, str] | None:
    """``("subscribe" | "publish", subject)`` from the text of a server's
    ``-ERR 'Permissions Violation for Publish to "x"'`` (or ``Subscription to``);
    None for any other error. nats-py hands the text on lower-cased: the subject is
    then lower-cased too."""
    match = _DENIAL.search(text)
    if match is None:
        return None
    kind, subject = match.groups()
    return ("subscribe" if kind.lower() == "subscription" else "publish"), subject


def publish_command(subject: str, reply: str, payload: bytes, block: bytes | None) -> bytes:
    """The ``PUB`` (``block`` None) or ``HPUB`` command of one message. ``subject``
    and ``reply`` must be valid subjects (no whitespace)."""
    target = f"{subject} {reply}".encode() if reply else subject.encode()
    if block is None:
        return b"PUB %s %d\r\n%s\r\n" % (target, len(payload), payload)
    hlen = len(block)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (target, hlen, hlen + len(payload), block, payload)


def hpub_prefix(subject: str, reply: str) -> bytes:
    """The start of an ``HPUB`` command to ``subject`` with ``reply``, for
    :func:`hpub_seq_command`."""
    target = f"{subject} {reply}" if reply else subject
    return b"HPUB %s " % target.encode()


def pub_prefix(subject: str, reply: str) -> bytes:
    """The start of the ``PUB`` command :func:`publish_command` writes for a message
    without headers to ``subject`` with ``reply``, up to the payload's length."""
    target = f"{subject} {reply}" if reply else subject
    return b"PUB %s " % target.encode()


def hpub_seq_id_command(prefix: bytes, seq: int, tail: bytes, payload: bytes) -> bytes:
    """The ``HPUB`` command of a data message with ``Ns-Seq: seq`` and the ``tail``
    of :func:`id_tail`."""
    block = b"NATS/1.0\r\nNs-Seq: %d%s" % (seq, tail)
    hlen = len(block)
    return b"%s%d %d\r\n%s%s\r\n" % (prefix, hlen, hlen + len(payload), block, payload)


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
