"""``StopSignals``: stop signals caught as an event for a while, then given back."""

from __future__ import annotations

import asyncio
import os
import signal

from natstream._signals import StopSignals


async def test_a_signal_sets_the_event_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[signal.Signals] = []
    second = asyncio.Event()

    def caught(sig: signal.Signals) -> None:
        seen.append(sig)
        if len(seen) == 2:
            second.set()

    with StopSignals(on_signal=caught) as signals:
        assert signals.catching
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(signals.event.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 10)
    assert (signals.received, signals.count) == (signal.SIGTERM, 2)
    assert seen == [signal.SIGTERM, signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before


async def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as signals:
            assert signals.signals == (signal.SIGINT, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing happens
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert not signals.event.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
