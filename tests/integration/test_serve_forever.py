"""``Subscriber.serve_forever``: serve until a stop signal, then close gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from conftest import FAST
from natstream import (
    Config,
    Pool,
    StreamError,
    StreamRequest,
    Subscriber,
    SubscriberClosedError,
    SubscriberState,
)
from natstream.server import NatsServer

WAIT = 30  # seconds: generous bounds for a loaded 2-core machine


class _Closing(logging.Handler):
    """Sets ``event`` when the subscriber logs that a signal closes it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if ": closing;" in record.getMessage():
            self.event.set()


@pytest.fixture
def closing(caplog: pytest.LogCaptureFixture) -> Iterator[_Closing]:
    """Watches the natstream logger (at INFO) for the line a closing signal logs."""
    caplog.set_level(logging.INFO, logger="natstream")
    handler = _Closing()
    logging.getLogger("natstream").addHandler(handler)
    yield handler
    logging.getLogger("natstream").removeHandler(handler)


async def _started(sub: Subscriber, subject: str) -> asyncio.Event:
    """Serve ``subject`` with a generator that yields once, then waits to be released
    (by the returned event)."""
    release = asyncio.Event()

    async def slow(request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"last"

    await sub.stream_handler(subject, slow)
    return release


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_it_and_in_flight_streams_finish(
    server: NatsServer,
    subject: str,
    sig: signal.Signals,
    closing: _Closing,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = signal.getsignal(sig)
    sub = await Subscriber.connect([server.url], close_grace=WAIT)
    release = await _started(sub, subject)
    serving = asyncio.create_task(sub.serve_forever())
    async with Pool(Config([server.url], stream=FAST)) as pool:
        async with pool.stream(subject, stream_timeout=WAIT) as s:
            it = aiter(s)
            assert (await anext(it)).data == b"first"
            os.kill(os.getpid(), sig)
            await asyncio.wait_for(closing.event.wait(), WAIT)
            assert sub.stats().state is SubscriberState.CLOSING
            release.set()  # the stream in flight finishes within the grace
            assert [m.data async for m in it] == [b"last"]
        assert await asyncio.wait_for(serving, WAIT) == sig
    assert sub.stats().state is SubscriberState.CLOSED
    assert sub.stats().streams_completed == 1
    assert signal.getsignal(sig) == before  # the previous handler is back
    assert f"{sig.name}: closing; streams in flight get {WAIT} s to finish" in caplog.messages


async def test_a_stream_longer_than_the_grace_ends_with_a_retryable_error(
    server: NatsServer, subject: str
) -> None:
    sub = await Subscriber.connect([server.url])
    await _started(sub, subject)  # never released
    stop = asyncio.Event()
    serving = asyncio.create_task(sub.serve_forever(stop, grace=0.2))

    async def take_all(pool: Pool) -> None:
        async with pool.stream(subject, stream_timeout=WAIT) as s:
            async for _ in s:
                stop.set()  # at the first reply

    async with Pool(Config([server.url], stream=FAST)) as pool:
        with pytest.raises(StreamError) as info:
            await take_all(pool)
    assert (info.value.code, info.value.retryable) == (503, True)
    assert await asyncio.wait_for(serving, WAIT) is None


async def test_a_close_elsewhere_ends_it(server: NatsServer) -> None:
    sub = await Subscriber.connect([server.url])
    serving = asyncio.create_task(sub.serve_forever())
    await asyncio.sleep(0)  # it waits
    await sub.close()
    assert await asyncio.wait_for(serving, WAIT) is None


async def test_cancelling_it_closes_the_subscriber(server: NatsServer) -> None:
    before = signal.getsignal(signal.SIGTERM)
    sub = await Subscriber.connect([server.url])
    serving = asyncio.create_task(sub.serve_forever())
    await asyncio.sleep(0)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert sub.stats().state is SubscriberState.CLOSED
    assert signal.getsignal(signal.SIGTERM) == before


async def test_it_needs_an_open_subscriber(server: NatsServer) -> None:
    with pytest.raises(SubscriberClosedError):
        await Subscriber([server.url]).serve_forever()
