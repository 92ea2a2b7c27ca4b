"""Regression tests for the defects the review proved (scripts in the review notes), fixed in
3cb87bb: one test per defect, named after the behaviour it guards.

Each test forces its interleaving with events, hooks on the manager's parts and injected
clocks; none relies on a stress loop. (The redirect leg that was not counted is guarded by
test_rotation.py::test_a_redirected_call_stays_counted_through_its_second_leg.)
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from typing import Any

import pytest
from conftest import (
    FakeClock,
    HeldLookups,
    MakeManager,
    TricklingServer,
    eventually,
    in_background,
    in_child,
    join_fetch_threads,
)

from genesys_token import (
    InvalidClientError,
    ManagerClosedError,
    RateLimitedError,
    TokenManager,
    TokenRequestError,
    TokenTimeoutError,
)
from genesys_token.core.scheduler import scheduler
from genesys_token.core.single_flight import FetchedAfter
from genesys_token.http import connections as _http
from genesys_token.observability.events import TOKEN_REFRESH_SUCCESS, TOKEN_ROTATION_STARTED
from genesys_token.stores import MemoryStore
from genesys_token.testing import Fault, GenesysEmulator

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


# -- storms: callers with no valid token -------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=429, headers={"Retry-After": "120"}),
        Fault.rate_limited_token(retry_after=120),
    ],
    ids=["429", "genesys-400"],
)
def test_callers_without_a_token_honour_retry_after(
    emulator: GenesysEmulator, make_manager: MakeManager, fault: Fault
):
    # Defect storm_retry_after: every get_token() without a token ignored Retry-After.
    emulator.inject(fault, times=None)
    manager = make_manager()
    errors = []
    for _ in range(10):
        with pytest.raises(RateLimitedError) as excinfo:
            manager.get_token(timeout=5)
        errors.append(excinfo.value)
    assert emulator.token_requests <= 2
    assert all(error.retry_after == 60 for error in errors)  # capped at max_retry_after


def test_callers_without_a_token_wait_out_the_failure_backoff(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    # Defect storm_401_and_503 (b): a 503 outage with no token made a request per call.
    emulator.inject(Fault.server_error(503), times=None)
    manager = make_manager(max_retries=0, clock=fake_clock.clock())
    for _ in range(20):
        with pytest.raises(TokenRequestError, match="503"):
            manager.get_token(timeout=5)
    assert emulator.token_requests == 1  # the rest got the failure within its backoff
    fake_clock.advance(0.6)  # past the first backoff (1 s ceiling x draw 0.5)
    with pytest.raises(TokenRequestError, match="503"):
        manager.get_token(timeout=5)
    assert emulator.token_requests == 2


# -- fork ----------------------------------------------------------------------------------


@needs_fork
def test_dropping_a_manager_in_a_child_keeps_the_others_refreshing(emulator: GenesysEmulator):
    # Defect fork_finalizer_kills_scheduler: the parent job's finalizer decremented the
    # child's scheduler, which then stopped every other manager's refresh.
    emulator.token_ttl = 1.0
    options = {"token_url": emulator.token_url, "api_base_url": emulator.api_base_url}
    # Not make_manager: its list would keep `a` alive in the child.
    held = [TokenManager(emulator.client_id, emulator.client_secret, **options) for _ in "ab"]
    b = held[1]
    try:
        for manager in held:
            manager.get_token()  # both scheduled in the parent

        def child() -> dict[str, Any]:
            for manager in held:
                manager.get_token()  # first use in the child: both re-arm
            first = b.get_token()
            held[0].close()
            del held[0]  # the last reference: a's finalizers run now
            gc.collect()
            sched, job = scheduler(), b._refresher.job
            assert job is not None
            with sched._lock:  # b's job is out of the heap while its refresh runs (1 s tokens)
                live = sched._live + (job.ticket is None)
            deadline = time.monotonic() + 5
            while b.get_token() == first and time.monotonic() < deadline:
                time.sleep(0.02)
            return {"live": live, "refreshed": b.get_token() != first}

        assert in_child(child) == {"live": 1, "refreshed": True}
    finally:
        for manager in held:
            manager.close()


@needs_fork
def test_a_child_forked_while_a_thread_checks_the_cooldown_gets_tokens(
    make_manager: MakeManager,
):
    # Defect fork_rejections_lock_inherited: the credentials cool-down lock was copied held.
    manager = make_manager()
    inside, leave = threading.Event(), threading.Event()

    def in_check() -> None:
        with manager._refresher.rejected._lock:  # a thread inside RejectedCredentials.check()
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=in_check)
    holder.start()
    try:
        assert inside.wait(5)

        def child() -> dict[str, Any]:
            caller, got = in_background(lambda: manager.get_token(timeout=2))
            caller.join(4)
            return {"returned": not caller.is_alive(), "token": isinstance(got and got[0], str)}

        result = in_child(child)
    finally:
        leave.set()
        holder.join(5)
    assert result == {"returned": True, "token": True}


@needs_fork
def test_replace_rejected_as_first_use_in_a_child_rearms_the_refresh(
    make_manager: MakeManager,
):
    # Defect fork_first_use_paths: replace_rejected() of a stale 401 as the child's first
    # use returned the current token without bringing the refresh back.
    manager = make_manager()
    stale = manager.get_token()
    current = manager.refresh(force=True).access_token

    def child() -> dict[str, Any]:
        got = manager.replace_rejected(stale).access_token
        job = manager._refresher.job
        assert job is not None
        return {
            "current": got == current,
            "armed": job.ticket is not None and job.owner is scheduler(),
        }

    assert in_child(child) == {"current": True, "armed": True}


# -- the token endpoint ------------------------------------------------------------------


def test_a_token_endpoint_trickling_its_headers_cannot_hold_the_flight(
    make_manager: MakeManager,
):
    # Defect token_endpoint_trickled_headers: no per-read timeout fired, the flight ran forever.
    server = TricklingServer(gap=0.05)
    try:
        manager = make_manager(
            token_url=f"http://127.0.0.1:{server.port}/oauth/token",
            api_base_url=f"http://127.0.0.1:{server.port}",
            timeout=(0.2, 0.3),  # the watchdog: 0.2 + 2 x 0.3 + 1 = 1.8 s
            max_retries=0,
            retry_deadline=1.0,
        )
        started = time.monotonic()
        with pytest.raises(TokenRequestError) as excinfo:
            manager.get_token(timeout=4)
        assert not isinstance(excinfo.value, TokenTimeoutError)
        # A timeout (retryable), not the "2xx without a token" that the headers cut at the
        # EOF look like.
        assert type(excinfo.value) is TokenRequestError and excinfo.value.retryable
        assert "timed out" in str(excinfo.value)
        assert time.monotonic() - started < 3.5
        eventually(lambda: not manager._flight.running, timeout=1)
        join_fetch_threads()
    finally:
        server.stop()


def test_close_during_a_connect_with_no_socket_yet_still_abandons_the_request(
    emulator: GenesysEmulator, make_manager: MakeManager, held_lookups: HeldLookups
):
    # close() while the connection has no socket yet (a name lookup): once connected, the
    # abandoned request must not go out.
    manager = make_manager(max_retries=0)
    held_lookups.port = emulator.port
    caller, got = in_background(manager.get_token)
    assert held_lookups.waiting.wait(5)
    manager.close()
    caller.join(5)
    assert isinstance(got[0], ManagerClosedError)
    held_lookups.release.set()  # the connect completes now, after close()
    join_fetch_threads()
    assert emulator.token_requests == 0  # abandoned before it was sent: never sent


# -- hand-outs and rotation ----------------------------------------------------------------


def test_a_failed_on_demand_refresh_never_hands_out_a_token_past_its_usable_until(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    # Defect handout_past_usable_until: slow() returned the cell read before the refresh.
    manager = make_manager(background_refresh=False, max_retries=0, clock=fake_clock.clock())
    first = manager.get_token()
    cell = manager._flight.cell
    assert cell is not None
    fake_clock.advance(cell.refresh_at - fake_clock.monotonic + 0.1)  # in the refresh window
    emulator.inject(Fault(status=503, delay=0.3))
    caller, got = in_background(manager.get_token)
    eventually(lambda: emulator.token_requests == 2)  # the refresh is under way...
    fake_clock.advance(cell.usable_until - fake_clock.monotonic + 0.1)  # ...and slow
    caller.join(5)
    assert isinstance(got[0], TokenRequestError), got
    assert got[0] != first


def test_rotate_retires_the_token_its_new_token_replaced(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Defect rotate_retires_wrong_token: a refresh landing as rotate() began left its token
    # (T2) undrained and unrevoked while T1, replaced already, was revoked. Both are older
    # than the rotation's token: both are retired.
    manager = make_manager()
    t1 = manager.get_token()
    seen: dict[str, Any] = {}
    in_use = threading.Event()

    def use_t2() -> None:
        with manager.in_flight() as use:
            seen["use"] = use
            in_use.set()
            seen["pending"] = use.rotation_pending.wait(3)

    def on_started(record: dict[str, Any]) -> None:
        if "t2" not in seen:
            seen["t2"] = manager.refresh(force=True).access_token  # a refresh lands now
            seen["user"] = threading.Thread(target=use_t2)
            seen["user"].start()
            assert in_use.wait(5)

    manager.on(TOKEN_ROTATION_STARTED, on_started)
    t3 = manager.rotate(drain_timeout=5, revoke_previous=True).access_token
    seen["user"].join(5)
    t2 = seen["t2"]
    assert seen["use"].token == t2
    assert seen["pending"] is True  # the use of T2 was told, and waited for
    assert t3 not in (t1, t2)
    assert emulator.revoked_tokens == {t1, t2}
    assert not emulator.is_token_valid(t2)


def test_a_forced_refresh_never_returns_the_stores_token(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    # Defect forced_refresh_takes_store_token: a store-using flight that began just before
    # the forced refresh joined it satisfied it with the peer's stored token.
    store = MemoryStore()
    options = {"store": store, "background_refresh": False, "clock": fake_clock.clock()}
    m1, m2 = make_manager(**options), make_manager(**options)
    t1 = m1.get_token()
    cell = m1._flight.cell
    assert cell is not None
    fake_clock.advance(cell.refresh_at - fake_clock.monotonic + 0.1)  # m1's token is due
    t2 = m2.refresh(force=True).access_token  # the peer saved a new one
    original = m1._flight.obtain

    def obtain(want: Any, **kwargs: Any) -> Any:
        if isinstance(want, FetchedAfter):
            use = m1.try_begin_use()  # another thread, at this instant: a store-using flight
            if use is not None:
                use.end()
        return original(want, **kwargs)

    m1._flight.obtain = obtain  # type: ignore[method-assign]
    before = emulator.token_requests
    got = m1.refresh(force=True).access_token
    assert emulator.token_requests == before + 1
    assert got not in (t1, t2)


def test_set_credentials_during_a_rejected_flight_does_not_cool_down_the_new_secret(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Defect set_credentials_cooldown_revived: the old secret's invalid_client, arriving
    # after set_credentials(), put the new, good credentials in a cool-down.
    manager = make_manager(client_secret="wrong-secret")
    emulator.inject(Fault(delay=0.3, passthrough=True), times=1)  # the old-secret request
    caller, got = in_background(manager.get_token)
    eventually(lambda: emulator.token_requests == 1)
    emulator.add_client("second-client", "second-secret-value")
    manager.set_credentials("second-secret-value", client_id="second-client")
    caller.join(5)
    assert isinstance(got[0], InvalidClientError)
    assert emulator.is_token_valid(manager.get_token())
    assert emulator.token_requests == 2


# -- waiters, listeners, close -------------------------------------------------------------


def test_a_slow_listener_does_not_hold_the_callers_waiting_on_the_flight(
    make_manager: MakeManager,
):
    # Defect listener_holds_waiters: listeners ran before the waiters woke.
    manager = make_manager()
    in_listener, release = threading.Event(), threading.Event()
    waiting, go = threading.Semaphore(0), threading.Event()

    def slow_listener(record: dict[str, Any]) -> None:
        in_listener.set()
        release.wait(5)

    manager.on(TOKEN_REFRESH_SUCCESS, slow_listener)
    acquire, wait = manager._flight._acquire, manager._flight._wait

    def gated_acquire(*args: Any) -> Any:
        assert go.wait(5)
        return acquire(*args)

    def counted_wait(*args: Any) -> None:
        waiting.release()
        wait(*args)

    manager._flight._acquire = gated_acquire  # type: ignore[method-assign]
    manager._flight._wait = counted_wait  # type: ignore[method-assign]
    callers = [in_background(manager.get_token) for _ in range(5)]
    try:
        for _ in callers:
            assert waiting.acquire(timeout=5)  # every caller waits on the one flight
        go.set()
        assert in_listener.wait(5)
        deadline = time.monotonic() + 2
        for thread, _ in callers:
            thread.join(max(0.0, deadline - time.monotonic()))  # the listener still runs
        assert [out for _, out in callers if not out] == []
        assert all(isinstance(out[0], str) for _, out in callers)
    finally:
        release.set()
        for thread, _ in callers:
            thread.join(5)


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
            closers.append(closer)
            closer.start()
            assert entered.wait(5)
            closer.join(0.2)
        schedule(target, delay)

    monkeypatch.setattr(sched, "schedule", hooked)
    # A worker runs the job on a stale plan (the token is fresh): it re-arms.
    schedule(job, 0.0)
    eventually(lambda: closers and not closers[0].is_alive())
    assert manager.closed
    assert job.ticket is None


# -- the scheduler -------------------------------------------------------------------------


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


# -- the shared pool ---------------------------------------------------------------------


def test_close_of_one_manager_never_cuts_a_connection_another_took_from_the_pool(
    emulator: GenesysEmulator, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
):
    # Defect cancel_cuts_other_managers_conn: a pooled connection kept its last user's tag,
    # so that manager's close() shut the socket of the manager using it now.
    a, b = make_manager(), make_manager()
    a_read, a_resume = threading.Event(), threading.Event()
    attempt = a._transport._attempt

    def a_attempt(*args: Any) -> Any:
        response = attempt(*args)  # read: its connection is back in the pool, tag and all
        a_read.set()
        assert a_resume.wait(5)
        return response

    a._transport._attempt = a_attempt  # type: ignore[method-assign]
    taken, b_resume, reused = threading.Event(), threading.Event(), []
    get_conn = _http._HTTPPool._get_conn

    def hooked_get_conn(self: Any, timeout: float | None = None) -> Any:
        conn = get_conn(self, timeout)
        if a_read.is_set() and not taken.is_set():
            reused.append(conn is not None)
            taken.set()
            assert b_resume.wait(5)
        return conn

    monkeypatch.setattr(_http._HTTPPool, "_get_conn", hooked_get_conn)
    a_caller, _ = in_background(a.get_token)
    try:
        assert a_read.wait(5)
        b_caller, b_got = in_background(b.get_token)
        assert taken.wait(5)
        assert reused == [True]  # B took A's connection from the pool
        a.close()  # A's attempt is still open: its close() cuts what A's scope holds
    finally:
        a_resume.set()
        b_resume.set()
        a_caller.join(5)
    b_caller.join(10)
    assert isinstance(b_got[0], str), b_got
    assert b.metrics()["retries"] == 0
    assert emulator.token_requests == 2
