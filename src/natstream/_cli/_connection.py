"""The connection options of the commands that talk to NATS servers, as a :class:`Config`.

``@connection_options`` adds ``--server`` and the credential and TLS options (each
also read from an environment variable: the ``nats`` CLI's where it has one, and
``NATS_TOKEN``) to a command, which
receives them as one ``connection: Connection`` argument; :meth:`Connection.config`
checks them and builds the :class:`Config`. Secrets (password, token, NKey seed)
are never printed: not as defaults in ``--help``, not in errors.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from .._config import Config
from ._errors import UserError

__all__ = ["DEFAULT_SERVER", "Connection", "connection_options"]

DEFAULT_SERVER = "nats://127.0.0.1:4222"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Connection:
    """What the connection options said (file options hold paths)."""

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None

    def config(self, **options: Any) -> Config:
        """The :class:`Config` (with ``options`` for its other fields), every file read.

        Raises:
            UserError: a file cannot be read, or options do not go together.
            ConfigError: a server URL or another option is invalid.
        """
        if self.tls_key is not None and self.tls_cert is None:
            raise UserError("--tls-key needs --tls-cert (the client certificate it belongs to)")
        if self.creds is not None:
            _check_readable("--creds", self.creds)
        servers = [s.strip() for server in self.servers for s in server.split(",") if s.strip()]
        logging.getLogger("asyncio").addFilter(_quiet_tls_eof)
        return Config(
            servers or [DEFAULT_SERVER],
            user=self.user,
            password=self.password,
            token=self.token,
            user_credentials=self.creds,
            nkeys_seed=_seed(self.nkey) if self.nkey is not None else None,
            tls=self._tls(),
            tls_hostname=self.tls_hostname,
            **options,
        )

    def _tls(self) -> ssl.SSLContext | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        if self.tls_ca is not None:
            _check_readable("--tls-ca", self.tls_ca)
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
        except ssl.SSLError as exc:
            raise UserError(f"--tls-ca {self.tls_ca!r}: not a CA certificate ({exc})") from None
        if self.tls_cert is not None:
            _check_readable("--tls-cert", self.tls_cert)
            if self.tls_key is not None:
                _check_readable("--tls-key", self.tls_key)
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except ssl.SSLError as exc:
                raise UserError(
                    f"--tls-cert {self.tls_cert!r}: no certificate and key that belong "
                    f"together ({exc.reason or exc})"
                ) from None
        return context


_TLS_EOF = "returning true from eof_received() has no effect when using ssl"


def _quiet_tls_eof(record: logging.LogRecord) -> bool:
    """Drop asyncio's warning at each close of a TLS connection by nats-py (its
    protocol asks for half-closed connections, which TLS has not): nothing to act on."""
    return record.msg != _TLS_EOF


def _check_readable(option: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path!r}: {exc.strerror or exc}") from None


def _seed(path: str) -> str:
    """The NKey seed in the file at ``path`` (its first non-blank line)."""
    _check_readable("--nkey", path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.strip()
    raise UserError(f"--nkey {path!r}: the file holds no seed")


_FILE = click.Path(dir_okay=False)

_OPTIONS = [
    click.option(
        "--server",
        "-s",
        "servers",
        multiple=True,
        envvar="NATS_URL",
        show_envvar=True,
        help=f"Server URL (repeatable; comma-separated URLs too). Default: {DEFAULT_SERVER}.",
    ),
    click.option("--user", envvar="NATS_USER", show_envvar=True, help="User name."),
    click.option(
        "--password",
        envvar="NATS_PASSWORD",
        show_envvar=True,
        help="Password (prefer the environment variable: a command line is visible to others).",
    ),
    click.option("--token", envvar="NATS_TOKEN", show_envvar=True, help="Token."),
    click.option(
        "--creds",
        type=_FILE,
        envvar="NATS_CREDS",
        show_envvar=True,
        help="User credentials file (.creds: JWT and NKey seed).",
    ),
    click.option(
        "--nkey", type=_FILE, envvar="NATS_NKEY", show_envvar=True, help="NKey seed file."
    ),
    click.option(
        "--tls-ca", type=_FILE, envvar="NATS_CA", show_envvar=True, help="CA certificates to trust."
    ),
    click.option(
        "--tls-cert",
        type=_FILE,
        envvar="NATS_CERT",
        show_envvar=True,
        help="Client certificate (mutual TLS).",
    ),
    click.option(
        "--tls-key", type=_FILE, envvar="NATS_KEY", show_envvar=True, help="Its private key."
    ),
    click.option("--tls-hostname", help="Name to verify the server's certificate against."),
]
_NAMES = (
    "servers",
    "user",
    "password",
    "token",
    "creds",
    "nkey",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
)


def connection_options(command: F) -> F:
    """Add the connection options to ``command``, which takes ``connection``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        connection = Connection(**{name: kwargs.pop(name) for name in _NAMES})
        return command(*args, connection=connection, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]
