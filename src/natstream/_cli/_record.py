"""``natstream record``: subscribe to subjects and write them to hour-split files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import TextIO

from .._config import Config
from .._recording import Recording, default_formatter
from .._subscriber import Subscriber
from .._writers import HourlyFileWriter, parse_retention

__all__ = ["record"]

_STATUS_INTERVAL = 0.5  # seconds between status line refreshes


def _status_line(rec: Recording, writer: HourlyFileWriter, elapsed: float) -> str:
    stats = rec.stats()
    rate = stats.messages / elapsed if elapsed > 0 else 0.0
    dropped = f"  dropped {stats.dropped:,}" if stats.dropped else ""
    return (
        f"\r{stats.messages:,} msgs  {stats.bytes / 1e6:,.1f} MB  {rate:,.0f} msg/s"
        f"{dropped}  -> {writer.stats().current_path}"
    )


async def record(
    subjects: list[str],
    *,
    directory: str,
    name: str,
    servers: list[str],
    utc: bool = False,
    compress: str | None = None,
    retention: str | None = None,
    queue: str | None = None,
    status: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Record ``subjects`` until SIGINT/SIGTERM (or ``stop`` is set); return messages written.

    On stop, the subscription is drained, the writer flushed and closed. A status line
    goes to ``status`` (stderr when it is a terminal). Credentials in server URLs are
    never printed.

    Raises:
        WriterError: writing failed (disk full, permissions); what was accepted before
            the failure is on disk as the writer documents.
    """
    writer = HourlyFileWriter(
        directory,
        name,
        utc=utc,
        compress=compress,
        retention=parse_retention(retention) if retention else None,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if status is None and sys.stderr.isatty():
        status = sys.stderr
    started = time.monotonic()
    sub = await Subscriber.connect(Config(servers=servers))
    recordings: list[Recording] = []
    try:
        for subject in subjects:
            recordings.append(
                await sub.stream_subscribe_with_writer(
                    subject, writer, default_formatter, queue=queue
                )
            )
        waits = [asyncio.ensure_future(r.wait()) for r in recordings]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                done, _ = await asyncio.wait(
                    [*waits, stopper], timeout=_STATUS_INTERVAL, return_when="FIRST_COMPLETED"
                )
                for task in done:
                    if task is not stopper:
                        task.result()  # a writer error: raise it
                if status is not None:
                    elapsed = time.monotonic() - started
                    status.write(_status_line(recordings[0], writer, elapsed))
                    status.flush()
        finally:
            for task in [*waits, stopper]:
                task.cancel()
        for r in recordings:
            await r.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await sub.close()
        writer.close()
        if status is not None:
            status.write("\n")
    return sum(r.stats().messages for r in recordings)
