"""Security: TLS and every authentication method against real nats-server processes,
no secret in logs, reprs, errors or CLI output, limits, and hostile traffic.

Certificates come from ``trustme``; NKeys, operator/account/user JWTs and ``.creds``
files are made here with the ``nkeys`` package (no ``nsc``). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import json
import logging
import os
import secrets
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import trustme
from nats.aio.msg import Msg

import natstream
from natstream import (
    STREAM_END,
    STREAM_ERROR_PREFIX,
    Config,
    ConfigError,
    InvalidSubjectError,
    NoServersError,
    PayloadTooLargeError,
    Pool,
    StreamError,
    StreamOptions,
    StreamRequest,
    Subscriber,
)
from natstream._transport import flush_ordered, subscribe_live
from natstream.server import NatsServer

FAST = StreamOptions(heartbeat=0.2)
FAIL_FAST = 2.0  # seconds: a rejected connect must fail well within this


# ---------------------------------------------------------------- helpers


def ten(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    if index >= 10:
        return None, False, None
    return b"item-%d" % index, True, None


async def round_trip(config: Config, subject: str = "sec.echo") -> None:
    """A Subscriber and a Pool, both connected with ``config``, stream ten replies."""
    sub = await Subscriber.connect(config, close_grace=0.5)
    try:
        await sub.stream_subscribe_handler(subject, ten)
        async with Pool(config) as pool:
            async with pool.stream(subject, b"q", request_timeout=5) as stream:
                got = [m.data async for m in stream]
        assert got == [b"item-%d" % i for i in range(10)]
    finally:
        await sub.close()


def error_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, traceback and its whole chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), repr(getattr(e, "args", ()))]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


async def rejected(kind: type[Pool] | type[Subscriber], config: Config) -> NoServersError:
    """Connect with ``config``; return the NoServersError, checking that it came fast."""
    started = time.monotonic()
    with pytest.raises(NoServersError) as info:
        await kind.connect(config)
    assert time.monotonic() - started < FAIL_FAST, "a rejected connect must fail fast"
    return info.value


@dataclass
class LeakCheck:
    """Collects everything natstream showed; asserts that no secret is in it."""

    caplog: pytest.LogCaptureFixture
    capsys: pytest.CaptureFixture[str]
    secrets: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)

    def secret(self, prefix: str = "") -> str:
        value = prefix + secrets.token_hex(12)
        self.secrets.append(value)
        return value

    def add(self, *objects: object) -> None:
        for obj in objects:
            self.shown.append(error_text(obj) if isinstance(obj, BaseException) else repr(obj))
            self.shown.append(str(obj))

    def assert_clean(self) -> None:
        out = self.capsys.readouterr()
        records = [logging.Formatter().format(r) + repr(r.args) for r in self.caplog.records]
        haystack = "\n".join([*self.shown, *records, self.caplog.text, out.out, out.err])
        assert self.secrets, "nothing to look for"
        for value in self.secrets:
            assert value not in haystack, f"a secret leaked: {value[:6]}..."


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> LeakCheck:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="natstream")
    return LeakCheck(caplog, capsys)


def cfg(url: str | list[str], **options: Any) -> Config:
    servers = [url] if isinstance(url, str) else url
    return Config(servers, idle_per_server=1, stream=FAST, **options)


# ---------------------------------------------------------------- TLS


@dataclass
class Certs:
    ca: trustme.CA
    other_ca: trustme.CA
    server_cert: Path
    server_key: Path
    ca_file: Path

    def context(self, *, trust: trustme.CA | None = None, client: trustme.CA | None = None):  # type: ignore[no-untyped-def]
        """A client context trusting ``trust`` (our CA), with a client cert from ``client``."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        (trust or self.ca).configure_trust(ctx)
        if client is not None:
            client.issue_cert("client@natstream.test").configure_cert(ctx)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return Certs(ca, trustme.CA(), d / "server.pem", d / "server.key", d / "ca.pem")


def tls_block(certs: Certs, *, verify: bool) -> str:
    return (
        "tls {\n"
        f'  cert_file: "{certs.server_cert}"\n'
        f'  key_file: "{certs.server_key}"\n'
        f'  ca_file: "{certs.ca_file}"\n'
        f"  verify: {'true' if verify else 'false'}\n"
        "  timeout: 2\n"
        "}"
    )


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[NatsServer]:
    """Requires TLS; does not ask for client certificates."""
    with NatsServer(config=tls_block(certs, verify=False)) as srv:
        yield srv


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[NatsServer]:
    """Requires TLS and a client certificate signed by our CA."""
    with NatsServer(config=tls_block(certs, verify=True)) as srv:
        yield srv


async def test_tls_with_a_custom_ca(tls_server: NatsServer, certs: Certs) -> None:
    await round_trip(cfg(tls_server.url, tls=certs.context()))
    # The certificate names localhost too: verifying against that name works.
    await round_trip(cfg(tls_server.url, tls=certs.context(), tls_hostname="localhost"))


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_tls_untrusted_or_misnamed_server_is_refused(
    tls_server: NatsServer, certs: Certs, kind: type[Pool] | type[Subscriber]
) -> None:
    err = await rejected(kind, cfg(tls_server.url, tls=certs.context(trust=certs.other_ca)))
    assert tls_server.url in str(err)
    assert "certificate verification failed" in str(err)
    err = await rejected(kind, cfg(tls_server.url, tls=certs.context(), tls_hostname="evil.test"))
    assert "certificate verification failed" in str(err)
    assert "evil.test" in str(err)
    # No TLS configured: nats-py's default context does not trust our CA either.
    err = await rejected(kind, cfg(tls_server.url))
    assert "certificate verification failed" in str(err)


