"""The requester's delivery loop for packed items (``_delivery.drain_pack``) against the
plain rule: one ``on_delivered`` call per item the consumer accepted.

The loop counts items in runs (``on_delivered_many``) sized in advance to end where an
ack may fall due, by count or by bytes; it must send the same acks, at the same points,
and leave the machine, the pack and the resume point as the per-item rule does, whatever
the handler returns (True, None, anything else, False, an exception, or an awaitable of
those) and however many times the loop is entered for one pack. Every test runs on the
Python loop and, when the C extension is in use, on its C twin (``impl``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natstream._ext import cstream
from natstream._protocol import Reply, RequesterMachine
from natstream._protocol._wire import HDR_SEQ, pack_items
from natstream._requester._delivery import Pack, drain_pack

from .conftest import PROFILE
from .test_requester_machine import CTL, bound, packed

RESULTS = ["true", "none", "other", "false", "raise", "aw-true", "aw-none", "aw-false", "aw-raise"]


class Boom(Exception):
    pass


IMPLS = ["python", "c"] if cstream is not None else ["python"]


class Item:
    """What the loop makes of each item (the real class is a connection's Msg)."""

    __slots__ = ("data", "reply", "subject")


class FakeAttempt:
    """What ``_drain_pack`` uses of an attempt: its machine, and acks (recorded with
    the machine's count and the handler calls made so far: an ack must go out before
    the next item is handed over)."""

    def __init__(self, machine: RequesterMachine, calls: list[bytes]) -> None:
        self.machine = machine
        self.calls = calls
        self.acks: list[tuple[int, int, int, dict[str, str]]] = []

    def send_ack(self, ack: dict[str, str]) -> None:
        m = self.machine
        self.acks.append((len(self.calls), m.delivered_seq, m.delivered_bytes, dict(ack)))


ATTEMPTS: dict[str, type[Any]] = {"python": FakeAttempt}
if cstream is not None:

    class CAttempt(cstream.AttemptCore, FakeAttempt):  # type: ignore[misc, name-defined]
        """The same on the C core: the C drain_pack takes it."""

    ATTEMPTS["c"] = CAttempt


def outcome(action: str) -> Any:
    """The handler's result for ``action`` (raises for "raise")."""
    if action == "raise":
        raise Boom
    if action.startswith("aw-"):
        inner = action[3:]

        async def later() -> Any:
            await asyncio.sleep(0)
            return outcome(inner)

        return later()
    return {"true": True, "none": None, "false": False, "other": 7}[action]


async def fast(
    m: RequesterMachine,
    payload: bytes,
    offsets: list[int],
    actions: list[str],
    entries: int,
    impl: str = "python",
) -> tuple[list[Any], FakeAttempt, int]:
    taken: list[bytes] = []
    attempt = ATTEMPTS[impl](m, taken)
    source = SimpleNamespace(data=payload, subject="_INBOX.me", reply=CTL)
    pack = Pack(Item, source, offsets)  # type: ignore[arg-type]

    def handler(msg: Any) -> Any:
        taken.append(msg.data)
        return outcome(actions[len(taken) - 1])

    results: list[Any] = []
    for _ in range(entries):
        if pack.next >= pack.size:
            break
        try:
            results.append(await drain_pack(attempt, pack, handler))  # type: ignore[arg-type]
        except Boom:
            results.append("raised")
        results.append((pack.next, m.delivered_seq, m.delivered_bytes, m.resume_point()))
    return results, attempt, len(taken)


async def reference(
    m: RequesterMachine, items: list[bytes], actions: list[str], entries: int
) -> tuple[list[Any], FakeAttempt, int]:
    """One ``on_delivered`` per accepted item; an ack is sent when one falls due."""
    calls: list[bytes] = []
    attempt = FakeAttempt(m, calls)
    results: list[Any] = []
    i = 0
    for _ in range(entries):
        if i >= len(items):
            break
        stopped: Any = False
        while i < len(items):
            data = items[i]
            i += 1
            calls.append(data)
            try:
                result = outcome(actions[i - 1])
                if isinstance(result, Awaitable):
                    result = await result
            except Boom:
                stopped = "raised"
                break
            if result is False:
                stopped = True
                break
            ack = m.on_delivered(None, len(data))
            if ack is not None:
                attempt.send_ack(ack)
        results.append(stopped)
        results.append((i, m.delivered_seq, m.delivered_bytes, m.resume_point()))
    return results, attempt, i


@pytest.mark.fuzz
@pytest.mark.parametrize("impl", IMPLS)
@settings(settings.get_profile(PROFILE))
@given(
    window_messages=st.integers(1, 70),
    window_bytes=st.integers(1, 400),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    actions=st.lists(st.sampled_from(RESULTS), min_size=60, max_size=60),
    pos=st.sampled_from([None, "5.0"]),
    later_message=st.booleans(),
    entries=st.integers(1, 6),
)
def test_drain_pack_counts_and_acks_as_one_call_per_item(
    impl: str,
    window_messages: int,
    window_bytes: int,
    sizes: list[int],
    actions: list[str],
    pos: str | None,
    later_message: bool,
    entries: int,
) -> None:
    m = bound(window_messages=window_messages, window_bytes=window_bytes, heartbeat=0.0)
    items = [bytes([65 + k % 26]) * size for k, size in enumerate(sizes)]
    if len(items) > window_messages or (len(items) > 1 and sum(sizes) > window_bytes):
        items = items[: max(1, min(window_messages, len(items)))]
        while len(items) > 1 and sum(map(len, items)) > window_bytes:
            items.pop()
    payload = pack_items(items)
    assert m.on_reply(0.0, packed(1, len(items), pos), payload, CTL) is Reply.DELIVER
    offsets, m.pack_offsets = m.pack_offsets, None
    assert offsets is not None
    room = len(items) < window_messages and sum(map(len, items)) <= window_bytes
    if later_message and room:  # the pack is not the last message received
        assert m.on_reply(0.0, {HDR_SEQ: str(len(items) + 1)}, b"", CTL) is Reply.DELIVER
    twin = copy.deepcopy(m)

    got, got_attempt, got_taken = asyncio.run(fast(m, payload, offsets, actions, entries, impl))
    want, want_attempt, want_taken = asyncio.run(reference(twin, items, actions, entries))
    assert got == want
    assert got_attempt.acks == want_attempt.acks
    assert got_taken == want_taken


@pytest.mark.parametrize("impl", IMPLS)
def test_byte_bound_runs_end_at_the_ack_point(impl: str) -> None:
    """A run ends by bytes before it ends by count: the ack goes out after the item
    that reaches half the byte window, not later."""
    m = bound(window_messages=100, window_bytes=100, heartbeat=0.0)
    items = [b"x" * 10] * 9  # half the byte window (50) is reached by item 5
    payload = pack_items(items)
    assert m.on_reply(0.0, packed(1, 9), payload, CTL) is Reply.DELIVER
    offsets, m.pack_offsets = m.pack_offsets, None
    assert offsets is not None
    _, attempt, taken = asyncio.run(fast(m, payload, offsets, ["true"] * 9, 1, impl))
    assert taken == 9
    assert [(calls, seq, nbytes) for calls, seq, nbytes, _ in attempt.acks][:1] == [(5, 5, 50)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("count", [1, 2, 3])
def test_count_bound_runs_end_at_the_ack_point(impl: str, count: int) -> None:
    m = bound(window_messages=4, window_bytes=1 << 20, heartbeat=0.0)
    items = [b"y"] * 4
    payload = pack_items(items)
    assert m.on_reply(0.0, packed(1, 4), payload, CTL) is Reply.DELIVER
    offsets, m.pack_offsets = m.pack_offsets, None
    assert offsets is not None
    _, attempt, _ = asyncio.run(fast(m, payload, offsets, ["true"] * 4, count, impl))
    assert [(seq, nbytes) for _, seq, nbytes, _ in attempt.acks][:1] == [(2, 2)]  # half of 4
