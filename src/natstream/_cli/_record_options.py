"""``natstream record``'s options for durable recording, and the parsing of their
values (no I/O: the group imports this module at start)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import click

from .._errors import ConfigError
from ._errors import UserError

__all__ = ["DurableArgs", "durable_args", "durable_options", "parse_duration", "parse_size"]

F = TypeVar("F", bound=Callable[..., object])

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE: Final = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?")
_POWERS: Final = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_ACK_WAIT: Final = "30s"
_MAX_ACK_PENDING: Final = 1000


@dataclass(frozen=True, slots=True)
class DurableArgs:
    """The durable options of ``natstream record``, parsed."""

    durable: str
    stream: str | None
    max_age: float | None
    max_bytes: int | None
    ack_wait: float
    max_ack_pending: int


def durable_options(command: F) -> F:
    """Add ``--durable`` and the options that go with it to ``record``."""
    options = [
        click.option(
            "--durable",
            help="Record from JetStream through the durable consumer NAME: every message "
            "once, in the hour it was stored, across crashes and restarts.",
            metavar="NAME",
        ),
        click.option(
            "--stream",
            help="With --durable: the stream to record from (it must cover SUBJECTS); "
            "default: a stream named after --durable, created if missing.",
        ),
        click.option(
            "--max-age",
            help="With --durable: the created stream keeps messages at most this long "
            "(30m, 24h, 7d).",
        ),
        click.option(
            "--max-bytes",
            help="With --durable: the created stream keeps at most this much (500MB, 10GB).",
        ),
        click.option(
            "--ack-wait",
            default=_ACK_WAIT,
            show_default=True,
            help="With --durable: redeliver a message unacknowledged this long.",
        ),
        click.option(
            "--max-ack-pending",
            type=click.IntRange(min=1),
            default=_MAX_ACK_PENDING,
            show_default=True,
            help="With --durable: messages unacknowledged at most (bounds memory).",
        ),
        click.option(
            "--fsync",
            is_flag=True,
            help="Sync files to disk at each flush (with --durable, before acknowledging).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def parse_duration(option: str, text: str) -> float:
    """Seconds from ``500ms``, ``30s``, ``15m``, ``24h``, ``7d``, ``2w`` (a bare number is
    seconds).

    Raises:
        ConfigError: not one of these forms, or zero.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"{option} {text!r}: give a duration such as 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _SECONDS[match.group(2) or "s"]


def parse_size(option: str, text: str) -> int:
    """Bytes from ``1000``, ``500KB``, ``10MB``, ``2GB``, ``1TB`` (powers of 1000) or
    ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024).

    Raises:
        ConfigError: not one of these forms, or zero.
    """
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"{option} {text!r}: give a size such as 500MB, 10GB or 2GiB")
    base = 1024 if match.group(3) == "ib" else 1000
    return int(match.group(1)) * int(base ** _POWERS[match.group(2)])


def durable_args(
    *,
    durable: str | None,
    stream: str | None,
    max_age: str | None,
    max_bytes: str | None,
    ack_wait: str,
    max_ack_pending: int,
) -> DurableArgs | None:
    """The durable options as given on the command line, parsed; None without
    ``--durable``.

    Raises:
        UserError: an option that needs ``--durable`` without it, or stream limits with
            ``--stream``.
        ConfigError: a value that does not parse.
    """
    if durable is None:
        given = [
            flag
            for flag, value in (
                ("--stream", stream),
                ("--max-age", max_age),
                ("--max-bytes", max_bytes),
            )
            if value is not None
        ]
        given += ["--ack-wait"] if ack_wait != _ACK_WAIT else []
        given += ["--max-ack-pending"] if max_ack_pending != _MAX_ACK_PENDING else []
        if given:
            raise UserError(f"{', '.join(given)}: only with --durable NAME (JetStream)")
        return None
    if stream is not None and (max_age is not None or max_bytes is not None):
        raise UserError(
            "--max-age and --max-bytes are limits of a stream the recorder creates: leave "
            "them out with --stream (change that stream's limits where it is managed)"
        )
    return DurableArgs(
        durable=durable,
        stream=stream,
        max_age=None if max_age is None else parse_duration("--max-age", max_age),
        max_bytes=None if max_bytes is None else parse_size("--max-bytes", max_bytes),
        ack_wait=parse_duration("--ack-wait", ack_wait),
        max_ack_pending=max_ack_pending,
    )
