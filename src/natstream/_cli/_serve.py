"""``natstream serve``: a responder from the shell, as a long-lived service.

``natstream serve SUBJECT -- CMD [ARGS...]`` runs CMD for each request
(:mod:`._command`); ``natstream serve SUBJECT --handler MODULE:FUNCTION`` serves a
Python handler of any kind. Either way the process serves until SIGINT or SIGTERM
(:meth:`Subscriber.serve_forever`), then stops taking requests, lets the streams in
flight finish within ``--grace`` and ends the rest with a retryable error; exit
status 0. What it does is logged on stderr (logger ``natstream``), one line per event.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from .._responder._handlers import (
    BATCH_SHAPE,
    INDEX_SHAPE,
    check_generator_handler,
    check_index_handler,
    written_kind,
)
from .._subjects import validate_queue, validate_subscribe_subject
from .._subscriber import Subscriber
from .._transport import HEADER_ALLOWANCE
from ._command import Command
from ._connection import Connection, connection_options
from ._errors import UserError

if TYPE_CHECKING:
    from . import Options

__all__ = ["serve"]

log = logging.getLogger("natstream.serve")

_KINDS = ("auto", "index", "batch", "generator")
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # journald and docker add the time

_SECONDS = click.FloatRange(min=0)


@click.command(
    epilog="\b\nExit status: 0 after SIGINT or SIGTERM (a graceful stop); 1 the\n"
    "--handler's module raised as it was imported; 2 a usage error (a bad option,\n"
    "subject, command or handler, an unreachable server).",
)
@click.argument("subject")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD [ARGS]...]")
@click.option(
    "--handler",
    metavar="MODULE:FUNCTION",
    help="Serve a Python handler (index, batch or async generator) instead of a command; "
    "MODULE is imported from the current directory or the Python path.",
)
@click.option(
    "--kind",
    type=click.Choice(_KINDS),
    default="auto",
    show_default=True,
    help="The --handler's kind; auto: an async generator function is a generator, a "
    "function of (request, n) annotated to return (list, ...) a batch handler, any "
    "other an index handler.",
)
@click.option("--pack", is_flag=True, help="Pack the replies of a sync index --handler.")
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    metavar="BYTES",
    help="Send the command's stdout in replies of BYTES bytes instead of one per line.",
)
@click.option("--queue", help="Queue group: instances with the same one share the requests.")
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    metavar="N",
    help="Streams served at once; more get a retryable 'busy' error at once.",
)
@click.option(
    "--grace",
    type=_SECONDS,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGINT or SIGTERM, how long streams in flight may take to finish.",
)
@click.option(
    "--kill-grace",
    type=_SECONDS,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="When a stream stops early, how long a command has between SIGTERM and SIGKILL.",
)
@click.option(
    "--plain-end",
    type=click.Choice(["marker", "empty"]),
    default="marker",
    show_default=True,
    help="How streams to plain requesters end: the end marker, or an empty message "
    "(the NATS request-many pattern, 'nats req --wait-for-empty').",
)
@connection_options
@click.pass_obj
def serve(
    opts: Options,
    subject: str,
    command: tuple[str, ...],
    handler: str | None,
    kind: str,
    pack: bool,
    chunk: int | None,
    queue: str | None,
    max_concurrent: int,
    grace: float,
    kill_grace: float,
    plain_end: str,
    connection: Connection,
) -> None:
    """Serve streams on SUBJECT (wildcards allowed) until SIGINT or SIGTERM.

    \b
    natstream serve SUBJECT [OPTIONS] -- CMD [ARGS...]
    natstream serve SUBJECT [OPTIONS] --handler MODULE:FUNCTION

    For each request CMD runs with the request's data on stdin and, in its
    environment, NATSTREAM_SUBJECT (the subject it was sent to),
    NATSTREAM_REQUEST_HEADERS (its headers, a JSON object) and, when the stream has
    a deadline, NATSTREAM_TIME_REMAINING (seconds). Each line CMD writes to stdout
    is one reply (--chunk: fixed-size replies), read only as fast as the requester
    takes them. Exit status 0 ends the stream; another ends it with an error
    carrying the last line CMD wrote to stderr (75, EX_TEMPFAIL: a retryable
    error). A stream that stops early (the requester cancelled or went away)
    terminates CMD: SIGTERM to its process group, SIGKILL after --kill-grace.

    On SIGINT or SIGTERM: no new requests; streams in flight get --grace seconds,
    then end with a retryable error (a requester with retries resumes elsewhere).
    Logs go to stderr, CMD's stderr lines included.
    """
    if bool(command) == bool(handler):
        raise click.UsageError("give a command after '--', or --handler MODULE:FUNCTION")
    if handler is None and (kind != "auto" or pack):
        raise click.UsageError("--kind and --pack go with --handler")
    if handler is not None and chunk is not None:
        raise click.UsageError("--chunk goes with a command")
    validate_subscribe_subject(subject)
    validate_queue(queue)
    if command:
        _check_command(command[0])
    serving = _load(handler, kind, pack) if handler is not None else None
    config = connection.config()
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stderr)
    opts.run(
        _serve(
            subject,
            Subscriber(
                config,
                close_grace=grace,
                max_concurrent_streams=max_concurrent,
                plain_end=plain_end,
            ),
            serving or _command_registration(command, chunk, kill_grace),
            queue,
        )
    )


_Register = Callable[[Subscriber, str, str | None], Any]


async def _serve(subject: str, sub: Subscriber, register: _Register, queue: str | None) -> None:
    async with sub:
        what = await register(sub, subject, queue)
        where = sub.stats().server
        log.info("serving %r %s on %s; Ctrl-C or SIGTERM to stop", subject, what, where)
        stopped_by = await sub.serve_forever()
    name = stopped_by.name if stopped_by is not None else "a close"
    log.info("stopped (%s)", name)


def _command_registration(
    command: Sequence[str], chunk: int | None, kill_grace: float
) -> _Register:
    async def register(sub: Subscriber, subject: str, queue: str | None) -> str:
        max_payload = sub.nc.max_payload
        if chunk is not None and chunk > max_payload - HEADER_ALLOWANCE:
            raise UserError(
                f"--chunk {chunk}: the server takes replies of at most "
                f"{max_payload - HEADER_ALLOWANCE} bytes (its max_payload less "
                f"{HEADER_ALLOWANCE} for natstream's headers)"
            )
        runner = Command(command, chunk=chunk, max_line=max_payload, kill_grace=kill_grace)
        await sub.stream_handler(subject, runner.serve, queue=queue)
        return f"with {shlex.join(command)}"

    return register


def _load(spec: str, kind: str, pack: bool) -> _Register:
    """The registration of the handler ``spec`` (MODULE:FUNCTION) names.

    Raises:
        UserError: it cannot be found, or is no handler of ``kind``.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"--handler {spec!r}: give MODULE:FUNCTION, e.g. reports:rows")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(missing + "."):
            raise  # the module itself imports something missing: its traceback says what
        raise UserError(f"--handler {spec!r}: no module named {missing!r}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise UserError(f"--handler {spec!r}: {module_name} has no {attribute!r}")
        found = getattr(found, part)
    chosen = written_kind(found) if kind == "auto" else kind
    try:
        return _registration(found, chosen, pack, spec)
    except TypeError as exc:
        raise UserError(f"--handler {spec!r}: {exc}") from None


def _registration(handler: Any, kind: str, pack: bool, spec: str) -> _Register:
    """Check ``handler`` as its kind's registration does (raising ``TypeError`` now)
    and return a registration that serves it."""
    if pack and kind != "index":
        raise TypeError(f"--pack packs an index handler's replies; this one is a {kind} handler")
    if kind == "generator":
        check_generator_handler(handler, "--kind generator")
    else:
        shape = BATCH_SHAPE if kind == "batch" else INDEX_SHAPE
        check_index_handler(handler, f"--kind {kind}", shape)

    async def register(sub: Subscriber, subject: str, queue: str | None) -> str:
        if kind == "generator":
            await sub.stream_handler(subject, handler, queue=queue)
        elif kind == "batch":
            await sub.batch_stream_subscribe_handler(subject, handler, queue=queue)
        else:
            await sub.stream_subscribe_handler(subject, handler, queue=queue, pack=pack)
        return f"with the {kind} handler {spec}"

    return register


def _check_command(name: str) -> None:
    """Refuse at once a command that cannot be run."""
    if shutil.which(name) is None:
        where = "is not an executable file" if os.sep in name else "is not found on PATH"
        raise UserError(f"command {name!r} {where}")
