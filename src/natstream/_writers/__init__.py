"""File writers: the :class:`StreamWriter` protocol and :class:`HourlyFileWriter`."""

from ._core import WRITER_IMPL
from ._hourly import DEFAULT_BUFFER_SIZE, HourlyFileWriter, StreamWriter, WriterStats
from ._rotation import Retention, parse_retention

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "WRITER_IMPL",
    "HourlyFileWriter",
    "Retention",
    "StreamWriter",
    "WriterStats",
    "parse_retention",
]
