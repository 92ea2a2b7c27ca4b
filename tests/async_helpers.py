"""Shared bits of the async adapter tests (httpx, aiohttp, their off-loop wait): a bounded
runner, a loop ticker that shows a blocked loop, an executor that counts its jobs, the
give-up timing, an adapter port that forces the slow path, a count of the library's threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from genesys_token.core.port import AdapterPort
from genesys_token.core.uses import InFlight

#: How slow the token endpoint is made: long enough that a blocked loop would show.
SLOW_TOKEN = 1.0
#: The ticker sleeps this long; a gap much larger than it means the loop was blocked.
TICK = 0.01
#: A gap the loop may show on a busy CI machine without having been blocked by us.
MAX_GAP = 0.6
#: How long the token endpoint stalls in the give-up tests: far beyond GIVE_UP and EXIT_BOUND.
HANG = 5.0
#: The callers' own bound (``asyncio.wait_for``) in the give-up tests.
GIVE_UP = 0.4
#: How soon after its callers gave up ``asyncio.run()`` must return.
EXIT_BOUND = 1.0
#: Bound of a whole test's event loop, so a hang fails the test instead of the run.
RUN_BOUND = 15

T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(coro_fn())``, bounded by :data:`RUN_BOUND` seconds."""
    return asyncio.run(asyncio.wait_for(coro_fn(), RUN_BOUND))


def run_and_time_exit(main: Callable[[], Coroutine[Any, Any, float]]) -> float:
    """Seconds from the moment ``main`` gave up (the time it returns) to ``asyncio.run()``
    returning (closing the client, then the loop's shutdown, which waits for the worker
    threads of its default executor)."""
    gave_up = asyncio.run(main())
    return time.monotonic() - gave_up


class Ticker:
    """Measures the longest pause of the event loop while it runs."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Tick every :data:`TICK` until :meth:`stop`, noting the longest gap."""
        last = time.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    def stop(self) -> None:
        """End :meth:`run`."""
        self._stop.set()


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the calls sent to worker threads."""

    def __init__(self) -> None:
        super().__init__(4)
        self.submitted: list[object] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Note ``fn``, then run it in a worker thread."""
        self.submitted.append(fn)
        return super().submit(fn, *args, **kwargs)


class HeldPort:
    """A manager's adapter port whose non-blocking path always declines (not paced either),
    and whose ``begin_use`` waits for :attr:`release` (set at first): the async adapters'
    last resort, ``begin_use`` off the loop, made to run, deterministically."""

    def __init__(self, port: AdapterPort) -> None:
        self._port = port
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.returned = threading.Event()
        self.replace_rejected = port.replace_rejected
        self.answered = port.answered

    def try_begin_use(self) -> None:
        """Decline: no use without waiting."""
        return None

    def line_up(self) -> None:
        """Not paced."""
        return None

    def begin_use(self, timeout: float | None = None) -> InFlight:
        """Note the call (:attr:`entered`), wait for :attr:`release`, then count a use
        (:attr:`returned`)."""
        self.entered.set()
        if not self.release.wait(5):
            raise TimeoutError("the test never released begin_use")
        use = self._port.begin_use(timeout)
        self.returned.set()
        return use


def own_threads() -> int:
    """Threads of this process but the emulator's. The emulator serves each connection in a
    thread that ends a moment after the client closes it (or starts when a client opens one),
    so a count that includes them varies with connection timing, not with the library."""
    return sum("process_request_thread" not in t.name for t in threading.enumerate())
