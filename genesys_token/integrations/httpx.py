"""GenesysHTTPXAuth: the manager's token on ``httpx`` calls, sync and async (``[httpx]`` extra).

::

    import httpx
    from genesys_token.integrations.httpx import GenesysHTTPXAuth

    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, timeout=10) as client:
        client.get("/api/v2/organizations/me")

    async with httpx.AsyncClient(base_url=manager.api_base_url, auth=auth) as client:
        await client.get("/api/v2/organizations/me")

One auth object serves both kinds of client, any number of threads and event loops.

:func:`api_client` and :func:`async_api_client` build such clients with what
``api_session`` has: the API base URL, a default timeout, 429 retried for every method and
502/503/504 for idempotent ones, ``Retry-After`` capped, failed calls logged once::

    with api_client(manager) as client:
        client.get("/api/v2/organizations/me")
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncGenerator, Collection, Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        "genesys_token.integrations.httpx needs httpx: pip install 'genesys-token[httpx]'"
    ) from exc

from ..errors import GenesysTokenError
from ..http.connections import is_loopback_url
from ..http.failures import CORRELATION_HEADER, log_failed_call
from ..manager import adapter_port
from ._offloop import OffLoopTokens
from .httpx_clients import ApiClient, ApiRetry, AsyncApiClient
from .requests_session import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
)

if TYPE_CHECKING:
    from ..core.uses import InFlight
    from ..manager import TokenManager

__all__ = ["ApiClient", "AsyncApiClient", "GenesysHTTPXAuth", "api_client", "async_api_client"]

log = logging.getLogger("genesys_token.integrations.httpx")

_BEARER = "Bearer "
_Origin = tuple[str, str, int | None]


def _origin(url: httpx.URL) -> _Origin:
    # httpx.URL lower-cases scheme and host and drops a port that is the scheme's default.
    return url.scheme, url.host, url.port


class GenesysHTTPXAuth(httpx.Auth):
    """Authenticate ``httpx`` calls to Genesys Cloud with the manager's token.

    The same promises as :class:`~genesys_token.GenesysAuth`, for ``httpx.Client`` and
    ``httpx.AsyncClient``:

    * Each call carries ``Authorization: Bearer <token>`` and is counted in flight from the
      moment it gets its token until its final response arrives (after the redirects httpx
      followed), or until it raises: a rotation waits for it and the count never leaks.
    * A 401 from the origin the token was sent to gets the token replaced (once, shared with
      every other caller that saw the same token rejected) and the call replayed once, if its
      body can be sent again (``content=``/``data=``/``json=``; not a generator or a
      multipart upload); not after a redirect that changed the method (a 303 after a POST:
      the POST was processed). If no new token can be had, the 401 is returned as is.
    * The token only goes to ``manager.api_base_url``'s origin (or the ``origins`` given):
      a request to any other host, including a redirect target sent by hand with
      ``client.send(response.next_request)``, goes out without it. httpx itself drops the
      header on a redirect to another origin.

    The async flow never blocks the event loop: with a usable token it counts the call and
    sets the header inline (no I/O); when a token must be fetched or replaced, the blocking
    work runs in a worker thread of the loop's default executor, and concurrent coroutines
    of a loop wait for one such call. Coroutines that give up waiting for a token
    (cancelled, or timed out by ``asyncio.wait_for``) leave no work behind: once none awaits
    that call, its worker thread stops waiting within a tenth of a second, so
    ``asyncio.run()`` is not held at exit (the token request itself goes on in the manager,
    for later callers); the same holds for the wait for a 401's replacement. The async flow
    needs an asyncio event loop when it has to wait for a token (trio is not supported
    there).

    Args:
        manager: The token manager.
        replay_401: Set False to return 401 answers untouched.
        origins: Base URLs whose origins get the token (default: ``manager.api_base_url``).
        log_failures: Set False when the client logs failed answers itself (the clients of
            :func:`api_client` do, once per call after their retries).
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        replay_401: bool = True,
        origins: Iterable[str] | None = None,
        log_failures: bool = True,
    ) -> None:
        self._manager = manager
        self._log_failures = log_failures
        self._port = adapter_port(manager)
        self._replay_401 = replay_401
        urls = [manager.api_base_url] if origins is None else list(origins)
        self._origins = frozenset(_origin(httpx.URL(url)) for url in urls)
        self._tokens = OffLoopTokens(manager, self._port)

    # -- sync --------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = self._port.begin_use()
        try:
            response = yield _authorize(request, use)
            self._answered(use, response)
        finally:
            use.end()  # on the final response, or when httpx closes the flow on an error
        if not self._rejected_here(request, response):
            self._log(response)
            return
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            self._port.replace_rejected(use.token)
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            self._log(response)
            return
        if not _replayable(request, response):
            self._log(response)
            return
        replay = self._port.begin_use()
        self._port.note_replay()  # once it can go out (a use, a slot)
        try:
            replayed = yield _authorize(request, replay)
            self._answered(replay, replayed)
        finally:
            replay.end()
        self._log(replayed)

    # -- async -------------------------------------------------------------------------

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = await self._tokens.begin_use()
        try:
            response = yield _authorize(request, use)
            self._answered(use, response)
        finally:
            use.end()
        if not self._rejected_here(request, response):
            self._log(response)
            return
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            await self._tokens.replace_rejected(use.token)
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            self._log(response)
            return
        if not _replayable(request, response):
            self._log(response)
            return
        replay = await self._tokens.begin_use()
        self._port.note_replay()
        try:
            replayed = yield _authorize(request, replay)
            self._answered(replay, replayed)
        finally:
            replay.end()
        self._log(replayed)

    # -- shared ------------------------------------------------------------------------

    def _answered(self, use: InFlight, response: httpx.Response) -> None:
        """A 429 makes every caller of the token wait out its Retry-After."""
        self._port.answered(use.token, response.status_code, response.headers.get("Retry-After"))

    def _rejected_here(self, request: httpx.Request, response: httpx.Response) -> bool:
        """A 401 from where our token went (not from a host a redirect led to)."""
        if response.status_code != 401 or not self._replay_401:
            return False
        return _origin(response.request.url) == _origin(request.url)

    def _log(self, response: httpx.Response) -> None:
        if self._log_failures:
            _log_if_failed(response)

    def __repr__(self) -> str:
        return f"GenesysHTTPXAuth({self._manager!r})"


