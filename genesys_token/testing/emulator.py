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

import math
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from genesys_token.http.failures import CORRELATION_HEADER
from genesys_token.testing._api import api_reply
from genesys_token.testing._faults import FaultBook
from genesys_token.testing._handler import EmulatorHTTPServer, Reply, Request
from genesys_token.testing._journal import ApiRequestRecord, Journal, TokenRequestRecord
from genesys_token.testing._jwt import SigningKey
from genesys_token.testing._ledger import GrantRules, Ledger
from genesys_token.testing._rate import SlidingWindowLimit
from genesys_token.testing._wire import (
    API_PREFIX,
    JWKS_PATH,
    TOKEN_PATH,
    Fault,
    TokenCall,
    TokenFormat,
    bearer_token,
    json_reply,
    not_found,
    oauth_error,
    parse_token_call,
    url_host,
)

__all__ = [
    "CORRELATION_HEADER",
    "ApiRequestRecord",
    "Fault",
    "GenesysEmulator",
    "TokenRequestRecord",
]


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
        self.org_id = str(uuid.uuid4())
        self._ledger = Ledger(client_id, SigningKey(), self.org_id, lambda: self.url)
        if token_format == "jwt":
            self._ledger.warm_key()
        self._faults = FaultBook()
        self._lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._journal = Journal()
        self._token_ttl = 0.0
        self._api_delay = 0.0
        self._reject_all_tokens = False
        self._token_rate_limit: int | None = None
        self._api_limit: SlidingWindowLimit | None = None
        self._api_rate_clock = api_rate_clock
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
        return self._ledger.default_secret

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
        if value == "jwt":
            # Generated here, not in the first token request: a loaded CI took longer than
            # a test's 0.3 s read timeout to make an RSA key there.
            self._ledger.warm_key()
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
        return self._journal.api_429s

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
        self._ledger.add_client(
            client_id, client_secret, token_ttl=token_ttl, grant_allowed=grant_allowed,
            scopes=scopes,
        )  # fmt: skip

    def remove_client(self, client_id: str) -> None:
        """Delete a client; like Genesys, its tokens stop working."""
        self._ledger.remove_client(client_id)

    def set_secret(self, client_id: str, new_secret: str, *, keep_old: bool = False) -> None:
        """Regenerate a client's secret; ``keep_old`` leaves the previous ones valid too."""
        self._ledger.set_secret(client_id, new_secret, keep_old=keep_old)

    # ----------------------------------------------------------------- tokens
    def revoke(self, token: str) -> None:
        self._ledger.revoke(token)

    def expire(self, token: str) -> None:
        """Make an issued token expired now (KeyError if it was not issued here)."""
        self._ledger.expire(token)

    def token_expiry(self, token: str) -> float | None:
        """When an issued token expires, on ``time.monotonic()`` of the emulator's process
        (one clock for every process of a Linux machine); None for a token not issued here.
        """
        return self._ledger.expiry(token)

    def is_token_valid(self, token: str) -> bool:
        return self._ledger.valid(token) is not None

    @property
    def revoked_tokens(self) -> set[str]:
        return self._ledger.revoked

    @property
    def issued_tokens(self) -> list[str]:
        return self._ledger.issued

    # ----------------------------------------------------------------- counters
    @property
    def token_requests(self) -> int:
        """Token requests received (counted on arrival: a request still being answered, or
        hanging on a fault, is in; :attr:`token_request_log` has it only once answered)."""
        return self._journal.token_requests

    @property
    def token_request_log(self) -> list[TokenRequestRecord]:
        """A copy of the answered token requests, oldest first (see :attr:`token_requests`)."""
        return self._journal.token_log

    @property
    def api_requests(self) -> int:
        return self._journal.api_requests

    @property
    def api_request_log(self) -> list[ApiRequestRecord]:
        return self._journal.api_log

    def reset_counters(self) -> None:
        """Zero the counters and clear the logs and ``issued_tokens`` (tokens stay valid)."""
        self._journal.reset()
        self._ledger.forget_issued()

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
        return self._faults.add(
            fault, times=times, path=path, client_id=client_id, fault_kwargs=fault_kwargs
        )

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
        self._faults.clear()

    def _wait(self, seconds: float) -> bool:
        return not self._stop_event.wait(seconds)

    # ----------------------------------------------------------------- request handling
    def _process(self, request: Request) -> Reply | None:
        received = time.monotonic()
        path = request.path
        call = parse_token_call(request) if path == TOKEN_PATH else None
        bearer = bearer_token(request) if call is None else None
        if call is not None or path != JWKS_PATH:
            self._journal.arrived(token_request=call is not None)
        with self._lock:
            fault = self._rate_limited(bearer) if call is None and path != JWKS_PATH else None
            if fault is None:
                fault = self._faults.take(path, None if call is None else call.client_id)
        reply = self._answer(request, call, bearer, fault)
        status = 0 if reply is None else reply.status
        correlation_id: str | None = None
        if reply is not None:
            # Genesys tags every answer so support can find the call in its logs.
            correlation_id = str(uuid.uuid4())
            reply.headers.setdefault(CORRELATION_HEADER, correlation_id)
            correlation_id = reply.headers[CORRELATION_HEADER]
        if call is not None:
            self._journal.answered_token_request(
                TokenRequestRecord(
                    received, call.client_id, status, call.scope, call.grant_type,
                    call.auth_method, correlation_id,
                )
            )  # fmt: skip
        elif path != JWKS_PATH:
            record = ApiRequestRecord(request.method, path, status, bearer, correlation_id)
            self._journal.answered_api_call(record)
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
                return json_reply(200, self._ledger.jwks())
            return not_found(request)
        if self._api_delay > 0 and not self._wait(self._api_delay):
            return None
        reject_all = self._reject_all_tokens
        return api_reply(request, bearer, self._ledger, org_id=self.org_id, reject_all=reject_all)

    def _token_endpoint(self, request: Request, call: TokenCall) -> Reply:
        if request.method != "POST":
            return oauth_error(405, "invalid_request", "the token endpoint only accepts POST")
        if not call.form_ok:
            description = "content type must be application/x-www-form-urlencoded"
            return oauth_error(400, "invalid_request", description)
        rules = GrantRules(
            token_ttl=self._token_ttl,
            token_format=self._token_format,
            invalid_client_status=self._invalid_client_status,
            rate_limit=self._token_rate_limit,
            rate_window=self._rate_window,
        )
        return self._ledger.grant(call, rules)
