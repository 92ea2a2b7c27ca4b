"""The process-wide refresh scheduler: deadline order, dispatch only, hangs, raises, fork.

The first tests drive a private :class:`Scheduler` with plain jobs; the later ones run real
managers against the emulator on the process-wide one.
"""

from __future__ import annotations

import heapq
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import MakeManager, eventually, in_child, join_fetch_threads, poll

from genesys_token import TokenManager, TokenManagerPool, TokenTimeoutError
from genesys_token.core.scheduler import Job, Scheduler, elapsed, scheduler
from genesys_token.manager import adapter_port
from genesys_token.observability.events import TOKEN_REFRESH_SUCCESS
from genesys_token.testing import Fault, GenesysEmulator


def test_due_jobs_run_earliest_deadline_first() -> None:
    sched = Scheduler()
    order: list[float] = []
    done = threading.Event()
    delays = [0.05, 0.01, 0.04, 0.02, 0.03]  # scheduled in this order, due in another

    def run(delay: float) -> None:
        order.append(delay)
        if len(order) == len(delays):
            done.set()

    with sched._lock:  # all five come due while the scheduler cannot look
        for delay in delays:
            job = Job(lambda d=delay: run(d), f"job-{delay}")
            job.owner, job.ticket, job.deadline = sched, next(sched._tickets), elapsed() + delay
            sched._live += 1
            heapq.heappush(sched._heap, (job.deadline, job.ticket, job))
        sched._ensure_thread()
        time.sleep(0.1)
    assert done.wait(2)
    assert order == sorted(delays)


def test_the_scheduler_only_dispatches_one_thread_runs_every_job() -> None:
    sched = Scheduler()
    ran: list[str] = []
    done = threading.Event()

    def run(i: int) -> None:
        ran.append(threading.current_thread().name)
        if len(ran) == 20:
            done.set()

    for i in range(20):
        sched.schedule(Job(lambda i=i: run(i), f"job-{i}"), 0.0)
    assert done.wait(2)
    assert set(ran) == {"genesys-token-scheduler"}
    assert poll(lambda: sched.threads == 0)