def _log_if_failed(response: httpx.Response) -> None:
    log_failed_call(
        log,
        response.request.method,
        str(response.request.url),
        response.status_code,
        response.headers.get(CORRELATION_HEADER),
    )


def _replayable(request: httpx.Request, response: httpx.Response) -> bool:
    if response.request.method != request.method:
        return False  # a 303 turned it into a GET: the original was processed
    if not isinstance(request.stream, httpx.ByteStream):
        log.info("401 not replayed: the request body cannot be sent again")
        return False
    return True


def _authorize(request: httpx.Request, use: InFlight) -> httpx.Request:
    request.headers["Authorization"] = _BEARER + use.token
    return request


# -- API clients -------------------------------------------------------------------------------


def _api_host_transport(
    manager: TokenManager,
    transport_type: type[httpx.HTTPTransport | httpx.AsyncHTTPTransport],
    verify: Any,
    loopback: bool,
) -> httpx.HTTPTransport | httpx.AsyncHTTPTransport | None:
    """The transport for the API host when the manager's ``proxies`` or ``cert`` settings
    apply to it (api_session honours them too; a loopback host gets no proxy), trusting
    ``verify`` (the caller's ``verify=``, else the manager's); None: the client's own."""
    settings = manager.settings
    proxy = None
    if settings.proxies is not None and not loopback:
        proxy = settings.proxies.for_url(manager.api_base_url)
    if proxy is None and settings.cert is None:
        return None
    # A context of the caller's is taken as given (its own certificate, if any).
    context = verify if isinstance(verify, ssl.SSLContext) else _trust(verify, settings.cert)
    return transport_type(verify=context, proxy=proxy)


