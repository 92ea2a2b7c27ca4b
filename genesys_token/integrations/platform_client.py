"""Bridge to the official Genesys Cloud Python SDK (``PureCloudPlatformClientV2``).

The official ``ApiClient`` fetches a client-credentials token once and never refreshes it.
:func:`bind_api_client` gives it this package's manager instead, so every SDK call carries
a valid token: refreshed ahead of expiry, drained during a rotation, replayed once on a 401::

    import PureCloudPlatformClientV2 as gc
    from genesys_token import TokenManager
    from genesys_token.integrations.platform_client import bind_api_client

    manager = TokenManager.from_env()
    api_client = bind_api_client(manager)          # host = manager.api_base_url
    me = gc.TokensApi(api_client).get_tokens_me()

How: the SDK sends every call through ``api_client.http_client.request(options)``.
:class:`GenesysHttpClient` wraps that client and adds ``Authorization`` to a *copy* of each
call's headers. Nothing shared is mutated per call (``api_client.access_token`` stays empty),
so one bound ``ApiClient`` is safe to share between threads, and the SDK's own debug logging
of request headers never sees the token.

Importing this module imports ``PureCloudPlatformClientV2``, which (in version 269) turns off
the ``urllib3`` logger process-wide; the rest of ``genesys_token`` never imports it.
"""

from __future__ import annotations

import logging
from typing import Any

import urllib3
from PureCloudPlatformClientV2.abstract_http_client import (  # type: ignore[import-untyped]
    AbstractHttpClient,
)
from PureCloudPlatformClientV2.api_client import ApiClient  # type: ignore[import-untyped]
from PureCloudPlatformClientV2.default_http_client import (  # type: ignore[import-untyped]
    DefaultHttpClient,
)
from PureCloudPlatformClientV2.http_request_options import (  # type: ignore[import-untyped]
    HttpRequestOptions,
)
from PureCloudPlatformClientV2.rest import ApiException  # type: ignore[import-untyped]

from ..errors import GenesysTokenError
from ..manager import TokenManager, adapter_port

__all__ = ["DEFAULT_API_TIMEOUT", "GenesysHttpClient", "bind_api_client"]

log = logging.getLogger(__name__)

#: (connect, read) seconds for API calls. The SDK's own client sets no timeout at all, so a
#: stalled Genesys endpoint would hang a worker thread forever.
DEFAULT_API_TIMEOUT = (3.05, 30.0)
#: With ``api_rate_limit``, a 429 is resent this many times at most (urllib3's default, in
#: the SDK, resends it inside one call, which would send more than the slots taken).
PACED_429_RETRIES = 3


class GenesysHttpClient(AbstractHttpClient):  # type: ignore[misc]
    """An SDK HTTP client that puts the manager's token on every request.

    Each request is counted in flight (so :meth:`TokenManager.rotate` waits for it); a 401
    answer replaces the rejected token once, shared with every thread that saw it, and the
    request is sent again once. Pre- and post-request hooks set on this client run as on
    the SDK's default client; the pre-hook sees the request without the token.

    Args:
        manager: The token manager.
        inner: The SDK client that does the HTTP (default: a ``DefaultHttpClient`` with
            ``timeout``).
        timeout: ``(connect, read)`` seconds for the default inner client.
        replay_401: Set False to raise 401 answers untouched.
    """

    def __init__(
        self,
        manager: TokenManager,
        inner: Any = None,
        *,
        timeout: tuple[float, float] = DEFAULT_API_TIMEOUT,
        replay_401: bool = True,
    ) -> None:
        super().__init__()
        self.manager = manager
        self._port = adapter_port(manager)
        self._paced = manager.settings.api_rate_limit is not None
        if inner is None:
            inner = default_http_client(timeout, paced=self._paced)
        self.inner = inner
        self._replay_401 = replay_401

    def request(self, http_request_options: Any) -> Any:
        """Send one SDK request with a valid token (the SDK's ``AbstractHttpClient`` API).

        Raises:
            ApiException: The API answered with an error (a 401 after one replay).
            GenesysTokenError: No valid token could be acquired.
        """
        options = http_request_options
        if self.pre_hook is not None:
            options = self.pre_hook(options)
        retries = 0
        while True:
            use = self._port.begin_use()
            token = use.token
            try:
                response = self.inner.request(_with_token(options, token))
            except ApiException as exc:
                self._port.answered(token, exc.status, _retry_after(exc))
                if self._retries_429(exc, retries):
                    retries += 1
                    continue  # the next use waits out the Retry-After in the pacer
                if exc.status != 401 or not self._replay_401:
                    raise
                rejected = exc
            else:
                return self._after(response)
            finally:
                use.end()
            return self._after(self._replay(options, token, rejected))

    def _retries_429(self, exc: Any, retries: int) -> bool:
        """Paced, urllib3 no longer resends a 429 inside the call: it is resent here, each
        attempt with its own slot, at most :data:`PACED_429_RETRIES` times."""
        return self._paced and exc.status == 429 and retries < PACED_429_RETRIES

    def _replay(self, options: Any, token: str, rejected: BaseException) -> Any:
        try:
            self._port.replace_rejected(token)
        except GenesysTokenError as exc:
            log.warning("401 not replayed: could not get a new token (%s)", type(exc).__name__)
            raise rejected from None
        use = self._port.begin_use()
        try:
            self._port.note_replay()
            return self.inner.request(_with_token(options, use.token))
        except ApiException as exc:
            self._port.answered(use.token, exc.status, _retry_after(exc))
            raise
        finally:
            use.end()

    def _after(self, response: Any) -> Any:
        return self.post_hook(response) if self.post_hook is not None else response

    def __repr__(self) -> str:
        return f"GenesysHttpClient({self.manager!r})"


