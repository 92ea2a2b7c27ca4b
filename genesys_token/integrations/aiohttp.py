"""genesys_middleware: the manager's token on ``aiohttp`` client calls (aiohttp >= 3.12).

::

    import aiohttp
    from genesys_token.integrations.aiohttp import genesys_middleware

    async with aiohttp.ClientSession(
        base_url=manager.api_base_url, middlewares=(genesys_middleware(manager),)
    ) as session:
        async with session.get("/api/v2/organizations/me") as response:
            org = await response.json()

One middleware serves any number of sessions and event loops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TYPE_CHECKING, TypeVar, cast

try:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without aiohttp
    raise ImportError(
        "genesys_token.integrations.aiohttp needs aiohttp >= 3.12: "
        "pip install 'genesys-token[aiohttp]'"
    ) from exc

from ..errors import GenesysTokenError, TokenTimeoutError
from ..http.failures import CORRELATION_HEADER, log_failed_call
from ..http.origins import origin_of
from ..manager import adapter_port
from ._async_pacing import paced_use

if TYPE_CHECKING:
    from aiohttp import ClientMiddlewareType

    from ..core.port import AdapterPort
    from ..core.uses import InFlight
    from ..manager import TokenManager

__all__ = ["genesys_middleware"]

log = logging.getLogger("genesys_token.integrations.aiohttp")

_BEARER = "Bearer "
#: How long a worker thread waits on the manager at a time before it checks whether its
#: coroutine still awaits it: a cancelled caller frees its thread within this long.
_SLICE = 0.1
_T = TypeVar("_T")


def genesys_middleware(
    manager: TokenManager,
    *,
    replay_401: bool = True,
    origins: Iterable[str] | None = None,
) -> ClientMiddlewareType:
    """An aiohttp client middleware that puts the manager's token on calls to Genesys Cloud.

    Pass it as ``aiohttp.ClientSession(middlewares=(genesys_middleware(manager),))``. The
    promises of :class:`~genesys_token.GenesysAuth`, for aiohttp:

    * Each call to the API origin carries ``Authorization: Bearer <token>`` and is counted
      in flight until its response arrives or it raises (or is cancelled): a rotation waits
      for it and the count never leaks. aiohttp runs the middleware for every redirect leg,
      so each leg is counted and authorized on its own.
    * The token only goes to ``manager.api_base_url``'s origin (or the ``origins`` given):
      a request to any other host, a redirect target included, goes out without it.
    * A 401 from the API gets the token replaced (once, shared with every other caller that
      saw the same token rejected) and the call replayed once, the first response released,
      if its body can be sent again (bytes, str, JSON, form data; not a consumed stream). If
      no new token can be had, the 401 is returned as is.

    The event loop never waits on the manager: with a usable token the call is counted and
    authorized inline (no I/O); when a token must be fetched or replaced, the wait runs in a
    worker thread of the loop's default executor, one for all its coroutines. A caller
    cancelled while it waits leaves no use counted; once the last one gave up, the thread is
    free within a tenth of a second (the token request goes on in the manager).

    Args:
        manager: The token manager.
        replay_401: Set False to return 401 answers untouched.
        origins: Base URLs whose origins get the token (default: ``manager.api_base_url``).

    Returns:
        The middleware, an ``async (request, handler) -> response`` callable.
    """
    port = adapter_port(manager)
    urls = [manager.api_base_url] if origins is None else list(origins)
    allowed = frozenset(origin_of(url) for url in urls)
    shared = _SharedWaits()

    async def begin_use_off_loop() -> InFlight:
        """The slow path: one worker-thread wait per loop for its coroutines, then the use
        is counted inline; if the token was swapped that instant, counted in a thread."""
        paced = manager.settings.api_rate_limit is not None
        while True:
            await shared.run("token", lambda stop: _in_slices(manager.get_token, stop))
            use = port.try_begin_use() or await paced_use(port)
            if use is not None:
                return use
            if not paced:
                break
            # Paced: never a thread per waiting coroutine (its sliced waits would also
            # bound the slot wait); the token became unusable again: get one again.
        return await _off_loop(lambda stop: _begin_in_slices(port, stop), _end_use)

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if origin_of(str(request.url)) not in allowed:
            return await handler(request)
        use = port.try_begin_use() or await paced_use(port) or await begin_use_off_loop()
        try:
            response = await _send(request, handler, use)
            port.answered(use.token, response.status, response.headers.get("Retry-After"))
        finally:
            use.end()  # on the response, an exception or a cancellation
        if response.status != 401 or not replay_401:
            _log_if_failed(request, response)
            return response
        return await _replace_and_replay(
            port, shared, begin_use_off_loop, request, handler, response, use.token
        )

    return middleware


async def _replace_and_replay(
    port: AdapterPort,
    shared: _SharedWaits,
    begin_use_off_loop: Callable[[], Awaitable[InFlight]],
    request: ClientRequest,
    handler: ClientHandlerType,
    response: ClientResponse,
    rejected: str,
) -> ClientResponse:
    """After a 401: replace ``rejected`` (off the loop) and send ``request`` once more."""
    try:
        # Replaced even when the call cannot be replayed, so the next call works.
        await shared.run(
            ("replace", rejected),
            lambda stop: _in_slices(lambda t: port.replace_rejected(rejected, timeout=t), stop),
        )
    except GenesysTokenError as exc:
        log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
        _log_if_failed(request, response)
        return response
    if not _replayable(request):
        log.info("401 not replayed: the request body cannot be sent again")
        _log_if_failed(request, response)
        return response
    response.release()
    port.note_replay()
    replay = port.try_begin_use() or await paced_use(port) or await begin_use_off_loop()
    try:
        replayed = await _send(request, handler, replay)
        port.answered(replay.token, replayed.status, replayed.headers.get("Retry-After"))
    finally:
        replay.end()
    _log_if_failed(request, replayed)
    return replayed


async def _send(
    request: ClientRequest, handler: ClientHandlerType, use: InFlight
) -> ClientResponse:
    request.headers[hdrs.AUTHORIZATION] = _BEARER + use.token
    return await handler(request)


def _replayable(request: ClientRequest) -> bool:
    body = request.body
    return isinstance(body, bytes) or not body.consumed


def _log_if_failed(request: ClientRequest, response: ClientResponse) -> None:
    log_failed_call(
        log,
        request.method,
        str(request.url),
        response.status,
        response.headers.get(CORRELATION_HEADER),
    )


class _Abandoned(Exception):
    """The coroutine that awaited a worker-thread call stopped waiting."""


def _in_slices(wait: Callable[[float], _T], stop: threading.Event) -> _T:
    """``wait(_SLICE)`` until it returns or raises anything but its own timeout, or until
    ``stop`` is set (then :class:`_Abandoned`). Each slice joins the manager's one
    acquisition; only this thread's wait is cut short."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            return wait(_SLICE)
        except TokenTimeoutError:
            if time.monotonic() - started < _SLICE / 2:
                raise  # not this slice running out: the error of a failed acquisition
    raise _Abandoned


