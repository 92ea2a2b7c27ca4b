"""api_session(): a ``requests.Session`` for the Platform API: token, base URL, timeout, retries."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterable
from itertools import takewhile
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from ..http.connections import LoopbackDirectAdapter, proxies_for
from ..http.failures import CORRELATION_HEADER, correlation_id_of, host_of, log_failed_call
from ..http.retry_policy import (
    ANY_METHOD_STATUSES,
    API_BACKOFF_MAX,
    FULL_JITTER,
    IDEMPOTENT_METHODS,
    IDEMPOTENT_STATUSES,
    Backoff,
)
from ..manager import adapter_port
from ..observability.redaction import excerpt
from ..proxies import Proxies
from .requests_auth import GenesysAuth

if TYPE_CHECKING:
    from ..manager import TokenManager

log = logging.getLogger("genesys_token.integrations.requests_session")

_LOGGED = "genesys_token_failure_logged"

#: ``(connect, read)`` seconds: connect slightly above a multiple of 3 s (TCP's retransmit
#: window); a read long enough for Genesys' slower queries (analytics, exports).
DEFAULT_TIMEOUT = (3.05, 30.0)
DEFAULT_MAX_RETRIES = 3
#: Backoff between retries without ``Retry-After``: full jitter in 0..factor * 2**(n-1) s.
DEFAULT_BACKOFF_FACTOR = 0.5
#: No single backoff wait (without ``Retry-After``) is longer than this.
BACKOFF_MAX = API_BACKOFF_MAX
#: A ``Retry-After`` above this is waited for this long only: a thread should not disappear
#: for minutes inside one API call; the caller gets the 429 back if it persists.
DEFAULT_MAX_RETRY_AFTER = 60.0
__all__ = [
    "ANY_METHOD_STATUSES",
    "BACKOFF_MAX",
    "DEFAULT_BACKOFF_FACTOR",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "IDEMPOTENT_STATUSES",
    "ApiSession",
    "GenesysRetry",
    "api_session",
    "genesys_retry",
]


class GenesysRetry(Retry):
    """``urllib3`` ``Retry`` for the Genesys Cloud API, on urllib3 1.26 and 2.x alike.

    * 429 is retried for every method (the request was not processed); 502, 503 and 504 for
      idempotent methods only (GET, HEAD, OPTIONS, PUT, DELETE, TRACE); a POST or PATCH that
      met a gateway error may have been applied and is returned to the caller.
    * ``Retry-After`` (seconds or an HTTP date) is honoured, capped at ``max_retry_after``; an
      unparseable value falls back to the backoff instead of raising.
    * Without ``Retry-After``, waits are exponential with full jitter: uniform between 0 and
      ``backoff_factor`` doubled ``n - 1`` times (at most ``BACKOFF_MAX``) before retry
      ``n`` (a :class:`~genesys_token.http.retry_policy.Backoff`), so clients that failed
      together do not come back together.

    * Each answer it retries is logged at INFO with its ``ININ-Correlation-Id`` (no adapter
      sees it: it never leaves ``urllib3``), and each retried 429 is passed to
      ``on_throttled``. INFO, not WARNING: a retry is the normal course of a throttled
      call, and each line stands for a wait of its own (``Retry-After``, or the backoff).

    Like every ``Retry``, a value object: each retry makes a new one, so one policy is shared
    safely by all threads.

    Args:
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.
        on_throttled: Called for each 429 answer that is retried (:func:`api_session`
            counts it in the manager's ``api_429s``).
        **kwargs: ``Retry`` arguments.

    Raises:
        ConfigurationError: ``backoff_factor`` is not a finite number >= 0.
    """

    def __init__(
        self,
        *,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        on_throttled: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_retry_after = max_retry_after
        self.on_throttled = on_throttled
        self._backoff = Backoff(self.backoff_factor, BACKOFF_MAX, FULL_JITTER)

    def new(self, **kw: Any) -> GenesysRetry:
        kw.setdefault("max_retry_after", self.max_retry_after)
        kw.setdefault("on_throttled", self.on_throttled)
        new: GenesysRetry = super().new(**kw)
        return new

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> GenesysRetry:
        new: GenesysRetry = super().increment(  # raises when exhausted: nothing retried
            method, url, response, error, _pool, _stacktrace
        )
        status = getattr(response, "status", None)
        if response is not None and isinstance(status, int):
            # ``total`` counts down: what is left after this retry.
            left = new.total if type(new.total) is int else 0
            retry = (len(new.history), len(new.history) + left)
            self._retried(method, url, response, status, _pool, retry)
        return new

    def _retried(
        self,
        method: str | None,
        url: str | None,
        response: Any,
        status: int,
        pool: Any,
        retry: tuple[int, int],
    ) -> None:
        """An answer with ``status`` is about to be retried (``retry``: n of at most m)."""
        if status == 429 and self.on_throttled is not None:
            self.on_throttled()
        path = urlsplit(url or "/").path or "/"
        shown = correlation_id_of(response.headers.get(CORRELATION_HEADER))
        log.info(
            "API call %s %s%s answered HTTP %d; retry %d of %d"
            + (" (correlation id %s)" if shown else ""),
            (method or "?").upper(),
            _pool_host(pool),
            excerpt(path, 200),
            status,
            *retry,
            *((shown,) if shown else ()),
            extra={"status": status, "correlation_id": shown, "retry": retry[0]},
        )

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in ANY_METHOD_STATUSES and status_code in (self.status_forcelist or ()):
            return True
        return bool(super().is_retry(method, status_code, has_retry_after))

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = float(super().parse_retry_after(retry_after))
        except (InvalidHeader, ValueError, OverflowError):
            log.debug("unparseable Retry-After ignored; backing off instead")
            return 0.0  # falsy: urllib3 then sleeps the backoff
        if seconds > self.max_retry_after:
            log.info("Retry-After %.0fs capped at %.0fs", seconds, self.max_retry_after)
        return min(seconds, self.max_retry_after)

    def get_backoff_time(self) -> float:
        errors = len(list(takewhile(lambda h: h.redirect_location is None, reversed(self.history))))
        if errors == 0:
            return 0.0
        return random.uniform(*self._backoff.interval(errors))


def _pool_host(pool: Any) -> str:
    """``host`` or ``host:port`` (not the default) of a urllib3 connection pool."""
    host = str(getattr(pool, "host", None) or "?")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = getattr(pool, "port", None)
    return host_of(f"{getattr(pool, 'scheme', 'https')}://{host}" + (f":{port}" if port else ""))


def genesys_retry(
    max_retries: int = DEFAULT_MAX_RETRIES,
    *,
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> GenesysRetry:
    """The retry policy :func:`api_session` mounts, for your own adapters.

    Args:
        max_retries: Retries after the first attempt (0: none).
        backoff_factor: Scale of the jittered exponential backoff, in seconds.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.

    Returns:
        A :class:`GenesysRetry` that returns the last response, not an exception, when it
        gives up.
    """
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    return GenesysRetry(
        total=max_retries,
        # A read error (timeout, reset) is not retried: the request may be in progress, and
        # requests would turn the exhausted retry into a ConnectionError, not a ReadTimeout.
        read=False,
        status_forcelist=sorted(ANY_METHOD_STATUSES | IDEMPOTENT_STATUSES),
        allowed_methods=IDEMPOTENT_METHODS,
        backoff_factor=backoff_factor,
        raise_on_status=False,
        respect_retry_after_header=True,
        max_retry_after=max_retry_after,
    )


class ApiSession(requests.Session):
    """A ``requests.Session`` bound to one Genesys Cloud API base URL (see :func:`api_session`).

    Args:
        base_url: What relative paths are resolved against.
        timeout: The default ``(connect, read)`` timeout of every request.
        proxies: The manager's ``proxies`` setting: the proxy it names for a URL wins over
            the environment's (a plain ``session.proxies`` would not: ``requests`` lets
            ``HTTPS_PROXY`` win over it); a ``proxies=`` of the call wins over both.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float | tuple[float, float],
        proxies: Proxies | None = None,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._explicit_proxies = proxies

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        """``requests``' merge, the manager's proxy for ``url`` put before the environment's
        (a loopback URL never gets one: the adapter drops it anyway), and ``self.verify``
        before the environment's CA bundle when it is not ``True``."""
        text = url.decode("utf-8") if isinstance(url, bytes) else str(url or "")
        ours = proxies_for(text, self._explicit_proxies) if self._explicit_proxies else None
        if ours:
            proxies = {**ours, **(proxies or {})}
        if verify is None and self.verify is not True:
            # A CA bundle set on the session (the manager's verify, or the user's) wins over
            # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which plain requests lets win over it
            # (psf/requests#3829); a verify= of the call wins over both.
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def resolve(self, url: str | bytes) -> str:
        """Resolve ``url`` against :attr:`base_url` unless it is absolute.

        ``"/api/v2/users"`` and ``"api/v2/users"`` both become ``base_url + "/api/v2/users"``
        (a path in the base URL, such as a gateway prefix, is kept).
        """
        text = url.decode("utf-8") if isinstance(url, bytes) else str(url)
        parts = urlsplit(text)
        if parts.scheme:
            return text
        if parts.netloc:  # "//host/path": the base URL's scheme
            return urljoin(self.base_url, text)
        return f"{self.base_url}/{text.lstrip('/')}"

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        request.url = self.resolve(request.url)
        return super().prepare_request(request)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        # requests passes timeout=None when the caller gave none, redirects included.
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        response = super().send(request, **kwargs)
        # send() runs again for each redirect hop and returns the last hop's answer here
        # too: the mark logs each answer once.
        if not getattr(response, _LOGGED, False):
            setattr(response, _LOGGED, True)
            log_failed_call(
                log,
                response.request.method or "?",
                response.request.url or "",
                response.status_code,
                response.headers.get(CORRELATION_HEADER),
            )
        return response

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


