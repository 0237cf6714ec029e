"""A handler module for ``natstream serve``: ``natstream serve reports.rows --handler
reports:rows``, run from the directory that holds this file."""

import asyncio
from collections.abc import AsyncIterator

from natstream import StreamRequest


async def rows(request: StreamRequest) -> AsyncIterator[bytes]:
    """``n`` rows of a report; the request's data is ``n`` (10 when empty)."""
    n = int(request.data or b"10")
    for i in range(n):
        await asyncio.sleep(0.01)  # e.g. a database query
        yield f"row {i} of {n}".encode()
