"""Which of natstream's optional C extensions are in use.

``natstream._cwriter`` (the writer's ``write()``) and ``natstream._cstream`` (the
per-message paths of streams) are built at install when a compiler is there. Each
has a pure-Python twin, which is the reference: the C code does what it does. With
the environment variable ``NATSTREAM_NO_EXTENSIONS`` set to a non-empty value when
natstream is imported, neither is used. Imports nothing of natstream (the sans-IO
protocol package takes its C core from here).
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any, Final, Literal

__all__ = ["ENV_OFF", "STREAM_IMPL", "Impl", "cstream", "load"]

ENV_OFF: Final = "NATSTREAM_NO_EXTENSIONS"

Impl = Literal["c", "python"]


def load(name: str) -> Any:
    """The extension module ``natstream.<name>``, or None when it is not built or
    extensions are turned off."""
    if os.environ.get(ENV_OFF):
        return None
    try:
        return import_module(f"natstream.{name}")
    except ImportError:  # not built (no compiler at install)
        return None


cstream: Final[Any] = load("_cstream")
"""``natstream._cstream`` when in use, else None."""

STREAM_IMPL: Final[Impl] = "c" if cstream is not None else "python"
"""``"c"`` when streams run their per-message paths in C, else ``"python"``."""
