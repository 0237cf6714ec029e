"""``natstream demo``: three streams, run against a nats-server, and what a requester sees.

1. Basic stream: the responder sends ``响应_0`` .. ``响应_9``, then the end marker.
2. Error: the responder fails at index 3; the requester sees three replies, the
   error marker, and :class:`StreamError` is raised.
3. Retry: an unstable service drops its first two requests mid-stream and serves the
   third; ``stream_request_with_retry`` resumes after the last reply received, so
   every reply is seen exactly once.

Each example checks its own outcome; :func:`run_demo` returns whether all did what
they print. Output goes through the ``echo`` callable given, one line per call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from nats.aio.msg import Msg

from .._config import Config
from .._errors import StreamError
from .._pool import Pool
from .._protocol import STREAM_END, STREAM_ERROR_PREFIX
from .._responder import IndexResult, StreamRequest
from .._subscriber import Subscriber

__all__ = ["FlakyService", "Printer", "run_demo"]

Echo = Callable[[str], None]

REQUEST = "请求数据".encode()
REPLIES = 10  # example 1: ten data replies, then the end marker
FAIL_AT = 3  # example 2: index at which the responder returns an error
FLAKY_FAIL_AT = (3, 6)  # example 3: request n (from 0) fails at this index
MAX_RETRIES = 3
RETRY_DELAY = 0.2  # seconds

SUBJECT_BASIC = "demo.data.stream"
SUBJECT_FAILING = "demo.failing.service"
SUBJECT_UNSTABLE = "demo.unstable.service"


def reply(index: int) -> bytes:
    """The demo's reply payload for ``index``."""
    return f"响应_{index}".encode()


EXPECTED = [reply(i) for i in range(REPLIES)]


def ten_replies(request: StreamRequest, index: int) -> IndexResult:
    """The demo's responder: ten replies, then the end."""
    if index >= REPLIES:
        return None, False, None
    return reply(index), True, None


def failing_responder(request: StreamRequest, index: int) -> IndexResult:
    """Like :func:`ten_replies`, but returns an error at index :data:`FAIL_AT`."""
    if index == FAIL_AT:
        return None, False, f"sensor offline at index {index}"
    return ten_replies(request, index)


class FlakyService:
    """A responder whose first ``len(fail_at)`` requests fail mid-stream.

    Request ``n`` (counting from 0) returns an error at index ``fail_at[n]``; later
    requests are served in full. ``requests`` counts the requests seen.
    """

    def __init__(self, fail_at: Sequence[int]) -> None:
        self.fail_at = tuple(fail_at)
        self.requests = 0
        self._current: StreamRequest | None = None

    def __call__(self, request: StreamRequest, index: int) -> IndexResult:
        if request is not self._current:  # one StreamRequest per request served
            self._current = request
            self.requests += 1
        n = self.requests - 1
        if n < len(self.fail_at) and index == self.fail_at[n]:
            return None, False, f"unstable service dropped request {n + 1} at index {index}"
        return ten_replies(request, index)


class Printer:
    """The demo's requester handler: prints every reply, markers included.

    Data payloads are kept in ``data`` for the example's own check.
    """

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.data: list[bytes] = []

    def __call__(self, msg: Msg) -> bool:
        data = msg.data
        if data == STREAM_END:
            self.echo("  stream ended")
        elif data.startswith(STREAM_ERROR_PREFIX):
            text = data[len(STREAM_ERROR_PREFIX) :].decode(errors="replace")
            self.echo(f"  error marker: {text}")
        else:
            self.data.append(data)
            self.echo(f"  received: {data.decode(errors='replace')}")
        return True


def _heading(echo: Echo, title: str, detail: str) -> None:
    echo("")
    echo(f"== {title} ==")
    echo(f"   {detail}")


def _check(echo: Echo, ok: bool, what: str) -> bool:
    echo(f"  {'ok' if ok else 'UNEXPECTED'}: {what}")
    return ok


