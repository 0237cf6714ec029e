"""stream_subscribe_with_writer against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from natstream import Subscriber
from natstream._recording import Recording, default_formatter
from natstream._transport import flush_ordered
from natstream.server import NatsServer


class MemoryWriter:
    def __init__(self, fail_after: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.flushes = 0
        self.fail_after = fail_after

    def write(self, data: bytes) -> int:
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise OSError(28, "No space left on device")
        self.chunks.append(data)
        return len(data)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass


def raw(msg: Msg) -> bytes:
    return msg.subject.encode() + b" " + msg.data + b"\n"


async def test_records_wildcard_subjects_in_order(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    writer = MemoryWriter()
    rec = await subscriber.stream_subscribe_with_writer(f"{subject}.*", writer, raw)
    nc = await nats.connect(server.url)
    try:
        for i in range(100):
            await nc.publish(f"{subject}.{'ab'[i % 2]}", str(i).encode())
        await flush_ordered(nc)  # nats-py's flush() can overtake the publishes
    finally:
        await nc.close()
    await rec.stop()
    assert writer.chunks == [f"{subject}.{'ab'[i % 2]} {i}\n".encode() for i in range(100)]
    assert writer.flushes >= 1
    stats = rec.stats()
    assert (stats.messages, stats.dropped, stats.error) == (100, 0, None)


async def test_writer_error_stops_recording_and_is_raised(
    server: NatsServer, subscriber: Subscriber, subject: str
) -> None:
    writer = MemoryWriter(fail_after=5)
    rec = await subscriber.stream_subscribe_with_writer(subject, writer, raw)
    nc = await nats.connect(server.url)
    try:
        for i in range(10):
            await nc.publish(subject, str(i).encode())
        await flush_ordered(nc)  # nats-py's flush() can overtake the publishes
    finally:
        await nc.close()
    with pytest.raises(OSError, match="No space left"):
        await asyncio.wait_for(rec.wait(), 5)
    with pytest.raises(OSError, match="No space left"):
        await rec.stop()
    assert len(writer.chunks) == 5


def test_default_formatter_one_line_per_message() -> None:
    msg = Msg(_client=None, subject="logs.app", data=b"a\nb")  # type: ignore[arg-type]
    line = default_formatter(msg)
    assert line.endswith(b"] logs.app: a\\nb\n")
    assert line.count(b"\n") == 1


@pytest.mark.parametrize(
    ("data", "escaped"),
    [
        (b"plain", b"plain"),
        (b"back\\slash", b"back\\\\slash"),
        (b"cr\rlf\r\n", b"cr\\rlf\\r\\n"),
        (b"\\n is not a newline", b"\\\\n is not a newline"),
        (b"", b""),
    ],
)
def test_default_formatter_escapes_the_payload(data: bytes, escaped: bytes) -> None:
    msg = Msg(_client=None, subject="a.b", data=data)  # type: ignore[arg-type]
    assert default_formatter(msg).split(b"] ", 1)[1] == b"a.b: " + escaped + b"\n"


@pytest.fixture
def berlin_local_time(local_time_zone: Callable[[str], None]) -> None:
    local_time_zone("Europe/Berlin")


@pytest.mark.usefixtures("berlin_local_time")
def test_default_formatter_stamp_is_local_time_to_the_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached stamp matches ``datetime.fromtimestamp`` at every step, DST included."""
    msg = Msg(_client=None, subject="s", data=b"x")  # type: ignore[arg-type]
    fall_back = datetime(2026, 10, 25, 0, 59, 59, tzinfo=UTC).timestamp()  # 02:59:59 CEST
    instants = [fall_back + step / 7 for step in range(-30, 30)]  # ~143 ms steps
    instants += [fall_back + 3600 + k / 1000 for k in (0, 1, 1, 999, 1000, 1001)]
    instants += [fall_back + 0.0004, fall_back + 0.9996, 1_700_000_000.0]
    for now in instants:
        monkeypatch.setattr("natstream._recording._time", lambda now=now: now)
        millis = int(now * 1000)
        local = datetime.fromtimestamp(millis / 1000 + 0.0005)
        expected = local.strftime("[%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}] "
        assert default_formatter(msg) == expected.encode() + b"s: x\n", now


def test_deliver_writes_and_counts_and_stops_on_a_writer_error() -> None:
    writer = MemoryWriter(fail_after=2)
    rec = Recording("s", writer, raw)
    for i in range(4):
        rec._deliver(Msg(_client=None, subject="s", data=b"%d" % i))  # type: ignore[arg-type]
    assert writer.chunks == [b"s 0\n", b"s 1\n"]
    stats = rec.stats()
    assert (stats.messages, stats.bytes) == (2, 8)
    assert stats.error == "OSError: [Errno 28] No space left on device"


async def test_100k_messages_into_hourly_files(
    server: NatsServer, subject: str, tmp_path: Path
) -> None:
    from natstream._writers import HourlyFileWriter

    sub = await Subscriber.connect([server.url])
    writer = HourlyFileWriter(str(tmp_path), "stream_data")
    try:
        rec = await sub.stream_subscribe_with_writer(subject, writer, raw)
        nc = await nats.connect(server.url)
        try:
            n = 100_000
            for i in range(n):
                await nc.publish(subject, str(i).encode())
                if i % 5000 == 0:
                    await nc.flush()  # pace the publisher a little, as real producers do
            await flush_ordered(nc)  # nats-py's flush() can overtake the publishes
        finally:
            await nc.close()
    finally:
        await sub.close()  # drains the subscription and flushes the writer
        writer.close()
    assert rec.stats().dropped == 0
    files = sorted(tmp_path.glob("stream_data_*.log"))  # noqa: ASYNC240 - test teardown
    lines = b"".join(p.read_bytes() for p in files)
    expected = b"".join(f"{subject} {i}\n".encode() for i in range(n))
    if lines != expected:  # an hour boundary can split the run in two files, in order
        assert sorted(lines.splitlines()) == sorted(expected.splitlines())
    assert lines.count(b"\n") == n
