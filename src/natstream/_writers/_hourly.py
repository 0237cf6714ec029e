"""The front of the hourly writer: :class:`HourlyFileWriter` and :class:`WriterStats`.

:class:`HourlyFileWriter` holds the buffer under its lock (its lock-free ``write()`` is
the core's, ``_core``), follows the clock from hour to hour, keeps the state and the
stored error, gathers the stats and closes. Its parts do the rest: ``_buffer`` (what
is buffered, taken and put back), ``_flusher`` (the flush thread, buffer to files),
``_sink`` (the file, the link), ``_maintenance`` (compression, retention), ``_ledger``
(which file each record goes to).

Guarantees kept here:

* A record goes to the file of the hour the clock shows when ``write()`` accepts it
  (of the hour holding the time given to ``write_at()``), whole, in the order records
  were accepted. With the default clock a ``write()`` racing an hour change on another
  thread may be accepted on either side of it, but always in an hour the clock showed
  during that call.
* ``write()`` returning means the record was accepted (it is in memory); raising means it
  was not. Accepted records are written by the next flush: every ``flush_interval``
  seconds and when half the buffer is used (on the flush thread), at each rotation, on
  ``flush()`` and on ``close()``, and by ``write()`` itself when the buffer is full.
* Errors are never swallowed: a failure in the caller's ``flush()``/``close()``, or in
  ``write()`` writing out a full buffer, is raised there; a failure of the background
  threads (flush, link, compression, retention) is stored and raised once, from the
  next ``write()``, ``flush()`` or ``close()``.
* ``close()`` always closes: it stops both threads; records it cannot write are dropped,
  counted in ``stats().bytes_dropped`` and reported in the exception's notes.
* With a ``checkpoint`` (``_commits``), ``commit()`` makes the records accepted before it
  survive any end of the process, and a writer opened later cuts off what came after.
"""

from __future__ import annotations

import enum
import math
import os
import threading
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import Final, NoReturn, Self

from .._errors import WriterError
from . import _core
from ._buffer import Buffer
from ._commits import Checkpoint
from ._failures import Failures
from ._flusher import Flusher
from ._maintenance import Maintenance
from ._options import DEFAULT_BUFFER_SIZE, Options
from ._rotation import LOCAL_TIME, CurrentHour, Retention, clock_reading
from ._sink import FileSink
from ._stats import WriterStats

