"""HTTP plumbing of the emulator: server, request reading, reply writing (faults included).

This module knows nothing about OAuth: the emulator hands the server a ``backend`` callable
that turns a :class:`Request` into a :class:`Reply` (or ``None`` to close the connection
without answering).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EmulatorHTTPServer", "Reply", "Request"]

_LOG = logging.getLogger("genesys_token.testing")

_HANDSHAKE_TIMEOUT = 5.0
_WRITE_CHUNK = 64 * 1024
_DRIP_CHUNK = 16
_MAX_LINE = 65536
_FILLER_PREFIX = b'{"filler":"'
_FILLER = _FILLER_PREFIX + b"genesys-emulator" * (_WRITE_CHUNK // 16 + 1)


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request (body fully read)."""

    method: str
    path: str
    query: str
    headers: Message
    body: bytes


@dataclass
class Reply:
    """What to send back. ``stream_size`` streams filler bytes instead of ``body``."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream_size: int | None = None
    drip: float | None = None


class _BadRequestError(Exception):
    """The request body could not be read."""


def _body_chunks(reply: Reply, size: int) -> Iterator[bytes]:
    if reply.stream_size is None:
        view = memoryview(reply.body)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    sent = 0
    while sent < reply.stream_size:
        n = min(size, reply.stream_size - sent)
        start = 0 if sent == 0 else len(_FILLER_PREFIX)
        yield _FILLER[start : start + n]
        sent += n


class EmulatorHTTPServer(ThreadingHTTPServer):
    """Threading HTTP(S) server that tracks its connections so ``stop`` can cut them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        backend: Callable[[Request], Reply | None],
        stop_event: threading.Event,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.backend = backend
        self.stop_event = stop_event
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can be slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _LOG.debug("emulator connection error", exc_info=True)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the server stops first; True when the full time passed."""
        return not self.stop_event.wait(seconds)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                _LOG.debug("connection already closed")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY every reply waits ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    server_version = "GenesysEmulator"
    timeout = 60.0
    server: EmulatorHTTPServer

    def setup(self) -> None:
        context = self.server.ssl_context
        if context is not None:
            self.request.settimeout(_HANDSHAKE_TIMEOUT)
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            _LOG.debug("client went away before the reply was flushed")
        finally:
            self.server.untrack(self.connection)
            if self.server.ssl_context is not None:
                self.connection.close()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("emulator: " + format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Only method and path: query strings and headers may carry secrets.
        _LOG.debug("emulator: %s %s -> %s", self.command, urlsplit(self.path).path, code)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except (_BadRequestError, ValueError, OSError):
            self.close_connection = True
            try:
                self.send_error(400, "Bad request body")
            except OSError:
                _LOG.debug("client went away")
            return
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path or "/", parts.query, self.headers, body)
        self._send(self.server.backend(request))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        size = int(length)
        if size < 0:
            raise _BadRequestError("negative Content-Length")
        data = self.rfile.read(size)
        if len(data) != size:
            raise _BadRequestError("body shorter than Content-Length")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadRequestError("truncated chunk")
            parts.append(chunk)
            self.rfile.readline(_MAX_LINE)

    def _send(self, reply: Reply | None) -> None:
        if reply is None:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            names = {name.lower() for name in reply.headers}
            for name, value in reply.headers.items():
                self.send_header(name, value)
            no_body_status = reply.status in (204, 304)
            if "content-length" in names:
                self.send_header("Connection", "close")
            elif not no_body_status:
                size = reply.stream_size if reply.stream_size is not None else len(reply.body)
                self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD" or no_body_status:
                return
            chunk = _DRIP_CHUNK if reply.drip is not None else _WRITE_CHUNK
            for piece in _body_chunks(reply, chunk):
                if reply.drip is not None and not self.server.wait(reply.drip):
                    self.close_connection = True
                    return
                self.wfile.write(piece)
        except OSError:
            self.close_connection = True
