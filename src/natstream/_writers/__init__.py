"""File writers: :class:`HourlyFileWriter`, the :class:`StreamWriter` protocol, and parts.

:class:`HourlyFileWriter` appends records (one ``write()`` call each, normally one line
ending in ``b"\\n"``) to one file per wall-clock hour. It is a front over small parts,
each with one job and, in its docstring, the guarantees it keeps:

* ``_hourly``: the front: arguments, the buffer under the writer's lock, the clock and
  rotation, the stored error, stats, close;
* ``_core``: the lock-free ``write()``, in C (``natstream._cwriter``) or Python;
* ``_options``: the arguments, checked; ``_rotation``: hour buckets, file names and
  retention rules, pure functions of time; ``_ledger``: which file each buffered record
  goes to;
* ``_flusher``: the flush thread and the path from the buffer to the files;
* ``_sink``: the open hour file (open, tail repair, ``writev``, cut back, fsync) and the
  link to it;
* ``_maintenance``: compression, retention and pruning, on the maintenance thread;
* ``_failures``: failures counted and named in a :class:`~natstream.WriterError`;
* ``_protocols``: :class:`StreamWriter`, and :class:`RecordSink`, what a recording needs.

Nothing here knows NATS. The threads are named ``natstream-writer-{filename}-flush`` and
``-maintenance``, hold the writer only weakly, and are stopped by ``close()``.
"""

from ._core import WRITER_IMPL
from ._hourly import HourlyFileWriter, WriterStats
from ._options import DEFAULT_BUFFER_SIZE
from ._protocols import RecordSink, StreamWriter
from ._rotation import Retention, parse_retention

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "WRITER_IMPL",
    "HourlyFileWriter",
    "RecordSink",
    "Retention",
    "StreamWriter",
    "WriterStats",
    "parse_retention",
]
