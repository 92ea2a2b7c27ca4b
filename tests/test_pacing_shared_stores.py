"""Managers sharing a FileStore or a RedisStore share the API-call slots of their token.

Two managers in one process stand for two processes here (each has its own pacer, as each
process would; tests/test_shared_pacing.py runs real processes): they share the token through
the store, so they must share its limit too, or together they send twice what it allows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from async_helpers import own_threads
from conftest import API_LIMIT, manager_for
from redis_server import redis_server_or_skip

from genesys_token import GenesysAuth, TokenManager
from genesys_token.core.pacing import Pacer
from genesys_token.core.shared_pacing import KEPT_TOKENS, SharedPacer
from genesys_token.errors import StoreError
from genesys_token.integrations.httpx import async_api_client
from genesys_token.manager import adapter_port
from genesys_token.stores import FileStore, MemoryStore, RedisStore
from genesys_token.stores import redis as redis_store_module
from genesys_token.stores.base import TokenStore
from genesys_token.testing import GenesysEmulator

ORG = "/api/v2/organizations/me"


@pytest.fixture
def patient_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about a store that works: on a loaded CI machine a pacing script can
    take over its 0.25 s (SLOTS_SOCKET_TIMEOUT), which counts as an outage, and each process
    then paces alone (by design; tests/test_pacing_store_hiccups.py and test_shared_pacing.py
    test that). CI drew one 429 so on Python 3.13 with four workers on two cores."""
    monkeypatch.setattr(redis_store_module, "SLOTS_SOCKET_TIMEOUT", 2.0)


def _manager(emulator: GenesysEmulator, store: TokenStore, **options: Any) -> TokenManager:
    return manager_for(emulator, store=store, api_rate_limit=API_LIMIT, **options)


def _stores(kind: str, tmp_path: Path, redis_url: str | None) -> tuple[TokenStore, TokenStore]:
    if kind == "file":
        return FileStore(tmp_path / "cache"), FileStore(tmp_path / "cache")
    assert redis_url is not None
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)


def _hammer(sessions: list[requests.Session], url: str, seconds: float) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work(session: requests.Session) -> None:
        while time.monotonic() < stop:
            status = session.get(url, timeout=5).status_code
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=work, args=(s,)) for s in sessions for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 15)
    return statuses


