"""natstream in one file: a responder and a requester on the server at $NATS_URL.

Run ``natstream server`` in another terminal first (it listens on port 4222).
"""

import asyncio
import os

from nats.aio.msg import Msg

from natstream import STREAM_END, Config, Pool, StreamRequest, Subscriber

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


def responder(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    """Called once per reply with index 0, 1, 2, ...: returns (data, more, error)."""
    if index >= 10:
        return None, False, None  # no more data: the end marker follows
    return f"reply_{index}".encode(), True, None


def on_reply(msg: Msg) -> bool:
    """Sees every reply, the end marker included (and an error marker, then raises)."""
    if msg.data == STREAM_END:
        print("end of stream")
    else:
        print(msg.data.decode())
    return True  # False stops the stream early


async def main() -> None:
    async with Subscriber(Config([URL])) as sub:
        await sub.stream_subscribe_handler("data.stream", responder)

        async with Pool(Config([URL], idle_per_server=2)) as pool:
            # Iterate: data replies only; the end marker ends the loop, errors raise.
            async with pool.stream("data.stream", b"request", stream_timeout=10) as s:
                async for msg in s:
                    print(msg.data.decode())

            # Or hand every reply to a handler.
            await pool.stream_request("data.stream", b"request", on_reply)


asyncio.run(main())
