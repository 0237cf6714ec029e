"""The pool on a real three-node cluster: spreading, failover, recovery, lame duck.

Responders: one :class:`Subscriber` per node, connected to that node's URL only, all
serving one subject in one queue group. Requesters: one :class:`Pool` over all
nodes. Tests that kill, freeze or lame-duck a node get a cluster of their own.

Every wait is bounded. Where the pool offers no event to await (a connection
leaving or joining the rotation), :func:`wait_until` polls ``pool.stats()``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from nats.aio.msg import Msg

import natstream
from natstream import (
    STREAM_END,
    Config,
    ConnectionLostError,
    Pool,
    PoolClosedError,
    PoolStats,
    StreamOptions,
    StreamSubscription,
    Subscriber,
)
from natstream.server import NatsCluster

pytestmark = pytest.mark.cluster

QUEUE = "workers"
SUBJECT = "cluster.svc"
HEALTH = 0.2  # seconds between health checks in these tests
SLOTS = 2  # idle_per_server
FAST = StreamOptions(heartbeat=0.2)  # a dead responder is noticed after 0.6 s
# Heartbeats start with the first reply: a request lost with a dying node is noticed by
# request_timeout only. Replies come every few tens of ms, so 2 s never fires otherwise.
FIRST_REPLY = 2.0
LAME_DUCK = 'lame_duck_duration: "30s"\nlame_duck_grace_period: "1s"'  # 30 s is the minimum


def pool_config(urls: list[str], **overrides: float) -> Config:
    options: dict[str, float] = {
        "health_check_interval": HEALTH,
        "health_check_timeout": 0.5,
        "reconnect_backoff": 0.05,
        "reconnect_backoff_max": HEALTH,
        "connect_timeout": 0.5,
        "close_grace": 2.0,
    }
    options.update(overrides)
    return Config(urls, idle_per_server=SLOTS, stream=FAST, **options)  # type: ignore[arg-type]


def numbered(items: int, delay: float = 0.0) -> Callable[..., object]:
    """A responder sending ``<request>:<index>`` for index < items, ``delay`` s apart."""

    async def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= items:
            return None, False, None
        if delay:
            await asyncio.sleep(delay)
        return request.data + b":" + str(index).encode(), True, None

    return handler


def expected(name: bytes, items: int) -> list[bytes]:
    return [name + b":" + str(i).encode() for i in range(items)] + [STREAM_END]


class Collect:
    """A requester handler recording what it is given; ``first`` is set at the first reply."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.data: list[bytes] = []
        self._on_first = on_first

    def __call__(self, msg: Msg) -> bool:
        self.data.append(msg.data)
        if len(self.data) == 1 and self._on_first is not None:
            self._on_first()
        return True


async def request(pool: Pool, name: bytes, items: int) -> None:
    """One stream with retries, checked whole and in order (for clusters losing nodes)."""
    seen = Collect()
    await pool.stream_request_with_retry(SUBJECT, name, 5, 0.05, seen, request_timeout=FIRST_REPLY)
    assert seen.data == expected(name, items)


class Countdown:
    """An event set once ``count`` things have happened."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = asyncio.Event()

    def __call__(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


class Responders:
    """One Subscriber per node (that node's URL only), all in queue group QUEUE."""

    def __init__(self) -> None:
        self.subscribers: list[Subscriber | None] = []
        self.handles: list[StreamSubscription] = []

    @classmethod
    async def start(
        cls, urls: list[str], handler: Callable[..., object], subject: str = SUBJECT
    ) -> Responders:
        self = cls()
        for url in urls:
            sub = await Subscriber.connect([url], close_grace=0.5)
            self.subscribers.append(sub)
            self.handles.append(
                await sub.stream_subscribe_handler(subject, handler, queue=QUEUE)  # type: ignore[arg-type]
            )
        return self

    def served(self) -> list[int]:
        return [h.stats().streams_started for h in self.handles]

    async def die(self, index: int) -> None:
        """The responders of node ``index`` die with it: no reconnect to another node
        (nats-py would follow the cluster's advertised URLs otherwise)."""
        sub, self.subscribers[index] = self.subscribers[index], None
        if sub is not None:
            await sub.nc.close()
            await sub.close(grace=0)

    async def close(self) -> None:
        for sub in self.subscribers:
            if sub is not None:
                await sub.close(grace=0.5)


async def wait_until(
    pool: Pool, predicate: Callable[[PoolStats], bool], what: str, limit: float = 10.0
) -> float:
    """Poll ``pool.stats()`` until ``predicate`` holds; return the seconds it took.

    The pool has no event for "a connection joined or left the rotation"; polling
    every 5 ms, bounded by ``limit``, is precise enough to measure it.
    """
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while not predicate(pool.stats()):  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {limit} s: {what}; stats: {pool.stats()}") from None
    return time.monotonic() - started


def assert_consistent(stats: PoolStats) -> None:
    """Every attempt is in flight or counted once as completed, failed or cancelled."""
    attempts = stats.streams_started + stats.streams_retried
    ended = stats.streams_completed + stats.streams_failed + stats.streams_cancelled
    assert attempts == ended + stats.streams_in_flight, stats


def assert_no_pool_tasks() -> None:
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("natstream-pool")]
    assert not left, f"pool tasks left running: {left}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    """Shared by the tests that leave every node running."""
    with NatsCluster() as c:
        yield c


@pytest.fixture
def own_cluster() -> Iterator[NatsCluster]:
    """A cluster of this test's own, for tests that kill, freeze or lame-duck a node."""
    with NatsCluster() as c:
        yield c


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> str:
    return f"cluster.{request.node.name}"


