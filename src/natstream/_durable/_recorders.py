"""``Subscriber.record_durable``: the subscriber's durable recordings (a mixin, so the
subscriber's module keeps to its own jobs)."""

from __future__ import annotations

import logging

from .._errors import ConfigError
from .._recording import Formatter, default_formatter
from .._transport import Link
from .._writers import HourlyFileWriter
from ._recording import DurableRecording
from ._setup import DurableOptions

__all__ = ["DurableRecorders"]

log = logging.getLogger("natstream")


class DurableRecorders:
    """The durable recordings of a :class:`~natstream.Subscriber`, on its connection;
    closing the subscriber stops them."""

    _durables: set[DurableRecording]

    def _check_open(self) -> Link:
        raise NotImplementedError  # the Subscriber's

    async def record_durable(
        self,
        subjects: str | list[str],
        writer: HourlyFileWriter,
        formatter: Formatter = default_formatter,
        *,
        durable: str,
        stream: str | None = None,
        max_age: float | None = None,
        max_bytes: int | None = None,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
    ) -> DurableRecording:
        """Record ``subjects`` from JetStream into ``writer``: every message once, in
        stream order, in the hour it was stored, across crashes and restarts.

        A durable pull consumer named ``durable`` delivers the messages of a stream:
        ``stream``, which must exist and cover the subjects, or by default a stream
        named ``durable``, created when missing (file storage, each message kept until
        it is recorded, within ``max_age`` seconds and ``max_bytes`` when given). Each
        message is formatted (:func:`default_formatter` and :func:`utc_formatter`
        stamp the time the stream stored it; another formatter can read
        ``msg.metadata.timestamp``) and goes to the file of the hour it was stored in
        (:meth:`HourlyFileWriter.write_at`). A message is acknowledged only after the
        writer committed it (:meth:`HourlyFileWriter.commit`: flushed, fsynced with
        ``fsync``, and its stream sequence saved in the writer's checkpoint), and one
        the checkpoint shows in the files already is skipped when it comes again.
        docs/guide.md ("Durable recording") states the guarantee.

        At most ``max_ack_pending`` messages are unacknowledged, which bounds the memory
        used however long the backlog; a message unacknowledged for ``ack_wait``
        seconds is delivered again. Returns once the consumer is pulled from;
        :meth:`DurableRecording.stop`, or closing this subscriber, ends it.

        Args:
            subjects: a subject or a list of them (wildcards allowed).
            writer: an :class:`HourlyFileWriter` made with ``checkpoint=...``; the
                recording writes into it, one per writer, and never closes it.
            formatter: ``formatter(msg) -> bytes``, one record per message.

        Raises:
            ConfigError: an argument is invalid, the writer has no checkpoint, or its
                files were recorded from another stream or other subjects.
            JetStreamError: the server has no JetStream, the stream does not cover the
                subjects, or a consumer named ``durable`` exists with a conflicting
                configuration.
            SubscriberClosedError: the subscriber is not open.
        """
        options = DurableOptions.check(
            subjects,
            durable=durable,
            stream=stream,
            max_age=max_age,
            max_bytes=max_bytes,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
        )
        if not isinstance(writer, HourlyFileWriter) or writer.checkpoint is None:
            raise ConfigError(
                "a durable recording writes through an HourlyFileWriter with a checkpoint: "
                "HourlyFileWriter(directory, name, checkpoint='.name.checkpoint')"
            )
        link = self._check_open()
        if any(other._writer is writer and not other.stopped for other in self._durables):
            raise ConfigError("this writer takes a durable recording already: one per writer")
        recording = DurableRecording(link, options, writer, formatter)
        await recording._begin()
        self._durables.add(recording)
        return recording

    async def _stop_durables(self) -> None:
        """Stop the durable recordings (for ``close``); a failure their owner was not
        told of (by :meth:`DurableRecording.wait` or ``stop``) is logged."""
        durables, self._durables = self._durables, set()
        for recording in durables:
            try:
                await recording.stop()
            except Exception as exc:
                if not recording._told:
                    log.error("durable recording of %r failed: %s", recording.stream, exc)
