"""natstream's protocol parser against nats-py's, on the same bytes cut anywhere.

Every parser test runs on the Python loop and, when the C extension is in use, on its
C scanner (the ``impl`` fixture). ``NATSTREAM_FUZZ=1`` runs the property tests marked
``fuzz`` with the fuzzing profile's example count (see tests/protocol/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from natstream._ext import cstream
from natstream._protocol import _frames
from natstream._protocol._frames import (
    encode_headers,
    hpub_prefix,
    hpub_seq_command,
    parse_headers,
)
from natstream._transport._parser import FastParser

MUX_SID = 7  # the sid the fake client dispatches synchronously
IMPLS = ["python", "c"] if cstream is not None else ["python"]
FUZZ = settings(
    max_examples=20_000 if os.environ.get("NATSTREAM_FUZZ") == "1" else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", IMPLS)


def fast_parser(client: Any, impl: str) -> FastParser:
    """natstream's parser on ``client``, reading with the C scanner or the Python loop."""
    parser = FastParser(client)
    if impl == "python":
        parser._scanner = None
    return parser


class FakeClient:
    """Records what a parser hands to the client, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.yield_soon = False
        self.parsing = False
        self.write_soon = False
        self.wakes: set[bytes] = set()  # payloads that wake a consumer (see yield_soon)
        self.kicks: set[bytes] = set()  # payloads whose handling kicks the flusher
        self.socket_busy = False  # write_now cannot write
        self.raw_errors: list[str] = []
        self.stats = {"in_msgs": 0, "in_bytes": 0}

    def _dispatch(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        if sid != MUX_SID:
            return False
        self.events.append(("msg", sid, subject, reply, data, headers))
        if data in self.wakes:
            self.yield_soon = True
        if data in self.kicks:
            self.kick_soon()
        return True

    def kick_soon(self) -> None:  # as FastClient's
        if self.parsing:
            self.write_soon = True
        else:
            self.events.append(("kick",))

    def write_now(self) -> bool:
        self.events.append(("write",))
        return not self.socket_busy

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


# How a number may be written: both parsers read these alike (the C scanner hands
# any but plain digits to the Python loop).
number = st.sampled_from(["%d", "%03d", "+%d", "%018d", "%019d", "%025d"])
space = st.sampled_from([b" ", b"\t", b"  ", b" \t "])


@st.composite
def operation(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "info", "err"]))
    if kind in ("msg", "hmsg"):
        subject = draw(subject_st).encode()
        sid = draw(st.sampled_from([MUX_SID, 1, 12345]))
        reply = draw(st.one_of(st.just(b""), subject_st.map(str.encode)))
        data = draw(payload_st)
        sep = draw(space)
        sid_b = (draw(number) % sid).encode()
        size = draw(number.filter(lambda f: "+" not in f))  # nats-py: digits only

        def n(value: int) -> bytes:
            return (size % value).encode()

        target = sep.join([subject, sid_b, reply] if reply else [subject, sid_b])
        if kind == "msg":
            return b"MSG %s%s%s\r\n%s\r\n" % (target, sep, n(len(data)), data)
        hdr = b"NATS/1.0\r\nNs-Seq: %d\r\n\r\n" % draw(st.integers(0, 10**12))
        total = len(hdr) + len(data)
        return b"HMSG %s%s%s%s%s\r\n%s%s\r\n" % (target, sep, n(len(hdr)), sep, n(total), hdr, data)
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


@pytest.mark.fuzz
@FUZZ
@given(
    ops=st.lists(operation(), min_size=1, max_size=30),
    points=st.lists(st.integers(0, 10**6), max_size=20),
)
async def test_same_events_as_nats_py_however_the_bytes_are_cut(
    impl: str, ops: list[bytes], points: list[int]
) -> None:
    data = b"".join(ops)
    theirs, ours = FakeClient(), FakeClient()
    await feed(Parser(theirs), [data])
    await feed(fast_parser(ours, impl), cut(data, points))
    assert ours.events == theirs.events
    assert len(ours.events) == len(ops) - sum(op == b"+OK\r\n" for op in ops)


async def test_a_partial_message_waits_for_the_rest(impl: str) -> None:
    client = FakeClient()
    parser = fast_parser(client, impl)
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


async def test_a_woken_consumer_runs_before_the_rest_of_the_read(impl: str) -> None:
    """A stream's first reply (its handler asks for it with ``yield_soon``) reaches a
    waiting task before the parser handles the messages behind it in the same read."""
    client = FakeClient()
    client.wakes = {b"first"}
    parser = fast_parser(client, impl)
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


@pytest.mark.parametrize("busy", [False, True])
async def test_kicks_during_a_read_become_one_write_at_its_end(impl: str, busy: bool) -> None:
    """What handlers queue while the parser reads is written when it is done with the
    read, once, however many kicked; if the socket is busy, the flusher is kicked."""
    client = FakeClient()
    client.kicks = {b"a", b"b"}
    client.socket_busy = busy
    parser = fast_parser(client, impl)
    await parser.parse(b"MSG i.1 %d 1\r\na\r\nMSG i.1 %d 1\r\nb\r\n" % (MUX_SID, MUX_SID))
    tail = [("write",), ("kick",)] if busy else [("write",)]
    assert [e[:1] for e in client.events] == [("msg",), ("msg",), *tail]
    assert (client.parsing, client.write_soon) == (False, False)
    client.events.clear()
    await parser.parse(b"MSG i.1 %d 1\r\nc\r\n" % MUX_SID)  # no kick: no write
    assert [e[:1] for e in client.events] == [("msg",)]


async def test_a_read_that_fails_still_writes_what_was_queued(impl: str) -> None:
    """Malformed input ends the parse with an error; what a handler queued before it
    is still written, and kicks are no longer held back."""
    client = FakeClient()
    client.kicks = {b"a"}
    parser = fast_parser(client, impl)
    with pytest.raises(ProtocolError):
        await parser.parse(b"MSG i.1 %d 1\r\na\r\nWHAT is this\r\n" % MUX_SID)
    assert client.events[-1] == ("write",)
    assert (client.parsing, client.write_soon) == (False, False)


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a.b\r\n",  # too few fields
        b"MSG a.b x 5\r\nhello\r\n",  # sid not a number
        b"HMSG a.b 7 9 5\r\nhello\r\n",  # header longer than the message
        b"HMSG a.b 7 r s t u v\r\n",  # too many fields
        b"WHAT is this\r\n",  # unknown operation
        b"MSG a.b 7 -5\r\n",  # a negative size
        b"MSG a.b 7 1_x\r\nx\r\n",  # not a number
        b"MSG \r\n",  # no fields at all
        b"HMSG a.b 7 0012 0011\r\nhello world\r\n",  # header longer, zero-padded
        b"MSG a.b 7 r s t\r\n",  # too many fields for MSG
    ],
)
async def test_malformed_input_is_a_protocol_error(impl: str, line: bytes) -> None:
    with pytest.raises(ProtocolError):
        await fast_parser(FakeClient(), impl).parse(line)


async def test_a_reset_during_a_callback_drops_the_rest(impl: str) -> None:
    """nats-py resets the parser when it reconnects; what was buffered is not replayed."""

    class Resetting(FakeClient):
        parser: FastParser

        async def _process_ping(self) -> None:
            await super()._process_ping()
            self.parser.reset()

    client = Resetting()
    client.parser = fast_parser(client, impl)
    await client.parser.parse(b"PING\r\nMSG a 1 1\r\nx\r\nMSG a 1 2\r\nx")
    assert client.events == [("ping",)]
    assert not client.parser.buf


@pytest.mark.parametrize("seq", [0, 9, 10, 12345, 2**53])
@pytest.mark.parametrize("reply", ["", "_INBOX.x.ctl"])
async def test_the_data_command_is_a_valid_hpub(impl: str, seq: int, reply: str) -> None:
    """What the responder's fast path writes, read back as the server would deliver it."""
    command = hpub_seq_command(hpub_prefix("a.b", reply), seq, b"payload")
    line, _, rest = command.partition(b"\r\n")
    op, subject, *fields = line.split()
    assert (op, subject) == (b"HPUB", b"a.b")
    client = FakeClient()
    delivered = b"HMSG a.b %d %s\r\n%s" % (MUX_SID, b" ".join(fields), rest)
    await fast_parser(client, impl).parse(delivered)
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


