"""The two machines wired together in memory, h11-style: no sockets, no event loop.

A :class:`Sim` plays both drivers (what ``natstream._requester`` and
``natstream._responder`` do with the machines' answers) over two simulated one-way
channels whose faults a scenario chooses: loss, duplication, reordering. Hypothesis
draws the scenario and an interleaving of events: responders producing data of random
sizes, messages crossing the channels (or not), the consumer taking messages, timers
firing on time or late, cancel, connection lost, hostile traffic. After every event
the invariants are checked:

* in-order delivery with no duplicate and no gap, across retries too (resume);
* the requester never holds more than its window; the responder never has more than
  the window in flight by its own count (bytes: unless one message is alone);
* a machine's first terminal state is its last; nothing is accepted after it;
* a requester that ENDED has every item (loss is never silent); a gap fails it with a
  retryable error; a stall means ``stall_factor`` intervals of silence; a request
  timeout means ``request_timeout`` of silence while the consumer waited;
* a clean channel always completes the stream, whatever the timing and sizes so far;
* once the requester is closed, its responder stops: at once when it could be told,
  within its stall time otherwise.

The scripted tests at the end are the message sequences of ``docs/protocol.md``.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from natstream._errors import (
    ConnectionLostError,
    NoRespondersError,
    ProtocolViolationError,
    RequestTimeoutError,
    StalledError,
    StreamError,
    StreamTimeoutError,
)
from natstream._protocol import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Control,
    HeaderError,
    Reply,
    RequesterMachine,
    RequesterState,
    RequestOptions,
    ResponderMachine,
    ResponderState,
    ResponderTimer,
    Resume,
    cancel_headers,
    parse_request_headers,
)
from natstream._protocol._wire import (
    CTL_ACK,
    CTL_CANCEL,
    HDR_ACK,
    HDR_CONTROL,
    HDR_RETRYABLE,
    HDR_SEQ,
    HDR_SERVICE_ERROR,
    HDR_SERVICE_ERROR_CODE,
    HDR_STATUS,
    HDR_WINDOW,
    pack_items,
)

from .conftest import PROFILE, at_least

CI = settings.get_profile(PROFILE)
PAIR = settings(CI, max_examples=at_least(400))
MAX_STEPS = 20_000  # timer firings in one advance: more means a timer makes no progress
DRAIN_EVENTS = 5_000  # timer events one drain may take before giving up

# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Item:
    """One reply the handler produces; ``pos`` is its handler position."""

    payload: bytes
    pos: Any  # int for index handlers, (batch, item) for batch handlers


@dataclass
class Wire:
    """A message in a channel. ``origin`` is the test's bookkeeping, unseen by machines."""

    headers: dict[str, str] | None
    payload: bytes
    reply: str
    origin: tuple[Any, ...]


@dataclass(frozen=True)
class Faults:
    drop: bool = False
    duplicate: bool = False
    reorder: bool = False


