"""The four ways to write a responder, side by side, and a requester for each."""

import asyncio
import os
from collections.abc import AsyncIterator

from natstream import Config, Pool, StreamRequest, Subscriber

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
ROWS = 1000  # replies per stream


# --8<-- [start:index]
def index_handler(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    """One call per reply: (data, more, error)."""
    if index >= ROWS:
        return None, False, None
    return f"row {index}".encode(), True, None


# --8<-- [end:index]


# --8<-- [start:batch]
async def batch_handler(request: StreamRequest, batch: int) -> tuple[list[bytes], bool, None]:
    """One call per batch of replies: (items, more, error); sync or async."""
    start = batch * 100
    items = [f"row {i}".encode() for i in range(start, min(start + 100, ROWS))]
    return items, start + 100 < ROWS, None


# --8<-- [end:batch]


# --8<-- [start:generator]
async def generator_handler(request: StreamRequest) -> AsyncIterator[bytes | list[bytes]]:
    """An async generator: each yield is one reply, a yielded list several."""
    for start in range(0, ROWS, 100):
        await asyncio.sleep(0)  # e.g. await the next page of a database query
        yield [f"row {i}".encode() for i in range(start, start + 100)]


# --8<-- [end:generator]


async def count(pool: Pool, subject: str) -> None:
    replies = 0
    async with pool.stream(subject, b"", stream_timeout=30) as s:
        async for msg in s:
            replies += 1
            last = msg.data
    print(f"{subject}: {replies} replies, the last {last.decode()!r}")


async def main() -> None:
    async with Subscriber(Config([URL])) as sub:
        # --8<-- [start:subscribe]
        await sub.stream_subscribe_handler("rows.index", index_handler)
        await sub.stream_subscribe_handler("rows.packed", index_handler, pack=True)
        await sub.batch_stream_subscribe_handler("rows.batch", batch_handler)
        await sub.stream_handler("rows.generator", generator_handler)
        # --8<-- [end:subscribe]
        async with Pool(Config([URL])) as pool:
            for subject in ("rows.index", "rows.packed", "rows.batch", "rows.generator"):
                await count(pool, subject)


asyncio.run(main())
