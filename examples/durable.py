"""Durable recording from code: every message once, across a restart (``record_durable``).

Self-contained: it starts an embedded nats-server with JetStream in a temporary store.
"""

import asyncio
import tempfile
from pathlib import Path

from natstream import HourlyFileWriter, Subscriber, utc_formatter
from natstream.server import NatsServer


async def run_recorder(url: str, directory: Path, readings: list[str]) -> None:
    """One run of a recorder; ``readings`` are published while it runs."""
    # The checkpoint beside the files says how far they go; one writer per checkpoint.
    checkpoint = ".sensors.checkpoint"
    with HourlyFileWriter(directory, "sensors", utc=True, checkpoint=checkpoint) as writer:
        async with Subscriber([url]) as sub:
            # The stream "sensors" is created on the first run (it keeps each message
            # until it is recorded); the durable consumer "sensors" remembers where it is.
            recording = await sub.record_durable(
                "sensors.>", writer, utc_formatter, durable="sensors"
            )
            js = sub.nc.jetstream()
            last = 0
            for reading in readings:
                last = (await js.publish("sensors.room1", reading.encode())).seq
            await recording.wait_recorded(last)  # in the files, committed, acknowledged
            await recording.stop()
            print(recording.stats())


async def publish_while_down(url: str, readings: list[str]) -> None:
    async with Subscriber([url]) as sub:  # any client may publish; JetStream keeps them
        for reading in readings:
            await sub.nc.jetstream().publish("sensors.room1", reading.encode())


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="natstream-durable-") as tmp:
        directory = Path(tmp) / "recordings"
        with NatsServer(jetstream=True) as server:
            await run_recorder(server.url, directory, ["21.5", "21.7"])
            await publish_while_down(server.url, ["21.9", "22.1"])  # nobody records
            await run_recorder(server.url, directory, ["22.3"])  # the backlog comes first
        for path in sorted(directory.glob("sensors_*.log")):
            print(f"{path.name}:")
            print(path.read_text(), end="")


asyncio.run(main())
