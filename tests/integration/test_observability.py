"""What a Pool and a Subscriber tell about themselves: ``Subscriber.stats()``, the
subscriber's connection events at INFO, and ``on_connection_event`` hooks on both."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from natstream import (
    Config,
    ConnectionEvent,
    ConnectionEventKind,
    Pool,
    StreamError,
    StreamRequest,
    Subscriber,
    SubscriberState,
)
from natstream.server import NatsServer, free_port

CONNECTED, DISCONNECTED, RECONNECTED, LAME_DUCK, CLOSED = ConnectionEventKind
LAME_DUCK_CONFIG = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"'  # 30 s: minimum


def ten(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    return b"%d" % index, index < 9, None


async def failing(request: StreamRequest) -> AsyncIterator[bytes]:
    yield b"x"
    raise RuntimeError("no")


class Events:
    """A hook that records events, and lets a test wait for one of a kind."""

    def __init__(self) -> None:
        self.seen: list[ConnectionEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: ConnectionEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    def kinds(self) -> list[ConnectionEventKind]:
        return [e.kind for e in self.seen]

    async def wait_for(self, kind: ConnectionEventKind, count: int = 1) -> None:
        async with asyncio.timeout(20):
            while self.kinds().count(kind) < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def restartable() -> Iterator[NatsServer]:
    """A nats-server of this test's own that comes back on the same port."""
    with NatsServer(port=free_port()) as srv:
        yield srv


def with_credentials(url: str) -> str:
    """``url`` with a user and password (a server without auth takes any)."""
    return url.replace("nats://", "nats://someone:s3cret@")


async def test_subscriber_stats(server: NatsServer, pool: Pool, subject: str) -> None:
    async with Subscriber([with_credentials(server.url)]) as sub:
        index = await sub.stream_subscribe_handler(f"{subject}.index", ten)
        gen = await sub.stream_handler(f"{subject}.gen", failing)
        for _ in range(2):
            await pool.stream_request(f"{subject}.index", b"", lambda m: True)
        with pytest.raises(StreamError):
            await pool.stream_request(f"{subject}.gen", b"", lambda m: True)
        st = sub.stats()
        assert (st.state, st.connected, st.server) == (SubscriberState.OPEN, True, server.url)
        assert st.subscriptions == (gen.stats(), index.stats())  # by subject
        assert (st.streams_started, st.streams_completed, st.streams_failed) == (3, 2, 1)
        assert (st.streams_active, st.streams_cancelled, st.streams_rejected_busy) == (0, 0, 0)
        assert st.replies_sent == 21
        assert (st.reconnects, st.disconnects) == (0, 0)
        await gen.stop()
        after = sub.stats()
        assert after.subscriptions == (index.stats(),)  # a stopped one is only in the sums
        assert (after.streams_started, after.streams_failed, after.replies_sent) == (3, 1, 21)
    closed = sub.stats()
    assert (closed.state, closed.connected, closed.subscriptions) == (
        SubscriberState.CLOSED,
        False,
        (),
    )
    assert (closed.streams_started, closed.streams_completed, closed.replies_sent) == (3, 2, 21)