class Channel:
    """One direction of the network: a list of messages in flight."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.q: list[Wire] = []

    def put(self, w: Wire) -> None:
        self.q.append(w)

    def take(self, i: int = 0, keep_copy: bool = False) -> Wire | None:
        if not self.q:
            return None
        j = i % len(self.q) if self.faults.reorder else 0
        if keep_copy and self.faults.duplicate:
            return self.q[j]
        return self.q.pop(j)

    def drop(self, i: int = 0) -> Wire | None:
        if self.q and self.faults.drop:
            return self.q.pop(i % len(self.q) if self.faults.reorder else 0)
        return None


@dataclass
class Scenario:
    items: list[Item]
    kind: str = "index"  # "index", "batch" or "generator": how the responder resumes
    window_messages: int = 4
    window_bytes: int = 1000
    heartbeat: float = 1.0
    stall_factor: float = 3.0
    responder_stall_factor: float = 3.0
    request_timeout: float | None = None
    deadline: float | None = None
    max_duration: float | None = None
    plain: bool = False  # the (first) responder speaks only the seed's in-band protocol
    second_responder: bool = False  # a second v1 responder answers too (no queue group)
    packing: bool = True  # batch items go packed (up to three a message) when credit allows
    service: bool = False  # service-routed control: Ns-Id on every message, no reply subject
    outcome: tuple[Any, ...] = ("end",)  # or ("error", after_n_items, code, retryable)
    r2q: Faults = field(default_factory=Faults)
    q2r: Faults = field(default_factory=Faults)


def items_of(n: int, size: int = 10) -> list[Item]:
    return [Item(bytes([i % 256]) * size, i) for i in range(n)]


TERMINAL_Q = {RequesterState.ENDED, RequesterState.FAILED, RequesterState.CANCELLED}
TERMINAL_R = {ResponderState.ENDED, ResponderState.FAILED, ResponderState.CANCELLED}


class Responder:
    """The responder's driver (``ResponderStream``) around one ResponderMachine."""

    def __init__(self, sim: Sim, rid: int, request: dict[str, str], plain: bool) -> None:
        self.sim = sim
        self.rid = rid
        sc = sim.sc
        opts = RequestOptions() if plain else parse_request_headers(request)
        stream_id = f"s{sim.attempt}r{rid}" if sc.service else None
        self.m = ResponderMachine(
            opts,
            sim.now,
            stall_factor=sc.responder_stall_factor,
            max_duration=sc.max_duration,
            stream_id=stream_id,
        )
        # Where its control messages arrive; service-routed, the requester builds it
        # from its request subject and the id, and replies carry no reply subject.
        self.ctl = ""
        if self.m.v1:
            self.ctl = f"svc.{stream_id}" if stream_id is not None else f"_CTL.{sim.attempt}.{rid}"
        self.reply_field = "" if stream_id is not None else self.ctl
        self.q2r = Channel(sc.q2r)
        self.next = 0 if plain else self._start(opts.resume)
        self.first_terminal: ResponderState | None = None
        self.terminal_at: float | None = None
        self.dead = False  # its process died: it sends nothing more, ever
        self.paused = False  # a slow handler: settle() does not make it produce
        self.blocked = 0  # times it had to wait for credit
        self._acked = (self.m.acked_seq, self.m.acked_bytes)
        if self.m.v1:
            # The accept (as in ``ResponderStream.start``): the first heartbeat, at once,
            # since the handler's first reply is not ready when the request arrives.
            self._send(b"", self.m.heartbeat_headers(sim.now), ("hb", rid))

    def _start(self, resume: Resume | None) -> int:
        """Where the handler restarts, as the subscriber's drivers compute it."""
        items = self.sim.sc.items
        if resume is None:
            return 0
        kind = self.sim.sc.kind
        if kind == "generator":  # natstream skips ``resume.seq`` items
            return min(resume.seq, len(items))
        b, _, o = resume.pos.partition(".")
        if kind == "index":  # the handler is called from ``index + 1``
            first = int(b) + 1
            return next((i for i, it in enumerate(items) if it.pos >= first), len(items))
        after = (int(b), int(o)) if o else (int(b), 1 << 60)  # batch: after ``b.o``
        return next((i for i, it in enumerate(items) if it.pos > after), len(items))

    def _send(
        self, payload: bytes, headers: dict[str, str] | None, origin: tuple[Any, ...]
    ) -> None:
        self.sim.r2q.put(Wire(headers, payload, self.reply_field, origin))
        self.sim.trace("r2q", self.rid, origin, headers)

    def produce(self) -> None:
        """The handler has its next item (or its end): send it if credit allows."""
        m, sc = self.m, self.sim.sc
        if m.terminal or self.dead:
            return
        outcome = sc.outcome
        stop = outcome[1] if outcome[0] == "error" else len(sc.items)
        if self.next < min(stop, len(sc.items)):
            item = sc.items[self.next]
            size = len(item.payload)
            if not m.has_credit(size):
                self.blocked += 1
                return
            if (
                sc.kind == "batch"
                and sc.packing
                and m.pack
                and self._send_pack(min(stop, len(sc.items)))
            ):
                return
            pos: str | None
            if sc.kind == "index":
                pos = None if item.pos == m.sent_seq else str(item.pos)
            elif sc.kind == "batch":
                pos = f"{item.pos[0]}.{item.pos[1]}"
            else:
                pos = None
            headers = m.data_headers(size, pos, self.sim.now)
            self._send(item.payload, headers, ("data", self.rid, self.next))
            self.next += 1
            if m.v1:
                in_flight = m.sent_seq - m.acked_seq
                assert in_flight <= m.limits.window_messages
                assert m.sent_bytes - m.acked_bytes <= m.limits.window_bytes or in_flight == 1
        elif outcome[0] == "end":
            self._send(STREAM_END, m.end_headers(self.sim.now), ("end", self.rid))
        else:
            _, _, code, retryable = outcome
            message = f"failed after {stop}"
            headers = m.error_headers(message, code, retryable, self.sim.now)
            self._send(STREAM_ERROR_PREFIX + message.encode(), headers, ("error", self.rid))

    def _send_pack(self, stop: int) -> bool:
        """``_send_items``: up to three items of the current batch in one packed
        message, as credit allows; False when fewer than two fit."""
        m, items = self.m, self.sim.sc.items
        credit_items, credit_bytes = m.credit()
        batch = items[self.next].pos[0]
        j, used = self.next, 0
        while (
            j < stop
            and j - self.next < min(credit_items, 3)
            and items[j].pos[0] == batch
            and used + len(items[j].payload) <= credit_bytes
        ):
            used += len(items[j].payload)
            j += 1
        count = j - self.next
        if count < 2:
            return False
        chunk = items[self.next : j]
        seq = m.send_pack(count, used, self.sim.now)
        headers = m.pack_headers(seq, count, "{}.{}".format(*chunk[0].pos))
        payload = pack_items([it.payload for it in chunk])
        self._send(payload, headers, ("pack", self.rid, self.next, count))
        self.next = j
        assert m.sent_seq - m.acked_seq <= m.limits.window_messages
        assert m.sent_bytes - m.acked_bytes <= m.limits.window_bytes
        return True

    def receive(self, w: Wire) -> None:
        if self.dead:
            return
        before = self.m.state
        verdict = self.m.on_control(w.headers, self.sim.now)
        if before in TERMINAL_R:
            assert verdict is Control.IGNORED
        if verdict is Control.CANCEL:
            assert self.m.state is ResponderState.CANCELLED

    def deadline(self) -> float | None:
        return None if self.dead else self.m.next_deadline()

    def fire(self) -> None:
        m = self.m
        action = m.on_timer(self.sim.now)
        if action is ResponderTimer.HEARTBEAT:
            self._send(b"", m.heartbeat_headers(self.sim.now), ("hb", self.rid))
        elif action is ResponderTimer.DEADLINE:
            headers = m.error_headers("stream deadline exceeded", 504, False, self.sim.now)
            message = STREAM_ERROR_PREFIX + b"stream deadline exceeded"
            self._send(message, headers, ("error", self.rid))
        elif action is ResponderTimer.REQUESTER_GONE:
            assert m.state is ResponderState.CANCELLED
        elif action is ResponderTimer.UNREACHED:
            headers = m.error_headers("no control message reached me", 502, False, self.sim.now)
            message = STREAM_ERROR_PREFIX + b"no control message reached me"
            self._send(message, headers, ("error", self.rid))

    def check(self) -> None:
        m = self.m
        acked = (m.acked_seq, m.acked_bytes)
        assert acked[0] >= self._acked[0]
        assert acked[1] >= self._acked[1]
        assert m.acked_seq <= m.sent_seq
        assert m.acked_bytes <= m.sent_bytes
        self._acked = acked
        if self.first_terminal is not None:
            assert m.state is self.first_terminal
        elif m.terminal:
            self.first_terminal, self.terminal_at = m.state, self.sim.now