def _trust(verify: bool | str, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    """The TLS context of the manager's ``verify`` (a CA bundle file or directory, or a
    bool) offering ``cert``, as for its token requests."""
    if not isinstance(verify, str):
        return httpx.create_ssl_context(verify=verify, cert=cert)
    path = Path(verify)
    context = ssl.create_default_context(
        cafile=None if path.is_dir() else verify, capath=verify if path.is_dir() else None
    )
    if cert is not None:
        certfile, key = cert if isinstance(cert, tuple) else (cert, None)
        context.load_cert_chain(certfile, key)
    return context


def _api_auth(
    manager: TokenManager, replay_401: bool, allowed_origins: Iterable[str]
) -> GenesysHTTPXAuth:
    """The auth of an API client: the API origin and ``allowed_origins``; no logging of
    its own (the client logs a failed call once, after its retries)."""
    return GenesysHTTPXAuth(
        manager,
        replay_401=replay_401,
        origins=[manager.api_base_url, *allowed_origins],
        log_failures=False,
    )


def _client_options(
    manager: TokenManager,
    timeout: float | tuple[float, float] | httpx.Timeout | None,
    retry: ApiRetry,
    auth: GenesysHTTPXAuth,
    kwargs: dict[str, Any],
    transport_type: type[httpx.HTTPTransport | httpx.AsyncHTTPTransport],
) -> dict[str, Any]:
    if isinstance(timeout, tuple):
        connect, read = timeout
        timeout = httpx.Timeout(read, connect=connect)
    mounts = dict(kwargs.pop("mounts", None) or {})
    settings = manager.settings
    theirs = "verify" in kwargs
    if settings.verify is not True and not theirs:
        # The manager's CA bundle is trusted for API calls too (as by api_session); a
        # verify= of the caller wins.
        kwargs["verify"] = _trust(settings.verify, None)
    verify = kwargs["verify"] if theirs else settings.verify
    base = httpx.URL(manager.api_base_url)
    host = f"[{base.host}]" if ":" in base.host else base.host
    loopback = is_loopback_url(manager.api_base_url)
    transport = None
    # A loopback host (a local sidecar) gets the certificate's transport only at an explicit
    # port (a key without one matches every port of the host) and only when the caller routes
    # nothing of its own (its transport= or mounts= win there, as before).
    routed = "transport" in kwargs or bool(mounts) or base.port is None
    if not (loopback and routed):
        transport = _api_host_transport(manager, transport_type, verify, loopback)
    if loopback:
        # A loopback API host (a local gateway, the emulator) is never reached through a
        # proxy, as with api_session: None routes it to the client's own transport.
        mounts.setdefault(f"all://{host}", None)
    if transport is not None:
        # The API origin itself (no other port or scheme of its host): a key more specific
        # than any the environment's HTTPS_PROXY / NO_PROXY give (the manager's proxy wins,
        # as in api_session).
        port = f":{base.port}" if base.port is not None else ""
        mounts.setdefault(f"{base.scheme}://{host}{port}", transport)
    return {
        "base_url": manager.api_base_url,
        "auth": auth,
        "timeout": timeout,
        "retry": retry,
        "mounts": mounts,
        **kwargs,
    }


def api_client(
    manager: TokenManager,
    *,
    timeout: float | tuple[float, float] | httpx.Timeout | None = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    replay_401: bool = True,
    retry_methods: Collection[str] | None = None,
    allowed_origins: Iterable[str] = (),
    **kwargs: Any,
) -> ApiClient:
    """An ``httpx.Client`` ready for the Genesys Cloud Platform API, like ``api_session``.

    ::

        with api_client(manager) as client:
            org = client.get("/api/v2/organizations/me").json()

    * Authentication: :class:`GenesysHTTPXAuth` (bearer token, counted in flight, one 401
      replay) for ``manager.api_base_url``'s origin and ``allowed_origins`` only.
    * Relative paths are resolved against ``manager.api_base_url`` (its path kept).
    * Every request gets ``timeout`` unless it passes its own.
    * Retries (:class:`~genesys_token.integrations.httpx_clients.ApiRetry`): a 429 for every
      method, 502/503/504 for idempotent ones only (or ``retry_methods``); ``Retry-After``
      honoured up to ``max_retry_after`` seconds, else jittered exponential backoff. After
      ``max_retries`` the last response is returned (nothing raises). Each retry is a whole
      new send through the auth flow (a new token use).
    * A failed call's final answer is logged once at WARNING with its correlation id.
    * A loopback API host is reached without a proxy.
    * The manager's ``proxies`` and ``cert`` apply to the API host, and its ``verify`` when
      not ``True`` (a ``verify=`` given here wins).

    Args:
        manager: The token manager.
        timeout: Default ``(connect, read)`` seconds, one number, or an ``httpx.Timeout``.
        max_retries: Retries after the first attempt (0: none).
        backoff_factor: Scale of the jittered backoff, in seconds.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.
        replay_401: Passed to :class:`GenesysHTTPXAuth`.
        retry_methods: Methods retried on 502/503/504 instead of the idempotent ones.
        allowed_origins: Further origins that get the token.
        **kwargs: Further ``httpx.Client`` arguments (``headers``, ``limits``, ``verify``,
            ``transport``, ``mounts``...); not ``base_url`` or ``auth``.

    Returns:
        An :class:`ApiClient`; close it, or use it in ``with``.

    Raises:
        ValueError: ``max_retries`` or ``max_retry_after`` is negative.
    """
    retry = ApiRetry(max_retries, backoff_factor, max_retry_after, retry_methods)
    auth = _api_auth(manager, replay_401, allowed_origins)
    options = _client_options(manager, timeout, retry, auth, kwargs, httpx.HTTPTransport)
    return ApiClient(**options)


def async_api_client(
    manager: TokenManager,
    *,
    timeout: float | tuple[float, float] | httpx.Timeout | None = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    replay_401: bool = True,
    retry_methods: Collection[str] | None = None,
    allowed_origins: Iterable[str] = (),
    **kwargs: Any,
) -> AsyncApiClient:
    """:func:`api_client` for ``httpx.AsyncClient``: the same arguments and behaviour; waits
    between retries do not block the event loop.

    ::

        async with async_api_client(manager) as client:
            org = (await client.get("/api/v2/organizations/me")).json()

    Returns:
        An :class:`AsyncApiClient`; close it (``aclose``), or use it in ``async with``.

    Raises:
        ValueError: ``max_retries`` or ``max_retry_after`` is negative.
    """
    retry = ApiRetry(max_retries, backoff_factor, max_retry_after, retry_methods)
    auth = _api_auth(manager, replay_401, allowed_origins)
    options = _client_options(manager, timeout, retry, auth, kwargs, httpx.AsyncHTTPTransport)
    return AsyncApiClient(**options)
