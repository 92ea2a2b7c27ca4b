"""The Genesys emulator over real HTTP (requests): grant, errors, API host, faults, lifecycle."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import runpy
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from conftest import eventually

import genesys_token.testing as testing_package
from genesys_token.testing import Fault, GenesysEmulator, TokenRequestRecord, _cli
from genesys_token.testing._cli import RequestPrinter, run
from genesys_token.testing._wire import url_host
from genesys_token.testing.emulator import CORRELATION_HEADER

GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def emu() -> Iterator[GenesysEmulator]:
    with GenesysEmulator() as emulator:
        yield emulator


def grant(
    emulator: GenesysEmulator,
    client_id: str | None = None,
    secret: str | None = None,
    **form: str,
) -> requests.Response:
    auth = (client_id or emulator.client_id, secret or emulator.client_secret)
    return requests.post(emulator.token_url, data={**GRANT, **form}, auth=auth, timeout=5)


def token(emulator: GenesysEmulator, **form: str) -> str:
    response = grant(emulator, **form)
    assert response.status_code == 200, response.text
    value: str = response.json()["access_token"]
    return value


def api(
    emulator: GenesysEmulator, path: str, access_token: str | None, method: str = "GET", **kw: Any
) -> requests.Response:
    headers = {} if access_token is None else {"Authorization": f"Bearer {access_token}"}
    return requests.request(method, emulator.url + path, headers=headers, timeout=5, **kw)


# ---------------------------------------------------------------------------------- token grant
def test_successful_grant(emu: GenesysEmulator) -> None:
    response = grant(emu)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86399
    access_token = body["access_token"]
    assert "." not in access_token and len(access_token) >= 100
    assert emu.is_token_valid(access_token)
    assert emu.issued_tokens == [access_token]
    assert emu.token_requests == 1
    (record,) = emu.token_request_log
    assert isinstance(record, TokenRequestRecord)
    assert record.client_id == emu.client_id and record.status == 200
    assert record.grant_type == "client_credentials" and record.scope is None
    assert record.auth_method == "basic" and record.time <= time.monotonic()
    assert emu.url.startswith("http://127.0.0.1:") and emu.api_base_url == emu.url
    assert emu.host == "127.0.0.1" and emu.url.endswith(str(emu.port))
    assert emu.token_url == emu.url + "/oauth/token" and emu.jwks_url == emu.url + "/jwks"
    assert response.headers["Server"] == "GenesysEmulator"


def test_a_client_fault_touches_that_clients_token_requests_only(emu: GenesysEmulator) -> None:
    emu.add_client("org-b", "secret-b")
    emu.inject(Fault.server_error(503), times=None, client_id="org-b")
    assert grant(emu).status_code == 200  # another client passes the fault by
    assert grant(emu, "org-b", "secret-b").status_code == 503
    assert grant(emu, "org-b", "secret-b").status_code == 503  # times=None: it stays
    assert api(emu, "/api/v2/tokens/me", token(emu)).status_code == 200  # API paths too


def test_token_expiry_is_on_the_monotonic_clock(emu: GenesysEmulator) -> None:
    emu.token_ttl = 60
    before = time.monotonic()
    issued = token(emu)
    expiry = emu.token_expiry(issued)
    assert expiry is not None and before + 60 <= expiry <= time.monotonic() + 60
    assert emu.token_expiry("never-issued") is None


def test_credentials_in_body_only_when_no_basic_header(emu: GenesysEmulator) -> None:
    form = {**GRANT, "client_id": emu.client_id, "client_secret": emu.client_secret}
    assert requests.post(emu.token_url, data=form, timeout=5).status_code == 200
    # A Basic header wins over body fields.
    wrong = requests.post(emu.token_url, data=form, auth=("nobody", "x"), timeout=5)
    assert wrong.json()["description"] == "client not found"
    assert [r.auth_method for r in emu.token_request_log] == ["body", "basic"]
    assert [r.client_id for r in emu.token_request_log] == [emu.client_id, "nobody"]


@pytest.mark.parametrize("status", [401, 400])
def test_invalid_client(status: int) -> None:
    with GenesysEmulator(invalid_client_status=status) as emulator:
        unknown = grant(emulator, client_id="nobody")
        wrong = grant(emulator, secret="wrong")
        missing = requests.post(emulator.token_url, data=GRANT, timeout=5)
        garbled = requests.post(
            emulator.token_url, data=GRANT, headers={"Authorization": "Basic !!!"}, timeout=5
        )
        no_colon = base64.b64encode(b"no-colon").decode()
        colonless = requests.post(
            emulator.token_url,
            data=GRANT,
            headers={"Authorization": f"Basic {no_colon}"},
            timeout=5,
        )
    expected = [
        (unknown, "client not found"),
        (wrong, "authentication failed"),
        (missing, "authentication failed"),
        (garbled, "authentication failed"),
        (colonless, "authentication failed"),
    ]
    for response, description in expected:
        assert response.status_code == status
        assert response.json() == {
            "error": "invalid_client",
            "description": description,
            "error_description": description,
        }
    assert emulator.token_requests == 5 and emulator.issued_tokens == []
    assert [r.auth_method for r in emulator.token_request_log][2:] == [None, "basic", "basic"]


def test_grant_errors(emu: GenesysEmulator) -> None:
    emu.add_client("no-grant", "s", grant_allowed=False)
    refused = grant(emu, client_id="no-grant", secret="s")
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    other = grant(emu, grant_type="password")
    assert other.status_code == 400
    assert other.json()["error"] == "unsupported_grant_type"
    assert other.json()["description"] == other.json()["error_description"]
    auth = (emu.client_id, emu.client_secret)
    missing = requests.post(emu.token_url, data={"x": "1"}, auth=auth, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    as_json = requests.post(emu.token_url, json=GRANT, auth=auth, timeout=5)
    assert as_json.status_code == 400 and "content type" in as_json.json()["description"]
    get = requests.get(emu.token_url, auth=auth, timeout=5)
    assert get.status_code == 405
    assert emu.token_requests == 5
    assert [r.status for r in emu.token_request_log] == [400, 400, 400, 400, 405]


def test_rate_limit_over_rolling_window() -> None:
    with GenesysEmulator(token_rate_limit=2, rate_limit_window=0.4) as emulator:
        assert [grant(emulator).status_code for _ in range(2)] == [200, 200]
        limited = grant(emulator)
        assert limited.status_code == 400
        body = limited.json()
        assert body["error"] == "invalid_request"
        assert body["description"].startswith("rate limit exceeded;")
        assert body["error_description"] == body["description"]
        emulator.add_client("other", "s")  # the limit is per client
        assert grant(emulator, client_id="other", secret="s").status_code == 200
        time.sleep(0.45)
        assert grant(emulator).status_code == 200
        assert emulator.token_rate_limit == 2
        emulator.token_rate_limit = None
        assert all(grant(emulator).status_code == 200 for _ in range(3))


def test_clients_ttl_and_secret_rotation(emu: GenesysEmulator) -> None:
    emu.add_client("short", "s1", token_ttl=300)
    assert grant(emu, client_id="short", secret="s1").json()["expires_in"] == 300
    emu.token_ttl = 42.9
    assert emu.token_ttl == 42.9 and grant(emu).json()["expires_in"] == 42
    emu.set_secret("short", "s2", keep_old=True)
    assert grant(emu, client_id="short", secret="s1").status_code == 200
    assert grant(emu, client_id="short", secret="s2").status_code == 200
    emu.set_secret("short", "s3")
    assert grant(emu, client_id="short", secret="s2").status_code == 401
    old_default = emu.client_secret
    emu.set_secret(emu.client_id, "new-default")
    assert emu.client_secret == "new-default"
    assert grant(emu, secret=old_default).status_code == 401
    issued = token(emu)
    emu.remove_client(emu.client_id)
    assert not emu.is_token_valid(issued) and issued in emu.revoked_tokens
    assert grant(emu).json()["description"] == "client not found"
    with pytest.raises(KeyError):
        emu.set_secret("nobody", "x")


# ---------------------------------------------------------------------------------- JWT mode
def test_jwt_tokens_verify_against_jwks() -> None:
    with GenesysEmulator(token_format="jwt", token_ttl=600) as emulator:
        emulator.add_client("scoped", "s", scopes=["users:readonly", "analytics"])
        plain = token(emulator)
        requested = token(emulator, scope="users analytics")
        scoped = grant(emulator, "scoped", "s", scope="analytics users:readonly other").json()
        scoped_default = grant(emulator, "scoped", "s").json()["access_token"]
        jwks = requests.get(emulator.jwks_url, timeout=5).json()
        keys = jwt.PyJWKClient(emulator.jwks_url)
        signing_key = keys.get_signing_key_from_jwt(plain)

        def decode(value: str) -> dict[str, Any]:
            claims: dict[str, Any] = jwt.decode(
                value, signing_key.key, algorithms=["RS256"], issuer=emulator.url
            )
            return claims

        claims = decode(plain)
        assert requests.post(emulator.jwks_url, timeout=5).status_code == 404
        info = api(emulator, "/api/v2/tokens/me", scoped["access_token"]).json()
    (key,) = jwks["keys"]
    assert key["kid"] == jwt.get_unverified_header(plain)["kid"]
    assert key["use"] == "sig" and key["alg"] == "RS256" and key["kty"] == "RSA"
    assert claims["sub"] == claims["client_id"] == emulator.client_id
    assert claims["org_id"] == emulator.org_id and claims["jti"]
    assert 599 <= claims["exp"] - claims["iat"] <= 600
    assert "scope" not in claims
    assert decode(requested)["scope"] == "users analytics"
    assert decode(scoped["access_token"])["scope"] == "analytics users:readonly"
    assert decode(scoped_default)["scope"] == "users:readonly analytics"
    assert info["authorizedScope"] == ["analytics", "users:readonly"]
    assert emulator.token_request_log[2].scope == "analytics users:readonly other"


def test_token_format_setter(emu: GenesysEmulator) -> None:
    assert emu.token_format == "opaque"
    emu.token_format = "jwt"
    assert token(emu).count(".") == 2
    with pytest.raises(ValueError):
        emu.token_format = "paseto"  # type: ignore[assignment]


# ---------------------------------------------------------------------------------- API host
def test_tokens_me_get_head_delete(emu: GenesysEmulator) -> None:
    access_token = token(emu)
    info = api(emu, "/api/v2/tokens/me", access_token)
    assert info.status_code == 200
    body = info.json()
    assert body["organization"]["id"] == emu.org_id == body["homeOrganization"]["id"]
    assert body["OAuthClient"]["id"] == emu.client_id and body["authorizedScope"] == []
    assert body["dateTokenIdles"].endswith("Z")
    head = api(emu, "/api/v2/tokens/me", access_token, "HEAD")
    assert head.status_code == 200 and head.content == b""
    org = api(emu, "/api/v2/organizations/me", access_token).json()
    assert org["id"] == emu.org_id and org["name"] == "Emulated Org"
    deleted = api(emu, "/api/v2/tokens/me", access_token, "DELETE")
    assert deleted.status_code == 204 and deleted.content == b""
    assert access_token in emu.revoked_tokens and not emu.is_token_valid(access_token)
    assert api(emu, "/api/v2/tokens/me", access_token, "HEAD").status_code == 401
    assert api(emu, "/api/v2/tokens/me", access_token, "DELETE").status_code == 401
    assert emu.api_requests == 6
    log = emu.api_request_log
    assert [(r.method, r.status) for r in log] == [
        ("GET", 200),
        ("HEAD", 200),
        ("GET", 200),
        ("DELETE", 204),
        ("HEAD", 401),
        ("DELETE", 401),
    ]
    assert log[0].path == "/api/v2/tokens/me" and log[0].token_used == access_token


def test_api_401_and_404_bodies(emu: GenesysEmulator) -> None:
    missing = api(emu, "/api/v2/tokens/me", None)
    assert missing.status_code == 401
    body = missing.json()
    assert body["code"] == "authentication.required" and body["status"] == 401
    assert body["message"] == "No authentication bearer token specified in authorization header."
    assert body["details"] == [] and body["errors"] == [] and body["contextId"]
    basic = requests.get(emu.url + "/api/v2/x", auth=("a", "b"), timeout=5)
    assert basic.json()["code"] == "authentication.required"
    bad = api(emu, "/api/v2/tokens/me", "not-a-token").json()
    assert bad["code"] == "bad.credentials" and bad["message"] == "Invalid login credentials."
    assert bad["status"] == 401 and bad["details"] == [] and bad["errors"] == []
    access_token = token(emu)
    unknown = api(emu, "/api/v2/users/me", access_token)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not.found" and unknown.json()["status"] == 404
    assert api(emu, "/api/v2/organizations/me", access_token, "DELETE").status_code == 404
    assert api(emu, "/nothing-here", None).json()["code"] == "not.found"
    assert api(emu, "/nothing-here", None, "HEAD").content == b""
    assert emu.api_request_log[1].token_used is None


def test_expiry_and_expire(emu: GenesysEmulator) -> None:
    emu.token_ttl = 0.2
    short = token(emu)
    assert api(emu, "/api/v2/tokens/me", short).status_code == 200
    time.sleep(0.25)
    assert api(emu, "/api/v2/tokens/me", short).json()["code"] == "bad.credentials"
    emu.token_ttl = 3600
    other = token(emu)
    emu.expire(other)
    assert not emu.is_token_valid(other)
    assert api(emu, "/api/v2/tokens/me", other).status_code == 401
    emu.revoke("never-issued")
    assert "never-issued" in emu.revoked_tokens
    with pytest.raises(KeyError):
        emu.expire("never-issued")


def test_echo_with_plain_and_chunked_bodies(emu: GenesysEmulator) -> None:
    access_token = token(emu)
    payload = b"x" * 100_000
    for method in ("POST", "PUT", "PATCH"):
        echo = api(emu, "/api/v2/echo", access_token, method, data=payload).json()
        assert echo == {
            "method": method,
            "path": "/api/v2/echo",
            "length": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    chunked = api(emu, "/api/v2/echo/sub", access_token, "POST", data=iter([b"ab", b"", b"cd"]))
    assert chunked.json()["length"] == 4 and chunked.json()["path"] == "/api/v2/echo/sub"


def test_redirect_and_headers(emu: GenesysEmulator) -> None:
    with GenesysEmulator() as other:
        auth = {"Authorization": "Bearer secret-token", "X-Probe": "1"}
        cross = requests.get(
            emu.url + "/redirect", params={"to": other.url + "/headers"}, headers=auth, timeout=5
        )
        assert cross.status_code == 200 and cross.json()["X-Probe"] == "1"
        assert "Authorization" not in cross.json()  # requests drops it on a host change
    same = requests.get(emu.url + "/redirect?to=/headers", headers=auth, timeout=5)
    assert same.json()["Authorization"] == "Bearer secret-token"
    raw = requests.get(
        emu.url + "/redirect",
        params={"to": "https://elsewhere.example/x", "status": "307"},
        allow_redirects=False,
        timeout=5,
    )
    assert raw.status_code == 307 and raw.headers["Location"] == "https://elsewhere.example/x"
    assert requests.get(emu.url + "/redirect", timeout=5).status_code == 400
    bad_status = requests.get(emu.url + "/redirect?to=/x&status=200", timeout=5)
    assert bad_status.status_code == 400
    assert emu.api_request_log[0].path == "/redirect"


def test_keep_alive_reuses_the_connection(emu: GenesysEmulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        conn.request("GET", "/headers")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        conn.request("POST", "/api/v2/echo", body=b"abc")
        second = conn.getresponse()
        assert second.status == 401 and second.read()
        assert conn.sock is sock and sock is not None
    finally:
        conn.close()


def raw_exchange(emulator: GenesysEmulator, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_malformed_request_bodies_get_400(emu: GenesysEmulator, request_bytes: bytes) -> None:
    assert raw_exchange(emu, request_bytes).startswith(b"HTTP/1.1 400")


def test_chunked_trailers_are_skipped(emu: GenesysEmulator) -> None:
    data = (
        b"POST /api/v2/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert raw_exchange(emu, data).startswith(b"HTTP/1.1 401")


# ---------------------------------------------------------------------------------- faults
def test_fault_helpers(emu: GenesysEmulator) -> None:
    emu.inject(Fault.too_many_requests(retry_after=7), path="/api/v2")
    limited = api(emu, "/api/v2/tokens/me", None)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    body = limited.json()
    assert body["code"] == "too.many.requests.retry.after" and body["status"] == 429
    assert body["message"] == "Rate limit exceeded the maximum. Retry the request in [7] seconds"
    assert api(emu, "/api/v2/tokens/me", None).status_code == 401  # only once

    emu.inject(Fault.rate_limited_token(retry_after=3))
    rate = grant(emu)
    assert rate.status_code == 400 and rate.headers["Retry-After"] == "3"
    assert rate.json()["error"] == "invalid_request"
    assert rate.json()["error_description"].startswith("rate limit exceeded;")
    emu.inject(Fault.rate_limited_token())
    assert "Retry-After" not in grant(emu).headers

    emu.inject(Fault.server_error(502))
    bad_gateway = grant(emu)
    assert bad_gateway.status_code == 502 and bad_gateway.json()["code"] == "bad.gateway"
    emu.inject(Fault.html())
    page = grant(emu)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<html>" in page.text
    emu.inject(Fault.json({"access_token": 5}, status=200))
    assert grant(emu).json() == {"access_token": 5}
    assert emu.token_requests == 5 and emu.issued_tokens == []
    assert [r.status for r in emu.token_request_log] == [400, 400, 502, 200, 200]
    assert grant(emu).status_code == 200


def test_fault_default_bodies_and_headers(emu: GenesysEmulator) -> None:
    emu.inject(Fault())
    default = grant(emu)
    assert default.status_code == 503 and default.json()["code"] == "service.unavailable"
    emu.inject(status=599)
    assert grant(emu).json()["message"] == "Emulated fault"
    emu.inject(Fault.server_error(507))
    assert grant(emu).json()["code"] == "server.error"
    emu.inject(status=204)
    assert grant(emu).content == b""
    emu.inject(status=200, body="plain")
    text = grant(emu)
    assert text.text == "plain" and text.headers["Content-Type"].startswith("text/plain")
    emu.inject(status=200, body=b"{}", headers={"Content-Type": "application/json", "X-A": "b"})
    raw = grant(emu)
    assert raw.json() == {} and raw.headers["X-A"] == "b"
    emu.inject(Fault(status=500), status=418)  # kwargs override the given fault
    assert grant(emu).status_code == 418
    emu.inject(status=200, body="abc", headers={"Content-Length": "10"})
    with pytest.raises(requests.RequestException):
        grant(emu)
    assert grant(emu).status_code == 200


def test_fault_validation() -> None:
    for kwargs in (
        {"status": 99},
        {"status": 600},
        {"delay": -1},
        {"body_size": -1},
        {"drip": 0},
        {"drop": True, "passthrough": True},
    ):
        with pytest.raises(ValueError):
            Fault(**kwargs)
    headers = {"A": "1"}
    fault = Fault(headers=headers)
    headers["A"] = "2"
    assert fault.headers["A"] == "1"


def test_inject_times_paths_and_clear(emu: GenesysEmulator) -> None:
    access_token = token(emu)
    returned = emu.inject(status=500, times=2, path="/api/v2/organizations")
    assert returned == Fault(status=500)
    assert api(emu, "/api/v2/tokens/me", access_token).status_code == 200  # other path
    assert api(emu, "/api/v2/organizations/me", access_token).status_code == 500
    assert api(emu, "/api/v2/organizations/me", access_token).status_code == 500
    assert api(emu, "/api/v2/organizations/me", access_token).status_code == 200
    emu.inject(status=502, times=None, path="/")
    assert [grant(emu).status_code for _ in range(3)] == [502, 502, 502]
    emu.clear_faults()
    assert grant(emu).status_code == 200
    with pytest.raises(ValueError):
        emu.inject(times=0)
    with pytest.raises(ValueError):
        emu.inject(path="api/v2")


def test_fault_delay_and_passthrough(emu: GenesysEmulator) -> None:
    emu.inject(Fault(delay=0.3, passthrough=True))
    started = time.monotonic()
    assert grant(emu).status_code == 200
    assert time.monotonic() - started >= 0.3
    emu.inject(delay=0.2, status=503, path="/api/v2")
    started = time.monotonic()
    assert api(emu, "/api/v2/x", None).status_code == 503
    assert time.monotonic() - started >= 0.2
    emu.inject(delay=0.5)
    with pytest.raises(requests.Timeout):
        requests.post(emu.token_url, data=GRANT, timeout=0.1)


def test_fault_drop(emu: GenesysEmulator) -> None:
    emu.inject(drop=True)
    with pytest.raises(requests.ConnectionError):
        grant(emu)
    assert emu.token_request_log[0].status == 0
    emu.inject(drop=True, path="/api/v2")
    with pytest.raises(requests.ConnectionError):
        api(emu, "/api/v2/tokens/me", None)
    assert emu.api_request_log[0].status == 0
    assert grant(emu).status_code == 200


def test_fault_body_size_streams(emu: GenesysEmulator) -> None:
    size = 5 * 1024 * 1024
    emu.inject(status=200, body_size=size, path="/api/v2")
    response = api(emu, "/api/v2/tokens/me", None, stream=True)
    assert int(response.headers["Content-Length"]) == size
    assert response.headers["Content-Type"] == "application/json"
    received = 0
    first = b""
    for chunk in response.iter_content(65536):
        first = first or chunk
        received += len(chunk)
    assert received == size and first.startswith(b'{"filler":"')
    emu.inject(status=200, body_size=0)
    assert grant(emu).content == b""
    emu.inject(status=200, body_size=256 * 1024 * 1024)  # client gives up after one chunk
    abandoned = requests.post(emu.token_url, data=GRANT, stream=True, timeout=5)
    assert next(abandoned.iter_content(1024))
    abandoned.close()
    assert grant(emu).status_code == 200


def test_fault_drip(emu: GenesysEmulator) -> None:
    emu.inject(status=200, body=b"y" * 48, drip=0.05)
    started = time.monotonic()
    assert grant(emu).content == b"y" * 48  # three 16-byte pieces
    assert time.monotonic() - started >= 0.15
    emu.inject(status=200, body_size=40, drip=0.02, path="/api/v2")
    assert len(api(emu, "/api/v2/x", None).content) == 40
    emu.inject(status=200, body=b"z" * 64, drip=0.5)
    started = time.monotonic()
    with pytest.raises((requests.ConnectionError, requests.Timeout)):
        requests.post(emu.token_url, data=GRANT, timeout=0.2)
    assert time.monotonic() - started < 0.5


def test_api_delay(emu: GenesysEmulator) -> None:
    access_token = token(emu)
    emu.api_delay = 0.2
    assert emu.api_delay == 0.2
    started = time.monotonic()
    assert api(emu, "/api/v2/tokens/me", access_token).status_code == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    token(emu)  # the token endpoint is not delayed
    assert time.monotonic() - started < 0.2
    with pytest.raises(ValueError):
        emu.api_delay = -1


# ---------------------------------------------------------------------------------- lifecycle
def test_stop_is_fast_while_a_handler_is_delayed() -> None:
    emulator = GenesysEmulator().start()
    emulator.inject(delay=30, path="/api/v2")  # the first call waits in the fault
    emulator.api_delay = 30  # the second one in the API delay
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(emulator.url + "/api/v2/tokens/me", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(2)]
    for worker in workers:
        worker.start()
    eventually(lambda: emulator.api_requests == 2)
    time.sleep(0.05)
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 1.5
    for worker in workers:
        worker.join(timeout=2)
        assert not worker.is_alive()
    assert len(errors) == 2
    emulator.stop()  # idempotent
    with pytest.raises(RuntimeError):
        emulator.start()
    # stop() returns before the handler threads have logged their cut calls.
    eventually(lambda: len(emulator.api_request_log) == 2)
    assert [r.status for r in emulator.api_request_log] == [0, 0]


def test_stop_interrupts_a_drip_and_idle_keep_alive(emu: GenesysEmulator) -> None:
    idle = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    idle.request("GET", "/headers")
    idle.getresponse().read()
    emu.inject(status=200, body=b"z" * 64, drip=10)
    response = requests.post(emu.token_url, data=GRANT, stream=True, timeout=5)
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 1.5
    with pytest.raises(requests.RequestException):
        response.content  # noqa: B018
    idle.close()


def test_not_started_and_lifecycle() -> None:
    emulator = GenesysEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.url
    emulator.stop()  # no-op before start
    assert emulator.start() is emulator.start()
    emulator.stop()
    for kwargs in (
        {"token_format": "paseto"},
        {"invalid_client_status": 500},
        {"rate_limit_window": 0},
        {"token_ttl": -1},
        {"token_rate_limit": -1},
    ):
        with pytest.raises(ValueError):
            GenesysEmulator(**kwargs)
    with pytest.raises(ValueError):
        emulator.add_client("x", "y", token_ttl=-1)
    with pytest.raises(TypeError):
        emulator.add_client("x", "y", scopes="a b")


def test_https_with_trustme() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with GenesysEmulator(ssl_context=context) as emulator, ca.cert_pem.tempfile() as ca_path:
        assert emulator.url.startswith("https://127.0.0.1:")
        auth = (emulator.client_id, emulator.client_secret)
        response = requests.post(
            emulator.token_url, data=GRANT, auth=auth, verify=ca_path, timeout=5
        )
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(emulator.url + "/headers", timeout=5)  # CA not trusted
        with pytest.raises(requests.ConnectionError):
            requests.get(emulator.url.replace("https", "http") + "/headers", timeout=5)
        assert requests.get(emulator.url + "/headers", verify=ca_path, timeout=5).ok


def test_counters_under_concurrency(emu: GenesysEmulator) -> None:
    def work(_: int) -> int:
        with requests.Session() as session:
            auth = (emu.client_id, emu.client_secret)
            access_token = session.post(emu.token_url, data=GRANT, auth=auth, timeout=10).json()[
                "access_token"
            ]
            headers = {"Authorization": f"Bearer {access_token}"}
            return session.get(
                emu.url + "/api/v2/tokens/me", headers=headers, timeout=10
            ).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(work, range(50)))
    assert statuses == [200] * 50
    assert emu.token_requests == 50 and emu.api_requests == 50
    assert len(emu.token_request_log) == 50 and len(emu.api_request_log) == 50
    assert len(set(emu.issued_tokens)) == 50
    emu.reset_counters()
    assert emu.token_requests == emu.api_requests == 0
    assert emu.token_request_log == [] and emu.api_request_log == [] and emu.issued_tokens == []


# ---------------------------------------------------------------------------------- CLI, plugin
def test_run_in_a_thread(capsys: pytest.CaptureFixture[str]) -> None:
    ready: list[GenesysEmulator] = []
    is_ready = threading.Event()
    stop = threading.Event()
    result: list[int] = []

    def on_ready(emulator: GenesysEmulator) -> None:
        ready.append(emulator)
        is_ready.set()

    argv = ["--format", "jwt", "--client-id", "cli", "--client-secret", "s 3", "--token-ttl", "60"]
    worker = threading.Thread(
        target=lambda: result.append(run(argv, ready=on_ready, stop_event=stop))
    )
    worker.start()
    assert is_ready.wait(5)
    emulator = ready[0]
    response = requests.post(emulator.token_url, data=GRANT, auth=("cli", "s 3"), timeout=5)
    assert response.json()["expires_in"] == 60 and response.json()["access_token"].count(".") == 2
    stop.set()
    worker.join(timeout=2)
    assert result == [0]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Genesys emulator on {emulator.url} (client id: cli)"
    assert "export GENESYSCLOUD_OAUTHCLIENT_ID=cli" in lines
    assert "export GENESYSCLOUD_OAUTHCLIENT_SECRET='s 3'" in lines
    assert f"export GENESYSCLOUD_TOKEN_URL={emulator.token_url}" in lines
    assert f"export GENESYSCLOUD_API_URL={emulator.url}" in lines
    with pytest.raises(RuntimeError):
        emulator.start()  # stopped


def test_run_stops_on_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[GenesysEmulator] = []

    def interrupt(emulator: GenesysEmulator) -> None:
        seen.append(emulator)
        raise KeyboardInterrupt

    assert run(["--port", "0", "--token-rate-limit", "5"], ready=interrupt) == 0
    assert seen[0].token_rate_limit == 5
    with pytest.raises(requests.ConnectionError):
        requests.get(seen[0].url + "/headers", timeout=2)
    assert "Genesys emulator on http://127.0.0.1:" in capsys.readouterr().out


def test_run_with_stop_event_already_set(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    assert run(["--invalid-client-status", "400"], stop_event=stop) == 0
    assert "export GENESYSCLOUD_OAUTHCLIENT_ID=emulator-client" in capsys.readouterr().out


def test_main_module_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["genesys_token.testing", "--help"])
    main = Path(testing_package.__file__).with_name("__main__.py")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(main), run_name="__main__")
    assert exit_info.value.code == 0
    assert "--client-secret" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("host", "expected"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]"), ("h", "h")],
)
def test_url_host(host: str, expected: str) -> None:
    assert url_host(host) == expected


def test_ipv6_loopback() -> None:
    try:
        emulator = GenesysEmulator(host="::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with emulator:
        assert emulator.url.startswith("http://[::1]:")
        assert grant(emulator).status_code == 200


def test_package_exports() -> None:
    testing = testing_package
    assert testing.GenesysEmulator is GenesysEmulator and testing.Fault is Fault
    assert testing.ApiRequestRecord._fields == (
        "method",
        "path",
        "status",
        "token_used",
        "correlation_id",
    )
    with pytest.raises(AttributeError):
        _ = testing.EmulatorClient


def test_pytest_plugin_fixture(request: pytest.FixtureRequest) -> None:
    from genesys_token.testing import pytest_plugin

    manager = request.config.pluginmanager
    if not manager.is_registered(pytest_plugin):
        manager.register(pytest_plugin, "genesys_token_emulator_test")
        request.addfinalizer(lambda: manager.unregister(pytest_plugin))
    request.node.add_marker(pytest.mark.genesys_emulator(token_ttl=123))
    emulator = request.getfixturevalue("genesys_emulator")
    assert isinstance(emulator, GenesysEmulator)
    assert grant(emulator).json()["expires_in"] == 123


# -- the command line as a real process (issue 24) -------------------------------------------


def _start_emulator_process(*options: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``python -m genesys_token.testing``, and its exports once it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "genesys_token.testing", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    exports = {}
    for _ in range(5):  # the banner and four exports
        line = process.stdout.readline()
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
    return process, exports


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    try:
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return out, err


@pytest.mark.usefixtures("sigint_delivered")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_emulator_command_logs_each_request_and_sums_up_on_exit(signum: int) -> None:
    process, env = _start_emulator_process()
    token_url = env["GENESYSCLOUD_TOKEN_URL"]
    api = env["GENESYSCLOUD_API_URL"]
    auth = (env["GENESYSCLOUD_OAUTHCLIENT_ID"], env["GENESYSCLOUD_OAUTHCLIENT_SECRET"])
    granted = requests.post(token_url, data=GRANT, auth=auth, timeout=5)
    refused = requests.post(token_url, data=GRANT, auth=("nobody", "x"), timeout=5)
    assert refused.status_code == 401
    me = requests.get(
        api + "/api/v2/tokens/me",
        headers={"Authorization": f"Bearer {granted.json()['access_token']}"},
        timeout=5,
    )
    assert me.status_code == 200
    out, err = _stop(process, signum)
    assert process.returncode == 0, err
    assert err == ""
    ids = [answer.headers[CORRELATION_HEADER] for answer in (granted, refused, me)]
    assert len(set(ids)) == 3  # each line names the answer's own id, as a client's error does
    assert out.splitlines() == [
        f"POST /oauth/token 200 client=emulator-client correlation={ids[0]}",
        f"POST /oauth/token 401 client=nobody correlation={ids[1]}",
        f"GET /api/v2/tokens/me 200 client=emulator-client correlation={ids[2]}",
        "summary: 2 token requests, 1 API calls, 1 answered 401, 0 answered 429",
    ]


def test_the_emulator_command_is_quiet_with_q() -> None:
    process, env = _start_emulator_process("-q")
    auth = (env["GENESYSCLOUD_OAUTHCLIENT_ID"], env["GENESYSCLOUD_OAUTHCLIENT_SECRET"])
    requests.post(env["GENESYSCLOUD_TOKEN_URL"], data=GRANT, auth=auth, timeout=5)
    out, err = _stop(process, signal.SIGTERM)
    assert process.returncode == 0, err
    assert out.splitlines() == [
        "summary: 1 token requests, 0 API calls, 0 answered 401, 0 answered 429"
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="F_SETPIPE_SZ is Linux's")
def test_the_emulator_command_stops_on_sigterm_with_a_stdout_nobody_reads() -> None:
    # A request line per request: once the pipe is full, a command printing from its main
    # thread blocks in print() for good, and SIGTERM (which only sets an event) never ends it.
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: full after ~90 lines, not ~1400
    process = subprocess.Popen(
        [sys.executable, "-m", "genesys_token.testing", "--port", "0"],
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    try:
        head = b""
        while b"GENESYSCLOUD_API_URL" not in head or not head.endswith(b"\n"):
            chunk = os.read(read_end, 4096)
            assert chunk, head
            head += chunk
        token_url = head.split(b"GENESYSCLOUD_TOKEN_URL=")[1].split(b"\n")[0].decode()
        with requests.Session() as session:  # nobody reads stdout from here on
            for _ in range(300):
                session.post(token_url, data=GRANT, auth=("emulator-client", "x"), timeout=5)
        time.sleep(0.5)  # a poll or two: the lines are queued (or dropped), stdout is full
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(5) == 0
        assert time.monotonic() - started < 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
        os.close(read_end)


class _StuckStream(io.StringIO):
    """A stream whose writes wait for ``gate``, as a pipe nobody reads does."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.gate.wait(5)
        return super().write(text)


