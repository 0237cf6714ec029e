"""Shared fixtures: real nats-server processes on loopback, started and stopped here;
the process's local time zone for tests of local-time behaviour."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from natstream import Config, Pool, StreamOptions, Subscriber
from natstream._transport import fast_paths
from natstream.server import NatsServer

_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With the fast paths off (``NATSTREAM_NO_FAST_PATHS``), tests of the fast paths
    themselves are skipped; every other test runs on nats-py's public API."""
    if fast_paths():
        return
    skip = pytest.mark.skip(reason="tests the fast paths, which are off")
    for item in items:
        if "fast_paths" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def local_time_zone() -> Iterator[Callable[[str], None]]:
    """Sets the process's local time zone (``TZ``, e.g. ``"Europe/Berlin"``) for the
    test; the previous one is back afterwards."""
    saved = os.environ.get("TZ")

    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield use
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.fixture(scope="session")
def server() -> Iterator[NatsServer]:
    """One nats-server for the whole session; tests use distinct subjects."""
    with NatsServer() as srv:
        yield srv


@pytest.fixture
def fresh_server() -> Iterator[NatsServer]:
    """A nats-server of this test's own, for tests that stop or kill it."""
    with NatsServer() as srv:
        yield srv


@pytest.fixture
def subject() -> str:
    """A subject no other test uses."""
    return f"t.{next(_counter)}.svc"


# Short heartbeats so liveness tests finish quickly; still far above scheduling noise.
FAST = StreamOptions(heartbeat=0.2)


@pytest.fixture
async def subscriber(server: NatsServer) -> AsyncIterator[Subscriber]:
    sub = await Subscriber.connect([server.url], close_grace=1.0)
    yield sub
    await sub.close()
    assert_no_natstream_tasks()


@pytest.fixture
async def pool(server: NatsServer) -> AsyncIterator[Pool]:
    async with Pool(Config([server.url], idle_per_server=2, stream=FAST)) as p:
        yield p
    assert_no_natstream_tasks(streams=False)


@pytest.fixture(autouse=True)
async def no_task_left_behind(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After every async test, once its fixtures are torn down: no background task of
    natstream's is still running (every object that started one was closed)."""
    yield
    if inspect.iscoroutinefunction(request.function):
        assert_no_natstream_tasks()


def assert_no_natstream_tasks(*, streams: bool = True) -> None:
    """No background task of ours outlives the object that started it.

    ``streams=False`` leaves out a responder's stream tasks: they belong to the
    Subscriber, and when a pool closes first a stream it cancelled may still be
    stopping (the cancel is on its way); the Subscriber fixture checks them.
    """
    left = [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("natstream-")
        and not t.done()
        and (streams or not t.get_name().startswith("natstream-stream-"))
    ]
    assert not left, f"tasks left running: {left}"
