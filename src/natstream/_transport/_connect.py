"""Opening a connection: TLS downgrade refusal, bounded first connects, and the
translation of connect failures into reasons that never hold credentials."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client

from .._errors import ConfigError, NatstreamError
from ._client import FastClient
from ._compat import fast_paths, missing_tls_check_names
from ._link import Link, PlainLink

__all__ = ["connect", "is_rejection", "safe_server", "translate_connect_error"]

log = logging.getLogger("natstream")

_DISCARD_TIMEOUT = 0.5  # seconds allowed to close a connection whose connect failed

Callback = Callable[[], Awaitable[None]]


def safe_server(url: str) -> str:
    """The URL with any ``user:password@`` or ``token@`` removed, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host = rest.rpartition("@")[2]
    return f"{scheme}{sep}{host}"


def _wants_tls(servers: list[str], options: dict[str, Any]) -> bool:
    """Whether the caller asked for TLS: a ``tls`` context, or a ``tls://`` URL."""
    return options.get("tls") is not None or any(s.startswith("tls://") for s in servers)


def _transport_is_tls(nc: Client) -> bool:
    # nats-py upgrades to TLS only when the server's INFO says tls_required, and keeps
    # the upgraded stream in its transport's writer; nothing public tells which it is.
    writer = getattr(nc._transport, "_io_writer", None)
    if writer is not None:
        return writer.get_extra_info("ssl_object") is not None
    server = nc._current_server
    return server is not None and server.uri.scheme == "wss"


def _refuse_plaintext(nc: Client) -> None:
    """Make ``nc`` refuse to send CONNECT (and so any credential) without TLS.

    nats-py silently stays in plaintext when the server does not require TLS, even
    with a TLS context configured or a ``tls://`` URL: a downgrade that would send the
    password or token in the clear. Its CONNECT line is built just after the TLS
    upgrade, on first connects and reconnects alike, so the check goes there.
    """
    build = nc._connect_command

    def checked_connect_command() -> bytes:
        if not _transport_is_tls(nc):
            raise nats.errors.SecureConnWantedError
        return build()

    nc._connect_command = checked_connect_command  # type: ignore[method-assign]


