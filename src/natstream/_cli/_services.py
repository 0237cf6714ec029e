"""``natstream services``: the NATS services (ADR-32) running now, natstream's or not.

It sends one ``$SRV.INFO`` (``ls``, ``info``) or ``$SRV.STATS`` (``stats``) request,
optionally narrowed to a service name and an instance id, gathers every answer for
``--timeout`` seconds (until the first answer when an id is given) and prints them
as a table, or as JSON with ``--json``. Exit status 0 when a service answered, 4
when none did, 2 for a usage error or a server that cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .._config import Config
from .._errors import NoServersError
from .._service import INFO_TYPE, NAME, STATS_TYPE
from .._transport import connect, safe_server, translate_connect_error
from ._connection import Connection, connection_options
from ._errors import UserError

if TYPE_CHECKING:
    from . import Options

__all__ = ["NO_ANSWER", "services"]

NO_ANSWER = 4  # exit status when no service answered
_TOKEN = re.compile(r"[^\s.*>]+")  # one subject token: what an instance id is
_PROTOCOL = "natstream.protocol"  # what a natstream endpoint says in its metadata
_NO_RESPONDERS = "503"  # the status of the server's answer when nothing subscribes


class NoServiceAnswered(click.ClickException):
    """No service answered the request: one line on stderr, exit status 4."""

    exit_code = NO_ANSWER


class _Services(click.Group):
    """``natstream services [NAME] [options]`` is ``natstream services ls [NAME]
    [options]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["ls", *args]
        return super().parse_args(ctx, args)


_common_options: list[Callable[[Any], Any]] = [
    click.argument("name", required=False),
    click.argument("instance", metavar="[ID]", required=False),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=1.0,
        show_default=True,
        help="Seconds to gather answers (the first one ends it when ID is given).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the answers as a JSON array."),
]


def _with_common_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_common_options):
        fn = option(fn)
    return connection_options(fn)


@click.group(cls=_Services, context_settings={"help_option_names": ["-h", "--help"]})
def services() -> None:
    """List the NATS services running now, natstream's and others (ADR-32).

    'natstream services [NAME]' lists them (as 'ls'); 'info' shows their endpoints,
    'stats' what each endpoint served. NAME narrows to one service, ID to one
    instance of it. Exit status: 0 when a service answered, 4 when none did within
    --timeout, 2 for a usage error or a server that cannot be reached.
    """


@services.command("ls")
@_with_common_options
@click.pass_obj
def ls_command(opts: Options, /, connection: Connection, **given: Any) -> None:
    """One line per running instance: name, version, id, endpoints, description."""
    _run(opts, "INFO", connection, given, _render_ls)


@services.command("info")
@_with_common_options
@click.pass_obj
def info_command(opts: Options, /, connection: Connection, **given: Any) -> None:
    """One line per endpoint: its subject, queue group, and whether it streams."""
    _run(opts, "INFO", connection, given, _render_info)


@services.command("stats")
@_with_common_options
@click.pass_obj
def stats_command(opts: Options, /, connection: Connection, **given: Any) -> None:
    """One line per endpoint: requests, errors, average time, and for natstream's
    endpoints replies, bytes and streams running; the last error."""
    _run(opts, "STATS", connection, given, _render_stats)


def _run(
    opts: Options,
    verb: str,
    connection: Connection,
    given: dict[str, Any],
    render: Callable[[list[dict[str, Any]]], list[list[str]]],
) -> None:
    name: str | None = given["name"]
    instance: str | None = given["instance"]
    if name is not None and not NAME.fullmatch(name):
        raise UserError(f"service name {name!r}: names hold letters, digits, '_' and '-' only")
    if instance is not None and not _TOKEN.fullmatch(instance):
        raise UserError(f"instance id {instance!r} is not one subject token")
    config = connection.config()  # a ConfigError is a usage error (see the group)
    subject = ".".join(["$SRV", verb, *(p for p in (name, instance) if p is not None)])
    kind = STATS_TYPE if verb == "STATS" else INFO_TYPE
    answers, ignored = opts.run(_gather(config, subject, kind, given["timeout"], instance))
    if ignored:
        click.echo(f"ignored {ignored} answer(s) that were not {kind} JSON", err=True)
    if not answers:
        raise NoServiceAnswered(f"no NATS service answered {subject} within {given['timeout']:g} s")
    answers.sort(key=lambda a: (a["name"], a["id"]))
    if given["as_json"]:
        click.echo(json.dumps(answers, indent=2))
        return
    for line in _table(render(answers)):
        click.echo(line)