async def test_subscription_stats_count_bytes_resumes_errors_and_time(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    """Bytes sent, resumed streams, the last error marker and the time whole streams
    took (each from its request to its end)."""
    calls = 0

    async def flaky(request: StreamRequest) -> AsyncIterator[bytes]:
        nonlocal calls
        calls += 1
        start = request.resume.seq if request.resume else 0
        for i in range(start, 6):
            if calls == 1 and i == 3:
                raise StreamError("try again", code=503, retryable=True)
            await asyncio.sleep(0.01)
            yield b"%02d" % i

    async with Subscriber([server.url]) as sub:
        handle = await sub.stream_handler(subject, flaky)
        assert handle.stats().last_error == ""
        got: list[bytes] = []
        await pool.stream_request_with_retry(
            subject, b"", 1, 0.0, lambda m: got.append(m.data) or True
        )
        # The handler sees the first attempt's error marker, then the retry's replies.
        assert got == [b"00", b"01", b"02", b"__STREAM_ERROR__:try again", b"03", b"04", b"05",
                       b"__STREAM_END__"]  # fmt: skip
        st = handle.stats()
        assert (st.streams_started, st.streams_failed, st.streams_completed) == (2, 1, 1)
        assert (st.replies_sent, st.bytes_sent, st.streams_resumed) == (6, 12, 1)
        assert st.last_error == "503 try again"
        assert 0.06 <= st.processing_time < 10  # six replies, 10 ms apart, at least


async def test_subscriber_connection_events_are_logged_and_hooked(
    restartable: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Lost, back, closed: each is an INFO line and an event naming the server
    without credentials; the counts are in stats()."""
    caplog.set_level(logging.INFO, logger="natstream")
    events = Events()
    url = restartable.url
    sub = await Subscriber.connect([with_credentials(url)], on_connection_event=events)
    try:
        assert events.kinds() == [CONNECTED]
        await asyncio.to_thread(restartable.kill)
        await events.wait_for(DISCONNECTED)
        assert (sub.stats().connected, sub.stats().disconnects) == (False, 1)
        await asyncio.to_thread(restartable.start)
        await events.wait_for(RECONNECTED)
        assert (sub.stats().connected, sub.stats().reconnects) == (True, 1)
    finally:
        await sub.close()
    assert events.kinds() == [CONNECTED, DISCONNECTED, RECONNECTED, CLOSED]
    assert {e.server for e in events.seen} == {url}
    times = [e.time for e in events.seen]
    assert times == sorted(times)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for line in (
        f"subscriber connected to {url}",
        f"subscriber disconnected from {url}",
        f"subscriber reconnected to {url}",
        f"subscriber: connection to {url} closed",
    ):
        assert line in lines
    assert not [r for r in caplog.records if "s3cret" in r.getMessage()]


async def test_a_subscriber_hears_of_lame_duck_mode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="natstream")
    events = Events()
    with NatsServer(config=LAME_DUCK_CONFIG) as srv:
        async with Subscriber([srv.url], on_connection_event=events):
            await asyncio.to_thread(srv.lame_duck)
            await events.wait_for(LAME_DUCK)
        assert f"subscriber: {srv.url} is in lame duck mode" in caplog.messages
        srv.kill()


async def test_pool_connection_events(restartable: NatsServer) -> None:
    """Each of the pool's connections: connected at open, disconnected when the
    server goes, reconnected (a new connection in its place) when it is back,
    closed by close()."""
    events = Events()
    config = Config(
        [restartable.url], idle_per_server=2, reconnect_backoff=0.05, reconnect_backoff_max=0.2
    )
    async with Pool(config, on_connection_event=events):
        assert events.kinds() == [CONNECTED, CONNECTED]
        await asyncio.to_thread(restartable.kill)
        await events.wait_for(DISCONNECTED, 2)
        await asyncio.to_thread(restartable.start)
        await events.wait_for(RECONNECTED, 2)
    assert sorted(events.kinds(), key=lambda k: list(ConnectionEventKind).index(k)) == [
        CONNECTED,
        CONNECTED,
        DISCONNECTED,
        DISCONNECTED,
        RECONNECTED,
        RECONNECTED,
        CLOSED,
        CLOSED,
    ]
    assert {e.server for e in events.seen} == {restartable.url}


@pytest.mark.parametrize("raised", [RuntimeError, asyncio.CancelledError])
async def test_a_hook_that_raises_breaks_nothing(
    server: NatsServer, subject: str, caplog: pytest.LogCaptureFixture, raised: type[BaseException]
) -> None:
    def bad(event: ConnectionEvent) -> None:
        raise raised("the hook's own bug")

    async with (
        Subscriber([server.url], on_connection_event=bad) as sub,
        Pool(Config([server.url], idle_per_server=1), on_connection_event=bad) as pool,
    ):
        await sub.stream_subscribe_handler(subject, ten)
        seen: list[bytes] = []
        await pool.stream_request(subject, b"", lambda m: seen.append(m.data) or True)
        assert len(seen) == 11
    raised_lines = [r for r in caplog.records if "hook raised" in r.getMessage()]
    assert len(raised_lines) == 4  # connected and closed, of each
    assert all(r.exc_info for r in raised_lines)


async def _not_plain(event: ConnectionEvent) -> None:
    return None


@pytest.mark.parametrize("hook", [_not_plain, "not callable"])
@pytest.mark.parametrize(
    "make", [lambda h: Pool(["nats://127.0.0.1:4222"], on_connection_event=h),
             lambda h: Subscriber(["nats://127.0.0.1:4222"], on_connection_event=h)],
)  # fmt: skip
def test_a_hook_must_be_a_plain_callable(hook: object, make: Callable[[object], object]) -> None:
    with pytest.raises(TypeError, match="on_connection_event must be a plain function"):
        make(hook)
