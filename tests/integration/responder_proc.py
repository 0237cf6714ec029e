"""A responder in its own process, for tests that kill it abruptly (SIGKILL).

Usage: python responder_proc.py URL SUBJECT QUEUE COUNT DELAY
Serves index i as b"<i>" for i < COUNT, sleeping DELAY seconds between replies.
Prints "ready" once the subscription is live.
"""

from __future__ import annotations

import asyncio
import sys

from natstream import StreamRequest, Subscriber


async def main(url: str, subject: str, queue: str, count: int, delay: float) -> None:
    sub = await Subscriber.connect([url])

    async def handler(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        if index >= count:
            return None, False, None
        await asyncio.sleep(delay)
        return str(index).encode(), True, None

    await sub.stream_subscribe_handler(subject, handler, queue=queue)
    print("ready", flush=True)  # noqa: T201 - the parent waits for this line
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, subject, queue, count, delay = sys.argv[1:6]
    asyncio.run(main(url, subject, queue, int(count), float(delay)))
