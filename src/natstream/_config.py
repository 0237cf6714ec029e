"""Configuration of pools and subscribers (plain data, no I/O)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ._errors import ConfigError

__all__ = ["Config", "StreamOptions", "as_config"]

_SECRET_FIELDS = frozenset({"password", "token", "nkeys_seed"})


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Flow control and liveness of streams (requester side; sent to the responder).

    Attributes:
        window_messages: data messages the responder may have in flight unacknowledged
            (16,384: small messages and packed items keep streaming while an ack
            travels and while the other processes of a busy machine wait for a core;
            the requester holds at most about 1 KiB of bookkeeping per unpacked
            message on top). Packed items count one by one. A pool grants a stream at
            most its budget (``Config.window_budget_*``; half of what is left while
            other streams are open: ``docs/operations.md``).
        window_bytes: payload bytes the responder may have in flight (a single message
            larger than this still moves, alone). Memory held for one stream on the
            requester is bounded by the window.
        heartbeat: seconds between heartbeats in both directions while a stream is
            quiet; 0 turns heartbeats and stall detection off.
        stall_factor: heartbeat intervals without any message before the responder is
            declared stalled (:class:`StalledError`, retryable).
        resume: on retry, continue after the last message the handler accepted (no
            duplicates, no gap); False restarts from the beginning (the handler sees the
            first replies again).
        plain_end: how a plain responder (one that speaks only the in-band markers)
            ends its streams: ``"marker"``, with ``__STREAM_END__``; or ``"empty"``:
            an empty message ends them too, as responders of the NATS request-many
            pattern (ADR-47) send. natstream responders are not affected: their
            replies carry sequence numbers, and an empty one is data.
    """

    window_messages: int = 16384
    window_bytes: int = 8 << 20
    heartbeat: float = 1.0
    stall_factor: float = 3.0
    resume: bool = True
    plain_end: str = "marker"

    def __post_init__(self) -> None:
        if self.window_messages < 1:
            raise ConfigError(f"window_messages must be >= 1, got {self.window_messages}")
        if self.window_bytes < 1:
            raise ConfigError(f"window_bytes must be >= 1, got {self.window_bytes}")
        if self.heartbeat < 0 or (0 < self.heartbeat < 0.01):
            raise ConfigError(f"heartbeat must be 0 (off) or >= 0.01 s, got {self.heartbeat}")
        if self.stall_factor < 1:
            raise ConfigError(f"stall_factor must be >= 1, got {self.stall_factor}")
        if self.plain_end not in ("marker", "empty"):
            raise ConfigError(f"plain_end must be 'marker' or 'empty', got {self.plain_end!r}")


