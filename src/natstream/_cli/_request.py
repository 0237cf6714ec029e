"""``natstream request``: send one request, print the stream of replies.

The replies are taken by iterating a :class:`Stream` (data only: markers never
reach the output), written by :class:`Output` (a thread, so a slow reader paces
the responder through flow control instead of blocking heartbeats), and counted
for the progress line. Every way the stream can end has its exit status
(:data:`EXIT_STATUSES`, the command's ``--help``, docs/cli.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
from nats.aio.msg import Msg

from .._config import Config, StreamOptions
from .._errors import (
    NoRespondersError,
    PayloadTooLargeError,
    StreamFailure,
    StreamTimeoutBase,
)
from .._pool import Pool
from .._requester import Stream
from .._signals import StopSignals
from .._subjects import validate_publish_subject
from ._connection import Connection, connection_options
from ._errors import Failure, UserError, one_line
from ._output import Output, Progress

if TYPE_CHECKING:
    from . import Options

__all__ = ["EXIT_STATUSES", "request"]

EXIT_STREAM_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_NO_RESPONDERS = 4
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a writer killed by it
EXIT_STATUSES = {
    0: "the stream ended (or --count replies were printed)",
    EXIT_STREAM_FAILED: "the stream failed: the responder's error (or a lost connection)",
    2: "a usage error: a bad option, subject or header, an unreachable server",
    EXIT_TIMEOUT: "a timeout: --timeout, --stream-timeout, or a responder that went silent",
    EXIT_NO_RESPONDERS: "no responders on the subject",
    130: "Ctrl-C (SIGINT); 143: SIGTERM",
    EXIT_OUTPUT_CLOSED: "stdout was closed before the end (e.g. '| head')",
}

_NEWLINE = b"\n"
# A header name is an HTTP token (what NATS headers take).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PROTOCOL_PREFIX = "ns-"  # natstream's own headers: Ns-Seq, Ns-Win, ...
_INTERRUPT_WRITE = 1.0  # seconds the replies received before Ctrl-C get to be written
_STDOUT, _STDERR = 1, 2  # file descriptors (sys.stdout is None when fd 1 is closed)


class _TimedOut(Failure):
    exit_code = EXIT_TIMEOUT


class _NoResponders(Failure):
    exit_code = EXIT_NO_RESPONDERS


def _exit_help() -> str:
    return "\b\nExit status:\n" + "\n".join(
        f"  {code:>3}  {meaning}" for code, meaning in EXIT_STATUSES.items()
    )


_SECONDS = click.FloatRange(min=0, min_open=True)


@click.command(epilog=_exit_help())
@click.argument("subject")
@click.argument("data", required=False)
@click.option("--raw", is_flag=True, help="Write each payload as it is, with nothing between.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object a line per reply: seq, size, headers, encoding ('utf-8' or "
    "'base64'), payload.",
)
@click.option(
    "--timeout",
    type=_SECONDS,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds to wait for a responder to answer; for a responder that sends no "
    "heartbeats (a plain one), also the longest silence between replies.",
)
@click.option(
    "--stream-timeout",
    type=_SECONDS,
    metavar="SECONDS",
    help="Seconds the whole stream may take, retries included (default: no limit).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    show_default=True,
    help="Send the request again after a retryable failure, this many times at most; "
    "a retry resumes after the last reply printed.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=0.5,
    show_default=True,
    help="Seconds between a failure and the retry.",
)
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="NAME:VALUE",
    help="A header of the request (repeatable).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N replies: the responder is told to stop.",
)
@click.option(
    "--plain-end",
    type=click.Choice(["marker", "empty"]),
    default="marker",
    show_default=True,
    help="How a plain responder (one without natstream's protocol) ends its streams: "
    "with the end marker, or also with an empty message (the NATS request-many pattern).",
)
@connection_options
@click.pass_obj
def request(
    opts: Options,
    subject: str,
    data: str | None,
    raw: bool,
    as_json: bool,
    timeout: float,
    stream_timeout: float | None,
    retries: int,
    retry_delay: float,
    headers: tuple[str, ...],
    count: int | None,
    plain_end: str,
    connection: Connection,
) -> None:
    """Send DATA (or stdin, with '-') to SUBJECT; print each reply of the stream.

    Each reply's payload goes to stdout on a line of its own (--raw: as it is;
    --json: as a JSON object), as it arrives; the end marker ends the command.
    Works with natstream responders and with plain ones that speak only the
    in-band markers. When stderr is a terminal and stdout is not, a progress line
    there shows replies, megabytes and the rate.
    """
    if raw and as_json:
        raise click.UsageError("--raw and --json exclude each other")
    if sys.stdout is None:  # fd 1 closed: a file opened later would take its number
        raise UserError("stdout is closed: send the replies somewhere (> /dev/null)")
    validate_publish_subject(subject)
    wanted = _Request(
        subject,
        sys.stdin.buffer.read() if data == "-" else os.fsencode(data or ""),
        timeout,
        stream_timeout,
        retries,
        retry_delay,
        parse_headers(headers),
        count,
    )
    config = connection.config(idle_per_server=1, stream=StreamOptions(plain_end=plain_end))
    write = _json_reply if as_json else (_raw_reply if raw else _line_reply)
    status = opts.run(_run(config, wanted, write))
    if status:
        raise click.exceptions.Exit(status)


@dataclass(frozen=True, slots=True)
class _Request:
    subject: str
    body: bytes
    timeout: float
    stream_timeout: float | None
    retries: int
    retry_delay: float
    headers: dict[str, str] | None
    count: int | None

    def stream(self, pool: Pool) -> Stream:
        return pool.stream(
            self.subject,
            self.body,
            request_timeout=self.timeout,
            stream_timeout=self.stream_timeout,
            max_retries=self.retries,
            retry_delay=self.retry_delay,
            headers=self.headers,
        )


def parse_headers(values: Iterable[str]) -> dict[str, str] | None:
    """``-H NAME:VALUE`` options as a dict (None when there are none).

    Raises:
        UserError: one is not NAME:VALUE, names a protocol header, or comes twice.
    """
    out: dict[str, str] = {}
    for given in values:
        name, sep, value = given.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise UserError(f"-H {given!r}: give NAME:VALUE, a name without spaces or ':'")
        if "\r" in value or "\n" in value:
            raise UserError(f"-H {name}: a header value is one line")
        if name.lower().startswith(_PROTOCOL_PREFIX):
            raise UserError(f"-H {name}: headers Ns-* are natstream's protocol's")
        if name in out:
            raise UserError(f"-H {name}: given twice")
        out[name] = value
    return out or None


# ------------------------------------------------------------ how a reply is written

_Writer = Callable[[Output, bytes, dict[str, str] | None, int], None]


def _line_reply(out: Output, data: bytes, headers: dict[str, str] | None, seq: int) -> None:
    out.write(data)
    out.write(_NEWLINE)


def _raw_reply(out: Output, data: bytes, headers: dict[str, str] | None, seq: int) -> None:
    out.write(data)


def _json_reply(out: Output, data: bytes, headers: dict[str, str] | None, seq: int) -> None:
    try:
        payload, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(data).decode("ascii"), "base64"
    shown = {k: v for k, v in (headers or {}).items() if not k.lower().startswith(_PROTOCOL_PREFIX)}
    reply = {
        "seq": seq,
        "size": len(data),
        "headers": shown,
        "encoding": encoding,
        "payload": payload,
    }
    out.write(json.dumps(reply, ensure_ascii=False).encode() + _NEWLINE)


# ------------------------------------------------------------ the run


class _Tally:
    __slots__ = ("bytes", "replies")

    def __init__(self) -> None:
        self.replies = 0
        self.bytes = 0


async def _run(config: Config, wanted: _Request, write: _Writer) -> int:
    """Run the request; return the exit status of an interrupted or cut-off run (0
    for a stream that ended), or raise the one-line error of a failed one."""
    pool = Pool(config)
    await pool.open()
    out = Output(_STDOUT)
    tally = _Tally()
    shown = sys.stderr is not None and os.isatty(_STDERR) and not os.isatty(_STDOUT)
    progress = Progress(sys.stderr) if shown else None
    receiving = asyncio.create_task(
        _receive(wanted.stream(pool), out, write, tally, wanted.count), name="natstream-request"
    )
    if progress is not None:
        progress.start(lambda: (tally.replies, tally.bytes))
    failure: BaseException | None = None
    with StopSignals(on_signal=lambda sig: receiving.cancel()) as signals:
        try:
            await receiving
        except asyncio.CancelledError:
            if signals.received is None:
                raise
        except (StreamFailure, OSError) as exc:
            failure = exc
        finally:
            if progress is not None:
                await progress.end(tally.replies, tally.bytes)
            await pool.close()
        if signals.received is not None:
            # What came before the signal is written, unless the reader is stuck.
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(_INTERRUPT_WRITE):
                    await out.close()
            return 128 + signals.received
    try:
        await out.close()
    except OSError as exc:
        failure = failure or exc
    return _status(failure)


def _status(failure: BaseException | None) -> int:
    """The exit status of ``failure`` (0 for None), or its one-line error raised."""
    if failure is None:
        return 0
    if isinstance(failure, BrokenPipeError):
        return EXIT_OUTPUT_CLOSED
    if isinstance(failure, OSError) and not isinstance(failure, StreamFailure):
        raise Failure(f"cannot write the replies: {failure.strerror or failure}") from None
    text = one_line(failure)
    if isinstance(failure, StreamTimeoutBase):
        raise _TimedOut(text) from None
    if isinstance(failure, NoRespondersError):
        raise _NoResponders(text) from None
    if isinstance(failure, PayloadTooLargeError):
        raise UserError(text) from None
    raise Failure(text) from None


async def _receive(
    stream: Stream, out: Output, write: _Writer, tally: _Tally, count: int | None
) -> None:
    """Write every data reply of ``stream``, waiting for the output when it is behind;
    stop after ``count`` replies (the responder is told)."""

    put = out.write

    def on_reply(msg: Msg) -> bool | Awaitable[None]:
        data = msg.data
        seq = tally.replies + 1
        write(out, data, msg.headers, seq)
        tally.replies = seq
        tally.bytes += len(data)
        if seq == count:
            return False
        if out.full:
            return out.room()  # awaited before the next reply: flow control paces it
        return True

    def on_raw(msg: Msg) -> bool | Awaitable[None]:
        # on_reply for --raw without --count, the common case of large streams, with
        # no format or count check per reply (this call is a third of the command's
        # own work per reply).
        data = msg.data
        put(data)
        tally.replies += 1
        tally.bytes += len(data)
        return out.room() if out.full else True

    fast = write is _raw_reply and count is None
    await stream.run_handler(on_raw if fast else on_reply, markers=False)
