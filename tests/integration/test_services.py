"""A Subscriber as a NATS service (ADR-32): its answers to ``$SRV.PING``, ``$SRV.INFO``
and ``$SRV.STATS`` on every subject ADR-32 names, checked against the JSON schemas
the ``nats`` CLI validates (``micro_schemas``), beside a nats-py ``nats.micro``
service."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import micro_schemas
import nats
import nats.errors
import pytest
from nats.micro import add_service
from nats.micro.request import Request

from natstream import (
    ConfigError,
    PermissionDeniedError,
    Pool,
    ServiceInfo,
    StreamError,
    StreamRequest,
    Subscriber,
)
from natstream.server import NatsServer

SERVICE = ServiceInfo("orders", "1.2.3-rc.1+build.5", "streams of orders", {"team": "core"})
VERBS = {"PING": micro_schemas.PING, "INFO": micro_schemas.INFO, "STATS": micro_schemas.STATS}
FORMATS = jsonschema.Draft7Validator.FORMAT_CHECKER
ASK_TIMEOUT = 2.0  # seconds for answers on loopback, on a loaded 2-core machine


def validate(answer: dict[str, Any], verb: str) -> None:
    jsonschema.Draft7Validator(VERBS[verb], format_checker=FORMATS).validate(answer)


async def ask(nc: nats.NATS, subject: str, expect: int) -> list[dict[str, Any]]:
    """The JSON answers to one request on ``subject``: once ``expect`` came, or
    whatever came within ``ASK_TIMEOUT``."""
    got: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def on_answer(msg: Any) -> None:
        got.append(json.loads(msg.data))
        if len(got) >= expect:
            enough.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_answer)
    await nc.publish(subject, b"", reply=inbox)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ASK_TIMEOUT):
            await enough.wait()
    await sub.unsubscribe()
    return got


def ten(request: StreamRequest, index: int) -> tuple[bytes | None, bool, str | None]:
    if request.data == b"fail" and index == 2:
        return None, False, "out of stock"
    return b"%d" % index, index < 9, None


async def slow(request: StreamRequest) -> AsyncIterator[bytes]:
    for i in range(4):
        await asyncio.sleep(0.05)
        yield b"item %d" % i


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(server.url)
    yield client
    await client.close()


def test_the_format_checker_checks_date_times() -> None:
    """Without rfc3339-validator, jsonschema would skip ``format: date-time`` silently."""
    assert "date-time" in FORMATS.checkers
    with pytest.raises(jsonschema.ValidationError):
        validate({**_stats_of_none(), "started": "yesterday"}, "STATS")


def _stats_of_none() -> dict[str, Any]:
    return {
        "type": "io.nats.micro.v1.stats_response",
        "name": "x",
        "id": "1",
        "version": "1.0.0",
        "metadata": {},
        "started": "2024-01-01T00:00:00Z",
        "endpoints": [],
    }


async def test_every_subject_answers_as_adr_32_says(
    server: NatsServer, nc: nats.NATS, pool: Pool
) -> None:
    async with Subscriber([server.url], service=SERVICE) as sub:
        await sub.stream_subscribe_handler("orders.list", ten)
        await sub.stream_handler("orders.watch", slow, queue="workers", endpoint="watch")
        sid = sub.service_id
        assert sid
        await pool.stream_request("orders.list", b"", lambda m: True)
        with pytest.raises(StreamError):
            await pool.stream_request("orders.list", b"fail", lambda m: True)
        await pool.stream_request("orders.watch", b"", lambda m: True)
        for verb in VERBS:
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.orders", f"$SRV.{verb}.orders.{sid}"):
                answers = await ask(nc, subject, 1)
                assert len(answers) == 1, subject
                validate(answers[0], verb)
                assert (answers[0]["name"], answers[0]["id"]) == ("orders", sid)
                assert answers[0]["version"] == "1.2.3-rc.1+build.5"
                assert answers[0]["metadata"] == {"team": "core"}
        [info] = await ask(nc, f"$SRV.INFO.orders.{sid}", 1)
        assert info["description"] == "streams of orders"
        protocol = {"natstream.protocol": "1"}
        assert info["endpoints"] == [
            {"name": "orders_list", "subject": "orders.list", "queue_group": "",
             "metadata": protocol},
            {"name": "watch", "subject": "orders.watch", "queue_group": "workers",
             "metadata": protocol},
        ]  # fmt: skip
        [stats] = await ask(nc, f"$SRV.STATS.orders.{sid}", 1)
        listed, watch = stats["endpoints"]
        assert (listed["num_requests"], listed["num_errors"]) == (2, 1)
        assert listed["last_error"] == "500 out of stock"
        assert listed["data"]["replies"] == 12  # 10, then 2 before the error
        assert (watch["num_requests"], watch["num_errors"], watch["last_error"]) == (1, 0, "")
        assert watch["data"] == {
            "replies": 4, "bytes": 24, "active": 0, "completed": 1, "cancelled": 0,
            "resumed": 0, "rejected_busy": 0, "rejected_invalid": 0,
        }  # fmt: skip
        # Whole streams: four replies 50 ms apart take 200 ms at least.
        assert 200_000_000 <= watch["processing_time"] < 10**10
        assert watch["average_processing_time"] == watch["processing_time"]
        assert listed["average_processing_time"] == listed["processing_time"] // 2


async def test_each_instance_answers_with_its_own_id(server: NatsServer, nc: nats.NATS) -> None:
    """No queue group on the $SRV subjects: every instance answers a PING."""
    async with (
        Subscriber([server.url], service=SERVICE) as one,
        Subscriber([server.url], service=SERVICE) as two,
    ):
        assert one.service_id != two.service_id
        pings = await ask(nc, "$SRV.PING.orders", 2)
        assert sorted(p["id"] for p in pings) == sorted([one.service_id, two.service_id])
        [only] = await ask(nc, f"$SRV.PING.orders.{two.service_id}", 1)
        assert only["id"] == two.service_id


async def test_a_closed_service_leaves_the_listings(server: NatsServer, nc: nats.NATS) -> None:
    async with Subscriber([server.url], service=ServiceInfo("leaving", "0.0.1")) as sub:
        await sub.stream_subscribe_handler("leaving.x", ten)
        [info] = await ask(nc, "$SRV.INFO.leaving", 1)
        assert (info["description"], info["metadata"]) == ("", {})
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("$SRV.PING.leaving", b"", timeout=ASK_TIMEOUT)


async def test_a_stopped_subscription_is_no_endpoint(server: NatsServer, nc: nats.NATS) -> None:
    async with Subscriber([server.url], service=ServiceInfo("stopping", "1.0.0")) as sub:
        handle = await sub.stream_subscribe_handler("stopping.x", ten)
        [info] = await ask(nc, "$SRV.INFO.stopping", 1)
        assert [e["name"] for e in info["endpoints"]] == ["stopping_x"]
        await handle.stop()
        [info] = await ask(nc, "$SRV.INFO.stopping", 1)
        [stats] = await ask(nc, "$SRV.STATS.stopping", 1)
        assert info["endpoints"] == stats["endpoints"] == []


@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
async def test_beside_a_nats_micro_service(server: NatsServer, nc: nats.NATS) -> None:
    """Both kinds answer the same discovery requests; nats-py's client reads ours."""

    async def echo(request: Request) -> None:
        await request.respond(request.data)

    micro_nc = await nats.connect(server.url)
    try:
        micro = await add_service(micro_nc, name="plain", version="2.0.0", description="echo")
        await micro.add_endpoint(name="echo", subject="plain.echo", handler=echo)
        async with Subscriber([server.url], service=SERVICE) as sub:
            await sub.stream_subscribe_handler("orders.list", ten)
            pings = await ask(nc, "$SRV.PING", 2)
            assert sorted(p["name"] for p in pings) == ["orders", "plain"]
            assert {p["type"] for p in pings} == {"io.nats.micro.v1.ping_response"}
            [ours] = await ask(nc, "$SRV.STATS.orders", 1)
            validate(ours, "STATS")
            from nats.micro.service import ServiceStats

            parsed = ServiceStats.from_dict(ours)
            assert parsed.id == sub.service_id
            assert parsed.endpoints[0].name == "orders_list"
        await micro.stop()
    finally:
        await micro_nc.close()


