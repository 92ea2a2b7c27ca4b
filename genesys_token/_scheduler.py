"""The process-wide refresh scheduler: one thread, a heap of deadlines, a few workers.

Every manager of the process registers its next refresh here. One daemon thread sleeps until
the earliest deadline and hands due jobs to a small pool of worker threads, earliest
deadline first: a refresh is never skipped, only ordered. Workers are started on demand (at
most :data:`MAX_WORKERS`) and end when idle; the scheduler thread ends when no job is left,
and starts again with the next one. A job that raises anything is logged and dropped: the
scheduler survives it. A manager's job holds it weakly, so a manager dropped without
``close()`` is collected and its job goes with it.

Deadlines are on :data:`genesys_token._clock.elapsed` (counts suspend where the OS can); the
thread never sleeps longer than :data:`MAX_SLEEP`, so a resumed machine is noticed soon.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from ._clock import elapsed

log = logging.getLogger(__name__)

#: Workers running refreshes at once. A hanging token endpoint occupies one of them at most
#: (a manager has one refresh at a time); the others keep serving every other org.
MAX_WORKERS = 4
#: A worker with nothing to do for this long ends (made again on demand).
WORKER_IDLE = 1.0
#: The scheduler re-reads the clock at least this often (suspend, missed wake-ups).
MAX_SLEEP = 30.0


class Job:
    """One manager's next refresh. ``run`` is called by a worker; it must not block forever.

    Holding ``target`` weakly is the caller's business (the manager passes a function that
    holds it weakly).
    """

    __slots__ = ("__weakref__", "dead", "deadline", "name", "run", "ticket")

    def __init__(self, run: Callable[[], None], name: str) -> None:
        self.run = run
        self.name = name
        #: Set by :meth:`Scheduler.forget` when it could not take the lock.
        self.dead = False
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
            if job.ticket is None:
                self._live += 1
            ticket = next(self._tickets)
            job.ticket = ticket
            job.deadline = deadline
            heapq.heappush(self._heap, (deadline, ticket, job))
            self._ensure_thread()
            if self._heap[0][1] == ticket:
                self._cond.notify_all()  # an earlier deadline than the thread sleeps for

    def cancel(self, job: Job) -> None:
        """Forget ``job`` (its heap entry is skipped when reached)."""
        with self._lock:
            if job.ticket is not None:
                job.ticket = None
                self._live -= 1
                self._cond.notify_all()

    def forget(self, job: Job) -> None:
        """Cancel ``job`` from a finalizer: never blocks (the collector may run while this
        very thread holds the lock); when the lock is busy the job is only marked dead and
        dropped at the scheduler's next turn."""
        job.dead = True
        if self._lock.acquire(blocking=False):
            try:
                if job.ticket is not None:
                    job.ticket = None
                    self._live -= 1
                    self._cond.notify_all()
            finally:
                self._lock.release()

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
        if job.dead and job.ticket is not None:
            job.ticket = None
            self._live -= 1
        return job.ticket == entry[1]

    def _ensure_worker(self) -> None:
        if self._idle_workers > 0:
            self._cond.notify_all()
        # Idle workers are counted until they wake: a burst of due jobs may outnumber them,
        # and one that hangs must not hold the rest of the burst in the queue behind it.
        if len(self._ready) > self._idle_workers and self._workers < self._max_workers:
            self._workers += 1
            name = f"genesys-token-worker-{self._workers}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._ready:
                    # The condition is shared with the scheduler thread: a wake-up is not a
                    # job, so wait out the idle time instead of ending at the first one.
                    self._idle_workers += 1
                    idle_until = time.monotonic() + WORKER_IDLE
                    while not self._ready and (left := idle_until - time.monotonic()) > 0:
                        self._cond.wait(left)
                    self._idle_workers -= 1
                    if not self._ready:
                        self._workers -= 1
                        return
                _, _, job = heapq.heappop(self._ready)
            try:
                job.run()
            except BaseException:
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
