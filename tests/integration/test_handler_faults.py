"""A handler's failures reach its requester at once, whatever it raises, and never
take the subscriber's connection down with them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nats.aio.msg import Msg

from natstream import (
    STREAM_END,
    Config,
    Pool,
    StreamError,
    StreamOptions,
    StreamRequest,
    Subscriber,
)
from natstream.server import NatsServer

HB = 1.0  # the requester's heartbeat here: a stall would take 3 s to be noticed


class Fatal(BaseException):
    """A BaseException of the application's own, not an Exception."""


def cancelled_result() -> None:
    """What ``fut.result()`` of a cancelled future raises: a CancelledError that no
    cancellation of the running task asked for."""
    fut = asyncio.get_running_loop().create_future()
    fut.cancel()
    fut.result()


def raise_base(which: str) -> None:
    if which == "cancelled":
        cancelled_result()
    raise Fatal("the application's own")


class Collect:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def __call__(self, msg: Msg) -> bool:
        self.data.append(msg.data)
        return True


@pytest.fixture
async def slow_hb_pool(server: NatsServer) -> AsyncIterator[Pool]:
    config = Config([server.url], idle_per_server=1, stream=StreamOptions(heartbeat=HB))
    async with Pool(config) as p:
        yield p


@pytest.mark.parametrize("raised", ["cancelled", "custom"])
async def test_a_sync_handler_raising_a_base_exception_on_its_first_call(
    subscriber: Subscriber, pool: Pool, subject: str, raised: str
) -> None:
    """The first call is made in the request's dispatch, inside the connection's read
    loop: what it raises fails that stream with a 500, and the connection goes on
    serving every subject, that one included."""
    calls = 0

    def failing_first(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise_base(raised)
        return b"ok", False, None

    handle = await subscriber.stream_subscribe_handler(subject, failing_first)
    other = await subscriber.stream_subscribe_handler(subject + ".other", failing_first)
    with pytest.raises(StreamError) as info:
        await pool.stream_request_with_timeout(subject, b"", 5, None, Collect())
    assert (info.value.code, info.value.retryable) == (500, False)
    for subj in (subject, subject + ".other", subject):
        seen = Collect()
        await pool.stream_request_with_timeout(subj, b"", 5, None, seen)
        assert seen.data == [b"ok", STREAM_END]
    assert (handle.stats().streams_failed, handle.stats().streams_completed) == (1, 2)
    assert other.stats().streams_completed == 1


def _index(raised: str) -> Callable[..., object]:
    async def index(request: StreamRequest, i: int) -> tuple[bytes, bool, None]:
        await asyncio.sleep(0)
        if i == 2:
            raise_base(raised)
        return str(i).encode(), True, None

    return index


def _batch(raised: str) -> Callable[..., object]:
    async def batch(request: StreamRequest, b: int) -> tuple[list[bytes], bool, None]:
        await asyncio.sleep(0)
        if b == 1:
            raise_base(raised)
        return [b"0", b"1"], True, None

    return batch


def _generator(raised: str) -> Callable[..., object]:
    async def generator(request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"0"
        await asyncio.sleep(0)
        yield b"1"
        raise_base(raised)

    return generator


@pytest.mark.parametrize("raised", ["cancelled", "custom"])
@pytest.mark.parametrize("kind", ["index", "batch", "generator"])
async def test_an_async_handler_raising_a_base_exception_mid_stream(
    subscriber: Subscriber,
    slow_hb_pool: Pool,
    subject: str,
    kind: str,
    raised: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The requester gets a 500 at once (not a stall three heartbeats later), after
    the replies sent before it; the error is logged with the id the requester saw."""
    caplog.set_level(logging.ERROR, logger="natstream")
    if kind == "index":
        handle = await subscriber.stream_subscribe_handler(subject, _index(raised))  # type: ignore[arg-type]
    elif kind == "batch":
        handle = await subscriber.batch_stream_subscribe_handler(subject, _batch(raised))  # type: ignore[arg-type]
    else:
        handle = await subscriber.stream_handler(subject, _generator(raised))  # type: ignore[arg-type]
    seen = Collect()
    started = time.monotonic()
    with pytest.raises(StreamError) as info:
        await slow_hb_pool.stream_request(subject, b"", seen)
    assert time.monotonic() - started < 2 * HB  # a stall takes 3 heartbeats
    assert (info.value.code, info.value.retryable) == (500, False)
    assert seen.data[:2] == [b"0", b"1"]
    error_id = str(info.value).rsplit("error id ", 1)[1].rstrip(")")
    assert any(error_id in r.getMessage() and subject in r.getMessage() for r in caplog.records)
    assert handle.stats().streams_failed == 1
    # The subscription goes on serving.
    with pytest.raises(StreamError):
        await slow_hb_pool.stream_request(subject, b"", Collect())


async def test_the_exception_text_of_a_base_exception_is_sent_when_asked(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    async with Subscriber(Config([server.url]), send_exception_text=True) as sub:
        await sub.stream_handler(subject, _generator("cancelled"))  # type: ignore[arg-type]
        with pytest.raises(StreamError, match=r"CancelledError \(error id [0-9a-f]+\)"):
            await pool.stream_request(subject, b"", Collect())


async def test_a_requested_cancellation_is_still_a_cancellation(
    subscriber: Subscriber, pool: Pool, subject: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The requester leaves: the handler's task is cancelled, the stream counts as
    cancelled, and nothing is logged as a handler error."""
    caplog.set_level(logging.ERROR, logger="natstream")
    cancelled = asyncio.Event()

    async def endless(request: StreamRequest, i: int) -> tuple[bytes, bool, None]:
        if i == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return b"x", True, None

    handle = await subscriber.stream_subscribe_handler(subject, endless)
    async with pool.stream(subject) as s:
        async for _ in s:
            break
    async with asyncio.timeout(10):
        await cancelled.wait()
        await handle.wait_idle()
    assert (handle.stats().streams_cancelled, handle.stats().streams_failed) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.fast_paths
async def test_a_direct_handler_raising_a_base_exception_does_not_end_the_read_loop(
    server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The transport's own guard, below the responder's: a message handed straight
    from the parser to a handler that raises a BaseException is dropped and logged,
    and the connection goes on reading."""
    from natstream._transport import connect, subscribe_live

    nc = await connect([server.url], {}, allow_reconnect=False)
    try:
        seen: list[bytes] = []
        got = asyncio.Event()

        def direct(msg: Msg) -> None:
            if msg.data == b"bad":
                raise_base("cancelled")
            seen.append(msg.data)
            got.set()

        async def not_called(msg: Msg) -> None:
            raise AssertionError("the direct handler takes every message")

        await subscribe_live(nc.nc, "probe.direct", not_called, direct=direct)
        await nc.nc.publish("probe.direct", b"bad")
        await nc.nc.publish("probe.direct", b"good")
        await asyncio.wait_for(got.wait(), 5)
        assert seen == [b"good"]
        assert any("direct subscription handler raised" in r.getMessage() for r in caplog.records)
    finally:
        await nc.close()


def _returns_bytes(request: StreamRequest, index: int) -> object:
    return b"x"


async def _returns_bytes_async(request: StreamRequest, index: int) -> object:
    return b"x"


def _returns_pair(request: StreamRequest, index: int) -> object:
    return b"x", False


def _batch_of_bytes(request: StreamRequest, batch: int) -> object:
    return b"xy", False, None


@pytest.mark.parametrize(
    ("register", "handler", "words"),
    [
        ("index", _returns_bytes, "index handler {m}._returns_bytes returned bytes; expected (dat"),
        ("index", _returns_bytes_async, "_returns_bytes_async returned bytes; expected (data, mo"),
        ("packed", _returns_bytes, "returned bytes; expected (data, more, err)"),
        ("index", _returns_pair, "_returns_pair returned a tuple of 2 items; expected (data, mo"),
        ("batch", _returns_bytes, "batch handler {m}._returns_bytes returned bytes; expected (ite"),
        ("batch", _batch_of_bytes, "returned items as bytes; expected a list of bytes"),
        ("stream", lambda r: _returns_bytes_async(r, 0), "stream handler {m}.<lambda> returned co"),
    ],
)
@pytest.mark.parametrize("exception_text", [False, True])
async def test_a_wrong_return_value_is_reported_as_such(
    server: NatsServer,
    pool: Pool,
    subject: str,
    caplog: pytest.LogCaptureFixture,
    register: str,
    handler: Any,
    words: str,
    exception_text: bool,
) -> None:
    """Not as "object bytes can't be used in 'await' expression": the log line names
    the handler, what it returned and what was expected; so does the 500 the requester
    gets when the subscriber sends exception texts (else only the error id)."""
    caplog.set_level(logging.ERROR, logger="natstream")
    words = words.format(m=__name__)
    async with Subscriber(Config([server.url]), send_exception_text=exception_text) as sub:
        if register in ("index", "packed"):
            await sub.stream_subscribe_handler(subject, handler, pack=register == "packed")
        elif register == "batch":
            await sub.batch_stream_subscribe_handler(subject, handler)
        else:
            await sub.stream_handler(subject, handler)
        with pytest.raises(StreamError) as info:
            await pool.stream_request(subject, b"", Collect())
    assert info.value.code == 500
    assert (words in info.value.message) is exception_text
    error_id = info.value.message.rsplit("error id ", 1)[1].rstrip(")")
    lines = [r.getMessage() for r in caplog.records if error_id in r.getMessage()]
    assert len(lines) == 1
    assert words in lines[0]
    assert subject in lines[0]
