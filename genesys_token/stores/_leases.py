"""The process-wide keeper of held store locks: one thread renews every lease.

A FileStore holder touches its lock file and a RedisStore holder writes a new beat while it
is inside its lock block, so that waiters see it is alive (see ``_flock`` and
``_redis_lock``). Both hand that renewal to :func:`hold`: one daemon thread,
``genesys-token-lease-keeper``, keeps a heap of the held leases ordered by their next due
time and calls each one's ``renew`` every ``every`` seconds after its previous renewal ended,
until the lease is released, its ``lease_end`` has passed, or ``renew`` returns False (the
lock is lost). The thread starts with the first held lease and ends itself once none has
been held for :data:`IDLE_EXIT` seconds: an idle process has no such thread.

Release: :meth:`Lease.release` returns only once ``renew`` is no longer running for that
lease and will never be called for it again; the caller closes the lock file or deletes the
key right after, so a renewal running meanwhile is waited for (never cut short: it is bounded
by its own I/O timeout).

Slow renewals: there is one thread, so a renewal that stalls (a Redis that does not answer,
bounded by the client's socket timeout: 1 s per try from a URL-built client, which retries
once) delays the others. They run by due time, earliest first, so a lease is late by at most
the renewals due before it that stall, about ``k`` x the socket timeout for ``k`` stalling
Redis leases; each renewal waits for no other I/O. Waiters allow three missed beats (3 s)
before they judge a holder gone, so one stalling Redis lease costs nothing; several on a
Redis that stalls can make a waiter elsewhere give up on a live holder's file lock, which
costs one extra token request, not a wrong token.

A renew that raises is logged at DEBUG (its type only) and the lease kept: the keeper
survives anything a renewal does. A thread that cannot start (``RuntimeError``: a pids or
memory limit) leaves the lock held and working, only not renewed (waiters may take it over
after 3 s); it is logged once, and the next :func:`hold` tries again, renewing every lease
still held. In a forked child there is no keeper and the parent's leases are forgotten (their
locks are the parent's).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from .._lifecycle import on_fork_in_child

log = logging.getLogger("genesys_token.stores")

#: The keeper thread ends once no lease has been held for this many seconds.
IDLE_EXIT = 1.0
#: The name of the keeper thread.
THREAD_NAME = "genesys-token-lease-keeper"


class Lease:
    """One held lock's renewal, kept by the process-wide keeper until :meth:`release`."""

    __slots__ = ("_active", "_end", "_every", "_owner", "_renew", "name")

    def __init__(
        self,
        owner: _Keeper,
        renew: Callable[[], bool],
        every: float,
        lease_end: float,
        name: str,
    ) -> None:
        #: The keeper that renews it: a forked child's keeper does not count its parent's.
        self._owner = owner
        self._renew = renew
        self._every = every
        self._end = lease_end
        self._active = True
        #: What the lock is, for DEBUG logs ("token cache lock"); never a key or a secret.
        self.name = name

    @property
    def active(self) -> bool:
        """Whether the keeper still renews this lease."""
        return self._active

    def release(self) -> None:
        """Stop renewing; once this returns, ``renew`` is not running and never runs again
        for this lease (a renewal under way is waited for, unless the caller is that very
        renewal)."""
        _keeper.release(self)


class _Keeper:
    """The heap of held leases and the one thread that renews them."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        #: (due, sequence, lease): stale entries (released leases) are skipped when reached.
        self._heap: list[tuple[float, int, Lease]] = []
        self._sequence = itertools.count()
        self._held = 0
        #: The lease whose ``renew`` runs now, outside the lock.
        self._running: Lease | None = None
        self._thread: threading.Thread | None = None
        self._start_failed = False

    def hold(self, lease: Lease) -> None:
        with self._cond:
            self._push(lease, time.monotonic() + lease._every)
            self._held += 1
            self._ensure_thread()
            self._cond.notify_all()

    def release(self, lease: Lease) -> None:
        if lease._owner is not self:
            lease._active = False  # a parent's lease, in a forked child: never renewed here
            return
        with self._cond:
            if lease._active:
                lease._active = False
                self._held -= 1
            # Not when the caller is the renewal itself: it would wait for its own end.
            if self._thread is not threading.current_thread():
                while self._running is lease:
                    self._cond.wait()
            self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def _push(self, lease: Lease, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._sequence), lease))

    def _ensure_thread(self) -> None:
        # Under the lock.
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or memory limit
            self._thread = None
            if not self._start_failed:
                self._start_failed = True
                log.warning(
                    "cannot start the store lock keeper thread (%s); held locks are not "
                    "renewed until a thread can start",
                    exc,
                )
            return
        if self._start_failed:
            self._start_failed = False
            log.warning("the store lock keeper thread runs again")

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                lease = self._next_due(me)
                if lease is None:
                    return
                self._running = lease
            renewed = True
            try:
                renewed = lease._renew()
            except Exception as exc:  # noqa: BLE001 - a renewal must never end the keeper
                log.debug("could not renew the %s (%s); kept", lease.name, type(exc).__name__)
            finally:
                with self._cond:
                    self._running = None
                    if lease._active:
                        if renewed:
                            self._push(lease, time.monotonic() + lease._every)
                        else:
                            log.debug("%s lost before its lease ended", lease.name)
                            lease._active = False
                            self._held -= 1
                    self._cond.notify_all()

    def _next_due(self, me: threading.Thread) -> Lease | None:
        """Wait for the next due lease (lock held); None when this thread should end."""
        idle_since: float | None = None
        while self._thread is me:
            now = time.monotonic()
            while self._heap and not self._heap[0][2]._active:
                heapq.heappop(self._heap)  # released: its entry goes when reached
            if not self._heap:
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= IDLE_EXIT:
                    self._thread = None
                    return None
                self._cond.wait(idle_since + IDLE_EXIT - now)
                continue
            idle_since = None
            due, _, lease = self._heap[0]
            if due > now:
                self._cond.wait(due - now)
                continue
            heapq.heappop(self._heap)
            if now >= lease._end:
                log.debug("%s lease ran out; no longer renewed", lease.name)
                lease._active = False
                self._held -= 1
                continue
            return lease
        return None


_keeper = _Keeper()


def hold(renew: Callable[[], bool], every: float, lease_end: float, name: str) -> Lease:
    """Renew a held lock from the keeper thread until released, lost, or out of lease.

    Args:
        renew: Renews the lock once (a touch, a beat); False when the lock is no longer
            ours, which ends the lease. It runs on the keeper thread, after the previous
            renewal ended, and never after :meth:`Lease.release` has returned.
        every: Seconds from the end of one renewal to the next (the first: from now).
        lease_end: ``time.monotonic()`` after which the lock is no longer renewed.
        name: What the lock is, for DEBUG logs.
    """
    keeper = _keeper
    lease = Lease(keeper, renew, every, lease_end, name)
    keeper.hold(lease)
    return lease


def held() -> int:
    """How many leases the keeper renews now."""
    return _keeper.held


def _forget_in_child() -> None:
    # In a forked child: only the forking thread exists, and the parent's locks are its own.
    global _keeper
    _keeper = _Keeper()


on_fork_in_child(_forget_in_child)
