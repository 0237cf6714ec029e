"""One stream across its attempts: leases, retries, resume, the whole-stream deadline."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from .._config import StreamOptions
from .._errors import ConnectionLostError, StreamFailure
from .._protocol import Outcome, Reply, RequesterMachine, RequesterState, Resume
from .._tracing import RequesterSpan
from ._attempt import Attempt
from ._lease import LeaseSource

__all__ = ["Session"]

log = logging.getLogger("natstream")


class Session:
    """The attempts of one stream, one at a time.

    A retryable failure closes the attempt, waits ``retry_delay`` and opens the next
    one (up to ``max_retries`` more), resuming after the last data reply delivered
    when ``options.resume`` is on. The deadline (``stream_timeout``) is set when the
    first attempt opens and covers all of them. With tracing on, the stream is one
    span from its first attempt to its end (see :mod:`natstream._tracing`).
    """

    def __init__(
        self,
        source: LeaseSource,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        options: StreamOptions,
        *,
        request_timeout: float | None,
        stream_timeout: float | None,
        max_retries: int,
        retry_delay: float,
    ) -> None:
        self.source = source
        self.subject = subject
        self.data = data
        self.headers = headers
        self.options = options
        self.request_timeout = request_timeout
        self.stream_timeout = stream_timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.loop = asyncio.get_running_loop()
        self.deadline: float | None = None
        self.attempt: Attempt | None = None
        self.attempts = 0  # opened so far: the first and each retry
        self.closed = False
        self._resume: Resume | None = None
        self._span: RequesterSpan | None = None
        self._failure: BaseException | None = None  # why the last open() failed

    def start_clock(self) -> float | None:
        """Set the whole-stream deadline if there is one and it is not set; return it."""
        if self.deadline is None and self.stream_timeout is not None:
            self.deadline = self.loop.time() + self.stream_timeout
        return self.deadline

    async def open(self) -> Attempt:
        """Open the next attempt on a fresh lease and send its request.

        Raises:
            PoolClosedError, ConnectionLostError: from the lease source.
            PayloadTooLargeError: the request does not fit the server's max_payload.
        """
        self.start_clock()
        opts = self.options
        self.attempts += 1
        resume = self._resume if opts.resume else None
        headers = self.headers
        tracing = self.source.tracing
        if tracing is not None:
            if self._span is None:
                self._span = tracing.requester(self.subject, len(self.data))
            headers = self._span.headers(headers, resume)
        try:
            lease = self.source.lease(
                opts.window_messages, opts.window_bytes, retry=self.attempts > 1
            )
        except BaseException as exc:
            self._failure = exc
            raise
        machine = RequesterMachine(
            self.loop.time(),
            subject=self.subject,
            window_messages=lease.window_messages,
            window_bytes=lease.window_bytes,
            heartbeat=opts.heartbeat,
            stall_factor=opts.stall_factor,
            request_timeout=self.request_timeout,
            deadline=self.deadline,
            resume=resume,
            plain_end_empty=opts.plain_end == "empty",
        )
        attempt = Attempt(lease, self.subject, machine, self.loop)
        self.attempt = attempt
        try:
            await attempt.start(self.data, headers)
        except BaseException as exc:
            self.attempt = None
            self._failure = exc
            await attempt.close()
            self._attempt_ended(attempt, exc)
            raise
        self._failure = None
        return attempt

    async def close(self) -> None:
        """End the stream; the responder is told to stop if it has not finished."""
        if self.closed:
            return
        self.closed = True
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            await attempt.close(ok=attempt.machine.state is RequesterState.ENDED)
        if self._span is not None:
            if attempt is not None:
                self._attempt_ended(attempt, None)
                self._end_span(attempt.outcome or Outcome.CANCELLED)
            elif self._failure is not None:
                self._end_span(Outcome.FAILED, self._failure)
            else:
                self._end_span(Outcome.CANCELLED)

    async def next(self) -> tuple[Reply, Msg]:
        """The next reply: (DELIVER, data), (END, marker) or (ERROR, marker).

        Failures without a marker are retried here or raised; raises
        ``StopAsyncIteration`` once the stream is closed or cancelled.
        """
        while True:
            attempt = self.attempt
            if attempt is None:
                if self.closed:
                    raise StopAsyncIteration
                try:
                    attempt = await self.open()
                except ConnectionLostError as exc:
                    await self.retry_or_raise(exc)  # no connection up: retryable
                    continue
            msg = await attempt.next_data()
            if msg is not None:
                return Reply.DELIVER, msg
            m = attempt.machine
            if m.state is RequesterState.ENDED:
                assert attempt.marker is not None
                return Reply.END, attempt.marker
            if m.state is RequesterState.CANCELLED:
                raise StopAsyncIteration
            if attempt.marker is not None:
                return Reply.ERROR, attempt.marker
            await self.retry_or_raise()

    async def retry_or_raise(self, failure: StreamFailure | None = None) -> None:
        """Retry after a failure when allowed; otherwise raise it.

        ``failure`` is the error when no attempt was made (no connection was up);
        otherwise the current attempt's error is used.
        """
        attempt = self.attempt
        if attempt is not None:
            error = attempt.machine.error
            assert error is not None
            self._resume = attempt.machine.resume_point() or self._resume
            self.attempt = None
            await attempt.close()
            self._attempt_ended(attempt, error)
        else:
            assert failure is not None
            error = failure
        delay = self.retry_delay
        if (
            not error.retryable
            or self.attempts > self.max_retries
            or (self.deadline is not None and self.loop.time() + delay >= self.deadline)
        ):
            self.closed = True
            self._end_span(Outcome.FAILED, error)
            raise error
        log.debug("retrying stream on %r after %s", self.subject, type(error).__name__)
        await asyncio.sleep(delay)

    # ------------------------------------------------------------ tracing (when on)

    def _attempt_ended(self, attempt: Attempt, error: BaseException | None) -> None:
        span = self._span
        if span is not None:
            lease = attempt.lease
            outcome = attempt.outcome or Outcome.FAILED
            span.attempt_ended(outcome, lease.replies, lease.bytes, error)

    def _end_span(self, outcome: Outcome, error: BaseException | None = None) -> None:
        span = self._span
        if span is not None:
            span.end(outcome, error)
