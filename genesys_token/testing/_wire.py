"""Genesys wire formats: error bodies, the :class:`Fault` answers, token request parsing."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs

from genesys_token.testing._handler import Reply, Request

TokenFormat = Literal["opaque", "jwt"]
AuthMethod = Literal["basic", "body"]

TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/jwks"
API_PREFIX = "/api/v2"
ORG_NAME = "Emulated Org"
RATE_LIMIT_DESCRIPTION = "rate limit exceeded; too many token requests for this client, retry later"
MISSING_TOKEN_MESSAGE = "No authentication bearer token specified in authorization header."
_IDLE_SECONDS = 1800
_JSON = "application/json"
_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Genesys Cloud</title></head>"
    "<body><h1>Service temporarily unavailable</h1><p>Maintenance in progress.</p></body></html>"
)
_SERVER_ERROR_CODES = {
    500: "internal.server.error",
    502: "bad.gateway",
    503: "service.unavailable",
    504: "gateway.timeout",
}


def api_error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "message": message,
        "code": code,
        "status": status,
        "contextId": str(uuid.uuid4()),
        "details": [],
        "errors": [],
    }


def oauth_error_body(error: str, description: str) -> dict[str, str]:
    return {"error": error, "description": description, "error_description": description}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Emulated fault"


def json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Fault:
    """An abnormal answer for :meth:`GenesysEmulator.inject`.

    ``body``: dict -> JSON, str/bytes sent as is (text/plain unless ``headers`` sets a
    Content-Type), None -> a Genesys-style JSON error for statuses >= 400, else empty.
    ``delay``: seconds to wait before answering. ``drop``: close the connection without any
    answer. ``body_size``: stream that many bytes of JSON-looking filler (never built in
    memory). ``drip``: send the body 16 bytes at a time, waiting ``drip`` seconds before each
    piece (headers go out at once). ``passthrough``: wait ``delay`` then answer normally.
    A ``Content-Length`` in ``headers`` replaces the real one (the connection is then closed).
    """

    status: int = 503
    body: bytes | str | dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    body_size: int | None = None
    drip: float | None = None
    passthrough: bool = False

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, got {self.status}")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.body_size is not None and self.body_size < 0:
            raise ValueError("body_size must be >= 0")
        if self.drip is not None and self.drip <= 0:
            raise ValueError("drip must be > 0")
        if self.drop and self.passthrough:
            raise ValueError("drop and passthrough are exclusive")
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    @classmethod
    def rate_limited_token(cls, retry_after: int | str | None = None) -> Fault:
        """The token endpoint's rate-limit answer: HTTP 400 ``invalid_request``."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        body = oauth_error_body("invalid_request", RATE_LIMIT_DESCRIPTION)
        return cls(status=400, body=body, headers=headers)

    @classmethod
    def too_many_requests(cls, retry_after: int | str = 1) -> Fault:
        """The API's 429 with ``Retry-After`` and the Genesys body."""
        message = f"Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds"
        body = api_error_body(429, "too.many.requests.retry.after", message)
        return cls(status=429, body=body, headers={"Retry-After": str(retry_after)})

    @classmethod
    def server_error(cls, status: int = 503) -> Fault:
        code = _SERVER_ERROR_CODES.get(status, "server.error")
        return cls(status=status, body=api_error_body(status, code, _phrase(status)))

    @classmethod
    def html(cls, status: int = 200) -> Fault:
        """An HTML page (as sent by a captive portal, proxy or maintenance page)."""
        return cls(status, _HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Fault:
        """Any JSON document, e.g. a malformed token response."""
        return cls(status, json_bytes(obj), {"Content-Type": _JSON})

    def reply(self) -> Reply:
        """The answer this fault gives (the emulator applies ``delay``/``drop`` itself)."""
        headers = dict(self.headers)
        content_type = _JSON
        stream_size = self.body_size
        body = b""
        if stream_size is None:
            if isinstance(self.body, dict):
                body = json_bytes(self.body)
            elif isinstance(self.body, str | bytes):
                body = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
                content_type = "text/plain; charset=utf-8"
            elif self.status >= 400:
                code = _SERVER_ERROR_CODES.get(self.status, "emulated.fault")
                message = _phrase(self.status)
                body = json_bytes(api_error_body(self.status, code, message))
        if (stream_size or body) and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        return Reply(self.status, body, headers, stream_size=stream_size, drip=self.drip)


@dataclass(frozen=True)
class TokenCall:
    client_id: str | None = None
    secret: str | None = None
    auth_method: AuthMethod | None = None
    grant_type: str | None = None
    scope: str | None = None
    form_ok: bool = False


def parse_token_call(request: Request) -> TokenCall:
    content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return TokenCall()
    form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)

    def first(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    client_id = secret = None
    method: AuthMethod | None = None
    authorization = request.headers.get("Authorization", "")
    if authorization[:6].lower() == "basic ":
        method = "basic"
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if ":" in decoded:
            client_id, secret = decoded.split(":", 1)
    elif first("client_id") is not None:
        method = "body"
        client_id, secret = first("client_id"), first("client_secret")
    return TokenCall(client_id, secret, method, first("grant_type"), first("scope"), True)


def bearer_token(request: Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def granted_scopes(allowed: tuple[str, ...], requested: str | None) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys((requested or "").split()))
    if not wanted:
        return allowed
    if not allowed:
        return wanted
    return tuple(scope for scope in wanted if scope in allowed)


def json_reply(status: int, obj: object, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json_bytes(obj), {"Content-Type": _JSON, **(headers or {})})


def oauth_error(status: int, error: str, description: str) -> Reply:
    return json_reply(status, oauth_error_body(error, description), {"Cache-Control": "no-store"})


def api_error(status: int, code: str, message: str) -> Reply:
    return json_reply(status, api_error_body(status, code, message))


def not_found(request: Request) -> Reply:
    message = f"No resource found for {request.method} {request.path}"
    return api_error(404, "not.found", message)


def url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def organization_body(org_id: str) -> dict[str, Any]:
    """``GET /api/v2/organizations/me``."""
    return {
        "id": org_id,
        "name": ORG_NAME,
        "defaultLanguage": "en-us",
        "thirdPartyOrgName": "emulated-org",
        "domain": "emulated-org",
        "version": 1,
        "state": "active",
        "selfUri": f"{API_PREFIX}/organizations/{org_id}",
    }


def token_info_body(org_id: str, client_id: str, scopes: Sequence[str]) -> dict[str, Any]:
    """``GET /api/v2/tokens/me``; ``dateTokenIdles`` is an idle deadline, not the expiry."""
    org = {"id": org_id, "name": ORG_NAME, "selfUri": f"{API_PREFIX}/organizations/{org_id}"}
    idles = time.time() + _IDLE_SECONDS
    millis = int(idles * 1000) % 1000
    return {
        "organization": org,
        "homeOrganization": {**org, "thirdPartyOrgName": "emulated-org"},
        "authorizedScope": list(scopes),
        "OAuthClient": {"id": client_id, "name": client_id, "organization": {"id": org_id}},
        "dateTokenIdles": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(idles))}.{millis:03d}Z",
    }


def redirect_reply(request: Request) -> Reply:
    query = parse_qs(request.query)
    target = query.get("to", [""])[0]
    status = query.get("status", ["302"])[0]
    if not target or status not in ("301", "302", "303", "307", "308"):
        return api_error(400, "bad.request", "redirect needs ?to=<url> and a 30x status")
    return Reply(int(status), headers={"Location": target})
