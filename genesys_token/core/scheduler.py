"""The process-wide refresh scheduler: one thread, a heap of deadlines, and nothing else.

Every manager of the process registers its next refresh here. One daemon thread sleeps until
the earliest deadline and *dispatches* due jobs, earliest deadline first. A job only starts
work (a manager starts its flight, on a thread of its own) and never waits for it: a hanging
token endpoint or secret source costs its own org one flight thread, never the scheduler. A
job that raises anything is logged and dropped: the scheduler survives it. The thread ends
when no job is left and starts again with the next one; a thread that cannot start (a pids
limit) leaves the jobs in the heap and is tried again by the next :meth:`Scheduler.schedule`.
A manager's job holds it weakly, so a manager dropped without ``close()`` is collected and
its job goes with it.

Deadlines are on :data:`genesys_token.core.clock.elapsed` (counts suspend where the OS can); the
thread never sleeps longer than :data:`MAX_SLEEP`, so a resumed machine is noticed soon, and so
is a job forgotten while the lock was busy (a finalizer cannot wait for the lock, nor wake the
thread without it).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from .clock import elapsed
from .fork import on_fork_in_child
from .threads import DaemonStarter

log = logging.getLogger(__name__)

#: The scheduler re-reads the clock at least this often (suspend, jobs forgotten while its
#: lock was busy): one wake-up a second for the whole process.
MAX_SLEEP = 1.0

_T = TypeVar("_T")


class Job:
    """One manager's next refresh. ``run`` is called by the scheduler thread: it must only
    start work (it must never wait for I/O).

    Holding ``target`` weakly is the caller's business (the manager passes a function that
    holds it weakly).
    """

    __slots__ = ("__weakref__", "dead", "deadline", "name", "owner", "run", "ticket")

    def __init__(self, run: Callable[[], None], name: str) -> None:
        self.run = run
        self.name = name
        #: Set by :meth:`Scheduler.forget` when it could not take the lock.
        self.dead = False
        #: The scheduler that counts this job (a forked child's scheduler does not count
        #: the parent's jobs, whose tickets it never issued).
        self.owner: Scheduler | None = None
        #: The heap entry that is this job's live one; others are stale and skipped.
        self.ticket: int | None = None
        self.deadline = 0.0


class Scheduler:
    """Dispatches :class:`Job` s at their deadlines from one thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Job]] = []
        self._live = 0
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None
        #: A thread start failed and no start succeeded since (logged once per outage).
        self._starter = DaemonStarter(
            log,
            "the refresh scheduler thread",
            "refreshes wait until a thread can start",
            logging.ERROR,
        )

    @property
    def threads(self) -> int:
        """Threads running now (0 or 1)."""
        with self._lock:
            return int(self._thread is not None and self._thread.is_alive())

    @property
    def running(self) -> bool:
        """Whether the thread was started (read without the lock: a hint for callers)."""
        return self._thread is not None

    @property
    def pending(self) -> int:
        """Jobs waiting for their deadline."""
        return self._live

    def schedule(self, job: Job, delay: float) -> None:
        """Run ``job`` in ``delay`` seconds (replacing its previous deadline). Never raises:
        when the thread cannot start, the job waits in the heap for the next try."""
        deadline = elapsed() + max(0.0, delay)
        with self._lock:
            if job.owner is not self:
                job.owner, job.ticket = self, None
            if job.ticket is None:
                self._live += 1
            ticket = next(self._tickets)
            job.ticket = ticket
            job.deadline = deadline
            heapq.heappush(self._heap, (deadline, ticket, job))
            self._compact()
            self._ensure_thread()
            if self._heap[0][1] == ticket:
                self._cond.notify_all()  # an earlier deadline than the thread sleeps for

    def cancel(self, job: Job) -> None:
        """Forget ``job`` (its heap entry is skipped when reached)."""
        with self._lock:
            if job.owner is self and job.ticket is not None:
                job.ticket = None
                self._live -= 1
                self._compact()
                self._cond.notify_all()

    def _compact(self) -> None:
        """Drop stale entries once they outnumber the live ones: a refresh re-arms every
        token life and a closed manager leaves its entry, which would otherwise wait for its
        deadline (up to a day) at the bottom of the heap. A dead job's entry stops being
        counted as it goes (else the count never reaches 0 and the thread never ends)."""
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [e for e in self._heap if self._is_live(e)]
            heapq.heapify(self._heap)

    def forget(self, job: Job) -> None:
        """Cancel ``job`` from a finalizer: never blocks (the collector may run while this
        very thread holds the lock); when the lock is busy the job is only marked dead and
        dropped at the scheduler's next turn (within :data:`MAX_SLEEP`)."""
        job.dead = True
        if job.owner is not self:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._drop(job)
                self._cond.notify_all()
            finally:
                self._lock.release()

    def _drop(self, job: Job) -> None:
        """Stop counting ``job`` (lock held); its heap entry is skipped when reached."""
        if job.owner is self and job.ticket is not None:
            job.ticket = None
            self._live -= 1

    def _ensure_thread(self) -> None:
        """Start the thread unless it runs (lock held: it waits for the lock to begin)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._thread = self._starter.start(self._loop, "genesys-token-scheduler")

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                job = self._next_due(me)
                if job is None:
                    return
            try:
                job.run()
            except BaseException:  # a job must never take the scheduler down (logged)
                log.exception("a scheduled token refresh raised; the scheduler goes on")

    def _next_due(self, me: threading.Thread) -> Job | None:
        """Wait for the next due job (lock held); None when this thread should end."""
        while self._thread is me:
            if self._live <= 0:
                self._heap.clear()
                self._thread = None
                return None
            now = elapsed()
            while self._heap and not self._is_live(self._heap[0]):
                heapq.heappop(self._heap)  # stale: rescheduled, cancelled or forgotten
            if self._heap and self._heap[0][0] <= now:
                _, _, job = heapq.heappop(self._heap)
                job.ticket = None
                self._live -= 1
                return job
            wait = self._heap[0][0] - now if self._heap else MAX_SLEEP
            self._cond.wait(min(wait, MAX_SLEEP))
        return None

    def _is_live(self, entry: tuple[float, int, Job]) -> bool:
        job = entry[2]
        if job.owner is not self:
            return False
        if job.dead:
            self._drop(job)
        return job.ticket == entry[1]


_scheduler = Scheduler()


def scheduler() -> Scheduler:
    """The scheduler of this process (a fresh one in a forked child)."""
    return _scheduler


def weak_job(target: _T, run: Callable[[_T], None], name: str) -> Job:
    """A job that calls ``run(target)`` while ``target`` lives. It holds ``target`` weakly,
    so a manager or pool dropped without ``close()`` is collected, and the job is forgotten
    then (:meth:`Scheduler.forget` never blocks in a finalizer)."""
    ref = weakref.ref(target)

    def call() -> None:
        alive = ref()
        if alive is not None:
            run(alive)

    job = Job(call, name)
    finalizer = weakref.finalize(target, _forget, job)
    finalizer.atexit = False
    return job


def _forget(job: Job) -> None:
    scheduler().forget(job)


def _after_fork_in_child() -> None:
    global _scheduler
    # The parent's thread does not exist here; managers re-arm on their first use.
    _scheduler = Scheduler()


on_fork_in_child(_after_fork_in_child)
