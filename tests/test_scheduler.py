"""The process-wide refresh scheduler: deadline order, bounded workers, hangs, raises, fork.

The first tests drive a private :class:`Scheduler` with plain jobs; the later ones run real
managers against the emulator on the process-wide one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import FakeClock, MakeManager, in_child, poll

from genesys_token import TokenManager, TokenManagerPool
from genesys_token._scheduler import Job, Scheduler, scheduler
from genesys_token.events import TOKEN_REFRESH_SUCCESS
from genesys_token.testing import Fault, GenesysEmulator


def _blockers(sched: Scheduler, count: int) -> tuple[threading.Event, threading.Barrier]:
    """Occupy ``count`` workers until the returned event is set."""
    release = threading.Event()
    started = threading.Barrier(count + 1, timeout=5)

    def block() -> None:
        started.wait()
        release.wait(5)

    for i in range(count):
        sched.schedule(Job(block, f"block-{i}"), 0.0)
    started.wait()
    return release, started


def test_due_jobs_run_earliest_deadline_first() -> None:
    sched = Scheduler(max_workers=1)
    release, _ = _blockers(sched, 1)
    order: list[float] = []
    delays = [0.05, 0.01, 0.04, 0.02, 0.03]  # scheduled in this order, due in another
    for delay in delays:
        sched.schedule(Job(lambda d=delay: order.append(d), f"job-{delay}"), delay)
    # All five are due while the only worker is busy: they wait in the ready queue.
    try:
        assert poll(lambda: len(sched._ready) == len(delays))
    finally:
        release.set()
    assert poll(lambda: len(order) == len(delays))
    assert order == sorted(delays)


def test_a_full_worker_pool_queues_due_jobs_and_never_drops_one() -> None:
    sched = Scheduler(max_workers=2)
    release, _ = _blockers(sched, 2)
    ran: list[int] = []
    for i in range(20):
        sched.schedule(Job(lambda i=i: ran.append(i), f"job-{i}"), 0.0)
    try:
        assert poll(lambda: len(sched._ready) == 20)
        assert sched._workers == 2  # however many jobs wait
    finally:
        release.set()
    assert poll(lambda: len(ran) == 20)
    assert sorted(ran) == list(range(20))


def test_a_hanging_job_holds_one_worker_while_the_others_serve_the_rest_of_its_burst() -> None:
    # The burst comes due while one idle worker exists: idle workers are counted until they
    # wake, so the burst must still get workers of its own instead of queueing behind the
    # one that hangs.
    sched = Scheduler(max_workers=4)
    release = threading.Event()
    served = threading.Event()
    quick: list[int] = []

    def one_quick(i: int) -> Callable[[], None]:
        def run() -> None:
            quick.append(i)
            if len(quick) == 5:
                served.set()

        return run

    due = time.monotonic() + 0.3
    sched.schedule(Job(lambda: release.wait(5), "hangs"), 0.3)  # earliest of the burst
    for i in range(5):
        sched.schedule(Job(one_quick(i), f"quick-{i}"), 0.3)
    warmed = threading.Event()
    sched.schedule(Job(warmed.set, "warm-up"), 0.0)
    assert warmed.wait(2)
    assert poll(lambda: sched._idle_workers == 1)
    with sched._lock:  # the whole burst comes due while the scheduler cannot look
        time.sleep(max(0.0, due + 0.02 - time.monotonic()))
    try:
        assert served.wait(2), "jobs due with a hanging one waited for it to end"
        assert sched.threads <= 1 + 4
    finally:
        release.set()


def test_a_job_that_raises_anything_is_logged_and_the_scheduler_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sched = Scheduler(max_workers=1)
    after = threading.Event()

    def raises(exc: BaseException) -> Callable[[], None]:
        def run() -> None:
            raise exc

        return run

    with caplog.at_level(logging.ERROR, logger="genesys_token._scheduler"):
        sched.schedule(Job(raises(RuntimeError("boom")), "runtime"), 0.0)
        sched.schedule(Job(raises(SystemExit(3)), "exit"), 0.01)
        sched.schedule(Job(raises(KeyboardInterrupt()), "interrupt"), 0.02)
        sched.schedule(Job(after.set, "after"), 0.03)
        assert after.wait(2), "a job after the raising ones never ran"
    assert len([r for r in caplog.records if "raised" in r.getMessage()]) == 3


def test_rescheduling_replaces_the_deadline_and_the_threads_end_when_no_job_is_left() -> None:
    sched = Scheduler(max_workers=2)
    runs: list[float] = []
    job = Job(lambda: runs.append(time.monotonic()), "job")
    sched.schedule(job, 3600.0)
    sched.schedule(job, 0.0)  # the 3600 s entry goes stale
    assert poll(lambda: len(runs) == 1)
    # No live job: the scheduler thread ends at once, the worker after WORKER_IDLE.
    assert poll(lambda: sched.threads == 0, timeout=2.5)
    assert len(runs) == 1


def test_a_cancelled_job_never_runs_and_lets_the_scheduler_end() -> None:
    sched = Scheduler()
    ran = threading.Event()
    job = Job(ran.set, "job")
    sched.schedule(job, 0.2)
    sched.cancel(job)
    assert poll(lambda: sched.threads == 0)
    assert not ran.wait(0.3)


def test_a_job_forgotten_while_the_lock_is_busy_is_dropped_and_lets_the_scheduler_end() -> None:
    # A finalizer may run while the lock is held (by another thread, or by the very thread
    # the collector interrupted): forget() cannot wait for it, nor wake the scheduler thread.
    sched = Scheduler()
    ran = threading.Event()
    job = Job(ran.set, "job")
    sched.schedule(job, 3600.0)
    time.sleep(0.2)  # the scheduler thread reaches its wait (sooner only weakens the test)
    with sched._lock:  # what a finalizer meets when the collector runs inside a locked section
        sched.forget(job)
    assert poll(lambda: sched.threads == 0, timeout=2.5)  # MAX_SLEEP is 1 s
    assert not ran.is_set()


def test_compaction_stops_counting_a_forgotten_job_so_the_scheduler_can_end() -> None:
    sched = Scheduler()
    keep, victim = Job(lambda: None, "keep"), Job(lambda: None, "victim")
    sched.schedule(keep, 3600.0)
    sched.schedule(victim, 7200.0)
    with sched._lock:
        sched.forget(victim)  # marked dead, still counted
    for _ in range(200):
        sched.schedule(keep, 3600.0)  # stale entries pile up: the heap is compacted
    sched.cancel(keep)
    assert poll(lambda: sched.threads == 0, timeout=2.5)


def test_an_idle_worker_outlives_a_wake_up_and_ends_after_worker_idle() -> None:
    # A new earliest deadline wakes every waiter of the condition, idle workers included:
    # one must go back to waiting out its idle time, not end (a thread made per refresh).
    sched = Scheduler(max_workers=1)
    first, later = threading.Event(), threading.Event()
    sched.schedule(Job(first.set, "first"), 0.0)
    assert first.wait(2)
    assert poll(lambda: sched._idle_workers == 1)
    sched.schedule(Job(later.set, "later"), 0.3)  # the new earliest deadline: notify_all
    time.sleep(0.1)
    assert sched._workers == 1
    assert later.wait(2)
    assert poll(lambda: sched.threads == 0, timeout=2.5)


# -- real managers on the process-wide scheduler -----------------------------------------


def _refreshes(manager: TokenManager) -> list[str]:
    seen: list[str] = []
    manager.on(TOKEN_REFRESH_SUCCESS, lambda record: seen.append(record["data"]["reason"]))
    return seen


def test_an_org_whose_token_endpoint_hangs_delays_no_refresh_of_the_others(
    emulator: GenesysEmulator,
) -> None:
    others = [f"org-{i}" for i in range(6)]
    for client in [*others, "org-hangs"]:
        emulator.add_client(client, f"{client}-secret", token_ttl=2)
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        timeout=(1.0, 30.0),
        max_retries=0,
    ) as pool:
        hanging = pool.get("org-hangs", "org-hangs-secret")
        hanging.get_token()
        managers = [pool.get(c, f"{c}-secret") for c in others]
        seen = [_refreshes(m) for m in managers]
        for manager in managers:
            manager.get_token()
        # From now on the org's token endpoint answers after 30 s (the test ends first).
        emulator.inject(Fault(delay=30, passthrough=True), times=None, client_id="org-hangs")
        # Each other org refreshes twice on its 2 s tokens (due at ~1.4 s and ~2.8 s),
        # while the hanging refresh (due at ~1.4 s too) holds one worker.
        assert poll(lambda: all(s.count("background") >= 2 for s in seen), 5.0), seen
        totals = pool.metrics()["totals"]
        assert emulator.token_requests - totals["token_requests"] == 1  # the one that hangs
        assert all(m.get_token() for m in managers)
    assert hanging.closed  # close() cut its request: its worker is free again


def test_close_of_a_manager_while_its_refresh_waits_for_a_worker(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    manager = make_manager(clock=fake_clock.clock())
    manager.get_token()
    fake_clock.advance(emulator.token_ttl - 100)  # past the refresh point, still usable
    sched = scheduler()
    release, _ = _blockers(sched, 4)  # every worker busy
    try:
        ran = threading.Event()
        job = manager._refresher.job
        assert job is not None
        original = job.run
        job.run = lambda: (original(), ran.set())  # type: ignore[func-returns-value]
        sched.schedule(job, 0.0)
        assert poll(lambda: any(entry[2] is job for entry in sched._ready))
        before = emulator.token_requests
        manager.close()
    finally:
        release.set()
    assert ran.wait(2), "the queued refresh never ran"
    assert emulator.token_requests == before  # it found its manager closed: no request


def test_close_of_a_manager_whose_refresh_is_planned_lets_the_scheduler_end(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    manager.get_token()
    assert scheduler().threads >= 1  # its refresh is planned (~24 h ahead)
    manager.close()
    assert poll(lambda: scheduler().threads == 0, timeout=2.5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_childs_scheduler_starts_on_first_use(emulator: GenesysEmulator) -> None:
    emulator.token_ttl = 2
    with TokenManagerPool(token_url=emulator.token_url, api_base_url=emulator.api_base_url) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret)
        parent_token = manager.get_token()
        holding, forked = threading.Event(), threading.Event()

        def hold_the_pool_lock() -> None:  # a parent thread inside get() at the fork
            with pool._lock:
                holding.set()
                forked.wait(5)

        holder = threading.Thread(target=hold_the_pool_lock)
        holder.start()
        assert holding.wait(2)

        def child() -> dict[str, Any]:
            names = lambda: [t.name for t in threading.enumerate()]  # noqa: E731
            result = {"before": "genesys-token-scheduler" in names()}
            again = pool.get(emulator.client_id, emulator.client_secret)
            token = again.get_token()
            result["after"] = "genesys-token-scheduler" in names()
            result["same_manager"] = again is manager
            result["same_token"] = token == parent_token
            # Its refresh runs in the child: a new token within the 2 s lifetime.
            deadline = time.monotonic() + 4
            while again.get_token() == token and time.monotonic() < deadline:
                time.sleep(0.05)
            result["refreshed"] = again.get_token() != token
            return result

        try:
            result = in_child(child)
        finally:
            forked.set()
            holder.join(5)
    assert result == {
        "before": False,
        "after": True,
        "same_manager": True,
        "same_token": True,
        "refreshed": True,
    }
