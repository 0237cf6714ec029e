"""Record subjects into hour files from code: ``Subscriber.stream_subscribe_with_writer``."""

import asyncio
import os
import tempfile
from pathlib import Path

from natstream import Config, HourlyFileWriter, Subscriber, utc_formatter

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


async def record(directory: Path) -> None:
    # sensors_YYYY-MM-DD_HH.log, one file per UTC hour; the writer is yours to close.
    with HourlyFileWriter(directory, "sensors", utc=True) as writer:
        async with Subscriber(Config([URL])) as sub:
            # utc_formatter: '[2026-01-31 23:59:59.123Z] sensors.room1: 21.5', in UTC
            # as the file names are (default_formatter stamps local time).
            recording = await sub.stream_subscribe_with_writer("sensors.>", writer, utc_formatter)
            # Any client may publish; here the subscriber's own nats-py connection does.
            for i in range(6):
                await sub.nc.publish(f"sensors.room{i % 2}", f"{20 + i / 2}".encode())
            await recording.stop()  # what the server routed to it is written, then flushed
            print(recording.stats())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="natstream-recording-") as tmp:
        asyncio.run(record(Path(tmp)))
        for path in sorted(Path(tmp).iterdir()):
            print(f"{path.name}:")
            print(path.read_text(), end="")


main()
