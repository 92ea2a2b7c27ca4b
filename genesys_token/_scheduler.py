"""The process-wide refresh scheduler: one thread, a heap of deadlines, a few workers.

Every manager of the process registers its next refresh here. One daemon thread sleeps until
the earliest deadline and hands due jobs to a small pool of worker threads, earliest
deadline first: a refresh is never skipped, only ordered. Workers are started on demand (at
most :data:`MAX_WORKERS`) and end when idle; the scheduler thread ends when no job is left,
and starts again with the next one. A job that raises anything is logged and dropped: the
scheduler survives it. A manager's job holds it weakly, so a manager dropped without
``close()`` is collected and its job goes with it.

Deadlines are on :data:`genesys_token._clock.elapsed` (counts suspend where the OS can); the
thread never sleeps longer than :data:`MAX_SLEEP`, so a resumed machine is noticed soon, and so
is a job forgotten while the lock was busy (a finalizer cannot wait for the lock, nor wake the
thread without it).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable

from ._clock import elapsed

log = logging.getLogger(__name__)

#: Workers running refreshes at once. A hanging token endpoint occupies one of them at most
#: (a manager has one refresh at a time); the others keep serving every other org.
MAX_WORKERS = 4
#: A worker with nothing to do for this long ends (made again on demand).
WORKER_IDLE = 1.0
#: The scheduler re-reads the clock at least this often (suspend, jobs forgotten while its
#: lock was busy): one wake-up a second for the whole process.
MAX_SLEEP = 1.0


class Job:
    """One manager's next refresh. ``run`` is called by a worker; it must not block forever.

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
    """Runs :class:`Job` s at their deadlines on a bounded pool of workers."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Job]] = []
        self._ready: list[tuple[float, int, Job]] = []
        self._live = 0
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None
        self._workers = 0
        self._idle_workers = 0

    @property
    def threads(self) -> int:
        """Threads running now (the scheduler's and its workers)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            return int(alive) + self._workers

    def schedule(self, job: Job, delay: float) -> None:
        """Run ``job`` in ``delay`` seconds (replacing its previous deadline)."""
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
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        # Not running, or died (it should not, but a dead scheduler must come back).
        thread = threading.Thread(target=self._loop, name="genesys-token-scheduler", daemon=True)
        self._thread = thread
        thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                if self._live <= 0:
                    self._heap.clear()
                    self._thread = None
                    return
                now = elapsed()
                while self._heap and not self._is_live(self._heap[0]):
                    heapq.heappop(self._heap)  # stale: rescheduled, cancelled or forgotten
                if self._heap and self._heap[0][0] <= now:
                    entry = heapq.heappop(self._heap)
                    entry[2].ticket = None
                    self._live -= 1
                    heapq.heappush(self._ready, entry)
                    self._ensure_worker()
                    continue
                wait = self._heap[0][0] - now if self._heap else MAX_SLEEP
                self._cond.wait(min(wait, MAX_SLEEP))

    def _is_live(self, entry: tuple[float, int, Job]) -> bool:
        job = entry[2]
        if job.owner is not self:
            return False
        if job.dead:
            self._drop(job)
        return job.ticket == entry[1]

    def _ensure_worker(self) -> None:
        # One more worker while due jobs outnumber idle workers: two jobs due together must
        # not queue behind one (a hanging endpoint would hold the other).
        if len(self._ready) > self._idle_workers and self._workers < self._max_workers:
            self._workers += 1
            name = f"genesys-token-worker-{self._workers}"
            threading.Thread(target=self._work, name=name, daemon=True).start()
        self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                idle_until = elapsed() + WORKER_IDLE
                while not self._ready:
                    left = idle_until - elapsed()
                    if left <= 0:
                        self._workers -= 1
                        return
                    self._idle_workers += 1
                    self._cond.wait(left)
                    self._idle_workers -= 1
                _, _, job = heapq.heappop(self._ready)
            try:
                job.run()
            except BaseException:  # a job must never take a worker down (logged)
                log.exception("a scheduled token refresh raised; the scheduler goes on")


_scheduler = Scheduler()


def scheduler() -> Scheduler:
    """The scheduler of this process (a fresh one in a forked child)."""
    return _scheduler


def _after_fork_in_child() -> None:
    global _scheduler
    # The parent's threads do not exist here; managers re-arm on their first use.
    _scheduler = Scheduler(_scheduler._max_workers)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
