"""The token-endpoint HTTP client: one pooled session, timeouts, retries, size cap, typed errors.

Why not ``urllib3.util.Retry`` mounted on the session: it retries below ``requests`` on status
codes only, and the answer Genesys gives when token creation is throttled is an HTTP 400 whose
*body* says ``rate limit exceeded;``; it cannot enforce one deadline for a whole acquisition,
cannot wait on the manager's stop event (``close()`` must interrupt a long ``Retry-After``),
and does not report each retry to the manager's metrics. Its API also differs between
urllib3 1.26 and 2.x, both of which this SDK supports. So the loop is here, and so is the
``Retry-After`` parser: it reads HTTP-dates against the injected clock, which keeps tests
deterministic.

Time bounds of one :meth:`TokenEndpoint.fetch`: no new attempt starts, and no retry wait is
begun, that would end past ``retry_deadline``; each attempt has a total deadline of connect +
2 x read timeout + 1 s, kept by this thread as it reads (``_http.deadline``): a server
dripping its answer one byte at a time is let go at the deadline.

Secrets on this path are kept as ``SecretValue`` objects: the ``Basic`` value is set on the
prepared request by an ``AuthBase`` (no headers dict of ours holds it) and taken off it again
once the answer's headers arrived; the forms an answer must not echo are revealed only inside
the redaction. Every failure is raised out of any ``except`` block,
so no chained exception carries the frames of ``requests`` (whose locals hold the prepared
request). An unexpected exception becomes a :class:`TokenRequestError` naming its type and
place, never its message (a hostile answer's bytes may be in it).
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from ..core.clock import SYSTEM_CLOCK, Clock
from ..credentials import KnownSecrets, read_secret
from ..errors import (
    GenesysTokenError,
    InvalidTokenResponseError,
    ManagerClosedError,
    TokenEndpointTLSError,
    TokenRequestError,
    where_raised,
)
from ..observability.redaction import excerpt
from ..proxies import Proxies
from ..settings import Config, Credentials
from .answers import (
    RATE_LIMIT_PREFIX,
    RETRY_STATUSES,
    TokenResponse,
    error_for,
    parse_retry_after,
    parse_success,
)
from .basic_auth import BasicAuth, basic_value
from .connections import attempt_bound, deadline, proxies_for, shared_session, status_of
from .failures import (
    CORRELATION_HEADER,
    PROXY_AUTH_FAILED,
    cause_of,
    correlation_id_of,
    failure_in_words,
    host_of,
    proxy_host,
)
from .retry_policy import FULL_JITTER, Backoff, RetryPolicy

__all__ = [
    "RATE_LIMIT_PREFIX",
    "RETRY_STATUSES",
    "SYSTEM_CLOCK",
    "Clock",
    "RetryNotice",
    "TokenEndpoint",
    "TokenResponse",
    "basic_auth_header",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

_READ_CHUNK = 8192
_READ_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)
#: More digits than any body length: such a ``Content-Length`` means "too large" (and
#: ``int()`` refuses strings past 4300 digits).
_MAX_LENGTH_DIGITS = 18
_TOO_LONG = sys.maxsize


@dataclass(frozen=True)
class RetryNotice:
    """What the transport tells its owner before each retry.

    Attributes:
        attempt: The attempt that just failed (1 for the first request).
        delay: Seconds the transport waits before the next attempt.
        error: Why the attempt failed (redacted, like every error of this SDK).
    """

    attempt: int
    delay: float
    error: TokenRequestError


def basic_auth_header(credentials: Credentials) -> str:
    """The ``Authorization: Basic`` value for a client id and secret (UTF-8), in clear.

    Like every official Genesys SDK, the id and secret are not form-encoded first. The token
    request itself never holds this string: see :class:`BasicAuth`.
    """
    return basic_value(credentials.client_id, read_secret(credentials.client_secret)).reveal()


def _sleep(seconds: float) -> bool:
    """The wait of an endpoint used without a cancel flag (nothing can interrupt it).

    A function, not an ``Event().wait`` per endpoint: an Event is a Condition, a lock and
    a deque, about 1 KiB for each of thousands of managers of a many-org process.
    """
    time.sleep(seconds)
    return False


class TokenEndpoint:
    """Requests client-credentials tokens from one token URL, with retries.

    Thread-safe: all per-call state is local. By default every endpoint of the process shares
    one connection pool (``_http.shared_session``). Proxies and CA bundles from the
    environment apply as in ``requests`` (``trust_env``).
    """

    def __init__(
        self,
        settings: Config,
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
            on_retry: Called before each retry wait, for metrics.
            session: A ``requests.Session`` to use instead of the shared one.
        """
        self._settings = settings
        self._policy = RetryPolicy(
            max_retries=settings.max_retries,
            deadline=settings.retry_deadline,
            max_retry_after=settings.max_retry_after,
            backoff=Backoff(settings.backoff_base, settings.backoff_max, FULL_JITTER),
        )
        self._clock = clock
        self._wait = wait or _sleep
        self._on_retry = on_retry
        self._own_session = session

    @property
    def _session(self) -> requests.Session:
        return self._own_session if self._own_session is not None else shared_session()

    def close(self) -> None:
        """Nothing to release: the shared pool outlives a manager, a given session is the
        caller's."""

    # -- token acquisition -------------------------------------------------------------

    def fetch(
        self,
        credentials: Credentials,
        *,
        cancel: threading.Event | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        may_retry: Callable[[], bool] | None = None,
    ) -> TokenResponse:
        """Run the client-credentials grant, retrying what is worth retrying.

        Retried: 429, 500, 502, 503, 504, Genesys' 400 ``rate limit exceeded;`` answer,
        connection errors and timeouts. ``Retry-After`` is honoured up to
        ``max_retry_after``; without it the wait is exponential backoff with full jitter.
        At most ``max_retries`` retries, and none that would end past ``retry_deadline``.

        Args:
            credentials: The client id and secret to authenticate with.
            cancel: Set when the request is abandoned (``close()`` of the manager): no retry
                wait or new attempt follows, and an attempt in progress lets its connection
                go within ``_http.READ_SLICE``.
            on_retry: Called before each retry wait of this call, before the endpoint's own
                ``on_retry`` (an acquisition keeps the last failure for its waiters).
            may_retry: Asked before each retry (after the policy allowed it); False: no
                retry, the failure is raised (another token's acquisition retries for the
                client: see ``Outage.may_retry``).

        Returns:
            The parsed token answer.

        Raises:
            InvalidClientError: The credentials were rejected (never retried).
            RateLimitedError: Still throttled after the retries; ``retry_after`` is what the
                service asked for, capped at ``max_retry_after``.
            TokenEndpointTLSError: The TLS handshake failed (never retried).
            InvalidTokenResponseError: A 2xx answer without a usable token (never retried).
            TokenRequestError: Any other failure, after the retries; an unexpected exception
                too (never retried), named by type and place.
            ManagerClosedError: The owner closed while we waited to retry.
            SecretSourceError: ``credentials`` hold a source that gave no usable secret.
        """
        settings, policy = self._settings, self._policy
        secret = read_secret(credentials.client_secret)
        auth = BasicAuth(credentials.client_id, secret)
        proxies = settings.proxies
        known = auth.known(secret, *(proxies.passwords() if proxies is not None else ()))
        wait = cancel.wait if cancel is not None else self._wait
        give_up_at = self._clock.monotonic() + policy.deadline
        attempt = 1
        while True:
            if cancel is not None and cancel.is_set():
                raise ManagerClosedError("token request abandoned: the manager was closed")
            unexpected: str | None = None
            try:
                with deadline(attempt_bound(settings.timeout), cancel):
                    response = self._attempt(auth, known)
            except TokenRequestError as exc:
                exc.attempts = attempt
                delay = self._retry_delay(exc, attempt)
                if delay is None or not policy.allows(
                    attempt, self._clock.monotonic() + delay, give_up_at
                ):
                    raise
                if may_retry is not None:
                    retry_at = self._clock.monotonic() + delay
                    if not may_retry():
                        raise
                    # It may have waited for another acquisition: what is left of the delay,
                    # and the retry deadline still holds.
                    now = self._clock.monotonic()
                    delay = max(0.0, retry_at - now)
                    if not policy.allows(attempt, now + delay, give_up_at):
                        raise
                if cancel is not None and cancel.is_set():
                    raise ManagerClosedError(
                        "token request abandoned: the manager was closed"
                    ) from None
                log.warning(
                    "token request failed (%s); retry %d of %d in %.2fs",
                    _describe(exc),
                    attempt,
                    policy.max_retries,
                    delay,
                    extra={
                        "attempt": attempt,
                        "delay": round(delay, 3),
                        "status": exc.status,
                        "correlation_id": exc.correlation_id,
                        "host": exc.host,
                        "failure": failure_in_words(exc),
                    },
                )
                notice = RetryNotice(attempt, delay, exc)
                for notify in (on_retry, self._on_retry):
                    if notify is not None:
                        notify(notice)
                if wait(delay):
                    raise ManagerClosedError("closed while waiting to retry") from None
                attempt += 1
                continue
            except GenesysTokenError:
                raise
            except Exception as exc:  # noqa: BLE001 - typed below, out of this handler
                unexpected = where_raised(exc)
            if unexpected is not None:
                # Raised here: a chain would carry the frames of requests, which hold the
                # prepared request (and an error tracker sends every frame's locals).
                log.error("token request failed unexpectedly (%s)", unexpected)
                raise TokenRequestError(
                    f"token request failed unexpectedly ({unexpected})", attempts=attempt
                )
            return dataclasses.replace(response, attempts=attempt)

    def _retry_delay(self, exc: TokenRequestError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when not retryable."""
        if not exc.retryable:
            return None
        # Without Retry-After, "full jitter": spreads a herd of retries.
        return self._policy.wait(attempt, exc.retry_after, self._clock.random)

    def _attempt(self, auth: BasicAuth, known: KnownSecrets) -> TokenResponse:
        """One token request: the parsed token, or the typed error its answer means."""
        sent_monotonic = self._clock.monotonic()
        sent_wall = self._clock.time()
        host = host_of(self._settings.token_url)
        status, retry_after, body, problem, correlation_id = self._post(auth, host, known)
        if 200 <= status < 300:
            if problem is not None:
                raise InvalidTokenResponseError(
                    f"unusable token answer from {host}: {problem}",
                    status=status,
                    body_excerpt=known.excerpt(body),
                    host=host,
                    correlation_id=correlation_id,
                )
            try:
                return parse_success(body, status, sent_monotonic, sent_wall, known, host)
            except TokenRequestError as exc:
                exc.host, exc.correlation_id = host, correlation_id
                raise
        error = error_for(status, body, retry_after, known, host, correlation_id)
        cap = self._policy.max_retry_after
        if error.retry_after is not None and error.retry_after > cap:
            # A hostile or broken server must not park the refresher for days.
            log.warning(
                "token endpoint asked to wait %.0fs; waiting at most %.0fs", error.retry_after, cap
            )
            error.retry_after = cap
        raise error

    def _post(
        self, auth: BasicAuth, host: str, known: KnownSecrets
    ) -> tuple[int, float | None, bytes, str | None, str | None]:
        """POST the grant; returns status, ``Retry-After`` seconds, body, a read problem and
        the ``ININ-Correlation-Id`` of the answer.

        Raises:
            TokenRequestError: No answer: network error, timeout, TLS failure.
        """
        settings = self._settings
        data = {"grant_type": "client_credentials"}
        if settings.scopes:
            data["scope"] = " ".join(settings.scopes)
        headers = {
            "Accept": "application/json",
            # Token bodies are tiny; plain bytes keep the capped reader exact on every urllib3
            # and leave no room for a decompression bomb.
            "Accept-Encoding": "identity",
        }
        try:
            with self._session.post(
                settings.token_url,
                data=data,
                headers=headers,
                auth=auth,  # also keeps a ~/.netrc entry from replacing the credentials
                timeout=settings.timeout,
                verify=settings.verify,
                allow_redirects=False,
                stream=True,
                # Loopback: no proxy, on a session given to us too; else ours wins over the
                # environment's.
                proxies=proxies_for(settings.token_url, settings.proxies),
                cert=settings.cert,
            ) as response:
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self._clock.time()
                )
                correlation_id = _correlation_id(response, known)
                body, problem = self._read_capped(response, host, correlation_id)
                return response.status_code, retry_after, body, problem, correlation_id
        except requests.exceptions.RequestException as exc:
            failure = _no_answer(exc, host, settings.token_url, settings.proxies)
        raise failure  # out of the handler: no chain holds the frames of requests

    def _read_capped(
        self, response: requests.Response, host: str, correlation_id: str | None
    ) -> tuple[bytes, str | None]:
        """Read the body; returns it and, when it was not read whole, why not.

        Each socket read waits at most what is left of the attempt's deadline (see
        ``_http.deadline``). Reading stops at the size cap, so memory stays flat whatever the
        server sends.
        """
        status = response.status_code
        cap = self._settings.max_response_bytes
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        declared = _content_length(response)
        too_large = f"larger than max_response_bytes ({cap} bytes); not read further"
        if encoding not in ("", "identity"):
            return b"", f"{excerpt(encoding, 20)}-encoded although identity was asked for"
        if declared is not None and declared > cap:
            return b"", too_large
        read = _raw_reader(response)
        chunks: list[bytes] = []
        size = 0
        while True:
            broken: TokenRequestError | None = None
            try:
                chunk = read(_READ_CHUNK)
            except _READ_ERRORS as exc:
                broken = _broken_read(exc, status, host, correlation_id)
            if broken is not None:
                raise broken  # out of the handler: no chain holds the reader's frames
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                return b"".join(chunks), too_large
            chunks.append(chunk)
        if declared is not None and size < declared:
            # http.client (urllib3 1.26) reports a body cut short as a plain end of data.
            raise TokenRequestError(
                f"token endpoint {host} closed the connection mid-answer: connection dropped"
                f" ({size} of {declared} bytes)",
                status=status,
                retryable=True,
                host=host,
                correlation_id=correlation_id,
                cause="connection dropped",
            )
        return b"".join(chunks), None

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
            # Within its deadline: an API host trickling its headers must not hold rotate().
            return status_of(
                self._session,
                method,
                url,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self._settings.timeout,
                verify=self._settings.verify,
                proxies=self._settings.proxies,
                cert=self._settings.cert,
            )
        except requests.exceptions.RequestException as exc:
            log.warning(
                "%s /api/v2/tokens/me failed: %s (%s) on %s",
                method,
                cause_of(exc),
                type(exc).__name__,
                host_of(url),
            )
            return None


def _no_answer(
    exc: requests.exceptions.RequestException, host: str, url: str, proxies: Proxies | None
) -> TokenRequestError:
    """The typed error of a request that brought no answer, naming the host and the cause
    (and the proxy's host, never its credentials, when the proxy failed it).

    Not chained to ``exc``: its frames hold the prepared request (see ``TokenRequestError``).
    """
    cause = cause_of(exc)
    kind = type(exc).__name__
    if isinstance(exc, requests.exceptions.ProxyError):
        proxy = proxy_host(url, proxies)
        refused = cause == PROXY_AUTH_FAILED
        return TokenRequestError(
            f"could not reach the token endpoint {host} through the proxy {proxy}: {cause}"
            f" ({kind})",
            retryable=not refused,  # wrong proxy credentials stay wrong
            host=host,
            cause=cause,
        )
    if isinstance(exc, requests.exceptions.SSLError) or cause.startswith("TLS"):
        return TokenEndpointTLSError(
            f"TLS handshake with the token endpoint failed: {_tls_reason(exc)}"
            f" ({cause} for {host})",
            host=host,
            cause=cause,
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TokenRequestError(
            f"token request to {host} timed out: {cause} ({kind})",
            retryable=True,
            host=host,
            cause=cause,
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return TokenRequestError(
            f"could not reach the token endpoint {host}: {cause} ({kind})",
            retryable=True,
            host=host,
            cause=cause,
        )
    return TokenRequestError(f"token request to {host} failed: {cause} ({kind})", host=host)


def _correlation_id(response: requests.Response, known: KnownSecrets) -> str | None:
    """The answer's ``ININ-Correlation-Id``; ``None`` when absent, malformed or holding a
    known secret (a hostile endpoint may echo the client secret there)."""
    found = correlation_id_of(
        response.headers.get(CORRELATION_HEADER), lambda text: known.excerpt(text, 64)
    )
    # Redaction spares secrets too short to search prose for; an id is dropped whole.
    return None if found is None or known.found_in(found) else found


def _content_length(response: requests.Response) -> int | None:
    """The declared body length; ``None`` when absent or not plain ASCII digits (``int()``
    reads ``"٣"`` and ``str.isdigit()`` accepts ``"²"``, which ``int()`` refuses)."""
    value = response.headers.get("Content-Length", "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    if len(value) > _MAX_LENGTH_DIGITS:
        return _TOO_LONG  # past any cap: "too large", never parsed
    return int(value)


def _raw_reader(response: requests.Response) -> Callable[[int], bytes | None]:
    """``read1`` of the raw body: urllib3 2.x has one (undecoded); 1.26 has http.client's."""
    raw: Any = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is not None:
        return lambda size: read1(size, decode_content=False)
    fp_read1: Callable[[int], bytes | None] = raw._fp.read1
    return fp_read1


def _broken_read(
    exc: BaseException, status: int, host: str, correlation_id: str | None
) -> TokenRequestError:
    timed_out = isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError)
    what = "stalled" if timed_out else "broke off"
    cause = "read timed out" if timed_out else cause_of(exc)
    return TokenRequestError(
        f"token endpoint {host} {what} while sending its answer: {cause} ({type(exc).__name__})",
        status=status,
        retryable=True,
        host=host,
        correlation_id=correlation_id,
        cause=cause,
    )


def _describe(exc: TokenRequestError) -> str:
    if exc.status is None:
        return str(exc)
    described = f"HTTP {exc.status}" + (f" {exc.error}" if exc.error else "")
    # What Genesys support asks for, on every try's line, not only the last one's.
    return described + (f" correlation_id={exc.correlation_id}" if exc.correlation_id else "")


def _tls_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for marker in (
        "CERTIFICATE_VERIFY_FAILED",
        "hostname mismatch",
        "doesn't match",
        "WRONG_VERSION_NUMBER",
    ):
        if marker.lower() in text:
            return marker
    return type(exc).__name__
