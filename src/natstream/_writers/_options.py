"""A writer's arguments, checked once and kept in one immutable object its parts share."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from .._errors import ConfigError
from ._rotation import CompiledPattern, Retention, compile_pattern

__all__ = ["DEFAULT_BUFFER_SIZE", "Compression", "Options"]

DEFAULT_BUFFER_SIZE: Final = 256 * 1024
"""Bytes buffered before ``write()`` writes them out itself (half of it wakes the flush
thread)."""

_THREAD_PREFIX: Final = "natstream-writer"

Compression = Literal["gzip", "zstd"]


@dataclass(frozen=True, slots=True)
class Options:
    """What :meth:`check` made of ``HourlyFileWriter``'s arguments (documented there).

    Attributes:
        name: the ``filename`` prefix; it names the writer's threads too.
        base: the base directory, absolute.
        pattern: the file-name pattern, compiled.
        utc: hours are counted in UTC.
        clock: the injected clock, or None for the system clock.
        flush_interval: seconds between background flushes.
        buffer_size: bytes buffered before ``write()`` writes them out itself.
        fsync: flushes are made durable.
        compress: how finished files are compressed, or None.
        zstd: the ``zstandard`` module when ``compress`` is ``"zstd"``, else None.
        retention: which finished files to keep, or None (all).
        link: the absolute path of the link to the current file, or None.
        checkpoint: the absolute path of the commit checkpoint, or None.
    """

    name: str
    base: str
    pattern: CompiledPattern
    utc: bool
    clock: Callable[[], datetime] | None
    flush_interval: float
    buffer_size: int
    fsync: bool
    compress: Compression | None
    zstd: Any
    retention: Retention | None
    link: str | None
    checkpoint: str | None

    @classmethod
    def check(
        cls,
        base_dir: str | os.PathLike[str],
        filename: str,
        *,
        pattern: str | None,
        utc: bool,
        clock: Callable[[], datetime] | None,
        flush_interval: float,
        buffer_size: int,
        fsync: bool,
        compress: str | None,
        retention: Retention | str | int | timedelta | None,
        link_name: str | None,
        checkpoint: str | None = None,
    ) -> Options:
        """Check the arguments of ``HourlyFileWriter``; no I/O.

        Raises:
            ConfigError: an argument is invalid (the message names it).
        """
        if not isinstance(filename, str) or not filename or "/" in filename or "\0" in filename:
            raise ConfigError(f"filename must be a non-empty name without '/', got {filename!r}")
        if pattern is None:
            pattern = filename.replace("%", "%%") + "_%Y-%m-%d_%H.log"
        compiled = compile_pattern(pattern)
        if not (isinstance(flush_interval, int | float) and 0 < flush_interval < math.inf):
            raise ConfigError(
                f"flush_interval must be a positive number of seconds, got {flush_interval!r}"
            )
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigError(
                f"buffer_size must be a positive number of bytes, got {buffer_size!r}"
            )
        zstd: Any = None
        mode: Compression | None = None
        if compress == "gzip":
            mode = "gzip"
        elif compress == "zstd":
            mode = "zstd"
            try:
                zstd = importlib.import_module("zstandard")
            except ImportError as exc:
                raise ConfigError(
                    "compress='zstd' needs the zstandard package: pip install 'natstream[zstd]'"
                    " (or use compress='gzip')"
                ) from exc
        elif compress is not None:
            raise ConfigError(f"compress must be None, 'gzip' or 'zstd', got {compress!r}")
        base = os.path.abspath(os.fspath(base_dir))
        link: str | None = None
        if link_name is not None:
            parts = link_name.split("/")
            if link_name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ConfigError(
                    f"link_name must be a relative path inside base_dir, got {link_name!r}"
                )
            if compiled.regex.fullmatch(link_name):
                raise ConfigError(f"link_name {link_name!r} matches the file pattern {pattern!r}")
            link = os.path.join(base, link_name)
        checkpoint_path: str | None = None
        if checkpoint is not None:
            if (
                not isinstance(checkpoint, str)
                or not checkpoint
                or "/" in checkpoint
                or checkpoint in (".", "..")
            ):
                raise ConfigError(
                    f"checkpoint must be a file name (no '/') in base_dir, got {checkpoint!r}"
                )
            for name in (checkpoint, checkpoint + ".tmp", checkpoint + ".lock"):
                if compiled.regex.fullmatch(name):
                    raise ConfigError(
                        f"checkpoint {checkpoint!r} matches the file pattern {pattern!r}"
                    )
            checkpoint_path = os.path.join(base, checkpoint)
        return cls(
            name=filename,
            base=base,
            pattern=compiled,
            utc=utc,
            clock=clock,
            flush_interval=float(flush_interval),
            buffer_size=buffer_size,
            fsync=fsync,
            compress=mode,
            zstd=zstd,
            retention=None if retention is None else Retention.coerce(retention),
            link=link,
            checkpoint=checkpoint_path,
        )

    def thread_name(self, job: str) -> str:
        """The name of the writer's thread doing ``job``: ``natstream-writer-{name}-{job}``."""
        return f"{_THREAD_PREFIX}-{self.name}-{job}"