async def basic_stream(sub: Subscriber, pool: Pool, echo: Echo) -> bool:
    """Example 1: ten replies, then the end marker; ``stream_request`` returns."""
    _heading(
        echo,
        "1. Basic stream",
        f"{SUBJECT_BASIC}: {REPLIES} replies 响应_0..响应_{REPLIES - 1}, then the end marker",
    )
    handle = await sub.stream_subscribe_handler(SUBJECT_BASIC, ten_replies)
    printer = Printer(echo)
    try:
        await pool.stream_request(SUBJECT_BASIC, REQUEST, printer)
    finally:
        await handle.stop()
    return _check(echo, printer.data == EXPECTED, f"{len(printer.data)} replies in order")


async def error_stream(sub: Subscriber, pool: Pool, echo: Echo) -> bool:
    """Example 2: an error at index 3 ends the stream; :class:`StreamError` is raised."""
    _heading(
        echo,
        "2. Error",
        f"{SUBJECT_FAILING}: the responder returns an error at index {FAIL_AT}",
    )
    handle = await sub.stream_subscribe_handler(SUBJECT_FAILING, failing_responder)
    printer = Printer(echo)
    raised: StreamError | None = None
    try:
        await pool.stream_request(SUBJECT_FAILING, REQUEST, printer)
    except StreamError as exc:
        raised = exc
        echo(f"  raised StreamError: {exc}")
    finally:
        await handle.stop()
    return _check(
        echo,
        raised is not None and printer.data == EXPECTED[:FAIL_AT],
        f"{len(printer.data)} replies, then StreamError",
    )


async def retry_stream(sub: Subscriber, pool: Pool, echo: Echo) -> bool:
    """Example 3: retries against a flaky service resume without duplicates."""
    _heading(
        echo,
        "3. Retry against an unstable service",
        f"{SUBJECT_UNSTABLE}: requests 1 and 2 fail mid-stream, request 3 succeeds;\n"
        f"   stream_request_with_retry(max_retries={MAX_RETRIES}, retry_delay={RETRY_DELAY} s)",
    )
    service = FlakyService(FLAKY_FAIL_AT)
    handle = await sub.stream_subscribe_handler(SUBJECT_UNSTABLE, service)
    printer = Printer(echo)
    before = pool.stats()
    try:
        await pool.stream_request_with_retry(
            SUBJECT_UNSTABLE, REQUEST, MAX_RETRIES, RETRY_DELAY, printer
        )
    finally:
        await handle.stop()
    after = pool.stats()
    attempts = (after.streams_started + after.streams_retried) - (
        before.streams_started + before.streams_retried
    )
    echo(f"  attempts: {attempts} (the service saw {service.requests} requests)")
    return _check(
        echo,
        printer.data == EXPECTED and attempts == len(FLAKY_FAIL_AT) + 1,
        f"{len(printer.data)} replies, each exactly once, in order "
        "(each retry resumed after the last reply received)",
    )


async def run_demo(url: str, echo: Echo) -> bool:
    """Run the three examples against the nats-server at ``url``.

    A :class:`Subscriber` serves the examples' subjects and a :class:`Pool` sends the
    requests; both are closed before this returns (also on error or cancellation).

    Returns:
        True when every example behaved as its output says.
    """
    started = time.monotonic()
    echo(f"natstream demo: nats-server at {url}")
    async with contextlib.AsyncExitStack() as stack:
        sub = await Subscriber.connect([url], close_grace=1.0)
        stack.push_async_callback(sub.close)
        pool = await stack.enter_async_context(Pool(Config([url], idle_per_server=1)))
        results = [
            await basic_stream(sub, pool, echo),
            await error_stream(sub, pool, echo),
            await retry_stream(sub, pool, echo),
        ]
    echo("")
    echo(f"done in {time.monotonic() - started:.1f} s")
    return all(results)
