"""The Subscriber's life: opened once (``async with`` or ``connect``), closed once,
and nothing it or its streams started left running after ``close()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

import natstream
from conftest import assert_no_subscriber_tasks
from natstream import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Config,
    NoServersError,
    Pool,
    StreamRequest,
    Subscriber,
    SubscriberClosedError,
)
from natstream._protocol._wire import CTL_HEARTBEAT, HDR_CONTROL
from natstream.server import NatsServer, free_port


class Collect:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def __call__(self, msg: Msg) -> bool:
        self.data.append(msg.data)
        return True


def one_reply(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
    return b"x", False, None


async def nothing(request: StreamRequest) -> AsyncIterator[bytes]:
    return
    yield b""


async def test_async_with_opens_the_subscriber_and_closes_it(
    server: NatsServer, pool: Pool, subject: str
) -> None:
    async with Subscriber(Config([server.url]), close_grace=1.0) as sub:
        assert sub.nc.is_connected
        handle = await sub.stream_subscribe_handler(subject, one_reply)
        seen = Collect()
        await pool.stream_request(subject, b"", seen)
        assert seen.data == [b"x", STREAM_END]
        assert handle.stats().streams_completed == 1
    with pytest.raises(SubscriberClosedError, match="closed; create a new Subscriber"):
        await sub.stream_handler(subject, nothing)
    with pytest.raises(SubscriberClosedError):
        sub.nc  # noqa: B018
    assert_no_subscriber_tasks()


async def test_an_open_subscriber_is_entered_as_it_is(server: NatsServer) -> None:
    sub = await Subscriber.connect([server.url])
    async with sub as entered:
        assert entered is sub
        assert sub.nc.is_connected
    with pytest.raises(SubscriberClosedError):
        sub.nc  # noqa: B018


async def test_a_closed_subscriber_is_not_reopened(server: NatsServer) -> None:
    sub = await Subscriber.connect([server.url])
    await sub.close()
    await sub.close()  # idempotent
    with pytest.raises(SubscriberClosedError, match="cannot be reopened; create a new Subscriber"):
        async with sub:
            pass


async def test_a_subscriber_not_opened_says_how_to_open_it(server: NatsServer) -> None:
    sub = Subscriber(Config([server.url]))
    with pytest.raises(SubscriberClosedError, match=r"not open yet; use `async with Subscriber"):
        await sub.stream_handler("a.b", nothing)
    await sub.close()  # only marks it closed
    with pytest.raises(SubscriberClosedError, match="cannot be reopened"):
        async with sub:
            pass


async def test_a_subscriber_that_cannot_connect_is_closed() -> None:
    sub = Subscriber(Config([f"nats://127.0.0.1:{free_port()}"], connect_timeout=0.5))
    with pytest.raises(NoServersError):
        async with sub:
            pass
    with pytest.raises(SubscriberClosedError, match="cannot be reopened"):
        async with sub:
            pass


async def test_closed_while_opening(server: NatsServer) -> None:
    sub = Subscriber(Config([server.url]))
    opening = asyncio.create_task(sub.__aenter__())
    await asyncio.sleep(0)  # connecting now
    await sub.close()
    with pytest.raises(SubscriberClosedError, match="closed while it was opening"):
        await opening
    with pytest.raises(SubscriberClosedError):
        sub.nc  # noqa: B018
    assert_no_subscriber_tasks()


async def test_close_stops_streams_in_flight_and_pending_sends(
    server: NatsServer, pool: Pool, subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams whose handlers never finish, heartbeats and a busy rejection whose
    sends never finish: close() cancels each after the grace period, awaits it,
    and leaves no task behind (a second close() waits for the first)."""
    from natstream._responder import _sender

    never = asyncio.Event()  # nothing sets it: what waits on it waits until cancelled
    heartbeat_stuck, reply_stuck, handler_waits = (asyncio.Event() for _ in range(3))
    publish = _sender.publish

    async def stuck(link, subject, payload, **kw):  # type: ignore[no-untyped-def]
        if (kw.get("headers") or {}).get(HDR_CONTROL) == CTL_HEARTBEAT:
            heartbeat_stuck.set()
            await never.wait()
        if payload.startswith(STREAM_ERROR_PREFIX + b"busy"):
            reply_stuck.set()
            await never.wait()
        await publish(link, subject, payload, **kw)

    monkeypatch.setattr(_sender, "publish", stuck)

    async def waits(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        handler_waits.set()
        await never.wait()
        return b"", False, None

    async def first_then_waits(request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"first"
        await never.wait()

    started = asyncio.Event()
    # stall_factor: the index stream's requester never hears of it (its heartbeats are
    # stuck): it must still be in flight when close() comes.
    async with Subscriber(Config([server.url]), close_grace=0.3, stall_factor=50) as sub:
        index = await sub.stream_subscribe_handler(
            f"{subject}.index", waits, max_concurrent_streams=1
        )
        gen = await sub.stream_handler(f"{subject}.gen", first_then_waits)
        requests = [
            asyncio.create_task(pool.stream_request(f"{subject}.index", b"", Collect())),
            asyncio.create_task(
                pool.stream_request(f"{subject}.gen", b"", lambda m: started.set() or True)
            ),
        ]
        async with asyncio.timeout(5):
            await started.wait()
            await handler_waits.wait()
            requests.append(  # over the limit: its 503 reply never leaves
                asyncio.create_task(pool.stream_request(f"{subject}.index", b"", Collect()))
            )
            await reply_stuck.wait()
            await heartbeat_stuck.wait()  # after the pool's heartbeat interval, 0.2 s
        names = {t.get_name().split("-")[-1] for t in sub._tasks}
        # The stuck heartbeat-kind send: the accept's task on a plain link (a fast
        # one queues the accept in the request's dispatch), else a heartbeat's.
        assert "503" in names
        assert names & {"heartbeat", "accept"}, names
        await asyncio.gather(sub.close(), sub.close())
        assert not sub._tasks
        assert_no_subscriber_tasks()
    for stats in (index.stats(), gen.stats()):
        assert (stats.streams_active, stats.streams_cancelled) == (0, 1)
    for task in requests:
        task.cancel()
    await asyncio.gather(*requests, return_exceptions=True)


@pytest.mark.parametrize(
    "options",
    [
        {"max_concurrent_streams": 0},
        {"close_grace": -1},
        {"max_request_size": -1},
        {"max_stream_duration": 0},
        {"stall_factor": 0.5},
    ],
)
def test_out_of_range_options_are_config_errors(options: dict[str, float]) -> None:
    with pytest.raises(natstream.ConfigError, match=next(iter(options))):
        Subscriber(Config(["nats://127.0.0.1:4222"]), **options)  # type: ignore[arg-type]


async def test_a_subscription_limit_out_of_range_is_a_config_error(
    subscriber: Subscriber, subject: str
) -> None:
    for limit in (0, -1):
        with pytest.raises(natstream.ConfigError, match="max_concurrent_streams"):
            await subscriber.stream_handler(subject, nothing, max_concurrent_streams=limit)
    handle = await subscriber.stream_handler(subject, nothing, max_concurrent_streams=None)
    assert handle.max_concurrent_streams == subscriber.max_concurrent_streams
