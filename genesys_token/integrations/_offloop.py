"""Waiting for a token off the event loop, for the async adapters (httpx, aiohttp).

The event loop never waits on the manager. With a usable token a call is counted inline
(no I/O); otherwise the blocking wait runs in a worker thread of the loop's default
executor, one per loop for all its coroutines (a cold start of many coroutines holds one
thread, not one each). The thread waits in slices of :data:`SLICE` and stops once no
coroutine awaits it any more, so callers that give up (cancelled, or timed out by
``asyncio.wait_for``) leave no work behind and ``asyncio.run()`` is not held at exit; the
token request itself goes on in the manager, for later callers.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeVar, cast

from ..errors import TokenTimeoutError
from ._async_pacing import paced_use

if TYPE_CHECKING:
    from ..core.port import AdapterPort
    from ..core.uses import InFlight
    from ..manager import TokenManager

__all__ = ["SLICE", "Abandoned", "OffLoopTokens", "SharedCalls", "begin_in_slices", "in_slices"]

#: How long a worker thread waits on the manager at a time before it checks whether any
#: coroutine still awaits it: once the last one gave up, the thread is free within this long.
SLICE = 0.1
_T = TypeVar("_T")


class Abandoned(Exception):
    """No coroutine awaits a worker-thread call any more: it stopped waiting."""


def in_slices(wait: Callable[[float], _T], stop: threading.Event) -> _T:
    """Call ``wait(SLICE)`` until it returns or raises anything but its own timeout.

    Each slice joins the manager's one acquisition (the manager's own thread runs it); only
    this thread's wait is cut short.

    Args:
        wait: A blocking call taking a timeout (``get_token``, ``begin_use``...).
        stop: Set when no coroutine awaits the result any more.

    Returns:
        What ``wait`` returned.

    Raises:
        Abandoned: ``stop`` was set before ``wait`` returned.
        TokenTimeoutError: A failed acquisition's (one that came before the slice ran out).
    """
    while not stop.is_set():
        started = time.monotonic()
        try:
            return wait(SLICE)
        except TokenTimeoutError:
            if time.monotonic() - started < SLICE / 2:
                raise  # not this slice running out: the error of a failed acquisition
    raise Abandoned


def begin_in_slices(begin: Callable[[float], InFlight], stop: threading.Event) -> InFlight:
    """:func:`in_slices` for ``begin_use``: a use begun after its caller left is ended.

    Raises:
        Abandoned: ``stop`` was set, before or after the use was begun.
    """
    use = in_slices(begin, stop)
    if stop.is_set():
        use.end()
        raise Abandoned
    return use


async def _owned_use(begin: Callable[[threading.Event], InFlight]) -> InFlight:
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
    if not future.cancelled() and future.exception() is None:  # retrieves the exception
        future.result().end()


class _Shared:
    """One worker-thread call, the number of coroutines awaiting it, and its ``stop``."""

    __slots__ = ("future", "stop", "waiters")

    def __init__(self, future: asyncio.Future[object], stop: threading.Event) -> None:
        self.future = future
        self.stop = stop
        self.waiters = 0


class SharedCalls:
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
        ``key`` on this loop; ``stop`` is set once no coroutine awaits it any more.

        Returns:
            What ``call`` returned (every waiter gets the same).

        Raises:
            Exception: What ``call`` raised, to every waiter.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            calls = self._loops.setdefault(loop, {})
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


class OffLoopTokens:
    """An async adapter's way to a counted use of the manager's token, and to a 401's
    replacement, never blocking the event loop.

    One per adapter object (an auth, a middleware); it serves any number of event loops.

    Args:
        manager: The token manager (its ``get_token`` and pacing setting).
        port: The manager's adapter port (``adapter_port(manager)``).
    """

    def __init__(self, manager: TokenManager, port: AdapterPort) -> None:
        self._manager = manager
        self._port = port
        self._shared = SharedCalls()

    async def begin_use(self) -> InFlight:
        """A use of a usable token, counted in flight: inline when one is usable now, after
        a pacing slot when paced (``asyncio.sleep``, no thread), else after one worker-thread
        wait per loop shared by its coroutines.

        Returns:
            The use; end it when the call's answer arrived or it raised.

        Raises:
            GenesysTokenError: No token could be had (every waiting coroutine gets it).
            ApiRateLimitedError: Paced, and no slot within ``api_rate_wait``.
        """
        port = self._port
        return port.try_begin_use() or await paced_use(port) or await self._begin_use_slowly()

    async def _begin_use_slowly(self) -> InFlight:
        """The slow path: a token is fetched off the loop, once for all its coroutines."""
        paced = self._manager.settings.api_rate_limit is not None
        while True:
            await self._shared.run("token", lambda stop: in_slices(self._manager.get_token, stop))
            use = self._port.try_begin_use() or await paced_use(self._port)
            if use is not None:
                return use
            if not paced:
                break
            # Paced: never a thread per waiting coroutine (its sliced waits would also
            # bound the slot wait); the token became unusable again: get one again.
        # Usable a moment ago but not now (a refresh or a rotation swapped it this instant,
        # or it is in its last moments): the blocking call, off the loop, for this
        # coroutine alone.
        return await _owned_use(lambda stop: begin_in_slices(self._port.begin_use, stop))

    async def replace_rejected(self, rejected: str) -> None:
        """Replace the token ``rejected`` by the API, off the loop, once for every coroutine
        of the loop that saw it rejected.

        Raises:
            GenesysTokenError: No new token could be had.
        """
        port = self._port
        await self._shared.run(
            ("replace", rejected),
            lambda stop: in_slices(lambda t: port.replace_rejected(rejected, timeout=t), stop),
        )
