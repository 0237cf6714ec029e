"""What the durable recording tests share: publishing into JetStream with the server's
acknowledgement, looking at a consumer, and reading the hour files back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js.api import ConsumerInfo

WAIT = 60.0  # seconds: a bound on waiting for a recorder on a loaded 2-core machine
POLL = 0.05  # seconds between looks at another process's progress (no event crosses)


async def publish(
    url: str, subject: str, texts: list[str], *, chunk: int = 500, pause: float = 0.0
) -> None:
    """Publish ``texts`` to ``subject``, each acknowledged by JetStream (stored), in
    chunks of ``chunk`` with ``pause`` seconds between them (a publisher's pace)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for start in range(0, len(texts), chunk):
            acks = [
                await js.publish_async(subject, t.encode()) for t in texts[start : start + chunk]
            ]
            await asyncio.gather(*acks)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await nc.close()


async def consumer(url: str, stream: str, name: str) -> ConsumerInfo:
    nc = await nats.connect(url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(stream, name)
        return info
    finally:
        await nc.close()


async def until(
    url: str, stream: str, name: str, done: Callable[[ConsumerInfo], bool], within: float = WAIT
) -> ConsumerInfo:
    """Look at the consumer every :data:`POLL` seconds until ``done`` holds for it
    (AssertionError after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            info = await consumer(url, stream, name)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None and done(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"consumer {name!r} never got there; last: {info}")
        await asyncio.sleep(POLL)


def acked(count: int) -> Callable[[ConsumerInfo], bool]:
    """The consumer has every one of ``count`` messages acknowledged."""

    def check(info: ConsumerInfo) -> bool:
        floor = info.ack_floor
        return floor is not None and floor.stream_seq >= count and not info.num_ack_pending

    return check


def lines(directory: Path, name: str) -> list[str]:
    """Every line of the hour files ``name_*.log`` in ``directory``, in file-name order."""
    files = sorted(directory.glob(f"{name}_*.log"))
    return b"".join(f.read_bytes() for f in files).decode().splitlines()


def payloads(directory: Path, name: str) -> list[str]:
    """The payloads of :func:`lines` (after the ``subject: `` of each)."""
    return [line.split(": ", 1)[1] for line in lines(directory, name)]
