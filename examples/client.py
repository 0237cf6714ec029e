"""A requester for service.py: one report, retried (and resumed) if a responder fails."""

import asyncio
import os
import sys

from natstream import Config, Pool

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


async def main(rows: int) -> None:
    async with Pool(Config([URL])) as pool:
        async with pool.stream(
            "reports.rows",
            str(rows).encode(),
            request_timeout=5.0,  # the longest silence before or between replies
            stream_timeout=60.0,  # the whole report, retries included
            max_retries=3,  # retryable failures: another responder continues the stream
        ) as s:
            async for msg in s:
                print(msg.data.decode())


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
