"""request_timeout, stream_timeout and heartbeats: what each bounds, and what it raises."""

import asyncio
import os
from collections.abc import AsyncIterator

from natstream import (
    Config,
    Pool,
    RequestTimeoutError,
    StreamOptions,
    StreamRequest,
    StreamTimeoutError,
    Subscriber,
)

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


async def slow(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    """Alive but slow: three replies, 1.5 s apart."""
    if index >= 3:
        return None, False, None
    await asyncio.sleep(1.5)
    return f"slow reply {index}".encode(), True, None


async def endless(request: StreamRequest) -> AsyncIterator[bytes]:
    """Never ends by itself; ``request.time_remaining()`` says how long it may run."""
    tick = 0
    while True:
        yield f"tick {tick} ({request.time_remaining():.1f} s left)".encode()
        tick += 1
        await asyncio.sleep(0.2)


async def main() -> None:
    # close_grace: how long closing waits for streams in flight (a slow one whose
    # requester gave up before its first reply, below) before it cancels them.
    async with Subscriber(Config([URL]), close_grace=0.5) as sub:
        await sub.stream_subscribe_handler("timeouts.slow", slow)
        await sub.stream_handler("timeouts.endless", endless)
        # Heartbeats every 0.5 s both ways (the default is 1 s).
        async with Pool(Config([URL], stream=StreamOptions(heartbeat=0.5))) as pool:
            # --8<-- [start:request_timeout]
            # request_timeout bounds silence, not slowness: the responder's heartbeats
            # fill the 1.5 s gaps, so a 1 s request_timeout never fires here.
            async with pool.stream("timeouts.slow", request_timeout=1.0) as s:
                async for msg in s:
                    print(msg.data.decode())
            # --8<-- [end:request_timeout]

            # --8<-- [start:stream_timeout]
            # stream_timeout bounds the whole stream: an endless one is cut.
            try:
                async with pool.stream("timeouts.endless", stream_timeout=1.0) as s:
                    async for msg in s:
                        print(msg.data.decode())
            except StreamTimeoutError as exc:
                print(f"{exc!r}, retryable={exc.retryable}")
            # --8<-- [end:stream_timeout]

        # --8<-- [start:no_heartbeats]
        # Without heartbeats (heartbeat=0) a slow responder is only silence.
        no_heartbeats = StreamOptions(heartbeat=0)
        async with Pool(Config([URL], stream=no_heartbeats)) as pool:
            try:
                async with pool.stream("timeouts.slow", request_timeout=1.0) as s:
                    async for msg in s:
                        print(msg.data.decode())
            except RequestTimeoutError as exc:
                print(f"{exc!r}, retryable={exc.retryable}")
        # --8<-- [end:no_heartbeats]


asyncio.run(main())
