"""Servers the benchmarks talk to, each in its own process.

The emulator and the minimal token server run in a child process so that their request
handling does not compete for the benchmark's GIL: on a 2-core machine the server gets one
core and the code under test the other, as with a remote Genesys. The child is driven over a
``multiprocessing`` pipe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any, TypeVar

_S = TypeVar("_S", bound="ChildServer")

#: Listen backlog for the child servers: a 500-thread herd must not hit SYN drops (1 s
#: retransmits) that would measure the kernel's queue instead of the token manager.
LISTEN_BACKLOG = 1024
#: How long a child may take to start (spawn + imports) before the benchmark gives up.
START_TIMEOUT = 30.0
#: How long one command to the child may take.
CALL_TIMEOUT = 30.0


def _emulator_child(conn: Connection, options: dict[str, Any]) -> None:
    from genesys_token.testing._handler import EmulatorHTTPServer
    from genesys_token.testing.emulator import Fault, GenesysEmulator

    EmulatorHTTPServer.request_queue_size = LISTEN_BACKLOG
    # The emulator writes headers and body separately; with Nagle on, every keep-alive
    # answer waits for the client's delayed ACK (~40 ms). Real front ends set TCP_NODELAY.
    from genesys_token.testing import _handler

    _handler._Handler.disable_nagle_algorithm = True
    emulator = GenesysEmulator(**options).start()
    conn.send({"url": emulator.url, "token_url": emulator.token_url})
    while True:
        if not conn.poll(3600):
            break
        op, args = conn.recv()
        if op == "stop":
            break
        if op == "token_latency":
            emulator.clear_faults()
            if args[0] > 0:
                fault = Fault(delay=args[0], passthrough=True)
                emulator.inject(fault, times=None, path="/oauth/token")
            conn.send(None)
        elif op == "slow_path":
            path, seconds = args
            emulator.inject(Fault(delay=seconds, passthrough=True), times=None, path=path)
            conn.send(None)
        elif op == "api_statuses":
            conn.send(dict(Counter(record.status for record in emulator.api_request_log)))
        elif op == "set":
            setattr(emulator, args[0], args[1])
            conn.send(None)
        elif op == "get":
            conn.send(getattr(emulator, args[0]))
        elif op == "add_clients":  # (prefix, count, token_ttl): one pipe trip for thousands
            prefix, count, ttl = args
            for i in range(count):
                emulator.add_client(f"{prefix}{i}", f"{prefix}{i}-secret", token_ttl=ttl)
            conn.send(None)
        elif op == "hang_client":  # (client_id, seconds): that org's token endpoint hangs
            fault = Fault(delay=args[1], passthrough=True)
            emulator.inject(fault, times=None, client_id=args[0])
            conn.send(None)
        elif op == "hang_clients":  # (prefix, count, seconds): those orgs' endpoint hangs
            prefix, count, seconds = args
            for i in range(count):
                fault = Fault(delay=seconds, passthrough=True)
                emulator.inject(fault, times=None, client_id=f"{prefix}{i}")
            conn.send(None)
        elif op == "token_expiries":
            conn.send([emulator.token_expiry(token) for token in args[0]])
        else:
            conn.send(getattr(emulator, op)(*args))
    emulator.stop()


class ChildServer:
    """A server running in a spawned child process, driven over a pipe."""

    def __init__(self, target: Any, options: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=target, args=(child_conn, options), daemon=True)
        self._process.start()
        if not self._conn.poll(START_TIMEOUT):
            self._process.kill()
            raise RuntimeError("benchmark server did not start in time")
        self.info: dict[str, str] = self._conn.recv()

    def call(self, op: str, *args: Any) -> Any:
        """Run one command in the child and return its answer."""
        self._conn.send((op, args))
        if not self._conn.poll(CALL_TIMEOUT):
            raise RuntimeError(f"benchmark server did not answer {op!r} in time")
        return self._conn.recv()

    def stop(self) -> None:
        """Stop the child (politely, then by force)."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop", ()))
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmulatorProcess(ChildServer):
    """The Genesys emulator in a child process.

    Args:
        **options: ``GenesysEmulator`` keyword arguments.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(_emulator_child, options)
        self.url = self.info["url"]
        self.token_url = self.info["token_url"]
        self.client_id = str(self.call("get", "client_id"))
        self.client_secret = str(self.call("get", "client_secret"))

    @property
    def token_requests(self) -> int:
        """POST /oauth/token requests since the last reset."""
        return int(self.call("get", "token_requests"))

    def reset(self) -> None:
        """Zero the request counters and logs."""
        self.call("reset_counters")

    def set(self, name: str, value: Any) -> None:
        """Set an emulator property (``token_ttl``, ``token_format``)."""
        self.call("set", name, value)

    def token_latency(self, seconds: float) -> None:
        """Answer every token request ``seconds`` late (0: at once)."""
        self.call("token_latency", seconds)

    def slow_path(self, path: str, seconds: float) -> None:
        """Answer every API call under ``path`` ``seconds`` late, until the next
        :meth:`token_latency` (which clears every fault)."""
        self.call("slow_path", path, seconds)

    def api_statuses(self) -> dict[int, int]:
        """How many API answers had each status since the last reset (0: no answer)."""
        return dict(self.call("api_statuses"))


def static_jwt(client_id: str, scope: str, lifetime: int = 86400) -> str:
    """An unsigned-looking JWT with ``exp``, ``client_id`` and ``scope`` claims.

    Neither peer that reads it verifies signatures (no JWKS is configured), so the minimal
    server can hand out the same string forever.
    """

    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"exp": now + lifetime, "iat": now, "client_id": client_id, "scope": scope}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def _minimal_child(conn: Connection, options: dict[str, Any]) -> None:
    body = json.dumps(
        {"access_token": options["token"], "token_type": "bearer", "expires_in": 86399}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # the benchmark's output is the table, not an access log

    ThreadingHTTPServer.request_queue_size = LISTEN_BACKLOG
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send({"token_url": f"http://127.0.0.1:{server.server_address[1]}/oauth/token"})
    while conn.poll(3600):
        op, _ = conn.recv()
        if op == "stop":
            break
        conn.send(None)
    server.shutdown()
    server.server_close()


class MinimalTokenServer(ChildServer):
    """A token endpoint that answers every POST at once with the same token.

    Args:
        token: The access token to hand out.
    """

    def __init__(self, token: str) -> None:
        super().__init__(_minimal_child, {"token": token})
        self.token_url = self.info["token_url"]
