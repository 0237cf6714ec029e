"""The ``natstream`` command.

Each subcommand parses its options and hands over to a module it imports lazily,
so one command's dependencies never load for another. Adding a command is a
function under the group; ``opts.run`` runs a coroutine on a fresh event loop
(uvloop's with ``--uvloop``)::

    @main.command()
    @click.argument("subject")
    @click.pass_obj
    def record(opts: Options, subject: str) -> None:
        \"\"\"Record SUBJECT into hour-split files.\"\"\"
        from ._record import record

        opts.run(record(subject))

The group's rules, for every command:

* a user error (a bad option or argument, an unwritable path, no nats-server to start
  or reach) is one line on stderr, ``Error: ...``, and exit status 2, found before
  anything is started; raise :class:`UserError`, or let a :class:`ConfigError`,
  :class:`NoServersError` or :class:`ServerStartError` through;
* a failure while running is one line too (:class:`Failure`), exit status 1;
* Ctrl-C stops a command that has no stop of its own with exit status 130 and no
  traceback (``server`` and ``record`` treat it as their normal stop: 0);
* any other exception is a bug: Python's traceback, exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import click

from .._errors import ConfigError, NoServersError
from ..server import NatsCluster, NatsServer, ServerStartError
from ._errors import Failure, UserError, one_line
from ._record_options import durable_options
from ._request import request
from ._serve import serve
from ._services import services

__all__ = ["Failure", "Options", "UserError", "main"]

T = TypeVar("T")

DEFAULT_PORT = 4222  # NATS's default client port: the examples' NATS_URL points there
_HOST = "127.0.0.1"  # where natstream.server's nodes listen
_POLL_INTERVAL = 0.5  # seconds between checks that foreground servers still run
_INTERRUPTED = 130  # exit status after Ctrl-C, as shells report 128 + SIGINT


class _Group(click.Group):
    """Holds every command to the rules in this module's docstring."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from None
        except (ConfigError, ServerStartError, NoServersError) as exc:
            raise UserError(one_line(exc)) from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(_INTERRUPTED) from None


def _usage_error(exc: click.UsageError) -> UserError:
    """Click's usage error as one line that says where help is."""
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return UserError(f"{exc.format_message()}{where}")


