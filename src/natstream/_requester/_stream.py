"""``Stream``: one streamed request, iterated or fed to a handler."""

from __future__ import annotations

import asyncio
from types import TracebackType

from nats.aio.msg import Msg

from .._config import StreamOptions
from .._errors import ConfigError, StreamFailure, StreamTimeoutError
from .._protocol import Reply
from .._subjects import validate_publish_subject
from ._delivery import Handler, run_handler
from ._lease import LeaseSource
from ._session import Session

__all__ = ["Stream"]


class Stream:
    """One streamed request, with retries; created by :meth:`Pool.stream`.

    Use ``async with pool.stream(...) as s: async for msg in s: ...`` (iterating
    outside the block raises ``TypeError``: nothing would end the stream). Iteration
    yields data replies only and ends at the end marker; an error marker raises
    :class:`StreamError`, timeouts raise :class:`RequestTimeoutError` /
    :class:`StreamTimeoutError`. Leaving the block early (``break``, an exception, or
    cancellation) ends the stream and tells the responder to stop.

    Retryable failures are retried up to ``max_retries`` times, ``retry_delay``
    seconds apart; with resume on (the default) a retry continues after the last
    message delivered, so iteration never sees a duplicate or a gap.

    Args:
        source: lends a connection to each attempt (the pool).

    Raises:
        InvalidSubjectError: ``subject`` is not a valid subject to publish to.
        ConfigError: a timeout, ``max_retries`` or ``retry_delay`` is out of range.
        TypeError: ``data`` is not bytes-like.
    """

    def __init__(
        self,
        source: LeaseSource,
        subject: str,
        data: bytes,
        *,
        request_timeout: float | None = None,
        stream_timeout: float | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.5,
        headers: dict[str, str] | None = None,
        options: StreamOptions | None = None,
    ) -> None:
        validate_publish_subject(subject)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if retry_delay < 0:
            raise ConfigError(f"retry_delay must be >= 0 seconds, got {retry_delay}")
        for name, value in (
            ("request_timeout", request_timeout),
            ("stream_timeout", stream_timeout),
        ):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 seconds or None, got {value}")
        self.subject = subject
        self._session = Session(
            source,
            subject,
            bytes(data),
            headers,
            options or source.stream_options,
            request_timeout=request_timeout,
            stream_timeout=stream_timeout,
            max_retries=max_retries,
            retry_delay=retry_delay,
        )
        self._to_ack: Msg | None = None
        self._entered = False  # by ``async with``: leaving the block ends the stream

    @property
    def attempts(self) -> int:
        """Requests sent so far: the first and one per retry."""
        return self._session.attempts

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Stream:
        self._entered = True
        try:
            await self._session.open()
        except BaseException:
            await self._session.close()  # no __aexit__ follows: end the stream here
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the stream; the responder is told to stop if it has not finished."""
        await self._session.close()

    # ------------------------------------------------------------ iteration

    def __aiter__(self) -> Stream:
        if not self._entered:
            # Iterating alone, nothing would end the stream after a ``break``: the
            # responder would keep sending and heartbeats would flow until exit.
            raise TypeError(
                "iterate a stream inside its block: "
                "`async with pool.stream(...) as s: async for msg in s: ...`"
            )
        return self

    async def __anext__(self) -> Msg:
        session = self._session
        attempt = session.attempt
        if self._to_ack is not None:
            msg, self._to_ack = self._to_ack, None
            assert attempt is not None
            attempt.delivered(msg)
        if attempt is not None and attempt.buffer:
            # A reply that has arrived: taken at once (what session.next() would
            # return, without its two awaits: most replies of a fast stream).
            self._to_ack = msg = attempt.take()
            return msg
        while True:
            kind, msg = await session.next()
            if kind is Reply.DELIVER:
                self._to_ack = msg
                return msg
            if kind is Reply.ERROR:
                await session.retry_or_raise()
                continue
            raise StopAsyncIteration

    async def run_handler(self, handler: Handler, *, markers: bool = True) -> None:
        """Feed every reply (end and error markers included, unless ``markers`` is
        False: then data replies only) to ``handler``.

        Returns at the end marker or when the handler returns False; raises the
        stream's error otherwise. A sync handler is called as in
        :meth:`Pool.stream_request` (from the read loop for plain data replies), and
        an awaitable it returns is awaited before the next reply. The whole run,
        handler calls included, is bounded by ``stream_timeout``: past it the handler
        is cancelled and :class:`StreamTimeoutError` is raised. Ends the stream in
        every case.
        """
        session = self._session
        try:
            async with asyncio.timeout_at(session.start_clock()) as cm:
                await run_handler(session, handler, markers=markers)
        except TimeoutError as exc:
            if isinstance(exc, StreamFailure) or not cm.expired():
                raise
            raise StreamTimeoutError(
                f"stream on {self.subject!r} passed its deadline ({session.stream_timeout:g} s)"
            ) from None
        finally:
            await self.aclose()