def default_http_client(
    timeout: tuple[float, float] = DEFAULT_API_TIMEOUT, *, paced: bool = False
) -> Any:
    """The SDK's ``DefaultHttpClient``, with a connect and read timeout on its connections.

    Args:
        timeout: ``(connect, read)`` seconds.
        paced: For a manager with ``api_rate_limit``: urllib3 resends nothing that may have
            reached the API inside one call (a 429 or 503, a failed read, a redirect: every
            attempt must take its own slot; a redirect comes back as it is), only what never
            left (a refused connection); :class:`GenesysHttpClient` retries a 429 itself.
    """
    client = DefaultHttpClient()
    # The SDK passes no timeout per request; a pool default applies to every connection.
    connect, read = timeout
    pool_manager = client.rest_client.pool_manager
    pool_manager.connection_pool_kw["timeout"] = urllib3.Timeout(connect=connect, read=read)
    if paced:
        retries = pool_manager.connection_pool_kw.get("retries")
        if isinstance(retries, urllib3.util.Retry):
            pool_manager.connection_pool_kw["retries"] = retries.new(
                read=0, redirect=False, respect_retry_after_header=False, status_forcelist=None
            )
    return client


def bind_api_client(
    manager: TokenManager,
    api_client: Any = None,
    *,
    timeout: tuple[float, float] = DEFAULT_API_TIMEOUT,
) -> Any:
    """Make an official SDK ``ApiClient`` get its token from ``manager`` on every call.

    Binding again (with the same or another manager) replaces the previous binding. The
    client's own ``access_token`` is cleared: the manager's token is the one sent.

    Args:
        manager: The token manager.
        api_client: The ``ApiClient`` to bind; default: a new one whose host is
            ``manager.api_base_url``. A given client keeps its host: it must be the API host
            of the manager's region.
        timeout: ``(connect, read)`` seconds for API calls when the client uses the SDK's
            default HTTP client (which has none of its own). A custom client is kept as is.

    Returns:
        The bound ``ApiClient``.
    """
    if api_client is None:
        api_client = ApiClient(host=manager.api_base_url)
    inner = api_client.http_client
    if isinstance(inner, GenesysHttpClient):
        inner = inner.inner
    if inner is None or type(inner) is DefaultHttpClient:
        hooks = (getattr(inner, "pre_hook", None), getattr(inner, "post_hook", None))
        inner = default_http_client(timeout, paced=manager.settings.api_rate_limit is not None)
        inner.pre_hook, inner.post_hook = hooks
    api_client.set_http_client(GenesysHttpClient(manager, inner))
    api_client.access_token = ""
    return api_client


def _retry_after(exc: Any) -> str | None:
    """The ``Retry-After`` of the SDK's ``ApiException``, if its headers say."""
    headers = getattr(exc, "headers", None)
    try:
        value = headers.get("Retry-After") if headers is not None else None
    except Exception:  # noqa: BLE001 - an SDK with other headers: no Retry-After then
        return None
    return value if isinstance(value, str) else None


def _with_token(options: Any, token: str) -> Any:
    """A copy of ``options`` carrying the token; the caller's headers stay untouched."""
    headers = {
        name: value
        for name, value in (options.headers or {}).items()
        if name.lower() != "authorization"
    }
    headers["Authorization"] = f"Bearer {token}"
    return HttpRequestOptions(
        url=options.url,
        method=options.method,
        headers=headers,
        query_params=options.query_params,
        post_params=options.post_params,
        body=options.body,
        timeout=options.timeout,
    )
