"""natstream's protocol parser against nats-py's, on the same bytes cut anywhere."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from natstream._protocol import _frames
from natstream._protocol._frames import (
    encode_headers,
    hpub_prefix,
    hpub_seq_command,
    parse_headers,
)
from natstream._transport._parser import FastParser

MUX_SID = 7  # the sid the fake client dispatches synchronously


class FakeClient:
    """Records what a parser hands to the client, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.yield_soon = False
        self.wakes: set[bytes] = set()  # payloads that wake a consumer (see yield_soon)
        self.raw_errors: list[str] = []

    def _dispatch(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        if sid != MUX_SID:
            return False
        self.events.append(("msg", sid, subject, reply, data, headers))
        if data in self.wakes:
            self.yield_soon = True
        return True

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.events.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.events.append(("info", info))

    async def _process_err(self, message: str) -> None:
        # nats-py's parser lower-cases the text; ours passes it as it came and
        # FastClient lower-cases it for nats-py (test_error_text_keeps_its_case).
        self.events.append(("err", message.lower()))
        self.raw_errors.append(message)


token = st.text(alphabet="abcxyz019_-$>*", min_size=1, max_size=12)
subject_st = st.lists(token, min_size=1, max_size=4).map(".".join)
payload_st = st.binary(max_size=200)


@st.composite
def operation(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "info", "err"]))
    if kind in ("msg", "hmsg"):
        subject = draw(subject_st).encode()
        sid = draw(st.sampled_from([MUX_SID, 1, 12345]))
        reply = draw(st.one_of(st.just(b""), subject_st.map(str.encode)))
        data = draw(payload_st)
        target = b"%s %d %s" % (subject, sid, reply) if reply else b"%s %d" % (subject, sid)
        if kind == "msg":
            return b"MSG %s %d\r\n%s\r\n" % (target, len(data), data)
        hdr = b"NATS/1.0\r\nNs-Seq: %d\r\n\r\n" % draw(st.integers(0, 10**12))
        total = len(hdr) + len(data)
        return b"HMSG %s %d %d\r\n%s%s\r\n" % (target, len(hdr), total, hdr, data)
    if kind == "info":
        return b"INFO %s\r\n" % json.dumps({"max_payload": draw(st.integers(1, 10**6))}).encode()
    if kind == "err":
        return b"-ERR 'Stale Connection'\r\n"
    return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n"}[kind]


async def feed(parser: Parser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await parser.parse(chunk)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(operation(), min_size=1, max_size=30),
    points=st.lists(st.integers(0, 10**6), max_size=20),
)
async def test_same_events_as_nats_py_however_the_bytes_are_cut(
    ops: list[bytes], points: list[int]
) -> None:
    data = b"".join(ops)
    theirs, ours = FakeClient(), FakeClient()
    await feed(Parser(theirs), [data])
    await feed(FastParser(ours), cut(data, points))  # type: ignore[arg-type]
    assert ours.events == theirs.events
    assert len(ours.events) == len(ops) - sum(op == b"+OK\r\n" for op in ops)


async def test_a_partial_message_waits_for_the_rest() -> None:
    client = FakeClient()
    parser = FastParser(client)  # type: ignore[arg-type]
    await parser.parse(b"MSG a.b 7 5\r\nhel")
    assert client.events == []
    await parser.parse(b"lo\r\nPI")
    assert client.events == [("msg", 7, b"a.b", b"", b"hello", None)]
    await parser.parse(b"NG\r\n")
    assert client.events[-1] == ("ping",)
    assert not parser.buf


def test_recurring_header_blocks_are_parsed_once_and_each_caller_gets_a_copy() -> None:
    block = b"NATS/1.0\r\nNs-End: 1\r\nNs-Seq: 42\r\n\r\n"
    first = parse_headers(block)
    assert first == {"Ns-End": "1", "Ns-Seq": "42"}
    assert block in _frames._parsed
    first["Ns-Seq"] = "changed"  # a caller may change its message's headers
    assert parse_headers(block) == {"Ns-End": "1", "Ns-Seq": "42"}
    assert parse_headers(block) is not parse_headers(block)
    long = b"NATS/1.0\r\nX: " + b"v" * 200 + b"\r\n\r\n"  # too long to remember
    assert parse_headers(long) == {"X": "v" * 200}
    assert long not in _frames._parsed
    for i in range(2 * _frames._PARSED_MAX):
        parse_headers(b"NATS/1.0\r\nN: %d\r\n\r\n" % i)
    assert len(_frames._parsed) <= _frames._PARSED_MAX


