"""The token-endpoint HTTP client: one pooled session, timeouts, retries, size cap, typed errors.

Why not ``urllib3.util.Retry`` mounted on the session: it retries below ``requests`` on status
codes only, and the answer Genesys gives when token creation is throttled is an HTTP 400 whose
*body* says ``rate limit exceeded;``; it also cannot enforce one deadline for a whole
acquisition or report each retry to the manager's metrics. So the loop is here; the
``Retry-After`` parsing (seconds and HTTP-date) is urllib3's own.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.util.retry import Retry

from ._redact import excerpt
from .config import MAX_TOKEN_LIFETIME, Credentials, Settings
from .errors import (
    InvalidClientError,
    InvalidTokenResponseError,
    ManagerClosedError,
    RateLimitedError,
    TokenEndpointTLSError,
    TokenRequestError,
)

log = logging.getLogger("genesys_token")

#: Statuses worth another attempt: throttling and the transient server errors.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The description prefix of Genesys' token-creation throttle, answered as HTTP 400.
RATE_LIMIT_PREFIX = "rate limit exceeded"
_READ_CHUNK = 8192
_RETRY_AFTER_PARSER = Retry(total=0)


@dataclass(frozen=True)
class TokenResponse:
    """A parsed, well-formed token answer (not yet claim-checked).

    Attributes:
        access_token: The token.
        token_type: As sent (``bearer`` in any case).
        expires_in: Lifetime in seconds, capped at ``MAX_TOKEN_LIFETIME``.
        scope: The ``scope`` field of the answer, if any.
        sent_monotonic: ``time.monotonic()`` when the successful request was sent.
        sent_wall: ``time.time()`` at the same moment.
        attempts: Requests made for this acquisition, retries included.
    """

    access_token: str
    token_type: str
    expires_in: float
    scope: str | None
    sent_monotonic: float
    sent_wall: float
    attempts: int = 1

    def __repr__(self) -> str:
        return f"TokenResponse(expires_in={self.expires_in!r}, attempts={self.attempts!r})"


@dataclass(frozen=True)
class RetryNotice:
    """What the transport tells its owner before each retry."""

    attempt: int
    delay: float
    error: TokenRequestError


@dataclass(frozen=True)
class Clock:
    """The clocks and the sleep the SDK uses; tests pass their own to be deterministic."""

    monotonic: Callable[[], float] = time.monotonic
    time: Callable[[], float] = time.time
    random: Callable[[], float] = random.random


SYSTEM_CLOCK = Clock()


def basic_auth_header(credentials: Credentials) -> str:
    """The ``Authorization: Basic`` value for a client id and secret (UTF-8)."""
    raw = f"{credentials.client_id}:{credentials.client_secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``."""
    if not value:
        return None
    try:
        seconds = float(_RETRY_AFTER_PARSER.parse_retry_after(value.strip()))  # Any in 1.26
    except Exception:  # noqa: BLE001 - urllib3 raises its own InvalidHeader, or ValueError
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class TokenEndpoint:
    """Requests client-credentials tokens from one token URL, with retries.

    Thread-safe: a ``requests.Session`` is shared; all per-call state is local.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        wait: Callable[[float], bool] | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Create the client.

        Args:
            settings: The manager's settings.
            clock: Clocks and randomness (tests inject their own).
            wait: Sleeps up to the given seconds; returns True when interrupted (closing).
            on_retry: Called before each retry sleep, for logs and metrics.
            session: A ``requests.Session`` to use instead of a new one.
        """
        self._settings = settings
        self._clock = clock
        self._wait = wait or threading.Event().wait
        self._on_retry = on_retry
        self._session = session or requests.Session()
        self._owns_session = session is None

    def close(self) -> None:
        """Close the pooled connections."""
        if self._owns_session:
            self._session.close()

    # -- token acquisition -------------------------------------------------------------

    def fetch(self, credentials: Credentials) -> TokenResponse:
        """Run the client-credentials grant, retrying what is worth retrying.

        Args:
            credentials: The client id and secret to authenticate with.

        Returns:
            The parsed token answer.

        Raises:
            InvalidClientError: The credentials were rejected (never retried).
            RateLimitedError: Still throttled after the retries.
            TokenEndpointTLSError: The TLS handshake failed.
            InvalidTokenResponseError: A 2xx answer without a usable token.
            TokenRequestError: Any other failure, after the retries.
            ManagerClosedError: The owner closed while we waited to retry.
        """
        settings = self._settings
        deadline = self._clock.monotonic() + settings.retry_deadline
        attempt = 1
        while True:
            try:
                response = self._attempt(credentials)
            except TokenRequestError as exc:
                exc.attempts = attempt
                delay = self._retry_delay(exc, attempt)
                if (
                    delay is None
                    or attempt > settings.max_retries
                    or self._clock.monotonic() + delay > deadline
                ):
                    raise
                log.warning(
                    "token request failed (%s); retry %d of %d in %.2fs",
                    _describe(exc),
                    attempt,
                    settings.max_retries,
                    delay,
                    extra={"attempt": attempt, "delay": round(delay, 3), "status": exc.status},
                )
                if self._on_retry is not None:
                    self._on_retry(RetryNotice(attempt, delay, exc))
                if self._wait(delay):
                    raise ManagerClosedError("closed while waiting to retry") from None
                attempt += 1
                continue
            return TokenResponse(
                response.access_token,
                response.token_type,
                response.expires_in,
                response.scope,
                response.sent_monotonic,
                response.sent_wall,
                attempts=attempt,
            )

    def _retry_delay(self, exc: TokenRequestError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when not retryable."""
        if not exc.retryable:
            return None
        settings = self._settings
        if exc.retry_after is not None:
            return min(exc.retry_after, settings.max_retry_after)
        ceiling = min(settings.backoff_max, settings.backoff_base * 2.0 ** (attempt - 1))
        return ceiling * self._clock.random()  # "full jitter": spreads a herd of retries

    def _attempt(self, credentials: Credentials) -> TokenResponse:
        settings = self._settings
        data = {"grant_type": "client_credentials"}
        if settings.scopes:
            data["scope"] = " ".join(settings.scopes)
        headers = {
            "Authorization": basic_auth_header(credentials),
            "Accept": "application/json",
            # Token bodies are tiny; plain bytes keep the capped reader exact on every urllib3.
            "Accept-Encoding": "identity",
        }
        sent_monotonic = self._clock.monotonic()
        sent_wall = self._clock.time()
        try:
            with self._session.post(
                settings.token_url,
                data=data,
                headers=headers,
                timeout=settings.timeout,
                verify=settings.verify,
                allow_redirects=False,
                stream=True,
            ) as response:
                body = self._read_capped(response)
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except requests.exceptions.SSLError as exc:
            raise TokenEndpointTLSError(
                f"TLS handshake with the token endpoint failed: {_tls_reason(exc)}"
            ) from None
        except requests.exceptions.Timeout as exc:
            raise TokenRequestError(
                f"token request timed out ({type(exc).__name__})", retryable=True
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise TokenRequestError(
                f"could not reach the token endpoint ({type(exc).__name__})", retryable=True
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TokenRequestError(f"token request failed ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return _parse_success(body, status, sent_monotonic, sent_wall)
        raise _error_for(status, body, retry_after)

    def _read_capped(self, response: requests.Response) -> bytes:
        """Read the body, stopping past the size cap and past the read deadline.

        ``requests``' read timeout bounds each socket read, not the whole body: a server
        dripping a byte a second would never trip it. ``read1`` returns what one socket read
        brings, so the deadline is checked between reads.
        """
        cap = self._settings.max_response_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            raise _too_large(response.status_code, cap)
        deadline = self._clock.monotonic() + self._settings.timeout[1]
        raw: Any = response.raw
        read1 = getattr(raw, "read1", None)
        if read1 is None:  # urllib3 1.26: http.client's response under it has read1
            read1 = raw._fp.read1
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = read1(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > cap:
                raise _too_large(response.status_code, cap)
            chunks.append(chunk)
            if self._clock.monotonic() > deadline:
                raise TokenRequestError(
                    f"token endpoint sent its answer too slowly "
                    f"(over {self._settings.timeout[1]:g}s)",
                    status=response.status_code,
                    retryable=True,
                )

    # -- calls with a token ------------------------------------------------------------

    def revoke(self, access_token: str) -> bool:
        """Delete a token with ``DELETE /api/v2/tokens/me``.

        Whether Genesys honours this for client-credentials tokens is unconfirmed, so any
        failure is logged and reported as ``False``, never raised.

        Returns:
            True when the service answered 2xx.
        """
        status = self._call_with_token("DELETE", access_token)
        if status is not None and 200 <= status < 300:
            return True
        log.warning("token revocation was not accepted (status %s)", status)
        return False

    def check(self, access_token: str) -> int | None:
        """``HEAD /api/v2/tokens/me``: the status (200 means the token works), or ``None``."""
        return self._call_with_token("HEAD", access_token)

    def _call_with_token(self, method: str, access_token: str) -> int | None:
        url = f"{self._settings.api_base_url}/api/v2/tokens/me"
        try:
            response = self._session.request(
                method,
                url,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self._settings.timeout,
                verify=self._settings.verify,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as exc:
            log.warning("%s /api/v2/tokens/me failed: %s", method, type(exc).__name__)
            return None
        response.close()
        return response.status_code


def _parse_success(
    body: bytes, status: int, sent_monotonic: float, sent_wall: float
) -> TokenResponse:
    payload = _json_object(body)
    if payload is None:
        raise InvalidTokenResponseError(
            "token endpoint answered without a JSON object",
            status=status,
            body_excerpt=excerpt(body),
        )
    access_token = payload.get("access_token")
    if not isinstance(access_token, str) or not access_token.strip():
        raise _bad_field(status, body, "access_token is missing or empty")
    if any(ch.isspace() for ch in access_token) or not access_token.isprintable():
        raise _bad_field(status, body, "access_token contains whitespace or control characters")
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise _bad_field(status, body, f"token_type is not bearer ({excerpt(str(token_type))})")
    expires_in = _expires_in(payload.get("expires_in"), status, body)
    scope = payload.get("scope")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        scope=scope if isinstance(scope, str) else None,
        sent_monotonic=sent_monotonic,
        sent_wall=sent_wall,
    )


def _expires_in(value: Any, status: int, body: bytes) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_field(status, body, "expires_in is missing or not a number")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _bad_field(status, body, "expires_in is not a positive number")
    if number > MAX_TOKEN_LIFETIME:
        log.warning(
            "token endpoint granted %.0fs; capping the lifetime at %.0fs",
            number,
            MAX_TOKEN_LIFETIME,
        )
        number = MAX_TOKEN_LIFETIME
    return number


def _error_for(status: int, body: bytes, retry_after: float | None) -> TokenRequestError:
    payload = _json_object(body) or {}
    code = payload.get("error") if isinstance(payload.get("error"), str) else None
    description = next(
        (
            payload[key]
            for key in ("error_description", "description", "message")
            if isinstance(payload.get(key), str)
        ),
        None,
    )
    fields: dict[str, Any] = {
        "status": status,
        "error": code,
        "description": excerpt(description) if description else None,
        "body_excerpt": excerpt(body),
        "retry_after": retry_after,
    }
    summary = f"HTTP {status}" + (f" {code}" if code else "")
    if description:
        summary += f": {excerpt(description, 120)}"
    if code == "invalid_client":
        return InvalidClientError(f"credentials rejected by Genesys ({summary})", **fields)
    throttled_400 = (
        status == 400
        and code == "invalid_request"
        and (description or "").lower().startswith(RATE_LIMIT_PREFIX)
    )
    if status == 429 or throttled_400:
        return RateLimitedError(f"token creation rate-limited ({summary})", **fields)
    retryable = status in RETRY_STATUSES
    return TokenRequestError(f"token request failed ({summary})", retryable=retryable, **fields)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _bad_field(status: int, body: bytes, what: str) -> InvalidTokenResponseError:
    return InvalidTokenResponseError(
        f"unusable token answer: {what}", status=status, body_excerpt=excerpt(body)
    )


def _too_large(status: int, cap: int) -> InvalidTokenResponseError:
    return InvalidTokenResponseError(
        f"token answer larger than max_response_bytes ({cap} bytes); not read further",
        status=status,
    )


def _describe(exc: TokenRequestError) -> str:
    return f"HTTP {exc.status}" if exc.status is not None else str(exc)


def _tls_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "hostname mismatch", "WRONG_VERSION_NUMBER"):
        if marker.lower() in text.lower():
            return marker
    return type(exc).__name__