@pytest.fixture
async def pool(cluster: NatsCluster) -> AsyncIterator[Pool]:
    async with Pool(pool_config(cluster.urls)) as p:
        yield p
    assert_no_pool_tasks()


# ------------------------------------------------------------------ healthy cluster


async def test_streams_are_spread_over_all_nodes(
    cluster: NatsCluster, pool: Pool, subject: str
) -> None:
    responders = await Responders.start(cluster.urls, numbered(5), subject)
    try:
        for n in range(30):  # one after another: every connection is idle each time
            seen = Collect()
            await pool.stream_request(subject, b"%d" % n, seen)
            assert seen.data == expected(b"%d" % n, 5)
        stats = pool.stats()
        assert [s.attempts for s in stats.servers] == [10, 10, 10]  # round-robin
        assert all(n > 0 for n in responders.served()), responders.served()

        collectors = [Collect() for _ in range(90)]
        await asyncio.gather(
            *(pool.stream_request(subject, b"c%d" % n, c) for n, c in enumerate(collectors))
        )
        for n, c in enumerate(collectors):
            assert c.data == expected(b"c%d" % n, 5)
        stats = pool.stats()
        assert [s.attempts for s in stats.servers] == [40, 40, 40]
        assert sum(responders.served()) == 120
        assert all(n >= 10 for n in responders.served()), responders.served()
        assert stats.streams_started == stats.streams_completed == 120
        assert stats.replies_received == 600
        assert_consistent(stats)
    finally:
        await responders.close()


async def test_health_checks_measure_rtt(pool: Pool) -> None:
    stats = pool.stats()
    assert [(s.slots, s.healthy, s.connections) for s in stats.servers] == [(SLOTS,) * 3] * 3
    await wait_until(
        pool, lambda st: all(s.rtt is not None for s in st.servers), "an RTT for every server"
    )
    for s in pool.stats().servers:
        assert s.rtt is not None
        assert 0 < s.rtt < 0.5
        assert s.health_checks_failed == s.connections_lost == 0


async def test_max_lifetime_retires_without_failing_streams(
    cluster: NatsCluster, subject: str
) -> None:
    responders = await Responders.start(cluster.urls, numbered(30, 0.05), subject)
    config = pool_config(cluster.urls, max_lifetime=0.3, health_check_interval=0.1)
    try:
        async with Pool(config) as pool:
            collectors = [Collect() for _ in range(6)]
            # 1.5 s streams outlive their connections' 0.3 s lifetime several times.
            await asyncio.gather(
                *(pool.stream_request(subject, b"%d" % n, c) for n, c in enumerate(collectors))
            )
            for n, c in enumerate(collectors):
                assert c.data == expected(b"%d" % n, 30)
            stats = pool.stats()
            assert stats.streams_retried == stats.streams_failed == 0
            assert stats.connections_retired >= 3 * SLOTS
            assert stats.connections_lost == stats.reconnects == 0
            assert stats.healthy == 3 * SLOTS  # make-before-break: no dip
            assert_consistent(stats)
        assert_no_pool_tasks()
    finally:
        await responders.close()


async def test_max_idle_replaces_idle_connections(cluster: NatsCluster, subject: str) -> None:
    responders = await Responders.start(cluster.urls, numbered(3), subject)
    config = pool_config(cluster.urls, max_idle=0.2, health_check_interval=0.1)
    try:
        async with Pool(config) as pool:
            await wait_until(
                pool, lambda st: st.connections_retired >= 3 * SLOTS, "idle connections replaced"
            )
            seen = Collect()
            await pool.stream_request(subject, b"x", seen)
            assert seen.data == expected(b"x", 3)
            stats = pool.stats()
            assert stats.connections_lost == stats.reconnects == 0
        assert_no_pool_tasks()
    finally:
        await responders.close()