def test_header_lines_are_checked_and_encoded_once() -> None:
    headers = {"Ns-V": "1", "Ns-Pack": "1"}
    block = encode_headers(headers)
    assert block == b"NATS/1.0\r\nNs-V: 1\r\nNs-Pack: 1\r\n\r\n"
    assert ("Ns-V", "1") in _frames._encoded
    assert encode_headers(headers) == block
    assert encode_headers({"Ns-V": "1", "Bad Name": "x"}) is None  # still checked
    assert encode_headers({"Ns-V": "1", "X": "a\r\nb"}) is None
    for i in range(2 * _frames._ENCODED_MAX):
        encode_headers({"N": str(i)})
    assert len(_frames._encoded) <= _frames._ENCODED_MAX


async def test_a_woken_consumer_runs_before_the_rest_of_the_read() -> None:
    """A stream's first reply (its handler asks for it with ``yield_soon``) reaches a
    waiting task before the parser handles the messages behind it in the same read."""
    client = FakeClient()
    client.wakes = {b"first"}
    parser = FastParser(client)  # type: ignore[arg-type]
    # Ready before the parse starts: runs when (and only if) the parser yields.
    asyncio.get_running_loop().call_soon(client.events.append, ("other",))
    await parser.parse(b"MSG i.1 %d 5\r\nfirst\r\nMSG i.1 %d 3\r\nend\r\n" % (MUX_SID, MUX_SID))
    await asyncio.sleep(0)
    assert [e[0] if e[0] != "msg" else e[4] for e in client.events] == [
        b"first",
        "other",
        b"end",
    ]
    assert not client.yield_soon


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a.b\r\n",  # too few fields
        b"MSG a.b x 5\r\nhello\r\n",  # sid not a number
        b"HMSG a.b 7 9 5\r\nhello\r\n",  # header longer than the message
        b"HMSG a.b 7 r s t u v\r\n",  # too many fields
        b"WHAT is this\r\n",  # unknown operation
    ],
)
async def test_malformed_input_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        await FastParser(FakeClient()).parse(line)  # type: ignore[arg-type]


async def test_a_reset_during_a_callback_drops_the_rest() -> None:
    """nats-py resets the parser when it reconnects; what was buffered is not replayed."""

    class Resetting(FakeClient):
        parser: FastParser

        async def _process_ping(self) -> None:
            await super()._process_ping()
            self.parser.reset()

    client = Resetting()
    client.parser = FastParser(client)  # type: ignore[arg-type]
    await client.parser.parse(b"PING\r\nMSG a 1 1\r\nx\r\nMSG a 1 2\r\nx")
    assert client.events == [("ping",)]
    assert not client.parser.buf


@pytest.mark.parametrize("seq", [0, 9, 10, 12345, 2**53])
@pytest.mark.parametrize("reply", ["", "_INBOX.x.ctl"])
async def test_the_data_command_is_a_valid_hpub(seq: int, reply: str) -> None:
    """What the responder's fast path writes, read back as the server would deliver it."""
    command = hpub_seq_command(hpub_prefix("a.b", reply), seq, b"payload")
    line, _, rest = command.partition(b"\r\n")
    op, subject, *fields = line.split()
    assert (op, subject) == (b"HPUB", b"a.b")
    client = FakeClient()
    delivered = b"HMSG a.b %d %s\r\n%s" % (MUX_SID, b" ".join(fields), rest)
    await FastParser(client).parse(delivered)  # type: ignore[arg-type]
    [(_, _, _, got_reply, data, headers)] = client.events
    assert (got_reply, data) == (reply.encode(), b"payload")
    assert parse_headers(headers) == {"Ns-Seq": str(seq)}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"\r\n")))
@example(b"\x1c:")  # str.isspace() whitespace that bytes.strip() keeps
@example(b"a\x1c: v\r\n: empty name\r\nk\x85: x")
def test_header_lines_read_as_nats_py_reads_them(raw: bytes) -> None:
    from nats.aio.client import Client

    from natstream._protocol._frames import parse_header_lines

    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


names = st.text(alphabet="abcXYZ-_.019!#", min_size=1, max_size=12)
values = st.text(max_size=20).filter(lambda v: "\r" not in v and "\n" not in v)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, max_size=6))
def test_encoded_headers_read_back(headers: dict[str, str]) -> None:
    block = encode_headers(headers)
    assert block is not None
    expected = {k: v.strip() for k, v in headers.items()}
    assert (parse_headers(block) or {}) == expected


@pytest.mark.parametrize(
    "headers", [{"a b": "x"}, {"": "x"}, {"k": "line\r\nInjected: 1"}, {"k:": "x"}, {"é": "x"}]
)
def test_headers_we_do_not_encode_are_left_to_nats_py(headers: dict[str, str]) -> None:
    assert encode_headers(headers) is None


async def test_error_text_keeps_its_case() -> None:
    """A refused subject is case-sensitive: our parser passes -ERR text as it came."""
    client = FakeClient()
    line = b"-ERR 'Permissions Violation for Publish to \"Orders.EU\"'\r\n"
    await FastParser(client).parse(line)  # type: ignore[arg-type]
    assert client.raw_errors == ["'Permissions Violation for Publish to \"Orders.EU\"'"]