class Sim:
    """Both drivers and the network, under a virtual clock."""

    def __init__(self, sc: Scenario, resume: Resume | None = None, attempt: int = 0) -> None:
        self.sc = sc
        self.attempt = attempt
        self.now = 0.0
        self.log: list[str] | None = None
        self.m = RequesterMachine(
            self.now,
            subject="svc",
            window_messages=sc.window_messages,
            window_bytes=sc.window_bytes,
            heartbeat=sc.heartbeat,
            stall_factor=sc.stall_factor,
            request_timeout=sc.request_timeout,
            deadline=sc.deadline,
            resume=resume,
        )
        self.base = resume.seq if resume else 0
        self.r2q = Channel(sc.r2q)
        self.request = self.m.request_headers(self.now)
        self.responders = [Responder(self, 0, self.request, sc.plain)]
        if sc.second_responder:
            self.responders.append(Responder(self, 1, self.request, False))
        self.buffer: deque[Wire] = deque()
        self.held: Wire | None = None  # taken by the consumer, not yet accepted
        self.taken: list[tuple[Any, ...]] = []  # origins the consumer accepted
        self.closed = False  # the attempt was closed: inbox unsubscribed, timer stopped
        self.connected = True
        self.first_terminal: RequesterState | None = None
        self.error: Any = None
        self.hostile_acks = False
        self.waiting_since: float | None = 0.0  # the caller awaits the first reply
        self.last_bound_rx = 0.0  # last message from the responder we are bound to
        self.prompt = False  # delivery is prompt from now on (draining)
        self.closed_at: float | None = None
        self.closed_promptly = False
        self.vanished = False
        # ``lazy``: arm the requester's timer as ``_Attempt`` does with its LazyTimer
        # (only moved earlier when the driver calls ``_arm``); else it fires exactly
        # at ``next_deadline()``, an ideal driver.
        self.lazy = False
        self.armed_at: float | None = None
        self.replies = 0  # data replies delivered into the buffer (``_Attempt.replies``)
        self.arm()  # ``_Attempt.start``

    def arm(self) -> None:
        """``_Attempt._arm``: LazyTimer.arm(next_deadline()), earlier only."""
        when = None if self.closed else self.m.next_deadline()
        if when is None:
            self.armed_at = None
        elif self.armed_at is None or when < self.armed_at:
            self.armed_at = when

    def trace(self, way: str, who: Any, origin: tuple[Any, ...], headers: Any) -> None:
        if self.log is not None:
            self.log.append(f"{self.now:6.2f} {way} {who} {origin[0]:5} {headers}")

    # -- requester driver ------------------------------------------------------

    def deliver_r2q(self, i: int = 0, keep_copy: bool = False) -> None:
        w = self.r2q.take(i, keep_copy)
        if w is None:
            return
        if self.closed or not self.connected:
            return  # nobody subscribes to the inbox any more
        before = self.m.state
        verdict = self.m.on_reply(self.now, w.headers, w.payload, w.reply)
        if before in TERMINAL_Q:
            assert verdict is Reply.DROP
        elif self.m.v1 and self.from_bound(w):
            self.last_bound_rx = self.now
        elif self.m.v1 is False and (w.headers is None or HDR_SEQ not in w.headers):
            self.last_bound_rx = self.now
        if verdict is Reply.DELIVER:
            offsets = self.m.pack_offsets
            if offsets is None:
                self.buffer.append(w)
                self.replies += 1
            else:  # ``_Attempt._unpack``: one message per item, no headers
                self.m.pack_offsets = None
                items = [w.payload[a:b] for a, b in itertools.pairwise(offsets)]
                _, rid, first, count = w.origin
                assert len(items) == count
                for k, data in enumerate(items):
                    self.buffer.append(Wire(None, data, w.reply, ("data", rid, first + k)))
                self.replies += count
        elif verdict is Reply.CANCEL_FOREIGN:
            target = self.m.foreign_target
            assert target
            assert target != self.m.control_subject
            assert not self.from_bound(w)  # never a message of our own stream
            self.send_control(target, cancel_headers())
        elif verdict is Reply.FAIL:
            assert self.m.state is RequesterState.FAILED
        # ``_Attempt._handle`` and its fast path: a DELIVER re-arms only when it is the
        # first data reply or no timer is armed; anything else re-arms.
        if verdict is not Reply.DELIVER or self.replies == 1 or self.armed_at is None:
            self.arm()

    def from_bound(self, w: Wire) -> bool:
        """Whether ``w`` comes from the responder the requester is bound to."""
        m = self.m
        if m.stream_id is not None:
            return w.headers is not None and w.headers.get("Ns-Id") == m.stream_id
        return (w.reply or None) == m.control_subject

    def send_control(self, subject: str | None, headers: dict[str, str]) -> None:
        assert not self.closed, "a closed attempt sends nothing"
        if subject is None or not self.connected:
            return
        for r in self.responders:
            if r.ctl == subject:
                r.q2r.put(Wire(headers, b"", "", ("ctl", headers.get(HDR_CONTROL))))
                self.trace("q2r", r.rid, ("ctl",), headers)

    def consume(self) -> None:
        """One step of ``Stream.__anext__``: accept the message held, take the next."""
        if self.closed:
            return
        m = self.m
        if self.held is not None:
            w, self.held = self.held, None
            self.taken.append(w.origin)
            ack = m.on_delivered(w.headers, len(w.payload))
            if ack is not None and m.control_subject is not None:
                m.mark_sent(self.now)
                self.send_control(m.control_subject, ack)
        if self.buffer:
            self.held = self.buffer.popleft()
            m.consumer_busy()
            self.waiting_since = None
        elif m.terminal:
            self.close()
        else:
            m.consumer_waiting(self.now)
            self.arm()
            if self.waiting_since is None:
                self.waiting_since = self.now

    def close(self) -> None:
        """``_Attempt.close``: tell the responder if needed, unsubscribe."""
        if self.closed:
            return
        cancel = self.m.cancel()
        if cancel is not None:
            self.send_control(self.m.control_subject, cancel)
        self.closed = True
        self.closed_at = self.now
        self.closed_promptly = self.prompt

    def vanish(self) -> None:
        """The requester's process dies: no cancel, nothing more from it."""
        self.vanished = True
        self.closed = True
        self.closed_at = self.now

    def lose_connection(self) -> None:
        self.m.on_connection_lost(ConnectionLostError("connection lost mid-stream"))
        self.connected = False
        self.r2q.q.clear()

    def fire_requester(self) -> None:
        action = self.m.on_timer(self.now)
        assert not (action.fail and action.control is not None)
        if action.fail:
            err, sc = self.m.error, self.sc
            assert self.m.state is RequesterState.FAILED
            assert err is not None
            if isinstance(err, StalledError):
                # Silence from the bound responder for stall_factor intervals.
                assert self.m.v1
                assert self.now >= self.last_bound_rx + sc.heartbeat * sc.stall_factor
            elif isinstance(err, RequestTimeoutError):
                # Only while the consumer waits, and only silence counts; never once a
                # v1 responder with heartbeats is bound (its stall time judges it).
                assert not (self.m.v1 and sc.heartbeat > 0 and self.m.control_subject)
                assert sc.request_timeout is not None
                assert self.waiting_since is not None
                assert self.now >= max(self.waiting_since, self.last_bound_rx) + sc.request_timeout
            elif isinstance(err, StreamTimeoutError):
                assert sc.deadline is not None
                assert self.now >= sc.deadline
        if action.control is not None:
            self.send_control(self.m.control_subject, action.control)

    # -- time ------------------------------------------------------------------

    def timers(self) -> list[tuple[float, int]]:
        out = []
        if not self.closed:
            d = self.armed_at if self.lazy else self.m.next_deadline()
            if d is not None:
                out.append((d, -1))
        for r in self.responders:
            d = r.deadline()
            if d is not None:
                out.append((d, r.rid))
        return out

    def _fire(self, who: int) -> None:
        if who == -1:
            self.armed_at = None
            self.fire_requester()
            self.arm()
            after = None if self.closed else self.m.next_deadline()
        else:
            self.responders[who].fire()
            after = self.responders[who].deadline()
        assert after is None or after > self.now, "a timer fired and made no progress"

    def advance(self, dt: float) -> None:
        """Let ``dt`` seconds pass, every timer firing at its time."""
        target = self.now + dt
        for _ in range(MAX_STEPS):
            due = [t for t in self.timers() if t[0] <= target]
            if not due:
                break
            when, who = min(due)
            self.now = max(self.now, when)
            self._fire(who)
            self.check()
        else:
            raise AssertionError("timers keep firing without time passing")
        self.now = target

    def advance_late(self, dt: float, order: int) -> None:
        """Let ``dt`` seconds pass with the event loop blocked, then fire what is due."""
        self.now += dt
        due = [who for when, who in self.timers() if when <= self.now]
        for k in range(len(due)):
            who = due[(k + order) % len(due)]
            if who == -1:
                d = self.armed_at if self.lazy else self.m.next_deadline()
            else:
                d = self.responders[who].deadline()
            if d is not None and d <= self.now and not (who == -1 and self.closed):
                self._fire(who)

    # -- invariants ------------------------------------------------------------

    def check(self) -> None:
        m = self.m
        # In order, no duplicate, no gap: item indices continue from the resume point,
        # all from one responder.
        seen = [*self.taken]
        if self.held is not None:
            seen.append(self.held.origin)
        seen.extend(w.origin for w in self.buffer)
        assert all(o[0] == "data" for o in seen)
        assert len({o[1] for o in seen}) <= 1, f"data from two responders: {seen}"
        indices = [o[2] for o in seen]
        assert indices == list(range(self.base, self.base + len(indices))), indices
        assert m.delivered_seq == self.base + len(self.taken)
        assert m.received_seq == self.base + len(seen)
        # Memory: bounded by the window (a single message may be larger).
        if m.v1:
            held = len(seen) - len(self.taken)
            held_bytes = sum(len(w.payload) for w in self.buffer) + (
                len(self.held.payload) if self.held is not None else 0
            )
            assert held <= m.window_messages
            assert held_bytes <= m.window_bytes or held <= 1
        # One terminal outcome.
        if self.first_terminal is not None:
            assert m.state is self.first_terminal
            assert m.error is self.error
        elif m.terminal:
            self.first_terminal, self.error = m.state, m.error
        if m.state is RequesterState.ENDED:
            # Loss is never silent: the end marker means every item arrived.
            assert len(seen) == len(self.sc.items) - self.base
        if isinstance(m.error, ProtocolViolationError):
            if "window" in str(m.error):
                assert self.hostile_acks, "window exceeded with honest acks"
            else:
                assert m.error.retryable
        for r in self.responders:
            r.check()

    def taken_indices(self) -> list[int]:
        return [int(o[2]) for o in self.taken]


