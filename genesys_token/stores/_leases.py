"""The keepers of held store locks: one thread per kind of lock renews every lease of it.

A FileStore holder touches its lock file and a RedisStore holder writes a new beat while it
is inside its lock block, so that waiters see it is alive (see ``_flock`` and
``_redis_lock``). Both hand that renewal to :func:`hold`, naming a *group*: every FileStore
lock of the process is one group (a touch is local and never stalls), each RedisStore's
locks another (a Redis that stalls delays only the beats of its own store). A group's daemon
thread, ``genesys-token-lease-keeper``, keeps a heap of its held leases ordered by their next
due time and calls each one's ``renew`` every ``every`` seconds after its previous renewal ended,
until the lease is released, its ``lease_end`` has passed, or ``renew`` returns False (the
lock is lost). The thread starts with the first held lease and ends itself once none has
been held for :data:`IDLE_EXIT` seconds: an idle process has no such thread.

Release: :meth:`Lease.release` returns only once ``renew`` is no longer running for that
lease and will never be called for it again; the caller closes the lock file or deletes the
key right after, so a renewal running meanwhile is waited for (never cut short: it is bounded
by its own I/O timeout).

Slow renewals: a group has one thread, so a renewal that stalls delays the group's others
while it runs (never another group's: a hung Redis once stopped every FileStore heartbeat of
the process, and a waiter took over a live holder's lock after 4.2 s). A beat on a Redis
that does not answer waits out the client's socket timeout on its try and its one retry: 2 s
with a URL-built client (1 s timeouts). Leases run by due time, earliest first, but a lease
whose last renewal took over :data:`SLOW_RENEWAL` goes after every quick lease half-way to
its due time, so once a stall is known a quick lease of the group is renewed at most one
stall plus half its interval apart, however many leases stall. The first stall of each
stalling lease is not known beforehand: until then a quick lease may wait for one interval
plus every such first stall due before it. Waiters allow 3 s (FileStore: 3.25 s) before they
give up on a holder, and giving up on a live one costs one extra token request, never a
wrong token.

A renew that raises is logged at DEBUG (its type only) and the lease kept: the keeper
survives anything a renewal does. A thread that cannot start (``RuntimeError``: a pids or
memory limit) leaves the lock held and working, only not renewed (waiters may take it over
after 3 s); one WARNING says so (one more once a thread starts again), and the next
:func:`hold` tries again, renewing every lease still held. In a forked child there is no
keeper and the parent's leases are forgotten (their locks are the parent's).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable

from ..core.fork import on_fork_in_child
from ..core.threads import DaemonStarter

log = logging.getLogger("genesys_token.stores")

#: The keeper thread ends once no lease has been held for this many seconds.
IDLE_EXIT = 1.0
#: A renewal that took longer than this (a Redis that stalls) puts its lease after the
#: quick ones until one of its renewals is quick again.
SLOW_RENEWAL = 0.1
#: The name of the keeper thread.
THREAD_NAME = "genesys-token-lease-keeper"


class Lease:
    """One held lock's renewal, kept by the process-wide keeper until :meth:`release`."""

    __slots__ = ("_active", "_end", "_every", "_owner", "_renew", "_slow", "_ticket", "name")

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
        #: The sequence number of this lease's live heap entry (None while it is renewed or
        #: once it is dropped); any other entry of it is stale and skipped.
        self._ticket: int | None = None
        #: Whether its last renewal took longer than SLOW_RENEWAL.
        self._slow = False
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
        owner = self._owner
        if owner.generation is not _generation:
            self._active = False  # a parent's lease, in a forked child: never renewed here
            return
        owner.release(self)


