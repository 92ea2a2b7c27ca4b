"""The exception hierarchy.

Every error the SDK raises is a :class:`GenesysTokenError`. None of them ever carries a client
secret or an access token: messages are built from status codes, OAuth error codes and
descriptions, and response excerpts pass through
:func:`genesys_token.observability.redaction.redact` first.
"""

from __future__ import annotations


class GenesysTokenError(Exception):
    """Base class of every error raised by genesys-token."""


class ConfigurationError(GenesysTokenError, ValueError):
    """A setting is missing, of the wrong type or out of range.

    Attributes:
        field: The name of the offending setting, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TokenRequestError(GenesysTokenError):
    """The token endpoint did not give us a usable token.

    Attributes:
        status: The HTTP status, or ``None`` when no answer arrived (network error, timeout).
        error: The OAuth ``error`` code of the answer, when it had one.
        code: Genesys' ``code`` of a JSON error body (``"bad.request"``), when it had one.
        description: The ``error_description`` (or Genesys ``description``/``message``),
            redacted and cut to 120 characters, when present.
        body_excerpt: A short, redacted start of the response body, for diagnosis.
        retryable: Whether another attempt could succeed (5xx, 429, network, rate limit).
        attempts: How many requests this acquisition made before giving up.
        retry_after: Seconds the service asked us to wait (``Retry-After``), when it said.
        host: The host asked (with ``:port`` when not the scheme's default, never userinfo);
            empty when the error did not come from one request.
        correlation_id: The answer's ``ININ-Correlation-Id`` header, when an answer came
            (quote it to Genesys support); shown at the end of ``str(e)``.
        cause: The low-level cause in words ("name lookup failed", "connection refused",
            ...), when no answer came. The library does not chain the underlying exception
            (``__cause__`` stays ``None``): its frames hold the prepared request and its
            Basic header; the cause's words and type are in the message instead.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        code: str | None = None,
        description: str | None = None,
        body_excerpt: str | None = None,
        retryable: bool = False,
        attempts: int = 1,
        retry_after: float | None = None,
        host: str = "",
        correlation_id: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.correlation_id = correlation_id
        self.cause = cause
        self.retry_after = retry_after
        self.status = status
        self.error = error
        self.code = code
        self.description = description
        self.body_excerpt = body_excerpt
        self.retryable = retryable
        self.attempts = attempts

    def __str__(self) -> str:
        text = super().__str__()
        if self.correlation_id:
            text += f" [correlation id {self.correlation_id}]"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, status={self.status!r}, "
            f"error={self.error!r}, host={self.host!r}, attempts={self.attempts!r})"
        )


class InvalidClientError(TokenRequestError):
    """Genesys rejected the client id or secret (``invalid_client``, HTTP 400 or 401, or a
    401 without an OAuth error code).

    Retrying cannot help; fix the credentials (or call ``set_credentials``).
    """


class UnauthorizedClientError(InvalidClientError):
    """The client exists but may not use the client-credentials grant (HTTP 400
    ``unauthorized_client``). Never retried: change the OAuth client's grant type in Genesys.
    """


class RateLimitedError(TokenRequestError):
    """Token creation stayed throttled after every retry (HTTP 429, or Genesys' 400
    ``rate limit exceeded;`` answer).

    ``retry_after`` holds the seconds the service asked us to wait (``Retry-After``, or the
    "[N] seconds" of a Genesys 429 body), capped at ``max_retry_after``; ``None`` when it
    did not say. Its subclass :class:`ApiRateLimitedError` is the pacing of API calls
    (``api_rate_limit``) giving up before anything was sent.
    """


class ApiRateLimitedError(RateLimitedError):
    """An API call found no room under ``api_rate_limit`` for its token within
    ``api_rate_wait``: nothing was sent (``attempts`` is 0, ``status`` ``None``).

    A :class:`RateLimitedError`, so one ``except RateLimitedError`` catches both limits.

    Attributes:
        limit: The limit that left no room: ``(calls, seconds)`` per token.
        waited: Seconds this call waited for a slot.
        token_fingerprint: The fingerprint of the token whose slots were taken (never the
            token), or ``""`` when the pacer was not told it.
        retry_after: Seconds until a slot frees, when known (a slot still held until its
            answer frees at an unknown time: then ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        limit: tuple[int, float],
        waited: float,
        token_fingerprint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=True, attempts=0, retry_after=retry_after)
        self.limit = limit
        self.waited = waited
        self.token_fingerprint = token_fingerprint


class InvalidTokenResponseError(TokenRequestError):
    """The token endpoint answered 2xx with something that is not a usable token: not JSON,
    no ``access_token``, a bad ``expires_in``, a ``token_type`` other than bearer, too large.
    """


class TokenEndpointTLSError(TokenRequestError):
    """The TLS handshake with the token endpoint failed (certificate not trusted, wrong host).

    Not retried: a certificate problem does not fix itself between two attempts.
    """


class SecretSourceError(ConfigurationError):
    """The configured secret source gave no usable secret: a callable raised or returned
    something other than a non-empty string, or a secret file could not be read. Its message
    names the source, never the secret."""


class TokenTimeoutError(GenesysTokenError):
    """``get_token(timeout=...)`` (or an internal bound) passed while no valid token existed.

    Only this caller gave up: the token request goes on, and later callers get its token.

    Attributes:
        host: The token endpoint's host (with ``:port`` when not the scheme's default), or
            empty when not known.
        cause: Why the last failed attempt of the token request in progress failed, in
            words ("connection refused", "HTTP 503"), or ``None`` when none failed yet.
    """

    def __init__(self, message: str, *, host: str = "", cause: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.cause = cause


class TokenRejectedError(GenesysTokenError):
    """The API rejected (401) a token fetched moments ago, and another replacement was
    already made within the cool-down: no further token request is made for now.

    Usual causes: the API host is in another region than the token endpoint, or the OAuth
    client lacks the permission (role) the call needs. ``GenesysAuth`` answers such a call
    with its 401 instead of raising.
    """


class TokenValidationError(GenesysTokenError):
    """A token failed validation: expired, wrong client, missing scope or bad signature."""


class DrainTimeoutError(GenesysTokenError):
    """``rotate(strict=True)`` gave up because calls in flight did not finish in time.

    Attributes:
        in_flight: How many uses of the old token were still counted at the deadline.
    """

    def __init__(self, message: str, *, in_flight: int = 0) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class ManagerClosedError(GenesysTokenError):
    """The :class:`~genesys_token.TokenManager` was closed; it hands out no more tokens."""


class StoreError(GenesysTokenError):
    """A token store could not be read or written (the manager falls back to the network)."""


def where_raised(exc: BaseException) -> str:
    """``"ValueError in f at x.py:12"``: the type of an unexpected exception and the place
    it was raised, never its message (which may quote a hostile answer or a secret).

    Args:
        exc: An exception that was raised (it has a traceback).

    Returns:
        The description, for an error message or a log line.
    """
    tb = exc.__traceback__
    if tb is None:
        return type(exc).__name__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    file = code.co_filename.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{type(exc).__name__} in {code.co_name} at {file}:{tb.tb_lineno}"
