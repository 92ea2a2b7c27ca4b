"""Throwaway ``redis-server`` processes on free loopback ports, for tests of RedisStore.

One server (:class:`RedisServer`), a 3-master Cluster (:class:`RedisCluster3`) and a master
with a replica watched by a sentinel (:class:`SentinelGroup`). Use them in fixtures::

    @pytest.fixture(scope="module")
    def redis_url() -> Iterator[str]:
        with redis_server_or_skip() as server:
            yield server.url

A missing ``redis-server`` (or ``redis-cli``) binary FAILS the test, naming the package to
install (``.ci/run`` installs it): a store test that silently skips proves nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

#: How long a starting server may take before the test fails (it needs ~10 ms).
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process: no persistence, loopback only, its own port.

    Args:
        binary: Path of ``redis-server`` (default: found on ``PATH`` or /usr/bin).
    """

    def __init__(self, binary: str | None = None, *, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.extra = extra
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, port: int | None = None) -> RedisServer:
        """Start the server (on ``port``, or a free one) and wait until it answers PING."""
        self.port = port or free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="genesys-token-redis-")
        command = [
            str(self.binary),
            *self._config_file(self._workdir.name),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir.name,
            "--loglevel", "warning",
            *self.extra,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_ready()
        return self

    def _config_file(self, workdir: str) -> list[str]:
        """Leading arguments naming a config file (a sentinel needs one); none here."""
        return []

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if self.ping():
                return
            time.sleep(0.01)
        raise RuntimeError("redis-server did not answer PING in time")

    def ping(self) -> bool:
        """Whether the server answers PING (a raw socket: no redis-py involved)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str, timeout: float = 5.0) -> str:
        """Run one command with ``redis-cli`` and return its output."""
        cli = find_redis_cli()
        if cli is None:
            pytest.fail(f"redis-cli is not installed ({INSTALL_HINT})")
        result = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return result.stdout

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and remove its directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def hang(self, hung: bool = True) -> None:
        """Stop the server answering (SIGSTOP: connections stay open, nothing comes back), or
        let it go on (SIGCONT)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP if hung else signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash: no clean shutdown) and wait for it to go.

        The directory stays until ``stop()``, which the context manager still calls.
        """
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


INSTALL_HINT = "apt-get install -y redis-server; .ci/run does it"


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.access(f"/usr/bin/{name}", os.X_OK):
        found = f"/usr/bin/{name}"
    return found


def find_redis_server() -> str | None:
    """The ``redis-server`` binary, or None when it is not installed."""
    return _find("redis-server")


def find_redis_cli() -> str | None:
    """The ``redis-cli`` binary, or None when it is not installed."""
    return _find("redis-cli")


def require_redis_server() -> None:
    """Fail (never skip) the calling test when ``redis-server`` is missing."""
    if find_redis_server() is None:
        pytest.fail(f"redis-server is not installed ({INSTALL_HINT})")


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[RedisServer]:
    """A started server; a missing binary fails the test (the name is kept for callers)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms; raise naming ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RedisCluster3:
    """Three cluster-enabled masters joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self) -> None:
        require_redis_server()
        if find_redis_cli() is None:
            pytest.fail(f"redis-cli is not installed ({INSTALL_HINT})")
        # The bus port is given, not left to port + 10000 (which may be taken, or > 65535).
        self.nodes = [
            RedisServer(
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", "2000",
                    "--cluster-port", str(free_port()),
                )
            )
            for _ in range(3)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """A URL of one node (a cluster client discovers the others)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def __enter__(self) -> RedisCluster3:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            self.nodes[0].command(
                "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes",
                timeout=30.0,
            )  # fmt: skip
            wait_for(
                lambda: all("cluster_state:ok" in n.command("cluster", "info") for n in self.nodes),
                30.0,
                "the cluster to be ready",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Sentinel(RedisServer):
    """``redis-server <conf> --sentinel`` watching one master as ``mymaster``."""

    def __init__(self, master_port: int) -> None:
        super().__init__(extra=("--sentinel",))
        self.master_port = master_port

    def _config_file(self, workdir: str) -> list[str]:
        conf = Path(workdir) / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 10000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        return [str(conf)]


class SentinelGroup:
    """A master, its replica and one sentinel (quorum 1) that can fail the master over."""

    MASTER_NAME = "mymaster"

    def __init__(self) -> None:
        require_redis_server()
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinel: _Sentinel | None = None

    def __enter__(self) -> SentinelGroup:
        try:
            self.master.start()
            self.replica.extra = ("--replicaof", "127.0.0.1", str(self.master.port))
            self.replica.start()
            wait_for(
                lambda: "master_link_status:up" in self.replica.command("info", "replication"),
                15.0,
                "the replica to sync",
            )
            self.sentinel = _Sentinel(self.master.port)
            self.sentinel.start()
            wait_for(
                lambda: (
                    str(self.replica.port)
                    in self.sentinel_command("sentinel", "replicas", self.MASTER_NAME)
                ),
                15.0,
                "the sentinel to discover the replica",
            )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def sentinel_address(self) -> tuple[str, int]:
        """Where the sentinel listens."""
        assert self.sentinel is not None
        return ("127.0.0.1", self.sentinel.port)

    def sentinel_command(self, *args: str) -> str:
        """Run a command on the sentinel."""
        assert self.sentinel is not None
        return self.sentinel.command(*args)

    def master_port(self) -> int:
        """The port of the master the sentinel names now."""
        out = self.sentinel_command("sentinel", "get-master-addr-by-name", self.MASTER_NAME)
        return int(out.split()[1])

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica becomes master."""
        self.sentinel_command("sentinel", "failover", self.MASTER_NAME)

    def stop(self) -> None:
        """Stop the sentinel, the replica and the master."""
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