def api_session(
    manager: TokenManager,
    *,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    pool_maxsize: int = 10,
    replay_401: bool = True,
    retry_methods: Collection[str] | None = None,
    allowed_origins: Iterable[str] = (),
) -> ApiSession:
    """A ``requests.Session`` ready for the Genesys Cloud Platform API.

    ::

        with api_session(manager) as session:
            org = session.get("/api/v2/organizations/me").json()

    * Authentication: :class:`~genesys_token.GenesysAuth` (bearer token, counted in flight,
      one 401 replay), for requests to ``manager.api_base_url``'s origin (and
      ``allowed_origins``) only: an absolute URL to another origin goes out without the
      token, and a redirect to another host drops it (``requests`` strips the header).
    * Relative paths (``"/api/v2/users"``) are resolved against ``manager.api_base_url``.
    * The manager's ``proxies`` and ``cert`` settings apply (see :class:`ApiSession`), and
      its ``verify`` when not ``True`` (a CA bundle path, or ``False``); set
      ``session.verify`` afterwards to trust something else for API calls.
    * Every request gets ``timeout`` unless it passes its own.
    * Retries (:class:`GenesysRetry`): a 429 is retried for **every** method, since Genesys
      did not process the request; 502, 503 and 504 for idempotent methods only (GET, HEAD,
      OPTIONS, PUT, DELETE, TRACE), since a POST or PATCH may have been applied. Waits honour
      ``Retry-After`` up to ``max_retry_after`` seconds, else back off exponentially with full
      jitter. Connection errors are retried (the request never left); a read timeout or a
      reset while reading is not (the request may be in progress): it raises
      ``requests.ReadTimeout`` / ``requests.ConnectionError`` at once. After
      ``max_retries`` the last response is returned (a 429 stays a 429; nothing raises). A
      body sent as a generator cannot be sent twice: pass bytes or a file when a call may be
      retried.

    Args:
        manager: The token manager.
        timeout: Default ``(connect, read)`` seconds, or one number for both.
        max_retries: Retries after the first attempt (0: none).
        backoff_factor: Scale of the jittered backoff, in seconds.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.
        pool_maxsize: Connections kept per host (raise it for many threads).
        replay_401: Passed to :class:`~genesys_token.GenesysAuth`.
        retry_methods: Methods retried on 502/503/504 instead of the idempotent ones.
        allowed_origins: Further origins that get the token (passed to
            :class:`~genesys_token.GenesysAuth`).

    Returns:
        An :class:`ApiSession` (a ``requests.Session``); close it, or use it in ``with``.

    Raises:
        ValueError: ``max_retries`` is negative.
        ConfigurationError: ``allowed_origins`` holds something that is not an origin.
    """
    retry = genesys_retry(
        max_retries, backoff_factor=backoff_factor, max_retry_after=max_retry_after
    )
    if retry_methods is not None:
        retry = retry.new(allowed_methods=frozenset(m.upper() for m in retry_methods))
    settings = manager.settings
    retry_wait = None
    if settings.api_rate_limit is not None:
        # Paced: every attempt that reaches the wire takes a slot. urllib3 retries inside
        # one send, under one slot; so it retries only what never left (connect errors),
        # and the status retries run in GenesysAuth, one use and slot per attempt.
        retry_wait = _attempt_wait(retry)
        retry = retry.new(status_forcelist=frozenset(), respect_retry_after_header=False)
    else:
        # urllib3 retries statuses inside one send, unseen by GenesysAuth: count its 429s.
        retry = retry.new(on_throttled=adapter_port(manager).throttled_unseen)
    session = ApiSession(manager.api_base_url, timeout, settings.proxies)
    session.cert = settings.cert  # an mTLS gateway asks API calls for it too
    if settings.verify is not True:
        # The manager's CA bundle (a gateway's private CA, a TLS-inspecting proxy's) is
        # trusted for API calls too, as the official SDKs' one ssl_ca_cert is for all calls.
        session.verify = settings.verify
    # A loopback API host (a local gateway, the emulator) is never reached through a proxy.
    adapter = LoopbackDirectAdapter(max_retries=retry, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.auth = GenesysAuth(
        manager, replay_401=replay_401, allowed_origins=allowed_origins, retry_wait=retry_wait
    )
    return session


def _attempt_wait(retry: GenesysRetry) -> Callable[[requests.Response, int], float | None]:
    """``retry``'s status rules as a :class:`GenesysAuth` ``retry_wait``: the seconds to
    wait before sending again (``Retry-After`` capped, else the jittered backoff)."""

    def wait(response: requests.Response, retries: int) -> float | None:
        if retries >= (retry.total or 0):
            return None
        method = response.request.method or ""
        has_after = "Retry-After" in response.headers
        if not retry.is_retry(method, response.status_code, has_after):
            return None
        header = response.headers.get("Retry-After")
        seconds = retry.parse_retry_after(header) if header else 0.0
        return seconds or random.uniform(*retry._backoff.interval(retries + 1))

    return wait