# ---------------------------------------------------------------- running


def settle(sim: Sim, *, consume: bool = True) -> None:
    """With no time passing: let responders produce, deliver everything promptly, and
    (``consume``) let the consumer take everything."""
    progressed = True
    while progressed:
        progressed = False
        for r in sim.responders:
            before = (r.m.sent_seq, r.m.state)
            if not r.paused:
                r.produce()
            progressed |= (r.m.sent_seq, r.m.state) != before
        while sim.r2q.q:
            sim.deliver_r2q()
            progressed = True
        for r in sim.responders:
            while r.q2r.q:
                r.receive(r.q2r.q.pop(0))
                progressed = True
        if consume and not sim.closed and (sim.held is not None or sim.buffer or sim.m.terminal):
            sim.consume()
            progressed = True
        sim.check()


def drain(sim: Sim, *, limit: float = 60.0) -> None:
    """Run with prompt delivery, time jumping from timer to timer, until both sides are
    done, nothing is left to happen, or ``limit`` seconds pass."""
    sim.prompt = True
    end = sim.now + limit
    for _ in range(DRAIN_EVENTS):
        settle(sim)
        if sim.closed and all(r.m.terminal or r.dead for r in sim.responders):
            return
        if not sim.closed:
            sim.consume()  # the consumer waits for data
        timers = sim.timers()
        if not timers or sim.now >= end:
            return
        sim.advance(min(end, max(sim.now, min(t for t, _ in timers))) - sim.now)


def finish(sim: Sim) -> None:
    """End the attempt as a caller eventually does; check that the responders stop."""
    drain(sim)
    if not sim.closed:
        assert not sim.m.terminal
        sim.close()  # leaving ``async with``: nothing else would end it (heartbeats off)
        drain(sim)
    assert sim.first_terminal is not None or sim.vanished
    event(f"requester {sim.m.state.value} {type(sim.m.error).__name__}")
    if sim.m.duplicates:
        event("duplicates dropped")
    n = len(sim.sc.items) - sim.base
    event(f"taken {'none' if not sim.taken else 'all' if len(sim.taken) == n else 'some'}")
    for r in sim.responders:
        if not (r.m.terminal or r.dead or sim.sc.heartbeat == 0):
            raise AssertionError(f"responder {r.rid} still running after the requester closed")
    bound = [r for r in sim.responders if r.ctl and r.ctl == sim.m.control_subject]
    if bound and sim.closed_promptly and sim.connected and not bound[0].dead:
        # Told at once (end, error, or an explicit cancel): it stopped at once.
        assert bound[0].terminal_at is not None
        assert sim.closed_at is not None
        assert bound[0].terminal_at <= sim.closed_at, (bound[0].terminal_at, sim.closed_at)


# ---------------------------------------------------------------- strategies


