"""Streams where NATS is really deployed: across accounts (a service export and its
import) and under least-privilege permissions. Each topology is a nats-server
configuration written here; docs/operations.md ("Topologies") and
docs/security.md ("Permissions") describe what these tests hold."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

import natstream
from natstream import (
    Config,
    PermissionDeniedError,
    Pool,
    ProtocolViolationError,
    StreamError,
    StreamOptions,
    Subscriber,
)
from natstream.server import NatsServer, free_port

HB = 0.2
FAST = StreamOptions(heartbeat=HB)
DOCS = Path(__file__).resolve().parents[2] / "docs"


def doc_block(page: str, marker: str) -> str:
    """The fenced block that follows ``<!-- marker -->`` in ``docs/<page>``: the
    configurations the docs give are the ones tested."""
    text = (DOCS / page).read_text(encoding="utf-8")
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return after.split("```", 2)[1].removeprefix("\n")


ACCOUNTS = doc_block("operations.md", "topology: accounts")
ACCOUNTS = ACCOUNTS.replace('"A_PASSWORD"', "a").replace('"B_PASSWORD"', "b")
SINGLETON = ACCOUNTS.replace("response_type: stream", "response_type: singleton")
assert SINGLETON != ACCOUNTS


def _url(server: NatsServer, user: str) -> str:
    return server.url.replace("nats://", f"nats://{user}:{user}@")


@pytest.fixture(scope="module")
def accounts() -> Iterator[NatsServer]:
    """Account A exports svc.> as a stream service; B imports it as remote.svc.>."""
    with NatsServer(config=ACCOUNTS, http_port=free_port()) as srv:
        yield srv


@pytest.fixture
async def responder_a(accounts: NatsServer) -> AsyncIterator[Subscriber]:
    async with Subscriber(Config([_url(accounts, "a")]), close_grace=1.0) as sub:
        yield sub


@pytest.fixture
async def pool_b(accounts: NatsServer) -> AsyncIterator[Pool]:
    async with Pool(Config([_url(accounts, "b")], idle_per_server=1, stream=FAST)) as pool:
        yield pool


def numbered(count: int):  # type: ignore[no-untyped-def]
    def handler(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= count:
            return None, False, None
        return str(index).encode(), True, None

    return handler


# A stream long enough for its reply subject to be renewed twice (at least a second
# apart), and the pattern of a requester's reply subjects (<inbox>.<n>).
PACED, PAUSE = 150, 0.02
_REPLY_SUBJECT = re.compile(r"_INBOX\.[0-9a-f]{24}\.(\d+)")


def paced(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
    async def reply():  # type: ignore[no-untyped-def]
        if index >= PACED:
            return None, False, None
        await asyncio.sleep(PAUSE)
        return str(index).encode(), True, None

    return reply()


async def _renewals_seen(pool: Pool, subject: str, server: NatsServer) -> list[list[int]]:
    """Take a paced stream whole and in order; the generations of the reply subjects
    subscribed on the requester's ``server``, sampled every 10 replies."""
    got: list[bytes] = []
    samples: list[list[int]] = []
    async with pool.stream(subject) as s:
        async for msg in s:
            got.append(msg.data)
            if len(got) % 10 == 0:
                connz = await asyncio.to_thread(_monitor, server, "connz?subs=1")
                samples.append(
                    [
                        int(m[1])
                        for c in connz["connections"]  # type: ignore[attr-defined]
                        for sub in c.get("subscriptions_list") or ()
                        if (m := _REPLY_SUBJECT.fullmatch(sub))
                    ]
                )
    assert got == [str(i).encode() for i in range(PACED)]
    return samples


# ---------------------------------------------------------------- accounts


@pytest.mark.parametrize("count", [10, 20_000])
async def test_a_stream_across_an_account_import_arrives_whole_and_in_order(
    responder_a: Subscriber, pool_b: Pool, subject: str, count: int
) -> None:
    await responder_a.stream_subscribe_handler(f"svc.{subject}", numbered(count))
    got: list[bytes] = []
    await pool_b.stream_request(f"remote.svc.{subject}", b"", lambda m: got.append(m.data) or True)
    assert got == [str(i).encode() for i in range(count)] + [natstream.STREAM_END]


