"""``natstream record``: subscribe to subjects and write them to hour-split files.

Everything the user gave is checked before anything starts (subjects, queue group,
server URLs, the writer's options, a directory that takes files). While it runs,
a status line on a terminal shows the current rate, and lines on stderr say when
the server connection is lost and when it is back. A writer failure (a full disk)
stops the recorder within a second (:data:`_STATUS_INTERVAL`) with a one-line
:class:`Failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import deque
from typing import TextIO

from nats.aio.client import Client

from .._config import Config
from .._errors import WriterError
from .._recording import Recording, default_formatter, utc_formatter
from .._subjects import validate_queue, validate_subscribe_subject
from .._subscriber import Subscriber
from .._transport import safe_server
from .._writers import HourlyFileWriter, parse_retention
from ._errors import Failure, UserError, one_line
from ._record_options import DurableArgs, durable_args

__all__ = ["durable_args", "record"]

_STATUS_INTERVAL = 0.5  # seconds between looks at the recorder (status, failures, link)
_RATE_WINDOW = 1.0  # seconds the status line's rate is measured over
_CLEAR_TO_END = "\x1b[K"  # a terminal's "erase to the end of the line"


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
    fsync: bool = False,
    durable: DurableArgs | None = None,
    status: TextIO | None = None,
    events: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Record ``subjects`` until SIGINT/SIGTERM (or ``stop`` is set); return messages written.

    With ``durable`` the messages come from JetStream (:mod:`._durable`); else from
    core NATS, as follows.

    On stop, the subscription is drained, the writer flushed and closed. A status line
    goes to ``status`` (stderr when it is a terminal), connection events to ``events``
    (stderr). Credentials in server URLs are never printed. With ``utc`` files are
    named by UTC hours and lines stamped in UTC (:func:`utc_formatter`).

    Raises:
        ConfigError: a subject, the queue group, a server URL or a writer option is
            invalid (nothing was started).
        UserError: ``directory`` cannot take files (nothing was started).
        NoServersError: no server could be reached.
        Failure: writing failed (disk full, permissions): what was accepted before the
            failure is on disk as the writer documents.
    """
    if durable is not None:
        if queue:
            raise UserError(
                "--queue and --durable exclude each other: a durable consumer "
                "delivers each message to one recorder already"
            )
        from ._durable import record_durable

        return await record_durable(
            subjects,
            durable,
            directory=directory,
            name=name,
            servers=servers,
            utc=utc,
            compress=compress,
            retention=retention,
            fsync=fsync,
            status=status,
            events=events,
            stop=stop,
        )
    for subject in subjects:
        validate_subscribe_subject(subject)
    validate_queue(queue)
    config = Config(servers=servers)
    writer = HourlyFileWriter(
        directory,
        name,
        utc=utc,
        compress=compress,
        retention=parse_retention(retention) if retention else None,
        fsync=fsync,
    )
    try:
        _check_writable(directory)
        sub = await Subscriber.connect(config)
    except BaseException:
        writer.close()
        raise
    if status is None and sys.stderr.isatty():
        status = sys.stderr
    display = _Display(status, events or sys.stderr)
    formatter = utc_formatter if utc else default_formatter
    recordings: list[Recording] = []
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    failure: BaseException | None = None
    try:
        for subject in subjects:
            recordings.append(
                await sub.stream_subscribe_with_writer(subject, writer, formatter, queue=queue)
            )
        failure = await _run(sub.nc, recordings, writer, display, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        display.end()
        failure = await _stop(sub, recordings, writer, failure)
    if failure is not None:
        raise Failure(one_line(failure)) from failure
    return sum(r.stats().messages for r in recordings)


async def _run(
    nc: Client,
    recordings: list[Recording],
    writer: HourlyFileWriter,
    display: _Display,
    stop: asyncio.Event,
) -> BaseException | None:
    """Until ``stop``: refresh the display; return the writer's error if it fails."""
    rate = _Rate(time.monotonic())
    link = _Link(nc)
    errors = writer.stats().errors
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STATUS_INTERVAL):  # wait_for may eat a cancel (3.11)
                await stop.wait()
        if stop.is_set():
            return None
        for r in recordings:
            if r.error is not None:
                return r.error
        if writer.stats().errors != errors:  # a background flush failed: raise it
            try:
                await asyncio.to_thread(writer.flush)
            except WriterError as exc:
                return exc
            errors = writer.stats().errors
        for event in link.events():
            display.event(event)
        messages = sum(r.messages for r in recordings)
        display.status(
            messages,
            sum(r.bytes for r in recordings),
            rate.per_second(time.monotonic(), messages),
            sum(r.dropped for r in recordings),
            "  (disconnected)" if not link.up else f"  -> {writer.stats().current_path}",
        )


async def _stop(
    sub: Subscriber,
    recordings: list[Recording],
    writer: HourlyFileWriter,
    failure: BaseException | None,
) -> BaseException | None:
    """Drain and flush everything; return the first failure (``failure`` or a new one)."""
    for r in recordings:
        try:
            await r.stop()
        except Exception as exc:
            failure = failure or exc
    await sub.close()
    try:
        writer.close()
    except WriterError as exc:
        failure = failure or exc
    return failure


def _check_writable(directory: str) -> None:
    """Create ``directory`` if needed and make (and remove) a file in it."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--dir {directory!r} is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UserError(f"--dir {directory!r} is not writable: {exc.strerror or exc}") from None


class _Rate:
    """Messages per second over the last :data:`_RATE_WINDOW` seconds (not since the
    start: the rate drops to 0 when traffic stops)."""

    def __init__(self, now: float) -> None:
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])

    def per_second(self, now: float, messages: int) -> float:
        samples = self._samples
        samples.append((now, messages))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        return (messages - before) / (now - then) if now > then else 0.0


class _Link:
    """Whether the server connection is up, from nats-py's public state, as events."""

    def __init__(
        self,
        nc: Client,
        *,
        lost: str = "reconnecting (messages published meanwhile are not recorded)",
    ) -> None:
        self._nc = nc
        self._lost = lost
        self.up = True
        self._reconnects = nc.stats["reconnects"]
        self._url = self._current_url()

    def _current_url(self) -> str:
        url = self._nc.connected_url
        return safe_server(url.geturl()) if url is not None else "the server"

    def events(self) -> list[str]:
        """What changed since the last call, as lines to show."""
        out = []
        reconnects = self._nc.stats["reconnects"]
        if self.up and (not self._nc.is_connected or reconnects != self._reconnects):
            out.append(f"connection to {self._url} lost: {self._lost}")
            self.up = False
        if not self.up and self._nc.is_connected:
            self._url = self._current_url()
            out.append(f"connection to {self._url} back: recording")
            self.up = True
        self._reconnects = reconnects
        return out


class _Display:
    """The status line (rewritten in place on a terminal) and event lines."""

    def __init__(self, status: TextIO | None, events: TextIO) -> None:
        self._status = status
        self._events = events

    def status(self, messages: int, size: int, rate: float, dropped: int, where: str) -> None:
        if self._status is None:
            return
        shown = f"  dropped {dropped:,}" if dropped else ""
        self._status.write(
            f"\r{messages:,} msgs  {size / 1e6:,.1f} MB  {rate:,.0f} msg/s{shown}{where}"
            f"{_CLEAR_TO_END}"
        )
        self._status.flush()

    def event(self, line: str) -> None:
        if self._status is self._events:
            line = f"\r{line}{_CLEAR_TO_END}"
        self._events.write(f"{line}\n")
        self._events.flush()

    def end(self) -> None:
        if self._status is not None:
            self._status.write("\n")
            self._status.flush()
