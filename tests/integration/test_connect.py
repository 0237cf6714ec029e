"""Connecting: the pool and the subscriber fail alike, at once and in the same words."""

from __future__ import annotations

import time

import pytest

from natstream import NoServersError, Pool, Subscriber
from natstream.server import free_port


@pytest.mark.parametrize("kind", ["pool", "subscriber"])
async def test_a_closed_port_fails_fast_with_the_same_words(kind: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    connect = Pool.connect if kind == "pool" else Subscriber.connect
    start = time.monotonic()
    with pytest.raises(NoServersError) as info:
        await connect([url])
    took = time.monotonic() - start
    assert took < 2.0, f"{kind} took {took:.2f} s to give up"  # connect_timeout is 2 s
    reason = "connection refused or unreachable"
    assert str(info.value) == f"could not connect to any of 1 server(s): {url}: {reason}"