class _Keeper:
    """The heap of held leases and the one thread that renews them."""

    def __init__(self) -> None:
        #: The process this keeper belongs to (a forked child makes new ones).
        self.generation = _generation
        self._cond = threading.Condition(threading.Lock())
        #: (due, sequence, lease): stale entries (released leases) are skipped when reached.
        self._heap: list[tuple[float, int, Lease]] = []
        self._sequence = itertools.count()
        self._held = 0
        #: The lease whose ``renew`` runs now, outside the lock.
        self._running: Lease | None = None
        self._thread: threading.Thread | None = None
        self._starter = DaemonStarter(
            log,
            "the store lock keeper thread",
            "held locks are not renewed until a thread can start",
        )

    def hold(self, lease: Lease) -> None:
        with self._cond:
            self._push(lease, time.monotonic() + lease._every)
            self._held += 1
            self._ensure_thread()
            self._cond.notify_all()

    def release(self, lease: Lease) -> None:
        with self._cond:
            self._drop(lease)
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
        ticket = next(self._sequence)
        lease._ticket = ticket
        heapq.heappush(self._heap, (due, ticket, lease))

    def _drop(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (lock held); its heap entry is skipped when reached."""
        if lease._active:
            lease._active = False
            lease._ticket = None
            self._held -= 1

    def _ensure_thread(self) -> None:
        """Start the keeper unless it runs (lock held: it waits for the lock to begin)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._thread = self._starter.start(self._run, THREAD_NAME)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                lease = self._next_due(me)
                if lease is None:
                    return
                self._running = lease
            renewed = True
            started = time.monotonic()
            try:
                renewed = lease._renew()
            except Exception as exc:  # noqa: BLE001 - a renewal must never end the keeper
                log.debug("could not renew the %s (%s); kept", lease.name, type(exc).__name__)
            finally:
                with self._cond:
                    self._running = None
                    ended = time.monotonic()
                    lease._slow = ended - started > SLOW_RENEWAL
                    if lease._active:
                        if renewed:
                            self._push(lease, ended + lease._every)
                        else:
                            log.debug("%s lost before its lease ended", lease.name)
                            self._drop(lease)
                    self._cond.notify_all()

    def _pick(self, now: float) -> Lease:
        """The lease to renew now, once one is due (lock held; a scan of the few held).

        The earliest due goes first, but a lease whose last renewal was slow (a Redis that
        stalls) goes after every quick lease half-way to its due time: those are renewed
        before the stall rather than one stall late.
        """
        ready = [
            (lease._slow, due, ticket, lease)
            for due, ticket, lease in self._heap
            if ticket == lease._ticket and due - lease._every / 2 <= now
        ]
        return min(ready, key=lambda entry: entry[:3])[3]

    def _next_due(self, me: threading.Thread) -> Lease | None:
        """Wait for the next due lease (lock held); None when this thread should end."""
        idle_since: float | None = None
        while self._thread is me:
            now = time.monotonic()
            while self._heap and self._heap[0][1] != self._heap[0][2]._ticket:
                heapq.heappop(self._heap)  # stale: released, or renewed ahead of it
            if not self._heap:
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= IDLE_EXIT:
                    self._thread = None
                    return None
                self._cond.wait(idle_since + IDLE_EXIT - now)
                continue
            idle_since = None
            due = self._heap[0][0]
            if due > now:
                self._cond.wait(due - now)
                continue
            lease = self._pick(now)
            lease._ticket = None  # its entry is stale now
            if now >= lease._end:
                log.debug("%s lease ran out; no longer renewed", lease.name)
                self._drop(lease)
                continue
            return lease
        return None


class _Generation:
    """One process's generation of keepers (a forked child starts a new one)."""


_generation = _Generation()


class Group:
    """What a lease's keeper is shared with: every lease of one group has one thread."""


#: Every FileStore lock of the process: touching a file never stalls.
FILE_LOCKS = Group()
#: Leases that name no group.
DEFAULT = Group()

_keepers_lock = threading.Lock()
_keepers: weakref.WeakKeyDictionary[object, _Keeper] = weakref.WeakKeyDictionary()


def _keeper_of(group: object) -> _Keeper:
    with _keepers_lock:
        keeper = _keepers.get(group)
        if keeper is None:
            keeper = _keepers[group] = _Keeper()
        return keeper


def hold(
    renew: Callable[[], bool],
    every: float,
    lease_end: float,
    name: str,
    group: object = DEFAULT,
) -> Lease:
    """Renew a held lock from its group's keeper thread until released, lost, or out of
    lease.

    Args:
        renew: Renews the lock once (a touch, a beat); False when the lock is no longer
            ours, which ends the lease. It runs on the keeper thread, after the previous
            renewal ended, and never after :meth:`Lease.release` has returned.
        every: Seconds from the end of one renewal to the next (the first: from now).
        lease_end: ``time.monotonic()`` after which the lock is no longer renewed.
        name: What the lock is, for DEBUG logs.
        group: Leases of one group share a thread (:data:`FILE_LOCKS`, or the RedisStore
            lock object): a renewal that stalls delays only its own group. Kept weakly.
    """
    keeper = _keeper_of(group)
    lease = Lease(keeper, renew, every, lease_end, name)
    keeper.hold(lease)
    return lease


def held() -> int:
    """How many leases the keepers renew now."""
    with _keepers_lock:
        keepers = list(_keepers.values())
    return sum(keeper.held for keeper in keepers)


def _forget_in_child() -> None:
    # In a forked child: only the forking thread exists, and the parent's locks are its own.
    global _generation, _keepers_lock, _keepers
    _generation = _Generation()
    _keepers_lock = threading.Lock()
    _keepers = weakref.WeakKeyDictionary()


on_fork_in_child(_forget_in_child)
