"""Edge cases of the manager found in review: close() at every wait, poisoned stores, forks."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import threading
import time
import weakref
from typing import Any

import jwt
import pytest
from conftest import FakeClock, MakeManager, eventually, join_fetch_threads
from cryptography.hazmat.primitives.asymmetric import rsa

from genesys_token import ConfigurationError, ManagerClosedError, TokenManager, TokenValidationError
from genesys_token.core.validation import TokenValidator
from genesys_token.http.token_endpoint import Clock, TokenResponse
from genesys_token.settings import Config
from genesys_token.stores import MemoryStore
from genesys_token.stores.base import decode_token, encode_token, store_key
from genesys_token.testing import GenesysEmulator
from genesys_token.token import Token


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


def test_a_manager_with_a_webhook_is_collected_when_dropped(emulator: GenesysEmulator):
    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        webhook_url=f"{emulator.url}/hook",
        background_refresh=False,
    )
    manager.get_token()  # an event is queued: the webhook worker is running
    join_fetch_threads()
    ref = weakref.ref(manager)
    del manager
    gc.collect()
    assert ref() is None, "the webhook worker kept the manager alive"


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,
        json.dumps({"format": "genesys-token/1", "token": {"access_token": "t"}}),
        '{"format": "genesys-token/1", "token": {"access_token": "t", "token_type": "bearer", '
        '"expires_in": 60, "expires_at": NaN, "obtained_at": 1, "scopes": []}}',
        json.dumps(
            {
                "format": "genesys-token/1",
                "token": {
                    "access_token": "t",
                    "token_type": "bearer",
                    "expires_in": 60,
                    "expires_at": 1e12,
                    "obtained_at": 1,
                    "scopes": [],
                },
            }
        ),
    ],
    ids=["deeply-nested", "missing-fields", "nan-expiry", "absurd-expiry"],
)
def test_a_poisoned_store_entry_reads_as_missing(raw: str):
    assert decode_token(raw, now_monotonic=100.0, now_wall=1_800_000_000.0) is None


def test_a_stored_token_from_a_machine_with_a_faster_clock_is_accepted():
    now = 1_800_000_000.0
    token = Token.issued(
        "t", token_type="bearer", lifetime=172800, sent_monotonic=5, sent_wall=now + 60
    )
    again = decode_token(encode_token(token), now_monotonic=10.0, now_wall=now)
    assert again is not None  # 60 s of skew on a 48 h token is not a forgery


def test_dropping_a_manager_does_not_wait_for_its_hanging_webhook(emulator: GenesysEmulator):
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)
        port = hanging.getsockname()[1]
        manager = TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            webhook_url=f"http://127.0.0.1:{port}/hook",
            background_refresh=False,
            timeout=(1, 5),
        )
        manager.get_token()  # queues an event; the worker's POST now hangs
        join_fetch_threads()
        ref = weakref.ref(manager)
        del manager
        started = time.monotonic()
        gc.collect()
        assert time.monotonic() - started < 1.0, "the collector waited on the webhook"
        assert ref() is None


def test_a_genuine_store_entry_round_trips():
    token = Token.issued(
        "t", token_type="bearer", lifetime=60, sent_monotonic=50, sent_wall=1_800_000_000.0
    )
    again = decode_token(encode_token(token), now_monotonic=60.0, now_wall=1_800_000_010.0)
    assert again is not None and again.access_token == "t"


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


def test_a_jwt_expired_within_the_leeway_is_rejected():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = 1_800_000_000.0
    token = jwt.encode({"exp": now - 2}, key, algorithm="RS256")
    validator = TokenValidator(Config.build("c", "s"))
    with pytest.raises(TokenValidationError, match="expired"):
        validator.build(TokenResponse(token, "bearer", 3600, None, 10.0, now), "c", now_wall=now)


def test_close_during_a_rotations_drain_ends_the_rotation_and_holds_nobody(
    make_manager: MakeManager,
):
    manager = make_manager()
    old = manager.get_token()
    use = manager.begin_use()  # a call that never ends
    outcomes: dict[str, BaseException | str] = {}

    def run(name: str, call: Any) -> None:
        try:
            outcomes[name] = call()
        except BaseException as exc:  # noqa: BLE001
            outcomes[name] = exc

    rotation = threading.Thread(target=run, args=("rotate", lambda: manager.rotate(10)))
    rotation.start()
    eventually(lambda: use.rotation_pending.is_set())  # swapped: the drain is waiting for `use`
    assert manager.get_token() != old  # nobody is held by the rotation
    started = time.monotonic()
    manager.close()
    rotation.join(3)
    assert time.monotonic() - started < 2.5
    assert isinstance(outcomes["rotate"], ManagerClosedError)
    with pytest.raises(ManagerClosedError):
        manager.get_token()
    use.end()


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


def test_a_bad_url_is_not_echoed_in_the_error():
    with pytest.raises(ConfigurationError) as excinfo:
        Config.build("c", "s", webhook_url="hooks.example.com/services/T0/B0/SECRETPATH")
    assert "SECRETPATH" not in str(excinfo.value)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_survives_locks_held_by_parent_threads_at_fork(make_manager: MakeManager):
    manager = make_manager()
    manager.get_token()
    use = manager.begin_use()
    holding, release = threading.Event(), threading.Event()

    def hold_locks() -> None:
        with manager._gate.lock, manager._reporter.metrics._lock, manager._reporter.events._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_locks)
    holder.start()
    assert holding.wait(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        signal.alarm(5)
        try:
            use.end()  # begun in the parent: ignored, without touching a copied lock
            manager.metrics()
            with manager.in_flight():
                pass
            code = 0 if manager.in_flight_count == 0 else 1
        except BaseException:  # noqa: BLE001
            code = 2
        os._exit(code)
    release.set()
    holder.join(5)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child hung on a lock copied at fork")
        select.select([], [], [], 0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    use.end()
    assert manager.in_flight_count == 0


def test_rotation_pending_reaches_holders_that_look_before_or_after_it_starts(
    make_manager: MakeManager,
):
    manager = make_manager()
    with manager.in_flight() as early, manager.in_flight() as late:
        early_event = early.rotation_pending  # read before the rotation
        assert not early_event.is_set()
        rotation = threading.Thread(target=lambda: manager.rotate(drain_timeout=0.2))
        rotation.start()
        assert early_event.wait(5), "a holder that was already watching was not told"
        assert late.rotation_pending.is_set(), "a holder looking later was not told"
        rotation.join(5)
    assert "rotation_pending=True" in repr(late)
    with manager.in_flight() as fresh:
        assert not fresh.rotation_pending.is_set()