async def test_close_lets_streams_in_flight_finish(cluster: NatsCluster, subject: str) -> None:
    responders = await Responders.start(cluster.urls, numbered(20, 0.03), subject)
    try:
        pool = await Pool.connect(pool_config(cluster.urls))
        started = Countdown(10)
        collectors = [Collect(started) for _ in range(10)]
        streams = [
            asyncio.create_task(pool.stream_request(subject, b"%d" % n, c))
            for n, c in enumerate(collectors)
        ]
        await asyncio.wait_for(started.done.wait(), 5)
        closing = asyncio.create_task(pool.close(grace=5))
        await asyncio.sleep(0)
        with pytest.raises(PoolClosedError):
            await pool.stream_request(subject, b"late", Collect())
        await asyncio.wait_for(asyncio.gather(*streams), 5)
        await asyncio.wait_for(closing, 5)
        for n, c in enumerate(collectors):
            assert c.data == expected(b"%d" % n, 20)
        stats = pool.stats()
        assert stats.streams_completed == 10
        assert stats.connections == stats.streams_in_flight == 0
        assert_no_pool_tasks()
    finally:
        await responders.close()


async def test_close_grace_ends_endless_streams(cluster: NatsCluster, subject: str) -> None:
    async def endless(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        return b"tick", True, None

    responders = await Responders.start(cluster.urls, endless, subject)
    try:
        pool = await Pool.connect(pool_config(cluster.urls))
        started = Countdown(3)
        streams = [
            asyncio.create_task(pool.stream_request(subject, b"", Collect(started)))
            for _ in range(3)
        ]
        await asyncio.wait_for(started.done.wait(), 5)
        began = time.monotonic()
        await asyncio.wait_for(pool.close(grace=0.2), 5)
        assert time.monotonic() - began < 2
        results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 5)
        assert all(isinstance(r, ConnectionLostError) for r in results), results
        for handle in responders.handles:
            await asyncio.wait_for(handle.wait_idle(), 5)  # the responders stopped
        stats = pool.stats()
        assert stats.streams_failed == 3
        assert_consistent(stats)
        assert_no_pool_tasks()
    finally:
        await responders.close()


# ------------------------------------------------------------------ failures


async def test_node_killed_with_100_streams_in_flight(own_cluster: NatsCluster) -> None:
    urls = own_cluster.urls
    items = 40
    responders = await Responders.start(urls, numbered(items, 0.02))  # 0.8 s per stream
    try:
        async with Pool(pool_config(urls)) as pool:
            started = Countdown(100)
            collectors = [Collect(started) for _ in range(100)]
            streams = [
                asyncio.create_task(
                    pool.stream_request_with_retry(
                        SUBJECT, b"%d" % n, 5, 0.05, c, request_timeout=FIRST_REPLY
                    )
                )
                for n, c in enumerate(collectors)
            ]
            await asyncio.wait_for(started.done.wait(), 10)
            assert pool.stats().streams_in_flight == 100
            served_before = responders.served()
            own_cluster.nodes[1].kill()
            await responders.die(1)
            await wait_until(pool, lambda st: st.servers[1].healthy == 0, "the dead node out")

            await asyncio.wait_for(asyncio.gather(*streams), 20)
            for n, c in enumerate(collectors):
                assert c.data == expected(b"%d" % n, items), n  # in order, whole, no duplicate
            stats = pool.stats()
            assert served_before[1] > 0  # the dead node was serving some of them
            assert stats.streams_retried > 0
            assert stats.streams_completed == 100
            assert stats.streams_in_flight == 0
            assert stats.servers[1].connections_lost == SLOTS
            assert_consistent(stats)
        assert_no_pool_tasks()
    finally:
        await responders.close()


async def test_responder_node_killed_streams_resume_elsewhere(own_cluster: NatsCluster) -> None:
    """The requester's node stays up; the responder's node dies: a stall, then resume."""
    urls = own_cluster.urls
    items = 40
    responders = await Responders.start(urls[1:], numbered(items, 0.02))  # nodes 2 and 3
    try:
        async with Pool(pool_config(urls[:1])) as pool:  # node 1 only: every reply is routed
            started = Countdown(40)
            collectors = [Collect(started) for _ in range(40)]
            streams = [
                asyncio.create_task(
                    pool.stream_request_with_retry(
                        SUBJECT, b"%d" % n, 5, 0.05, c, request_timeout=FIRST_REPLY
                    )
                )
                for n, c in enumerate(collectors)
            ]
            await asyncio.wait_for(started.done.wait(), 10)
            assert all(n > 0 for n in responders.served()), responders.served()
            own_cluster.nodes[2].kill()
            await responders.die(1)
            await asyncio.wait_for(asyncio.gather(*streams), 20)
            for n, c in enumerate(collectors):
                assert c.data == expected(b"%d" % n, items), n
            stats = pool.stats()
            assert stats.streams_retried > 0
            assert stats.connections_lost == 0
            assert_consistent(stats)
    finally:
        await responders.close()


