"""A real forward proxy on 127.0.0.1 for tests: ``CONNECT`` tunnels and absolute-URI requests,
optional Basic proxy authentication, every request counted.

Whatever host a client asks for, the proxy connects to ``127.0.0.1:upstream_port``: a test
names a host that resolves nowhere (only the proxy can reach it) and serves it locally.
"""

from __future__ import annotations

import base64
import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    """What the proxy was asked: the request line and the ``Proxy-Authorization`` sent."""

    line: str
    authorization: str | None


@dataclass
class _State:
    upstream_port: int
    credentials: tuple[str, str] | None
    seen: list[Seen] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class ProxyServer(socketserver.ThreadingTCPServer):
    """A threaded forward proxy.

    Args:
        upstream_port: Where every tunnel and forwarded request goes (on 127.0.0.1).
        credentials: ``(user, password)`` the proxy requires (407 otherwise); None: open.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int, credentials: tuple[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = _State(upstream_port, credentials)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """``http://[user:password@]127.0.0.1:<port>``."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        """The requests it was asked, accepted or not."""
        with self.state.lock:
            return list(self.state.seen)

    @property
    def refused(self) -> int:
        """Requests answered 407."""
        return self.state.refused

    def stop(self) -> None:
        """Stop serving and close every tunnel."""
        self.state.stopping.set()
        self.shutdown()
        self.server_close()
        self.thread.join(2)

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(socketserver.StreamRequestHandler):
    server: ProxyServer
    #: Unbuffered: nothing the client sent after the headers is left in a buffer here.
    rbufsize = 0

    def handle(self) -> None:
        state = self.server.state
        line = self.rfile.readline(65537).decode("latin-1").strip()
        if not line:
            return
        headers: list[tuple[str, str]] = []
        while (header := self.rfile.readline(65537).decode("latin-1").strip()) != "":
            name, _, value = header.partition(":")
            headers.append((name.strip(), value.strip()))
        found = {name.lower(): value for name, value in headers}
        authorization = found.get("proxy-authorization")
        with state.lock:
            state.seen.append(Seen(line, authorization))
        if not self._allowed(authorization):
            with state.lock:
                state.refused += 1
            self.wfile.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            return
        upstream = socket.create_connection(("127.0.0.1", state.upstream_port), timeout=5)
        with upstream:
            if line.startswith("CONNECT "):
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
            else:
                self._forward(line, headers, upstream)
            self._relay(upstream)

    def _allowed(self, authorization: str | None) -> bool:
        credentials = self.server.state.credentials
        if credentials is None:
            return True
        expected = base64.b64encode(":".join(credentials).encode()).decode()
        return authorization == f"Basic {expected}"

    def _forward(self, line: str, headers: list[tuple[str, str]], upstream: socket.socket) -> None:
        """Send an absolute-URI request upstream in origin form, one request per connection."""
        method, target, version = line.split(" ", 2)
        parts = urlsplit(target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = [
            (name, value)
            for name, value in headers
            if name.lower() not in ("proxy-authorization", "proxy-connection", "connection")
        ]
        head = f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in kept)
        upstream.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
        # The body, if any, follows through the relay.

    def _relay(self, upstream: socket.socket) -> None:
        client = self.connection
        stopping = self.server.state.stopping
        while not stopping.is_set():
            ready, _, _ = select.select([client, upstream], [], [], 0.1)
            for source in ready:
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
