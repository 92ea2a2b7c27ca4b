"""The token-endpoint client: request shape, hostile answers, size cap, slow bodies, proxies,
connections shared by managers."""

from __future__ import annotations

import base64
import email.utils
import http.client
import logging
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import MakeManager, TricklingServer, eventually, in_background, join_fetch_threads
from requests.adapters import HTTPAdapter

from genesys_token import (
    InvalidTokenResponseError,
    TokenManager,
    TokenRequestError,
    TokenTimeoutError,
)
from genesys_token.http import connections as _http
from genesys_token.http.connections import HostLimiter
from genesys_token.http.failures import host_of
from genesys_token.http.token_endpoint import (
    TokenEndpoint,
    TokenResponse,
    basic_auth_header,
    parse_retry_after,
)
from genesys_token.settings import MAX_TOKEN_LIFETIME, Config, Credentials
from genesys_token.testing import Fault, GenesysEmulator

pytestmark = pytest.mark.legacy

MB = 1024 * 1024
Build = Callable[..., tuple[TokenEndpoint, Credentials]]


@pytest.fixture
def build(emulator: GenesysEmulator) -> Iterator[Build]:
    """Build a TokenEndpoint against the emulator (no retries unless asked); closed after."""
    endpoints: list[TokenEndpoint] = []

    def make(**options: Any) -> tuple[TokenEndpoint, Credentials]:
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", (2.0, 2.0))
        settings = Config.build(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            **options,
        )
        endpoint = TokenEndpoint(settings)
        endpoints.append(endpoint)
        return endpoint, settings.credentials

    yield make
    for endpoint in endpoints:
        endpoint.close()


# -- the request ---------------------------------------------------------------------------


