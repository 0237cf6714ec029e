"""A stream served by a shell command: one process per request (``natstream serve``).

For each request the command runs with the request's data on its stdin and the
``NATSTREAM_*`` variables below added to its environment. What it writes to stdout
becomes the replies: one per line (without the newline), or fixed-size chunks.
Reading is paced by the stream: while the requester's credit is used up nothing is
read, the pipe fills and the command blocks in its writes. So a stream holds at most
about 64 KiB of the command's output plus asyncio's buffer of 128 KiB (and one
unfinished line, at most the server's max_payload) whatever the requester's speed.

Exit status 0 ends the stream normally; any other ends it with an error marker
carrying the last line the command wrote to stderr (exit status 75, ``EX_TEMPFAIL``,
makes that error retryable). Every stderr line is logged (INFO, logger
``natstream.serve``) with the command's name and pid. A stream that stops early
(cancelled, requester gone, deadline, shutdown) terminates the command's process
group: SIGTERM, then SIGKILL after ``kill_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence

from .._errors import StreamError
from .._responder import StreamRequest

__all__ = ["ENV_HEADERS", "ENV_SUBJECT", "ENV_TIME_REMAINING", "EX_TEMPFAIL", "Command"]

log = logging.getLogger("natstream.serve")

ENV_SUBJECT = "NATSTREAM_SUBJECT"  # the subject the request was sent to
ENV_HEADERS = "NATSTREAM_REQUEST_HEADERS"  # its headers as a JSON object, natstream's own left out
ENV_TIME_REMAINING = "NATSTREAM_TIME_REMAINING"  # seconds before the stream's deadline, if any
EX_TEMPFAIL = 75  # sysexits.h: "try again later"; the error marker says retryable

_READ_SIZE = 64 << 10  # bytes asked of the pipe at once (asyncio buffers twice that)
_ERROR_CHARS = 1024  # the protocol's limit on an error text
_STDERR_AFTER_EXIT = 1.0  # seconds to read the rest of stderr once the command exited
_PROTOCOL_PREFIX = "ns-"


class Command:
    """Runs ``argv`` for each request (see the module docstring); :meth:`serve` is the
    stream handler (an async generator, each item a list of replies).

    Args:
        chunk: replies of this many bytes (the last one shorter) instead of lines.
        max_line: the longest line in bytes (longer: the stream fails with a 413).
        kill_grace: seconds between SIGTERM and SIGKILL when a stream stops early.
    """

    def __init__(
        self, argv: Sequence[str], *, chunk: int | None, max_line: int, kill_grace: float
    ) -> None:
        self.argv = list(argv)
        self.name = os.path.basename(self.argv[0])
        self.chunk = chunk
        self.max_line = max_line
        self.kill_grace = kill_grace

    def environment(self, request: StreamRequest) -> dict[str, str]:
        """The command's environment for ``request``: this process's, and the
        ``NATSTREAM_*`` variables."""
        env = dict(os.environ)
        env[ENV_SUBJECT] = request.subject
        headers = {
            name: value
            for name, value in (request.headers or {}).items()
            if not name.lower().startswith(_PROTOCOL_PREFIX)
        }
        env[ENV_HEADERS] = json.dumps(headers, ensure_ascii=False)
        remaining = request.time_remaining()
        if remaining is not None:
            env[ENV_TIME_REMAINING] = f"{remaining:.3f}"
        else:
            env.pop(ENV_TIME_REMAINING, None)
        return env

    async def serve(self, request: StreamRequest) -> AsyncIterator[list[bytes]]:
        """Run the command for ``request`` and yield its output as replies.

        Raises:
            StreamError: the command could not start, exited with a non-zero status,
                or wrote a line longer than ``max_line``.
        """
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(request),
                start_new_session=True,  # its own process group: Ctrl-C is ours to pass on
                limit=_READ_SIZE,
            )
        except OSError as exc:
            log.error("cannot run %s: %s", self.name, exc.strerror or exc)
            raise StreamError(f"cannot run {self.name}", retryable=False) from None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        assert stdin is not None
        assert stdout is not None
        assert stderr is not None
        errors = _Stderr(f"{self.name}[{proc.pid}]")
        helpers = [
            asyncio.create_task(_feed(stdin, request.data), name=f"natstream-stdin-{proc.pid}"),
            asyncio.create_task(errors.read(stderr), name=f"natstream-stderr-{proc.pid}"),
        ]
        try:
            replies = self._chunks(stdout) if self.chunk else self._lines(stdout)
            async for items in replies:
                yield items
            status = await proc.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STDERR_AFTER_EXIT):
                    await asyncio.shield(helpers[1])
            if status != 0:
                raise self._failure(proc.pid, status, errors.last)
        finally:
            if proc.returncode is None:
                await self._terminate(proc)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _lines(self, stdout: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
        pending = b""
        while data := await stdout.read(_READ_SIZE):
            lines = (pending + data if pending else data).split(b"\n")
            pending = lines.pop()
            if len(pending) > self.max_line:
                raise StreamError(
                    f"{self.name} wrote a line longer than {self.max_line} bytes, the most "
                    "a reply may hold (serve it with --chunk)",
                    code=413,
                    retryable=False,
                )
            if lines:
                yield lines
        if pending:
            yield [pending]

    async def _chunks(self, stdout: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
        size = self.chunk
        assert size is not None
        pending = bytearray()
        while data := await stdout.read(_READ_SIZE):
            pending += data
            whole = len(pending) - len(pending) % size
            if whole:
                yield [bytes(pending[i : i + size]) for i in range(0, whole, size)]
                del pending[:whole]
        if pending:
            yield [bytes(pending)]

    def _failure(self, pid: int, status: int, last: str) -> StreamError:
        if status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
        else:
            how = f"exited with status {status}"
        log.warning("%s[%d] %s%s", self.name, pid, how, f": {last}" if last else "")
        return StreamError(last or f"{self.name} {how}", retryable=status == EX_TEMPFAIL)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the command's process group, SIGKILL after the grace (or at
        once when cancelled meanwhile); whatever is left of the group is killed."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.kill_grace):
                await proc.wait()
        except TimeoutError:
            log.warning(
                "%s[%d] still ran %g s after SIGTERM: killed", self.name, proc.pid, self.kill_grace
            )
        finally:
            _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the request's data to the command's stdin and close it (a command that
    does not read it all is no error)."""
    try:
        if data:
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()


class _Stderr:
    """Reads the command's stderr: logs each line, keeps the last non-blank one."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.last = ""

    async def read(self, stderr: asyncio.StreamReader) -> None:
        pending = b""
        while data := await stderr.read(_READ_SIZE):
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            if len(pending) > _READ_SIZE:  # a line without end: take what there is
                lines.append(pending)
                pending = b""
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if text.strip():
            self.last = text.strip()[:_ERROR_CHARS]
            log.info("%s: %s", self.who, text)
