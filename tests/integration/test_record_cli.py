"""`natstream record` as a user runs it: a subprocess stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import nats

from natstream._transport import flush_ordered
from natstream.server import NatsServer


async def _has_interest(url: str, subject: str) -> None:
    """Wait until a request on ``subject`` reaches a subscriber (the recorder is live)."""
    nc = await nats.connect(url)
    try:
        probe = nc.new_inbox()
        for _ in range(200):
            # A publish with a reply: the server answers 503 while nobody subscribes.
            try:
                await nc.request(subject, b"probe", timeout=0.05)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)
                continue
            except nats.errors.TimeoutError:
                return  # delivered to the recorder, which never answers
        raise AssertionError(f"no subscriber on {subject} ({probe})")
    finally:
        await nc.close()


async def test_record_then_sigterm_flushes_everything(server: NatsServer, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "natstream",
        "record",
        "rec.cli.*",
        "--dir",
        str(tmp_path),
        "--name",
        "stream_data",
        "--server",
        server.url,
        "--utc",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(_has_interest(server.url, "rec.cli.probe"), 30)
        nc = await nats.connect(server.url)
        try:
            for i in range(1000):
                await nc.publish("rec.cli.data", f"line {i}".encode())
            await flush_ordered(nc)  # nats-py's flush() can overtake the publishes
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"recorded" in err
    files = sorted(tmp_path.glob("stream_data_*.log"))  # noqa: ASYNC240 - after the process ended
    text = b"".join(f.read_bytes() for f in files).decode()
    lines = [ln for ln in text.splitlines() if "rec.cli.data" in ln]
    assert [ln.rsplit(": ", 1)[1] for ln in lines] == [f"line {i}" for i in range(1000)]