async def test_killed_node_returns_to_rotation_after_restart(own_cluster: NatsCluster) -> None:
    urls = own_cluster.urls
    responders = await Responders.start(urls, numbered(3))
    try:
        async with Pool(pool_config(urls)) as pool:
            own_cluster.nodes[2].kill()
            await responders.die(2)
            await wait_until(pool, lambda st: st.servers[2].healthy == 0, "the dead node out")
            for n in range(6):  # the others serve meanwhile
                await request(pool, b"%d" % n, 3)

            await asyncio.to_thread(own_cluster.restart, 2)
            back = await wait_until(
                pool, lambda st: st.servers[2].healthy == SLOTS, "the restarted node back"
            )
            assert back < 5 * HEALTH
            stats = pool.stats()
            assert stats.servers[2].reconnects == SLOTS
            assert stats.servers[2].connections_lost == SLOTS

            before = stats.servers[2].attempts
            for n in range(6):  # idle connections: round-robin, so 2 of 6 through node 3
                await request(pool, b"%d" % n, 3)
            assert pool.stats().servers[2].attempts >= before + 2
    finally:
        await responders.close()


async def test_frozen_node_fails_health_checks(own_cluster: NatsCluster) -> None:
    urls = own_cluster.urls
    responders = await Responders.start(urls[:2], numbered(3))
    frozen = own_cluster.nodes[2]
    try:
        async with Pool(pool_config(urls)) as pool:
            os.kill(frozen.pid, signal.SIGSTOP)  # up, but answers nothing
            try:
                took = await wait_until(
                    pool, lambda st: st.servers[2].healthy == 0, "the frozen node out"
                )
                assert took < HEALTH + 0.5 + 2  # one interval + health_check_timeout + slack
                assert pool.stats().servers[2].health_checks_failed == SLOTS
                for n in range(6):
                    await request(pool, b"%d" % n, 3)
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            await wait_until(pool, lambda st: st.servers[2].healthy == SLOTS, "thawed node back")
    finally:
        await responders.close()


async def test_lame_duck_node_is_drained_without_failing_streams() -> None:
    with NatsCluster(config=LAME_DUCK) as cluster:
        urls = cluster.urls
        items = 20
        responders = await Responders.start(urls, numbered(items, 0.04))  # 0.8 s per stream
        try:
            async with Pool(pool_config(urls)) as pool:
                started = Countdown(60)
                first = [Collect(started) for _ in range(60)]
                streams = [
                    asyncio.create_task(
                        pool.stream_request_with_retry(
                            SUBJECT, b"a%d" % n, 5, 0.05, c, request_timeout=FIRST_REPLY
                        )
                    )
                    for n, c in enumerate(first)
                ]
                await asyncio.wait_for(started.done.wait(), 10)
                assert pool.stats().servers[2].streams_in_flight > 0
                await asyncio.to_thread(cluster.nodes[2].lame_duck)
                await wait_until(pool, lambda st: st.servers[2].healthy == 0, "lame duck out")
                routed = pool.stats().servers[2].attempts

                second = [Collect() for _ in range(60)]
                streams += [
                    asyncio.create_task(
                        pool.stream_request_with_retry(
                            SUBJECT, b"b%d" % n, 5, 0.05, c, request_timeout=FIRST_REPLY
                        )
                    )
                    for n, c in enumerate(second)
                ]
                await asyncio.wait_for(asyncio.gather(*streams), 20)
                for n, c in enumerate(first):
                    assert c.data == expected(b"a%d" % n, items), n
                for n, c in enumerate(second):
                    assert c.data == expected(b"b%d" % n, items), n
                stats = pool.stats()
                assert stats.servers[2].attempts == routed  # new streams avoided it
                assert stats.servers[2].connections_retired == SLOTS
                assert stats.streams_completed == 120
                assert_consistent(stats)
            assert_no_pool_tasks()
        finally:
            await responders.close()


def _occupy(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("which", ["http_port", "port"])
def test_a_cluster_starts_when_a_picked_port_was_taken_meanwhile(which: str) -> None:
    """Other processes on the machine take free ports too: a taken monitoring port is
    replaced, a taken client or route port restarts the cluster on fresh ports."""
    cluster = NatsCluster(2, start_timeout=10)
    taken = getattr(cluster.nodes[1], which)
    with _occupy(taken), cluster:
        assert all(n.running for n in cluster.nodes)
        assert taken not in {getattr(n, which) for n in cluster.nodes}