async def connect(
    servers: list[str],
    options: dict[str, Any],
    *,
    allow_reconnect: bool,
    disconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    lame_duck_cb: Callback | None = None,
    error_counter: Callable[[Exception], None] | None = None,
) -> Link:
    """Open a connection; errors are logged without credentials.

    The link is a :class:`FastClient` unless the fast paths are off
    (:func:`~._compat.fast_paths`), then a :class:`PlainLink` over nats-py's client.

    A rejection that retrying cannot fix (wrong credentials, an untrusted or missing
    certificate, a server that does not offer the TLS asked for, an unreadable
    credentials file: see :func:`is_rejection`) fails the first connect at once, once
    every listed server has rejected it, instead of retrying until the timeout. With
    TLS asked for (``tls`` option or a ``tls://`` URL), credentials are never sent over
    a plaintext connection, on reconnects too.

    Cancellation closes the half-open connection and propagates.

    Raises:
        whatever nats-py raises on a failed connect, or the rejection (the caller
        translates it with :func:`translate_connect_error`); TimeoutError when the
        first connect takes longer than ``connect_timeout`` x 2 per server + 1 s.
    """
    rejections: list[BaseException] = []
    rejected = asyncio.Event()
    first_connect_done = False

    async def error_cb(exc: Exception) -> None:
        if error_counter is not None:
            error_counter(exc)
        if isinstance(exc, nats.errors.SlowConsumerError):
            log.warning("slow consumer on %s: messages dropped", exc.subject)
            return
        # A FastClient reports refusals itself (with the subject's case kept).
        if not link.fast and link.denials.server_error(str(exc)):
            return
        log.debug("nats connection error: %s", translate_connect_error(exc))
        if not first_connect_done and is_rejection(exc):
            rejections.append(exc)
            # Each listed server gets its chance before the connect is given up.
            if len(rejections) >= len(servers):
                rejected.set()

    kwargs: dict[str, Any] = dict(options)
    kwargs.update(
        servers=servers,
        allow_reconnect=allow_reconnect,
        error_cb=error_cb,
        # nats-py counts attempts per server and treats 0 and -1 as "forever" on the
        # first connect; 1 means: try each server twice, then raise NoServersError.
        # The first connect fails that way with reconnects on too; once connected, a
        # reconnecting connection retries for ever (set below).
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
    )
    if disconnected_cb is not None:
        kwargs["disconnected_cb"] = disconnected_cb
    if closed_cb is not None:
        kwargs["closed_cb"] = closed_cb
    if reconnected_cb is not None:
        kwargs["reconnected_cb"] = reconnected_cb
    if lame_duck_cb is not None:
        kwargs["lame_duck_mode_cb"] = lame_duck_cb
    if not allow_reconnect:
        kwargs["dont_randomize"] = True
    nc: Client = FastClient() if fast_paths() else Client()
    link: Link = nc if isinstance(nc, FastClient) else PlainLink(nc)
    if _wants_tls(servers, options):
        missing = missing_tls_check_names()
        if missing:
            raise ConfigError(
                "TLS was asked for, but the installed nats-py lacks "
                f"{', '.join(missing)}, which natstream needs to make sure credentials "
                "never go out in plaintext; install a nats-py version natstream supports"
            )
        _refuse_plaintext(nc)
    # A bound on the whole first connect, whatever nats-py does meanwhile.
    first_connect = float(options.get("connect_timeout", 2.0)) * 2 * len(servers) + 1.0
    connecting = asyncio.create_task(nc.connect(**kwargs), name="natstream-connect")
    gave_up = asyncio.create_task(rejected.wait(), name="natstream-connect-rejected")
    try:
        async with asyncio.timeout(first_connect):
            await asyncio.wait({connecting, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            raise rejections[-1]
        connecting.result()
        if allow_reconnect:
            nc.options["max_reconnect_attempts"] = -1
    except BaseException:
        for task in (connecting, gave_up):
            task.cancel()
        await asyncio.gather(connecting, gave_up, return_exceptions=True)
        await _discard(nc)
        raise
    finally:
        first_connect_done = True
        gave_up.cancel()
    return link


async def _discard(nc: Client) -> None:
    """Close a connection whose first connect failed, within a bounded time.

    After a failed TLS handshake nats-py's ``close()`` never returns: it waits for the
    plaintext stream, whose socket asyncio already closed under it.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_DISCARD_TIMEOUT):
            await nc.close()


_AUTH_FAILED = "authorization violation: the server rejected the credentials"
# Fragments of the server's -ERR text (lower case), as nats-py passes them on.
_REJECTION_TEXT = {
    "authorization violation": _AUTH_FAILED,
    "authentication expired": "the credentials have expired",
    "authentication revoked": "the credentials have been revoked",
}


def _describe(exc: BaseException) -> tuple[str, bool]:
    """(reason without credentials, whether retrying the same server cannot help)."""
    if isinstance(exc, NatstreamError):
        return str(exc), False
    if isinstance(exc, nats.errors.AuthorizationError):
        return _AUTH_FAILED, True
    if isinstance(exc, nats.errors.SecureConnWantedError):
        return (
            "TLS was asked for (Config.tls or a tls:// URL) but the server does not offer "
            "it; refusing to connect in plaintext",
            True,
        )
    if isinstance(exc, nats.errors.SecureConnRequiredError):
        return "the server requires TLS: set Config.tls", True
    if isinstance(exc, nats.errors.InvalidUserCredentialsError):
        return "the credentials file (user_credentials) holds no valid user JWT", True
    if isinstance(exc, nats.errors.NoServersError):
        return "connection refused or unreachable", False
    if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
        return "timed out", False
    if isinstance(exc, nats.errors.Error):
        text = str(exc).lower()
        for fragment, reason in _REJECTION_TEXT.items():
            if fragment in text:
                return reason, True
        # Server -ERR texts name limits and subjects, never the client's secrets.
        return str(exc).removeprefix("nats: ").strip("'")[:200], False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed: {exc.verify_message} "
            "(Config.tls must trust the CA that signed the server's certificate)",
            True,
        )
    if isinstance(exc, ssl.SSLError):
        # e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED: the server wants a client certificate.
        reason = exc.reason or type(exc).__name__
        return f"TLS handshake failed: {reason}", "CERTIFICATE" in reason or "UNKNOWN_CA" in reason
    if type(exc).__module__.partition(".")[0] == "nkeys":
        # nkeys' messages are fixed texts ("nkeys: invalid seed"), never the key itself.
        return f"invalid NKey seed or credentials ({exc})", True
    if isinstance(exc, ImportError) and exc.name == "nkeys":
        return "NKey and .creds authentication need the nkeys package: pip install nkeys", True
    if isinstance(exc, OSError) and exc.filename is not None:
        # Reading the credentials file failed; its path is not a secret.
        return f"cannot read {exc.filename}: {exc.strerror}", True
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}", False
    return type(exc).__name__, False


def is_rejection(exc: BaseException) -> bool:
    """Whether a connect failure is one that retrying the same server cannot fix:
    wrong, expired or revoked credentials, an unreadable credentials file, a
    certificate that does not verify, or TLS asked for and not offered."""
    return _describe(exc)[1]


def translate_connect_error(exc: BaseException) -> str:
    """A short reason for a failed connect, never including credentials.

    Only fixed texts, the server's error text, certificate verification messages and
    file names go into it: never a password, token, seed, JWT or a URL's user info.
    """
    return _describe(exc)[0]
