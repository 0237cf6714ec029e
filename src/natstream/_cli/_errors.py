"""How a command reports what went wrong: one line on stderr, ``Error: ...``."""

from __future__ import annotations

import click

__all__ = ["Failure", "UserError", "one_line"]


class UserError(click.ClickException):
    """The user asked for something that cannot be done: exit status 2."""

    exit_code = 2


class Failure(click.ClickException):
    """The command failed while running (a disk filled up, a server died): exit status 1."""

    exit_code = 1


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: its first line, then its last (where a server's
    log tail ends with the reason), then its notes."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1:
        text = f"{text.rstrip(':')}: {lines[-1]}"
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([text, *notes])
