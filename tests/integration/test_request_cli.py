"""``natstream request`` as a user runs it (a subprocess) against real responders:
natstream's, and plain ones written here with raw nats-py (a Go-style one that ends
with the marker, an ADR-47 one that ends with an empty message). Each exit status
has a test."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import signal
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cli_run
import nats
import pytest
import trustme
from cli_run import arun, assert_one_error_line, astart, astop
from nats.aio.client import Client
from nats.aio.msg import Msg

from natstream import Config, StreamError, StreamRequest, Subscriber
from natstream._transport import subscribe_live
from natstream.server import NatsServer

WAIT = 30  # seconds: generous bounds on a loaded 2-core machine
# The responders of these tests notice a vanished requester only after a minute: a
# stream they stop sooner was cancelled by the command.
PATIENT = 60.0


@pytest.fixture
async def responder(server: NatsServer) -> AsyncIterator[Subscriber]:
    async with Subscriber([server.url], close_grace=1.0, stall_factor=PATIENT) as sub:
        yield sub


@pytest.fixture
async def plain(server: NatsServer) -> AsyncIterator[Client]:
    """A raw nats-py connection, for plain responders."""
    nc = await nats.connect(server.url)
    yield nc
    await nc.close()


async def _serve_plain(nc: Client, subject: str, replies: list[bytes]) -> None:
    """A Go-style plain responder: each of ``replies`` published to the request's inbox."""

    async def respond(msg: Msg) -> None:
        for reply in replies:
            await nc.publish(msg.reply, reply)

    await subscribe_live(nc, subject, respond)


def _lines(n: int) -> list[bytes]:
    return [b"line %d" % i for i in range(n)]


async def _lines_generator(request: StreamRequest) -> AsyncIterator[bytes]:
    for line in _lines(int(request.data or b"5")):
        yield line