async def test_mutual_tls(mtls_server: NatsServer, certs: Certs) -> None:
    await round_trip(cfg(mtls_server.url, tls=certs.context(client=certs.ca)))


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_mutual_tls_without_a_valid_client_certificate_is_refused(
    mtls_server: NatsServer, certs: Certs, kind: type[Pool] | type[Subscriber]
) -> None:
    for ctx in (certs.context(), certs.context(client=certs.other_ca)):
        err = await rejected(kind, cfg(mtls_server.url, tls=ctx))
        assert mtls_server.url in str(err)


class PlaintextServer:
    """A fake NATS server that offers no TLS and records every byte a client sends."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PlaintextServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.10.0", "proto": 1, "headers": True}
        info |= {"max_payload": 1 << 20, "auth_required": True, "nonce": "abc"}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        try:
            await writer.drain()
            while data := await asyncio.wait_for(reader.read(4096), 2):
                self.received += data
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_tls_asked_for_never_falls_back_to_plaintext(
    server: NatsServer, certs: Certs, leaks: LeakCheck, kind: type[Pool] | type[Subscriber]
) -> None:
    """nats-py would stay in plaintext when the server offers no TLS (a downgrade that
    sends the password in the clear); natstream refuses before sending CONNECT."""
    password = leaks.secret("pw-")
    async with PlaintextServer() as fake:
        config = cfg(fake.url, tls=certs.context(), user="alice", password=password)
        err = await rejected(kind, config)
        assert "refusing to connect in plaintext" in str(err)
        assert b"CONNECT" not in fake.received
        assert password.encode() not in fake.received
    # A real server without TLS, and a tls:// URL without a context: refused too.
    err = await rejected(kind, cfg(server.url, tls=certs.context()))
    assert "does not offer it" in str(err)
    err = await rejected(kind, cfg(server.url.replace("nats://", "tls://")))
    assert "does not offer it" in str(err)
    leaks.add(err, config)
    leaks.assert_clean()


# ---------------------------------------------------------------- user/password, token


@pytest.fixture(scope="module")
def password_server() -> Iterator[tuple[NatsServer, str]]:
    password = "pw-" + secrets.token_hex(12)
    with NatsServer(config=f'authorization {{ user: "alice", password: "{password}" }}') as srv:
        yield srv, password


@pytest.fixture(scope="module")
def token_server() -> Iterator[tuple[NatsServer, str]]:
    token = "tok-" + secrets.token_hex(12)
    with NatsServer(config=f'authorization {{ token: "{token}" }}') as srv:
        yield srv, token


async def test_user_password(password_server: tuple[NatsServer, str], leaks: LeakCheck) -> None:
    srv, password = password_server
    leaks.secrets.append(password)
    config = cfg(srv.url, user="alice", password=password)
    assert password in str(config.nats_options())  # what the search below looks for
    await round_trip(config)
    # The same credentials in the URL work too, and are redacted wherever shown.
    url_config = cfg(srv.url.replace("nats://", f"nats://alice:{password}@"))
    await round_trip(url_config)
    async with Pool(url_config) as pool:
        leaks.add(pool, pool.stats(), url_config, url_config.redacted())
    sub = await Subscriber.connect(config)
    leaks.add(sub, config, config.redacted())
    await sub.close()
    leaks.assert_clean()


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_wrong_password_fails_fast_without_showing_it(
    password_server: tuple[NatsServer, str], leaks: LeakCheck, kind: type[Pool] | type[Subscriber]
) -> None:
    srv, right = password_server
    leaks.secrets.append(right)
    wrong = leaks.secret("pw-")
    for config in (
        cfg(srv.url, user="alice", password=wrong),
        cfg(srv.url.replace("nats://", f"nats://alice:{wrong}@")),
        cfg(srv.url),  # no credentials at all
    ):
        err = await rejected(kind, config)
        assert srv.url in str(err)  # names the server, without its user info
        assert "authorization violation" in str(err)
        leaks.add(err, config)
    leaks.assert_clean()


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_token(
    token_server: tuple[NatsServer, str], leaks: LeakCheck, kind: type[Pool] | type[Subscriber]
) -> None:
    srv, token = token_server
    leaks.secrets.append(token)
    if kind is Pool:  # one round trip uses both
        await round_trip(cfg(srv.url, token=token))
        await round_trip(cfg(srv.url.replace("nats://", f"nats://{token}@")))
    wrong = leaks.secret("tok-")
    for config in (cfg(srv.url, token=wrong), cfg(srv.url.replace("nats://", f"nats://{wrong}@"))):
        err = await rejected(kind, config)
        assert "authorization violation" in str(err)
        assert srv.url in str(err)
        leaks.add(err, config)
    leaks.assert_clean()


# ---------------------------------------------------------------- NKeys and JWT (.creds)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_keypair(prefix: int) -> Any:
    nkeys = pytest.importorskip("nkeys")
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def make_jwt(issuer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) signed with ``issuer``'s NKey, as nsc would write it."""
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims, "version": 2},
    }
    digest = hashlib.sha512(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest[:32]).decode().rstrip("=")
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64url(json.dumps(body).encode())
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64url(signature)}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


def user_jwt(account: Any, user: Any) -> str:
    claims = {"pub": {}, "sub": {}, **_UNLIMITED, "type": "user"}
    return make_jwt(account, user.public_key.decode(), "user", claims)


