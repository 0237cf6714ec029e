"""A durable recording's stream and consumer: checked, created or updated, through
nats-py's public JetStream API; every refusal becomes a :class:`JetStreamError` that
says what to do.

The stream is the one named (it must exist and cover the subjects), or, when none is
named, the stream named after the durable consumer, created if missing: file storage,
covering the subjects, keeping a message until every consumer has acknowledged it
(interest retention), within ``max_age`` and ``max_bytes`` when given. The consumer is a
durable pull consumer with explicit acknowledgements, filtered on the subjects, that
redelivers without limit: an existing one must agree on those; its ``ack_wait`` and
``max_ack_pending`` are set to what the recording asks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from .._errors import ConfigError, JetStreamError
from .._subjects import subject_covers, validate_subscribe_subject

__all__ = ["DELETED", "Bound", "DurableOptions", "bind", "consumer_state", "stream_first"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_OVERLAP = 10065  # JetStream's error code: subjects overlap with an existing stream
_API_TIMEOUT = 5.0  # seconds for one JetStream API request
DELETED = (
    "was deleted while recording (or its stream): start the recording again, which "
    "creates the consumer anew after what the files hold"
)


@dataclass(frozen=True, slots=True)
class DurableOptions:
    """A durable recording's settings, checked (see ``Subscriber.record_durable``)."""

    subjects: tuple[str, ...]
    durable: str
    stream: str | None
    max_age: float | None
    max_bytes: int | None
    ack_wait: float
    max_ack_pending: int

    @classmethod
    def check(
        cls,
        subjects: str | list[str] | tuple[str, ...],
        *,
        durable: str,
        stream: str | None,
        max_age: float | None,
        max_bytes: int | None,
        ack_wait: float,
        max_ack_pending: int,
    ) -> DurableOptions:
        """Check the settings; no I/O.

        Raises:
            ConfigError: one is invalid (the message names it).
            InvalidSubjectError: a subject is invalid.
        """
        listed = (subjects,) if isinstance(subjects, str) else tuple(subjects)
        if not listed:
            raise ConfigError("a durable recording needs at least one subject")
        for subject in listed:
            validate_subscribe_subject(subject)
        if len(set(listed)) != len(listed):
            raise ConfigError(f"subjects {list(listed)} name one subject twice")
        if stream is None and ">" in listed:
            raise ConfigError(
                "subject '>' (every subject) cannot be recorded from a stream the recorder "
                "creates: JetStream refuses a stream of every subject; record narrower "
                "subjects, such as 'logs.>'"
            )
        for what, name in (("durable", durable), ("stream", stream)):
            if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
                raise ConfigError(
                    f"{what} name {name!r}: use letters, digits, '-' and '_' (up to 200)"
                )
        if stream is not None and (max_age is not None or max_bytes is not None):
            raise ConfigError(
                f"max_age and max_bytes are limits of a stream the recorder creates; "
                f"stream {stream!r} is not one: change its limits where it is managed"
            )
        if max_age is not None and not (0 < max_age < math.inf):
            raise ConfigError(f"max_age must be a positive number of seconds, got {max_age!r}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ConfigError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        if not (isinstance(ack_wait, int | float) and 0 < ack_wait < math.inf):
            raise ConfigError(f"ack_wait must be a positive number of seconds, got {ack_wait!r}")
        if isinstance(max_ack_pending, bool) or not (
            isinstance(max_ack_pending, int) and max_ack_pending >= 1
        ):
            raise ConfigError(f"max_ack_pending must be >= 1, got {max_ack_pending!r}")
        return cls(listed, durable, stream, max_age, max_bytes, float(ack_wait), max_ack_pending)

    @property
    def stream_name(self) -> str:
        """The stream recorded from: the one named, else the durable consumer's name."""
        return self.stream if self.stream is not None else self.durable


@dataclass(frozen=True, slots=True)
class Bound:
    """The stream and consumer a recording pulls from, as they were when it started.

    Attributes:
        stream: the stream's name.
        created: when the stream was created (ISO 8601): a stream deleted and created
            again under the same name starts its sequences afresh.
        consumer: the durable consumer's name.
        delivered: the consumer sequence of its last delivery.
        delivered_stream: the stream sequence of its last delivery.
        ack_pending: deliveries not acknowledged yet.
        pending: messages of its subjects not delivered yet.
        acked: the stream sequence every message up to which is acknowledged (or gone).
    """

    stream: str
    created: str
    consumer: str
    delivered: int
    delivered_stream: int
    ack_pending: int
    pending: int
    acked: int = 0


async def bind(
    nc: Client,
    options: DurableOptions,
    *,
    written: int,
    created: str | None = None,
    checkpoint: str = "",
) -> Bound:
    """Make sure the stream and the consumer exist as ``options`` asks, and look at
    where the consumer is. A consumer created here starts after stream sequence
    ``written`` (what the files hold already).

    ``created`` is when the stream the files came from was created (None: the files
    hold none of any stream's messages yet). When that stream is gone, or another one
    of its name took its place, nothing is created: a consumer made then would start
    after ``written``, a sequence of the old stream, and miss the new one's first
    messages. ``checkpoint`` names the files' checkpoint in that error.

    Raises:
        ConfigError: the files' stream was deleted (and perhaps created again).
        JetStreamError: no JetStream, a stream that does not cover the subjects or
            cannot be created, a consumer with a conflicting configuration.
    """
    js = nc.jetstream(timeout=_API_TIMEOUT)
    try:
        await js.account_info()
        stream = await _stream(js, options, created, checkpoint)
        consumer = await _consumer(js, options, written)
    except ServiceUnavailableError:
        raise JetStreamError(
            "the server has no JetStream: run nats-server with -js (natstream server --jetstream)"
        ) from None
    except nats.errors.TimeoutError:
        raise JetStreamError("JetStream did not answer within 5 seconds") from None
    except APIError as exc:
        raise JetStreamError(f"JetStream refused: {exc.description or exc}") from exc
    delivered = consumer.delivered
    return Bound(
        stream=options.stream_name,
        created=_created(stream),
        consumer=options.durable,
        delivered=0 if delivered is None else delivered.consumer_seq,
        delivered_stream=0 if delivered is None else delivered.stream_seq,
        ack_pending=consumer.num_ack_pending or 0,
        pending=consumer.num_pending or 0,
        acked=0 if consumer.ack_floor is None else consumer.ack_floor.stream_seq,
    )


async def consumer_state(nc: Client, bound: Bound) -> ConsumerInfo:
    """The consumer's state now.

    Raises:
        JetStreamError: the consumer is gone.
        nats.errors.Error: JetStream did not answer (the caller looks again later).
    """
    js = nc.jetstream(timeout=_API_TIMEOUT)
    try:
        info: ConsumerInfo = await js.consumer_info(bound.stream, bound.consumer)
    except NotFoundError:
        raise JetStreamError(
            f"consumer {bound.consumer!r} of stream {bound.stream!r} {DELETED}"
        ) from None
    return info


async def stream_first(nc: Client, bound: Bound) -> int:
    """The stream's first sequence now: everything below it was removed from the
    stream (its limits remove the oldest first).

    Raises:
        JetStreamError: the stream is gone.
        nats.errors.Error: JetStream did not answer (the caller looks again later).
    """
    js = nc.jetstream(timeout=_API_TIMEOUT)
    try:
        info = await js.stream_info(bound.stream)
    except NotFoundError:
        raise JetStreamError(f"stream {bound.stream!r} was deleted while recording") from None
    return int(info.state.first_seq)


def _created(info: StreamInfo) -> str:
    return "" if info.created is None else info.created.isoformat()


def _recreated(name: str, checkpoint: str) -> ConfigError:
    return ConfigError(
        f"stream {name!r} was deleted since the files by checkpoint {checkpoint} were "
        "recorded from it (a stream created again starts its sequences over): record "
        "into another directory or name"
    )


async def _stream(
    js: JetStreamContext, options: DurableOptions, created: str | None, checkpoint: str
) -> StreamInfo:
    name = options.stream_name
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        if created is not None:
            raise _recreated(name, checkpoint) from None
        if options.stream is not None:
            raise JetStreamError(
                f"stream {name!r} does not exist: create it first, or record without "
                "naming a stream (the recorder then creates its own)"
            ) from None
        return await _create_stream(js, options)
    if created is not None and _created(info) != created:
        raise _recreated(name, checkpoint)
    config = info.config
    covering = config.subjects or []
    missing = [s for s in options.subjects if not any(subject_covers(c, s) for c in covering)]
    if missing:
        raise JetStreamError(
            f"stream {name!r} does not cover {', '.join(map(repr, missing))} "
            f"(its subjects: {', '.join(covering) or 'none'})"
        )
    changes: dict[str, float | int] = {}
    if options.max_age is not None and config.max_age != options.max_age:
        changes["max_age"] = options.max_age
    if options.max_bytes is not None and config.max_bytes != options.max_bytes:
        changes["max_bytes"] = options.max_bytes
    if changes:
        info = await js.update_stream(config.evolve(**changes))
    return info


async def _create_stream(js: JetStreamContext, options: DurableOptions) -> StreamInfo:
    config = StreamConfig(
        name=options.stream_name,
        subjects=list(options.subjects),
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.FILE,
        max_age=options.max_age,
        max_bytes=options.max_bytes,
    )
    try:
        return await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != _OVERLAP:
            raise
        owners = set()
        for subject in options.subjects:
            try:
                owners.add(await js.find_stream_name_by_subject(subject))
            except NotFoundError:
                continue
        named = ", ".join(sorted(owners)) or "another stream"
        raise JetStreamError(
            f"the subjects overlap those of stream {named}: record from it by naming it "
            "(--stream), with subjects it covers"
        ) from None


def _filters(config: ConsumerConfig) -> set[str]:
    if config.filter_subjects:
        return set(config.filter_subjects)
    return {config.filter_subject} if config.filter_subject else set()


async def _consumer(js: JetStreamContext, options: DurableOptions, written: int) -> ConsumerInfo:
    name, durable = options.stream_name, options.durable
    try:
        info: ConsumerInfo = await js.consumer_info(name, durable)
    except NotFoundError:
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=options.ack_wait,
            max_ack_pending=options.max_ack_pending,
            max_deliver=-1,
            filter_subjects=list(options.subjects),
        )
        if written:  # the files hold the stream up to there: start after it
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = written + 1
        return await js.add_consumer(name, config)
    config = info.config
    conflicts = []
    if config.deliver_subject:
        conflicts.append("push delivery (a pull consumer is needed)")
    if config.ack_policy != AckPolicy.EXPLICIT:
        conflicts.append(f"ack policy {getattr(config.ack_policy, 'value', None)!r}")
    if config.max_deliver not in (None, -1, 0):
        conflicts.append(f"max_deliver {config.max_deliver} (messages could be dropped)")
    if _filters(config) != set(options.subjects):
        conflicts.append(f"subjects {sorted(_filters(config)) or ['all of the stream']}")
    if conflicts:
        raise JetStreamError(
            f"consumer {durable!r} of stream {name!r} exists with {'; '.join(conflicts)}, "
            f"where this recording needs a pull consumer of {', '.join(options.subjects)} "
            "with explicit acks: choose another durable name, or delete that consumer"
        )
    if config.ack_wait != options.ack_wait or config.max_ack_pending != options.max_ack_pending:
        info = await js.add_consumer(
            name,
            config.evolve(ack_wait=options.ack_wait, max_ack_pending=options.max_ack_pending),
        )
    return info
