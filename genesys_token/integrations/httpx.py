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
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Hashable, Iterable
from typing import TYPE_CHECKING, TypeVar, cast

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        "genesys_token.integrations.httpx needs httpx: pip install 'genesys-token[httpx]'"
    ) from exc

from ..errors import GenesysTokenError

if TYPE_CHECKING:
    from .._gate import InFlight
    from ..manager import TokenManager

__all__ = ["GenesysHTTPXAuth"]

log = logging.getLogger("genesys_token.integrations.httpx")

_BEARER = "Bearer "
_T = TypeVar("_T")
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
    of a loop wait for one such call. The async flow needs an asyncio event loop when it
    has to wait for a token (trio is not supported there).

    Args:
        manager: The token manager.
        replay_401: Set False to return 401 answers untouched.
        origins: Base URLs whose origins get the token (default: ``manager.api_base_url``).
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        replay_401: bool = True,
        origins: Iterable[str] | None = None,
    ) -> None:
        self._manager = manager
        self._replay_401 = replay_401
        urls = [manager.api_base_url] if origins is None else list(origins)
        self._origins = frozenset(_origin(httpx.URL(url)) for url in urls)
        self._shared = _SharedCalls()

    # -- sync --------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = self._manager.begin_use()
        try:
            response = yield _authorize(request, use)
        finally:
            use.end()  # on the final response, or when httpx closes the flow on an error
        if not self._rejected_here(request, response):
            return
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            self._manager.replace_rejected(use.token)
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            return
        if not _replayable(request, response):
            return
        replay = self._manager.begin_use()
        try:
            yield _authorize(request, replay)
        finally:
            replay.end()

    # -- async -------------------------------------------------------------------------

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = self._manager.try_begin_use() or await self._begin_use_async()
        try:
            response = yield _authorize(request, use)
        finally:
            use.end()
        if not self._rejected_here(request, response):
            return
        rejected = use.token
        try:
            await self._shared.run(
                ("replace", rejected), lambda: self._manager.replace_rejected(rejected)
            )
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            return
        if not _replayable(request, response):
            return
        replay = self._manager.try_begin_use() or await self._begin_use_async()
        try:
            yield _authorize(request, replay)
        finally:
            replay.end()

    async def _begin_use_async(self) -> InFlight:
        """The slow path: a token is fetched off the loop, once for all its coroutines."""
        await self._shared.run("token", self._manager.get_token)
        use = self._manager.try_begin_use()
        if use is not None:
            return use
        # Usable a moment ago but not now (a refresh or a rotation swapped it this instant,
        # or it is in its last moments): the blocking call, off the loop, for this
        # coroutine alone.
        return await _owned_in_thread(self._manager.begin_use)

    # -- shared ------------------------------------------------------------------------

    def _rejected_here(self, request: httpx.Request, response: httpx.Response) -> bool:
        """A 401 from where our token went (not from a host a redirect led to)."""
        if response.status_code != 401 or not self._replay_401:
            return False
        return _origin(response.request.url) == _origin(request.url)

    def __repr__(self) -> str:
        return f"GenesysHTTPXAuth({self._manager!r})"


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


async def _owned_in_thread(begin: Callable[[], InFlight]) -> InFlight:
    """Run ``begin`` in a worker thread; a use it returns after we were cancelled is ended."""
    future = asyncio.get_running_loop().run_in_executor(None, begin)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_end_abandoned_use)
        raise


def _end_abandoned_use(future: asyncio.Future[InFlight]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().end()


class _SharedCalls:
    """One worker-thread call per key and event loop, awaited by all its coroutines.

    Only the loop's own thread touches its table; the lock guards the table of tables, which
    loops in other threads share. A coroutine that is cancelled leaves the call running for
    the others (``shield``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, asyncio.Future[object]]
        ] = weakref.WeakKeyDictionary()

    async def run(self, key: Hashable, call: Callable[[], _T]) -> _T:
        """Await ``call()`` run in a worker thread, joining one already running for ``key``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._loops.get(loop)
            if calls is None:
                calls = self._loops[loop] = {}
        future = calls.get(key)
        if future is None:
            future = loop.run_in_executor(None, call)
            calls[key] = future
            future.add_done_callback(lambda done: _forget(calls, key, done))
        return cast(_T, await asyncio.shield(future))


def _forget(
    calls: dict[Hashable, asyncio.Future[object]], key: Hashable, done: asyncio.Future[object]
) -> None:
    if calls.get(key) is done:
        del calls[key]
    if not done.cancelled():
        done.exception()  # retrieved: no "never retrieved" warning if every waiter left
