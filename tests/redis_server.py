"""A throwaway ``redis-server`` on a free loopback port, for tests of RedisStore.

Use :func:`redis_server_or_skip` in a fixture::

    @pytest.fixture(scope="module")
    def redis_url() -> Iterator[str]:
        with redis_server_or_skip() as server:
            yield server.url

Tests are skipped (with the reason) only when the ``redis-server`` binary is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
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

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
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

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.port = free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="genesys-token-redis-")
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir.name,
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_ready()
        return self

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


def find_redis_server() -> str | None:
    """The ``redis-server`` binary, or None when it is not installed."""
    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    return found


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[RedisServer]:
    """A started server, or a pytest skip naming the missing binary."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    with RedisServer() as server:
        yield server
