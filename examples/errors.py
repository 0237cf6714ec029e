"""Errors: what the requester sees for each way a responder fails, and retries."""

import asyncio
import logging
import os

from natstream import (
    Config,
    NoRespondersError,
    Pool,
    StreamError,
    StreamFailure,
    StreamRequest,
    Subscriber,
)

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
Result = tuple[bytes | None, bool, str | None]


# --8<-- [start:responders]
def returns_an_error(request: StreamRequest, index: int) -> Result:
    """An error value: the stream ends with it (code 500, retryable)."""
    if index == 2:
        return None, False, "sensor offline"
    return f"reading {index}".encode(), True, None


def refuses(request: StreamRequest, index: int) -> Result:
    """A StreamError chooses its code and says a retry would not help."""
    raise StreamError(f"no such sensor: {request.data.decode()!r}", code=404, retryable=False)


def crashes(request: StreamRequest, index: int) -> Result:
    """An exception: the requester gets 'internal error (error id ...)', the
    responder logs the traceback at ERROR with the same id."""
    raise ZeroDivisionError("division by zero")


# --8<-- [end:responders]


class Flaky:
    """Fails the first two requests at index 3; serves the third in full."""

    def __init__(self) -> None:
        self.requests = 0
        self.current: StreamRequest | None = None

    def __call__(self, request: StreamRequest, index: int) -> Result:
        if request is not self.current:
            self.current = request
            self.requests += 1
        if self.requests <= 2 and index == 3:
            return None, False, f"request {self.requests} dropped"
        if index >= 6:
            return None, False, None
        return f"item {index}".encode(), True, None


async def show(pool: Pool, subject: str) -> None:
    # --8<-- [start:catch]
    received = []
    try:
        async with pool.stream(subject, b"t9", stream_timeout=10) as s:
            async for msg in s:
                received.append(msg.data.decode())
    except StreamError as exc:  # the responder's error marker
        print(f"{subject}: {received} then code {exc.code}: {exc.message!r}")
        print(f"  retryable={exc.retryable}")
    except StreamFailure as exc:  # no responders, timeouts, connection lost, ...
        print(f"{subject}: {type(exc).__name__}: {exc}, retryable={exc.retryable}")
    # --8<-- [end:catch]


async def main() -> None:
    # --8<-- [start:logging]
    logging.basicConfig(level=logging.INFO)  # shows handler tracebacks, with their id
    # --8<-- [end:logging]
    flaky = Flaky()
    async with Subscriber(Config([URL])) as sub:
        await sub.stream_subscribe_handler("errors.value", returns_an_error)
        await sub.stream_subscribe_handler("errors.refuse", refuses)
        await sub.stream_subscribe_handler("errors.crash", crashes)
        await sub.stream_subscribe_handler("errors.flaky", flaky)
        async with Pool(Config([URL])) as pool:
            for subject in ("errors.value", "errors.refuse", "errors.crash", "errors.nobody"):
                await show(pool, subject)

            # --8<-- [start:retry]
            # Retryable failures are retried; each retry resumes after the last
            # reply received, so the loop sees every item once.
            async with pool.stream("errors.flaky", max_retries=3, retry_delay=0.1) as s:
                items = [msg.data.decode() async for msg in s]
            print(f"errors.flaky: {items} in {s.attempts} attempts")
            # --8<-- [end:retry]

            try:
                await pool.stream_request("errors.nobody", b"", lambda msg: True)
            except NoRespondersError as exc:
                print(f"stream_request: {exc}")


asyncio.run(main())
