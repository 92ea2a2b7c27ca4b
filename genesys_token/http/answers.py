"""Reading token-endpoint answers: a 2xx into a :class:`TokenResponse`, the rest into typed
errors. Every text taken from an answer is redacted (patterns plus the ``known`` secrets) and
cut short before it reaches an exception: the answer may be hostile. Numbers are read as
ASCII only, and one that is absurd (a 400-digit ``expires_in``, ``NaN``) is an
:class:`InvalidTokenResponseError`, never an ``OverflowError`` or ``ValueError``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from ..credentials import KnownSecrets
from ..errors import (
    InvalidClientError,
    InvalidTokenResponseError,
    RateLimitedError,
    TokenRequestError,
    UnauthorizedClientError,
)
from ..settings import MAX_TOKEN_LIFETIME

log = logging.getLogger(__name__)

#: Statuses worth another attempt: throttling and the transient server errors.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The description prefix of Genesys' token-creation throttle, answered as HTTP 400.
RATE_LIMIT_PREFIX = "rate limit exceeded"

_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
#: Genesys' 429 body says "Retry the request in [42] seconds" (used when no header came).
_RETRY_IN_MESSAGE = re.compile(r"in \[(\d{1,6})\] seconds", re.ASCII)
#: An ``expires_in`` past this (about 31 million years) is no lifetime but a broken or
#: hostile answer: refused, not capped like a merely long one.
_ABSURD_SECONDS = 10**15


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or ``None``.

    Args:
        value: The header value.
        now: Wall-clock time to measure an HTTP-date against (default ``time.time()``).

    Returns:
        Seconds to wait (0 for a date in the past), or ``None`` when absent or unreadable.
    """
    text = (value or "").strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if math.isfinite(seconds) else None


def parse_success(
    body: bytes,
    status: int,
    sent_monotonic: float,
    sent_wall: float,
    known: KnownSecrets,
    host: str = "",
) -> TokenResponse:
    """Turn a 2xx body into a :class:`TokenResponse`.

    Args:
        body: The whole body (already capped).
        status: The HTTP status, for the error.
        sent_monotonic: Monotonic time the request was sent.
        sent_wall: Wall-clock time the request was sent.
        known: Secrets to redact from excerpts (the token found is added).
        host: The host that answered (named in the error, as other token errors do).

    Returns:
        The parsed answer; ``expires_in`` capped at ``MAX_TOKEN_LIFETIME``.

    Raises:
        InvalidTokenResponseError: Not a JSON object, or a field is missing or unusable
            (``expires_in`` not a positive finite number of seconds, or absurdly large).
    """
    payload = _json_object(body)
    if payload is None:
        raise InvalidTokenResponseError(
            f"token endpoint {host or '?'} answered without a JSON object",
            status=status,
            body_excerpt=known.excerpt(body),
            host=host,
        )
    access_token = payload.get("access_token")
    if isinstance(access_token, str) and access_token:
        known = known.plus(access_token)
    if not isinstance(access_token, str) or not access_token.strip():
        raise _bad_field(status, host, body, "access_token is missing or empty", known)
    if any(ch.isspace() for ch in access_token) or not access_token.isprintable():
        raise _bad_field(
            status, host, body, "access_token has whitespace or control characters", known
        )
    if not access_token.isascii():  # RFC 6750: a header value; "€" failed every API call
        raise _bad_field(status, host, body, "access_token is not ASCII", known)
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = known.excerpt(str(token_type), 40)
        raise _bad_field(status, host, body, f"token_type is not bearer ({shown})", known)
    expires_in = _expires_in(payload.get("expires_in"), status, host, body, known)
    scope = payload.get("scope")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        scope=scope if isinstance(scope, str) else None,
        sent_monotonic=sent_monotonic,
        sent_wall=sent_wall,
    )


