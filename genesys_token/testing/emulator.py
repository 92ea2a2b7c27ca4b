"""In-process emulator of the Genesys Cloud OAuth token service and a sliver of its API.

It follows the real service (see the package docstring): Basic-authenticated
``client_credentials`` grant, lower-case ``bearer``, both ``description`` and
``error_description`` on errors, the rate-limit answer being an HTTP 400, Genesys-style API
error bodies. Faults (status codes, delays, dropped connections, huge or slow bodies) can be
injected for the next requests to a path, token endpoint or API alike: :meth:`throttle_api`
answers API calls with Genesys' 429 and ``Retry-After``; ``reject_all_tokens`` makes the API
refuse every bearer token with 401 ``bad.credentials``. ``api_rate_limit=(calls, seconds)``
enforces Genesys' per-token API limit (300 per 60 s in a real org) over a sliding window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from genesys_token.http.failures import CORRELATION_HEADER
from genesys_token.testing._handler import EmulatorHTTPServer, Reply, Request
from genesys_token.testing._jwt import SigningKey
from genesys_token.testing._rate import SlidingWindowLimit
from genesys_token.testing._wire import (
    API_PREFIX,
    JWKS_PATH,
    MISSING_TOKEN_MESSAGE,
    RATE_LIMIT_DESCRIPTION,
    TOKEN_PATH,
    AuthMethod,
    Fault,
    TokenCall,
    TokenFormat,
    api_error,
    bearer_token,
    granted_scopes,
    json_reply,
    not_found,
    oauth_error,
    organization_body,
    parse_token_call,
    redirect_reply,
    token_info_body,
    url_host,
)

__all__ = [
    "CORRELATION_HEADER",
    "ApiRequestRecord",
    "Fault",
    "GenesysEmulator",
    "TokenRequestRecord",
]


class TokenRequestRecord(NamedTuple):
    """One request to ``/oauth/token``; ``status`` 0 means no answer was sent."""

    time: float
    client_id: str | None
    status: int
    scope: str | None
    grant_type: str | None
    auth_method: AuthMethod | None
    correlation_id: str | None = None
    """The ``ININ-Correlation-Id`` sent back (``None`` when no answer was sent)."""


class ApiRequestRecord(NamedTuple):
    """One request to any other path but ``/jwks``; ``status`` 0 means no answer was sent."""

    method: str
    path: str
    status: int
    token_used: str | None
    correlation_id: str | None = None
    """The ``ININ-Correlation-Id`` sent back (``None`` when no answer was sent)."""


@dataclass
class _Client:
    secrets: list[str]
    token_ttl: float | None
    grant_allowed: bool
    scopes: tuple[str, ...]
    creations: deque[float] = field(default_factory=deque)

    def accepts(self, secret: str) -> bool:
        given = secret.encode("utf-8")
        return any(hmac.compare_digest(s.encode("utf-8"), given) for s in self.secrets)


@dataclass
class _Token:
    client_id: str
    expires: float
    scopes: tuple[str, ...]


@dataclass
class _FaultSlot:
    path: str
    fault: Fault
    remaining: int | None
    client_id: str | None = None


class GenesysEmulator:
    """A local Genesys Cloud login + API host (one server serves both).

    Bind is done by :meth:`start`; ``url``/``port`` are available once started.

    ``api_rate_limit=(calls, seconds)`` answers an API call with Genesys' 429 when its
    bearer token already made ``calls`` calls in the last ``seconds`` (see
    :attr:`api_rate_limit`); ``api_rate_clock`` is the clock of that window (default
    ``time.monotonic``; tests pass their own to move time by hand).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl: float = 86399,
        token_format: TokenFormat = "opaque",  # noqa: S107
        client_id: str = "emulator-client",
        client_secret: str = "emulator-secret",  # noqa: S107
        invalid_client_status: int = 401,
        token_rate_limit: int | None = None,
        rate_limit_window: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        api_rate_limit: tuple[int, float] | None = None,
        api_rate_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_format not in ("opaque", "jwt"):
            raise ValueError(f"token_format must be 'opaque' or 'jwt', got {token_format!r}")
        if not 400 <= invalid_client_status <= 499:
            raise ValueError("invalid_client_status must be a 4xx status")
        if rate_limit_window <= 0:
            raise ValueError("rate_limit_window must be > 0")
        self._host = host
        self._requested_port = port
        self._token_format: TokenFormat = token_format
        self._invalid_client_status = invalid_client_status
        self._rate_window = rate_limit_window
        self._ssl_context = ssl_context
        self._client_id = client_id
        self._client_secret = client_secret
        self.org_id = str(uuid.uuid4())
        self._key = SigningKey()
        self._lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, _Token] = {}
        self._revoked: set[str] = set()
        self._faults: list[_FaultSlot] = []
        self._issued: list[str] = []
        self._token_log: list[TokenRequestRecord] = []
        self._api_log: list[ApiRequestRecord] = []
        self._token_requests = 0
        self._api_requests = 0
        self._token_ttl = 0.0
        self._api_delay = 0.0
        self._reject_all_tokens = False
        self._token_rate_limit: int | None = None
        self._api_limit: SlidingWindowLimit | None = None
        self._api_rate_clock = api_rate_clock
        self._api_429s: Counter[str] = Counter()
        self.api_rate_limit = api_rate_limit
        self.token_ttl = token_ttl
        self.token_rate_limit = token_rate_limit
        self.add_client(client_id, client_secret)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> GenesysEmulator:
        """Bind and serve in a daemon thread. Idempotent; a stopped emulator cannot restart."""
        with self._lifecycle_lock:
            if self._stop_event.is_set():
                raise RuntimeError("a stopped GenesysEmulator cannot be restarted")
            if self._server is None:
                server = EmulatorHTTPServer(
                    (self._host, self._requested_port),
                    backend=self._process,
                    stop_event=self._stop_event,
                    ssl_context=self._ssl_context,
                )
                self._thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"genesys-emulator-{server.server_address[1]}",
                    daemon=True,
                )
                self._server = server
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed handlers and cut open connections. Idempotent."""
        with self._lifecycle_lock:
            server, thread = self._server, self._thread
            if server is None or thread is None or self._stop_event.is_set():
                return
            self._stop_event.set()
            server.shutdown()
            server.server_close()
            server.close_connections()
            thread.join(timeout=1.0)

    def __enter__(self) -> GenesysEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- addresses
    def _running_server(self) -> EmulatorHTTPServer:
        if self._server is None:
            raise RuntimeError("GenesysEmulator is not started; call start() first")
        return self._server

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return int(self._running_server().server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{url_host(self._host)}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    @property
    def api_base_url(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    # ----------------------------------------------------------------- configuration
    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def client_secret(self) -> str:
        """The newest secret of the default client."""
        with self._lock:
            return self._client_secret

    @property
    def token_ttl(self) -> float:
        return self._token_ttl

    @token_ttl.setter
    def token_ttl(self, value: float) -> None:
        if value < 0:
            raise ValueError("token_ttl must be >= 0")
        self._token_ttl = float(value)

    @property
    def token_format(self) -> TokenFormat:
        return self._token_format

    @token_format.setter
    def token_format(self, value: TokenFormat) -> None:
        if value not in ("opaque", "jwt"):
            raise ValueError(f"token_format must be 'opaque' or 'jwt', got {value!r}")
        self._token_format = value

    @property
    def token_rate_limit(self) -> int | None:
        return self._token_rate_limit

    @token_rate_limit.setter
    def token_rate_limit(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError("token_rate_limit must be >= 0 or None")
        self._token_rate_limit = value

    @property
    def api_rate_limit(self) -> tuple[int, float] | None:
        """The per-token API limit, ``(calls, seconds)``, or ``None`` (the default: no limit).

        Like Genesys' ``client.credentials.token.rate.per.minute`` (300 per 60 s), counted
        per bearer token over a **sliding** window: a call is counted when it arrives (before
        any injected fault or ``api_delay``), and the call that would be the ``calls + 1``-th
        within ``seconds`` of the oldest one counted is answered 429 with ``Retry-After``
        (whole seconds until that oldest one leaves the window, at least 1) and Genesys'
        body (code ``too.many.requests.retry.after``). A call answered 429 is not counted.
        Calls without a bearer token and token requests are not counted. Setting it starts
        every token with an empty window.

        Raises:
            ValueError: ``calls`` is not a whole number >= 1 or ``seconds`` not > 0.
        """
        limit = self._api_limit
        return None if limit is None else limit.as_tuple()

    @api_rate_limit.setter
    def api_rate_limit(self, value: tuple[int, float] | None) -> None:
        if value is None:
            limit = None
        else:
            if not isinstance(value, tuple) or len(value) != 2:
                raise ValueError(f"api_rate_limit must be (calls, seconds) or None: {value!r}")
            limit = SlidingWindowLimit(*value)
        with self._lock:
            self._api_limit = limit

    @property
    def api_429s(self) -> dict[str, int]:
        """429 answers per bearer token (the rate limit's and injected ones alike), since the
        start or :meth:`reset_counters`; a token never answered 429 is absent."""
        with self._lock:
            return dict(self._api_429s)

    @property
    def api_delay(self) -> float:
        return self._api_delay

    @api_delay.setter
    def api_delay(self, value: float) -> None:
        if value < 0:
            raise ValueError("api_delay must be >= 0")
        self._api_delay = float(value)

    @property
    def reject_all_tokens(self) -> bool:
        """When True, the API answers every bearer token with 401 ``bad.credentials``.

        Tokens are still issued and stay valid for :meth:`is_token_valid`: this plays an API
        that keeps rejecting fresh tokens (a wrong region, a client deleted in another org),
        the case where a 401 must not turn every call into a token request. Calls without
        a token still get 401 ``authentication.required``.
        """
        return self._reject_all_tokens

    @reject_all_tokens.setter
    def reject_all_tokens(self, value: bool) -> None:
        self._reject_all_tokens = bool(value)

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_ttl: float | None = None,
        grant_allowed: bool = True,
        scopes: Sequence[str] = (),
    ) -> None:
        """Register (or replace) an OAuth client. ``token_ttl`` overrides the emulator's."""
        if token_ttl is not None and token_ttl < 0:
            raise ValueError("token_ttl must be >= 0")
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of scope names, not a string")
        client = _Client([client_secret], token_ttl, grant_allowed, tuple(scopes))
        with self._lock:
            self._clients[client_id] = client
            if client_id == self._client_id:
                self._client_secret = client_secret

    def remove_client(self, client_id: str) -> None:
        """Delete a client; like Genesys, its tokens stop working."""
        with self._lock:
            del self._clients[client_id]
            self._revoked.update(
                t for t, info in self._tokens.items() if info.client_id == client_id
            )

    def set_secret(self, client_id: str, new_secret: str, *, keep_old: bool = False) -> None:
        """Regenerate a client's secret; ``keep_old`` leaves the previous ones valid too."""
        with self._lock:
            client = self._clients[client_id]
            client.secrets = [*client.secrets, new_secret] if keep_old else [new_secret]
            if client_id == self._client_id:
                self._client_secret = new_secret

    # ----------------------------------------------------------------- tokens
    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def expire(self, token: str) -> None:
        """Make an issued token expired now (KeyError if it was not issued here)."""
        with self._lock:
            self._tokens[token].expires = time.monotonic()

    def token_expiry(self, token: str) -> float | None:
        """When an issued token expires, on ``time.monotonic()`` of the emulator's process
        (one clock for every process of a Linux machine); None for a token not issued here.
        """
        with self._lock:
            info = self._tokens.get(token)
            return None if info is None else info.expires

    def is_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._valid_token(token) is not None

    def _valid_token(self, token: str) -> _Token | None:
        info = self._tokens.get(token)
        if info is None or token in self._revoked or time.monotonic() >= info.expires:
            return None
        return info

    @property
    def revoked_tokens(self) -> set[str]:
        with self._lock:
            return set(self._revoked)

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    # ----------------------------------------------------------------- counters
    @property
    def token_requests(self) -> int:
        """Token requests received (counted on arrival: a request still being answered, or
        hanging on a fault, is in; :attr:`token_request_log` has it only once answered)."""
        with self._lock:
            return self._token_requests

    @property
    def token_request_log(self) -> list[TokenRequestRecord]:
        """A copy of the answered token requests, oldest first (see :attr:`token_requests`)."""
        with self._lock:
            return list(self._token_log)

    @property
    def api_requests(self) -> int:
        with self._lock:
            return self._api_requests

    @property
    def api_request_log(self) -> list[ApiRequestRecord]:
        with self._lock:
            return list(self._api_log)

    def reset_counters(self) -> None:
        """Zero the counters and clear the logs and ``issued_tokens`` (tokens stay valid)."""
        with self._lock:
            self._token_requests = self._api_requests = 0
            self._api_429s.clear()
            self._token_log.clear()
            self._api_log.clear()
            self._issued.clear()

    # ----------------------------------------------------------------- faults
    def inject(
        self,
        fault: Fault | None = None,
        *,
        times: int | None = 1,
        path: str = TOKEN_PATH,
        client_id: str | None = None,
        **fault_kwargs: Any,
    ) -> Fault:
        """Answer the next ``times`` requests whose path starts with ``path`` with ``fault``.

        ``client_id``: only token requests of that OAuth client (one org's token endpoint
        hangs while the others' answer); other requests pass this fault by.
        ``fault_kwargs`` build a :class:`Fault` (or override fields of the given one).
        ``times=None`` keeps the fault until :meth:`clear_faults`. Faults are matched in the
        order they were injected.
        """
        if fault is None:
            fault = Fault(**fault_kwargs)
        elif fault_kwargs:
            fault = dataclasses.replace(fault, **fault_kwargs)
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        with self._lock:
            self._faults.append(_FaultSlot(path, fault, times, client_id))
        return fault

    def throttle_api(
        self, times: int | None = 1, *, retry_after: int | str = 1, path: str = API_PREFIX
    ) -> Fault:
        """Answer the next ``times`` API requests under ``path`` with Genesys' 429.

        The answer is ``429`` with ``Retry-After: <retry_after>`` and the normalised body
        (``code`` ``too.many.requests.retry.after``, message "Retry the request in [n]
        seconds"), given before the token is checked, as a rate limiter in front of the API
        would. ``times=None`` throttles until :meth:`clear_faults`. A shortcut for
        ``inject(Fault.too_many_requests(retry_after), times=times, path=path)``; any other
        :class:`Fault` can be injected on an API path the same way.
        """
        return self.inject(Fault.too_many_requests(retry_after), times=times, path=path)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str, client_id: str | None) -> Fault | None:
        for slot in self._faults:
            if slot.client_id is not None and slot.client_id != client_id:
                continue
            if path.startswith(slot.path):
                if slot.remaining is not None:
                    slot.remaining -= 1
                    if slot.remaining == 0:
                        self._faults.remove(slot)
                return slot.fault
        return None

    def _wait(self, seconds: float) -> bool:
        return not self._stop_event.wait(seconds)

    # ----------------------------------------------------------------- request handling
    def _process(self, request: Request) -> Reply | None:
        received = time.monotonic()
        path = request.path
        call = parse_token_call(request) if path == TOKEN_PATH else None
        bearer = bearer_token(request) if call is None else None
        with self._lock:
            if call is not None:
                self._token_requests += 1
            elif path != JWKS_PATH:
                self._api_requests += 1
            fault = self._rate_limited(bearer) if call is None and path != JWKS_PATH else None
            if fault is None:
                fault = self._take_fault(path, None if call is None else call.client_id)
        reply = self._answer(request, call, bearer, fault)
        status = 0 if reply is None else reply.status
        correlation_id: str | None = None
        if reply is not None:
            # Genesys tags every answer so support can find the call in its logs.
            correlation_id = str(uuid.uuid4())
            reply.headers.setdefault(CORRELATION_HEADER, correlation_id)
            correlation_id = reply.headers[CORRELATION_HEADER]
        with self._lock:
            if call is not None:
                record = TokenRequestRecord(
                    received,
                    call.client_id,
                    status,
                    call.scope,
                    call.grant_type,
                    call.auth_method,
                    correlation_id,
                )
                self._token_log.append(record)
            elif path != JWKS_PATH:
                self._api_log.append(
                    ApiRequestRecord(request.method, path, status, bearer, correlation_id)
                )
                if status == 429 and bearer is not None:
                    self._api_429s[bearer] += 1
        return reply

    def _rate_limited(self, bearer: str | None) -> Fault | None:
        """Genesys' 429 when ``bearer`` has no room left in its window; else counts the call
        (called under the lock, as the call arrives)."""
        limit = self._api_limit
        if limit is None or bearer is None:
            return None
        wait = limit.admit(bearer, self._api_rate_clock())
        if wait is None:
            return None
        # Genesys names whole seconds; rounding down would send the client back too early.
        return Fault.too_many_requests(max(1, math.ceil(round(wait, 6))))

    def _answer(
        self, request: Request, call: TokenCall | None, bearer: str | None, fault: Fault | None
    ) -> Reply | None:
        if fault is not None:
            if fault.delay > 0 and not self._wait(fault.delay):
                return None
            if fault.drop:
                return None
            if not fault.passthrough:
                return fault.reply()
        if call is not None:
            return self._token_endpoint(request, call)
        if request.path == JWKS_PATH:
            if request.method in ("GET", "HEAD"):
                return json_reply(200, self._key.jwks())
            return not_found(request)
        if self._api_delay > 0 and not self._wait(self._api_delay):
            return None
        return self._api_endpoint(request, bearer)

    def _token_endpoint(self, request: Request, call: TokenCall) -> Reply:
        if request.method != "POST":
            return oauth_error(405, "invalid_request", "the token endpoint only accepts POST")
        if not call.form_ok:
            description = "content type must be application/x-www-form-urlencoded"
            return oauth_error(400, "invalid_request", description)
        now = time.monotonic()
        client_id = call.client_id
        with self._lock:
            client = None if client_id is None else self._clients.get(client_id)
            if client_id is None or client is None:
                description = "authentication failed" if client_id is None else "client not found"
                return oauth_error(self._invalid_client_status, "invalid_client", description)
            if call.secret is None or not client.accepts(call.secret):
                status = self._invalid_client_status
                return oauth_error(status, "invalid_client", "authentication failed")
            if not call.grant_type:
                return oauth_error(400, "invalid_request", "grant_type is required")
            if call.grant_type != "client_credentials":
                return oauth_error(400, "unsupported_grant_type", "unsupported grant type")
            if not client.grant_allowed:
                description = "client is not authorized to use this grant type"
                return oauth_error(400, "unauthorized_client", description)
            limit = self._token_rate_limit
            if limit is not None:
                window = client.creations
                while window and window[0] <= now - self._rate_window:
                    window.popleft()
                if len(window) >= limit:
                    return oauth_error(400, "invalid_request", RATE_LIMIT_DESCRIPTION)
                window.append(now)
            ttl = self._token_ttl if client.token_ttl is None else client.token_ttl
            scopes = granted_scopes(client.scopes, call.scope)
            token_format = self._token_format
        token = self._mint(token_format, client_id, ttl, scopes)
        with self._lock:
            self._tokens[token] = _Token(client_id, now + ttl, scopes)
            self._issued.append(token)
        body = {"access_token": token, "token_type": "bearer", "expires_in": int(ttl)}
        return json_reply(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _mint(
        self, token_format: TokenFormat, client_id: str, ttl: float, scopes: tuple[str, ...]
    ) -> str:
        if token_format == "opaque":
            return secrets.token_urlsafe(96)
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": client_id,
            "client_id": client_id,
            "iat": int(now),
            "exp": int(now + ttl),
            "jti": str(uuid.uuid4()),
            "org_id": self.org_id,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return self._key.sign(claims)

    def _api_endpoint(self, request: Request, bearer: str | None) -> Reply:
        path, method = request.path, request.method
        if path == "/redirect":
            return redirect_reply(request)
        if path == "/headers":
            headers: dict[str, str] = {}
            for name, value in request.headers.items():
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            return json_reply(200, headers)
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            return not_found(request)
        if bearer is None:
            return api_error(401, "authentication.required", MISSING_TOKEN_MESSAGE)
        with self._lock:
            info = None if self._reject_all_tokens else self._valid_token(bearer)
        if info is None:
            return api_error(401, "bad.credentials", "Invalid login credentials.")
        if path == API_PREFIX + "/echo" or path.startswith(API_PREFIX + "/echo/"):
            digest = hashlib.sha256(request.body).hexdigest()
            echo = {"method": method, "path": path, "length": len(request.body), "sha256": digest}
            return json_reply(200, echo)
        if path == API_PREFIX + "/tokens/me" and method in ("GET", "HEAD"):
            return json_reply(200, token_info_body(self.org_id, info.client_id, info.scopes))
        if path == API_PREFIX + "/tokens/me" and method == "DELETE":
            self.revoke(bearer)
            return Reply(204)
        if path == API_PREFIX + "/organizations/me" and method in ("GET", "HEAD"):
            return json_reply(200, organization_body(self.org_id))
        return not_found(request)
