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

Exit status: 0 on success; 2 on a usage error or when no nats-server can be
started or reached (a one-line message on stderr); 1 for other failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import click

from .._errors import NoServersError
from ..server import NatsCluster, NatsServer, ServerStartError

__all__ = ["Options", "main"]

T = TypeVar("T")

_POLL_INTERVAL = 0.5  # seconds between checks that foreground servers still run
_LOG_TAIL = 2000  # characters of a dead server's log shown


class EnvironmentFailure(click.ClickException):
    """No nats-server could be started or reached: exit status 2, like a usage error."""

    exit_code = 2


class _Group(click.Group):
    """Turns environment failures of any subcommand into a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ServerStartError, NoServersError) as exc:
            raise EnvironmentFailure(str(exc)) from exc


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
    """Streaming request-response over NATS."""
    ctx.obj = Options(uvloop=use_uvloop)


@main.command()
@click.pass_obj
def demo(opts: Options) -> None:
    """Run the seed's three examples (basic stream, error, retry against an
    unstable service) on an embedded nats-server and print the replies."""
    from ._demo import run_demo

    with NatsServer() as srv:
        ok = opts.run(run_demo(srv.url, click.echo))
    if not ok:
        raise click.ClickException("the demo did not behave as it printed; please report this")


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Client port (default: a free one).")
@click.option(
    "--cluster", "size", type=click.IntRange(min=2), help="Run a routed cluster of SIZE nodes."
)
def server(port: int | None, size: int | None) -> None:
    """Run an embedded nats-server (or a cluster) on loopback until Ctrl-C.

    Prints each node's client URL on stdout, one a line.
    """
    if port is not None and size is not None:
        raise click.UsageError("--port and --cluster exclude each other: nodes take free ports")
    with _interrupts_stop(), NatsCluster(size) if size else NatsServer(port=port) as srv:
        nodes = srv.nodes if isinstance(srv, NatsCluster) else [srv]
        click.echo(f"{len(nodes)} nats-server node(s) running; Ctrl-C to stop", err=True)
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
@click.option("--utc", is_flag=True, help="Name and split files by UTC hours (default: local).")
@click.option("--compress", type=click.Choice(["gzip", "zstd"]), help="Compress finished hours.")
@click.option("--retention", help="Keep files this long and/or this many: 7d, 24h, 48, 7d,100.")
@click.option("--queue", help="Queue group, to share the recording between recorders.")
@click.pass_obj
def record(
    opts: Options,
    subjects: tuple[str, ...],
    directory: str,
    name: str,
    servers: tuple[str, ...],
    utc: bool,
    compress: str | None,
    retention: str | None,
    queue: str | None,
) -> None:
    """Record SUBJECTS (wildcards allowed) into hour-split files until Ctrl-C/SIGTERM.

    A status line (messages, bytes, rate, current file) goes to stderr when it is a
    terminal; on stop everything received is flushed to disk.
    """
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
        )
    )
    click.echo(f"recorded {count:,} messages", err=True)


_BENCH_CASES = (
    "stream_128",
    "stream_1k",
    "packed",
    "first_reply",
    "concurrent",
    "memory",
    "writer",
    "record",
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
    against issue 6's targets. With 'natstream --uvloop bench' every event loop of
    the run, the responder process's included, is uvloop's. Exit status 1 when a case
    fails to run (a missed target is reported, not an error).
    """
    use_uvloop = use_uvloop or opts.uvloop
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--uvloop needs uvloop: pip install 'natstream[uvloop]'"
            ) from None
    from .._bench import main as run_bench

    ok = run_bench(quick, json_path, click.echo, uvloop=use_uvloop, cases=cases or _BENCH_CASES)
    if not ok:
        raise click.ClickException("a bench case failed to run (see above)")


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
    """Block until a node exits by itself (a failure: its log tail is shown)."""
    while True:
        for node in nodes:
            if not node.running:
                raise EnvironmentFailure(
                    f"nats-server on {node.url} exited:\n{node.log()[-_LOG_TAIL:]}"
                )
        time.sleep(_POLL_INTERVAL)