@st.composite
def scenarios(draw: st.DrawFn, faults: bool = True) -> Scenario:
    n = draw(st.integers(0, 25))
    kind = draw(st.sampled_from(["index", "batch", "generator"]))
    plain = draw(st.integers(0, 3)) == 0
    sizes = draw(st.lists(st.integers(0, 120), min_size=n, max_size=n))
    specials = [b"", STREAM_END, STREAM_ERROR_PREFIX + b"data, not an error"]
    payloads = []
    for i, size in enumerate(sizes):
        special = draw(st.integers(0, 12))
        if not plain and special < len(specials):
            payloads.append(specials[special])  # v1 data may look like a marker
        else:
            payloads.append(bytes([i % 256]) * size)
    if kind == "index" and not plain:  # handlers may skip indices (return no data)
        gaps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
        positions: list[Any] = list(itertools.accumulate(gaps, initial=-1))[1:]
    elif kind == "batch":
        positions, b, j = [], 0, 0
        for _ in range(n):
            if draw(st.integers(0, 3)) == 0:
                b, j = b + draw(st.integers(1, 2)), 0
            positions.append((b, j))
            j += 1
    else:
        positions = list(range(n))
    outcome: tuple[Any, ...] = ("end",)
    if draw(st.integers(0, 3)) == 0:
        outcome = ("error", draw(st.integers(0, n)), draw(st.sampled_from([500, 503])),
                   draw(st.booleans()))  # fmt: skip
    likely = st.integers(0, 2).map(bool)
    fault = st.builds(Faults, likely, likely, st.booleans())
    return Scenario(
        items=[Item(p, pos) for p, pos in zip(payloads, positions, strict=True)],
        kind=kind,
        window_messages=draw(st.integers(1, 6)),
        window_bytes=draw(st.integers(1, 400)),
        heartbeat=draw(st.sampled_from([0.0, 0.05, 0.2, 1.0])),
        stall_factor=draw(st.sampled_from([1.5, 2.0, 3.0])),
        responder_stall_factor=draw(st.sampled_from([1.5, 2.0, 3.0])),
        request_timeout=draw(st.one_of(st.none(), st.sampled_from([0.5, 2.0]))),
        deadline=draw(st.one_of(st.none(), st.sampled_from([3.0, 20.0]))),
        max_duration=draw(st.one_of(st.none(), st.just(15.0))),
        plain=plain,
        second_responder=draw(st.integers(0, 3)) == 0,
        packing=draw(st.booleans()),
        service=draw(st.booleans()),
        outcome=outcome,
        # A plain responder's replies carry no sequence: nothing could detect loss,
        # duplication or reordering (which NATS does not cause on a healthy connection).
        r2q=draw(fault) if faults and not plain else Faults(),
        q2r=draw(fault) if faults else Faults(),
    )


ACTIONS = [
    "produce", "produce", "produce", "produce", "produce2",
    "r2q", "r2q", "r2q", "r2q", "r2q", "dup_r2q", "dup_r2q", "drop_r2q", "drop_r2q",
    "q2r", "q2r", "dup_q2r", "drop_q2r",
    "consume", "consume", "consume", "consume",
    "tick", "tick", "late",
    "cancel", "lost", "responder_cancel", "responder_dies", "requester_dies",
    "forge_control", "foreign_reply",
]  # fmt: skip
actions = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000)), min_size=20, max_size=150
)

forged_controls = st.one_of(
    st.fixed_dictionaries(
        {
            HDR_CONTROL: st.sampled_from([CTL_ACK, "hb", CTL_CANCEL, "x"]),
            HDR_ACK: st.one_of(
                st.tuples(st.integers(-1, 40), st.integers(-1, 5000)).map(
                    lambda t: f"{t[0]} {t[1]}"
                ),
                st.text(max_size=8),
            ),
        }
    ),
    st.dictionaries(st.sampled_from([HDR_CONTROL, HDR_ACK, HDR_SEQ]), st.text(max_size=8)),
)
foreign_replies = st.tuples(
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from([HDR_SEQ, HDR_CONTROL, "Ns-End", "Ns-Pos", HDR_STATUS]),
            st.one_of(st.integers(0, 30).map(str), st.text(max_size=6)),
        ),
    ),
    st.binary(max_size=20),
    st.sampled_from(["_CTL.forged", ""]),
)


