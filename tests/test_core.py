"""The acquisition core at its edges: single flight, the store and its lock, hand-outs
near expiry, close() during a request, forks, caller bounds; and the guards of each.

Each test forces its interleaving (events, a store lock held by the test, an injected clock,
a hook in the fetch path) instead of hoping a stress loop hits it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    FakeClock,
    MakeManager,
    eventually,
    in_background,
    join_fetch_threads,
    poll,
    read_child,
    run_scheduled,
)

from genesys_token import (
    InvalidClientError,
    ManagerClosedError,
    TokenManager,
    TokenRequestError,
    TokenTimeoutError,
)
from genesys_token.core.clock import SYSTEM_CLOCK
from genesys_token.core.single_flight import FetchedAfter
from genesys_token.manager import adapter_port
from genesys_token.stores import FileStore, MemoryStore, store_key
from genesys_token.stores._seal import Sealer
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.token import Token

# 1. Cross-client token ------------------------------------------------------------------


def test_set_credentials_while_waiting_for_the_store_lock_saves_no_foreign_token(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.add_client("client-b", "secret-b")
    store = MemoryStore()
    manager = make_manager(store=store, background_refresh=False)
    key_a = store_key(emulator.client_id, manager.token_url, ())
    with store.lock(key_a, 1) as held:  # a peer holds A's lock: the acquisition waits
        assert held
        waiter, got = in_background(manager.get_token)
        time.sleep(0.2)  # the acquisition is parked on the lock (a shorter wait only weakens)
        manager.set_credentials("secret-b", client_id="client-b")
    waiter.join(10)
    assert isinstance(got[0], str)
    # The acquisition ran on ONE snapshot: A's credentials, saved under A's key.
    assert [r.client_id for r in emulator.token_request_log] == [emulator.client_id]
    stored = store.load(
        key_a,
        now_monotonic=SYSTEM_CLOCK.monotonic(),
        now_wall=time.time(),
        sealer=Sealer(emulator.client_secret, key_a),  # A's entry opens to A's secret only
    )
    assert stored is not None and stored.access_token == got[0]


# 2. A wall clock stepping back does not revive a stored token ----------------------------


def test_a_wall_clock_step_back_does_not_revive_an_expired_stored_token(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock, tmp_path: Path
):
    emulator.token_ttl = 60
    first = make_manager(store=FileStore(tmp_path), clock=fake_clock.clock())
    old = first.get_token()
    fake_clock.advance(120)  # the token is dead (in real life too: the emulator agrees soon)
    fake_clock.wall -= 3600  # NTP, a VM restore: the wall clock steps back an hour
    second = make_manager(store=FileStore(tmp_path), clock=fake_clock.clock())
    assert second.get_token() != old
    assert emulator.token_requests == 2


# 3. A store whose unlock raises --------------------------------------------------------


class _UnlockRaises(MemoryStore):
    @contextlib.contextmanager
    def lock(self, key: str, timeout: float, *, lease: float | None = None) -> Iterator[bool]:
        yield True
        raise ConnectionError("the store went away during unlock")


def test_a_store_whose_unlock_raises_costs_neither_the_token_nor_a_foreign_error(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(store=_UnlockRaises(), background_refresh=False)
    token = manager.get_token()
    assert emulator.is_token_valid(token)
    assert manager.metrics()["store_errors"] == 1


# 5. close() during a token request -----------------------------------------------------


def test_close_during_a_token_request_returns_at_once_and_installs_nothing(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(timeout=(0.3, 0.3))
    emulator.inject(Fault(delay=3.0, passthrough=True))
    caller, got = in_background(manager.get_token)
    eventually(lambda: emulator.token_requests == 1)
    started = time.monotonic()
    manager.close()
    assert time.monotonic() - started < 0.5
    caller.join(2)
    assert isinstance(got[0], ManagerClosedError)
    # The abandoned request ends by its own deadline (0.3 + 2 x 0.3 + 1 = 1.9 s after it
    # began), not after the 3 s answer, and makes no other request.
    for thread in threading.enumerate():
        if thread.name.startswith("genesys-token-fetch"):
            thread.join(2.5)
            assert not thread.is_alive(), "the abandoned token request still runs"
    assert manager.token is None
    assert emulator.token_requests == 1


# 6. A token that arrives past its usable-until -----------------------------------------


def test_a_token_arriving_past_its_usable_until_is_a_failure_not_a_hand_out(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 1
    manager = make_manager(background_refresh=False, max_retries=0)
    emulator.inject(Fault(delay=1.0, passthrough=True))
    with pytest.raises(TokenRequestError, match="too late"):
        manager.get_token()
    assert manager.token is None


# 7. Fork: the refresh comes back on the hot path; a given session is not shared ---------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_that_only_uses_the_hot_path_still_gets_its_refresh(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 2
    manager = make_manager()
    manager.get_token()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read_end)
            # One call (the hot path, unless a loaded machine forked past the refresh
            # point: then this call refreshes and the next refresh is the one awaited).
            seen = manager.get_token()
            # Then no call at all: only a background refresh can replace ``seen``.
            refreshed = poll(lambda: getattr(manager.token, "access_token", seen) != seen, 5.0)
            os.write(write_end, b"refreshed" if refreshed else b"stale")
        finally:
            os._exit(0)
    os.close(write_end)
    assert read_child(pid, read_end) == b"refreshed"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_does_not_reuse_the_parents_connections_of_a_given_session(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    session = requests.Session()
    manager = make_manager(session=session)
    manager.get_token()
    parent_adapter = id(session.adapters["http://"])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        fresh = id(session.adapters["http://"]) != parent_adapter
        token = manager.refresh(force=True).access_token
        os.write(write_end, b"ok" if fresh and token else b"reused")
        os._exit(0)
    os.close(write_end)
    assert read_child(pid, read_end) == b"ok"
    assert id(session.adapters["http://"]) == parent_adapter


# 8. A forced refresh after set_credentials does not join a fetch with the old secret ----


def test_forced_refresh_after_set_credentials_does_not_take_the_old_secrets_result(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(client_secret="the-old-secret", max_retries=0)
    emulator.inject(Fault(delay=0.5, passthrough=True))
    old_fetch, old_result = in_background(manager.get_token)
    eventually(lambda: emulator.token_requests == 1)
    manager.set_credentials(emulator.client_secret)
    token = manager.refresh(force=True)
    assert emulator.is_token_valid(token.access_token)
    old_fetch.join(5)
    # The old fetch was rejected; reading the credentials again right after the
    # rejection, it may retry at once with the new secret (one request more, no error).
    assert isinstance(old_result[0], str | InvalidClientError)


# 9. A refresh planned on stale state costs no request -----------------------------------


def test_a_scheduled_refresh_planned_on_stale_state_sends_no_request(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    manager = make_manager(clock=fake_clock.clock(), background_refresh=False)
    manager.get_token()
    cell = manager._flight.cell
    assert cell is not None
    fake_clock.advance(cell.refresh_at - fake_clock.monotonic + 1)  # due
    manager.refresh(force=True)  # someone else refreshed in between
    before = emulator.token_requests
    run_scheduled(manager)  # the job planned for the old token's refresh point
    assert emulator.token_requests == before


# 10. Each waiter has its own bound; giving up does not cancel the fetch -----------------


def test_a_caller_gives_up_at_its_timeout_and_the_fetch_goes_on_for_the_others(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    emulator.inject(Fault(delay=1.0, passthrough=True))
    started = time.monotonic()
    with pytest.raises(TokenTimeoutError):
        manager.get_token(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 0.8
    token = manager.get_token(timeout=5)  # joins the same request
    assert emulator.is_token_valid(token)
    assert emulator.token_requests == 1


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1"])
def test_a_bad_timeout_is_a_configuration_error(make_manager: MakeManager, timeout: Any):
    manager = make_manager()
    with pytest.raises(ValueError, match="timeout"):
        manager.get_token(timeout=timeout)


# 11. Expiry on a clock that counts suspend ----------------------------------------------


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="Linux only")
def test_expiry_runs_on_a_clock_that_counts_suspend():
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert SYSTEM_CLOCK.monotonic() == pytest.approx(boottime, abs=0.5)


# 12. The guards ---------------------------------------------------------------------------


def test_a_use_that_read_the_old_token_before_a_swap_is_not_counted_against_it(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # The check in UseGate.begin ("is this token still current", under the drain's lock):
    # a caller that read the old token, then lost the CPU while a rotation swapped and
    # drained, must not count a use of the old token after the drain (it would be revoked
    # under it). Forced: begin_use pauses between reading the token and counting it.
    manager = make_manager()
    old = manager.get_token()
    gate = manager._gate
    original = gate.begin
    read_token, go_on = threading.Event(), threading.Event()

    def paused_begin(token: str, still_current: Any, slot: Any = None) -> Any:
        if token == old and not go_on.is_set():
            read_token.set()
            go_on.wait(5)
        return original(token, still_current, slot)

    gate.begin = paused_begin  # type: ignore[method-assign]
    user, use = in_background(adapter_port(manager).begin_use)
    assert read_token.wait(5)
    new = manager.rotate(drain_timeout=1, revoke_previous=True)  # swaps, drains (0), revokes
    go_on.set()
    user.join(5)
    assert use[0].token == new.access_token
    assert emulator.is_token_valid(use[0].token)
    use[0].end()


def test_one_replacement_for_many_callers_that_saw_the_same_token_rejected(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # The "is the rejected token still current" check: the second caller must get the
    # first caller's replacement, not make a replacement of the replacement.
    manager = make_manager()
    rejected = manager.get_token()
    first = adapter_port(manager).replace_rejected(rejected)
    second = adapter_port(manager).replace_rejected(rejected)
    assert first.access_token == second.access_token != rejected
    assert emulator.token_requests == 2


def test_one_acquisition_not_only_one_request_for_500_threads(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # The single flight itself (joining the flight in progress), not the store lock behind
    # it: 500 callers share ONE acquisition, counted where it starts.
    manager = make_manager()
    acquisitions = [0]
    acquire = manager._flight._acquire

    def counted(flight: Any, held: Any) -> Any:
        acquisitions[0] += 1
        return acquire(flight, held)

    manager._flight._acquire = counted
    emulator.inject(Fault(delay=0.3, passthrough=True))
    barrier = threading.Barrier(500)
    results: list[str] = []

    def worker() -> None:
        barrier.wait(10)
        results.append(manager.get_token())

    threads = [threading.Thread(target=worker) for _ in range(500)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 500 and len(set(results)) == 1
    assert acquisitions == [1]
    assert emulator.token_requests == 1


def test_a_flight_whose_thread_cannot_start_does_not_strand_later_callers(
    emulator: GenesysEmulator, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
):
    manager = make_manager()
    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("genesys-token-fetch"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    failures: list[dict[str, object]] = []
    manager.on("TOKEN_REFRESH_FAILURE", failures.append)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(TokenRequestError, match="could not start"):
        manager.get_token(timeout=2)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    # Reported like any failed acquisition: a failure nobody sees is one nobody fixes.
    assert manager.metrics()["errors"] == 1
    assert len(failures) == 1
    # Not waiting on a ghost: once the failure's short backoff (1 s at most) is over, the
    # next caller starts a flight that works.
    got: list[str] = []

    def works() -> bool:
        try:
            got.append(manager.get_token(timeout=2))
        except TokenRequestError:
            return False
        return True

    assert poll(works, 2.0)
    assert emulator.is_token_valid(got[0])


def test_a_manager_handed_to_a_spawned_process_fails_with_a_clear_message(
    make_manager: MakeManager,
):
    import pickle

    manager = make_manager()
    with pytest.raises(TypeError, match="create one in the child"):
        pickle.dumps(manager)


def test_the_settings_repr_shows_no_webhook_url(make_manager: MakeManager):
    manager = make_manager(
        webhook_url="https://hooks.example.com/services/T0/B0/SECRETPATH", webhook_secret="s"
    )
    assert "SECRETPATH" not in repr(manager.settings)
    assert "SECRETPATH" not in repr(manager)


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
            use = adapter_port(
                m1
            ).try_begin_use()  # another thread, at this instant: a store-using flight
            if use is not None:
                use.end()
        return original(want, **kwargs)

    m1._flight.obtain = obtain  # type: ignore[method-assign]
    before = emulator.token_requests
    got = m1.refresh(force=True).access_token
    assert emulator.token_requests == before + 1
    assert got not in (t1, t2)


def test_a_store_that_raises_anything_degrades_to_the_network(make_manager: MakeManager):
    class BrokenStore(MemoryStore):
        def load(self, key: str, *, now_monotonic: float, now_wall: float) -> Token | None:
            raise RuntimeError("corrupt")

        def save(self, key: str, token: Token) -> None:
            raise RuntimeError("disk on fire")

        def lock(self, key: str, timeout: float) -> Any:
            raise RuntimeError("no locks today")

    manager = make_manager(store=BrokenStore())
    assert manager.get_token()
    assert manager.metrics()["store_errors"] >= 3
    assert manager.refresh(force=True)


def test_a_held_adapter_port_does_not_keep_its_manager_alive(emulator: GenesysEmulator):
    # An adapter of the user's own may keep only the port: a manager dropped without
    # close() must still be collected (and its refresh stop), as without the port.
    manager = TokenManager(emulator.client_id, emulator.client_secret, token_url=emulator.token_url)
    manager.get_token()
    port = adapter_port(manager)
    collected = weakref.ref(manager)
    del manager
    join_fetch_threads()
    gc.collect()
    assert collected() is None
    use = port.try_begin_use()  # the port itself still works on its parts
    assert use is not None
    use.end()