@dataclass(slots=True)
class Config:
    """Where and how a :class:`Pool` connects.

    Connection options are passed through to nats-py. Secrets (``password``,
    ``token``, ``nkeys_seed``, and the ``user:password@`` or ``token@`` part of a
    server URL) never appear in ``repr()`` or in natstream's logs and errors. The
    ``user_credentials`` file's path is shown; its contents are read only by nats-py.
    See docs/security.md.

    Attributes:
        servers: server URLs, e.g. ``["nats://127.0.0.1:4222"]``.
        idle_per_server: connections kept open to each server; each is pinned to it.
        connect_timeout: seconds allowed for one connection attempt.
        close_grace: seconds :meth:`Pool.close` lets in-flight streams finish.
        health_check_interval: seconds between ping checks of each connection.
        reconnect_backoff: first delay in seconds before reconnecting a broken
            connection; doubles up to ``reconnect_backoff_max``, with jitter.
        max_lifetime: seconds after which a connection is retired gracefully
            (with +-10 % jitter); None keeps connections forever.
        max_idle: seconds a connection with no stream in flight may live before being
            replaced; None disables it.
        stream: flow control and liveness defaults for streams.
        window_budget_messages, window_budget_bytes: what the windows of all the pool's
            open streams may add up to (a stream alone may have all of it, one opened
            while others run half of what is left, each at least 128 messages / 16 KiB).
            Whatever streams have in flight can wait in nats-server at once, which
            cuts off a client past its ``max_pending`` (64 MiB by default), and delays
            heartbeats; raise these with the server's ``max_pending`` for a few large
            cross-region streams (docs/operations.md).
        inbox_prefix: prefix of reply subjects (for accounts that lock down ``_INBOX``).
        user, password: user/password authentication (``password`` needs ``user``).
        token: token authentication.
        user_credentials: path of a ``.creds`` file (user JWT and NKey seed, as ``nsc``
            writes it); needs the ``nkeys`` package.
        nkeys_seed: an NKey seed (``SU...``) for NKey authentication; needs ``nkeys``.
        tls: an :class:`ssl.SSLContext` holding the CA to trust and, for mutual TLS,
            the client certificate. With it (or with a ``tls://`` URL) a server that
            does not offer TLS is refused: credentials never go out in plaintext.
        tls_hostname: the name to verify the server's certificate against, when it
            differs from the URL's host.
        tracing: trace every stream with OpenTelemetry (needs ``natstream[otel]``):
            a span per stream on each side, the trace context carried in the
            request's headers (docs/operations.md, "Discovery and tracing"). Off by
            default; the check that OpenTelemetry is installed is made when a
            :class:`Pool` or :class:`Subscriber` is created with it.
        tracer_provider: the OpenTelemetry ``TracerProvider`` of those spans (None:
            OpenTelemetry's global one); only with ``tracing=True``.
    """

    servers: list[str]
    idle_per_server: int = 8
    name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    user_credentials: str | None = None
    nkeys_seed: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 2.0
    close_grace: float = 5.0
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    reconnect_backoff: float = 0.1
    reconnect_backoff_max: float = 5.0
    max_lifetime: float | None = None
    max_idle: float | None = None
    stream: StreamOptions = field(default_factory=StreamOptions)
    inbox_prefix: str = "_INBOX"
    window_budget_messages: int = 32_768
    window_budget_bytes: int = 32 << 20
    tracing: bool = False
    tracer_provider: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.servers, str):
            self.servers = [s.strip() for s in self.servers.split(",") if s.strip()]
        elif not isinstance(self.servers, (list, tuple)):
            raise ConfigError(
                f"servers must be a list of URLs (or one comma-separated str), "
                f"not {type(self.servers).__name__}"
            )
        else:
            self.servers = list(self.servers)
        if not self.servers:
            raise ConfigError("servers must list at least one server URL")
        for url in self.servers:
            _check_url(url)
        if self.idle_per_server < 1:
            raise ConfigError(f"idle_per_server must be >= 1, got {self.idle_per_server}")
        for name in ("connect_timeout", "health_check_interval", "health_check_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.close_grace < 0:
            raise ConfigError(f"close_grace must be >= 0 seconds, got {self.close_grace}")
        for name in ("window_budget_messages", "window_budget_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 < self.reconnect_backoff <= self.reconnect_backoff_max:
            raise ConfigError("need 0 < reconnect_backoff <= reconnect_backoff_max")
        # nats-py would silently send no password at all: the server's "authorization
        # violation" would then hide the mistake.
        if self.password is not None and self.user is None:
            raise ConfigError("password is set without user: set both, or use token")
        if self.user_credentials is not None and self.nkeys_seed is not None:
            raise ConfigError("set one of user_credentials (a .creds file) and nkeys_seed")

    def __repr__(self) -> str:
        # The generated repr would show the user info of server URLs.
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Config({shown})"

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (secrets included: never log this)."""
        opts: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "inbox_prefix": self.inbox_prefix,
        }
        if self.name:
            opts["name"] = self.name
        if self.user is not None:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password
        if self.token is not None:
            opts["token"] = self.token
        if self.user_credentials is not None:
            opts["user_credentials"] = self.user_credentials
        if self.nkeys_seed is not None:
            opts["nkeys_seed_str"] = self.nkeys_seed
        if self.tls is not None:
            opts["tls"] = self.tls
        if self.tls_hostname is not None:
            opts["tls_hostname"] = self.tls_hostname
        return opts

    def redacted(self) -> dict[str, Any]:
        """The configuration as a dict with secrets replaced by ``"***"`` and server
        URLs without their ``user:password@`` part (for logs)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "servers":
                value = [_without_userinfo(url) for url in value]
            out[f.name] = "***" if f.name in _SECRET_FIELDS and value is not None else value
        return out


def as_config(servers: Config | Sequence[str] | str) -> Config:
    """``servers`` as a :class:`Config`: a Config as it is, else its server URLs (a
    list, or one str of comma-separated URLs) with every other option at its default.

    Raises:
        TypeError: ``servers`` is none of these.
        ConfigError: a URL is not a NATS server URL.
    """
    if isinstance(servers, Config):
        return servers
    if isinstance(servers, str) or (
        isinstance(servers, (list, tuple)) and all(isinstance(u, str) for u in servers)
    ):
        if isinstance(servers, str):
            return Config(servers=[u.strip() for u in servers.split(",") if u.strip()])
        return Config(servers=list(servers))
    raise TypeError(
        "expected a Config, a list of server URLs or a str of comma-separated URLs, "
        f"not {type(servers).__name__}"
    )


_SCHEMES = ("nats", "tls", "ws", "wss")


def _check_url(url: object) -> None:
    """A server URL: ``scheme://host:port`` with a NATS scheme, or ``host:port``."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"a server URL must be a non-empty str, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() not in _SCHEMES:
        raise ConfigError(
            f"server URL {_without_userinfo(url)!r}: {scheme!r} is not a NATS scheme; "
            "use nats://, tls://, ws:// or wss://"
        )
    if not (rest if sep else url).rpartition("@")[2]:
        raise ConfigError(f"server URL {_without_userinfo(url)!r} names no host")


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` or ``token@`` replaced by ``***@``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url