def _begin_in_slices(port: AdapterPort, stop: threading.Event) -> InFlight:
    """:func:`_in_slices` for ``begin_use``: a use begun after its caller left is ended."""
    use = _in_slices(port.begin_use, stop)
    if stop.is_set():
        use.end()
        raise _Abandoned
    return use


async def _off_loop(
    call: Callable[[threading.Event], _T],
    undo: Callable[[_T], None] | None = None,
) -> _T:
    """Run ``call(stop)`` in the loop's default executor. When the caller is cancelled,
    ``stop`` is set and a result that arrives all the same is handed to ``undo``."""
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, call, stop)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        future.add_done_callback(lambda done: _settle(done, undo))
        raise


def _settle(done: asyncio.Future[_T], undo: Callable[[_T], None] | None) -> None:
    if done.cancelled():
        return
    if done.exception() is None and undo is not None:  # retrieves the exception, if any
        undo(done.result())


def _end_use(use: InFlight) -> None:
    use.end()


class _Shared:
    """One worker-thread wait, the number of coroutines awaiting it, and its ``stop``."""

    __slots__ = ("future", "stop", "waiters")

    def __init__(self, future: asyncio.Future[object], stop: threading.Event) -> None:
        self.future = future
        self.stop = stop
        self.waiters = 0


class _SharedWaits:
    """One worker-thread wait per key and event loop, awaited by all its coroutines (so a
    cold start of many coroutines holds one executor thread, not one each).

    Only a loop's own thread touches its table; the lock guards the table of tables. A
    cancelled coroutine leaves the wait to the others (``shield``); when the last one
    leaves, the wait is told to stop and forgotten, so a later coroutine starts a new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, _Shared]
        ] = weakref.WeakKeyDictionary()

    async def run(self, key: Hashable, call: Callable[[threading.Event], _T]) -> _T:
        """Await ``call(stop)`` in a worker thread, joining one already running for ``key``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._loops.setdefault(loop, {})
        shared = calls.get(key)
        if shared is None:
            stop = threading.Event()
            started = calls[key] = _Shared(loop.run_in_executor(None, call, stop), stop)
            started.future.add_done_callback(lambda done: _settle(done, None))
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