def test_request_lines_beyond_the_bound_are_dropped_and_counted_never_blocking(
    emu: GenesysEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cli, "LINE_QUEUE_SIZE", 3)
    for _ in range(10):
        grant(emu)
    out = _StuckStream()
    printer = RequestPrinter(emu, out)
    started = time.monotonic()
    printer.poll()  # 3 lines queued, 7 dropped; the writer takes the 3 and is stuck
    assert out.entered.wait(5)
    printer.finish(0.2)
    assert time.monotonic() - started < 1.5
    out.gate.set()
    eventually(lambda: "summary" in out.getvalue())
    ids = [record.correlation_id for record in emu.token_request_log[:3]]
    assert out.getvalue().splitlines() == [
        *[f"POST /oauth/token 200 client=emulator-client correlation={i}" for i in ids],
        "summary: 10 token requests, 0 API calls, 0 answered 401, 0 answered 429,"
        " 7 request lines not printed (stdout was not read)",
    ]


def test_request_lines_print_a_hostile_client_id_escaped(emu: GenesysEmulator) -> None:
    client_id = "x\nPOST /oauth/token 200 client=forged\x1b[2J"
    basic = base64.b64encode(f"{client_id}:pw".encode()).decode()
    requests.post(emu.token_url, data=GRANT, headers={"Authorization": f"Basic {basic}"}, timeout=5)
    out = io.StringIO()
    printer = RequestPrinter(emu, out)
    printer.poll()
    printer.finish(5.0)
    correlation_id = emu.token_request_log[0].correlation_id
    assert out.getvalue().splitlines() == [
        f"POST /oauth/token 401 client={client_id!r} correlation={correlation_id}",
        "summary: 1 token requests, 0 API calls, 1 answered 401, 0 answered 429",
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--token-ttl", "abc"], "--token-ttl: expected a number of seconds >= 0, got 'abc'"),
        (["--token-ttl", "-1"], "--token-ttl: expected a number of seconds >= 0, got '-1'"),
        (["--port", "http"], "--port: expected a port from 0 to 65535, got 'http'"),
        (["--token-rate-limit", "x"], "--token-rate-limit: expected a whole number >= 1, got 'x'"),
    ],
)
def test_the_emulator_command_says_what_is_wrong_with_an_option(
    option: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genesys_token.testing", *option],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "invalid _" not in result.stderr  # argparse: "invalid _non_negative value"


def test_the_emulator_help_shows_the_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genesys_token.testing", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    text = " ".join(result.stdout.split())
    for default in ("127.0.0.1", "86399.0", "opaque", "emulator-client", "401", "unlimited"):
        assert f"default {default}" in text or f"default: {default}" in text, default


def test_every_answer_carries_a_correlation_id_recorded_per_request(
    emulator: GenesysEmulator,
) -> None:
    first, second = grant(emulator), grant(emulator)
    api = requests.get(f"{emulator.url}/api/v2/nowhere", timeout=5)
    sent = [first.headers["ININ-Correlation-Id"], second.headers["ININ-Correlation-Id"]]
    assert all(uuid.UUID(value).version == 4 for value in sent)
    assert sent[0] != sent[1]
    assert [r.correlation_id for r in emulator.token_request_log][-2:] == sent
    assert emulator.api_request_log[-1].correlation_id == api.headers["ININ-Correlation-Id"]


def test_the_cli_serves_when_stdout_is_closed_before_the_banner() -> None:
    # `... | true`: the reader is gone before the banner; the banner's write failed with a
    # BrokenPipeError traceback and the emulator ended (review D3).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = subprocess.Popen(
        [sys.executable, "-m", "genesys_token.testing", "--port", str(port)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    url = f"http://127.0.0.1:{port}/oauth/token"
    data = {"grant_type": "client_credentials"}
    auth = ("emulator-client", "emulator-secret")

    def answers() -> bool:
        try:
            return requests.post(url, data=data, auth=auth, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        eventually(answers, 15.0)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)  # past the banner, still serving
        assert answers()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (0, -signal.SIGTERM)  # -SIGTERM: before its handler was set
    assert "Traceback" not in err
