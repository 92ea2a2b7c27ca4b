"""httpx clients for the Genesys Cloud API that retry like ``api_session`` (``[httpx]`` extra).

Built by :func:`genesys_token.integrations.httpx.api_client` and ``async_api_client``. Each
attempt, retries included, is a whole ``httpx`` send: it goes through the client's auth
flow, so whatever that flow does per call (the token, its in-flight count, a pacing slot)
happens again for every retry.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Collection
from typing import Any

import anyio
import httpx

from ..http.answers import parse_retry_after
from ..http.failures import CORRELATION_HEADER, log_failed_call
from ..http.retry_policy import (
    API_BACKOFF_MAX,
    FULL_JITTER,
    IDEMPOTENT_METHODS,
    Backoff,
    api_answer_retried,
)

__all__ = ["ApiClient", "ApiRetry", "AsyncApiClient"]

log = logging.getLogger("genesys_token.integrations.httpx")


class ApiRetry:
    """When an httpx API call is sent again, and after how long (immutable).

    The rules of ``api_session``'s ``GenesysRetry``: a 429 for every method, 502/503/504
    for ``methods`` only; ``Retry-After`` (seconds or an HTTP date) honoured up to
    ``max_retry_after``, else the SDK's :class:`~genesys_token.http.retry_policy.Backoff`
    (full jitter, at most ``API_BACKOFF_MAX``); at most ``max_retries`` retries. A body
    that cannot be sent twice (a generator, a multipart upload) is not retried, nor a call
    whose method a redirect changed (a 303 after a POST: the POST was processed).

    Args:
        max_retries: Retries after the first attempt (0: none).
        backoff_factor: Scale of the backoff, in seconds.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.
        methods: Methods retried on 502/503/504 (default: the idempotent ones).

    Raises:
        ValueError: ``max_retries`` or ``max_retry_after`` is negative.
        ConfigurationError: ``backoff_factor`` is not a finite number >= 0.
    """

    def __init__(
        self,
        max_retries: int,
        backoff_factor: float,
        max_retry_after: float,
        methods: Collection[str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self.backoff = Backoff(backoff_factor, API_BACKOFF_MAX, FULL_JITTER)
        if not math.isfinite(max_retry_after) or max_retry_after < 0:
            raise ValueError("max_retry_after must be a finite number >= 0")
        self.max_retry_after = float(max_retry_after)
        self.methods = (
            IDEMPOTENT_METHODS if methods is None else frozenset(m.upper() for m in methods)
        )

    def wait(self, request: httpx.Request, response: httpx.Response, retries: int) -> float | None:
        """Seconds to wait before sending ``request`` again after ``response``, ``retries``
        retries made so far; ``None``: return ``response`` to the caller."""
        if retries >= self.max_retries:
            return None
        if not api_answer_retried(request.method, response.status_code, self.methods):
            return None
        if response.request.method != request.method:
            return None
        if not isinstance(request.stream, httpx.ByteStream):
            log.info("not retried: the request body cannot be sent again")
            return None
        asked = parse_retry_after(response.headers.get("Retry-After"))
        if asked is None:
            return self.backoff.delay(retries + 1, random.random)
        if asked > self.max_retry_after:
            log.info("Retry-After %.0fs capped at %.0fs", asked, self.max_retry_after)
        return min(asked, self.max_retry_after)


def _log_if_failed(response: httpx.Response) -> None:
    log_failed_call(
        log,
        response.request.method,
        str(response.request.url),
        response.status_code,
        response.headers.get(CORRELATION_HEADER),
    )


class ApiClient(httpx.Client):
    """An ``httpx.Client`` that retries API answers by an :class:`ApiRetry` and logs the
    final answer of a failed call (with its correlation id) once.

    Args:
        retry: The retry rules.
        **kwargs: ``httpx.Client`` arguments.
    """

    def __init__(self, *, retry: ApiRetry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry = retry

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request`` (and again, while :attr:`retry` says so). Redirects, when
        followed, are followed here, each leg a send of its own through the auth flow: its
        own token use and pacing slot (httpx would send them inside one auth step)."""
        follow = _follows(self, kwargs)
        retries = 0
        while True:
            response = self._send_legs(request, follow, kwargs)
            wait = self.retry.wait(request, response, retries)
            if wait is None:
                _log_if_failed(response)
                return response
            response.close()
            retries += 1
            time.sleep(wait)

    def _send_legs(
        self, request: httpx.Request, follow: bool, kwargs: dict[str, Any]
    ) -> httpx.Response:
        history: list[httpx.Response] = []
        while True:
            response = super().send(request, follow_redirects=False, **kwargs)
            try:
                nxt = _next_leg(response, follow, history, self.max_redirects)
            except BaseException:
                response.close()  # too many redirects: a streamed leg's connection goes back
                raise
            if nxt is None:
                return response
            response.read()
            response.close()
            request = nxt


class AsyncApiClient(httpx.AsyncClient):
    """:class:`ApiClient` for ``httpx.AsyncClient``: waits between retries without blocking
    the event loop (asyncio or trio).

    Args:
        retry: The retry rules.
        **kwargs: ``httpx.AsyncClient`` arguments.
    """

    def __init__(self, *, retry: ApiRetry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retry = retry

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send ``request`` (and again, while :attr:`retry` says so); redirects as
        :meth:`ApiClient.send` follows them, one send per leg."""
        follow = _follows(self, kwargs)
        retries = 0
        while True:
            response = await self._send_legs(request, follow, kwargs)
            wait = self.retry.wait(request, response, retries)
            if wait is None:
                _log_if_failed(response)
                return response
            await response.aclose()
            retries += 1
            await anyio.sleep(wait)

    async def _send_legs(
        self, request: httpx.Request, follow: bool, kwargs: dict[str, Any]
    ) -> httpx.Response:
        history: list[httpx.Response] = []
        while True:
            response = await super().send(request, follow_redirects=False, **kwargs)
            try:
                nxt = _next_leg(response, follow, history, self.max_redirects)
            except BaseException:
                await response.aclose()
                raise
            if nxt is None:
                return response
            await response.aread()
            await response.aclose()
            request = nxt


def _follows(client: httpx.Client | httpx.AsyncClient, kwargs: dict[str, Any]) -> bool:
    """Whether this send follows redirects: its ``follow_redirects``, or the client's when
    it passes httpx's ``USE_CLIENT_DEFAULT`` (``get()`` and ``request()`` always pass one)."""
    follow = kwargs.pop("follow_redirects", httpx.USE_CLIENT_DEFAULT)
    return bool(client.follow_redirects if follow is httpx.USE_CLIENT_DEFAULT else follow)


def _next_leg(
    response: httpx.Response, follow: bool, history: list[httpx.Response], max_redirects: int
) -> httpx.Request | None:
    """The redirect's next request when it is to be followed (``response`` joins
    ``history``); None when ``response`` is the answer (it gets the ``history``)."""
    nxt = response.next_request
    if not follow or nxt is None:
        response.history = list(history)
        return None
    if len(history) >= max_redirects:
        raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=nxt)
    history.append(response)
    return nxt