async def test_error_text_keeps_its_case(impl: str) -> None:
    """A refused subject is case-sensitive: our parser passes -ERR text as it came."""
    client = FakeClient()
    line = b"-ERR 'Permissions Violation for Publish to \"Orders.EU\"'\r\n"
    await fast_parser(client, impl).parse(line)
    assert client.raw_errors == ["'Permissions Violation for Publish to \"Orders.EU\"'"]


# ---------------------------------------------------------------- the C receive path

RESPONDER = b"_INBOX.ctl.responder"
FOREIGN = b"_INBOX.ctl.other"
STREAM_ID = "abc123"


class LeaseSource:
    """Lends one fake-connected FastClient to the attempts of a Session."""

    def __init__(self, link: Any, window: tuple[int, int], heartbeat: float) -> None:
        from natstream._config import StreamOptions

        self.link = link
        self.window = window
        self.stream_options = StreamOptions(heartbeat=heartbeat)
        self.tracing = None

    def lease(self, window_messages: int, window_bytes: int, *, retry: bool) -> Any:
        from natstream._requester._lease import Lease

        return Lease(self.link, *self.window, "fake", lambda lease, outcome: None)


def replies_of(script: list[tuple[str, int]], inbox: bytes, sid: int, service: bool) -> bytes:
    """The responder's side of a stream as the server would deliver it: an accept,
    then ``script`` (data in order, duplicates, gaps, heartbeats, packs, positions,
    foreign and plain messages, garbage headers, markers)."""
    reply = b"" if service else RESPONDER
    tail = b"\r\nNs-Id: %s\r\n\r\n" % STREAM_ID.encode() if service else b"\r\n\r\n"

    def hmsg(block: bytes, payload: bytes, from_: bytes = reply) -> bytes:
        target = b"%s %d %s" % (inbox, sid, from_) if from_ else b"%s %d" % (inbox, sid)
        total = len(block) + len(payload)
        return b"HMSG %s %d %d\r\n%s%s\r\n" % (target, len(block), total, block, payload)

    def head(*lines: bytes) -> bytes:
        extra = [b"Ns-Id: %s" % STREAM_ID.encode()] if service else []
        return b"NATS/1.0\r\n" + b"".join(x + b"\r\n" for x in [*lines, *extra]) + b"\r\n"

    out = [hmsg(head(b"Ns-Ctl: hb", b"Ns-Seq: 0"), b"")]
    seq = 0
    for kind, n in script:
        payload = bytes([65 + n % 26]) * n
        if kind == "data":
            seq += 1
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: %d%s" % (seq, tail), payload))
        elif kind == "dup":
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: %d%s" % (max(seq, 1), tail), payload))
        elif kind == "gap":
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: %d%s" % (seq + 2, tail), payload))
        elif kind == "zero":
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: 0%d%s" % (seq + 1, tail), payload))
            seq += 1
        elif kind == "pos":
            seq += 1
            out.append(hmsg(head(b"Ns-Seq: %d" % seq, b"Ns-Pos: 7.%d" % n), payload))
        elif kind == "pack":
            from natstream._protocol._wire import pack_items

            items = [payload[: k + 1] for k in range(n % 4 + 2)]
            out.append(hmsg(head(b"Ns-Seq: %d" % (seq + 1), b"Ns-Pack: %d" % len(items)),
                            pack_items(items)))  # fmt: skip
            seq += len(items)
        elif kind == "hb":
            out.append(hmsg(head(b"Ns-Ctl: hb", b"Ns-Seq: %d" % seq), b""))
        elif kind == "foreign":
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: %d\r\n\r\n" % (seq + 1), payload, FOREIGN))
        elif kind == "plain":
            out.append(b"MSG %s %d %s %d\r\n%s\r\n" % (inbox, sid, reply, n, payload))
        elif kind == "garbage":
            out.append(hmsg(b"NATS/1.0\r\nNs-Seq: %d\r\nX\r\n\r\n" % (seq + 1), payload))
        elif kind == "end":
            out.append(hmsg(head(b"Ns-End: 1", b"Ns-Seq: %d" % seq), b"__STREAM_END__"))
    return b"".join(out)


