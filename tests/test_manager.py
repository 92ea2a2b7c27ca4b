"""TokenManager: single flight, stale-while-refresh, background refresh, failures, close."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import (
    FakeClock,
    HeldLookups,
    MakeManager,
    eventually,
    in_background,
    join_fetch_threads,
    run_scheduled,
)

from genesys_token import (
    ConfigurationError,
    InvalidClientError,
    ManagerClosedError,
    TokenManager,
    TokenRequestError,
    TokenTimeoutError,
)
from genesys_token.http.token_endpoint import Clock
from genesys_token.observability.events import (
    TOKEN_EXPIRED,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
)
from genesys_token.stores import MemoryStore, store_key
from genesys_token.testing import Fault, GenesysEmulator


def _events(manager: TokenManager) -> tuple[list[dict[str, Any]], threading.Condition]:
    records: list[dict[str, Any]] = []
    cond = threading.Condition()

    def listener(record: dict[str, Any]) -> None:
        with cond:
            records.append(record)
            cond.notify_all()

    manager.on("*", listener)
    return records, cond


def _wait_for(cond: threading.Condition, predicate: Any, timeout: float = 5.0) -> None:
    with cond:
        assert cond.wait_for(predicate, timeout), "timed out waiting"


def test_one_token_request_for_500_threads(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager()
    # A slow answer keeps every thread arriving while the one request is still out.
    emulator.inject(Fault(delay=0.3, passthrough=True))
    barrier = threading.Barrier(500)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait(10)
        try:
            results.append(manager.get_token())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    assert len(results) == 500
    assert len(set(results)) == 1
    assert emulator.token_requests == 1


def test_every_waiter_gets_the_one_failure(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager(client_secret="wrong-secret")
    emulator.inject(Fault(delay=0.3, passthrough=True))
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait(10)
        try:
            manager.get_token()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(errors) == 50
    assert all(isinstance(e, InvalidClientError) for e in errors)
    assert emulator.token_requests == 1


def test_wrong_secret_raises_invalid_client_after_one_request(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(client_secret="not-the-secret")
    with pytest.raises(InvalidClientError) as excinfo:
        manager.get_token()
    assert excinfo.value.status in (400, 401)
    assert excinfo.value.error == "invalid_client"
    assert "not-the-secret" not in repr(excinfo.value) + str(excinfo.value)
    assert emulator.token_requests == 1


def test_credentials_go_in_the_basic_header_only(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    make_manager().get_token()
    (record,) = emulator.token_request_log
    assert record.auth_method == "basic"
    assert record.grant_type == "client_credentials"
    assert record.scope is None


def test_scope_is_sent_only_when_configured(emulator: GenesysEmulator, make_manager: MakeManager):
    make_manager(scopes=["analytics:report:read", "users:read"]).get_token()
    assert emulator.token_request_log[0].scope == "analytics:report:read users:read"


def test_valid_token_is_served_without_network(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    first = manager.get_token()
    assert [manager.get_token() for _ in range(1000)] == [first] * 1000
    assert emulator.token_requests == 1


def test_hot_path_takes_no_lock_that_a_refresh_holds(make_manager: MakeManager):
    manager = make_manager()
    token = manager.get_token()
    held = threading.Event()
    release = threading.Event()

    def hold_every_lock() -> None:
        with manager._flight.lock, manager._gate.lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold_every_lock)
    holder.start()
    assert held.wait(5)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(manager.get_token()))
    reader.start()
    reader.join(2)
    release.set()
    holder.join(5)
    assert got == [token], "get_token blocked on a lock held by a refresh"


def test_stale_token_is_served_while_one_refresh_runs(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), background_refresh=False)
    old = manager.get_token()
    current = manager._flight.cell
    assert current is not None
    fake_clock.advance(current.refresh_at - fake_clock.monotonic + 1)  # past the refresh point
    emulator.inject(Fault(delay=0.8, passthrough=True))
    started = threading.Event()
    refresher = threading.Thread(target=lambda: (started.set(), manager.get_token()))
    refresher.start()
    assert started.wait(5)
    deadline = time.monotonic() + 5
    while not manager._flight.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert manager._flight.running, "the refresh never started"
    # Another caller during the refresh gets the still-valid token at once.
    assert manager.get_token() == old
    assert manager._flight.running, "the caller waited for the refresh"
    refresher.join(5)
    assert manager.get_token() != old
    assert emulator.token_requests == 2


def test_on_demand_mode_starts_no_thread(make_manager: MakeManager):
    before = set(threading.enumerate())
    manager = make_manager(background_refresh=False)
    manager.get_token()
    new = [t for t in threading.enumerate() if t not in before]
    assert not [t for t in new if t.name.startswith(("genesys-token-sched", "genesys-token-work"))]


def test_refresh_point_follows_the_timing_rule(make_manager: MakeManager, fake_clock: FakeClock):
    fake_clock.draw = 0.5
    manager = make_manager(clock=fake_clock.clock(), refresh_buffer=300, refresh_jitter=60)
    manager.get_token()
    current = manager._flight.cell
    assert current is not None
    lifetime = current.token.expires_in
    lead = min(300, 0.25 * lifetime) + 0.5 * min(60, 0.10 * lifetime)
    assert current.refresh_at == pytest.approx(current.token.monotonic_expiry - lead)
    # Expiry counts from when the request was sent, on the monotonic clock.
    assert current.token.monotonic_expiry == pytest.approx(fake_clock.monotonic + lifetime)


def test_background_refresh_replaces_the_token_before_expiry(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 2
    manager = make_manager()
    records, cond = _events(manager)
    first = manager.get_token()
    _wait_for(cond, lambda: sum(r["event_type"] == TOKEN_REFRESH_SUCCESS for r in records) >= 2, 5)
    assert manager.get_token() != first
    assert emulator.is_token_valid(first), "refreshed only after the old token died"


# Ten seconds of real time (five token lives): in the soak leg, without coverage.
@pytest.mark.slow
def test_two_second_tokens_stay_valid_for_ten_seconds(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 2
    manager = make_manager()
    fetched_by: list[str] = []
    acquire = manager._flight._acquire

    def watched_acquire(flight: Any, held: Any) -> Any:
        fetched_by.append(flight.reason)
        return acquire(flight, held)

    manager._flight._acquire = watched_acquire
    manager.get_token()
    fetched_by.clear()
    stop = threading.Event()
    invalid: list[str] = []
    handed_out = itertools.count()  # next() is atomic: eight threads count without a lock

    def worker() -> None:
        while not stop.is_set():
            token = manager.get_token()
            next(handed_out)
            if not emulator.is_token_valid(token):
                invalid.append(token[:4])
            time.sleep(0.01)

    threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    stop.wait(10)
    stop.set()
    for thread in threads:
        thread.join(5)
    assert next(handed_out) > 1000
    assert invalid == []
    assert emulator.token_requests >= 5
    # Only the scheduler ever went to the network: no caller waited on a token request.
    assert fetched_by
    assert set(fetched_by) == {"background"}


def test_outage_past_the_refresh_point_keeps_the_old_token(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), backoff_base=0.001, max_retries=1)
    records, cond = _events(manager)
    old = manager.get_token()
    current = manager._flight.cell
    assert current is not None
    emulator.inject(Fault.server_error(503), times=1000)
    fake_clock.advance(current.refresh_at - fake_clock.monotonic + 1)
    run_scheduled(manager)  # what the scheduler runs at the refresh point
    _wait_for(cond, lambda: any(r["event_type"] == TOKEN_REFRESH_FAILURE for r in records))
    assert manager.get_token() == old
    failure = next(r for r in records if r["event_type"] == TOKEN_REFRESH_FAILURE)
    assert failure["data"]["token_still_valid"] is True
    # Still failing later on, still the old token, and the timer keeps trying.
    failures_before = emulator.token_requests
    fake_clock.advance((current.usable_until - fake_clock.monotonic) / 2)
    run_scheduled(manager)
    _wait_for(cond, lambda: emulator.token_requests > failures_before)
    assert manager.get_token() == old
    emulator.clear_faults()
    fake_clock.advance(1)
    run_scheduled(manager)
    _wait_for(cond, lambda: manager.get_token() != old)
    assert emulator.is_token_valid(manager.get_token())


def test_expired_token_is_never_handed_out(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), background_refresh=False, max_retries=0)
    records, _ = _events(manager)
    old = manager.get_token()
    emulator.inject(Fault.server_error(503), times=10)
    fake_clock.advance(manager.token.expires_in)  # type: ignore[union-attr]
    with pytest.raises(TokenRequestError):
        manager.get_token()
    assert TOKEN_EXPIRED in [r["event_type"] for r in records]
    emulator.clear_faults()
    with pytest.raises(TokenRequestError):
        manager.get_token()  # inside the backoff: the failure again, no token request
    assert emulator.token_requests == 2
    fake_clock.advance(1.0)  # past the backoff (first failure: 1 s ceiling x draw 0.5)
    assert manager.get_token() != old


def test_forced_refresh_failure_raises_and_keeps_the_token(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(max_retries=0)
    old = manager.refresh()
    emulator.inject(Fault.server_error(500))
    with pytest.raises(TokenRequestError) as excinfo:
        manager.refresh(force=True)
    assert excinfo.value.status == 500
    assert manager.token is old
    assert manager.refresh(force=True) is not old


def test_scheduler_survives_a_refresh_that_raises_anything(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # A refresh raising SystemExit, and a listener raising it too, must not take the
    # scheduler down (#4): the next planned refresh still runs.
    emulator.token_ttl = 2
    manager = make_manager()
    manager.get_token()
    calls = [0]
    recovered = threading.Event()
    acquire = manager._flight._acquire

    def flaky(flight: Any, held: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise SystemExit("boom")
        cell = acquire(flight, held)
        recovered.set()
        return cell

    def raising_listener(record: dict[str, Any]) -> None:
        raise SystemExit("listener")

    manager._flight._acquire = flaky
    manager.on(TOKEN_REFRESH_SUCCESS, raising_listener)
    assert recovered.wait(6), "the refresh never came back after raising SystemExit"
    assert calls[0] >= 2
    deadline = time.monotonic() + 5  # the success event follows the acquisition
    while manager.metrics()["listener_errors"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.metrics()["listener_errors"] >= 1


def test_close_is_idempotent_and_stops_the_refresh(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 2
    manager = make_manager()
    manager.get_token()
    started = time.monotonic()
    manager.close()
    manager.close()
    assert time.monotonic() - started < 0.5
    requests_at_close = emulator.token_requests
    time.sleep(2.2)  # past the token's refresh point: nothing refreshes a closed manager
    assert emulator.token_requests == requests_at_close
    with pytest.raises(ManagerClosedError):
        manager.get_token()
    with pytest.raises(ManagerClosedError):
        manager.refresh(force=True)


def test_close_wakes_callers_waiting_for_a_token(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    emulator.inject(Fault(delay=3.0, passthrough=True))
    outcomes: list[tuple[float, BaseException | str]] = []
    waiting = threading.Barrier(6)

    def caller() -> None:
        waiting.wait(5)
        try:
            token: BaseException | str = manager.get_token()
        except BaseException as exc:  # noqa: BLE001
            token = exc
        outcomes.append((time.monotonic(), token))

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for thread in threads:
        thread.start()
    waiting.wait(5)

    def settled() -> bool:
        # The four callers not fetching sit in the flight condition; CPython keeps one lock
        # per waiter in ``_waiters``, the one observable sign that they all got that far.
        waiters = len(manager._flight._cond._waiters)
        return emulator.token_requests > 0 and waiters >= 5

    deadline = time.monotonic() + 5
    while not settled():
        assert time.monotonic() < deadline, "the callers never settled on the condition"
        time.sleep(0.01)
    closed_at = time.monotonic()
    manager.close()
    for thread in threads:
        thread.join(6)
    assert len(outcomes) == 5
    woken = [at for at, o in outcomes if isinstance(o, ManagerClosedError)]
    # Every caller waits (the fetch runs on a thread of its own), and all are woken at once.
    assert len(woken) == 5
    assert max(woken) - closed_at < 1.0


def test_context_manager_closes(emulator: GenesysEmulator):
    with TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    ) as manager:
        assert manager.get_token()
    assert manager.closed


def test_abandoned_manager_is_collected_and_its_refresh_stops(emulator: GenesysEmulator):
    import gc
    import weakref

    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    )
    manager.get_token()
    join_fetch_threads()
    ref = weakref.ref(manager)
    del manager
    gc.collect()
    # The scheduler's job holds the manager weakly: a forgotten manager is not kept alive.
    assert ref() is None


def test_on_demand_refresh_backs_off_during_an_outage(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), background_refresh=False, max_retries=0)
    old = manager.get_token()
    current = manager._flight.cell
    assert current is not None
    emulator.inject(Fault.server_error(503), times=1000)
    fake_clock.advance(current.refresh_at - fake_clock.monotonic + 1)
    assert [manager.get_token() for _ in range(50)] == [old] * 50
    assert emulator.token_requests == 2, "every call in the window hit the failing endpoint"
    retry_at = manager._refresher._retry_at
    assert retry_at is not None
    fake_clock.advance(retry_at - fake_clock.monotonic + 0.01)
    assert manager.get_token() == old
    assert emulator.token_requests == 3
    emulator.clear_faults()
    retry_at = manager._refresher._retry_at
    assert retry_at is not None and retry_at < current.usable_until
    fake_clock.advance(retry_at - fake_clock.monotonic + 0.01)
    assert manager.get_token() != old  # the endpoint is back: the next attempt succeeds
    assert manager._refresher._retry_at is None


def test_a_caller_that_must_not_wait_gets_the_valid_token_during_a_flight(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    old = manager.get_token()
    emulator.inject(Fault(delay=0.8, passthrough=True))
    forcing = threading.Thread(target=lambda: manager.refresh(force=True))
    forcing.start()
    deadline = time.monotonic() + 5
    while not manager._flight.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert manager._flight.running
    assert manager.get_token() == old  # a valid token: no waiting for the forced refresh
    assert manager._flight.running, "get_token waited for the flight"
    forcing.join(5)


def test_rotation_does_not_take_a_flight_that_started_before_it(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    manager.get_token()
    emulator.inject(Fault(delay=0.5, passthrough=True))
    results: list[str] = []
    forcing = threading.Thread(
        target=lambda: results.append(manager.refresh(force=True).fingerprint)
    )
    forcing.start()
    deadline = time.monotonic() + 5
    while not manager._flight.running and time.monotonic() < deadline:
        time.sleep(0.005)
    rotated = manager.rotate(drain_timeout=1)
    forcing.join(5)
    assert rotated.fingerprint != results[0]
    assert emulator.token_requests == 3


# -- caller bounds and close() ------------------------------------------------------------


def test_a_caller_that_gives_up_names_the_host_and_the_last_failure(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A slow 429 asking for 30 s: the first caller gives up before any attempt failed, the
    # second while the flight waits to retry (close() ends that wait).
    throttled = Fault.too_many_requests(retry_after=30)
    emulator.inject(dataclasses.replace(throttled, delay=0.5), times=1)
    manager = make_manager(background_refresh=False)
    host = urlsplit(emulator.token_url).netloc
    with pytest.raises(TokenTimeoutError) as early:
        manager.get_token(timeout=0.05)
    assert (early.value.host, early.value.cause) == (host, None)
    assert f"from {host} " in str(early.value) and "last failure" not in str(early.value)
    eventually(lambda: manager.metrics()["retries"] >= 1)
    with pytest.raises(TokenTimeoutError) as late:
        manager.get_token(timeout=0.05)
    assert late.value.cause == "HTTP 429 too.many.requests.retry.after"
    assert str(late.value) == (
        f"gave up waiting for a token from {host} (the token request goes on for the others;"
        " last failure: HTTP 429 too.many.requests.retry.after)"
    )


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 10**400])
def test_get_token_with_no_bound_of_its_own_on_a_cold_manager_returns_a_token(
    emulator: GenesysEmulator, make_manager: MakeManager, timeout: float
) -> None:
    manager = make_manager()
    assert emulator.is_token_valid(manager.get_token(timeout=timeout))


@pytest.mark.parametrize("timeout", [float("nan"), -1, "1", True])
def test_get_token_with_a_bad_timeout_is_a_configuration_error(
    make_manager: MakeManager, timeout: Any
) -> None:
    manager = make_manager()
    with pytest.raises(ConfigurationError) as caught:
        manager.get_token(timeout=timeout)
    assert caught.value.field == "timeout"


def test_a_flight_ending_while_close_runs_installs_nothing(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # The flight's answer is in hand and it is about to install when close() runs: close()
    # marks the state closed and parks the cell in one step under the state's lock, and the
    # flight installs only if it finds the state open under that lock; a closed manager
    # never hands out a token from its hot path.
    manager = make_manager()
    answered, go_on = threading.Event(), threading.Event()
    acquire = manager._flight._acquire

    def held_acquire(*args: Any) -> Any:
        cell = acquire(*args)
        answered.set()
        go_on.wait(5)
        return cell

    manager._flight._acquire = held_acquire

    def call() -> None:
        with contextlib.suppress(ManagerClosedError):
            manager.get_token(timeout=5)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert answered.wait(5)
    manager.close()
    go_on.set()  # the flight finishes now, after close()
    join_fetch_threads()
    caller.join(5)
    with pytest.raises(ManagerClosedError):
        manager.get_token()
    assert manager.token is None


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


def test_close_interrupts_a_wait_for_the_store_lock(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    store = MemoryStore()
    manager = make_manager(store=store)
    manager.get_token()
    key = store_key(emulator.client_id, emulator.token_url, ())
    held, release = threading.Event(), threading.Event()

    def peer_holding_the_lock() -> None:
        with store.lock(key, 1) as ok:
            assert ok
            held.set()
            release.wait(10)

    peer = threading.Thread(target=peer_holding_the_lock)
    peer.start()
    assert held.wait(5)
    outcome: list[BaseException | None] = []

    def force() -> None:
        try:
            manager.refresh(force=True)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    forcing = threading.Thread(target=force)
    forcing.start()
    eventually(lambda: manager._flight is not None)
    started = time.monotonic()
    manager.close()
    forcing.join(3)
    release.set()
    peer.join(5)
    assert time.monotonic() - started < 2.5
    assert len(outcome) == 1 and isinstance(outcome[0], ManagerClosedError)
    assert emulator.token_requests == 1, "a closed manager still requested a token"


# -- the refresh point ---------------------------------------------------------------------


def test_a_small_refresh_buffer_never_leaves_a_token_unrefreshed(
    make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), refresh_buffer=0, refresh_jitter=0)
    manager.get_token()
    current = manager._flight.cell
    assert current is not None
    assert current.refresh_at <= current.usable_until


def test_a_stored_token_is_scheduled_once(emulator: GenesysEmulator, make_manager: MakeManager):
    store = MemoryStore()
    make_manager(store=store).get_token()
    draws = [0]

    def counting_draw() -> float:
        draws[0] += 1
        return 0.5

    second = make_manager(
        store=store, clock=Clock(monotonic=time.monotonic, time=time.time, random=counting_draw)
    )
    second.get_token()
    assert emulator.token_requests == 1
    assert draws[0] == 1, "the refresh point of a stored token was drawn twice"
