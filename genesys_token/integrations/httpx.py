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
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Hashable, Iterable
from typing import TYPE_CHECKING, TypeVar, cast

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without httpx
    raise ImportError(
        "genesys_token.integrations.httpx needs httpx: pip install 'genesys-token[httpx]'"
    ) from exc

from ..errors import GenesysTokenError, TokenTimeoutError
from ..http.failures import CORRELATION_HEADER, log_failed_call
from ..manager import adapter_port

if TYPE_CHECKING:
    from ..core.uses import InFlight
    from ..manager import TokenManager

__all__ = ["GenesysHTTPXAuth"]

log = logging.getLogger("genesys_token.integrations.httpx")

_BEARER = "Bearer "
#: How long a worker thread waits on the manager at a time before it checks whether any
#: coroutine still awaits it: once the last one gave up, the thread is free within this long.
_SLICE = 0.1
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
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        replay_401: bool = True,
        origins: Iterable[str] | None = None,
    ) -> None:
        self._manager = manager
        self._port = adapter_port(manager)
        self._replay_401 = replay_401
        urls = [manager.api_base_url] if origins is None else list(origins)
        self._origins = frozenset(_origin(httpx.URL(url)) for url in urls)
        self._shared = _SharedCalls()

    # -- sync --------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = self._port.begin_use()
        try:
            response = yield _authorize(request, use)
        finally:
            use.end()  # on the final response, or when httpx closes the flow on an error
        if not self._rejected_here(request, response):
            _log_if_failed(response)
            return
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            self._port.replace_rejected(use.token)
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            _log_if_failed(response)
            return
        if not _replayable(request, response):
            _log_if_failed(response)
            return
        replay = self._port.begin_use()
        try:
            replayed = yield _authorize(request, replay)
        finally:
            replay.end()
        _log_if_failed(replayed)

    # -- async -------------------------------------------------------------------------

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if _origin(request.url) not in self._origins:
            yield request
            return
        use = self._port.try_begin_use() or await self._begin_use_async()
        try:
            response = yield _authorize(request, use)
        finally:
            use.end()
        if not self._rejected_here(request, response):
            _log_if_failed(response)
            return
        rejected = use.token
        try:
            await self._shared.run(
                ("replace", rejected),
                lambda stop: _in_slices(
                    lambda t: self._port.replace_rejected(rejected, timeout=t), stop
                ),
            )
        except GenesysTokenError as exc:
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            _log_if_failed(response)
            return
        if not _replayable(request, response):
            _log_if_failed(response)
            return
        replay = self._port.try_begin_use() or await self._begin_use_async()
        try:
            replayed = yield _authorize(request, replay)
        finally:
            replay.end()
        _log_if_failed(replayed)

    async def _begin_use_async(self) -> InFlight:
        """The slow path: a token is fetched off the loop, once for all its coroutines."""
        await self._shared.run("token", lambda stop: _in_slices(self._manager.get_token, stop))
        use = self._port.try_begin_use()
        if use is not None:
            return use
        # Usable a moment ago but not now (a refresh or a rotation swapped it this instant,
        # or it is in its last moments): the blocking call, off the loop, for this
        # coroutine alone.
        return await _owned_in_thread(lambda stop: _begin_in_slices(self._port.begin_use, stop))

    # -- shared ------------------------------------------------------------------------

    def _rejected_here(self, request: httpx.Request, response: httpx.Response) -> bool:
        """A 401 from where our token went (not from a host a redirect led to)."""
        if response.status_code != 401 or not self._replay_401:
            return False
        return _origin(response.request.url) == _origin(request.url)

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


class _Abandoned(Exception):
    """No coroutine awaits a worker-thread call any more: it stopped waiting."""


def _in_slices(wait: Callable[[float], _T], stop: threading.Event) -> _T:
    """``wait(timeout=_SLICE)`` until it returns or raises anything but its own timeout, or
    until ``stop`` is set (then :class:`_Abandoned`).

    Each slice joins the manager's one acquisition (the manager's own thread runs it); only
    this thread's wait is cut short.
    """
    while not stop.is_set():
        started = time.monotonic()
        try:
            return wait(_SLICE)
        except TokenTimeoutError:
            if time.monotonic() - started < _SLICE / 2:
                raise  # not this slice running out: the error of a failed acquisition
    raise _Abandoned


def _begin_in_slices(begin: Callable[[float], InFlight], stop: threading.Event) -> InFlight:
    """:func:`_in_slices` for ``begin_use``: a use begun after its caller left is ended."""
    use = _in_slices(begin, stop)
    if stop.is_set():
        use.end()
        raise _Abandoned
    return use


async def _owned_in_thread(begin: Callable[[threading.Event], InFlight]) -> InFlight:
    """Run ``begin(stop)`` in a worker thread for this coroutine alone; when it is cancelled,
    ``stop`` is set, and a use returned all the same is ended."""
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, begin, stop)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        future.add_done_callback(_end_abandoned_use)
        raise


def _end_abandoned_use(future: asyncio.Future[InFlight]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().end()


class _Shared:
    """One worker-thread call, the coroutines awaiting it, and its ``stop``."""

    __slots__ = ("future", "stop", "waiters")

    def __init__(self, future: asyncio.Future[object], stop: threading.Event) -> None:
        self.future = future
        self.stop = stop
        self.waiters = 0


class _SharedCalls:
    """One worker-thread call per key and event loop, awaited by all its coroutines.

    Only the loop's own thread touches its table; the lock guards the table of tables, which
    loops in other threads share. A coroutine that is cancelled leaves the call running for
    the others (``shield``); when the last one leaves, the call is told to stop (its
    ``stop`` event) and forgotten, so a later coroutine starts a new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, _Shared]
        ] = weakref.WeakKeyDictionary()

    async def run(self, key: Hashable, call: Callable[[threading.Event], _T]) -> _T:
        """Await ``call(stop)`` run in a worker thread, joining one already running for
        ``key``; ``stop`` is set once no coroutine awaits it any more."""
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._loops.get(loop)
            if calls is None:
                calls = self._loops[loop] = {}
        shared = calls.get(key)
        if shared is None:
            stop = threading.Event()
            started = calls[key] = _Shared(loop.run_in_executor(None, call, stop), stop)
            started.future.add_done_callback(_retrieve)
            started.future.add_done_callback(lambda _done: _forget(calls, key, started))
            shared = started
        shared.waiters += 1
        try:
            return cast(_T, await asyncio.shield(shared.future))
        finally:
            shared.waiters -= 1
            if shared.waiters == 0 and not shared.future.done():
                shared.stop.set()  # every waiter gave up: the worker thread stops waiting
                _forget(calls, key, shared)


def _forget(calls: dict[Hashable, _Shared], key: Hashable, shared: _Shared) -> None:
    if calls.get(key) is shared:
        del calls[key]


def _retrieve(done: asyncio.Future[object]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: no "never retrieved" warning if every waiter left
