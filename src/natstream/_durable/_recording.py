"""A durable recording: a JetStream consumer's messages into hour files, each once.

The loop, one round at a time: take what arrived (at most half of ``max_ack_pending``,
so the server keeps sending while this round is committed), judge each delivery
(:mod:`._sequencer`), format and ``write_at`` the ones to write into the hour the
stream stored them in, commit (the writer flushes, fsyncs with ``fsync``, and records
the last stream sequence written in its checkpoint), then acknowledge. Acknowledging
only after the commit means nothing is acknowledged that is not in the files; the
checkpoint means a redelivery of something that is in the files is skipped, after a
crash too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from nats.aio.msg import Msg

from .._errors import ConfigError, ConnectionLostError, JetStreamError, NatstreamError
from .._recording import Formatter, stamped
from .._transport import Link
from .._writers import HourlyFileWriter
from ._puller import Puller
from ._sequencer import Sequencer, Verdict
from ._setup import Bound, DurableOptions, bind, consumer_state, stream_first
from ._wire import ACK, NAK, parse_ack_subject

__all__ = ["DurableRecording", "DurableRecordingStats"]

log = logging.getLogger("natstream")

_TICK: Final = 0.5  # seconds between looks at the connection while nothing arrives
_DOUBT_LOOK: Final = 0.25  # seconds between looks at the consumer while in doubt
_ACK_CONFIRM: Final = 2.0  # seconds the last acknowledgement of a stop may take
_MAX_BATCH: Final = 4096  # messages asked for at a time, at most
_UNSERVED: Final = 5.0  # seconds of "cannot serve" answers before looking for the consumer

_T = TypeVar("_T")


async def _ask(what: str, query: Awaitable[_T]) -> _T | None:
    """``query``'s answer, or None when JetStream gave none now (logged at DEBUG: the
    caller asks again later). :class:`JetStreamError` (the consumer or the stream is
    gone) propagates."""
    try:
        return await query
    except JetStreamError:
        raise
    except Exception as exc:
        log.debug("%s not known: %s", what, exc)
        return None


@dataclass(frozen=True, slots=True)
class DurableRecordingStats:
    """What a durable recording has done so far (:meth:`DurableRecording.stats`).

    Attributes:
        stream: the stream recorded from.
        consumer: the durable consumer's name.
        messages: messages this recording wrote (committed, or in the round being
            committed).
        bytes: bytes of those lines.
        skipped: redeliveries of messages the files held already (not written again).
        held: messages waiting, unacknowledged, for deliveries that went missing (a
            crash of an earlier run, a lost connection) to come back.
        last_sequence: the stream sequence of the last message the files hold
            (committed); 0 when none.
        acked: messages acknowledged.
        last_ack: ``time.time()`` of the last acknowledgement, or None.
        behind: messages of the subjects not delivered yet, as the server last said.
        started: ``time.time()`` when the recording started.
        error: what stopped the recording, if it failed.
    """

    stream: str
    consumer: str
    messages: int
    bytes: int
    skipped: int
    held: int
    last_sequence: int
    acked: int
    last_ack: float | None
    behind: int
    started: float
    error: str | None


class DurableRecording:
    """Handle of a running durable recording (``Subscriber.record_durable``).

    :meth:`stop` ends it cleanly; a failure (the writer's, or JetStream's) ends it by
    itself, and :meth:`wait` and :meth:`stop` raise it. Either way nothing is
    acknowledged that the files do not hold, and what the recording held
    unacknowledged is handed back to JetStream (negatively acknowledged) to be
    redelivered at once to the next run.

    Attributes:
        error: the failure that ended the recording, or None.
        messages, bytes, skipped, acked, last_ack, behind, started: as in
            :class:`DurableRecordingStats` (:meth:`stats` is a consistent snapshot).
        committed: the stream sequence the files hold up to (``last_sequence``).
    """

    def __init__(
        self,
        link: Link,
        options: DurableOptions,
        writer: HourlyFileWriter,
        formatter: Formatter,
    ) -> None:
        self._link = link
        self._options = options
        self._writer = writer
        self._format = stamped(formatter)
        self._unit = max(1, options.max_ack_pending // 2)
        self._deque: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._finished = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) at each commit; set at the end
        self._unacked: dict[int, Msg] = {}  # by stream sequence: written or skipped
        self._last_acked: Msg | None = None
        self._seq: Sequencer[Msg] = Sequencer()
        self._bound: Bound | None = None
        self._puller: Puller | None = None
        self._task: asyncio.Task[None] | None = None
        self._token_head: dict[str, Any] = {}
        self._stopping = False
        self._closing = False
        self._failure: BaseException | None = None
        self._next_look = 0.0
        self._next_served_look = 0.0
        self.error: BaseException | None = None
        self._told = False  # the error was raised to the owner
        self.messages = 0
        self.bytes = 0
        self.skipped = 0
        self.acked = 0
        self.last_ack: float | None = None
        self.committed = 0
        self.behind = 0
        self.started = time.time()

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subjects recorded."""
        return self._options.subjects

    @property
    def stream(self) -> str:
        """The stream recorded from."""
        return self._options.stream_name

    @property
    def consumer(self) -> str:
        """The durable consumer's name."""
        return self._options.durable

    async def _begin(self) -> None:
        """Bind the stream and the consumer, check the files' checkpoint against them,
        and start pulling.

        Raises:
            ConfigError: the files were recorded from another stream or other subjects.
            JetStreamError: see :func:`._setup.bind`.
        """
        written, created = self._resume_point()
        bound = await bind(
            self._link.nc,
            self._options,
            written=written,
            created=created,
            checkpoint=str(self._writer.checkpoint),
        )
        self._bound = bound
        if written and bound.acked > written:
            # Acknowledged only after a commit here: another recording took them.
            log.warning(
                "durable %r has acknowledged stream sequences %d to %d, which the files "
                "by checkpoint %s do not hold (recorded into other files under the same "
                "durable name, or removed by the stream's limits): they are missing here",
                bound.consumer,
                written + 1,
                bound.acked,
                self._writer.checkpoint,
            )
        self._token_head = {
            "stream": bound.stream,
            "created": bound.created,
            "subjects": sorted(self._options.subjects),
        }
        self.committed = written
        self.behind = bound.pending
        in_doubt = bound.ack_pending > 0 and bound.delivered_stream > written
        self._seq = Sequencer(written, delivered=bound.delivered, in_doubt=in_doubt)
        if in_doubt:
            log.info(
                "durable %r: %d deliveries of an earlier run are unacknowledged: new "
                "messages wait until they are redelivered",
                bound.consumer,
                bound.ack_pending,
            )
        puller = Puller(
            self._link,
            bound.stream,
            bound.consumer,
            batch=min(self._options.max_ack_pending, _MAX_BATCH),
            deliver=self._on_delivery,
            fail=self._on_failure,
            name=f"natstream-durable-{bound.consumer}-pull",
        )
        await puller.start()
        self._puller = puller
        self._task = asyncio.create_task(self._run(), name=f"natstream-durable-{bound.consumer}")

    def _resume_point(self) -> tuple[int, str | None]:
        """The stream sequence the files hold up to, and the creation time of the
        stream they came from, from the writer's last commit (0 and None: none)."""
        token = self._writer.committed
        if token is None:
            return 0, None
        where = self._writer.checkpoint
        try:
            state = json.loads(token)
            stream, created = str(state["stream"]), str(state["created"])
            subjects, sequence = sorted(map(str, state["subjects"])), int(state["sequence"])
        except (ValueError, TypeError, KeyError):
            raise ConfigError(
                f"checkpoint {where} holds no durable recording's position: record into "
                "another directory or name"
            ) from None
        if stream != self.stream:
            raise ConfigError(
                f"the files by checkpoint {where} were recorded from stream {stream!r}, "
                f"not {self.stream!r}: record into another directory or name"
            )
        if subjects != sorted(self.subjects):
            raise ConfigError(
                f"the files by checkpoint {where} were recorded from subjects "
                f"{', '.join(subjects)}: record those, or into another directory or name"
            )
        return sequence, created

    def stats(self) -> DurableRecordingStats:
        """What the recording has done so far (cheap; no I/O)."""
        return DurableRecordingStats(
            stream=self.stream,
            consumer=self.consumer,
            messages=self.messages,
            bytes=self.bytes,
            skipped=self.skipped,
            held=self._seq.held,
            last_sequence=self.committed,
            acked=self.acked,
            last_ack=self.last_ack,
            behind=self.behind,
            started=self.started,
            error=None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        )

    @property
    def stopped(self) -> bool:
        """Whether the recording has ended (by :meth:`stop` or a failure)."""
        return self._finished.is_set()

    async def wait(self) -> None:
        """Wait until the recording ends.

        Raises:
            the failure that ended it (a :class:`WriterError`, :class:`JetStreamError`
            or :class:`ConnectionLostError`), if one did.
        """
        await self._finished.wait()
        if self.error is not None:
            self._told = True
            raise self.error

    async def wait_recorded(self, sequence: int) -> None:
        """Wait until the files hold the recording's messages up to stream sequence
        ``sequence`` (committed: in their files, and in the writer's checkpoint), e.g.
        the ``seq`` of a ``PubAck`` JetStream gave a publisher. Cancelling the call only
        stops the wait.

        Raises:
            the failure that ended the recording; :class:`NatstreamError` if it was
            stopped before getting there.
        """
        while self.committed < sequence:
            if self._finished.is_set():
                await self.wait()
                raise NatstreamError(
                    f"the recording stopped at sequence {self.committed}, before {sequence}"
                )
            await self._progress.wait()

    async def stop(self) -> None:
        """Stop pulling, write and commit what arrived, acknowledge it (the last
        acknowledgement confirmed by the server), hand back anything held, and return.
        Idempotent; cancelling the call leaves the stop going on.

        Raises:
            the failure that ended the recording, if one did.
        """
        if not self._stopping:
            self._stopping = True
            if self._puller is not None:
                await self._puller.close()  # every delivery sent to us is in the deque
            self._closing = True
            self._arrived.set()
        await self._finished.wait()
        if self.error is not None:
            self._told = True
            raise self.error

    # -- receiving ----------------------------------------------------------------

    def _on_delivery(self, msg: Msg) -> None:
        self._deque.append(msg)
        self._arrived.set()

    def _on_failure(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._arrived.set()

    # -- the loop -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DOUBT_LOOK if self._seq.in_doubt else _TICK):
                        await self._arrived.wait()
                self._arrived.clear()
                self._check_link()
                await self._check_served()
                await self._round()
            await self._round(last=True)
            await self._confirm()
            await self._hand_back()
        except Exception as exc:
            self.error = exc  # raised to the owner by wait() and stop()
            log.info("durable recording of %s stopped: %s", self.stream, exc)
            if self._puller is not None:
                await self._puller.close()
            await self._hand_back()
        finally:
            self._finished.set()
            self._progress.set()

    def _check_link(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._link.nc.is_closed:
            raise ConnectionLostError("the connection to the server closed for good")

    async def _check_served(self) -> None:
        """When every pull has been answered "cannot serve" for a while, look whether
        the consumer still exists (a server back with its JetStream storage lost has
        none): a failure if not, and nothing else (a new leader, say) if it does."""
        since = None if self._puller is None else self._puller.unserved_since
        now = time.monotonic()
        if since is None or now - since < _UNSERVED or now < self._next_served_look:
            return
        self._next_served_look = now + _UNSERVED
        assert self._bound is not None
        await _ask("consumer state", consumer_state(self._link.nc, self._bound))

    async def _round(self, *, last: bool = False) -> None:
        """Write, commit and acknowledge everything that arrived; in doubt, look
        whether the missing deliveries are back."""
        while self._deque:
            if self._judge(min(len(self._deque), self._unit)):
                await self._commit()
            await self._ack()
        if self._seq.in_doubt and not last:
            await self._look()

    def _judge(self, count: int) -> bool:
        """Judge ``count`` deliveries; write the ones to write. True if any was."""
        deque, judge, unacked = self._deque, self._seq.judge, self._unacked
        wrote = False
        for _ in range(count):
            msg = deque.popleft()
            try:
                stream_seq, consumer_seq, stored, pending = parse_ack_subject(msg.reply)
            except ValueError:
                log.warning("not a delivery of the consumer, ignored: %r", msg.reply)
                continue
            self.behind = pending
            verdict = judge(stream_seq, consumer_seq, msg)
            if verdict is Verdict.WRITE:
                self._write(msg, stored)
                unacked[stream_seq] = msg
                wrote = True
            elif verdict is Verdict.SKIP:
                self.skipped += 1
                unacked[stream_seq] = msg
        return wrote

    def _write(self, msg: Msg, stored: int) -> None:
        millis = stored // 1_000_000
        line = self._format(msg, millis)
        self._writer.write_at(millis / 1000, line)
        self.messages += 1
        self.bytes += len(line)

    async def _commit(self) -> None:
        written = self._seq.written
        token = json.dumps({**self._token_head, "sequence": written})
        await asyncio.to_thread(self._writer.commit, token)
        self.committed = written
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _ack(self) -> None:
        """Acknowledge what is written (committed) or skipped, in stream order."""
        unacked = self._unacked
        if not unacked:
            return
        msgs = [unacked[seq] for seq in sorted(unacked)]
        unacked.clear()
        await self._publish(msgs, ACK)
        self.acked += len(msgs)
        self.last_ack = time.time()
        self._last_acked = msgs[-1]

    async def _confirm(self) -> None:
        """Acknowledge the last acknowledged message again, as a request the server
        answers (a double ack): when it does, it has every acknowledgement sent before
        on this connection, and the next run finds none of them pending."""
        last, self._last_acked = self._last_acked, None
        if last is None or not self._link.nc.is_connected:
            return  # no answer can come now: the stop is not to wait for it
        try:
            await last.ack_sync(timeout=_ACK_CONFIRM)
        except Exception as exc:  # sent all the same; a lost one only means a redelivery
            log.info("the last acknowledgement was not confirmed: %s", exc)

    async def _publish(self, msgs: list[Msg], payload: bytes) -> None:
        link = self._link
        queue = link.queue_publish
        for msg in msgs:
            if queue(msg.reply, "", payload, None):
                continue
            try:
                await link.nc.publish(msg.reply, payload)
            except Exception as exc:  # the connection is gone: redelivered, then skipped
                log.debug("acknowledgement not sent: %s", exc)
        await link.kick()

    async def _look(self) -> None:
        """In doubt: ask the server how many deliveries it counts unacknowledged; when
        they are all in hand, write the held ones."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + _DOUBT_LOOK
        assert self._bound is not None
        info = await _ask("consumer state", consumer_state(self._link.nc, self._bound))
        if info is None:
            return
        self.behind = info.num_pending or 0
        if self._deque:
            return  # deliveries not judged yet, perhaps counted by the server: look again
        server_pending = info.num_ack_pending or 0
        in_hand = len(self._unacked) + self._seq.held
        if server_pending < in_hand:
            # The stream's limits (max_age, max_bytes) removed held messages, oldest
            # first: the server counts them no more, nor any older missing delivery.
            # Only the held ones the stream still has can match the server's count.
            first = await _ask("stream state", stream_first(self._link.nc, self._bound))
            if first is None:
                return
            in_hand = len(self._unacked) + self._seq.held_from(first)
        released = self._seq.release(server_pending, in_hand)
        if released is None:
            return
        log.info("durable %r: nothing is missing, %d held written", self.consumer, len(released))
        for stream_seq, msg in released:
            self._write(msg, parse_ack_subject(msg.reply)[2])
            self._unacked[stream_seq] = msg
        if released:
            await self._commit()
            await self._ack()

    async def _hand_back(self) -> None:
        """Negatively acknowledge what is held or not committed, in stream order, so
        that JetStream redelivers it at once (to the next run)."""
        seqs: dict[int, Msg] = dict(self._unacked)
        for msg in (*self._seq.drop_held(), *self._deque):
            with contextlib.suppress(ValueError):
                seqs.setdefault(parse_ack_subject(msg.reply)[0], msg)
        self._unacked.clear()
        self._deque.clear()
        if seqs and not self._link.nc.is_closed:
            await self._publish([seqs[seq] for seq in sorted(seqs)], NAK)
