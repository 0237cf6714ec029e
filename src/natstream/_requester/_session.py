"""One stream across its attempts: leases, retries, resume, the whole-stream deadline."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from .._config import StreamOptions
from .._errors import ConnectionLostError, StreamFailure
from .._protocol import Reply, RequesterMachine, RequesterState, Resume
from ._attempt import Attempt
from ._lease import LeaseSource

__all__ = ["Session"]

log = logging.getLogger("natstream")


class Session:
    """The attempts of one stream, one at a time.

    A retryable failure closes the attempt, waits ``retry_delay`` and opens the next
    one (up to ``max_retries`` more), resuming after the last data reply delivered
    when ``options.resume`` is on. The deadline (``stream_timeout``) is set when the
    first attempt opens and covers all of them.
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
        lease = self.source.lease(opts.window_messages, opts.window_bytes, retry=self.attempts > 1)
        machine = RequesterMachine(
            self.loop.time(),
            subject=self.subject,
            window_messages=lease.window_messages,
            window_bytes=lease.window_bytes,
            heartbeat=opts.heartbeat,
            stall_factor=opts.stall_factor,
            request_timeout=self.request_timeout,
            deadline=self.deadline,
            resume=self._resume if opts.resume else None,
            plain_end_empty=opts.plain_end == "empty",
        )
        attempt = Attempt(lease, self.subject, machine, self.loop)
        self.attempt = attempt
        try:
            await attempt.start(self.data, self.headers)
        except BaseException:
            self.attempt = None
            await attempt.close()
            raise
        return attempt

    async def close(self) -> None:
        """End the stream; the responder is told to stop if it has not finished."""
        if self.closed:
            return
        self.closed = True
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            await attempt.close(ok=attempt.machine.state is RequesterState.ENDED)

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
        else:
            assert failure is not None
            error = failure
        if not error.retryable or self.attempts > self.max_retries:
            self.closed = True
            raise error
        delay = self.retry_delay
        if self.deadline is not None and self.loop.time() + delay >= self.deadline:
            self.closed = True
            raise error
        log.debug("retrying stream on %r after %s", self.subject, type(error).__name__)
        await asyncio.sleep(delay)