async def test_a_refused_srv_subscription_fails_the_opening() -> None:
    config = """
    authorization {
      users: [{user: svc, password: pw, permissions: {subscribe: {deny: ["$SRV.>"]}}}]
    }
    """
    with NatsServer(config=config) as srv:
        url = srv.url.replace("nats://", "nats://svc:pw@")
        with pytest.raises(PermissionDeniedError, match=r"\$SRV"):
            await Subscriber.connect([url], service=SERVICE)
        async with Subscriber([url]):  # without service it opens
            pass


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "has.dot", "version": "1.0.0"},
        {"name": "", "version": "1.0.0"},
        {"name": "ok", "version": "1.0"},
        {"name": "ok", "version": "01.0.0"},
        {"name": "ok", "version": "v1.0.0"},
        {"name": "ok", "version": "1.0.0", "metadata": {"k": 1}},
        {"name": "ok", "version": "1.0.0", "description": None},
    ],
)
def test_service_info_is_checked_when_made(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ServiceInfo(**kwargs)


def test_service_info_keeps_a_copy_of_its_metadata() -> None:
    metadata = {"a": "b"}
    info = ServiceInfo("x", "1.0.0", metadata=metadata)
    metadata["a"] = "changed"
    assert dict(info.metadata) == {"a": "b"}
    assert dict(ServiceInfo("x", "1.0.0", metadata=None).metadata) == {}


async def test_an_endpoint_name_is_checked(subscriber: Subscriber) -> None:
    with pytest.raises(ConfigError, match="endpoint name"):
        await subscriber.stream_subscribe_handler("a.b", ten, endpoint="a.b")


def test_service_must_be_a_service_info() -> None:
    with pytest.raises(TypeError, match="ServiceInfo"):
        Subscriber(["nats://127.0.0.1:4222"], service={"name": "x"})  # type: ignore[arg-type]


async def test_invalid_requests_count_as_errors(server: NatsServer, nc: nats.NATS) -> None:
    """A request refused at once as malformed (400) is no stream, but an error."""
    async with Subscriber([server.url], service=SERVICE) as sub:
        await sub.stream_subscribe_handler("orders.list", ten)
        refused = await nc.request("orders.list", b"", headers={"Ns-V": "1", "Ns-Win": "lots"})
        assert refused.headers is not None
        assert refused.headers["Nats-Service-Error-Code"] == "400"
        [stats] = await ask(nc, f"$SRV.STATS.orders.{sub.service_id}", 1)
        validate(stats, "STATS")
        [listed] = stats["endpoints"]
        assert (listed["num_requests"], listed["num_errors"]) == (0, 1)
        assert listed["last_error"].startswith("400 ")
        assert listed["data"]["rejected_invalid"] == 1
