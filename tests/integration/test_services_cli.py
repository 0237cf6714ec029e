"""``natstream services``, run as a user would (a subprocess), against a natstream
service and a nats-py ``nats.micro`` service started here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator

import cli_run
import jsonschema
import micro_schemas
import nats
import pytest
from nats.micro import add_service
from nats.micro.request import Request

from natstream import Config, Pool, ServiceInfo, StreamError, StreamRequest, Subscriber
from natstream.server import NatsServer

WINDOW = "0.5"  # seconds the command gathers answers for (loopback)


def five(request: StreamRequest, index: int) -> tuple[bytes | None, bool, str | None]:
    if request.data == b"fail":
        return None, False, "out of stock"
    return b"%d" % index, index < 4, None


async def services(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli_run.run, "services", *args, **env)


@pytest.fixture
async def running(server: NatsServer) -> AsyncIterator[Subscriber]:
    """A natstream service "orders" with two endpoints, each served once (one stream
    failed), beside a nats.micro service "plain"."""

    async def echo(request: Request) -> None:
        await request.respond(request.data)

    micro_nc = await nats.connect(server.url)
    micro = await add_service(micro_nc, name="plain", version="2.0.0", description="an echo")
    await micro.add_endpoint(name="echo", subject="plain.echo", handler=echo)
    info = ServiceInfo("orders", "1.4.0", "streams of orders")
    async with Subscriber([server.url], service=info) as sub, Pool([server.url]) as pool:
        await sub.stream_subscribe_handler("orders.list", five, endpoint="list")
        await sub.stream_subscribe_handler("orders.watch", five, queue="workers")
        await pool.stream_request("orders.watch", b"", lambda m: True)
        with pytest.raises(StreamError):
            await pool.stream_request("orders.list", b"fail", lambda m: True)
        yield sub
    await micro.stop()
    await micro_nc.close()


def cells(stdout: str) -> list[list[str]]:
    """The table's lines split into cells (columns are two spaces apart at least;
    no cell here holds two spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()]


async def test_ls_info_and_stats_show_both_kinds(server: NatsServer, running: Subscriber) -> None:
    sid = running.service_id
    assert sid is not None
    ls = await services("--server", server.url, "--timeout", WINDOW)
    assert (ls.returncode, ls.stderr) == (0, "")
    table = cells(ls.stdout)
    assert table[0] == ["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"]
    assert table[1] == ["orders", "1.4.0", sid, "2", "streams of orders"]
    assert table[2][0:2] == ["plain", "2.0.0"]
    assert table[2][3:] == ["1", "an echo"]

    info = await services("info", "--timeout", WINDOW, NATS_URL=server.url)
    assert info.returncode == 0, info.stderr
    assert cells(info.stdout)[1:] == [
        ["orders", "1.4.0", sid, "list", "orders.list", "-", "protocol 1"],
        ["orders", "1.4.0", sid, "orders_watch", "orders.watch", "workers", "protocol 1"],
        ["plain", "2.0.0", table[2][2], "echo", "plain.echo", "q", "-"],
    ]

    stats = await services("stats", "--server", server.url, "--timeout", WINDOW)
    assert stats.returncode == 0, stats.stderr
    header, listed, watch, echo = cells(stats.stdout)
    assert header[-1] == "LAST ERROR"
    assert listed[:5] == ["orders", sid, "list", "1", "1"]
    assert listed[6:] == ["0", "0", "0", "500 out of stock"]
    assert watch[:5] == ["orders", sid, "orders_watch", "1", "0"]
    assert watch[6:] == ["5", "5", "0", "-"]
    assert echo[:5] == ["plain", table[2][2], "echo", "0", "0"]


async def test_json_narrowed_to_one_instance(server: NatsServer, running: Subscriber) -> None:
    """NAME and ID narrow the request; the first answer ends it; the JSON holds the
    answers as they came, valid for the nats CLI."""
    sid = running.service_id
    assert sid is not None
    done = await services("stats", "orders", sid, "--json", "--timeout", "30",
                          "--server", server.url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [answer] = json.loads(done.stdout)
    jsonschema.Draft7Validator(
        micro_schemas.STATS, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    ).validate(answer)
    assert (answer["name"], answer["id"]) == ("orders", sid)
    plain = await services("plain", "--json", "--server", server.url, "--timeout", WINDOW)
    assert [a["name"] for a in json.loads(plain.stdout)] == ["plain"]


async def test_no_service_answering_is_exit_status_4(server: NatsServer) -> None:
    done = await services("stats", "nothing_here", "--server", server.url, "--timeout", WINDOW)
    assert (done.returncode, done.stdout) == (4, "")
    cli_run.assert_one_error_line(done.stderr, "no NATS service answered $SRV.STATS.nothing_here")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["info", "not.a.name"], ["service name 'not.a.name'"]),
        (["info", "orders", "a.b"], ["instance id 'a.b'"]),
        (["ls", "--timeout", "0"], ["--timeout"]),
        (["stats", "--server", "nats://127.0.0.1:1"], ["nats://127.0.0.1:1"]),
        (["stats", "--server", "http://example.com"], ["not a NATS scheme"]),
        (["frobnicate", "x", "y"], ["unexpected extra argument"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_status_2(args: list[str], words: list[str]) -> None:
    done = cli_run.run("services", *args)
    assert done.returncode == 2, done.stderr
    cli_run.assert_one_error_line(done.stderr, *words)


async def test_credentials_reach_a_server_that_needs_them_and_are_never_shown() -> None:
    password = "pw-" + os.urandom(8).hex()
    with NatsServer(config=f'authorization {{ user: "alice", password: "{password}" }}') as srv:
        config = Config([srv.url], user="alice", password=password)
        async with Subscriber(config, service=ServiceInfo("guarded", "1.0.0")) as sub:
            await sub.stream_subscribe_handler("guarded.list", five)
            refused = await services("--server", srv.url, "--timeout", WINDOW)
            assert refused.returncode == 2, refused.stderr
            cli_run.assert_one_error_line(refused.stderr, "authorization violation")
            env = {"NATS_URL": srv.url, "NATS_USER": "alice", "NATS_PASSWORD": password}
            done = await services("ls", "--timeout", WINDOW, **env)
            assert done.returncode == 0, done.stderr
            assert [row[0] for row in cells(done.stdout)[1:]] == ["guarded"]
            assert password not in done.stdout + done.stderr + refused.stderr