def run_events(sim: Sim, script: list[tuple[str, int]], data: st.DataObject | None) -> None:
    for kind, arg in script:
        if kind == "produce":
            sim.responders[0].produce()
        elif kind == "produce2":
            sim.responders[-1].produce()
        elif kind == "r2q":
            sim.deliver_r2q(arg)
        elif kind == "dup_r2q":
            sim.deliver_r2q(arg, keep_copy=True)
        elif kind == "drop_r2q":
            sim.r2q.drop(arg)
        elif kind in ("q2r", "dup_q2r", "drop_q2r"):
            r = sim.responders[arg % len(sim.responders)]
            if kind == "drop_q2r":
                r.q2r.drop(arg // 2)
            else:
                w = r.q2r.take(arg // 2, keep_copy=kind == "dup_q2r")
                if w is not None:
                    r.receive(w)
        elif kind == "consume":
            sim.consume()
        elif kind == "tick":
            sim.advance(arg / 2000)  # up to 0.5 s
        elif kind == "late":
            sim.advance_late(arg / 1000, arg)  # up to 1 s
        elif kind == "cancel":
            if arg % 16 == 0:  # the caller leaves the stream early
                sim.close()
        elif kind == "lost":
            if arg % 32 == 0:
                sim.lose_connection()
        elif kind == "responder_cancel":
            if arg % 32 == 0:  # the subscriber closes
                sim.responders[0].m.cancel()
        elif kind == "responder_dies":
            if arg % 32 == 0:
                sim.responders[0].dead = True
        elif kind == "requester_dies":
            if arg % 32 == 0:
                sim.vanish()
        elif kind == "forge_control" and data is not None:
            # Someone who learnt the control subject: its acks may be plausible (and
            # then extend the window beyond what the requester granted: it notices).
            headers = data.draw(forged_controls)
            sim.hostile_acks = True
            sim.responders[arg % len(sim.responders)].receive(Wire(headers, b"", "", ("forged",)))
        elif kind == "foreign_reply" and data is not None and sim.m.v1:
            # Another client publishing to our inbox once we are bound: no effect at all.
            noise, payload, reply = data.draw(foreign_replies)
            m = sim.m
            snapshot = (m.state, m.received_seq, m.error, m.control_subject, m._last_rx)
            if not sim.closed and sim.connected:
                verdict = m.on_reply(sim.now + 0.001, noise, payload, reply)
                assert verdict in (Reply.DROP, Reply.CANCEL_FOREIGN)
            assert (m.state, m.received_seq, m.error, m.control_subject, m._last_rx) == snapshot
        sim.check()


# ---------------------------------------------------------------- properties


@pytest.mark.fuzz
@PAIR
@given(scenarios(), actions, st.data())
def test_fuzz_any_interleaving_keeps_the_invariants(
    sc: Scenario, script: list[tuple[str, int]], data: st.DataObject
) -> None:
    sim = Sim(sc)
    sim.lazy = data.draw(st.booleans(), label="lazy timer (as _Attempt)")
    run_events(sim, script, data)
    finish(sim)


QUIET = {"cancel", "lost", "responder_cancel", "responder_dies", "requester_dies",
         "forge_control", "late", "tick"}  # fmt: skip


@pytest.mark.fuzz
@PAIR
@given(scenarios(faults=False), actions, st.data())
def test_fuzz_clean_channel_always_completes(
    sc: Scenario, script: list[tuple[str, int]], data: st.DataObject
) -> None:
    """Lossless FIFO channels and nobody giving up: whatever the sizes, window and
    event order so far, prompt delivery from then on ends the stream the way the
    responder ended it (no stall, no deadlock, no window violation, nothing missing),
    heartbeats on or off."""
    sc.request_timeout = sc.deadline = sc.max_duration = None
    sim = Sim(sc)
    sim.lazy = data.draw(st.booleans(), label="lazy timer (as _Attempt)")
    run_events(sim, [a for a in script if a[0] not in QUIET], data)
    drain(sim)
    note(f"state={sim.m.state} error={sim.m.error!r}")
    m = sim.m
    if sc.outcome[0] == "end":
        assert m.state is RequesterState.ENDED, m.error
        assert sim.taken_indices() == list(range(len(sc.items)))
    else:
        assert m.state is RequesterState.FAILED
        assert isinstance(m.error, StreamError)
        assert m.error.code in (500, 503)
        assert sim.taken_indices() == list(range(sc.outcome[1]))
    assert sim.closed
    for r in sim.responders:
        # A second responder whose first reply comes after the requester closed is
        # never told; only missing heartbeats stop it, and with them off nothing does.
        assert r.m.terminal or (sc.heartbeat == 0 and r.ctl != sim.m.control_subject)


RETRY_SKIPS = {"foreign_reply", "requester_dies"}  # a dead caller does not retry


@pytest.mark.fuzz
@settings(CI, max_examples=at_least(250))  # each example is up to five attempts
@given(scenarios(), st.lists(actions, min_size=1, max_size=4), st.data())
def test_fuzz_retries_resume_without_gap_or_duplicate(
    sc: Scenario, scripts: list[list[tuple[str, int]]], data: st.DataObject
) -> None:
    """Attempts over faulty channels, each retry resuming from ``resume_point()`` of the
    one before: what the consumer accepts over all of them is the items, in order,
    each once; a last attempt over a clean channel completes them.

    With a plain responder, plain and v1 responders alternate (a rolling upgrade),
    except for batch handlers: a plain peer's messages carry no position, and the
    ``seq - 1`` the requester then assumes is an index, not a batch position.
    """
    sc.second_responder = False
    sc.request_timeout = sc.deadline = sc.max_duration = None
    taken: list[int] = []
    resume: Resume | None = None
    for attempt, script in enumerate([*scripts, []]):
        last = attempt == len(scripts)
        plain = sc.plain and (attempt % 2 == 0 or sc.kind == "batch")
        outcome = sc.outcome if attempt == 0 else ("end",)  # a transient failure
        if last:
            this = replace(sc, plain=plain, outcome=outcome, r2q=Faults(), q2r=Faults())
        else:
            this = replace(sc, plain=plain, outcome=outcome)
        sim = Sim(this, resume, attempt)
        sim.lazy = data.draw(st.booleans(), label="lazy timer (as _Attempt)")
        run_events(sim, [a for a in script if a[0] not in RETRY_SKIPS], data)
        if last:
            drain(sim)
            assert sim.m.state is RequesterState.ENDED, sim.m.error
        else:
            finish(sim)
        taken.extend(sim.taken_indices())
        assert taken == list(range(len(taken))), taken
        point = sim.m.resume_point()
        if point is not None:
            assert point.seq == len(taken)
            resume = point
        else:
            assert not taken
        if sim.m.state is RequesterState.ENDED:
            if len(taken) < len(sc.items):
                assert sim.buffer or sim.held  # ``check``: all arrived; the caller left
                return
            break
        if sim.m.error is not None and not sim.m.error.retryable:
            return  # a caller would not retry
    assert taken == list(range(len(sc.items)))


# ---------------------------------------------------------------- the documented cases


def run(sim: Sim, seconds: float, *, consume: bool = True, step: float = 0.05) -> None:
    """Prompt delivery for ``seconds``, the consumer taking messages if ``consume``."""
    end = sim.now + seconds
    step_once = settle if consume else settle_without_consumer
    while sim.now < end - 1e-9:
        step_once(sim)
        sim.advance(min(step, end - sim.now))
    step_once(sim)


def settle_without_consumer(sim: Sim) -> None:
    settle(sim, consume=False)


def deliver_controls(sim: Sim) -> None:
    for r in sim.responders:
        while r.q2r.q:
            r.receive(r.q2r.q.pop(0))


def test_normal_stream() -> None:
    sim = Sim(Scenario(items_of(20), window_messages=4, window_bytes=25))
    sim.log = []
    drain(sim)
    assert sim.m.state is RequesterState.ENDED
    assert sim.taken_indices() == list(range(20))
    assert sim.now == 0.0  # credit flows with acks: nobody waits for a heartbeat
    assert sim.responders[0].m.state is ResponderState.ENDED
    assert sum("q2r" in line for line in sim.log) > 0


def test_error_marker_after_data() -> None:
    sim = Sim(Scenario(items_of(10), outcome=("error", 3, 503, True)))
    drain(sim)
    assert sim.taken_indices() == [0, 1, 2]
    err = sim.m.error
    assert isinstance(err, StreamError)
    assert (err.code, err.retryable) == (503, True)
    assert sim.m.resume_point() == Resume(3, "2")


@pytest.mark.parametrize(("messages", "nbytes", "size"), [(4, 10_000, 10), (100, 100, 30)])
def test_flow_control_stall_and_ack(messages: int, nbytes: int, size: int) -> None:
    """A consumer that does not take messages holds the responder at the window; each
    ack (at half the window) lets it send that much more."""
    sim = Sim(Scenario(items_of(20, size), window_messages=messages, window_bytes=nbytes))
    r = sim.responders[0]
    run(sim, 10.0, consume=False)  # heartbeats keep both alive; no stall, no gone
    assert not sim.m.terminal
    assert not r.m.terminal
    assert r.blocked > 0
    in_window = min(messages, nbytes // size)
    assert len(sim.buffer) == r.m.sent_seq == in_window
    half = (in_window + 1) // 2
    for _ in range(half + 1):
        sim.consume()
    settle_without_consumer(sim)
    assert r.m.sent_seq > in_window
    drain(sim)
    assert sim.m.state is RequesterState.ENDED
    assert sim.taken_indices() == list(range(20))


def test_stall_detection_when_the_responder_dies() -> None:
    sim = Sim(Scenario(items_of(1000), heartbeat=1.0, stall_factor=3.0))
    r = sim.responders[0]
    r.paused = True
    run(sim, 2.5)  # only heartbeats: the handler is slow
    r.produce()
    run(sim, 0.3)
    last = sim.last_bound_rx
    assert last == pytest.approx(2.5)
    assert sim.taken_indices() == [0]
    r.dead = True
    run(sim, 10.0, step=0.01)
    assert isinstance(sim.m.error, StalledError)
    assert sim.m.error.retryable
    assert sim.closed_at == pytest.approx(last + 3.0, abs=0.011)


def test_a_slow_responder_is_kept_alive_by_heartbeats() -> None:
    """A generator far slower than the stall time: heartbeats fill the silence, and
    ``request_timeout`` (silence while the consumer waits) never fires."""
    sim = Sim(Scenario(items_of(3), heartbeat=0.2, stall_factor=3.0, request_timeout=0.5))
    r = sim.responders[0]
    r.paused = True
    for _ in range(3):
        run(sim, 5.0)  # 5 s without data, the consumer waiting
        r.produce()
    r.paused = False
    drain(sim)
    assert sim.m.state is RequesterState.ENDED, sim.m.error
    assert sim.taken_indices() == [0, 1, 2]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_slow_first_reply_with_a_request_timeout(lazy: bool) -> None:
    """A handler slower than the responder's stall time (3 s) to produce its first item,
    and a requester with ``request_timeout=10``: heartbeats must flow both ways from the
    responder's first heartbeat on. ``lazy`` arms timers the way ``_Attempt`` does."""
    sim = Sim(Scenario(items_of(3), heartbeat=1.0, request_timeout=10.0))
    sim.lazy = lazy
    r = sim.responders[0]
    r.paused = True
    sim.consume()  # the caller waits for the first reply
    for _ in range(2):
        run(sim, 4.0)  # heartbeats only
        r.produce()
    r.paused = False
    drain(sim)
    assert sim.m.state is RequesterState.ENDED, sim.m.error
    assert r.m.state is ResponderState.ENDED


@pytest.mark.parametrize("request_timeout", [1.0, 0.5])
def test_a_request_timeout_at_or_below_the_heartbeat_spares_a_slow_responder(
    request_timeout: float,
) -> None:
    """The first reply comes after 2.5 s, heartbeats every second. The accept binds the
    requester at once; from then on the responder's silence is judged by the stall
    rule (3 s), which its heartbeats keep satisfied, not by ``request_timeout``."""
    sim = Sim(Scenario(items_of(3), heartbeat=1.0, request_timeout=request_timeout))
    r = sim.responders[0]
    r.paused = True
    sim.consume()  # the caller waits for the first reply
    run(sim, 0.01)
    assert sim.m.state is RequesterState.STREAMING  # bound by the accept
    assert sim.m.control_subject == r.ctl
    run(sim, 2.5)
    r.produce()
    r.paused = False
    drain(sim)
    assert sim.m.state is RequesterState.ENDED, sim.m.error
    assert sim.taken_indices() == [0, 1, 2]


def test_the_stall_rule_still_ends_a_bound_responder_that_dies() -> None:
    """With ``request_timeout`` below the heartbeat a dead responder is noticed after
    its stall time, and the failure is a stall."""
    sim = Sim(Scenario(items_of(3), heartbeat=1.0, request_timeout=0.5))
    r = sim.responders[0]
    r.paused = True
    sim.consume()
    run(sim, 1.5)
    r.dead = True
    run(sim, 5.0, step=0.01)
    assert isinstance(sim.m.error, StalledError)


def test_request_timeout_counts_only_while_the_consumer_waits() -> None:
    """A plain responder sends no heartbeats: its silence is timed, but only while the
    consumer waits for it, not while the consumer is busy with a message."""
    sim = Sim(Scenario(items_of(3), plain=True, request_timeout=1.0))
    r = sim.responders[0]
    r.paused = True
    r.produce()
    settle_without_consumer(sim)
    sim.consume()  # takes item 0, and keeps it for 10 s
    sim.advance(10.0)
    assert not sim.m.terminal
    sim.consume()  # accepts item 0; nothing queued: waits from t=10
    sim.advance(0.99)
    assert not sim.m.terminal
    sim.advance(0.01)
    assert isinstance(sim.m.error, RequestTimeoutError)
    assert sim.m.error.retryable


def test_cancel_by_the_requester_stops_the_responder_at_once() -> None:
    sim = Sim(Scenario(items_of(1000)))
    sim.responders[0].paused = True
    run(sim, 0.1)  # the responder's accept (at once) told its control subject
    sim.close()
    settle_without_consumer(sim)
    r = sim.responders[0]
    assert sim.m.state is RequesterState.CANCELLED
    assert r.m.state is ResponderState.CANCELLED
    assert r.terminal_at == sim.closed_at


def test_requester_gone_is_noticed_within_the_stall_time() -> None:
    sim = Sim(Scenario(items_of(1000), heartbeat=0.5, responder_stall_factor=3.0))
    r = sim.responders[0]
    r.paused = True
    run(sim, 0.7, step=0.01)
    sim.vanish()
    last_control = r.m._last_rx
    assert last_control == pytest.approx(0.5, abs=0.011)  # the requester's heartbeat
    run(sim, 5.0, step=0.01)
    assert r.m.state is ResponderState.CANCELLED
    assert r.terminal_at == pytest.approx(last_control + 1.5)


def test_deadline_reaches_both_sides() -> None:
    """A slow endless responder: the responder, told the time left (``Ns-Dl``), ends
    the stream with a 504 at the deadline; the requester's own timer agrees."""
    sim = Sim(Scenario(items_of(1000), deadline=2.0))
    r = sim.responders[0]
    r.paused = True
    assert r.m.time_remaining(0.0) == pytest.approx(2.0)
    while not r.m.terminal:
        r.produce()  # one reply every 0.1 s
        settle_without_consumer(sim)
        sim.consume()
        sim.consume()
        sim.advance(0.1)
    assert r.m.state is ResponderState.FAILED
    assert r.terminal_at == pytest.approx(2.0)
    settle_without_consumer(sim)
    err = sim.m.error
    assert sim.m.state is RequesterState.FAILED
    assert isinstance(err, StreamTimeoutError | StreamError)
    assert not err.retryable
    assert 15 <= len(sim.taken) <= 21


@pytest.mark.parametrize("kind", ["index", "batch", "generator"])
def test_gap_then_resume(kind: str) -> None:
    """A data message lost (a reconnect): the requester fails at the next message,
    never delivers past the gap, tells the responder to stop; the retry resumes."""
    items = [Item(bytes([i]) * 5, (i // 3, i % 3) if kind == "batch" else 2 * i) for i in range(12)]
    sc = Scenario(items, kind=kind, r2q=Faults(drop=True), packing=False)
    sim = Sim(sc)
    r = sim.responders[0]
    r.paused = True
    settle(sim)
    for _ in range(4):
        r.produce()
        settle(sim)
    r.produce()
    lost = sim.r2q.drop()  # item 4
    assert lost is not None
    assert lost.origin[0] == "data"
    r.produce()
    settle(sim)
    assert sim.m.state is RequesterState.FAILED
    drain(sim)
    err = sim.m.error
    assert isinstance(err, ProtocolViolationError)
    assert err.retryable
    assert "gap" in str(err)
    first = sim.taken_indices()
    assert first == list(range(len(first)))
    assert lost.origin[2] == len(first)
    assert r.m.state is ResponderState.CANCELLED
    assert r.terminal_at == sim.closed_at
    point = sim.m.resume_point()
    assert point is not None
    assert point.seq == len(first)
    retry = Sim(replace(sc, r2q=Faults()), point, attempt=1)
    drain(retry)
    assert retry.m.state is RequesterState.ENDED
    assert first + retry.taken_indices() == list(range(12))


def test_duplicates_are_delivered_once() -> None:
    sim = Sim(Scenario(items_of(10), r2q=Faults(duplicate=True)))
    for _ in range(60):
        for r in sim.responders:
            r.produce()
        sim.deliver_r2q(keep_copy=True)  # every message arrives twice
        sim.deliver_r2q()
        deliver_controls(sim)
        sim.consume()
    drain(sim)
    assert sim.m.state is RequesterState.ENDED
    assert sim.taken_indices() == list(range(10))
    assert sim.m.duplicates > 0


def test_two_responders_without_a_queue_group() -> None:
    sim = Sim(Scenario(items_of(10), second_responder=True))
    first, second = sim.responders
    drain(sim)
    assert sim.m.state is RequesterState.ENDED
    assert {o[1] for o in sim.taken} == {0}
    assert sim.taken_indices() == list(range(10))
    assert first.m.state is ResponderState.ENDED
    assert second.m.state is ResponderState.CANCELLED


def test_plain_responder() -> None:
    """A responder that speaks only the in-band markers: no flow control, no
    heartbeats, no cancel; the requester still gets every item and the end."""
    sim = Sim(Scenario(items_of(50), plain=True, window_messages=2))
    r = sim.responders[0]
    assert not r.m.v1
    assert r.ctl == ""
    for _ in range(51):
        r.produce()  # nothing holds it back
    assert r.m.state is ResponderState.ENDED
    assert all(w.headers is None for w in sim.r2q.q)
    drain(sim)
    assert sim.m.state is RequesterState.ENDED
    assert sim.m.v1 is False
    assert sim.taken_indices() == list(range(50))


def test_plain_requester() -> None:
    """A requester that sends no natstream headers gets exactly the seed's stream."""
    r = ResponderMachine(parse_request_headers({"X-Trace": "1"}), 0.0)
    wire: list[tuple[dict[str, str] | None, bytes]] = []
    for item in items_of(5):
        assert r.has_credit(len(item.payload))
        wire.append((r.data_headers(len(item.payload), None, 0.0), item.payload))
    assert r.next_deadline() is None  # no heartbeats to send, none expected
    wire.append((r.end_headers(0.0), STREAM_END))
    assert all(h is None for h, _ in wire)
    assert [p for _, p in wire] == [it.payload for it in items_of(5)] + [STREAM_END]


def test_busy_503_and_bad_request_400() -> None:
    """The subscriber's rejections, as ``Subscriber._reject`` builds them (no reply
    subject, so no control subject): a retryable 503, a non-retryable 400."""
    m = RequesterMachine(0.0, subject="svc")
    busy = ResponderMachine(parse_request_headers(m.request_headers(0.0)), 0.0)
    headers = busy.error_headers("busy: too many streams", 503, True, 0.0)
    assert m.on_reply(0.0, headers, STREAM_ERROR_PREFIX + b"busy", "") is Reply.ERROR
    assert isinstance(m.error, StreamError)
    assert (m.error.code, m.error.retryable) == (503, True)
    assert m.cancel() is None

    m = RequesterMachine(0.0, subject="svc")
    bad = {**m.request_headers(0.0), HDR_WINDOW: "0 0"}
    with pytest.raises(HeaderError) as info:
        parse_request_headers(bad)
    reject = {
        HDR_SERVICE_ERROR: str(info.value),
        HDR_SERVICE_ERROR_CODE: "400",
        HDR_SEQ: "0",
        HDR_RETRYABLE: "0",
    }
    payload = STREAM_ERROR_PREFIX + str(info.value).encode()
    assert m.on_reply(0.0, reject, payload, "") is Reply.ERROR
    assert isinstance(m.error, StreamError)
    assert (m.error.code, m.error.retryable) == (400, False)


def test_no_responders() -> None:
    m = RequesterMachine(0.0, subject="svc")
    assert m.on_reply(0.0, {HDR_STATUS: "503"}, b"", "") is Reply.FAIL
    assert isinstance(m.error, NoRespondersError)
    assert m.error.retryable