async def _gather(
    config: Config, subject: str, kind: str, window: float, instance: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The answers of ``kind`` to one request on ``subject`` within ``window``
    seconds (until the first one when ``instance`` is given), and how many other
    messages came.

    Raises:
        NoServersError: no server could be reached.
    """
    try:
        link = await connect(list(config.servers), config.nats_options(), allow_reconnect=False)
    except Exception as exc:
        servers = [safe_server(s) for s in config.servers]
        raise NoServersError(servers, [translate_connect_error(exc)] * len(servers)) from None
    answers: list[dict[str, Any]] = []
    ignored = 0
    done = asyncio.Event()

    async def on_answer(msg: Any) -> None:
        nonlocal ignored
        if not msg.data and (msg.headers or {}).get("Status") == _NO_RESPONDERS:
            done.set()  # the server's answer: nothing subscribes to the subject
            return
        try:
            answer = json.loads(msg.data)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and answer.get("type") == kind and _identified(answer):
            answers.append(answer)
            if instance is not None:
                done.set()
        else:
            ignored += 1

    try:
        nc = link.nc
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_answer)
        await nc.publish(subject, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await done.wait()
    finally:
        await link.close()
    return answers, ignored


def _identified(answer: dict[str, Any]) -> bool:
    return all(isinstance(answer.get(k), str) for k in ("name", "id", "version"))


# ------------------------------------------------------------ rendering (pure)


def _table(rows: list[list[str]]) -> list[str]:
    """``rows`` (the first is the header) as lines of left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _endpoints(answer: dict[str, Any]) -> list[dict[str, Any]]:
    found = answer.get("endpoints")
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _render_ls(answers: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"]]
    for a in answers:
        count = str(len(_endpoints(a)))
        rows.append([a["name"], a["version"], a["id"], count, _text(a.get("description"))])
    return rows


def _render_info(answers: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["SERVICE", "VERSION", "ID", "ENDPOINT", "SUBJECT", "QUEUE", "NATSTREAM"]]
    for a in answers:
        service = [a["name"], a["version"], a["id"]]
        endpoints = _endpoints(a)
        if not endpoints:
            rows.append([*service, "-", "-", "-", "-"])
        for e in endpoints:
            metadata = e.get("metadata")
            protocol = metadata.get(_PROTOCOL) if isinstance(metadata, dict) else None
            rows.append(
                [
                    *service,
                    _text(e.get("name")),
                    _text(e.get("subject")),
                    _text(e.get("queue_group")),
                    f"protocol {protocol}" if protocol else "-",
                ]
            )
    return rows


_STATS_HEADER = ["SERVICE", "ID", "ENDPOINT", "REQUESTS", "ERRORS", "AVERAGE", "REPLIES",
                 "BYTES", "ACTIVE", "LAST ERROR"]  # fmt: skip


def _render_stats(answers: list[dict[str, Any]]) -> list[list[str]]:
    rows = [list(_STATS_HEADER)]
    for a in answers:
        for e in _endpoints(a):
            data = e.get("data")
            data = data if isinstance(data, dict) else {}
            rows.append(
                [
                    a["name"],
                    a["id"],
                    _text(e.get("name")),
                    _text(e.get("num_requests")),
                    _text(e.get("num_errors")),
                    _duration(e.get("average_processing_time")),
                    _text(data.get("replies")),
                    _text(data.get("bytes")),
                    _text(data.get("active")),
                    _text(e.get("last_error")),
                ]
            )
        if not _endpoints(a):
            rows.append([a["name"], a["id"], *["-"] * (len(_STATS_HEADER) - 2)])
    return rows


def _text(value: object) -> str:
    """A field for a table cell: "-" when absent or empty, one line."""
    if value is None or value == "":
        return "-"
    return " ".join(str(value).split())


def _duration(ns: object) -> str:
    """Nanoseconds, readable: ``850us``, ``12.5ms``, ``3.20s``."""
    if not isinstance(ns, int) or isinstance(ns, bool):
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1_000:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f}ms"
    return f"{ns / 1_000_000_000:.2f}s"
