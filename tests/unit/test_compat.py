"""The nats-py compatibility guard: what the fast paths rely on, and the fallback.

natstream's transport uses private parts of nats-py, listed in
``natstream._transport._compat``. If a nats-py release changes one, natstream must
turn its fast paths off (one warning) and keep working through nats-py's public API.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natstream import ConfigError
from natstream._transport import FastClient, PlainLink, _compat, connect
from natstream.server import NatsServer

TESTS = Path(__file__).resolve().parents[1]


def test_the_installed_nats_py_has_every_private_name_the_transport_relies_on() -> None:
    missing = _compat.missing_names()
    assert not missing, (
        "the installed nats-py lacks what natstream's fast paths rely on: "
        + ", ".join(missing)
        + " (update natstream._transport for this nats-py, or pin nats-py)"
    )


def test_a_missing_name_is_reported_and_turns_the_fast_paths_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(Client, "_process_msg")
    monkeypatch.setattr(_compat, "_fast", None)
    monkeypatch.delenv(_compat.ENV_OFF, raising=False)
    assert "Client._process_msg" in _compat.missing_names()
    _off_with_one_warning(caplog, _compat.fast_paths, "Client._process_msg")


def _off_with_one_warning(
    caplog: pytest.LogCaptureFixture, decide: Callable[[], bool], name: str
) -> None:
    """``decide()`` says no, twice, with one warning that names ``name``."""
    with caplog.at_level(logging.WARNING, logger="natstream"):
        assert not decide()
        assert not decide()  # decided once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert name in warnings[0].getMessage()


def test_without_the_names_for_a_lossless_drain_nats_py_drains_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(Client, "_send_unsubscribe")
    monkeypatch.setattr(_compat, "_lossless_drain", None)
    assert _compat.missing_drain_names() == ["Client._send_unsubscribe"]
    _off_with_one_warning(caplog, _compat.lossless_drain, "Client._send_unsubscribe")


def test_the_names_for_a_lossless_drain_are_there() -> None:
    assert _compat.missing_drain_names() == []
    assert _compat.lossless_drain()


def test_a_changed_signature_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def _process_msg(self: Client, sid: int, subject: bytes) -> None: ...

    monkeypatch.setattr(Client, "_process_msg", _process_msg)
    assert "Client._process_msg(reply=...)" in _compat.missing_names()


async def test_with_the_fast_paths_off_connections_are_plain(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_compat, "_fast", False)
    link = await connect([server.url], {}, allow_reconnect=False)
    try:
        assert isinstance(link, PlainLink)
        assert type(link.nc) is Client
        assert await link.round_trip(5) >= 0
    finally:
        await link.close()
    monkeypatch.setattr(_compat, "_fast", True)
    link = await connect([server.url], {}, allow_reconnect=False)
    try:
        assert isinstance(link, FastClient)
    finally:
        await link.close()


async def test_tls_is_refused_rather_than_unchecked_without_the_names_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Client, "_connect_command")
    with pytest.raises(ConfigError, match=r"Client\._connect_command"):
        await connect(["tls://127.0.0.1:1"], {}, allow_reconnect=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_streaming_tests_pass_with_the_fast_paths_off() -> None:
    """Slower, never broken: the streaming tests on nats-py's public API alone."""
    env = dict(os.environ, **{_compat.ENV_OFF: "1"})
    files = ["test_core.py", "test_packing.py", "test_protocol_live.py", "test_recorder.py"]
    files += ["test_security.py", "test_accept.py", "test_handler_faults.py", "test_shutdown.py"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(TESTS / "integration" / f) for f in files],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]


@pytest.mark.fast_paths
async def test_writable_follows_the_connection_state(server: NatsServer) -> None:
    """The responder's per-reply path reads ``writable`` instead of nats-py's status."""
    link = await connect([server.url], {}, allow_reconnect=False)
    assert isinstance(link, FastClient)
    assert link.writable
    await link.close()
    assert not link.writable
    assert not PlainLink(Client()).writable