class Watched:
    """A natstream generator that streams until cancelled: ``cancelled`` is set then."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def __call__(self, request: StreamRequest) -> AsyncIterator[bytes]:
        try:
            i = 0
            while True:
                yield b"tick %d" % i
                i += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


# ---------------------------------------------------------------- output forms


async def test_each_reply_on_its_own_line(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    await responder.stream_handler(subject, _lines_generator)
    status, out, err = await arun("request", subject, "5", "--server", server.url)
    assert (status, err) == (0, "")
    assert out.splitlines() == _lines(5)


async def test_raw_writes_the_payloads_as_they_are(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    await responder.stream_handler(subject, _lines_generator)
    status, out, _ = await arun("request", subject, "3", "--raw", "--server", server.url)
    assert status == 0
    assert out == b"line 0line 1line 2"


async def test_json_says_how_each_payload_is_encoded(
    server: NatsServer, plain: Client, subject: str
) -> None:
    """A plain responder whose publisher adds headers; one payload is not UTF-8."""

    async def respond(msg: Msg) -> None:
        await plain.publish(msg.reply, "grüße".encode(), headers={"Trace": "t1"})
        await plain.publish(msg.reply, b"\xff\x00")
        await plain.publish(msg.reply, b"__STREAM_END__")

    await subscribe_live(plain, subject, respond)
    status, out, _ = await arun("request", subject, "--json", "--server", server.url)
    assert status == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first == {
        "seq": 1,
        "size": 7,
        "headers": {"Trace": "t1"},
        "encoding": "utf-8",
        "payload": "grüße",
    }
    assert second["seq"] == 2
    assert second["encoding"] == "base64"
    assert base64.b64decode(second["payload"]) == b"\xff\x00"


async def test_data_from_stdin_and_headers_reach_the_responder(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    async def echo(request: StreamRequest) -> AsyncIterator[bytes]:
        yield request.data
        yield json.dumps({k: v for k, v in (request.headers or {}).items()}).encode()

    await responder.stream_handler(subject, echo)
    args = ["request", subject, "-", "-H", "Tenant: acme", "-H", "Trace:x:y"]
    status, out, _ = await arun(*args, "--server", server.url, stdin=b"\x00body\xff")
    assert status == 0
    body, headers = out.split(b"\n")[:2]
    assert body == b"\x00body\xff"
    sent = json.loads(headers)
    assert sent["Tenant"] == "acme"
    assert sent["Trace"] == "x:y"


# ---------------------------------------------------------------- plain peers


async def test_a_go_style_plain_responder(server: NatsServer, plain: Client, subject: str) -> None:
    await _serve_plain(plain, subject, [*_lines(3), b"__STREAM_END__"])
    status, out, err = await arun("request", subject, "--server", server.url)
    assert (status, err) == (0, "")
    assert out.splitlines() == _lines(3)


async def test_a_plain_error_marker_exits_1_with_its_message(
    server: NatsServer, plain: Client, subject: str
) -> None:
    await _serve_plain(plain, subject, [*_lines(2), b"__STREAM_ERROR__:disk on fire"])
    status, out, err = await arun("request", subject, "--server", server.url)
    assert status == 1
    assert out.splitlines() == _lines(2)  # what came before the error is printed
    assert_one_error_line(err, "disk on fire")


async def test_an_adr47_responder_ends_with_an_empty_message(
    server: NatsServer, plain: Client, subject: str
) -> None:
    await _serve_plain(plain, subject, [*_lines(3), b""])
    args = ("request", subject, "--server", server.url, "--timeout", "1")
    status, out, err = await arun(*args, "--plain-end", "empty")
    assert (status, err) == (0, "")
    assert out.splitlines() == _lines(3)
    # Without --plain-end empty the empty message is a reply, and the end never comes.
    status, out, err = await arun(*args)
    assert status == 3
    assert out.splitlines() == [*_lines(3), b""]
    assert_one_error_line(err, "1 s")


# ---------------------------------------------------------------- exit statuses


async def test_a_stream_error_exits_1_with_its_message(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    async def fails(request: StreamRequest) -> AsyncIterator[bytes]:
        yield b"reading 0"
        raise StreamError("sensor offline", code=503, retryable=False)

    await responder.stream_handler(subject, fails)
    status, out, err = await arun("request", subject, "--server", server.url)
    assert status == 1
    assert out == b"reading 0\n"
    assert_one_error_line(err, "503", "sensor offline")


async def test_no_responders_exits_4(server: NatsServer, subject: str) -> None:
    status, out, err = await arun("request", subject, "--server", server.url)
    assert (status, out) == (4, b"")
    assert_one_error_line(err, "no responders", subject)


async def test_a_silent_responder_exits_3(server: NatsServer, plain: Client, subject: str) -> None:
    await _serve_plain(plain, subject, [])  # takes the request, never answers
    status, out, err = await arun("request", subject, "--timeout", "0.5", "--server", server.url)
    assert (status, out) == (3, b"")
    assert_one_error_line(err, "0.5 s")


async def test_the_stream_timeout_exits_3_and_stops_the_responder(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    watched = Watched()
    await responder.stream_handler(subject, watched)
    args = ("request", subject, "--stream-timeout", "1", "--server", server.url)
    status, out, err = await arun(*args)
    assert status == 3
    assert out.startswith(b"tick 0\n")
    assert_one_error_line(err, "deadline")
    await asyncio.wait_for(watched.cancelled.wait(), WAIT)


async def test_count_stops_after_n_replies_and_cancels_the_responder(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    watched = Watched()
    await responder.stream_handler(subject, watched)
    status, out, err = await arun("request", subject, "--count", "3", "--server", server.url)
    assert (status, err) == (0, "")
    assert out.splitlines() == [b"tick 0", b"tick 1", b"tick 2"]
    await asyncio.wait_for(watched.cancelled.wait(), WAIT)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_cancels_the_responder_first(
    server: NatsServer, responder: Subscriber, subject: str, sig: signal.Signals, status: int
) -> None:
    watched = Watched()
    await responder.stream_handler(subject, watched)
    proc = await astart("request", subject, "--server", server.url)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"tick 0\n"
        os.killpg(proc.pid, sig)  # as Ctrl-C does: the whole foreground group
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        await astop(proc)
    assert proc.returncode == status
    assert err == b""  # no traceback, no "Aborted!"
    assert watched.cancelled.is_set()  # told before the command exited


async def test_retries_resume_after_the_last_reply_printed(
    server: NatsServer, responder: Subscriber, subject: str
) -> None:
    resumed_at = []

    def flaky(request: StreamRequest, index: int) -> tuple[bytes | None, bool, str | None]:
        if request.resume is None and index == 3:
            return None, False, "try again"  # an error value: retryable
        if request.resume is not None and not resumed_at:
            resumed_at.append(index)
        return (b"line %d" % index, True, None) if index < 6 else (None, False, None)

    await responder.stream_subscribe_handler(subject, flaky)
    args = ("request", subject, "--retries", "2", "--retry-delay", "0", "--server", server.url)
    status, out, err = await arun(*args)
    assert (status, err) == (0, "")
    assert out.splitlines() == _lines(6)  # no duplicate, no gap
    assert resumed_at == [3]  # the retry started after the last reply printed


@pytest.mark.parametrize("raw", [False, True])
async def test_a_closed_stdout_exits_141_and_cancels_the_responder(
    server: NatsServer, responder: Subscriber, subject: str, raw: bool
) -> None:
    """``natstream request ... | head -1`` (``head -c 6`` with ``--raw``)."""
    watched = Watched()
    await responder.stream_handler(subject, watched)
    read, write = os.pipe()
    args = ["--raw"] if raw else []
    proc = await astart("request", subject, *args, "--server", server.url, stdout=write)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as head:
            if raw:
                assert await asyncio.to_thread(head.read, 6) == b"tick 0"
            else:
                assert await asyncio.to_thread(head.readline) == b"tick 0\n"
        _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        await astop(proc)
    assert (proc.returncode, err) == (141, b"")
    await asyncio.wait_for(watched.cancelled.wait(), WAIT)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["bad subject"], ["bad subject"]),
        (["ok", "-H", "no colon"], ["no colon"]),
        (["ok", "-H", "Ns-V:1"], ["Ns-V"]),
        (["ok", "-H", "A:1", "-H", "A:2"], ["twice"]),
        (["ok", "--raw", "--json"], ["--raw", "--json"]),
        (["ok", "--count", "0"], ["--count"]),
        (["ok", "--timeout", "0"], ["--timeout"]),
        (["ok", "--tls-key", "/nonexistent.key"], ["--tls-cert"]),
        (["ok", "--creds", "/nonexistent.creds"], ["/nonexistent.creds"]),
        (["ok", "--server", "http://127.0.0.1:4222"], ["http"]),
        (["ok", "--server", "nats://127.0.0.1:1"], ["127.0.0.1:1"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
async def test_a_usage_error_exits_2_with_one_line(args: list[str], words: list[str]) -> None:
    status, out, err = await arun("request", *args)
    assert (status, out) == (2, b"")
    assert_one_error_line(err, *words)


async def test_a_closed_stdout_is_refused_before_anything_starts() -> None:
    """With fd 1 closed, a socket opened later could take its number."""
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        'exec "$@" >&-',
        "sh",
        *cli_run.command("request", "x.y"),
        stderr=asyncio.subprocess.PIPE,
        env=cli_run.env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert_one_error_line(err.decode(), "stdout is closed")


# ---------------------------------------------------------------- output pacing


@pytest.mark.parametrize("raw", [False, True])
async def test_a_reader_slower_than_the_stall_time_keeps_the_stream(
    server: NatsServer, responder: Subscriber, subject: str, raw: bool
) -> None:
    """The reader stops for longer than a requester may be silent (3 s): the command
    still heartbeats, the responder waits for credit, nothing is lost (with
    ``--raw`` too, whose replies take a path of their own)."""
    count, size = 40_000, 128  # beyond the pipe, the output's buffer and the window
    payloads = [b"%07d" % i + b"x" * (size - 7) for i in range(count)]

    async def many(request: StreamRequest) -> AsyncIterator[list[bytes]]:
        for start in range(0, count, 1000):
            yield payloads[start : start + 1000]

    await responder.stream_handler(subject, many)
    args = ["--raw"] if raw else []
    proc = await astart("request", subject, *args, "--server", server.url)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readexactly(size), WAIT)
        await asyncio.sleep(4)  # the slow reader under test, not a synchronisation
        rest, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        await astop(proc)
    assert (proc.returncode, err) == (0, b"")
    end = b"" if raw else b"\n"
    assert first + rest == b"".join(p + end for p in payloads)


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the command's end, the test's end)."""
    parent, child = pty.openpty()
    yield child, parent
    for fd in (child, parent):
        os.close(fd)