def test_a_scheduler_thread_that_cannot_start_is_started_by_the_next_schedule(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Under a pids limit Thread.start raises: schedule() must not (its caller may be a flight
    # settling under its lock), the job must wait in the heap, and the next schedule() must
    # bring the thread back.
    sched = Scheduler()
    first, second = threading.Event(), threading.Event()
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    later = Job(lambda: None, "later")
    with caplog.at_level(logging.ERROR, logger="genesys_token.core.scheduler"):
        sched.schedule(Job(first.set, "first"), 0.0)
        sched.schedule(later, 3600.0)
    assert sched.threads == 0 and sched.pending == 2
    assert len([r for r in caplog.records if "cannot start" in r.getMessage()]) == 1
    monkeypatch.setattr(threading.Thread, "start", real_start)
    sched.schedule(Job(second.set, "second"), 0.0)
    assert first.wait(2) and second.wait(2), "the jobs of the failed start never ran"
    sched.cancel(later)
    assert poll(lambda: sched.threads == 0)


def test_a_job_that_raises_anything_is_logged_and_the_scheduler_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sched = Scheduler()
    after = threading.Event()

    def raises(exc: BaseException) -> Callable[[], None]:
        def run() -> None:
            raise exc

        return run

    with caplog.at_level(logging.ERROR, logger="genesys_token.core.scheduler"):
        sched.schedule(Job(raises(RuntimeError("boom")), "runtime"), 0.0)
        sched.schedule(Job(raises(SystemExit(3)), "exit"), 0.01)
        sched.schedule(Job(raises(KeyboardInterrupt()), "interrupt"), 0.02)
        sched.schedule(Job(after.set, "after"), 0.03)
        assert after.wait(2), "a job after the raising ones never ran"
    assert len([r for r in caplog.records if "raised" in r.getMessage()]) == 3


def test_rescheduling_replaces_the_deadline_and_the_threads_end_when_no_job_is_left() -> None:
    sched = Scheduler()
    runs: list[float] = []
    job = Job(lambda: runs.append(time.monotonic()), "job")
    sched.schedule(job, 3600.0)
    sched.schedule(job, 0.0)  # the 3600 s entry goes stale
    assert poll(lambda: len(runs) == 1)
    # No live job: the scheduler thread ends at once.
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
        timeout=(0.5, 1.0),
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
        # while the hanging refresh (due at ~1.4 s too) holds its own flight thread.
        assert poll(lambda: all(s.count("background") >= 2 for s in seen), 5.0), seen
        assert all(m.get_token() for m in managers)
    assert hanging.closed


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
    # 4-second tokens: with 2-second ones a loaded machine took the child past the token's
    # hand-out margin before its first get_token (a new token: same_token False).
    emulator.token_ttl = 4
    with TokenManagerPool(token_url=emulator.token_url, api_base_url=emulator.api_base_url) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret)
        manager.get_token()
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
            # The token the parent held at the fork: under load its scheduler may have
            # replaced the one it got above before the fork.
            at_fork = manager.token
            again = pool.get(emulator.client_id, emulator.client_secret)
            token = again.get_token()
            result["after"] = "genesys-token-scheduler" in names()
            result["same_manager"] = again is manager
            result["same_token"] = at_fork is not None and token == at_fork.access_token
            # Its refresh runs in the child: a new token within the 4 s lifetime.
            deadline = time.monotonic() + 8
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


def test_hanging_login_hosts_and_secret_sources_starve_no_other_orgs_refresh(
    emulator: GenesysEmulator,
) -> None:
    # 8 orgs whose token endpoint stops answering and 8 whose secret source hangs (a vault
    # client with no timeout), next to 3 healthy orgs on 2 s tokens: every healthy refresh
    # is the scheduler's, ahead of time, and no healthy get_token() waits for the network;
    # still so once the hanging managers are closed.
    release = threading.Event()
    hang_sources = threading.Event()

    def source(secret: str) -> Callable[[], str]:
        def read() -> str:
            if hang_sources.is_set():
                release.wait(30)
            return secret

        return read

    healthy_ids = [f"healthy-{i}" for i in range(3)]
    login_ids = [f"login-hangs-{i}" for i in range(8)]
    source_ids = [f"source-hangs-{i}" for i in range(8)]
    for client in [*healthy_ids, *login_ids, *source_ids]:
        emulator.add_client(client, f"{client}-secret", token_ttl=2)
    options: dict[str, Any] = {
        "token_url": emulator.token_url,
        "api_base_url": emulator.api_base_url,
        "timeout": (0.5, 1.0),
        "max_retries": 1,
    }
    healthy = [TokenManager(c, f"{c}-secret", **options) for c in healthy_ids]
    hanging = [TokenManager(c, f"{c}-secret", **options) for c in login_ids]
    hanging += [TokenManager(c, source(f"{c}-secret"), **options) for c in source_ids]
    seen = [_refreshes(m) for m in healthy]
    waits: list[float] = []
    stop = threading.Event()

    def call_healthy() -> None:
        while not stop.is_set():
            for manager in healthy:
                started = time.monotonic()
                manager.get_token()
                waits.append(time.monotonic() - started)
            stop.wait(0.01)

    try:
        for manager in [*healthy, *hanging]:
            manager.get_token()
        for client in login_ids:
            emulator.inject(Fault(delay=30, passthrough=True), times=None, client_id=client)
        hang_sources.set()
        caller = threading.Thread(target=call_healthy)
        caller.start()
        # 2 s tokens refresh at ~1.4 s: two rounds each while all 16 hang.
        assert poll(lambda: all(s.count("background") >= 2 for s in seen), 5.0), seen
        for manager in hanging:
            manager.close()
        before = [s.count("background") for s in seen]
        assert poll(
            lambda: all(s.count("background") > n for s, n in zip(seen, before, strict=True)), 3.0
        )
        stop.set()
        caller.join(5)
        # After the first token (a caller's, cold), every refresh was the scheduler's.
        assert all(reason == "background" for s in seen for reason in s[1:]), seen
        # No caller fetched (that is the check above); none was held either (a generous
        # bound: 40 threads on 2 cores see GIL hiccups of a tenth of a second).
        assert max(waits) < 0.5, f"a healthy caller waited {max(waits):.3f}s"
    finally:
        stop.set()
        release.set()
        for manager in [*healthy, *hanging]:
            manager.close()
        join_fetch_threads(5.0)


def test_background_refresh_resumes_after_threads_fail_to_start(
    emulator: GenesysEmulator, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a pids limit Thread.start raises "can't start new thread". Four refresh attempts
    # fail that way; the scheduler survives, counts stay true, and background refresh
    # resumes once threads can start again (well within one 2 s token life).
    emulator.token_ttl = 2
    manager = make_manager()
    seen = _refreshes(manager)
    first = manager.get_token()
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith("genesys-token-fetch") and len(refused) < 4:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    assert poll(lambda: "background" in seen, 8.0), "background refresh never resumed"
    assert len(refused) == 4
    assert manager.get_token() != first
    assert scheduler().threads == 1
    assert manager.metrics()["errors"] >= 4


def test_a_refresh_point_that_finds_a_callers_flight_running_looks_again_at_its_deadline(
    make_manager: MakeManager, emulator: GenesysEmulator, fake_clock: Any
) -> None:
    # A caller's flight hangs (a vault call with no timeout) and its caller gave up: nobody
    # waits on it, so nobody would abandon it. The refresh point that finds it running must
    # come back at its deadline, or background refresh stops until some caller comes.
    from genesys_token.core.refresher import SCHEDULER_SLACK

    release = threading.Event()
    calls: list[int] = []

    def vault() -> str:
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
        return emulator.client_secret

    manager = make_manager(
        client_secret=vault, clock=fake_clock.clock(), timeout=(0.1, 0.1), retry_deadline=0.1
    )
    try:
        first = manager.get_token()
        with pytest.raises(TokenTimeoutError):
            adapter_port(manager).replace_rejected(
                first, timeout=0.1
            )  # its flight hangs in the source
        flight = manager._flight.current
        assert flight is not None and not flight.done
        cell = manager._flight.cell
        fake_clock.advance((cell.refresh_at + cell.usable_until) / 2 - fake_clock.monotonic)
        manager._scheduled_refresh()  # due now; the caller's flight still runs
        job = manager._refresher.job
        expected = flight.deadline - time.monotonic() + SCHEDULER_SLACK
        assert job.ticket is not None
        assert abs((job.deadline - elapsed()) - expected) < 0.25
    finally:
        release.set()


def test_close_racing_a_scheduled_rearm_leaves_nothing_scheduled(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
):
    # Defect close_races_arm: close() between arm()'s closed-check and its schedule left a
    # closed manager's job (and the scheduler thread) alive.
    manager = make_manager()
    manager.get_token()
    job = manager._refresher.job
    assert job is not None
    sched = scheduler()
    schedule = sched.schedule
    entered, closers = threading.Event(), []

    def closing() -> None:
        entered.set()
        manager.close()

    def hooked(target: Any, delay: float) -> None:
        # Right after arm()'s closed-check: close() runs to its end here unless arm() holds
        # it off.
        if target is job and not closers and sys._getframe(1).f_code.co_name == "arm":
            closer = threading.Thread(target=closing)
            closer.start()
            closers.append(closer)  # after start(): a thread not started is not alive
            assert entered.wait(5)
            closer.join(0.2)
        schedule(target, delay)

    monkeypatch.setattr(sched, "schedule", hooked)
    # A worker runs the job on a stale plan (the token is fresh): it re-arms.
    schedule(job, 0.0)
    eventually(lambda: closers and not closers[0].is_alive())
    assert manager.closed
    assert job.ticket is None


def test_the_scheduler_heap_stays_bounded_under_rearms_and_closed_managers(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Defect scheduler_heap_growth: stale entries stayed until their deadline (up to a day).
    emulator.token_ttl = 86400
    keep = make_manager()
    keep.get_token()
    s = scheduler()
    for _ in range(200):
        keep.refresh(force=True)
    assert len(s._heap) <= 2 * s._live + 65
    for _ in range(100):
        manager = make_manager()
        manager.get_token()
        manager.close()
    assert len(s._heap) <= 2 * s._live + 65
