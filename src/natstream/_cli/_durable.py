"""``natstream record --durable``: record from JetStream through a durable consumer.

The writer gets a checkpoint (``.NAME.checkpoint`` in ``--dir``), the subscriber a
durable recording (``Subscriber.record_durable``). Everything the user gave is checked
before anything starts; JetStream's refusals (no JetStream, a stream that does not
cover the subjects, a consumer with another configuration) are user errors too, found
before the first message is pulled. While it runs, a status line on a terminal shows
the messages written, the rate over the last second, how many messages the consumer
has not delivered yet, when the last acknowledgement went, and the current file; on
a clean exit a summary line says how far the files go. A failure (a full disk, the consumer
deleted) stops it within :data:`_STATUS_INTERVAL` with a one-line :class:`Failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import sys
import time
from typing import TextIO

from .._config import Config
from .._durable import DurableOptions, DurableRecording
from .._errors import JetStreamError, WriterError
from .._recording import default_formatter, utc_formatter
from .._subjects import validate_subscribe_subject
from .._subscriber import Subscriber
from .._writers import HourlyFileWriter, parse_retention
from ._errors import Failure, UserError, one_line
from ._record import _check_writable, _Display, _Link, _Rate
from ._record_options import DurableArgs

__all__ = ["record_durable"]

_STATUS_INTERVAL = 0.5  # seconds between looks at the recording (status, failures, link)


async def record_durable(
    subjects: list[str],
    args: DurableArgs,
    *,
    directory: str,
    name: str,
    servers: list[str],
    utc: bool = False,
    compress: str | None = None,
    retention: str | None = None,
    fsync: bool = False,
    status: TextIO | None = None,
    events: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Record ``subjects`` from JetStream until SIGINT/SIGTERM (or ``stop``); return the
    messages written.

    On stop, what arrived is written, committed and acknowledged, the writer closed.

    Raises:
        ConfigError: an argument is invalid (nothing was started).
        UserError: ``directory`` cannot take files, another recorder holds its
            checkpoint, or JetStream refused (nothing was recorded).
        NoServersError: no server could be reached.
        Failure: recording failed while running (disk full, consumer deleted): what
            was acknowledged is in the files.
    """
    for subject in subjects:
        validate_subscribe_subject(subject)
    options = DurableOptions.check(
        subjects,
        durable=args.durable,
        stream=args.stream,
        max_age=args.max_age,
        max_bytes=args.max_bytes,
        ack_wait=args.ack_wait,
        max_ack_pending=args.max_ack_pending,
    )
    _check_writable(directory)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the consumer exists: no window
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        writer, sub, recording = await _open(
            options,
            Config(servers=servers),
            directory=directory,
            name=name,
            utc=utc,
            compress=compress,
            retention=retention,
            fsync=fsync,
        )
        if status is None and sys.stderr.isatty():
            status = sys.stderr
        display = _Display(status, events or sys.stderr)
        try:
            await _run(sub, recording, writer, display, stop)
        finally:
            display.end()
            failure = await _stop(sub, recording, writer)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    if failure is not None:
        if isinstance(failure, WriterError):
            # Not the writer's note ("the next flush retries them"): this process ends.
            text = one_line(WriterError(*failure.args))
            raise Failure(
                f"{text}; nothing missing from the files was acknowledged: fix that and "
                "start again, which completes them"
            ) from failure
        raise Failure(one_line(failure)) from failure
    stats = recording.stats()
    display.event(
        f"stream {stats.stream}, consumer {stats.consumer}: the files hold its messages up "
        f"to sequence {stats.last_sequence:,}; {stats.skipped:,} redeliveries skipped, "
        f"{stats.behind:,} messages not delivered yet"
    )
    return stats.messages


async def _open(
    options: DurableOptions,
    config: Config,
    *,
    directory: str,
    name: str,
    utc: bool,
    compress: str | None,
    retention: str | None,
    fsync: bool,
) -> tuple[HourlyFileWriter, Subscriber, DurableRecording]:
    """The writer (with its checkpoint), the subscriber, and the recording started;
    nothing is left open when it raises.

    Raises:
        UserError: another recorder holds the checkpoint, or JetStream refused.
        NoServersError: no server could be reached.
    """
    try:
        writer = HourlyFileWriter(
            directory,
            name,
            utc=utc,
            compress=compress,
            retention=parse_retention(retention) if retention else None,
            fsync=fsync,
            checkpoint=f".{name}.checkpoint",
        )
    except WriterError as exc:
        if exc.errno == errno.EBUSY:  # not "[Errno 16] ...: 'path'", and what to do
            raise UserError(
                f"{exc.strerror}: stop the recorder that holds it, or record under "
                "another --dir or --name"
            ) from None
        raise UserError(one_line(exc)) from None
    try:
        sub = await Subscriber.connect(config)
    except BaseException:
        writer.close()
        raise
    try:
        recording = await sub.record_durable(
            list(options.subjects),
            writer,
            utc_formatter if utc else default_formatter,
            durable=options.durable,
            stream=options.stream,
            max_age=options.max_age,
            max_bytes=options.max_bytes,
            ack_wait=options.ack_wait,
            max_ack_pending=options.max_ack_pending,
        )
    except BaseException as exc:
        await sub.close()
        writer.close()
        if isinstance(exc, JetStreamError):
            raise UserError(one_line(exc)) from None
        raise
    return writer, sub, recording


async def _run(
    sub: Subscriber,
    recording: DurableRecording,
    writer: HourlyFileWriter,
    display: _Display,
    stop: asyncio.Event,
) -> None:
    """Until ``stop`` or the recording's end: refresh the display."""
    rate = _Rate(time.monotonic())
    link = _Link(sub.nc, lost="reconnecting (JetStream keeps what is published meanwhile)")
    while not recording.stopped:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STATUS_INTERVAL):
                await stop.wait()
        if stop.is_set():
            return
        for event in link.events():
            display.event(event)
        stats = recording.stats()
        if stats.last_ack is None:
            acked = "no ack yet"
        else:
            acked = f"last ack {max(0.0, time.time() - stats.last_ack):,.1f} s ago"
        held = f"  held {stats.held:,} (waiting for redeliveries)" if stats.held else ""
        where = "  (disconnected)" if not link.up else f"  -> {writer.stats().current_path}"
        display.status(
            stats.messages,
            stats.bytes,
            rate.per_second(time.monotonic(), stats.messages),
            0,
            f"  behind {stats.behind:,}  {acked}{held}{where}",
        )


async def _stop(
    sub: Subscriber, recording: DurableRecording, writer: HourlyFileWriter
) -> BaseException | None:
    """Stop the recording, close the subscriber and the writer; the first failure."""
    failure: BaseException | None = None
    try:
        await recording.stop()
    except Exception as exc:
        failure = exc
    await sub.close()
    try:
        writer.close()
    except WriterError as exc:
        failure = failure or exc
    return failure
