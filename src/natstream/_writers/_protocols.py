"""What natstream asks of a writer: the public :class:`StreamWriter`, and the private
:class:`RecordSink` (the part of it a recording uses)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["RecordSink", "StreamWriter"]


@runtime_checkable
class StreamWriter(Protocol):
    """Where a recorder puts records: anything with these three methods.

    natstream's writers are also context managers (``with`` closes them); the protocol
    asks only for the methods, so a binary file object qualifies too.
    """

    def write(self, data: bytes) -> int:
        """Accept one record; return ``len(data)``."""
        ...

    def flush(self) -> None:
        """Hand every accepted record to the operating system."""
        ...

    def close(self) -> None:
        """Flush, release files; later writes fail."""
        ...


class RecordSink(Protocol):
    """What a recording needs of its writer: one ``write`` per record, and ``flush``.

    A recording never closes its writer (the caller owns it), so any
    :class:`StreamWriter` qualifies, and so does a binary file.
    """

    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...