__all__ = ["HourlyFileWriter", "WriterStats"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN: Final = _State.OPEN


class HourlyFileWriter(Buffer):
    """Append records to one file per wall-clock hour, buffered, from any thread.

    Files are named ``{base_dir}/{filename}_YYYY-MM-DD_HH.log`` (for example
    ``stream_data_2026-11-26_21.log``), or ``base_dir / now.strftime(pattern)``. The name
    is computed from the clock when each record is accepted, so a record never straddles
    two files; files are never renamed. Directories are created as needed.

    Time zones and DST: hours are counted in UTC when ``utc`` is true, else in the
    clock's zone: the system's local time for the default clock and for naive datetimes,
    or the tzinfo of the aware datetimes ``clock`` returns (a :class:`zoneinfo.ZoneInfo`
    works). When the UTC offset changes within a wall-clock hour, as in the hour a
    fall-back day repeats, that hour gets one file per offset, each carrying its offset
    before the extension (``_2026-10-25_02+0200.log`` then ``_2026-10-25_02+0100.log`` in
    Europe/Berlin), so nothing is overwritten or merged; every other hour keeps its plain
    name. No offset is added when ``pattern`` holds ``%z`` already or names no hours (a
    daily pattern keeps one file per day). The skipped hour of a spring-forward day has
    no file. If the clock steps back, records are appended to the earlier hour's file.

    Buffering: ``write()`` appends to memory; no disk I/O happens on the caller's thread
    unless the buffer is full. When half of ``buffer_size`` is used the flush thread is
    woken; when all of it is used and the flush thread has not taken it yet, ``write()``
    writes the buffer out itself, like ``flush()`` (backpressure; in asyncio code this
    blocks the loop for that time, typically well under a millisecond, longer only if the
    disk stalls). ``flush()`` writes on the caller's thread: from asyncio,
    ``await asyncio.to_thread(writer.flush)``. The writer is thread-safe; with the
    default clock, ``write()`` takes no lock except at an hour change or as the buffer
    fills (this relies on the GIL: CPython's free-threaded build is not supported). That
    lock-free path runs in C when natstream's optional extension was built at install
    (``WRITER_IMPL == "c"``; set ``NATSTREAM_NO_EXTENSIONS=1`` to use the Python one);
    both behave the same.

    Errors, in short (the docstrings of ``natstream._writers`` state each guarantee in
    full): the file is cut back to the last whole record, unwritten records stay
    buffered for the next flush, and the error is raised from ``flush()``/``close()`` (or
    ``write()`` writing out a full buffer), or, if the flush thread hit it, once from the
    next ``write()``/``flush()``/``close()``. A ``write()`` that raises did not accept its
    record. ``close()`` always closes; records it cannot write are dropped and counted in
    :attr:`WriterStats.bytes_dropped`.

    Restart: a new writer appends to the current hour's file, starting a fresh line if
    the file does not end in ``b"\\n"``.

    Records of other times: :meth:`write_at` puts a record into the hour of a time it is
    given (a message's stored time, for a backlog replayed later) instead of the clock's.

    Commits (``checkpoint``): :meth:`commit` flushes and records a token of the caller's
    (say, the last sequence number written) in the checkpoint file, with how long each
    file was then; a writer opened later with the same checkpoint cuts every file back
    to its last commit and returns that token from :attr:`committed`. So the caller
    knows exactly what the files hold after a crash, and writes the rest again: no
    record twice, none lost. With ``fsync`` this holds across a power loss too. One
    writer (one process) at a time per checkpoint.

    Background work, stopped by :meth:`close`: a flush thread, and when ``compress`` or
    ``retention`` is set, a maintenance thread that compresses finished hour files and
    applies retention at start and after each rotation. Only files whose relative path
    matches ``pattern`` are touched. A compression in progress at close is abandoned (the
    plain file stays; the next writer compresses it).

    Args:
        base_dir: directory the files go under.
        filename: file name prefix; it also names the writer's threads.
        pattern: strftime pattern relative to ``base_dir``; may contain ``/``
            (directories); overrides the default ``{filename}_%Y-%m-%d_%H.log``.
        utc: count hours in UTC instead of the clock's zone.
        clock: returns the current time; called on every ``write()`` and from the
            writer's threads (so it must be thread-safe). Default: the system clock.
        flush_interval: seconds between background flushes.
        buffer_size: bytes buffered before ``write()`` writes them out itself (half of
            it wakes the flush thread). Memory use stays under about twice this (the
            buffer, plus the batch being written).
        fsync: make flushes durable: ``os.fsync`` the file after each flush, and the
            directory when a file or directory is created.
        compress: ``"gzip"`` or ``"zstd"`` (needs the ``zstandard`` package) to compress
            each finished hour's file to ``.gz``/``.zst``, keeping its mtime.
        retention: which finished files to keep: a :class:`Retention`, a string for
            :func:`parse_retention` (``"7d"``, ``"24h"``, ``"48"``, ``"7d,100"``), an int
            (count of files) or a :class:`~datetime.timedelta` (age by mtime). Checked
            at start and after each rotation.
        link_name: path relative to ``base_dir`` of a symlink kept pointing at the current
            hour's file (replaced atomically when a new hour's file is opened).
        checkpoint: file name, in ``base_dir``, of the commit checkpoint (see above);
            e.g. ``".sensors.checkpoint"``. It is created on the first file opened or
            commit, with ``{checkpoint}.lock`` beside it.

    Raises:
        ConfigError: an argument is invalid (the message names it).
        WriterError: the checkpoint is held by another writer, damaged, or a file could
            not be cut back to it.
    """

    # Besides WriterCore's (_chunks, _fill, _gate, _hi, _live, _lo) and Buffer's, never
    # repeated here: a slot of the same name would hide the C core's field from Python.
    __slots__ = (
        "__weakref__",
        "_bytes_dropped",
        "_checkpoint",
        "_clock",
        "_close_lock",
        "_error",
        "_failures",
        "_flusher",
        "_given",
        "_hour",
        "_lock",
        "_maintenance",
        "_observer",
        "_options",
        "_sink",
        "_state",
        "_tz",
    )

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        filename: str,
        *,
        pattern: str | None = None,
        utc: bool = False,
        clock: Callable[[], datetime] | None = None,
        flush_interval: float = 1.0,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        fsync: bool = False,
        compress: str | None = None,
        retention: Retention | str | int | timedelta | None = None,
        link_name: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        options = Options.check(
            base_dir,
            filename,
            pattern=pattern,
            utc=utc,
            clock=clock,
            flush_interval=flush_interval,
            buffer_size=buffer_size,
            fsync=fsync,
            compress=compress,
            retention=retention,
            link_name=link_name,
            checkpoint=checkpoint,
        )
        self._options = options
        self._clock = options.clock  # with _tz, read on every locked write()
        self._tz: tzinfo = UTC if utc else LOCAL_TIME
        # The time the last record came with (write_at), until a write(): while set,
        # hours follow the given times, not the clock.
        self._given: float | None = None

        self._lock = threading.Lock()
        self._observer: Callable[[], None] | None = None  # see _notify
        self._close_lock = threading.Lock()
        self._state = _State.CLOSED  # OPEN once the threads run (__del__ looks at it)
        self._live = False  # state is OPEN; read by write() after its lock-free append
        self._error: BaseException | None = None
        self._init_buffer(buffer_size)
        self._hour = CurrentHour(options.base, options.pattern)
        # The fast path's hour bounds: the bucket's when write() may skip the lock
        # (default clock, open, no stored error), else an empty range.
        self._lo = math.inf
        self._hi = -math.inf
        self._sink = FileSink(self._lock, fsync=options.fsync)
        self._bytes_dropped = 0
        self._failures = Failures(self._lock, options.name)
        self._checkpoint: Checkpoint | None = None
        if options.checkpoint is not None:
            commits = Checkpoint(options.base, options.checkpoint, self._lock, fsync=fsync)
            commits.open()  # cuts files back before maintenance may look at them
            self._checkpoint = commits

        self._maintenance = Maintenance(self, options, lock=self._lock, failures=self._failures)
        self._flusher = Flusher(
            self,
            options,
            lock=self._lock,
            ledger=self._ledger,
            hour=self._hour,
            sink=self._sink,
            maintenance=self._maintenance,
            failures=self._failures,
            checkpoint=self._checkpoint,
        )
        now, tz = self._now()
        self._rotate_locked(now, tz)  # the first hour: nothing to flush yet
        self._state = _State.OPEN
        self._live = True
        self._arm_locked()
        self._flusher.start()
        self._maintenance.start()

    def __repr__(self) -> str:
        name, base = self._options.name, self._options.base
        return f"<HourlyFileWriter {name!r} in {base!r} {self._state.value}>"

    # -- the public surface ---------------------------------------------------------

    def _write_locked(self, data: bytes) -> int:
        """``write()`` under the lock: the exact path, and the only one with a clock."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        return self._accept(data, None)

    def write_at(self, when: float, data: bytes) -> int:
        """Accept one record for the file of the hour holding ``when``, not the clock's.

        ``when`` is in seconds since the epoch, as ``time.time()`` gives: the time the
        record stands for (a message's stored time, say, when a backlog is replayed
        later). The writer takes it as the clock's reading for this record: it moves to
        that hour, forward or back (as when the clock steps back), and until the next
        :meth:`write` it follows the given times, not the clock: the file of a past hour
        stays open while its records come and is finished when a record of a later hour
        comes (or at :meth:`close`). Otherwise as :meth:`write` (on its locked path).

        Raises:
            WriterError: as :meth:`write`; the record was not accepted.
            TypeError: ``data`` is not bytes-like, or ``when`` is not a number.
            ValueError: ``when`` is not finite.
        """
        if type(data) is not bytes:
            data = _as_bytes(data)
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise TypeError(f"write_at() takes a time in seconds, not {type(when).__name__}")
        when = float(when)
        if not math.isfinite(when):
            raise ValueError(f"write_at() needs a finite time, got {when!r}")
        return self._accept(data, when)

    def _accept(self, data: bytes, when: float | None) -> int:
        """Append ``data`` under the lock, in the hour of ``when`` (None: the clock's)."""
        size = len(data)
        while True:
            with self._lock:
                if self._state is not _OPEN or self._error is not None:
                    self._raise_unusable_locked()
                if self._fill + size < self._gate or self._has_room_locked(size):
                    given = self._given
                    self._given = when  # set before a rotation arms the fast path
                    if when is None:
                        now, tz = self._now()
                    else:
                        now = when
                        tz = self._tz if self._clock is None else self._now()[1]
                    hour = self._hour
                    if (now >= hour.end or now < hour.start) and self._rotate_locked(now, tz):
                        self._flusher.wake()  # it writes out and closes the other hour
                    elif (given is None) is not (when is None):
                        self._arm_locked()  # write()'s lock-free path: shut while given
                    self._chunks.append(data)
                    self._fill += size
                    return size
            # The buffer is full: write it out on this thread rather than wait for the
            # flush thread (which, with the GIL, may get to run only once this thread
            # blocks). An error is raised here and the record is not accepted.
            self._flusher.flush(self)

    def _settle_late(self, data: bytes) -> int:
        """A lock-free append raced with ``close()``: keep the record only if close took it.

        Records with equal bytes are interchangeable, so removing any equal one is right.
        """
        with self._lock:
            try:
                self._chunks.remove(data)
            except ValueError:
                return len(data)  # close's final flush took it: accepted
            self._raise_unusable_locked()

    def flush(self) -> None:
        """Write every accepted record to its file, on the caller's thread.

        On return, every record accepted before the call is in the operating system's
        hands (on disk too, when ``fsync`` is set), and if the clock has passed the end
        of the hour, that hour's file is closed (and queued for compression).

        Raises:
            WriterError: writing failed (the unwritten records stay buffered and the next
                flush retries them; see the module doc), or the flush thread had stored
                an error (raised once, nothing written by this call), or the writer is
                closed.
        """
        with self._lock:
            if self._state is not _OPEN or self._error is not None:
                self._raise_unusable_locked()
            self._follow_clock_locked()
        self._flusher.flush(self)

    def commit(self, token: str) -> None:
        """Flush, then record ``token`` in the checkpoint as covering what was accepted.

        On return every record accepted before the call is in its file (on disk too,
        with ``fsync``) and the checkpoint holds ``token`` with the files' sizes: a
        writer opened later with this checkpoint keeps those records and reports
        ``token`` as :attr:`committed`, and cuts off any record accepted after this call
        that no later commit covers. Records accepted on another thread while this call
        waits for a flush running there may be covered too. Runs on the caller's thread
        (from asyncio: ``await asyncio.to_thread(writer.commit, token)``).

        Raises:
            WriterError: the writer has no checkpoint or is closed, or writing, syncing
                or saving the checkpoint failed: the previous commit stands (the
                unwritten records stay buffered, as in :meth:`flush`).
            TypeError: ``token`` is not a str.
        """
        if not isinstance(token, str):
            raise TypeError(f"commit() takes a str token, not {type(token).__name__}")
        if self._checkpoint is None:
            raise WriterError(
                f"writer {self._options.name!r} has no checkpoint: create it with "
                "HourlyFileWriter(..., checkpoint='.name.checkpoint') to commit"
            )
        with self._lock:
            if self._state is not _OPEN or self._error is not None:
                self._raise_unusable_locked()
            self._follow_clock_locked()
        self._flusher.commit(self, token)

    @property
    def committed(self) -> str | None:
        """The token of the last commit: before this writer's first one, the token the
        checkpoint held when the writer was opened; None without a commit or checkpoint."""
        return None if self._checkpoint is None else self._checkpoint.token

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint file (absolute), or None when the writer has none."""
        return None if self._checkpoint is None else Path(self._checkpoint.path)

    def close(self) -> None:
        """Flush, close the file, stop the background threads. Idempotent.

        The writer is closed when this returns, even when it raises. A compression in
        progress is abandoned (the uncompressed file stays, for the next writer).

        Raises:
            WriterError: a stored background error, or the final flush or close failed;
                records that could not be written are dropped (the exception's notes
                say how many bytes).
        """
        with self._close_lock:
            with self._lock:
                if self._state is _State.CLOSED:
                    return
                self._state = _State.CLOSING
                self._live = False
                self._arm_locked()
                problems: list[BaseException] = []
                if self._error is not None:
                    problems.append(self._error)
                    self._error = None
            self._notify()
            self._flusher.stop()
            try:
                problems += self._flusher.finish(self)
            finally:
                self._maintenance.stop()
                self._maintenance.join()
                with self._lock:
                    # Records the final flush could not write; it did not put them back,
                    # so what is left in _chunks are late appends for _settle_late.
                    dropped = self._ledger.inflight_size()
                    self._ledger.inflight = []
                    self._bytes_dropped += dropped
                    if self._error is not None:
                        problems.append(self._error)
                        self._error = None
                    self._state = _State.CLOSED
                if self._checkpoint is not None:
                    self._checkpoint.close()
                self._notify()
        if problems:
            first = problems[0]
            for other in problems[1:]:
                first.add_note(f"also: {other!r}")
            if dropped:
                first.add_note(f"{dropped} bytes of accepted records could not be written")
            raise first

    def stats(self) -> WriterStats:
        """A consistent snapshot of the counters; cheap, safe from any thread."""
        with self._lock:
            return WriterStats(
                records=self._ledger.taken + len(self._chunks),
                bytes_written=self._flusher.bytes_written,
                bytes_buffered=self._buffered_locked(),
                bytes_dropped=self._bytes_dropped,
                current_path=Path(self._hour.path),
                files_opened=self._sink.files_opened,
                lines_repaired=self._sink.lines_repaired,
                flushes=self._flusher.flushes,
                errors=self._failures.count,
                files_compressed=self._maintenance.files_compressed,
                files_removed=self._maintenance.files_removed,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is not _OPEN:
            return
        # Stop the threads first: the warning below may be turned into an exception.
        self._state = _State.CLOSED
        self._live = False
        self._flusher.wake()
        self._maintenance.stop()
        self._sink.drop()
        if self._checkpoint is not None:
            self._checkpoint.close()
        warnings.warn(
            f"{self!r} was never closed; {sum(map(len, self._chunks))} buffered bytes are lost. "
            "Call close() or use it in a with block.",
            ResourceWarning,
            stacklevel=2,
        )

    # -- clock and rotation (under self._lock) --------------------------------------

    def _now(self) -> tuple[float, tzinfo]:
        clock = self._clock
        if clock is None:
            return _core._time(), self._tz
        return clock_reading(clock(), self._options.utc)

    def _follow_clock_locked(self) -> None:
        if self._given is not None:
            return  # hours follow the times records come with (write_at)
        now, tz = self._now()
        hour = self._hour
        if (now >= hour.end or now < hour.start) and self._rotate_locked(now, tz):
            self._flusher.wake()  # it writes out and closes the finished hour

    def _rotate_locked(self, now: float, tz: tzinfo) -> bool:
        """Make the hour of ``now`` the current one; True when its file is another."""
        changed = self._hour.move(now, tz)
        if changed:
            # Mark first, then move the fast path's bounds (_arm_locked): a lock-free
            # write that sees the new bounds appends after the mark.
            self._ledger.mark(self._hour.path, buffered=len(self._chunks))
        self._arm_locked()
        return changed

    def _arm_locked(self) -> None:
        """Open or shut the lock-free path of ``write()`` (shut: an empty hour range)."""
        if (
            self._clock is None
            and self._state is _OPEN
            and self._error is None
            and self._given is None
        ):
            self._lo, self._hi = self._hour.start, self._hour.end
        else:
            self._lo, self._hi = math.inf, -math.inf

    def _raise_unusable_locked(self) -> NoReturn:
        if self._state is not _OPEN:
            name = self._options.name
            raise WriterError(
                f"writer {name!r} is closed; create a new HourlyFileWriter to write more"
            )
        error = self._error
        assert error is not None
        self._error = None
        self._arm_locked()
        raise error

    # -- background work -------------------------------------------------------------

    def _background_tick(self) -> bool:
        """One round of the flush thread; False once the writer is closing."""
        try:
            with self._lock:
                if self._state is not _OPEN:
                    return False
                self._follow_clock_locked()
            self._flusher.flush_unless_busy(self)
        except Exception as exc:  # stored, raised to the user by the next call
            self._store_error(exc)
        return True

    def _half_full(self) -> None:
        self._flusher.wake()

    def _store_error(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
                self._arm_locked()
        self._notify()

    def _notify(self) -> None:
        """Tell the observer, if one is attached, that the counters or the state changed.

        ``_observer`` is a private hook (a callable taking no arguments): the tests
        attach one to wait for background work without sleeping. Called from any thread,
        never with ``_lock`` held, so the observer may call :meth:`stats`.
        """
        observer = self._observer
        if observer is not None:
            observer()

    def _in_use_locked(self) -> set[str]:
        used = self._ledger.paths()
        used.add(self._hour.path)
        if self._checkpoint is not None:
            used |= self._checkpoint.paths  # bytes not committed yet
        if self._sink.path is not None:
            used.add(self._sink.path)
        return used


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)  # a copy: the caller may change its buffer after write()
    raise TypeError(f"write() takes bytes, not {type(data).__name__}")
