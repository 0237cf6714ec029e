"""Helpers shared by the bench cases: event loops, percentiles, the responder process.

The responder runs in its own process (``python -m natstream._bench.responder``) so
that requester and responder do not share one core's event loop. It answers ``cpu``
on its stdin with its process CPU seconds, so each case can report CPU per message on
both ends; closing its stdin stops it.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from typing import IO

from ._interrupt import run_loop

__all__ = ["Responder", "loop_name", "percentile", "run_loop"]

_START_TIMEOUT = 30.0  # seconds for the responder process to connect and subscribe
_STOP_TIMEOUT = 10.0


def loop_name() -> str:
    """The running event loop's class, e.g. ``uvloop.Loop`` or ``asyncio...EventLoop``."""
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Responder:
    """The responder process (see :mod:`natstream._bench.responder`), as a context.

    ``async with Responder(url, n, size, uvloop=...) as r:`` starts it and waits until
    it serves; ``await r.cpu()`` is its CPU seconds so far; leaving stops it. Its stderr
    goes to a temporary file whose tail :meth:`log_tail` returns (for failed cases).
    """

    def __init__(self, url: str, messages: int, size: int, *, uvloop: bool = False) -> None:
        self.args = [url, str(messages), str(size)] + (["--uvloop"] if uvloop else [])
        self.loop = ""  # the responder's event loop class, from its "ready" line
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._tail = ""

    async def __aenter__(self) -> Responder:
        self._log = tempfile.TemporaryFile()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "natstream._bench.responder",
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        try:
            assert self._proc.stdout is not None
            line = await asyncio.wait_for(self._proc.stdout.readline(), _START_TIMEOUT)
            word, _, self.loop = line.decode().strip().partition(" ")
            if word != "ready":
                raise RuntimeError(f"the responder process did not start: {self.log_tail()}")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def cpu(self) -> float:
        """The responder process's CPU seconds (user + system) so far."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(b"cpu\n")
        await self._proc.stdin.drain()
        return float(await asyncio.wait_for(self._proc.stdout.readline(), _START_TIMEOUT))

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the responder's stderr (kept after it stopped)."""
        if self._log is not None:
            self._log.seek(0)
            self._tail = self._log.read().decode(errors="replace")
        return self._tail[-chars:]

    async def __aexit__(self, *exc: object) -> None:
        """Stop the process (close its stdin; kill it if it does not exit)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self.log_tail()
            self._log.close()
            self._log = None


class CpuMeter:
    """CPU seconds of this process and of the responder between :meth:`start` and
    :meth:`stop`, per message."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self._req = self._resp = 0.0
        self.req_s = self.resp_s = 0.0

    async def start(self) -> None:
        self._resp = await self.responder.cpu()
        self._req = time.process_time()

    async def stop(self) -> None:
        self.req_s = time.process_time() - self._req
        self.resp_s = await self.responder.cpu() - self._resp

    def per_message_us(self, messages: int) -> tuple[float, float]:
        """(requester, responder) CPU microseconds per message."""
        return self.req_s / messages * 1e6, self.resp_s / messages * 1e6
