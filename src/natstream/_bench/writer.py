"""Throughput of HourlyFileWriter against a plain buffered append loop.

Run: ``natstream bench`` or ``python benchmarks/bench_writer.py [lines] [line_size]``.
Both loops write the same ``lines`` records of ``line_size`` bytes (newline included) to
a fresh file in a temporary directory, and the time includes opening and closing, so
both end with every byte in the file (checked). The figure that matters is ``ratio``:
writer lines/s divided by plain lines/s (target: at least 0.9). Rounds alternate between
the two, each going first every other round, and the best of each is kept, which
cancels most of the noise of a shared machine.

What bounds the ratio: ``open(path, "ab").write`` is one C call that takes the
buffered file's lock and copies into an 8 KiB buffer, with a ``write`` every 8 KiB.
``HourlyFileWriter.write`` must also read the clock (the hour is decided per record),
check the type and count the buffered bytes; it takes no lock and copies nothing: it
appends the record to a list. With the C extension (``writer_impl`` ``"c"``) that is one
C call too, with ``clock_gettime``; with the pure-Python fallback (``"python"``, no
compiler at install or ``NATSTREAM_NO_EXTENSIONS=1``) it is a Python method call, about
twice the plain loop's cost. Flushes (joining the records into 64 KiB pieces, one
``writev`` per 256 KiB) run on the calling thread in this loop: the flush thread would
need the GIL, which a loop that never blocks hands over only every 5 ms.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from natstream._writers import WRITER_IMPL, HourlyFileWriter

_ROUNDS = 7


def _size(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def _plain(path: str, lines: int, line: bytes) -> float:
    start = time.perf_counter()
    with open(path, "ab") as file:
        write = file.write
        for _ in range(lines):
            write(line)
    return time.perf_counter() - start


def _writer(directory: str, lines: int, line: bytes) -> float:
    start = time.perf_counter()
    with HourlyFileWriter(directory, "bench") as writer:
        write = writer.write
        for _ in range(lines):
            write(line)
    return time.perf_counter() - start


def run(lines: int = 1_000_000, line_size: int = 100) -> dict[str, Any]:
    """Measure both loops (best of seven rounds each, interleaved) and return figures.

    Returns:
        ``lines``, ``line_size``, ``plain_lines_per_s``, ``writer_lines_per_s``,
        ``plain_ns_per_line``, ``writer_ns_per_line``, ``ratio`` (writer / plain
        throughput), ``mb_per_s`` for the writer and ``writer_impl`` (``"c"`` or
        ``"python"``: which implementation of the writer's lock-free path ran).
    """
    if line_size < 1:
        raise ValueError(f"line_size must be at least 1 (the newline), got {line_size}")
    line = b"x" * (line_size - 1) + b"\n"
    plain_best = writer_best = float("inf")
    with tempfile.TemporaryDirectory(prefix="natstream-bench-") as tmp:
        for round_ in range(_ROUNDS):
            plain_dir = os.path.join(tmp, f"plain-{round_}")
            writer_dir = os.path.join(tmp, f"writer-{round_}")
            os.mkdir(plain_dir)
            os.mkdir(writer_dir)
            plain_path = os.path.join(plain_dir, "plain.log")
            if round_ % 2:
                writer_best = min(writer_best, _writer(writer_dir, lines, line))
                plain_best = min(plain_best, _plain(plain_path, lines, line))
            else:
                plain_best = min(plain_best, _plain(plain_path, lines, line))
                writer_best = min(writer_best, _writer(writer_dir, lines, line))
            for name, directory in (("plain", plain_dir), ("writer", writer_dir)):
                if (written := _size(directory)) != lines * line_size:
                    raise AssertionError(
                        f"{name} wrote {written} bytes, expected {lines * line_size}"
                    )
            shutil.rmtree(plain_dir)
            shutil.rmtree(writer_dir)
    return {
        "lines": lines,
        "line_size": line_size,
        "plain_lines_per_s": lines / plain_best,
        "writer_lines_per_s": lines / writer_best,
        "plain_ns_per_line": plain_best / lines * 1e9,
        "writer_ns_per_line": writer_best / lines * 1e9,
        "ratio": plain_best / writer_best,
        "mb_per_s": lines * line_size / writer_best / 1e6,
        "writer_impl": WRITER_IMPL,
    }


def main(argv: list[str]) -> None:
    arguments = [int(arg) for arg in argv[:2]]
    figures = run(*arguments)
    print(
        f"{figures['lines']:,} lines of {figures['line_size']} bytes: "
        f"plain {figures['plain_lines_per_s']:,.0f} lines/s "
        f"({figures['plain_ns_per_line']:.0f} ns/line), "
        f"HourlyFileWriter {figures['writer_lines_per_s']:,.0f} lines/s "
        f"({figures['writer_ns_per_line']:.0f} ns/line, {figures['mb_per_s']:.0f} MB/s), "
        f"ratio {figures['ratio']:.2f} (writer_impl {figures['writer_impl']})"
    )
