"""A responder service: serves until SIGTERM or Ctrl-C, then shuts down gracefully.

Run several: they share the requests (a queue group); stop one at a time to upgrade.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from natstream import Config, StreamRequest, Subscriber

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
log = logging.getLogger("reports")


async def report(request: StreamRequest) -> AsyncIterator[bytes]:
    """``rows`` rows of a report; the request's data is the number of rows."""
    rows = int(request.data or b"10")
    for i in range(rows):
        await asyncio.sleep(0.01)  # e.g. a database query
        yield f"row {i} of {rows}".encode()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    subscriber = Subscriber(
        Config([URL]),
        close_grace=10.0,  # on stop, streams in flight get 10 s to finish
        max_concurrent_streams=100,  # more at once get a retryable "busy" error
        max_stream_duration=300.0,  # no stream runs longer than 5 minutes
    )
    async with subscriber as sub:
        reports = await sub.stream_handler("reports.rows", report, queue="reports")
        log.info("serving reports.rows")
        # Until SIGTERM or Ctrl-C; then no new requests, and streams in flight
        # get close_grace to finish (the rest end with a retryable error).
        await sub.serve_forever()
    log.info("stopped: %s", reports.stats())


asyncio.run(main())
