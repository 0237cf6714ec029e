"""Stop signals as events: SIGINT and SIGTERM, caught for a while, then given back."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

__all__ = ["STOP_SIGNALS", "StopSignals", "until_stopped"]

log = logging.getLogger("natstream")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what process managers send


class StopSignals:
    """Inside ``with StopSignals():`` the signals set :attr:`event` (and call
    ``on_signal`` with each one) instead of their usual effect; on leaving, the
    handlers installed with ``signal.signal`` before (Python's Ctrl-C handler,
    ``asyncio.run``'s) are back.

    Entered on a running event loop. Signals can be caught only in the main thread
    of a platform with ``loop.add_signal_handler``; elsewhere :attr:`catching` is
    False and the event is only set by whoever else holds it. A signal ignored when
    the block starts (``SIG_IGN``: SIGINT for a job a script started with ``&``)
    stays ignored, as Python leaves it.

    Attributes:
        event: set at the first signal.
        received: the first signal caught (None until then).
        count: signals caught so far.
    """

    def __init__(
        self,
        signals: Iterable[signal.Signals] = STOP_SIGNALS,
        *,
        on_signal: Callable[[signal.Signals], object] | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.event = asyncio.Event()
        self.received: signal.Signals | None = None
        self.count = 0
        self._on_signal = on_signal
        self._installed: list[tuple[signal.Signals, object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def catching(self) -> bool:
        """Whether the signals are caught (see the class docstring)."""
        return bool(self._installed)

    def __enter__(self) -> StopSignals:
        loop = self._loop = asyncio.get_running_loop()
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(sig, self._caught, sig)
            except (NotImplementedError, RuntimeError):  # no support, or not the main thread
                continue
            self._installed.append((sig, previous))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        installed, self._installed = self._installed, []
        assert self._loop is not None
        for sig, previous in installed:
            self._loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from outside Python, nothing to give back
                signal.signal(sig, previous)  # type: ignore[arg-type]

    def _caught(self, sig: signal.Signals) -> None:
        self.count += 1
        if self.received is None:
            self.received = sig
        self.event.set()
        if self._on_signal is not None:
            self._on_signal(sig)


async def until_stopped(
    close: Callable[[], Awaitable[None]],
    grace: float,
    *events: asyncio.Event | None,
) -> signal.Signals | None:
    """Wait for SIGINT or SIGTERM (caught as :class:`StopSignals` does) or for one of
    ``events`` to be set, then await ``close()`` with the signals still caught: one
    that comes meanwhile is logged (the close takes at most ``grace`` seconds for the
    streams in flight, and a second Ctrl-C does not cut it). Cancellation closes too.

    Returns:
        The signal that stopped the wait; None when an event did.
    """

    def again(sig: signal.Signals) -> None:
        if signals.count > 1:
            log.info("%s: already closing; streams in flight get %g s at most", sig.name, grace)

    with StopSignals(on_signal=again) as signals:
        try:
            await _first_set(signals.event, *(e for e in events if e is not None))
        finally:
            if signals.received is not None:
                name = signals.received.name
                log.info("%s: closing; streams in flight get %g s to finish", name, grace)
            await close()
    return signals.received


async def _first_set(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.create_task(e.wait(), name="natstream-until-stopped") for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
