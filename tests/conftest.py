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
    """An open Subscriber; once it is closed, nothing it or its streams started runs."""
    async with Subscriber(Config([server.url]), close_grace=1.0) as sub:
        yield sub
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
    """No background task of ours outlives the object that started it, and every
    task the Subscriber and its streams start is named ``natstream-...``.

    ``streams=False`` leaves out the Subscriber's tasks (its streams and their
    sends, named ``natstream-stream-...``): when a pool closes first a stream it
    cancelled may still be stopping (the cancel is on its way); the Subscriber
    fixture checks them.
    """
    left = []
    for t in asyncio.all_tasks():
        if t.done():
            continue
        name = t.get_name()
        if name.startswith("natstream-stream-") or _runs_responder_code(t):
            if streams:
                left.append(_described(t))
        elif name.startswith("natstream-"):
            left.append(name)
    assert not left, f"tasks left running: {left}"


def assert_no_subscriber_tasks() -> None:
    """:func:`assert_no_natstream_tasks` for the Subscriber's tasks alone (a pool may
    still be open)."""
    left = [
        _described(t)
        for t in asyncio.all_tasks()
        if not t.done()
        and (t.get_name().startswith("natstream-stream-") or _runs_responder_code(t))
    ]
    assert not left, f"tasks left running: {left}"


def _described(task: asyncio.Task[object]) -> str:
    name = task.get_name()
    return name if name.startswith("natstream-") else f"{name} (unnamed: {task.get_coro()!r})"


_RESPONDER_MODULES = ("natstream._subscriber", "natstream._responder.")


def _runs_responder_code(task: asyncio.Task[object]) -> bool:
    """Whether ``task`` runs a coroutine of the Subscriber or the responder (so they
    started it: it should have been named)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return module == _RESPONDER_MODULES[0] or module.startswith(_RESPONDER_MODULES[1])