@pytest.fixture(params=["file", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def maybe_redis(kind: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("redis_url")) if kind == "redis" else None


@pytest.mark.usefixtures("patient_scripts")
def test_two_managers_on_one_store_keep_one_limit(
    limited: GenesysEmulator, kind: str, maybe_redis: str | None, tmp_path: Path
) -> None:
    first_store, second_store = _stores(kind, tmp_path, maybe_redis)
    with _manager(limited, first_store) as first, _manager(limited, second_store) as second:
        assert first.get_token() == second.get_token()  # one token, through the store
        sessions = []
        for manager in (first, second):
            session = requests.Session()
            session.auth = GenesysAuth(manager)
            sessions.append(session)
        started = time.monotonic()
        statuses = _hammer(sessions, limited.api_base_url + ORG, 3.0)
        elapsed = time.monotonic() - started
        figures = [manager.metrics()["pacing"] for manager in (first, second)]
        for session in sessions:
            session.close()
    assert sum(limited.api_429s.values()) == 0
    assert set(statuses) == {200}
    assert len(statuses) >= 0.85 * API_LIMIT[0] * (elapsed - 0.5) / API_LIMIT[1]
    assert limited.token_requests == 1
    assert [f["shared"] for f in figures] == [True, True]
    assert sum(f["calls_paced"] for f in figures) == len(statuses)


@pytest.mark.usefixtures("patient_scripts")
def test_async_callers_of_two_managers_on_one_store_keep_one_limit(
    limited: GenesysEmulator, kind: str, maybe_redis: str | None, tmp_path: Path
) -> None:
    first_store, second_store = _stores(kind, tmp_path, maybe_redis)
    statuses: list[int] = []

    async def run(manager: TokenManager, stop: float) -> None:
        async with async_api_client(manager) as client:

            async def caller() -> None:
                while time.monotonic() < stop:
                    statuses.append((await client.get(ORG)).status_code)

            await asyncio.gather(*(caller() for _ in range(4)))

    with _manager(limited, first_store) as first, _manager(limited, second_store) as second:
        first.get_token()
        threads_before = own_threads()
        stop = time.monotonic() + 2.0

        async def both() -> None:
            await asyncio.gather(run(first, stop), run(second, stop))

        asyncio.run(both())
        assert own_threads() <= threads_before + 2  # no thread per waiter
    assert sum(limited.api_429s.values()) == 0
    assert set(statuses) == {200}
    assert len(statuses) >= 15  # two seconds of a 10/s limit, the first window full at once


def test_a_store_without_slots_paces_in_the_process(limited: GenesysEmulator) -> None:
    with _manager(limited, MemoryStore()) as manager:
        pacer = manager._pacer  # the kind of pacer is what this test is about
        assert isinstance(pacer, Pacer) and not isinstance(pacer, SharedPacer)
        assert "shared" not in manager.metrics()["pacing"]


def test_a_file_store_with_its_cache_off_paces_in_the_process(
    limited: GenesysEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "cache")
    monkeypatch.setattr(store, "slots", lambda: None)
    with _manager(limited, store) as manager:
        assert isinstance(manager._pacer, Pacer)


class _Counting:
    """A real backend that counts the questions asked of it, and can be made to fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked = 0
        self.failing = False

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        if self.failing:
            raise StoreError("the slots file cannot be written")
        return self.inner.acquire(*args, **kwargs)

    # Spelled out, not only through __getattr__: from Python 3.12 a runtime-checkable
    # Protocol's isinstance looks attributes up statically, and the manager checks
    # store.slots() against SlotBackend.
    def release(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.release(*args, **kwargs)

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.cancel(*args, **kwargs)

    def penalize(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.penalize(*args, **kwargs)

    def in_use(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.in_use(*args, **kwargs)

    def after_fork(self) -> Any:
        return self.inner.after_fork()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _file_backend(tmp_path: Path) -> _Counting:
    slots = FileStore(tmp_path / "cache").slots()
    assert slots is not None
    return _Counting(slots)


def test_an_event_loop_waiter_asks_once_per_answer_and_leaving_frees_its_reservation(
    tmp_path: Path,
) -> None:
    backend = _file_backend(tmp_path)
    other = SharedPacer(1, 1.0, 5.0, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
    pacer = SharedPacer(1, 1.0, 5.0, backend=backend)  # type: ignore[arg-type]
    first = other.line_up("k")  # another process's call fills the window
    slot = other.poll("k", first)
    assert not isinstance(slot, float)
    slot.release()
    second = pacer.line_up("k")
    wait = pacer.poll("k", second)
    assert isinstance(wait, float) and 0.5 < wait <= 1.0  # reserved when the window ends
    for _ in range(5):  # polls before the moment do not ask again
        assert isinstance(pacer.poll("k", second), float)
    assert backend.asked == 1
    assert pacer.in_use("k") == 2  # the answered slot and the reservation
    pacer.leave("k", second)
    assert pacer.in_use("k") == 1  # the reservation went back unused


def test_an_event_loop_waiter_paces_alone_when_the_store_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _file_backend(tmp_path)
    pacer = SharedPacer(2, 1.0, 5.0, backend=backend)  # type: ignore[arg-type]
    backend.failing = True
    ticket = pacer.line_up("k")
    with caplog.at_level(logging.WARNING, logger="genesys_token.pacing"):
        slot = pacer.poll("k", ticket)
    assert not isinstance(slot, float)
    slot.release()
    pacer.leave("k", ticket)
    figures = pacer.metrics()
    assert (figures["shared"], figures["store_outages"]) == (False, 1)
    assert len([r for r in caplog.records if "pacing store failed" in r.getMessage()]) == 1


def test_a_thread_whose_token_is_replaced_stops_waiting_for_shared_slots(
    tmp_path: Path,
) -> None:
    pacer = SharedPacer(1, 30.0, 5.0, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
    pacer.acquire("k").release()  # the window is full for 30 s
    replaced = threading.Event()
    started = time.monotonic()
    threading.Timer(0.2, replaced.set).start()
    assert pacer.acquire_unless("k", None, replaced.is_set) is None
    assert time.monotonic() - started < 1.0  # not the 5 s wait


def test_429s_are_counted_for_the_latest_tokens_only(tmp_path: Path) -> None:
    # One Prometheus label per token: retired tokens must not grow the export for ever.
    pacer = SharedPacer(10, 1.0, 5.0, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
    for index in range(200):
        pacer.penalize(f"fp-{index}", 0.0)
    by_token = pacer.metrics()["throttled_by_token"]
    assert len(by_token) == KEPT_TOKENS
    assert "fp-199" in by_token and "fp-0" not in by_token
    assert pacer.metrics()["throttled"] == 200


def test_a_hung_redis_stalls_paced_event_loop_calls_a_quarter_second_at_most(
    limited: GenesysEmulator,
) -> None:
    # A paced call on an event loop asks Redis inline: with the store's 1 s timeout and one
    # retry, a Redis that stopped answering froze the loop 2 s (review: max gap 2,007 ms).
    # The pacing scripts have their own connections: 0.25 s, no retry, then the outage.
    gaps: list[float] = []
    statuses: list[int] = []
    with redis_server_or_skip() as own:
        store = RedisStore(own.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
        with _manager(limited, store) as manager:

            async def main() -> None:
                async with async_api_client(manager) as client:
                    statuses.append((await client.get(ORG)).status_code)  # token, scripts
                    own.hang()
                    try:
                        stop = time.monotonic() + 1.5

                        async def beat() -> None:
                            last = time.monotonic()
                            while time.monotonic() < stop:
                                await asyncio.sleep(0.01)
                                gaps.append(time.monotonic() - last)
                                last = time.monotonic()

                        async def caller() -> None:
                            while time.monotonic() < stop:
                                statuses.append((await client.get(ORG)).status_code)

                        await asyncio.gather(beat(), caller(), caller())
                    finally:
                        own.hang(False)

            asyncio.run(main())
        store.close()  # its pending slots end with it, not with the server
    assert max(gaps) < 0.6, max(gaps)
    assert set(statuses) == {200} and len(statuses) > 5
    assert sum(limited.api_429s.values()) == 0


def test_a_call_that_waited_is_counted_once_in_the_metrics(tmp_path: Path) -> None:
    # Every shared grant takes a slot of the process's own count first: that count must
    # not count the call again (review: 1 call sent, calls_paced 2, 3 wait observations).
    other = SharedPacer(1, 0.5, 5.0, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
    pacer = SharedPacer(1, 0.5, 5.0, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
    other.acquire("k").release()  # another process fills the window
    assert pacer.try_acquire("k") is None  # no room: nothing sent, nothing counted
    pacer.acquire("k").release()  # waits for the window, then sends
    figures = pacer.metrics()
    assert (figures["calls_paced"], figures["calls_waited"]) == (1, 1)
    histogram = figures["wait_histogram"]
    assert histogram["count"] == 1 and 0.3 <= histogram["sum"] <= 1.0
    assert figures["rate_limited"] == 0


def test_two_managers_count_each_call_they_sent_once(
    limited: GenesysEmulator, tmp_path: Path
) -> None:
    first_store, second_store = _stores("file", tmp_path, None)
    with _manager(limited, first_store) as first, _manager(limited, second_store) as second:
        first.get_token()
        sessions = []
        for manager in (first, second):
            session = requests.Session()
            session.auth = GenesysAuth(manager)
            sessions.append(session)
        statuses = _hammer(sessions, limited.api_base_url + ORG, 2.0)
        figures = [manager.metrics()["pacing"] for manager in (first, second)]
        for session in sessions:
            session.close()
    assert sum(f["calls_paced"] for f in figures) == len(statuses) == limited.api_requests
    for f in figures:
        assert f["calls_waited"] <= f["calls_paced"]
        assert f["wait_histogram"]["count"] == f["calls_paced"]


def test_a_backend_that_raises_anything_is_an_outage_not_a_failed_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(_Counting):
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in a store, not a StoreError")

    pacer = SharedPacer(2, 1.0, 1.0, backend=Broken(_file_backend(tmp_path).inner))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="genesys_token.pacing"):
        slot = pacer.acquire("k")  # this process's own count serves
    slot.release()
    assert pacer.metrics()["shared"] is False
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "RuntimeError" in warned[0]
    assert "a bug in a store" not in warned[0]  # another library's message is not repeated


def test_a_caller_that_must_wait_asks_a_shared_store_once(
    limited: GenesysEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A try before the wait would be a second round trip to the store for every caller that
    # finds no room: a shared pacer is asked once (Pacing.remote).
    store = FileStore(tmp_path / "cache")
    counting = _Counting(store.slots())
    monkeypatch.setattr(store, "slots", lambda: counting)
    with _manager(limited, store, api_rate_wait=3.0) as manager:
        key = manager.refresh().fingerprint
        other = SharedPacer(*API_LIMIT, backend=_file_backend(tmp_path))  # type: ignore[arg-type]
        for _ in range(API_LIMIT[0]):  # another process fills the window
            other.acquire(key).release()
        counting.asked = 0
        use = adapter_port(manager).begin_use()  # reserved when the window ends, then sent
        use.end()
    assert counting.asked == 1


def test_a_pacing_timeout_does_not_take_the_token_store_down(limited: GenesysEmulator) -> None:
    # The pacing scripts time out after 0.25 s; a Redis busy for 0.6 s must cost pacing a
    # moment per process, not the token store its 5 s outage backoff (review 3: a second
    # manager then made a token request of its own).
    with redis_server_or_skip() as own:
        store = RedisStore(own.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
        with _manager(limited, store) as first, _manager(limited, store) as second:
            first.get_token()
            own.hang()
            resume = threading.Timer(0.6, own.hang, args=(False,))
            resume.start()
            try:
                adapter_port(first).begin_use().end()  # paced in the process: Redis is silent
                assert first.metrics()["pacing"]["shared"] is False
            finally:
                resume.join()
            second.get_token()  # from the store, which answers again
        store.close()
        assert limited.token_requests == 1


def test_closing_a_redis_store_pushes_pending_releases_and_reconnects_nothing(
    limited: GenesysEmulator,
) -> None:
    import redis

    with redis_server_or_skip() as own:
        admin = redis.Redis.from_url(own.url)
        store = RedisStore(own.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
        with _manager(limited, store) as manager:
            session = requests.Session()
            session.auth = GenesysAuth(manager)
            for _ in range(3):
                session.get(limited.api_base_url + ORG, timeout=5)
            session.close()
            key = manager.token.fingerprint if manager.token else ""
        store.close()
        time.sleep(0.3)  # the lease keeper's flush period is 0.1 s: it would have run
        others = [c for c in admin.client_list() if c["cmd"] != "client|list"]
        counted = admin.zrange(f"{store._prefix}{{{key}}}:api-slots", 0, -1)
        admin.close()
    assert others == []  # no connection left open or reopened by a late flush
    assert counted and all(member.startswith(b"e") for member in counted)  # all released