def _expires_in(value: Any, status: int, host: str, body: bytes, known: KnownSecrets) -> float:
    if isinstance(value, str) and _DELTA_SECONDS.fullmatch(value.strip()):
        value = float(value.strip())  # a huge one is inf, refused below
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_field(status, host, body, "expires_in is missing or not a number", known)
    # Compared before float(): an int of 400 digits would raise OverflowError there.
    if value > _ABSURD_SECONDS:
        raise _bad_field(status, host, body, "expires_in is absurdly large", known)
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise _bad_field(status, host, body, "expires_in is not a positive number", known)
    if number > MAX_TOKEN_LIFETIME:
        log.warning(
            "token endpoint granted %.0fs; capping the lifetime at %.0fs",
            number,
            MAX_TOKEN_LIFETIME,
        )
        number = MAX_TOKEN_LIFETIME
    return number


def error_for(
    status: int,
    body: bytes,
    retry_after: float | None,
    known: KnownSecrets,
    host: str = "",
    correlation_id: str | None = None,
) -> TokenRequestError:
    """The typed error a non-2xx answer means (returned, not raised).

    Args:
        status: The HTTP status.
        body: The body read (possibly cut at the size cap).
        retry_after: Seconds from the ``Retry-After`` header, if any.
        known: Secrets to redact from the description and excerpt.
        host: The host that answered (named in the message).
        correlation_id: The answer's ``ININ-Correlation-Id``.

    Returns:
        :class:`UnauthorizedClientError` for ``unauthorized_client``,
        :class:`InvalidClientError` for ``invalid_client`` (or a bare 401),
        :class:`RateLimitedError` for 429 and Genesys' 400 ``rate limit exceeded;``,
        else :class:`TokenRequestError`, retryable for 500, 502, 503 and 504.
    """
    payload = _json_object(body) or {}
    code = payload.get("error") if isinstance(payload.get("error"), str) else None
    # The Genesys error body ({"code": "bad.request", "message": ...}): shown, never used
    # to classify (a 401 without an OAuth error stays "credentials rejected").
    genesys_code = payload["code"] if isinstance(payload.get("code"), str) else None
    description = next(
        (
            payload[key]
            for key in ("error_description", "description", "message")
            if isinstance(payload.get(key), str)
        ),
        None,
    )
    if status == 429 and retry_after is None and description:
        found = _RETRY_IN_MESSAGE.search(description)
        retry_after = float(found.group(1)) if found else None
    shown = known.excerpt(description, 120) if description else None
    fields: dict[str, Any] = {
        "status": status,
        "error": known.excerpt(code, 60) if code else None,
        "code": known.excerpt(genesys_code, 60) if genesys_code else None,
        "description": shown,
        "body_excerpt": known.excerpt(body),
        "retry_after": retry_after,
        "host": host,
        "correlation_id": correlation_id,
    }
    where = f" from {host}" if host else ""
    summary = (
        f"HTTP {status}"
        + (f" {fields['error']}" if code else "")
        + (f" {fields['code']}" if genesys_code and genesys_code != code else "")
        + (f": {shown}" if shown else "")
    )
    if code == "unauthorized_client":
        return UnauthorizedClientError(
            f"client not allowed this grant ({summary}){where}", **fields
        )
    if code == "invalid_client" or (status == 401 and code is None):
        return InvalidClientError(f"credentials rejected by Genesys ({summary}){where}", **fields)
    throttled_400 = (
        status == 400
        and code == "invalid_request"
        and (description or "").strip().lower().startswith(RATE_LIMIT_PREFIX)
    )
    if status == 429 or throttled_400:
        return RateLimitedError(
            f"token creation rate-limited ({summary}){where}", retryable=True, **fields
        )
    retryable = status in RETRY_STATUSES
    return TokenRequestError(
        f"token request failed ({summary}){where}", retryable=retryable, **fields
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _bad_field(
    status: int, host: str, body: bytes, what: str, known: KnownSecrets
) -> InvalidTokenResponseError:
    return InvalidTokenResponseError(
        f"unusable token answer from {host or '?'}: {what}",
        status=status,
        body_excerpt=known.excerpt(body),
        host=host,
    )