def creds_file(path: Path, jwt: str, seed: bytes) -> Path:
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


@pytest.fixture(scope="module")
def nkey_server() -> Iterator[tuple[NatsServer, Any]]:
    nkeys = pytest.importorskip("nkeys")
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    conf = f'authorization {{ users: [ {{ nkey: "{user.public_key.decode()}" }} ] }}'
    with NatsServer(config=conf) as srv:
        yield srv, user


@dataclass
class Operator:
    server: NatsServer
    account: Any
    user: Any
    creds: Path
    dir: Path


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """Operator mode: the account JWT preloaded in a memory resolver."""
    nkeys = pytest.importorskip("nkeys")
    d = tmp_path_factory.mktemp("jwt")
    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    op_pub = operator.public_key.decode()
    acct_pub = account.public_key.decode()
    (d / "operator.jwt").write_text(make_jwt(operator, op_pub, "op", {"type": "operator"}))
    limits = {**_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    account_jwt = make_jwt(
        operator, acct_pub, "acct", {"limits": {**limits, "leaf": -1}, "type": "account"}
    )
    conf = (
        f'operator: "{d / "operator.jwt"}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {acct_pub}: "{account_jwt}" }}\n'
    )
    creds = creds_file(d / "user.creds", user_jwt(account, user), user.seed)
    with NatsServer(config=conf) as srv:
        yield Operator(srv, account, user, creds, d)


async def test_nkey(nkey_server: tuple[NatsServer, Any], leaks: LeakCheck) -> None:
    srv, user = nkey_server
    seed = user.seed.decode()
    leaks.secrets.append(seed)
    config = cfg(srv.url, nkeys_seed=seed)
    await round_trip(config)
    leaks.add(config, config.redacted())
    leaks.assert_clean()


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_wrong_nkey_fails_fast(
    nkey_server: tuple[NatsServer, Any], leaks: LeakCheck, kind: type[Pool] | type[Subscriber]
) -> None:
    nkeys = pytest.importorskip("nkeys")
    srv, user = nkey_server
    leaks.secrets.append(user.seed.decode())
    other = new_keypair(nkeys.PREFIX_BYTE_USER).seed.decode()
    garbage = leaks.secret("SU")
    leaks.secrets.append(other)
    err = await rejected(kind, cfg(srv.url, nkeys_seed=other))
    assert "authorization violation" in str(err)
    leaks.add(err)
    err = await rejected(kind, cfg(srv.url, nkeys_seed=garbage))
    assert "invalid NKey seed" in str(err)
    leaks.add(err, cfg(srv.url, nkeys_seed=garbage))
    leaks.assert_clean()


async def test_creds_file_jwt(jwt_server: Operator, leaks: LeakCheck) -> None:
    text = jwt_server.creds.read_text()
    leaks.secrets += [jwt_server.user.seed.decode(), text.split("\n")[1]]
    config = cfg(jwt_server.server.url, user_credentials=str(jwt_server.creds))
    await round_trip(config)
    leaks.add(config, config.redacted())
    leaks.assert_clean()


@pytest.mark.parametrize("kind", [Pool, Subscriber])
async def test_bad_creds_fail_fast(
    jwt_server: Operator, leaks: LeakCheck, kind: type[Pool] | type[Subscriber]
) -> None:
    nkeys = pytest.importorskip("nkeys")
    d, url = jwt_server.dir, jwt_server.server.url
    leaks.secrets.append(jwt_server.user.seed.decode())
    impostor = new_keypair(nkeys.PREFIX_BYTE_USER)
    stranger = new_keypair(nkeys.PREFIX_BYTE_USER)
    unknown_account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    cases = {
        # the right JWT with somebody else's seed: the nonce signature does not match
        "wrong-seed": (user_jwt(jwt_server.account, jwt_server.user), impostor.seed),
        # a user signed by an account the server does not know
        "unknown-account": (user_jwt(unknown_account, stranger), stranger.seed),
    }
    for name, (jwt, seed) in cases.items():
        leaks.secrets += [seed.decode(), jwt]
        path = creds_file(d / f"{name}-{kind.__name__}.creds", jwt, seed)
        err = await rejected(kind, cfg(url, user_credentials=str(path)))
        assert "authorization violation" in str(err), name
        leaks.add(err)
    err = await rejected(kind, cfg(url, user_credentials=str(d / "missing.creds")))
    assert "cannot read" in str(err)
    assert "missing.creds" in str(err)
    # A server in operator mode refuses a plain connection as well.
    err = await rejected(kind, cfg(url))
    assert "authorization violation" in str(err)
    leaks.add(err)
    leaks.assert_clean()


def test_config_refuses_ambiguous_credentials_without_showing_them() -> None:
    secret = secrets.token_hex(12)
    with pytest.raises(ConfigError, match="without user") as info:
        Config(["nats://127.0.0.1:4222"], password=secret)
    assert secret not in error_text(info.value)
    with pytest.raises(ConfigError, match="one of") as info:
        Config(["nats://127.0.0.1:4222"], user_credentials="/x.creds", nkeys_seed="SU" + secret)
    assert secret not in error_text(info.value)
    config = Config([f"nats://bob:{secret}@127.0.0.1:4222"], user="u", password=secret)
    config.token = config.nkeys_seed = secret
    assert secret not in repr(config)
    assert secret not in str(config.redacted())
    assert "nats://***@127.0.0.1:4222" in repr(config)


def test_cli_never_prints_the_password_of_a_url(
    password_server: tuple[NatsServer, str], tmp_path: Path
) -> None:
    srv, right = password_server
    wrong = "pw-" + secrets.token_hex(12)
    url = srv.url.replace("nats://", f"nats://alice:{wrong}@")
    args = ["record", "sec.cli", "--dir", str(tmp_path), "--name", "x", "--server", url]
    proc = subprocess.run(
        [sys.executable, "-m", "natstream", *args], capture_output=True, text=True, timeout=30
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "authorization violation" in output
    assert srv.url in output
    assert wrong not in output
    assert right not in output


# ---------------------------------------------------------------- subjects and sizes


@pytest.fixture
async def spy(server: NatsServer) -> AsyncIterator[list[Msg]]:
    """Every message published on the server while the test runs (a ``>`` subscriber)."""
    seen: list[Msg] = []

    async def record(msg: Msg) -> None:
        seen.append(msg)

    nc = await nats.connect(server.url)
    await subscribe_live(nc, ">", record)
    yield seen
    await nc.close()


BAD_REQUEST_SUBJECTS = ["", " ", "a b", "a\tb", "a.*", "a.>", ">", "a..b", ".a", "a.", "a*b"]


async def test_bad_subjects_are_refused_before_anything_is_sent(
    server: NatsServer, spy: list[Msg]
) -> None:
    async with Pool(cfg(server.url)) as pool:
        for subject in BAD_REQUEST_SUBJECTS:
            with pytest.raises(InvalidSubjectError) as info:
                await pool.stream_request(subject, b"q", lambda m: True)
            assert info.value.subject == subject or subject.strip() == ""
            with pytest.raises(InvalidSubjectError):
                async with pool.stream(subject, b"q"):
                    pass
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    try:
        for subject in ["", "a b", "a.>.b", "a*", "a.b*", "a..b", "a.\n"]:
            with pytest.raises(InvalidSubjectError):
                await sub.stream_subscribe_handler(subject, ten)
            with pytest.raises(InvalidSubjectError):
                await sub.stream_handler(subject, _never)
        with pytest.raises(InvalidSubjectError, match="queue"):
            await sub.stream_subscribe_handler("sec.ok", ten, queue="q 1")
        await sub.stream_subscribe_handler("sec.subjects.ok", ten)  # still usable
        await flush_ordered(sub.nc)
    finally:
        await sub.close()
    assert not [m for m in spy if not m.subject.startswith(("_INBOX", "$SYS"))]


async def _never(request: StreamRequest) -> AsyncIterator[bytes]:
    yield b""


@pytest.fixture(scope="module")
def small_server() -> Iterator[NatsServer]:
    with NatsServer(config="max_payload: 65536") as srv:
        yield srv


async def test_reply_over_max_payload_fails_on_both_sides(
    small_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="natstream")

    def big(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        size = 70_000 if request.data == b"big" else 60_000
        return (b"x" * size if index < 2 else None), index < 2, None

    def batch(request: StreamRequest, index: int) -> tuple[list[bytes], bool, None]:
        return [b"ok", b"y" * 70_000, b"never"], False, None

    sub = await Subscriber.connect(small_server.url, close_grace=0.5)
    try:
        await sub.stream_subscribe_handler("sec.big", big)
        await sub.batch_stream_subscribe_handler("sec.batch", batch)
        async with Pool(cfg(small_server.url)) as pool:
            got: list[bytes] = []
            with pytest.raises(StreamError) as info:
                await pool.stream_request("sec.big", b"big", lambda m: got.append(m.data) or True)
            assert info.value.code == 413
            assert not info.value.retryable
            assert "max_payload" in info.value.message
            assert got[-1].startswith(STREAM_ERROR_PREFIX)
            # Logged where it was produced, naming the server's limit.
            assert "payload of 70000 bytes exceeds" in caplog.text
            assert "max_payload of 65536" in caplog.text
            # Not retried (413 is final), and the responder keeps serving.
            with pytest.raises(StreamError):
                await pool.stream_request_with_retry("sec.big", b"big", 3, 0.01, lambda m: True)
            async with pool.stream("sec.big", b"small", request_timeout=5) as stream:
                assert [len(m.data) async for m in stream] == [60_000, 60_000]
            got = []
            with pytest.raises(StreamError) as info:
                await pool.stream_request("sec.batch", b"", lambda m: got.append(m.data) or True)
            assert info.value.code == 413
            assert got[0] == b"ok"
            # A request over max_payload is refused by the requester, before sending.
            with pytest.raises(PayloadTooLargeError) as too_big:
                await pool.stream_request("sec.big", b"r" * 70_000, lambda m: True)
            assert too_big.value.size == 70_000
    finally:
        await sub.close()


async def test_request_over_max_request_size_gets_413(server: NatsServer) -> None:
    sub = await Subscriber.connect(server.url, max_request_size=1000, close_grace=0.5)
    try:
        handle = await sub.stream_subscribe_handler("sec.limit", ten)
        async with Pool(cfg(server.url)) as pool:
            with pytest.raises(StreamError) as info:
                await pool.stream_request_with_retry("sec.limit", b"r" * 1001, 3, 0.01, _true)
            assert info.value.code == 413
            assert not info.value.retryable
            assert "1001 bytes exceeds the limit of 1000" in info.value.message
            await pool.stream_request("sec.limit", b"r" * 1000, _true)
        st = handle.stats()
        assert st.streams_started == 1  # the rejected one never started
        assert st.requests_rejected_invalid == 1
        assert st.last_error == "413 request of 1001 bytes exceeds the limit of 1000"
        assert sub.stats().requests_rejected_invalid == 1
    finally:
        await sub.close()


def _true(msg: Msg) -> bool:
    return True


@pytest.mark.parametrize("send_text", [False, True])
async def test_handler_exception_text_is_sent_only_on_opt_in(
    server: NatsServer, caplog: pytest.LogCaptureFixture, send_text: bool
) -> None:
    caplog.set_level(logging.ERROR, logger="natstream")
    detail = "db password " + secrets.token_hex(8)

    def failing(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
        if index == 2:
            raise ValueError(detail)
        return b"x", True, None

    sub = await Subscriber.connect(server.url, send_exception_text=send_text, close_grace=0.5)
    try:
        await sub.stream_subscribe_handler("sec.raise", failing)
        async with Pool(cfg(server.url)) as pool:
            with pytest.raises(StreamError) as info:
                await pool.stream_request("sec.raise", b"", _true)
            error_id = info.value.message.rpartition("error id ")[2].rstrip(")")
            assert len(error_id) == 12
            if send_text:
                assert f"ValueError: {detail}" in info.value.message
            else:
                assert detail not in error_text(info.value)
                assert info.value.message == f"internal error (error id {error_id})"
            assert info.value.code == 500
            # The traceback is logged locally, under the same id.
            (record,) = [r for r in caplog.records if error_id in r.getMessage()]
            assert record.exc_info is not None
            assert detail in caplog.text
            await pool.stream_request("sec.raise", b"", lambda m: m.data != b"x")  # still serving
    finally:
        await sub.close()


def test_documented_limit_defaults() -> None:
    """docs/security.md states these defaults; keep them in step."""
    params = inspect.signature(Subscriber.__init__).parameters
    assert params["max_concurrent_streams"].default == 1000
    assert params["max_stream_duration"].default is None
    assert params["max_request_size"].default is None
    assert params["send_exception_text"].default is False
    assert 0 < params["close_grace"].default <= 5


# ---------------------------------------------------------------- hostile traffic

BASE = {"Ns-V": "1", "Ns-Win": "4 1000", "Ns-Hb": "100"}
HOSTILE_HEADERS: list[dict[str, str]] = [
    {"Ns-V": "2"},
    {"Ns-V": "\uff11"},
    {"Ns-V": "1" * 5000},
    {"Ns-V": "1", "Ns-Win": "", "Ns-Hb": ""},
    *({"Ns-Win": w} for w in ["0 0", "-1 -1", "1", "1 2 3", "nan nan", "\uff11 \uff11", "4  1000"]),
    *({"Ns-Win": w} for w in ["99999999999999999999999 1", "1 " + "9" * 40, "9" * 20 + " 9"]),
    *({"Ns-Hb": h} for h in ["-5", "99999999999", "\uff11\uff10", "1e3", "0x10", " 100", "\u0663"]),
    *({"Ns-Dl": d} for d in ["-1", "9" * 21, "\u0663", "", "1.5"]),
    *(
        {"Ns-Resume": r}
        for r in ["-1 0", "1 x", "1 1.2.3", "9" * 21 + " 1", "\uff11 \uff11", "1", ""]
    ),
    {"Ns-Resume": "9007199254740992 9999999999999999"},  # valid, absurd: index handler
    {"Ns-Win": "9007199254740992 9007199254740992", "Ns-Hb": "3600000", "Ns-Dl": "0"},
]

# Header blocks nats-py would never produce, sent over a raw socket.
RAW_HEADER_BLOCKS = [
    b"GARBAGE\r\n\r\n",
    b"NATS/1.0\r\nNs-V\r\n\r\n",
    b"NATS/1.0\r\nNs-V: \xff\xfe\r\nNs-Win: \x00\x01\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 999 d\xc3\xa9j\xc3\xa0\r\nNs-V: 1\r\n\r\n",
    b"NATS/1.0\r\nNs-V: 1\r\nNs-V: 1\r\nNs-Win: 4 1000\r\nNs-Hb: 100\r\n\r\n",
    b"NATS/1.0\r\n" + b"X-Pad: " + b"p" * 2000 + b"\r\n" * 50 + b"\r\n",
]


async def _raw_client(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readline()  # INFO
    writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    return reader, writer


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """PING, and wait for the PONG: the server has processed what was written before."""
    writer.write(b"PING\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        while (line := await reader.readline()) and not line.startswith(b"PONG"):
            assert not line.startswith(b"-ERR"), line


async def raw_publish(url: str, subject: str, reply: str, blocks: list[bytes]) -> None:
    """Publish with hand-made header blocks (HPUB), bypassing every client check."""
    reader, writer = await _raw_client(url)
    try:
        for block in blocks:
            payload = b"req"
            size = len(block) + len(payload)
            writer.write(
                f"HPUB {subject} {reply} {len(block)} {size}\r\n".encode() + block + payload
            )
            writer.write(b"\r\n")
        await _round_trip(reader, writer)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_garbage_request_headers_never_crash_the_responder(
    server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    nc = await nats.connect(server.url)
    try:
        handle = await sub.stream_subscribe_handler("sec.hostile", ten)
        first: dict[str, Msg] = {}
        all_answered = asyncio.Event()
        expected = len(HOSTILE_HEADERS) + len(RAW_HEADER_BLOCKS)

        async def on_reply(msg: Msg) -> None:
            first.setdefault(msg.subject, msg)
            if len(first) == expected:
                all_answered.set()

        await subscribe_live(nc, "_INBOX.hostile.>", on_reply)
        inboxes = []
        for i, override in enumerate(HOSTILE_HEADERS):
            inbox = f"_INBOX.hostile.{i}"
            inboxes.append(inbox)
            await nc.publish("sec.hostile", b"", reply=inbox, headers={**BASE, **override})
        await nc.publish("sec.hostile", b"no reply subject", headers=BASE)
        raw = [f"_INBOX.hostile.raw{i}" for i in range(len(RAW_HEADER_BLOCKS))]
        for inbox, block in zip(raw, RAW_HEADER_BLOCKS, strict=True):
            await raw_publish(server.url, "sec.hostile", inbox, [block])
        inboxes += raw
        await flush_ordered(nc)
        await asyncio.wait_for(all_answered.wait(), 5)
        for inbox in inboxes:
            msg = first[inbox]
            headers = msg.headers or {}
            if "Nats-Service-Error-Code" in headers:  # refused: a clear 400
                assert headers["Nats-Service-Error-Code"] == "400", headers
                assert msg.data.startswith(STREAM_ERROR_PREFIX + b"malformed") or (
                    msg.data.startswith(STREAM_ERROR_PREFIX + b"unsupported protocol version")
                )
                assert len(msg.data) < 200  # hostile values are not echoed at length
            else:  # accepted as valid (clamped) or as a plain requester
                assert "Ns-Seq" in headers or msg.data == b"item-0", (inbox, msg)
        # Streams nobody acknowledges stop by themselves (requester gone, 3 x 100 ms),
        # except those that turned heartbeats off: cancel them as their owner would.
        for stream in list(sub._dispatch.controls.values()):
            await nc.publish(stream.control_subject or "", b"", headers={"Ns-Ctl": "cancel"})
        await flush_ordered(nc)
        await asyncio.wait_for(handle.wait_idle(), 5)
        assert sub.nc.is_connected
        async with Pool(cfg(server.url)) as pool:
            async with pool.stream("sec.hostile", b"q", request_timeout=5) as stream:
                assert len([m async for m in stream]) == 10
    finally:
        await nc.close()
        await sub.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_forged_control_messages_cannot_touch_another_stream(server: NatsServer) -> None:
    """Cancels, acks and heartbeats for made-up control subjects under the subscriber's
    prefix, and implausible acks on a stream's real control subject, change nothing:
    the victim's responder stays inside its window and the stream ends normally."""
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    mallory = await nats.connect(server.url)
    try:
        handle = await sub.stream_subscribe_handler("sec.victim", _forty)
        window = StreamOptions(window_messages=4, window_bytes=1 << 20, heartbeat=0.2)
        async with Pool(Config([server.url], idle_per_server=1, stream=window)) as pool:
            # Mallory is a legitimate requester too: her own stream shows her the prefix.
            own = await mallory.request(
                "sec.victim", b"", headers={**BASE, "Ns-Win": "1 1"}, timeout=5
            )
            prefix, _, own_token = own.reply.rpartition(".")
            assert prefix == sub._dispatch.control_prefix
            async with pool.stream("sec.victim", b"q", request_timeout=5) as stream:
                it = aiter(stream)
                got = [(await anext(it)).data]
                async with asyncio.timeout(5):  # until the responder is blocked on credit
                    while True:
                        streams = sub._dispatch.controls.values()
                        (victim,) = [s for s in streams if s.token != own_token]
                        if victim.machine.sent_seq == 4:
                            break
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # and stays there: the window is 4
                assert victim.machine.sent_seq == 4
                forged = [
                    {"Ns-Ctl": "cancel"},
                    {"Ns-Ctl": "ack", "Ns-Ack": "40 4000"},
                    {"Ns-Ctl": "hb", "Ns-Ack": "9007199254740992 9007199254740992"},
                ]
                for _ in range(20):
                    token = secrets.token_hex(12)
                    for headers in forged:
                        await mallory.publish(f"{prefix}.{token}", b"", headers=headers)
                near = victim.token[:-1] + ("1" if victim.token.endswith("0") else "0")
                for subject in (prefix, f"{prefix}.{near}", f"{prefix}.a.b"):
                    await mallory.publish(subject, b"", headers={"Ns-Ctl": "cancel"})
                # Even knowing the victim's control subject (leaked), implausible acks
                # (beyond what was sent, going backwards, malformed) are ignored.
                for ack in ["1000 1000000", "4 999999", "0 99999", "-1 0", "x y", "", "5 5"]:
                    await mallory.publish(
                        victim.control_subject or "",
                        b"",
                        headers={"Ns-Ctl": "ack", "Ns-Ack": ack},
                    )
                await mallory.publish(f"{prefix}.{own_token}", b"", headers={"Ns-Ctl": "cancel"})
                await flush_ordered(mallory)
                await asyncio.sleep(0.2)
                assert victim.machine.sent_seq == 4  # no credit was forged
                assert not victim.machine.terminal
                got += [m.data async for m in it]
        assert got == [b"%d" % i for i in range(40)]
        await asyncio.wait_for(handle.wait_idle(), 5)
        stats = handle.stats()
        assert (stats.streams_completed, stats.streams_cancelled) == (1, 1)  # hers, cancelled
    finally:
        await mallory.close()
        await sub.close()


async def test_plausible_forged_ack_is_caught_by_the_requester(server: NatsServer) -> None:
    """Whoever learns a stream's control subject (it travels in the reply field, so a
    reader of the inbox has it) can forge a plausible ack. The responder then sends
    beyond the real window; the requester notices and fails the stream, rather than
    buffering past its window or delivering anything out of order."""
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    mallory = await nats.connect(server.url)
    try:
        await sub.stream_subscribe_handler("sec.leaked", _forty)
        window = StreamOptions(window_messages=4, window_bytes=1 << 20, heartbeat=0.2)
        async with Pool(Config([server.url], idle_per_server=1, stream=window)) as pool:
            got: list[bytes] = []

            async def consume() -> None:
                async with pool.stream("sec.leaked", b"q", request_timeout=5) as stream:
                    async for msg in stream:
                        got.append(msg.data)
                        if len(got) == 1:
                            await asyncio.sleep(0.3)  # the responder waits for credit
                            (victim,) = sub._dispatch.controls.values()
                            headers = {"Ns-Ctl": "ack", "Ns-Ack": "3 3"}
                            await mallory.publish(
                                victim.control_subject or "", b"", headers=headers
                            )
                            await flush_ordered(mallory)
                            await asyncio.sleep(0.3)

            with pytest.raises(natstream.ProtocolViolationError, match="window") as info:
                await consume()
            assert not info.value.retryable
            assert got == [b"%d" % i for i in range(len(got))]  # in order, no gap
            assert len(got) <= 4
    finally:
        await mallory.close()
        await sub.close()


def _forty(request: StreamRequest, index: int) -> tuple[bytes | None, bool, None]:
    return (b"%d" % index if index < 40 else None), index < 40, None


async def test_forged_replies_to_a_requester_inbox_are_ignored(server: NatsServer) -> None:
    """Someone who learnt a requester's inbox (here: by also subscribing to the request
    subject) sends it replies that are not from the responder it is bound to."""
    release = asyncio.Event()

    async def slow(request: StreamRequest) -> AsyncIterator[bytes]:
        for i in range(10):
            if i == 5:
                await release.wait()
            yield b"real-%d" % i

    sub = await Subscriber.connect(server.url, close_grace=0.5)
    mallory = await nats.connect(server.url)
    inbox: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    to_fake_control: list[Msg] = []

    async def on_request(msg: Msg) -> None:
        if not inbox.done():
            inbox.set_result(msg.reply)

    async def on_fake_control(msg: Msg) -> None:
        to_fake_control.append(msg)

    try:
        await sub.stream_handler("sec.inbox", slow)
        await subscribe_live(mallory, "sec.inbox", on_request)
        await subscribe_live(mallory, "_INBOX.mallory.>", on_fake_control)
        fake = "_INBOX.mallory.ctl"
        async with Pool(cfg(server.url)) as pool:
            async with pool.stream("sec.inbox", b"q", request_timeout=5) as stream:
                it = aiter(stream)
                got = [(await anext(it)).data]  # bound to the real responder now
                target = await inbox
                forgeries: list[tuple[bytes, dict[str, str] | None, str]] = [
                    (b"forged-v1", {"Ns-Seq": "2"}, fake),
                    (b"forged-plain", None, ""),
                    (b"forged-no-reply", {"Ns-Seq": "2"}, ""),
                    (STREAM_END, {"Ns-End": "1", "Ns-Seq": "1"}, fake),
                    (STREAM_END, None, ""),
                    (STREAM_ERROR_PREFIX + b"forged", None, ""),
                    (
                        STREAM_ERROR_PREFIX + b"forged",
                        {"Ns-Seq": "1", "Nats-Service-Error": "forged"}
                        | {"Nats-Service-Error-Code": "500", "Ns-Retry": "0"},
                        fake,
                    ),
                    (b"", {"Ns-Ctl": "hb", "Ns-Seq": "99"}, fake),
                ]
                for payload, headers, reply in forgeries:
                    await mallory.publish(target, payload, reply=reply, headers=headers)
                await flush_ordered(mallory)
                await asyncio.sleep(0.1)
                release.set()
                got += [m.data async for m in it]
        assert got == [b"real-%d" % i for i in range(10)]
        # At most a cancel went back to the impostor's control subject, nothing else.
        assert all((m.headers or {}).get("Ns-Ctl") == "cancel" for m in to_fake_control)
    finally:
        await mallory.close()
        await sub.close()


LOCKED_DOWN = """
authorization {
  users: [
    { user: "responder", password: "%(rpw)s", permissions: {
        publish: { deny: ">" }
        subscribe: { allow: ["svc.>", "_INBOX_responder.>"] }
        allow_responses: { max: -1 } } }
    { user: "requester", password: "%(qpw)s", permissions: {
        publish: { allow: ["svc.>"] }
        subscribe: { allow: ["_INBOX_requester.>"] }
        allow_responses: { max: -1 } } }
    { user: "mallory", password: "%(mpw)s", permissions: {
        publish: { allow: ["svc.>"] }
        subscribe: { allow: ["_INBOX_mallory.>"] } } }
  ]
}
"""


async def test_locked_down_accounts_with_inbox_prefixes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The setup docs/security.md recommends: each user subscribes only to its own
    inbox prefix and publishes replies only through allow_responses."""
    caplog.set_level(logging.DEBUG, logger="natstream")
    pw = {k: secrets.token_hex(8) for k in ("rpw", "qpw", "mpw")}
    denied: list[str] = []

    async def mallory_errors(exc: Exception) -> None:
        denied.append(str(exc).lower())

    with NatsServer(config=LOCKED_DOWN % pw) as srv:
        responder = Config(
            [srv.url], user="responder", password=pw["rpw"], inbox_prefix="_INBOX_responder"
        )
        requester = Config(
            [srv.url],
            user="requester",
            password=pw["qpw"],
            inbox_prefix="_INBOX_requester",
            idle_per_server=1,
            stream=StreamOptions(window_messages=8, heartbeat=0.2),
        )
        sub = await Subscriber.connect(responder, close_grace=0.5)
        mallory = await nats.connect(
            srv.url, user="mallory", password=pw["mpw"], error_cb=mallory_errors
        )
        try:
            handle = await sub.stream_subscribe_handler("svc.data", _forty)
            async with Pool(requester) as pool:
                async with pool.stream("svc.data", b"q", request_timeout=5) as stream:
                    it = aiter(stream)
                    got = [(await anext(it)).data]
                    (victim,) = sub._dispatch.controls.values()
                    # Mallory cannot reach the control subject, nor read any inbox.
                    await mallory.publish(
                        victim.control_subject or "", b"", headers={"Ns-Ctl": "cancel"}
                    )
                    await mallory.subscribe("_INBOX_requester.>")
                    await mallory.flush()
                    got += [m.data async for m in it]
            assert got == [b"%d" % i for i in range(40)]
            await asyncio.wait_for(handle.wait_idle(), 5)
            assert handle.stats().streams_completed == 1
            assert any("permissions violation for publish" in e for e in denied), denied
            assert any("permissions violation for subscription" in e for e in denied), denied
            # natstream's own users never hit their permissions (logged at DEBUG if so).
            assert "permissions violation" not in caplog.text.lower()
        finally:
            await mallory.close()
            await sub.close()


# A status line whose description is not UTF-8: nats-py's header parser raises on it
# inside its read loop, which then stops reading for good.
BAD_STATUS_LINE = b"NATS/1.0 999 \xff\xff\r\nNs-V: 1\r\n\r\n"


@contextlib.asynccontextmanager
async def still_serving(server: NatsServer, subject: str, target: str) -> AsyncIterator[str]:
    """A subscriber serving ``subject``: the block gets where to send something hostile
    (``target``: the request subject, or a control subject of that subscriber); after
    the block, a stream on ``subject`` must still complete."""
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    try:
        await sub.stream_subscribe_handler(subject, ten)
        if target == "control subject":
            yield f"{sub._dispatch.control_prefix}.{secrets.token_hex(12)}"
        else:
            yield subject
        async with Pool(cfg(server.url)) as pool:
            await pool.stream_request_with_timeout(subject, b"", 1.0, 3.0, _true)
    finally:
        await sub.close()


@pytest.mark.fast_paths
@pytest.mark.parametrize("target", ["request subject", "control subject"])
async def test_non_utf8_status_line_does_not_deafen_the_responder(
    server: NatsServer, target: str
) -> None:
    async with still_serving(server, "sec.status", target) as subject:
        await raw_publish(server.url, subject, "_INBOX.status.x", [BAD_STATUS_LINE])


ENDLESS_RESPONDER = """
import asyncio, sys
from natstream import Subscriber

async def main(url, subject):
    sub = await Subscriber.connect([url])
    async def endless(request):
        while True:
            yield b"x"
    await sub.stream_handler(subject, endless)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_absurd_resume_does_not_freeze_a_generator_responder(server: NatsServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENDLESS_RESPONDER, server.url, "sec.endless",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    nc = await nats.connect(server.url)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        headers = {**BASE, "Ns-Resume": "9007199254740992 0"}
        await nc.publish("sec.endless", b"", reply=nc.new_inbox(), headers=headers)
        await nc.flush()
        async with Pool(cfg(server.url)) as pool:
            await pool.stream_request_with_timeout(
                "sec.endless", b"", 1.0, 3.0, lambda m: m.data != b"x"
            )
    finally:
        await nc.close()
        proc.kill()
        await proc.wait()


@pytest.mark.fast_paths
@pytest.mark.parametrize("target", ["request subject", "control subject"])
async def test_a_non_utf8_reply_subject_does_not_deafen_the_responder(
    server: NatsServer, target: str
) -> None:
    """Anyone allowed to publish on the service subject picks the reply subject, and
    the server passes any bytes on: decoding it must not stop the read loop."""
    async with still_serving(server, "sec.utf8", target) as subject:
        reader, writer = await _raw_client(server.url)
        try:
            writer.write(b"PUB " + subject.encode() + b" in\xffbox 1\r\nx\r\n")
            await _round_trip(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.fast_paths
async def test_a_non_utf8_reply_from_a_hostile_responder_does_not_deafen_the_requester(
    server: NatsServer,
) -> None:
    reader, writer = await _raw_client(server.url)
    writer.write(b"SUB sec.hostile 1\r\n")
    await _round_trip(reader, writer)

    async def hostile() -> None:
        while line := await reader.readline():
            if line.startswith((b"MSG", b"HMSG")):
                parts = line.split()
                await reader.readexactly(int(parts[-1]) + 2)
                writer.write(b"PUB " + parts[3] + b" bad\xffreply 2\r\nhi\r\n")
                await writer.drain()
            elif line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()

    task = asyncio.create_task(hostile())
    sub = await Subscriber.connect(server.url, close_grace=0.5)
    try:
        await sub.stream_subscribe_handler("sec.fine", ten)
        async with Pool(cfg(server.url)) as pool:
            with pytest.raises(natstream.StreamFailure):
                await pool.stream_request_with_timeout("sec.hostile", b"", 0.5, 2.0, _true)
            # The same connection still reads: a normal stream completes.
            seen: list[bytes] = []
            await pool.stream_request("sec.fine", b"", lambda m: seen.append(m.data) or True)
            assert len(seen) == 11
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
        await writer.wait_closed()
        await sub.close()
