from collections.abc import Callable

class WriterCore:
    _chunks: list[bytes]
    _fill: int
    _gate: int
    _hi: float
    _live: bool
    _lo: float
    def write(self, data: bytes) -> int: ...

def _set_time(clock: Callable[[], float] | None, /) -> None: ...