async def test_a_progress_line_when_stderr_is_a_terminal(
    server: NatsServer, responder: Subscriber, subject: str, terminal: tuple[int, int]
) -> None:
    await responder.stream_handler(subject, _lines_generator)
    tty, ours = terminal
    proc = await astart("request", subject, "3", "--server", server.url, stderr=tty)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        await astop(proc)
    assert proc.returncode == 0
    assert out.splitlines() == _lines(3)
    shown = await _read_all(ours)
    assert "3 replies" in shown
    assert "replies/s" in shown


async def _read_all(fd: int) -> str:
    """What was written to a terminal (its other end has nothing more to say)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------- credentials and TLS


@pytest.fixture(scope="module")
def password_server() -> Iterator[tuple[NatsServer, str]]:
    password = "pw-" + os.urandom(8).hex()
    with NatsServer(config=f'authorization {{ user: "alice", password: "{password}" }}') as srv:
        yield srv, password


async def test_credentials_from_the_environment_and_never_shown(
    password_server: tuple[NatsServer, str],
) -> None:
    srv, password = password_server
    wrong = "pw-" + os.urandom(8).hex()
    env = {"NATS_URL": srv.url, "NATS_USER": "alice"}
    status, out, err = await arun("request", "x.y", NATS_PASSWORD=wrong, **env)
    assert status == 2
    assert_one_error_line(err, "authorization violation")
    for args in (["request", "x.y", "--user", "alice", "--password", wrong], ["request", "--help"]):
        status, out, err = await arun(*args, NATS_URL=srv.url, NATS_PASSWORD=password)
        assert wrong not in out.decode() + err
        assert password not in out.decode() + err
    # The right password: the connection is made, nobody serves the subject.
    status, out, err = await arun("request", "x.y", NATS_PASSWORD=password, **env)
    assert status == 4, err


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    files = {name: str(d / name) for name in ("ca.pem", "server.pem", "server.key")}
    files |= {name: str(d / name) for name in ("client.pem", "client.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(files["server.pem"])
    server.private_key_pem.write_to_path(files["server.key"])
    client = ca.issue_cert("client@natstream.test")
    client.cert_chain_pems[0].write_to_path(files["client.pem"])
    client.private_key_pem.write_to_path(files["client.key"])
    return files


async def test_mutual_tls(tls_files: dict[str, str], subject: str) -> None:
    """A server that requires TLS and a client certificate; a responder over it."""
    conf = (
        f'tls {{ cert_file: "{tls_files["server.pem"]}", key_file: "{tls_files["server.key"]}",'
        f' ca_file: "{tls_files["ca.pem"]}", verify: true, timeout: 2 }}'
    )
    with NatsServer(config=conf) as srv:
        tls = ["--tls-ca", tls_files["ca.pem"]]
        tls += ["--tls-cert", tls_files["client.pem"], "--tls-key", tls_files["client.key"]]
        config = Config([srv.url], tls=_context(tls_files))
        async with Subscriber(config, close_grace=1.0) as sub:
            await sub.stream_handler(subject, _lines_generator)
            status, out, err = await arun("request", subject, "2", *tls, NATS_URL=srv.url)
            assert (status, err) == (0, "")
            assert out.splitlines() == _lines(2)
            # Without the client certificate the server refuses the connection.
            status, out, err = await arun(
                "request", subject, "--tls-ca", tls_files["ca.pem"], NATS_URL=srv.url
            )
            assert status == 2, err


def _context(files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=files["ca.pem"])
    context.load_cert_chain(files["client.pem"], files["client.key"])
    return context


async def test_an_nkey_seed_file_and_a_token(tmp_path: Path) -> None:
    """--nkey reads the seed from a file (never shown); NATS_TOKEN is a token."""
    nkeys = pytest.importorskip("nkeys")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    user = nkeys.from_seed(bytearray(seed))
    conf = f'authorization {{ users: [ {{ nkey: "{user.public_key.decode()}" }} ] }}'
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    with NatsServer(config=conf) as srv:
        status, _, err = await arun("request", "x.y", "--nkey", str(seed_file), NATS_URL=srv.url)
        assert status == 4, err  # connected: nobody serves the subject
        other = tmp_path / "other.nk"
        other_seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        other.write_bytes(other_seed)
        status, out, err = await arun("request", "x.y", "--nkey", str(other), NATS_URL=srv.url)
        assert status == 2
        assert other_seed.decode() not in out.decode() + err
    token = "tk-" + os.urandom(8).hex()
    with NatsServer(config=f'authorization {{ token: "{token}" }}') as srv:
        status, _, err = await arun("request", "x.y", NATS_URL=srv.url, NATS_TOKEN=token)
        assert status == 4, err
        status, out, err = await arun("request", "x.y", "--token", "nope", NATS_URL=srv.url)
        assert status == 2
        assert token not in out.decode() + err