@dataclass(frozen=True, slots=True)
class Options:
    """Global options, handed to subcommands with ``@click.pass_obj``."""

    uvloop: bool = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on a new event loop, closed afterwards."""
        if not self.uvloop:
            return asyncio.run(coro)
        try:
            import uvloop
        except ImportError:
            coro.close()
            raise click.UsageError(
                "--uvloop needs uvloop: pip install 'natstream[uvloop]'"
            ) from None
        return uvloop.run(coro)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--uvloop", "use_uvloop", is_flag=True, help="Run on uvloop's event loop.")
@click.version_option(package_name="natstream")
@click.pass_context
def main(ctx: click.Context, use_uvloop: bool) -> None:
    """Streaming request-response over NATS.

    New here? 'natstream demo' shows streams, errors and retries on an embedded
    nats-server; 'natstream server' runs one on port 4222 for the README's examples.
    """
    ctx.obj = Options(uvloop=use_uvloop)


main.add_command(request)
main.add_command(serve)


@main.command()
@click.pass_obj
def demo(opts: Options) -> None:
    """Show natstream's streams on an embedded nats-server, and what a requester sees.

    Three examples, each a responder and a requester: a stream of ten replies and
    its end marker; a stream the responder ends with an error (StreamError is
    raised after three replies); and retries against a service that fails
    mid-stream twice, each retry resuming after the last reply received, so every
    reply is seen exactly once. Each example checks its outcome; exit status 1 if
    one did not behave as printed.
    """
    from ._demo import run_demo

    with NatsServer() as srv:
        ok = opts.run(run_demo(srv.url, click.echo))
    if not ok:
        raise Failure("the demo did not behave as it printed; please report this")


@main.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help=f"Client port (default: {DEFAULT_PORT}, or a free one when it is taken).",
)
@click.option(
    "--cluster", "size", type=click.IntRange(min=2), help="Run a routed cluster of SIZE nodes."
)
@click.option("--jetstream", is_flag=True, help="Enable JetStream (streams, durable consumers).")
@click.option(
    "--store",
    type=click.Path(file_okay=False),
    help="JetStream's storage directory, kept after exit (default: a temporary one).",
)
def server(port: int | None, size: int | None, jetstream: bool, store: str | None) -> None:
    """Run an embedded nats-server (or a cluster) on loopback until Ctrl-C.

    One node listens on port 4222, NATS's default and where the examples connect
    (their NATS_URL's default), unless --port says otherwise; when 4222 is taken it
    takes a free port and says so. A cluster's nodes take free ports. Prints each
    node's client URL on stdout, one a line. With --jetstream the node runs JetStream
    (needed by 'natstream record --durable'), storing into --store.
    """
    if port is not None and size is not None:
        raise click.UsageError("--port and --cluster exclude each other: nodes take free ports")
    if jetstream and size is not None:
        raise click.UsageError("--jetstream runs on one node: leave out --cluster")
    if store is not None and not jetstream:
        raise click.UsageError("--store is JetStream's storage: add --jetstream")
    if port is not None and not _port_free(port):
        raise UserError(f"port {port} on {_HOST} is in use: choose another --port, or leave it out")
    note = None
    if port is None and size is None:
        if _port_free(DEFAULT_PORT):
            port = DEFAULT_PORT
        else:
            note = f"port {DEFAULT_PORT} is in use (another nats-server?), so this one took"
    srv: NatsServer | NatsCluster = (
        NatsCluster(size) if size else NatsServer(port=port, jetstream=jetstream, store_dir=store)
    )
    with _interrupts_stop(), srv:
        nodes = srv.nodes if isinstance(srv, NatsCluster) else [srv]
        if note is not None:
            click.echo(f"{note} port {nodes[0].port}: NATS_URL={nodes[0].url}", err=True)
        click.echo(f"{len(nodes)} nats-server node(s) running; Ctrl-C to stop", err=True)
        if jetstream:
            click.echo(f"JetStream on, storing into {nodes[0].store_dir}", err=True)
        for node in nodes:  # last: a script that has read the URLs may stop us at once
            click.echo(node.url)
        _wait_until_exit(nodes)


@main.command()
@click.argument("subjects", nargs=-1, required=True)
@click.option("--dir", "directory", required=True, help="Directory of the hour files.")
@click.option("--name", required=True, help="File name prefix: NAME_YYYY-MM-DD_HH.log.")
@click.option(
    "--server",
    "servers",
    multiple=True,
    default=["nats://127.0.0.1:4222"],
    show_default=True,
    help="Server URL (repeatable).",
)
@click.option(
    "--utc",
    is_flag=True,
    help="Name and split files by UTC hours and stamp lines in UTC, with a Z "
    "(default: local time, no offset).",
)
@click.option("--compress", type=click.Choice(["gzip", "zstd"]), help="Compress finished hours.")
@click.option("--retention", help="Keep files this long and/or this many: 7d, 24h, 48, 7d,100.")
@click.option("--queue", help="Queue group, to share the recording between recorders.")
@durable_options
@click.pass_obj
def record(
    opts: Options,
    /,
    subjects: tuple[str, ...],
    directory: str,
    name: str,
    servers: tuple[str, ...],
    utc: bool,
    compress: str | None,
    retention: str | None,
    queue: str | None,
    **durable: Any,
) -> None:
    """Record SUBJECTS (wildcards allowed) into hour-split files until Ctrl-C/SIGTERM.

    Each message is one line, '[YYYY-MM-DD HH:MM:SS.mmm] subject: data'. Every
    option is checked, and --dir must take files, before anything starts. A status
    line (messages, bytes, the rate over the last second, current file) goes to
    stderr when it is a terminal, and a line there says when the server connection
    is lost and when it is back. On stop everything received is flushed to disk
    (exit status 0). A write that fails (a full disk) stops the recorder within a
    second: one line on stderr, exit status 1.

    With --durable NAME the messages come from JetStream through a durable consumer:
    each message once, in the hour it was stored, across crashes and restarts (see
    the guide's "Durable recording").
    """
    from ._record import durable_args
    from ._record import record as run_record

    count = opts.run(
        run_record(
            list(subjects),
            directory=directory,
            name=name,
            servers=list(servers),
            utc=utc,
            compress=compress,
            retention=retention,
            queue=queue,
            fsync=durable.pop("fsync"),
            durable=durable_args(**durable),
        )
    )
    click.echo(f"recorded {count:,} messages", err=True)


_BENCH_CASES = (
    "stream_128",
    "stream_1k",
    "packed",
    "first_reply",
    "responder",
    "concurrent",
    "memory",
    "writer",
    "record",
    "request_cli",
    "serve_memory",
    "durable",
)


@main.command()
@click.option("--quick", is_flag=True, help="Small counts: proves every case runs (CI).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write JSON here.")
@click.option(
    "--case",
    "cases",
    multiple=True,
    type=click.Choice(_BENCH_CASES),
    help="Run only this case (repeatable; default: all).",
)
@click.option(
    "--uvloop",
    "use_uvloop",
    is_flag=True,
    help="Run every event loop on uvloop (as 'natstream --uvloop bench').",
)
@click.pass_obj
def bench(
    opts: Options, quick: bool, json_path: str | None, cases: tuple[str, ...], use_uvloop: bool
) -> None:
    """Measure natstream against raw nats-py (and plain appends) in the same run.

    Starts its own nats-server on loopback; prints rates, MB/s, time to first reply,
    CPU per message (this process and the responder's) and ratios, and checks them
    against the targets in docs/performance.md. With 'natstream --uvloop bench'
    every event loop of the run, the responder process's included, is uvloop's.
    Exit status 1 when a case fails to run (a missed target is reported, not an
    error). Ctrl-C stops the run: what was measured before it is printed and
    written to --json, and the exit status is 130.
    """
    use_uvloop = use_uvloop or opts.uvloop
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--uvloop needs uvloop: pip install 'natstream[uvloop]'"
            ) from None
    if json_path is not None:
        _check_writable_file(json_path)
    from .._bench import failed
    from .._bench import main as run_bench

    results = run_bench(
        quick, json_path, click.echo, uvloop=use_uvloop, cases=cases or _BENCH_CASES
    )
    if results.get("interrupted"):
        raise click.exceptions.Exit(_INTERRUPTED)
    if failed(results):
        raise Failure("a bench case failed to run (see above)")


main.add_command(services)


@contextlib.contextmanager
def _interrupts_stop() -> Iterator[None]:
    """Ctrl-C or SIGTERM anywhere inside the block is a normal stop: "stopping" on
    stderr, exit status 0, and the ``with`` blocks inside it clean up. The SIGTERM
    handler is in place before the block starts, so no signal finds it missing."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_until_exit(nodes: Sequence[NatsServer]) -> None:
    """Block until a node exits by itself (a failure: its log's last line is shown)."""
    while True:
        for node in nodes:
            if not node.running:
                lines = node.log().strip().splitlines() or ["nothing in its log"]
                raise Failure(f"nats-server on {node.url} exited: {lines[-1]}")
        time.sleep(_POLL_INTERVAL)


def _check_writable_file(path: str) -> None:
    """Refuse at once a file that could not be written at the end of a long run."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _port_free(port: int) -> bool:
    """Whether nats-server could listen on ``port`` of the loopback address now (it
    sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True