async def test_flow_control_holds_the_responder_across_an_import(
    accounts: NatsServer, responder_a: Subscriber, subject: str
) -> None:
    """A consumer that stops taking replies holds the responder at its window."""
    window = 64
    sent = 0

    def counted(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        nonlocal sent
        sent = index + 1
        return b"x", True, None

    await responder_a.stream_subscribe_handler(f"svc.{subject}", counted)
    options = StreamOptions(window_messages=window, heartbeat=HB)
    config = Config([_url(accounts, "b")], idle_per_server=1, stream=options)
    async with Pool(config) as pool, pool.stream(f"remote.svc.{subject}") as s:
        taken = 0
        async for _ in s:
            taken += 1
            if taken == 1:
                break  # stop consuming, keep the stream open: the window stops it
        # Nothing but credit can stop the responder: let it run for several heartbeats.
        await asyncio.sleep(HB * 5)  # the responder's own pace, not a synchronisation
        assert window <= sent <= window + 1


async def test_an_error_marker_crosses_the_import(
    responder_a: Subscriber, pool_b: Pool, subject: str
) -> None:
    def failing(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index == 3:
            return None, False, natstream.StreamError("out of stock", code=409, retryable=False)
        return b"x", True, None

    await responder_a.stream_subscribe_handler(f"svc.{subject}", failing)
    with pytest.raises(StreamError) as info:
        await pool_b.stream_request(f"remote.svc.{subject}", b"", lambda m: True)
    assert (info.value.message, info.value.code, info.value.retryable) == (
        "out of stock",
        409,
        False,
    )


async def test_cancel_crosses_the_import_within_a_heartbeat(
    responder_a: Subscriber, pool_b: Pool, subject: str
) -> None:
    cancelled = asyncio.Event()

    async def endless(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        try:
            while True:
                await asyncio.sleep(0.005)
                yield b"x"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await responder_a.stream_handler(f"svc.{subject}", endless)
    taken = 0

    def take(msg: Msg) -> bool:
        nonlocal taken
        taken += 1
        return taken < 20

    await pool_b.stream_request(f"remote.svc.{subject}", b"", take)
    stopped_at = time.monotonic()
    await asyncio.wait_for(cancelled.wait(), HB * 10)
    assert time.monotonic() - stopped_at < HB * 2  # told at once, not found gone


async def test_a_responder_behind_an_import_is_offered_one_fresh_reply_subject(
    accounts: NatsServer, responder_a: Subscriber, pool_b: Pool, subject: str
) -> None:
    """Replies through an import keep coming to the request's reply subject: the
    requester keeps it, and offers the same fresh one at each renewal, not a new one."""
    await responder_a.stream_subscribe_handler(f"svc.{subject}", paced)
    samples = await _renewals_seen(pool_b, f"remote.svc.{subject}", accounts)
    assert {tuple(sorted(s)) for s in samples} <= {(0,), (0, 1)}
    assert (0, 1) in {tuple(sorted(s)) for s in samples}


async def test_resume_across_the_import_after_the_responder_is_killed(
    accounts: NatsServer, pool_b: Pool, subject: str
) -> None:
    count = 400
    script = str(Path(__file__).with_name("responder_proc.py"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, _url(accounts, "a"), f"svc.{subject}", "q", str(count), "0.005",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        async with Subscriber(Config([_url(accounts, "a")]), close_grace=1.0) as second:
            seen: list[bytes] = []

            def on_reply(msg: Msg) -> bool:
                seen.append(msg.data)
                if len(seen) == 50:
                    proc.kill()  # the first responder dies mid-stream
                return True

            async def takes_over() -> None:
                await proc.wait()
                await second.stream_subscribe_handler(f"svc.{subject}", numbered(count), queue="q")

            successor = asyncio.create_task(takes_over())
            await pool_b.stream_request_with_retry(
                f"remote.svc.{subject}", b"", 5, HB, on_reply, stream_timeout=60
            )
            await successor
        assert seen == [str(i).encode() for i in range(count)] + [natstream.STREAM_END]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_an_import_that_passes_one_reply_fails_at_once_and_says_why(
    subject: str,
) -> None:
    with NatsServer(config=SINGLETON) as srv:
        async with (
            Subscriber(Config([_url(srv, "a")]), close_grace=1.0) as sub,
            Pool(Config([_url(srv, "b")], idle_per_server=1, stream=FAST)) as pool,
        ):
            await sub.stream_subscribe_handler(f"svc.{subject}", numbered(100))
            start = time.monotonic()
            with pytest.raises(ProtocolViolationError, match="response_type: stream"):
                await pool.stream_request(f"remote.svc.{subject}", b"", lambda m: True)
            assert time.monotonic() - start < 1.0 + HB * 2  # not a stall after heartbeats


# ---------------------------------------------------------------- permissions


def _with_passwords(block: str, **passwords: str) -> str:
    for user, password in passwords.items():
        block = block.replace(f'"{user.upper()}_PASSWORD"', f'"{password}"')
    return block


# The documented request-reply permissions, with a 2 s expiry of allow_responses (to
# test that streams outlive it), and users that lack one right or another.
REQUEST_REPLY = _with_passwords(
    doc_block("security.md", "permissions: request-reply"),
    requester="requester",
    responder="responder",
).replace("allow_responses: { max: -1 }", 'allow_responses: { max: -1, expires: "2s" }')
assert 'expires: "2s"' in REQUEST_REPLY
EXTRA_USERS = """
    {user: exact, password: exact, permissions: {
        publish: {allow: ["svc.exact"]}, subscribe: {allow: ["_INBOX.>"]} }}
    {user: noinbox, password: noinbox, permissions: {
        publish: {allow: ["svc.>"]}, subscribe: {allow: ["elsewhere.>"]} }}
    {user: nosub, password: nosub, permissions: {
        subscribe: {allow: ["other.>"]}, allow_responses: {max: -1} }}
"""
PERMISSIONS = REQUEST_REPLY.replace("  users: [\n", "  users: [\n" + EXTRA_USERS, 1)
assert EXTRA_USERS in PERMISSIONS


@pytest.fixture(scope="module")
def least_privilege() -> Iterator[NatsServer]:
    """The permissions an admin grants for plain request-reply, with allow_responses:
    requester publish svc.>, subscribe _INBOX.>; responder subscribe svc.>, replies
    only (allow_responses, expiring after 2 s here)."""
    with NatsServer(config=PERMISSIONS) as srv:
        yield srv


@pytest.fixture
async def responder_lp(least_privilege: NatsServer) -> AsyncIterator[Subscriber]:
    async with Subscriber(Config([_url(least_privilege, "responder")]), close_grace=1.0) as sub:
        yield sub


@pytest.fixture
async def pool_lp(least_privilege: NatsServer) -> AsyncIterator[Pool]:
    config = Config([_url(least_privilege, "requester")], idle_per_server=1, stream=FAST)
    async with Pool(config) as pool:
        yield pool


async def test_streams_work_under_plain_request_reply_permissions(
    responder_lp: Subscriber, pool_lp: Pool, subject: str
) -> None:
    """More than one window (acks must reach the responder) and a cancel."""
    count = 40_000  # the default window is 16,384 messages
    await responder_lp.stream_subscribe_handler(f"svc.{subject}", numbered(count))
    got: list[bytes] = []
    await pool_lp.stream_request(f"svc.{subject}", b"", lambda m: got.append(m.data) or True)
    assert got == [str(i).encode() for i in range(count)] + [natstream.STREAM_END]
    cancelled = asyncio.Event()

    async def endless(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        try:
            while True:
                await asyncio.sleep(0.005)
                yield b"x"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await responder_lp.stream_handler(f"svc.{subject}.endless", endless)
    taken: list[bytes] = []
    await pool_lp.stream_request(
        f"svc.{subject}.endless", b"", lambda m: (taken.append(m.data), len(taken) < 5)[1]
    )
    await asyncio.wait_for(cancelled.wait(), HB * 5)


async def test_a_long_stream_outlives_the_expiry_of_its_reply_permission(
    responder_lp: Subscriber, pool_lp: Pool, subject: str
) -> None:
    """allow_responses expires 2 s after the request: the requester's control messages
    carry fresh reply subjects (granted anew) and the responder follows them."""

    async def slow(request: natstream.StreamRequest, index: int):  # type: ignore[no-untyped-def]
        if index >= 50:
            return None, False, None
        await asyncio.sleep(0.1)
        return str(index).encode(), True, None

    await responder_lp.stream_subscribe_handler(f"svc.{subject}", slow)
    got: list[bytes] = []
    start = time.monotonic()
    await pool_lp.stream_request(f"svc.{subject}", b"", lambda m: got.append(m.data) or True)
    assert time.monotonic() - start > 4  # twice the expiry
    assert got == [str(i).encode() for i in range(50)] + [natstream.STREAM_END]


async def test_a_refused_request_fails_the_stream_at_once(
    least_privilege: NatsServer,
    responder_lp: Subscriber,
    subject: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Config([_url(least_privilege, "exact")], idle_per_server=1, stream=FAST)
    async with Pool(config) as pool:
        start = time.monotonic()
        with pytest.raises(PermissionDeniedError) as info:
            await pool.stream_request(f"svc.{subject}", b"", lambda m: True)
    assert (info.value.operation, info.value.subject) == ("publish", f"svc.{subject}")
    assert time.monotonic() - start < 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"publish 'svc.{subject}'" in w for w in warnings), warnings


async def test_refused_control_messages_fail_the_stream_at_once_not_at_the_window(
    least_privilege: NatsServer, responder_lp: Subscriber
) -> None:
    """May publish the request subject but not its children: acks, heartbeats and
    cancel cannot reach the responder (service-routed control): said at once."""
    await responder_lp.stream_subscribe_handler("svc.exact", numbered(100_000))
    config = Config([_url(least_privilege, "exact")], idle_per_server=1, stream=FAST)
    async with Pool(config) as pool:
        start = time.monotonic()
        with pytest.raises(PermissionDeniedError) as info:
            await pool.stream_request("svc.exact", b"", lambda m: True)
    assert info.value.operation == "publish"
    assert info.value.subject.startswith("svc.exact.")
    assert time.monotonic() - start < HB * 3  # before a stall could be declared


async def test_a_refused_inbox_fails_the_stream_at_once(
    least_privilege: NatsServer, responder_lp: Subscriber, subject: str
) -> None:
    config = Config([_url(least_privilege, "noinbox")], idle_per_server=1, stream=FAST)
    async with Pool(config) as pool:
        with pytest.raises(PermissionDeniedError) as info:
            await pool.stream_request(f"svc.{subject}", b"", lambda m: True)
    assert info.value.operation == "subscribe"
    assert info.value.subject.startswith("_INBOX.")


async def test_a_refused_subscription_raises_where_it_is_made(
    least_privilege: NatsServer, subject: str
) -> None:
    async with Subscriber(Config([_url(least_privilege, "nosub")])) as sub:
        with pytest.raises(PermissionDeniedError) as info:
            await sub.stream_subscribe_handler(f"svc.{subject}", numbered(1))
    assert (info.value.operation, info.value.subject) == ("subscribe", f"svc.{subject}")


async def test_a_subscriber_falls_back_to_service_routed_control_and_says_so(
    least_privilege: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="natstream"):
        async with Subscriber(Config([_url(least_privilege, "responder")])) as sub:
            assert sub._dispatch.control_prefix == ""
    assert any("come through the service subjects" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- gateways, leaf nodes


def _monitor(server: NatsServer, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/{path}", timeout=1) as r:
        data: dict[str, object] = json.load(r)
        return data


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll the servers' monitoring endpoints (no event to await across processes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come up within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateways() -> Iterator[tuple[NatsServer, NatsServer]]:
    """Two clusters of one node each, joined by gateways."""
    ports = {name: free_port() for name in ("A", "B")}
    servers = []
    for name, other in (("A", "B"), ("B", "A")):
        config = (
            f'gateway {{ name: "{name}", listen: "127.0.0.1:{ports[name]}", gateways: ['
            f'{{name: "{other}", url: "nats://127.0.0.1:{ports[other]}"}}] }}'
        )
        servers.append(NatsServer(config=config, http_port=free_port(), name=f"gw-{name}"))
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            _wait_until(
                lambda srv=srv: bool(_monitor(srv, "gatewayz").get("outbound_gateways")),
                "the gateways",
            )
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.close()


@pytest.fixture(scope="module")
def leaf() -> Iterator[tuple[NatsServer, NatsServer]]:
    """A hub and a leaf node connected to it."""
    port = free_port()
    hub = NatsServer(config=f'leafnodes {{ listen: "127.0.0.1:{port}" }}', http_port=free_port())
    node = NatsServer(
        config=f'leafnodes {{ remotes: [{{url: "nats-leaf://127.0.0.1:{port}"}}] }}',
        http_port=free_port(),
    )
    try:
        hub.start()
        node.start()
        _wait_until(lambda: bool(_monitor(hub, "leafz").get("leafs")), "the leaf node")
        yield hub, node
    finally:
        node.close()
        hub.close()


async def _stream_across(responder_url: str, requester: NatsServer, subject: str) -> None:
    """20,000 replies whole and in order, a cancel that reaches the responder, and a
    stream that outlives two renewals of its reply subject."""
    requester_url = requester.url
    cancelled = asyncio.Event()

    async def endless(request: natstream.StreamRequest):  # type: ignore[no-untyped-def]
        try:
            while True:
                await asyncio.sleep(0.005)
                yield b"x"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with (
        Subscriber([responder_url], close_grace=1.0) as sub,
        Pool(Config([requester_url], idle_per_server=1, stream=FAST)) as pool,
    ):
        await sub.stream_subscribe_handler(subject, numbered(20_000))
        await sub.stream_handler(f"{subject}.endless", endless)
        got: list[bytes] = []
        # Interest crosses gateways and leaf nodes a moment after the subscription.
        await pool.stream_request_with_retry(
            subject, b"", 20, 0.1, lambda m: got.append(m.data) or True
        )
        assert got == [str(i).encode() for i in range(20_000)] + [natstream.STREAM_END]
        taken: list[bytes] = []
        await pool.stream_request_with_retry(
            f"{subject}.endless", b"", 20, 0.1, lambda m: (taken.append(m.data), len(taken) < 5)[1]
        )
        await asyncio.wait_for(cancelled.wait(), HB * 5)
        # The responder follows each renewal of the reply subject (two, and then a
        # third offered), the requester drops the subjects it left.
        await sub.stream_subscribe_handler(f"{subject}.paced", paced)
        samples = await _renewals_seen(pool, f"{subject}.paced", requester)
        assert all(len(s) <= 2 for s in samples), samples
        assert max(max(s) for s in samples) >= 2, samples


async def test_a_stream_across_a_gateway(
    gateways: tuple[NatsServer, NatsServer], subject: str
) -> None:
    a, b = gateways
    await _stream_across(a.url, b, subject)


@pytest.mark.parametrize("responder_on", ["hub", "leaf"])
async def test_a_stream_across_a_leaf_node(
    leaf: tuple[NatsServer, NatsServer], subject: str, responder_on: str
) -> None:
    hub, node = leaf
    if responder_on == "hub":
        await _stream_across(hub.url, node, subject)
    else:
        await _stream_across(node.url, hub, subject)


async def test_the_documented_own_prefix_permissions(subject: str) -> None:
    block = doc_block("security.md", "permissions: own-prefixes")
    config = _with_passwords(block, requester="requester", responder="responder")
    with NatsServer(config=config) as srv:
        async with (
            Subscriber(
                Config([_url(srv, "responder")], inbox_prefix="_INBOX_responder"),
                close_grace=1.0,
            ) as sub,
            Pool(
                Config(
                    [_url(srv, "requester")],
                    idle_per_server=1,
                    stream=FAST,
                    inbox_prefix="_INBOX_requester",
                )
            ) as pool,
        ):
            assert sub._dispatch.control_prefix.startswith("_INBOX_responder.")  # inbox-routed
            await sub.stream_subscribe_handler(f"svc.{subject}", numbered(40_000))
            got: list[bytes] = []
            await pool.stream_request(f"svc.{subject}", b"", lambda m: got.append(m.data) or True)
            assert got == [str(i).encode() for i in range(40_000)] + [natstream.STREAM_END]
