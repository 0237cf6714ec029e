"""Failures are visible by default: an application that configured no logging still
sees natstream's warnings and errors on stderr (Python's last-resort handler)."""

from __future__ import annotations

import subprocess
import sys

from natstream.server import NatsServer

_FAILING_SERVICE = """
import asyncio, sys
from natstream import Pool, StreamError, Subscriber

def failing(request, index):
    raise RuntimeError("the database is gone")

async def main(url):
    async with Subscriber([url]) as sub, Pool([url]) as pool:
        await sub.stream_subscribe_handler("visible.fail", failing)
        try:
            await pool.stream_request("visible.fail", b"", lambda m: True)
        except StreamError as exc:
            print(exc.message, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_a_failing_handler_is_on_stderr_without_any_logging_configured(
    server: NatsServer,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_SERVICE, server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = proc.stdout.strip()
    assert seen.startswith("internal error (error id ")
    error_id = seen.rsplit(" ", 1)[1].rstrip(")")
    lines = proc.stderr.splitlines()
    assert f"stream handler for 'visible.fail' raised (error id {error_id})" in lines
    assert "RuntimeError: the database is gone" in lines
