"""``Subscriber.record_durable`` against nats-server with JetStream: what it writes,
how it stops, what it refuses, and a server restart in the middle."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from durable_help import acked, consumer, lines, payloads, publish, until
from nats.aio.msg import Msg

from natstream import (
    ConfigError,
    DurableRecording,
    HourlyFileWriter,
    JetStreamError,
    NatstreamError,
    Subscriber,
    utc_formatter,
)
from natstream.server import NatsServer, free_port

SUBJECT = "api.data"


@pytest.fixture
def js_server() -> Iterator[NatsServer]:
    with NatsServer(port=free_port(), jetstream=True) as srv:
        yield srv


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[HourlyFileWriter]:
    with HourlyFileWriter(tmp_path, "rec", utc=True, checkpoint=".rec.checkpoint") as w:
        yield w


@pytest.fixture
async def sub(js_server: NatsServer) -> AsyncIterator[Subscriber]:
    async with Subscriber([js_server.url]) as s:
        yield s


async def test_every_message_once_in_order_and_the_checkpoint_says_how_far(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    recording = await sub.record_durable("api.>", writer, utc_formatter, durable="API")
    assert isinstance(recording, DurableRecording)
    assert (recording.stream, recording.consumer, recording.subjects) == ("API", "API", ("api.>",))
    texts = [f"t{i}" for i in range(3000)]
    await publish(js_server.url, SUBJECT, texts)
    await asyncio.wait_for(recording.wait_recorded(3000), 60)
    await recording.stop()
    # stop() ends with an acknowledgement the server confirms: it has them all now
    info = await consumer(js_server.url, "API", "API")
    assert (info.ack_floor.stream_seq, info.num_ack_pending) == (3000, 0)
    stats = recording.stats()
    assert (stats.messages, stats.last_sequence, stats.acked, stats.behind) == (3000, 3000, 3000, 0)
    assert stats.skipped == 0
    assert stats.error is None
    assert stats.last_ack is not None
    assert payloads(tmp_path, "rec") == texts
    token = json.loads(writer.committed or "")
    assert token["sequence"] == 3000
    assert token["stream"] == "API"
    assert token["subjects"] == ["api.>"]


async def test_a_second_recording_resumes_after_the_first(
    js_server: NatsServer, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    for part in range(2):
        async with Subscriber([js_server.url]) as s:
            await s.record_durable(SUBJECT, writer, durable="API")
            await publish(js_server.url, SUBJECT, [f"{part}-{i}" for i in range(100)])
            await until(js_server.url, "API", "API", acked(100 * (part + 1)))
        # closing the subscriber stopped the recording: committed and acknowledged
    assert payloads(tmp_path, "rec") == [f"{p}-{i}" for p in range(2) for i in range(100)]


async def test_a_formatter_of_ones_own_sees_the_stored_time(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    def formatter(msg: Msg) -> bytes:
        return f"{msg.metadata.timestamp.isoformat()} {msg.data.decode()}\n".encode()

    recording = await sub.record_durable(SUBJECT, writer, formatter, durable="API")
    await publish(js_server.url, SUBJECT, ["a"])
    await asyncio.wait_for(recording.wait_recorded(1), 60)
    await recording.stop()
    (line,) = lines(tmp_path, "rec")
    stamp, _, data = line.partition(" ")
    assert data == "a"
    assert stamp.endswith("+00:00")


async def test_the_writer_must_have_a_checkpoint(sub: Subscriber, tmp_path: Path) -> None:
    with HourlyFileWriter(tmp_path, "plain") as plain:
        with pytest.raises(ConfigError, match="checkpoint"):
            await sub.record_durable(SUBJECT, plain, durable="API")


async def test_one_recording_per_writer(sub: Subscriber, writer: HourlyFileWriter) -> None:
    recording = await sub.record_durable(SUBJECT, writer, durable="API")
    with pytest.raises(ConfigError, match="one per writer"):
        await sub.record_durable("api.other", writer, durable="OTHER")
    await recording.stop()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"durable": "a.b"}, "durable name"),
        ({"durable": "API", "stream": "S", "max_age": 60.0}, "max_age and max_bytes"),
        ({"durable": "API", "ack_wait": 0}, "ack_wait"),
        ({"durable": "API", "max_ack_pending": 0}, "max_ack_pending"),
    ],
)
async def test_settings_are_checked_before_anything_is_asked(
    sub: Subscriber, writer: HourlyFileWriter, kwargs: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        await sub.record_durable(SUBJECT, writer, **kwargs)  # type: ignore[arg-type]


async def test_without_jetstream(server: NatsServer, writer: HourlyFileWriter) -> None:
    async with Subscriber([server.url]) as s:
        with pytest.raises(JetStreamError, match="no JetStream"):
            await s.record_durable(SUBJECT, writer, durable="API")


async def test_a_deleted_consumer_ends_the_recording_with_an_error(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter
) -> None:
    recording = await sub.record_durable(SUBJECT, writer, durable="API")
    await publish(js_server.url, SUBJECT, ["a"])
    await until(js_server.url, "API", "API", acked(1))
    nc = await nats.connect(js_server.url)
    try:
        await nc.jetstream().delete_consumer("API", "API")
    finally:
        await nc.close()
    with pytest.raises(JetStreamError, match=r"'API' of stream 'API' was deleted.*start the"):
        await asyncio.wait_for(recording.wait(), 30)
    assert recording.stopped
    assert recording.stats().error is not None
    with pytest.raises(JetStreamError):
        await recording.stop()


async def test_a_server_restart_in_the_middle_loses_and_repeats_nothing(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    recording = await sub.record_durable(SUBJECT, writer, durable="API")
    await publish(js_server.url, SUBJECT, [f"a{i}" for i in range(2000)])
    js_server.kill()  # mid-stream, maybe with deliveries on the way
    js_server.start()  # same port, same store
    await publish(js_server.url, SUBJECT, [f"b{i}" for i in range(2000)])
    await asyncio.wait_for(recording.wait_recorded(4000), 60)
    await recording.stop()
    got = payloads(tmp_path, "rec")
    assert got == [f"a{i}" for i in range(2000)] + [f"b{i}" for i in range(2000)]


async def test_memory_is_bounded_by_max_ack_pending_on_a_backlog(
    js_server: NatsServer, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    async with Subscriber([js_server.url]) as s:  # create the stream and consumer, then go
        await s.record_durable(SUBJECT, writer, durable="API", max_ack_pending=200)
    await publish(js_server.url, SUBJECT, [f"{i:05d}" for i in range(20_000)], chunk=2000)
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, durable="API", max_ack_pending=200)
        most = 0
        deadline = time.monotonic() + 60
        while True:
            info = await consumer(js_server.url, "API", "API")
            most = max(most, info.num_ack_pending or 0)
            in_memory = len(recording._deque) + len(recording._unacked) + recording._seq.held
            assert in_memory <= 200
            if info.ack_floor.stream_seq >= 20_000:
                break
            assert time.monotonic() < deadline, f"not all acknowledged in 60 s: {info}"
            await asyncio.sleep(0.01)
    assert 0 < most <= 200
    assert payloads(tmp_path, "rec") == [f"{i:05d}" for i in range(20_000)]


async def test_waiting_for_a_sequence_past_the_end_raises_once_stopped(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter
) -> None:
    recording = await sub.record_durable(SUBJECT, writer, durable="API")
    waiter = asyncio.create_task(recording.wait_recorded(10))
    await publish(js_server.url, SUBJECT, ["a"])
    await asyncio.wait_for(recording.wait_recorded(1), 60)
    assert not waiter.done()
    await recording.stop()
    with pytest.raises(NatstreamError, match="stopped at sequence 1, before 10"):
        await asyncio.wait_for(waiter, 60)


async def test_held_messages_the_stream_let_expire_do_not_hold_the_recording_for_ever(
    js_server: NatsServer, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    # A crashed run left deliveries pending; the restart holds what arrives after them.
    # The stream's max_age then removes all of them, missing and held alike: the server
    # stops counting them, and the recording must go on rather than wait for ever.
    options = {"durable": "API", "max_age": 1.0}
    async with Subscriber([js_server.url]) as s:  # create the stream and the consumer
        await s.record_durable(SUBJECT, writer, **options)  # type: ignore[arg-type]
    await publish(js_server.url, SUBJECT, [f"a{i}" for i in range(5)])
    nc = await nats.connect(js_server.url)
    try:  # the crashed run: delivered, never acknowledged
        pulled = await nc.jetstream().pull_subscribe_bind("API", "API")
        assert len(await pulled.fetch(5, timeout=30)) == 5
    finally:
        await nc.close()
    await publish(js_server.url, SUBJECT, [f"b{i}" for i in range(3)])
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, **options)  # type: ignore[arg-type]
        for _ in range(1200):  # bounded: 60 s
            if recording.stats().held == 3:
                break
            await asyncio.sleep(0.05)
        assert recording.stats().held == 3
        await until(js_server.url, "API", "API", lambda info: info.num_ack_pending == 0)
        await publish(js_server.url, SUBJECT, ["c0"])
        await asyncio.wait_for(recording.wait_recorded(9), 60)
        await recording.stop()
    assert payloads(tmp_path, "rec") == ["b0", "b1", "b2", "c0"]


async def test_files_of_a_deleted_stream_are_refused_before_anything_is_created(
    js_server: NatsServer, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    # The refusal must come before the stream and the consumer are made again: a
    # consumer made then would start after the old stream's sequence, and the next
    # recording (into another directory, as the error says) would miss the new
    # stream's first messages.
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, durable="API")
        await publish(js_server.url, SUBJECT, [f"old{i}" for i in range(5)])
        await asyncio.wait_for(recording.wait_recorded(5), 60)
    nc = await nats.connect(js_server.url)
    try:
        await nc.jetstream().delete_stream("API")
    finally:
        await nc.close()
    async with Subscriber([js_server.url]) as s:
        with pytest.raises(ConfigError, match="another directory or name"):
            await s.record_durable(SUBJECT, writer, durable="API")
    other = tmp_path / "other"
    with HourlyFileWriter(other, "rec", checkpoint=".rec.checkpoint") as fresh:
        async with Subscriber([js_server.url]) as s:
            recording = await s.record_durable(SUBJECT, fresh, durable="API")
            await publish(js_server.url, SUBJECT, [f"new{i}" for i in range(3)])
            await asyncio.wait_for(recording.wait_recorded(3), 30)
    assert payloads(other, "rec") == ["new0", "new1", "new2"]


async def test_messages_acknowledged_into_other_files_are_reported_as_missing_here(
    js_server: NatsServer,
    writer: HourlyFileWriter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The same durable name recorded into another directory meanwhile: the consumer is
    # past what these files hold. They cannot get those messages any more; say so.
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, durable="API")
        await publish(js_server.url, SUBJECT, ["a0", "a1"])
        await asyncio.wait_for(recording.wait_recorded(2), 60)
    with HourlyFileWriter(tmp_path / "other", "rec", checkpoint=".rec.checkpoint") as other:
        async with Subscriber([js_server.url]) as s:
            recording = await s.record_durable(SUBJECT, other, durable="API")
            await publish(js_server.url, SUBJECT, ["b0", "b1", "b2"])
            await asyncio.wait_for(recording.wait_recorded(5), 60)
    caplog.clear()
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, durable="API")
        await publish(js_server.url, SUBJECT, ["c0"])
        await asyncio.wait_for(recording.wait_recorded(6), 60)
    assert payloads(tmp_path, "rec") == ["a0", "a1", "c0"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "sequences 3 to 5" in warning, warning


async def test_a_stop_while_the_server_is_down_returns_at_once(
    js_server: NatsServer, writer: HourlyFileWriter, tmp_path: Path
) -> None:
    async with Subscriber([js_server.url]) as s:
        recording = await s.record_durable(SUBJECT, writer, durable="API")
        await publish(js_server.url, SUBJECT, ["a"])
        await asyncio.wait_for(recording.wait_recorded(1), 60)
        js_server.kill()
        for _ in range(600):  # bounded: 30 s
            if not s.nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert not s.nc.is_connected
        started = time.monotonic()
        await asyncio.wait_for(recording.stop(), 30)
        # nothing to wait for: no round trip can complete (it took 7 s, a drain's flush
        # timing out and then an unanswerable confirmation)
        assert time.monotonic() - started < 4.0
    assert payloads(tmp_path, "rec") == ["a"]


async def test_a_consumer_whose_request_limits_refuse_every_pull_ends_the_recording(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter
) -> None:
    # Made elsewhere, agreeing on all the recording checks, but with a max_batch below
    # the recording's batch: each pull is refused at once. It used to ask again at
    # once, for ever (some 10,000 requests a second, nothing recorded, no error).
    nc = await nats.connect(js_server.url)
    try:
        await nc.jetstream().add_stream(name="S", subjects=[SUBJECT])
        config = {
            "durable_name": "D",
            "ack_policy": "explicit",
            "filter_subject": SUBJECT,
            "max_deliver": -1,
            "max_batch": 10,
            "ack_wait": 30_000_000_000,
            "max_ack_pending": 1000,
        }
        body = json.dumps({"stream_name": "S", "config": config}).encode()
        reply = await nc.request("$JS.API.CONSUMER.CREATE.S.D", body, timeout=10)
        assert b'"error"' not in reply.data, reply.data
    finally:
        await nc.close()
    recording = await sub.record_durable(SUBJECT, writer, durable="D", stream="S")
    with pytest.raises(JetStreamError, match=r"MaxRequestBatch.*another durable name"):
        await asyncio.wait_for(recording.wait(), 30)


async def test_a_server_back_without_the_consumer_ends_the_recording(
    js_server: NatsServer, sub: Subscriber, writer: HourlyFileWriter
) -> None:
    # The server comes back with its JetStream storage lost (a new disk, a wiped
    # volume): the consumer is gone, and each pull is answered "no responders". The
    # recording asked again every second, for ever, its status line saying "recording".
    recording = await sub.record_durable(SUBJECT, writer, durable="API")
    await publish(js_server.url, SUBJECT, ["a"])
    await asyncio.wait_for(recording.wait_recorded(1), 60)
    js_server.kill()
    assert js_server.store_dir is not None
    shutil.rmtree(js_server.store_dir)
    js_server.start()
    with pytest.raises(JetStreamError, match="was deleted"):
        await asyncio.wait_for(recording.wait(), 60)
