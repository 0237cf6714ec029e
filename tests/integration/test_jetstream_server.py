"""The embedded nats-server with JetStream: ``NatsServer(jetstream=True)`` and
``natstream server --jetstream [--store DIR]``."""

from __future__ import annotations

from pathlib import Path

import cli_run
import nats
import pytest
from click.testing import CliRunner

from natstream._cli import main
from natstream._errors import ConfigError
from natstream.server import NatsServer, free_port


async def _add_stream_and_publish(url: str, stream: str, subject: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        await js.publish(subject, b"kept")
    finally:
        await nc.close()


async def _stored(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages
    finally:
        await nc.close()


async def test_streams_survive_a_restart_of_the_same_server_object() -> None:
    with NatsServer(port=free_port(), jetstream=True) as srv:
        assert srv.store_dir is not None
        await _add_stream_and_publish(srv.url, "KEPT", "kept.>")
        srv.stop()
        srv.start()
        assert await _stored(srv.url, "KEPT") == 1
        own = srv.store_dir
    assert not own.exists()  # the server's own store goes with close()


async def test_a_given_store_directory_is_kept(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with NatsServer(jetstream=True, store_dir=store) as srv:
        assert srv.store_dir == store
        await _add_stream_and_publish(srv.url, "GIVEN", "given.>")
    assert any(store.rglob("*"))
    with NatsServer(jetstream=True, store_dir=store) as srv:
        assert await _stored(srv.url, "GIVEN") == 1


def test_a_store_directory_needs_jetstream() -> None:
    with pytest.raises(ConfigError, match="jetstream=True"):
        NatsServer(store_dir="/tmp/x")


async def test_server_command_runs_jetstream_into_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = free_port()
    proc = cli_run.start("server", "--jetstream", "--store", str(store), "--port", str(port))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url == f"nats://127.0.0.1:{port}"
        await _add_stream_and_publish(url, "CLI", "cli.>")
        cli_run.ctrl_c(proc)
        _, err = proc.communicate(timeout=cli_run.RUN_TIMEOUT)
    finally:
        cli_run.stop(proc)
    assert proc.returncode == 0, err
    assert err.splitlines() == [
        "1 nats-server node(s) running; Ctrl-C to stop",
        f"JetStream on, storing into {store}",
        "stopping",
    ]
    with NatsServer(jetstream=True, store_dir=store) as srv:
        assert await _stored(srv.url, "CLI") == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--store", "x"], "--store is JetStream's storage: add --jetstream"),
        (["--jetstream", "--cluster", "3"], "--jetstream runs on one node"),
    ],
)
def test_server_command_refuses_jetstream_options_it_cannot_honour(
    args: list[str], says: str
) -> None:
    result = CliRunner().invoke(main, ["server", *args])
    assert result.exit_code == 2
    assert says in result.output
