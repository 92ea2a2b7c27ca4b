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

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

try:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without aiohttp
    raise ImportError(
        "genesys_token.integrations.aiohttp needs aiohttp >= 3.12: "
        "pip install 'genesys-token[aiohttp]'"
    ) from exc

from ..errors import GenesysTokenError
from ..http.failures import CORRELATION_HEADER, log_failed_call
from ..http.origins import origin_of
from ..manager import adapter_port
from ._offloop import OffLoopTokens

if TYPE_CHECKING:
    from aiohttp import ClientMiddlewareType

    from ..core.port import AdapterPort
    from ..core.uses import InFlight
    from ..manager import TokenManager

__all__ = ["genesys_middleware"]

log = logging.getLogger("genesys_token.integrations.aiohttp")

_BEARER = "Bearer "


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
    tokens = OffLoopTokens(manager, port)

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if origin_of(str(request.url)) not in allowed:
            return await handler(request)
        use = await tokens.begin_use()
        try:
            response = await _send(request, handler, use)
            port.answered(use.token, response.status, response.headers.get("Retry-After"))
        finally:
            use.end()  # on the response, an exception or a cancellation
        if response.status != 401 or not replay_401:
            _log_if_failed(request, response)
            return response
        return await _replace_and_replay(port, tokens, request, handler, response, use.token)

    return middleware


async def _replace_and_replay(
    port: AdapterPort,
    tokens: OffLoopTokens,
    request: ClientRequest,
    handler: ClientHandlerType,
    response: ClientResponse,
    rejected: str,
) -> ClientResponse:
    """After a 401: replace ``rejected`` (off the loop) and send ``request`` once more."""
    try:
        # Replaced even when the call cannot be replayed, so the next call works.
        await tokens.replace_rejected(rejected)
    except GenesysTokenError as exc:
        log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
        _log_if_failed(request, response)
        return response
    if not _replayable(request):
        log.info("401 not replayed: the request body cannot be sent again")
        _log_if_failed(request, response)
        return response
    response.release()
    replay = await tokens.begin_use()
    port.note_replay()  # once it can go out (a use, a slot)
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
