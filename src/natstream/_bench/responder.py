"""The bench's responder process: ``python -m natstream._bench.responder URL N SIZE [--uvloop]``.

Serves, on one nats-server, each natstream subject next to its hand-written nats-py
baseline:

* ``bench.raw``: nats-py publishing ``N`` payloads of ``SIZE`` bytes to the request's
  reply inbox, then ``__STREAM_END__``; ``bench.ns``: a natstream index handler
  producing the same (sequence numbers, flow control, heartbeats on).
* ``bench.req``: one nats-py reply (for ``request()``); ``bench.first``: a natstream
  stream of one reply.
* ``bench.rawmany`` / ``bench.many``: like raw/ns, but the request's data says how
  many replies and how large: ``b"COUNT"`` or ``b"COUNT SIZE"``.
* ``bench.pack``: a natstream batch handler (packed for natstream requesters);
  ``b"COUNT SIZE PER"``: COUNT items of SIZE bytes, PER a batch.

Prints ``ready <event loop class>`` once everything is subscribed. Then each ``cpu``
line on stdin is answered with this process's CPU seconds; end of stdin stops it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import nats
from nats.aio.msg import Msg

from natstream import StreamRequest, Subscriber

from ._proc import loop_name, run_loop

_MANY_LIMIT = 4096  # concurrent streams per subject (the bench runs up to 1,000)


_Batches = tuple[int, int, list[bytes]]


def _batches(data: bytes, cache: dict[bytes, _Batches]) -> _Batches:
    """(count, per, one full batch) from ``b"COUNT SIZE PER"``, built once per distinct data."""
    got = cache.get(data)
    if got is None:
        count, size, per = (int(w) for w in data.split())
        got = cache[data] = (count, per, [b"x" * size] * per)
    return got


def _params(
    data: bytes, default_size: int, cache: dict[bytes, tuple[int, bytes]]
) -> tuple[int, bytes]:
    """(count, payload) from a request's ``b"COUNT [SIZE]"``, parsed once per distinct data."""
    got = cache.get(data)
    if got is None:
        words = data.split()
        size = int(words[1]) if len(words) > 1 else default_size
        got = cache[data] = (int(words[0]), b"x" * size)
    return got


async def serve(url: str, n: int, size: int) -> None:
    payload = b"x" * size
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def control() -> None:  # a thread: CPU time is per process, no need for the loop
        for line in sys.stdin:
            if line.strip() == "cpu":
                sys.stdout.write(f"{time.process_time()!r}\n")
                sys.stdout.flush()
        loop.call_soon_threadsafe(stop.set)

    nc = await nats.connect(url)

    async def raw(msg: Msg) -> None:
        for _ in range(n):
            await nc.publish(msg.reply, payload)
        await nc.publish(msg.reply, b"__STREAM_END__")

    raw_cache: dict[bytes, tuple[int, bytes]] = {}

    async def raw_many(msg: Msg) -> None:
        count, data = _params(msg.data, size, raw_cache)
        for _ in range(count):
            await nc.publish(msg.reply, data)
        await nc.publish(msg.reply, b"__STREAM_END__")

    async def reply_once(msg: Msg) -> None:
        await msg.respond(b"x")

    await nc.subscribe("bench.raw", cb=raw)
    await nc.subscribe("bench.rawmany", cb=raw_many)
    await nc.subscribe("bench.req", cb=reply_once)
    await nc.flush()

    sub = await Subscriber.connect([url])

    def handler(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        if index >= n:
            return None, False, None
        return payload, True, None

    def first(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        return (b"x", False, None) if index == 0 else (None, False, None)

    many_cache: dict[bytes, tuple[int, bytes]] = {}

    def many(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        # Called per reply: as little more work than ``handler``'s as can be.
        got = many_cache.get(request.data)
        count, data = got if got is not None else _params(request.data, size, many_cache)
        return (data, True, None) if index < count else (None, False, None)

    pack_cache: dict[bytes, _Batches] = {}

    def packed(request: StreamRequest, batch: int) -> tuple[list[bytes], bool, None]:
        count, per, items = _batches(request.data, pack_cache)
        left = count - batch * per
        if left > per:
            return items, True, None
        return items[: max(left, 0)], False, None

    await sub.stream_subscribe_handler("bench.ns", handler)
    await sub.stream_subscribe_handler("bench.first", first)
    await sub.stream_subscribe_handler("bench.many", many, max_concurrent_streams=_MANY_LIMIT)
    await sub.batch_stream_subscribe_handler("bench.pack", packed)
    await nc.flush()

    print(f"ready {loop_name()}", flush=True)
    threading.Thread(target=control, daemon=True, name="bench-control").start()
    await stop.wait()
    await sub.close()
    await nc.close()


def main(argv: list[str]) -> None:
    uvloop = "--uvloop" in argv
    url, n, size = [a for a in argv if a != "--uvloop"]
    run_loop(serve(url, int(n), int(size)), uvloop)


if __name__ == "__main__":
    main(sys.argv[1:])
