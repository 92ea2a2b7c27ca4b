"""Issue 22: loopback is never reached through a proxy, whatever the environment or the session
says (``requests`` bypasses proxies for 127.0.0.1, ::1 and localhost only when ``NO_PROXY``
says so: ``HTTP_PROXY`` carried a plain-http secret meant for this machine off it). Other
hosts still go through the proxy the environment names, token requests included."""

from __future__ import annotations

import importlib.util
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from genesys_token import TokenManager, TokenRequestError
from genesys_token.http.connections import LoopbackDirectAdapter, deadline_session, is_loopback_url
from genesys_token.http.token_endpoint import TokenEndpoint
from genesys_token.settings import Config
from genesys_token.testing import GenesysEmulator

#: A host name that resolves nowhere: only a proxy can reach it.
ELSEWHERE = "login.genesys-token.test"
PROXY_ANSWER = b"answered by the proxy"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class CountingProxy(socketserver.ThreadingTCPServer):
    """A real forward proxy on 127.0.0.1 that counts the connections made to it.

    Plain requests (absolute-form request lines) it answers itself with
    :data:`PROXY_ANSWER`; a ``CONNECT`` it tunnels to ``tunnel_port`` on 127.0.0.1 when set
    (refused otherwise), whatever host was asked for.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tunnel_port: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.tunnel_port = tunnel_port
        self.connections = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self.thread.join(2)


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: CountingProxy

    def handle(self) -> None:
        proxy = self.server
        with proxy.lock:
            proxy.connections += 1
        while not proxy.stopping.is_set():
            line = self.rfile.readline(65537).decode("latin-1").strip()
            if not line:
                return
            headers = {}
            while (header := self.rfile.readline(65537).decode("latin-1").strip()) != "":
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
            with proxy.lock:
                proxy.requests.append(line)
            if line.startswith("CONNECT "):
                self._tunnel()
                return
            self.rfile.read(int(headers.get("content-length") or 0))
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(PROXY_ANSWER)}\r\n\r\n".encode()
                + PROXY_ANSWER
            )
            self.wfile.flush()

    def _tunnel(self) -> None:
        proxy = self.server
        if proxy.tunnel_port is None:
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection(("127.0.0.1", proxy.tunnel_port), timeout=5) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            client = self.connection
            while not proxy.stopping.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.1)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)


@pytest.fixture
def counting_proxy() -> Iterator[CountingProxy]:
    proxy = CountingProxy()
    yield proxy
    proxy.stop()


def _proxy_everything(monkeypatch: pytest.MonkeyPatch, proxy_url: str) -> None:
    """Every proxy variable names ``proxy_url``; nothing is exempted."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy_url)
        monkeypatch.setenv(name.lower(), proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")


class _Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that counts the POSTs it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        self.posts = 0
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.posts += 1
                receiver.got.set()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(2)


def test_the_loopback_token_request_never_touches_the_environment_proxy(
    emulator: GenesysEmulator,
    counting_proxy: CountingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Token requests, the JWKS fetch, the revoke of rotate() and a webhook delivery: every
    # call the SDK makes to this machine goes straight there.
    _proxy_everything(monkeypatch, counting_proxy.url)
    emulator.token_format = "jwt"
    receiver = _Receiver()
    try:
        with TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            jwks_url=emulator.jwks_url,
            webhook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            webhook_secret="hook-secret-0123456789",
        ) as manager:
            first = manager.get_token()
            manager.rotate(revoke_previous=True)
            assert receiver.got.wait(5)
    finally:
        receiver.stop()
    # Before: the proxy got the token request, secret included (and answered it).
    assert counting_proxy.connections == 0
    assert emulator.token_requests == 2
    assert first in emulator.revoked_tokens
    assert receiver.posts >= 1


@pytest.mark.parametrize("made", ["here", "elsewhere"])
def test_loopback_ignores_the_sessions_own_proxies_too(
    emulator: GenesysEmulator, counting_proxy: CountingProxy, made: str
) -> None:
    if made == "here":
        session = deadline_session()
    else:  # a session of its own, given the adapter
        session = requests.Session()
        session.mount("http://", LoopbackDirectAdapter(max_retries=0))
    session.trust_env = False
    session.proxies = {"http": counting_proxy.url, "https": counting_proxy.url}
    proxies = {"all": counting_proxy.url}
    try:
        for url in (emulator.jwks_url, emulator.jwks_url.replace("127.0.0.1", "localhost")):
            with session.get(url, timeout=5) as answer:
                assert answer.status_code == 200
                assert "keys" in answer.json()
            with session.get(url, timeout=5, proxies=proxies) as answer:
                assert answer.status_code == 200
    finally:
        session.close()
    assert counting_proxy.connections == 0


def test_other_hosts_still_go_through_the_environment_proxy(
    counting_proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    _proxy_everything(monkeypatch, counting_proxy.url)
    session = deadline_session()
    try:
        with session.get(f"http://{ELSEWHERE}/probe", timeout=5) as answer:
            assert answer.content == PROXY_ANSWER
    finally:
        session.close()
    assert counting_proxy.connections == 1
    assert counting_proxy.requests == [f"GET http://{ELSEWHERE}/probe HTTP/1.1"]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080/oauth/token", True),
        ("https://127.3.4.5/x", True),
        ("http://[::1]:9/x", True),
        ("http://LOCALHOST/x", True),
        ("http://localhost.localdomain:1/", False),  # a DNS name, not reserved
        ("https://login.mypurecloud.com/oauth/token", False),
        ("http://127.0.0.1.example.com/", False),
        ("http://[::ffff:10.0.0.1]/", False),
        ("http://10.0.0.1/", False),
        ("http://[not-an-address/", False),  # unparsable: not loopback, no exception
        ("", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


# -- token requests to other hosts keep their proxy (moved from test_transport.py) -----------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def elsewhere(ca: trustme.CA) -> Iterator[GenesysEmulator]:
    """An HTTPS emulator with a certificate for :data:`ELSEWHERE` (reached via a proxy)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ELSEWHERE).configure_cert(context)
    with GenesysEmulator(ssl_context=context) as emulator:
        yield emulator


def test_proxy_from_the_environment_carries_a_token_request_to_another_host(
    elsewhere: GenesysEmulator,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = CountingProxy(tunnel_port=elsewhere.port)
    try:
        for name in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "")
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        origin = f"https://{ELSEWHERE}:{elsewhere.port}"
        settings = Config.build(
            elsewhere.client_id,
            elsewhere.client_secret,
            token_url=origin + "/oauth/token",
            api_base_url=origin,
            verify=str(bundle),
            max_retries=0,
            timeout=(2.0, 2.0),
        )
        endpoint = TokenEndpoint(settings)
        try:
            response = endpoint.fetch(settings.credentials)
        finally:
            endpoint.close()
        assert response.access_token == elsewhere.issued_tokens[-1]
        [request] = proxy.requests
        assert request.startswith(f"CONNECT {ELSEWHERE}:{elsewhere.port} HTTP/")
        assert elsewhere.token_requests == 1
    finally:
        proxy.stop()


def test_unusable_proxy_setting_fails_fast_without_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A SOCKS proxy needs PySocks; without it requests raises InvalidSchema, a configuration
    # problem that no retry can fix.
    if importlib.util.find_spec("socks") is not None:
        pytest.skip("PySocks is installed: SOCKS proxies are usable here")
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "socks5://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    settings = Config.build(
        "client-id",
        "client-secret-value",
        token_url=f"https://{ELSEWHERE}/oauth/token",
        max_retries=3,
    )
    endpoint = TokenEndpoint(settings)
    try:
        with pytest.raises(TokenRequestError, match="InvalidSchema") as caught:
            endpoint.fetch(settings.credentials)
    finally:
        endpoint.close()
    assert (caught.value.retryable, caught.value.attempts) == (False, 1)


def test_api_calls_to_a_loopback_api_never_touch_the_environment_proxy(
    emulator: GenesysEmulator,
    counting_proxy: CountingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bearer token, on api_session and on the Flask extension's session (Django's is the
    # same function), stays on this machine when the API host is loopback.
    from flask import Flask

    from genesys_token import api_session
    from genesys_token.integrations.flask import GenesysToken

    _proxy_everything(monkeypatch, counting_proxy.url)
    app = Flask("loopback")
    app.config.update(
        GENESYS_CLIENT_ID=emulator.client_id,
        GENESYS_CLIENT_SECRET=emulator.client_secret,
        GENESYS_TOKEN_URL=emulator.token_url,
        GENESYS_API_URL=emulator.api_base_url,
    )
    genesys = GenesysToken(app)
    try:
        with api_session(genesys.manager) as session:
            assert session.get("/api/v2/organizations/me").status_code == 200
        answer = genesys.session.get(emulator.api_base_url + "/api/v2/organizations/me")
        assert answer.status_code == 200
    finally:
        genesys.close(app)
    assert counting_proxy.connections == 0
    assert [r.token_used is not None for r in emulator.api_request_log] == [True, True]


def test_a_session_given_to_the_manager_reaches_loopback_directly_too(
    emulator: GenesysEmulator,
    counting_proxy: CountingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its adapters are its owner's: the token request and the revoke carry, per request,
    # proxies that drop every proxy the environment or the session names (review A4).
    _proxy_everything(monkeypatch, counting_proxy.url)
    given = requests.Session()
    given.proxies = {"http": counting_proxy.url, "http://127.0.0.1": counting_proxy.url}
    with (
        given,
        TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            session=given,
        ) as manager,
    ):
        first = manager.get_token()
        manager.rotate(revoke_previous=True)
    assert counting_proxy.connections == 0
    assert emulator.token_requests == 2
    assert first in emulator.revoked_tokens