ACTIONS = ["true", "true", "true", "none", "other", "false", "raise", "aw-true", "aw-false"]


class Stop(Exception):
    pass


async def receive(
    script: list[tuple[str, int]],
    points: list[int],
    actions: list[str],
    window: tuple[int, int],
    heartbeat: float,
    service: bool,
    lane: bool,
) -> tuple[Any, ...]:
    """One stream's replies fed to a Session's attempt on a fake-connected FastClient
    (``lane``: through the C receive path; else through the Python one), a sync handler
    acting out ``actions``; what the handler saw, how it ended, and the state left."""
    from nats.aio.client import Client

    from natstream._config import StreamOptions
    from natstream._requester._delivery import run_handler
    from natstream._requester._session import Session
    from natstream._transport import FastClient

    client = FastClient()
    client._status = Client.CONNECTED
    client._max_payload = 1 << 20
    if not lane:
        client._ps._scanner = None  # no lanes: everything through the Python loop
    options = StreamOptions(heartbeat=heartbeat, window_messages=window[0], window_bytes=window[1])
    session = Session(
        LeaseSource(client, window, heartbeat),  # type: ignore[arg-type]
        "svc",
        b"",
        None,
        options,
        request_timeout=None,
        stream_timeout=None,
        max_retries=0,
        retry_delay=0.1,
    )
    attempt = await session.open()
    inbox = attempt.inbox.encode()
    data = replies_of(script, inbox, client._sid, service)
    seen: list[tuple[bytes, Any]] = []

    def handler(msg: Any) -> Any:
        seen.append((msg.data, msg.headers))
        action = actions[(len(seen) - 1) % len(actions)]
        if action == "raise":
            raise Stop
        if action.startswith("aw-"):

            async def later() -> bool:
                await asyncio.sleep(0)
                return action == "aw-true"

            return later()
        return {"true": True, "none": None, "other": 7, "false": False}[action]

    async def consume() -> str:
        try:
            await run_handler(session, handler)
        except Stop:
            return "raised"
        except Exception as exc:
            return type(exc).__name__
        return "returned"

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    for chunk in cut(data, points):
        await client._ps.parse(chunk)
        await asyncio.sleep(0)
    for _ in range(8):
        await asyncio.sleep(0)
    consumer.cancel()
    try:
        outcome = await consumer
    except asyncio.CancelledError:
        outcome = "waiting"
    m = attempt.machine
    state = (
        m.state,
        m.received_seq,
        m.delivered_seq,
        m.delivered_bytes,
        m._acked_seq,
        m._acked_bytes,
        m._largest,
        m.ack_deferred,
        m.duplicates,
        type(m.error),
        len(attempt.buffer),
        attempt.lease.replies,
        attempt.lease.bytes,
        client.stats["in_msgs"],
        client.stats["in_bytes"],
    )
    await session.close()
    sent = b"".join(client._pending).replace(attempt.inbox.rpartition(".")[0].encode(), b"INBOX")
    return seen, outcome, state, sent


scripts = st.lists(
    st.tuples(
        st.sampled_from(
            ["data"] * 12
            + ["dup", "gap", "zero", "pos", "pack", "hb", "foreign", "plain", "garbage", "end"]
        ),
        st.integers(0, 40),
    ),
    max_size=60,
)


@pytest.mark.fuzz
@pytest.mark.skipif(cstream is None, reason="the C extension is not in use")
@FUZZ
@given(
    script=scripts,
    points=st.lists(st.integers(0, 10**6), max_size=12),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=12),
    window=st.tuples(st.integers(1, 40), st.integers(1, 2000)),
    heartbeat=st.sampled_from([0.0, 5.0]),
    service=st.booleans(),
)
async def test_the_c_receive_path_is_the_python_one(
    script: list[tuple[str, int]],
    points: list[int],
    actions: list[str],
    window: tuple[int, int],
    heartbeat: float,
    service: bool,
) -> None:
    """A stream's replies, cut anywhere, to a sync handler whatever it returns: the C
    receive path (scanner, lane, credit, direct calls, packed items) hands the handler
    the same messages, sends the same acks and leaves the same state as the Python
    one."""
    args = (script, points, actions, window, heartbeat, service)
    assert await receive(*args, lane=True) == await receive(*args, lane=False)