def test_request_is_a_basic_authenticated_client_credentials_grant(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build()
    response = endpoint.fetch(credentials)
    (record,) = emulator.token_request_log
    assert (record.auth_method, record.grant_type, record.scope) == (
        "basic",
        "client_credentials",
        None,
    )
    assert (response.token_type, response.expires_in, response.attempts) == ("bearer", 86399, 1)
    assert response.access_token in emulator.issued_tokens


def test_scope_is_sent_only_when_configured(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build(scopes=["users:read", "analytics"])
    endpoint.fetch(credentials)
    assert emulator.token_request_log[0].scope == "users:read analytics"


def test_basic_auth_header_encodes_id_colon_secret_as_utf8() -> None:
    header = basic_auth_header(Credentials("client", "sé:cret"))
    assert header == "Basic " + base64.b64encode("client:sé:cret".encode()).decode()


def test_token_response_repr_hides_the_token() -> None:
    response = TokenResponse("secret-token-value", "bearer", 60.0, None, 1.0, 2.0)
    assert "secret-token-value" not in repr(response)


# -- Retry-After parsing -------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("1e400", None),
        ("9" * 400, None),
        ("\u0663", None),  # an Arabic-Indic 3: float() reads it, HTTP does not
        ("Fri, 99 Foo 2024 25:61:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_defaults_to_the_system_clock() -> None:
    value = email.utils.formatdate(time.time() + 100, usegmt=True)
    parsed = parse_retry_after(value)
    assert parsed is not None
    assert 98 <= parsed <= 100


# -- hostile and broken answers ------------------------------------------------------------


def _token(**fields: Any) -> Fault:
    body = {"access_token": "tok-" + "a" * 40, "token_type": "bearer", "expires_in": 3600}
    body.update(fields)
    return Fault.json({k: v for k, v in body.items() if v is not _DROP})


_DROP = object()

HOSTILE = [
    pytest.param(Fault(status=200, body='{"access_token": "x",'), "JSON object", id="bad-json"),
    pytest.param(Fault.html(200), "JSON object", id="html-200"),
    pytest.param(Fault.json(["access_token"]), "JSON object", id="json-array"),
    pytest.param(Fault(status=200, body=b"\xff\xfe{}"), "JSON object", id="not-utf8"),
    pytest.param(Fault(status=200, body="[" * 60_000), "JSON object", id="deep-nesting"),
    pytest.param(Fault(status=200, body=""), "JSON object", id="empty-body"),
    pytest.param(_token(access_token=_DROP), "access_token is missing", id="no-token"),
    pytest.param(_token(access_token=""), "access_token is missing", id="empty-token"),
    pytest.param(_token(access_token="   "), "access_token is missing", id="blank-token"),
    pytest.param(_token(access_token=42), "access_token is missing", id="numeric-token"),
    pytest.param(_token(access_token="a b"), "whitespace", id="token-with-space"),
    pytest.param(_token(access_token="ab\u0007"), "control", id="token-with-bell"),
    # Printable, but no HTTP header can carry it: every API call raised UnicodeEncodeError.
    pytest.param(_token(access_token="tok\u20acen"), "not ASCII", id="token-with-euro"),
    pytest.param(_token(token_type="mac"), "token_type is not bearer", id="mac"),
    pytest.param(_token(token_type=_DROP), "token_type is not bearer", id="no-token-type"),
    pytest.param(_token(expires_in=_DROP), "expires_in is missing", id="no-expiry"),
    pytest.param(_token(expires_in="soon"), "expires_in is missing", id="expiry-text"),
    pytest.param(_token(expires_in=True), "expires_in is missing", id="expiry-bool"),
    pytest.param(_token(expires_in=None), "expires_in is missing", id="expiry-null"),
    pytest.param(_token(expires_in=0), "not a positive", id="expiry-zero"),
    pytest.param(_token(expires_in=-60), "not a positive", id="expiry-negative"),
    pytest.param(_token(expires_in=float("nan")), "not a positive", id="expiry-nan"),
    pytest.param(_token(expires_in=float("inf")), "absurdly large", id="expiry-inf"),
    pytest.param(_token(expires_in=10**400), "absurdly large", id="expiry-400-digits"),
    pytest.param(_token(expires_in="9" * 400), "absurdly large", id="expiry-400-digit-text"),
    pytest.param(_token(expires_in=1e300), "absurdly large", id="expiry-1e300"),
    pytest.param(
        Fault(status=200, body="{}", headers={"Content-Length": "9" * 5000}),
        "max_response_bytes",
        id="5000-digit-content-length",
    ),
    pytest.param(
        Fault(status=200, body="{}", headers={"Content-Encoding": "gzip"}),
        "gzip-encoded",
        id="gzip-though-identity-asked",
    ),
    pytest.param(Fault(status=200, body_size=20 * MB), "max_response_bytes", id="20MB"),
]


@pytest.mark.parametrize(("fault", "reason"), HOSTILE)
def test_unusable_2xx_answer_is_a_typed_error_after_one_request(
    emulator: GenesysEmulator, build: Build, fault: Fault, reason: str
) -> None:
    endpoint, credentials = build(max_retries=4)
    emulator.inject(fault)
    with pytest.raises(InvalidTokenResponseError, match=reason) as caught:
        endpoint.fetch(credentials)
    error = caught.value
    assert (error.status, error.retryable, error.attempts) == (200, False, 1)
    assert error.body_excerpt is not None
    assert len(error.body_excerpt) <= 203
    assert emulator.token_requests == 1
    # Named like every other token request error (issue 24): str(e) says which host.
    host = f"127.0.0.1:{emulator.port}"
    assert error.host == host
    assert f" {host}" in str(error)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [("3600", 3600.0), ("90.5", 90.5), (7200.25, 7200.25), (10**12, MAX_TOKEN_LIFETIME)],
)
def test_expires_in_numeric_strings_pass_and_absurd_lifetimes_are_capped(
    emulator: GenesysEmulator, build: Build, expires_in: Any, lifetime: float
) -> None:
    endpoint, credentials = build()
    emulator.inject(_token(expires_in=expires_in))
    assert endpoint.fetch(credentials).expires_in == lifetime


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9\u00b2", "12abc", "-5", ""], ids=repr)
def test_a_content_length_that_is_not_ascii_digits_is_as_good_as_none(
    emulator: GenesysEmulator, build: Build, length: str
) -> None:
    """``str.isdigit()`` accepts "²" (a header is Latin-1), which ``int()`` refuses: an
    untyped ValueError once. Not a length: the body is read to its end."""
    endpoint, credentials = build()
    token = _token()
    emulator.inject(Fault(status=200, body=token.body, headers={"Content-Length": length}))
    assert endpoint.fetch(credentials).expires_in == 3600


class _Unplanned(ValueError):
    """A fault nobody planned for, where the request is sent."""


class _UnplannedAdapter(HTTPAdapter):
    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        raise _Unplanned("boom")


def test_an_unexpected_error_is_a_counted_typed_error_naming_its_type_and_place(
    emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    session = requests.Session()
    session.mount("http://", _UnplannedAdapter())
    settings = Config.build(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=3,
    )
    with pytest.raises(TokenRequestError) as caught:
        TokenEndpoint(settings, session=session).fetch(settings.credentials)
    error = caught.value
    assert type(error) is TokenRequestError
    assert re.search(r"\(_Unplanned in send at test_transport\.py:\d+\)", str(error))
    assert (error.retryable, error.attempts, error.__context__) == (False, 1, None)
    assert [
        (r.levelname, r.exc_info) for r in caplog.records if r.name.startswith("genesys_token")
    ] == [("ERROR", None)]


def test_token_type_is_compared_case_insensitively(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build()
    emulator.inject(_token(token_type="Bearer", scope="a b"))
    response = endpoint.fetch(credentials)
    assert (response.token_type, response.scope) == ("Bearer", "a b")


def test_error_answer_carries_code_description_and_a_short_excerpt(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build()
    description = "grant_type is required " + "x" * 500
    emulator.inject(Fault.json({"error": "invalid_request", "description": description}, 400))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    error = caught.value
    assert (error.status, error.error) == (400, "invalid_request")
    assert error.description is not None
    assert error.description.startswith("grant_type is required")
    assert len(error.description) <= 123
    assert error.body_excerpt is not None
    assert len(error.body_excerpt) <= 203
    assert len(str(error)) < 200


# -- size cap: memory stays flat -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Length": "unknown"}],
    ids=["declared-length", "read-until-close"],
)
def test_20mb_answer_is_refused_and_memory_stays_flat(
    emulator: GenesysEmulator, build: Build, headers: dict[str, str]
) -> None:
    endpoint, credentials = build()
    endpoint.fetch(credentials)  # warm up: connection pool, imports, buffers
    emulator.inject(Fault(status=200, body_size=20 * MB, headers=headers))
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidTokenResponseError) as caught:
            endpoint.fetch(credentials)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Judged before the message: without the cap the 20 MB body is read whole (and fails
    # to parse), which must show up here as a peak of tens of megabytes.
    assert peak < 2 * MB, f"peak allocation {peak} bytes while refusing a 20 MB answer"
    assert "max_response_bytes" in str(caught.value)
    assert time.monotonic() - started < 2.0  # stopped at the cap, not after 20 MB


def test_oversized_error_answer_is_still_judged_by_its_status(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build()
    emulator.inject(Fault(status=503, body_size=20 * MB, headers={"Content-Length": "x"}))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    assert type(caught.value) is TokenRequestError
    assert (caught.value.status, caught.value.retryable) == (503, True)


# -- slow and broken bodies ----------------------------------------------------------------

TOKEN_BODY = {"access_token": "tok-" + "d" * 60, "token_type": "bearer", "expires_in": 600}


def test_slow_drip_body_is_let_go_at_the_attempts_total_deadline(
    emulator: GenesysEmulator, build: Build
) -> None:
    # Every 16-byte piece comes well within the 0.3 s socket timeout; the whole body (about
    # forty pieces, 4 s) does not come within the attempt's deadline: 0.2 + 2 x 0.3 + 1 = 1.8 s.
    endpoint, credentials = build(timeout=(0.2, 0.3))
    body = {**TOKEN_BODY, "access_token": "tok-" + "d" * 600}
    emulator.inject(Fault(status=200, body=body, drip=0.1))
    started = time.monotonic()
    with pytest.raises(TokenRequestError, match="stalled") as caught:
        endpoint.fetch(credentials)
    assert 1.7 < time.monotonic() - started < 2.3
    assert caught.value.retryable


def test_headers_trickled_a_byte_every_half_second_end_at_the_deadline() -> None:
    # The case: one byte every 0.5 s, each within the 1 s read timeout, forever. The
    # caller gets a typed error at the attempt's deadline (0.5 + 2 x 1 + 1 = 3.5 s), and the
    # connection is let go by then: the server sees its peer gone within the next second.
    server = TricklingServer(gap=0.5)
    try:
        settings = Config.build(
            "cid",
            "secret",
            token_url=f"http://127.0.0.1:{server.port}/oauth/token",
            api_base_url="http://127.0.0.1:1",
            timeout=(0.5, 1.0),
            max_retries=0,
        )
        endpoint = TokenEndpoint(settings)
        started = time.monotonic()
        with pytest.raises(TokenRequestError, match="timed out") as caught:
            endpoint.fetch(settings.credentials)
        took = time.monotonic() - started
        assert 3.4 < took < 4.0, took
        assert caught.value.retryable
        assert server.peer_gone.wait(1.5), "the connection was kept past the deadline + 1 s"
    finally:
        server.stop()


def test_drip_within_the_read_timeout_is_read_whole(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(timeout=(2.0, 2.0))
    emulator.inject(Fault(status=200, body=TOKEN_BODY, drip=0.01))
    assert endpoint.fetch(credentials).access_token == TOKEN_BODY["access_token"]


def test_body_stalling_past_the_read_timeout_is_a_retryable_error(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(timeout=(2.0, 0.2))
    emulator.inject(Fault(status=200, body=TOKEN_BODY, drip=0.5))
    with pytest.raises(TokenRequestError, match="stalled") as caught:
        endpoint.fetch(credentials)
    assert caught.value.retryable


def test_body_cut_short_is_a_retryable_error(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build()
    emulator.inject(Fault(status=200, body='{"access_token":', headers={"Content-Length": "400"}))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    assert type(caught.value) is TokenRequestError
    assert caught.value.retryable


def test_headers_never_arriving_is_a_retryable_timeout(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(timeout=(2.0, 0.2))
    emulator.inject(Fault(delay=0.5, passthrough=True))
    with pytest.raises(TokenRequestError, match="timed out") as caught:
        endpoint.fetch(credentials)
    assert (caught.value.status, caught.value.retryable) == (None, True)


# -- calls with a token --------------------------------------------------------------------


def test_check_and_revoke_use_the_api_host(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build()
    token = endpoint.fetch(credentials).access_token
    assert endpoint.check(token) == 200
    assert endpoint.revoke(token) is True
    assert endpoint.check(token) == 401
    assert endpoint.revoke(token) is False


def test_check_and_revoke_on_an_unreachable_host_report_instead_of_raising() -> None:
    settings = Config.build(
        "id", "pw", token_url="http://127.0.0.1:9/t", api_base_url="http://127.0.0.1:9"
    )
    endpoint = TokenEndpoint(settings)
    assert endpoint.check("tok") is None
    assert endpoint.revoke("tok") is False
    endpoint.close()


def test_a_session_passed_in_is_used_and_left_open(emulator: GenesysEmulator) -> None:
    import requests

    settings = Config.build(
        emulator.client_id, emulator.client_secret, token_url=emulator.token_url
    )
    with requests.Session() as session:
        endpoint = TokenEndpoint(settings, session=session)
        endpoint.fetch(settings.credentials)
        endpoint.close()
        assert session.adapters  # not closed by the endpoint: still usable
        endpoint.fetch(settings.credentials)
    assert emulator.token_requests == 2


# -- proxies from the environment ----------------------------------------------------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]


class _ForwardingProxy(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy (absolute-form request lines, no CONNECT)."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def _forward(self) -> None:
        self.server.seen.append((self.command, self.path))
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=5)
        try:
            upstream.request(self.command, target.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("test.proxy").debug(format, *args)


@pytest.fixture
def proxy() -> Iterator[_ProxyServer]:
    server = _ProxyServer(("127.0.0.1", 0), _ForwardingProxy)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(2)


def test_no_proxy_bypasses_the_environment_proxy(
    emulator: GenesysEmulator,
    build: Build,
    proxy: _ProxyServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    endpoint, credentials = build()
    endpoint.fetch(credentials)
    assert proxy.seen == []
    assert emulator.token_requests == 1


def test_requests_hanging_on_a_host_hold_its_slots_only_for_their_lease() -> None:
    # 8 requests that hang at a login host every org shares: a 9th org's request waits for
    # the oldest to stop counting (SLOT_LEASE), not for the hang to end.
    limiter = HostLimiter(limit=8, lease=0.3)
    release = threading.Event()
    holding = threading.Barrier(9, timeout=5)

    def hang() -> None:
        with limiter.slot("login.example", None, 5.0) as held:
            assert held
            holding.wait()
            release.wait(5)

    threads = [threading.Thread(target=hang) for _ in range(8)]
    for thread in threads:
        thread.start()
    holding.wait()
    try:
        started = time.monotonic()
        with limiter.slot("login.example", None, 5.0) as held:
            waited = time.monotonic() - started
        assert held
        assert 0.1 < waited < 0.6, waited
        # A burst still queues: 8 young requests hold the 9th back.
        young = HostLimiter(limit=1, lease=5.0)
        with young.slot("h", None, 1.0), young.slot("h", None, 0.2) as second:
            assert not second  # waited its bound, then went ahead without a slot
    finally:
        release.set()
        for thread in threads:
            thread.join(5)


# -- a manager's flight: trickled headers, the shared connection pool ----------------------


def test_a_token_endpoint_trickling_its_headers_cannot_hold_the_flight(
    make_manager: MakeManager,
):
    # Defect token_endpoint_trickled_headers: no per-read timeout fired, the flight ran forever.
    server = TricklingServer(gap=0.05)
    try:
        manager = make_manager(
            token_url=f"http://127.0.0.1:{server.port}/oauth/token",
            api_base_url=f"http://127.0.0.1:{server.port}",
            timeout=(0.2, 0.3),  # the watchdog: 0.2 + 2 x 0.3 + 1 = 1.8 s
            max_retries=0,
            retry_deadline=1.0,
        )
        started = time.monotonic()
        with pytest.raises(TokenRequestError) as excinfo:
            manager.get_token(timeout=4)
        assert not isinstance(excinfo.value, TokenTimeoutError)
        # A timeout (retryable), not the "2xx without a token" that the headers cut at the
        # EOF look like.
        assert type(excinfo.value) is TokenRequestError and excinfo.value.retryable
        assert "timed out" in str(excinfo.value)
        assert time.monotonic() - started < 3.5
        eventually(lambda: not manager._flight.running, timeout=1)
        join_fetch_threads()
    finally:
        server.stop()


def test_close_of_one_manager_never_cuts_a_connection_another_took_from_the_pool(
    emulator: GenesysEmulator, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
):
    # Defect cancel_cuts_other_managers_conn: a pooled connection kept its last user's tag,
    # so that manager's close() shut the socket of the manager using it now.
    a, b = make_manager(), make_manager()
    a_read, a_resume = threading.Event(), threading.Event()
    attempt = a._transport._attempt

    def a_attempt(*args: Any) -> Any:
        response = attempt(*args)  # read: its connection is back in the pool, tag and all
        a_read.set()
        assert a_resume.wait(5)
        return response

    a._transport._attempt = a_attempt  # type: ignore[method-assign]
    taken, b_resume, reused = threading.Event(), threading.Event(), []
    get_conn = _http._HTTPPool._get_conn

    def hooked_get_conn(self: Any, timeout: float | None = None) -> Any:
        conn = get_conn(self, timeout)
        if a_read.is_set() and not taken.is_set():
            reused.append(conn is not None)
            taken.set()
            assert b_resume.wait(5)
        return conn

    monkeypatch.setattr(_http._HTTPPool, "_get_conn", hooked_get_conn)
    a_caller, _ = in_background(a.get_token)
    try:
        assert a_read.wait(5)
        b_caller, b_got = in_background(b.get_token)
        assert taken.wait(5)
        assert reused == [True]  # B took A's connection from the pool
        a.close()  # A's attempt is still open: its close() cuts what A's scope holds
    finally:
        a_resume.set()
        b_resume.set()
        a_caller.join(5)
    b_caller.join(10)
    assert isinstance(b_got[0], str), b_got
    assert b.metrics()["retries"] == 0
    assert emulator.token_requests == 2


# -- errors that say where and why ---------------------------------------------------------


def _endpoint_for(token_url: str, **options: Any) -> tuple[TokenEndpoint, Credentials]:
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", (2.0, 2.0))
    settings = Config.build(
        "cid", "s3cret-value", token_url=token_url, api_base_url="http://127.0.0.1:1", **options
    )
    return TokenEndpoint(settings), settings.credentials


def _refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed on exit: nobody listens there


def test_refused_connection_names_the_host_port_and_cause() -> None:
    port = _refused_port()
    endpoint, credentials = _endpoint_for(f"http://127.0.0.1:{port}/oauth/token")
    try:
        with pytest.raises(TokenRequestError) as caught:
            endpoint.fetch(credentials)
    finally:
        endpoint.close()
    error = caught.value
    assert (error.host, error.cause, error.status) == (
        f"127.0.0.1:{port}",
        "connection refused",
        None,
    )
    assert f"could not reach the token endpoint 127.0.0.1:{port}: connection refused" in str(error)
    assert error.retryable and error.correlation_id is None
    assert error.__cause__ is None  # hygiene: no chain to the frames holding the Basic header


def test_failed_name_lookup_says_so_without_the_default_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_such_name(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    endpoint, credentials = _endpoint_for("https://login.nowhere.example/oauth/token")
    try:
        with pytest.raises(TokenRequestError) as caught:
            endpoint.fetch(credentials)
    finally:
        endpoint.close()
    error = caught.value
    assert (error.host, error.cause) == ("login.nowhere.example", "name lookup failed")
    assert "login.nowhere.example: name lookup failed" in str(error)


def test_read_timeout_names_the_host_and_the_kind_of_timeout(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(timeout=(2.0, 0.2))
    emulator.inject(Fault(delay=0.5, passthrough=True))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    host = f"127.0.0.1:{emulator.port}"
    assert (caught.value.host, caught.value.cause) == (host, "read timed out")
    assert f"token request to {host} timed out: read timed out" in str(caught.value)


def test_genesys_error_body_gives_code_host_and_correlation_id(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build()
    body = {
        "message": "The request could not be understood",
        "code": "bad.request",
        "status": 400,
        "contextId": "c0ffee",
        "details": [],
        "errors": [],
    }
    emulator.inject(Fault(status=400, body=body))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    error = caught.value
    (record,) = emulator.token_request_log
    assert record.correlation_id and error.correlation_id == record.correlation_id
    host = f"127.0.0.1:{emulator.port}"
    assert (error.status, error.code, error.error, error.host) == (400, "bad.request", None, host)
    assert str(error) == (
        "token request failed (HTTP 400 bad.request: The request could not be understood)"
        f" from {host} [correlation id {record.correlation_id}]"
    )


@pytest.mark.parametrize("shape", ["{}", "id-{}:1"])
def test_a_correlation_id_holding_the_client_secret_is_dropped(
    emulator: GenesysEmulator,
    make_manager: MakeManager,
    caplog: pytest.LogCaptureFixture,
    shape: str,
) -> None:
    # A hostile token endpoint echoes the secret in ININ-Correlation-Id: it must reach no
    # error, event or log line (review: correlation_echo).
    secret = emulator.client_secret
    emulator.inject(
        Fault(status=503, headers={"ININ-Correlation-Id": shape.format(secret)}), times=None
    )
    manager = make_manager(max_retries=0, background_refresh=False)
    records: list[dict[str, Any]] = []
    manager.on("*", records.append)
    with caplog.at_level(logging.DEBUG, logger="genesys_token"):
        with pytest.raises(TokenRequestError) as caught:
            manager.get_token(timeout=5)
        eventually(lambda: any(r["event_type"] == "TOKEN_REFRESH_FAILURE" for r in records))
    error = caught.value
    assert error.correlation_id is None
    assert secret not in str(error) + repr(error)
    assert secret not in repr(records)
    assert secret not in caplog.text
    assert all(getattr(r, "correlation_id", None) is None for r in caplog.records)


def test_a_correlation_id_holding_a_short_secret_is_dropped(caplog: pytest.LogCaptureFixture):
    # Redaction spares known values under 8 characters (prose would be mangled); a
    # correlation id holding one is dropped whole all the same (review D4).
    secret = "hunter2"
    with GenesysEmulator(client_secret=secret) as emulator:
        emulator.inject(
            Fault(status=503, headers={"ININ-Correlation-Id": f"id-{secret}-x"}), times=None
        )
        manager = TokenManager(
            emulator.client_id,
            secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            max_retries=0,
            background_refresh=False,
        )
        try:
            with (
                caplog.at_level(logging.DEBUG, logger="genesys_token"),
                pytest.raises(TokenRequestError) as caught,
            ):
                manager.get_token(timeout=5)
        finally:
            manager.close()
    assert caught.value.correlation_id is None
    assert secret not in str(caught.value) + caplog.text


@pytest.mark.parametrize(
    "value",
    [
        "a b=c",
        "abc status=200 host=login.mypurecloud.com) ok",
        "abc\x1b[31m",
        "caf\u00e9-1",
        "A" * 65,
    ],
)
def test_a_malformed_correlation_id_is_treated_as_absent(
    emulator: GenesysEmulator, build: Build, value: str
) -> None:
    endpoint, credentials = build()
    emulator.inject(Fault(status=503, headers={"ININ-Correlation-Id": value}))
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    assert caught.value.correlation_id is None
    assert "correlation id" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://user:pw@login.example.com/oauth/token", "login.example.com"),
        ("https://login.example.com:443/x", "login.example.com"),
        ("http://login.example.com:80/x", "login.example.com"),
        ("https://login.example.com:8443/x", "login.example.com:8443"),
        ("http://u:p@[::1]:9000/x", "[::1]:9000"),
    ],
)
def test_host_of_drops_userinfo_and_default_ports(url: str, host: str) -> None:
    assert host_of(url) == host
