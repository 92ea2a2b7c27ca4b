"""TokenManagerPool: one manager per client from any number of threads, eviction, close,
metrics, and every store."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, poll
from redis_server import redis_server_or_skip

import genesys_token.pool as pool_module
from genesys_token import (
    ConfigurationError,
    GenesysAuth,
    InvalidClientError,
    ManagerClosedError,
    Settings,
    TokenManager,
    TokenManagerPool,
    TokenRequestError,
)
from genesys_token.http.token_endpoint import Clock
from genesys_token.stores import FileStore, MemoryStore, RedisStore
from genesys_token.stores._seal import Sealer
from genesys_token.testing import GenesysEmulator


@pytest.fixture
def orgs(emulator: GenesysEmulator) -> list[tuple[str, str]]:
    """Five more OAuth clients (one per org) on the emulator."""
    clients = [(f"org-{i}", f"org-{i}-secret-{uuid.uuid4().hex[:6]}") for i in range(5)]
    for client_id, secret in clients:
        emulator.add_client(client_id, secret)
    return clients


@pytest.fixture
def make_pool(emulator: GenesysEmulator) -> Iterator[Callable[..., TokenManagerPool]]:
    pools: list[TokenManagerPool] = []

    def make(**settings: Any) -> TokenManagerPool:
        settings.setdefault("token_url", emulator.token_url)
        settings.setdefault("api_base_url", emulator.api_base_url)
        pool = TokenManagerPool(**settings)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


MakePool = Callable[..., TokenManagerPool]


# -- get-or-create -----------------------------------------------------------------------


def test_fifty_threads_asking_at_once_get_one_manager_per_client(
    make_pool: MakePool, orgs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow constructor: without the pool's lock, every thread would miss the lookup
    # while the first one is still building, and each would make its own manager.
    made: list[TokenManager] = []

    class SlowManager(TokenManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(0.05)
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pool_module, "TokenManager", SlowManager)
    pool = make_pool()
    barrier = threading.Barrier(50)
    got: list[list[TokenManager]] = [[] for _ in range(50)]

    def ask(i: int) -> None:
        barrier.wait(5)
        for client_id, secret in orgs[:2]:
            got[i].append(pool.get(client_id, secret))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(made) == 2
    assert len(pool) == 2
    assert {id(managers[0]) for managers in got} == {id(made[0])}
    assert {id(managers[1]) for managers in got} == {id(made[1])}


def test_a_client_is_its_id_token_url_and_scopes_in_any_order(
    make_pool: MakePool, orgs: list[tuple[str, str]]
) -> None:
    pool = TokenManagerPool()
    try:
        (a, a_secret), (b, b_secret) = orgs[:2]
        first = pool.get(a, a_secret, region="eu-west-1", scopes=["users", "analytics"])
        assert pool.get(a, a_secret, region="eu_west_1", scopes="analytics users") is first
        assert pool.get(a, a_secret, region="mypurecloud.ie", scopes=("users", "analytics")) is (
            first
        )
        assert pool.get(a, a_secret, region="eu-west-1") is not first  # other scopes
        assert pool.get(a, a_secret, region="us-east-1", scopes=["users", "analytics"]) is not (
            first
        )
        assert pool.get(b, b_secret, region="eu-west-1") is not first
        assert len(pool) == 4
        assert first.token_url == "https://login.mypurecloud.ie/oauth/token"
    finally:
        pool.close()


def test_the_pools_settings_reach_every_manager_and_get_overrides_the_location(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    store = MemoryStore()
    pool = make_pool(refresh_buffer=42.0, max_retries=1, store=store, background_refresh=False)
    here = pool.get(*orgs[0])
    assert here.token_url == emulator.token_url
    assert here.settings.refresh_buffer == 42.0
    assert here.settings.max_retries == 1
    assert here.settings.background_refresh is False
    elsewhere = pool.get(*orgs[0], region="ap-southeast-2")
    assert elsewhere is not here
    assert elsewhere.token_url == "https://login.mypurecloud.com.au/oauth/token"
    assert elsewhere.api_base_url == "https://api.mypurecloud.com.au"
    here.get_token()
    key = _key(here)
    assert store.load(  # the pool's store is the managers' store (to holders of the secret)
        key, now_monotonic=time.monotonic(), now_wall=time.time(), sealer=Sealer(orgs[0][1], key)
    )


def _key(manager: TokenManager) -> str:
    from genesys_token.stores import store_key

    return store_key(manager.client_id, manager.token_url, manager.settings.scopes)


def test_without_a_store_the_managers_of_a_pool_share_one_memory_store(
    make_pool: MakePool, orgs: list[tuple[str, str]]
) -> None:
    pool = make_pool()
    first, second = pool.get(*orgs[0]), pool.get(*orgs[1])
    assert first.store is second.store
    assert isinstance(first.store, MemoryStore)


def test_another_secret_for_a_client_goes_to_its_manager_for_the_next_request(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    client_id, old = orgs[0]
    pool = make_pool(max_retries=0)
    manager = pool.get(client_id, old)
    token = manager.get_token()
    emulator.set_secret(client_id, "rotated-secret")
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)
    assert pool.get(client_id, "rotated-secret") is manager
    assert manager.get_token() == token  # the current token stays
    assert manager.refresh(force=True).access_token != token  # the new secret is used
    requests = emulator.token_requests
    assert pool.get(client_id, "rotated-secret") is manager  # same secret: nothing to do
    assert emulator.token_requests == requests


@pytest.mark.parametrize("fault", ["rejected", "outage"])
def test_a_new_secret_source_object_on_every_get_does_not_bring_back_storms(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]], fault: str
) -> None:
    # Review: `pool.get(cid, lambda: vault(cid))` makes a new callable per call; handing each
    # over ended the rejected-secret cool-down and the outage backoff: 20 calls, 20 requests.
    from genesys_token.testing import Fault

    client_id, secret = orgs[0]
    pool = make_pool(max_retries=0)
    if fault == "rejected":
        emulator.set_secret(client_id, "rotated-elsewhere")
    else:
        emulator.inject(Fault.server_error(503), times=None)
    for _ in range(20):
        manager = pool.get(client_id, lambda: secret)  # a new source object each time
        with pytest.raises(TokenRequestError):
            manager.get_token()
    assert emulator.token_requests == 1


def test_a_manager_closed_by_its_holder_is_replaced_on_the_next_get(
    make_pool: MakePool, orgs: list[tuple[str, str]]
) -> None:
    pool = make_pool()
    first = pool.get(*orgs[0])
    first.close()
    second = pool.get(*orgs[0])
    assert second is not first and not second.closed
    assert second.get_token()
    assert len(pool) == 1


def test_another_api_base_url_for_a_client_in_the_pool_is_refused(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    pool = make_pool()
    pool.get(*orgs[0])
    with pytest.raises(ConfigurationError) as excinfo:
        pool.get(*orgs[0], token_url=emulator.token_url, api_base_url="https://api.example.com")
    assert excinfo.value.field == "api_base_url"


@pytest.mark.parametrize("name", ["client_secret", "client_id", "scopes", "no_such_setting"])
def test_a_pool_takes_no_per_client_or_unknown_keyword(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        TokenManagerPool(**{name: "x"})


def test_a_pool_refuses_settings_with_scopes_they_are_per_client() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        TokenManagerPool(settings=Settings(scopes=["a"]))
    assert excinfo.value.field == "scopes"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"refresh_buffer": -1}, "refresh_buffer"),
        ({"region": "us-east-9"}, "region"),
        ({"settings": {"timeout": 5}}, "settings"),
        ({"timeout": "soon"}, "timeout"),
        ({"max_idle": 0}, "max_idle"),
        ({"max_idle": True}, "max_idle"),
    ],
)
def test_bad_pool_settings_are_refused_when_the_pool_is_made(
    settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        TokenManagerPool(**settings)
    assert excinfo.value.field == field


# -- idle eviction -----------------------------------------------------------------------


def test_managers_unused_for_max_idle_are_closed_and_a_later_get_makes_a_new_one(
    make_pool: MakePool, orgs: list[tuple[str, str]], fake_clock: FakeClock
) -> None:
    pool = make_pool(max_idle=60, clock=fake_clock.clock())
    kept, dropped = pool.get(*orgs[0]), pool.get(*orgs[1])
    dropped.get_token()
    fake_clock.advance(30)
    assert pool.get(*orgs[0]) is kept  # a use: its idle time starts again
    kept.get_token()  # not a use the pool sees: get() is
    fake_clock.advance(31)
    assert pool.evict_idle() == 1
    assert len(pool) == 1
    assert dropped.closed and not kept.closed
    with pytest.raises(ManagerClosedError):
        dropped.get_token()  # what a holder of an evicted manager sees
    again = pool.get(*orgs[1])
    assert again is not dropped and again.get_token()
    metrics = pool.metrics()
    assert (metrics["created"], metrics["evicted"], metrics["managers"]) == (3, 1, 2)


def test_a_manager_with_uses_in_flight_is_not_evicted(
    make_pool: MakePool, orgs: list[tuple[str, str]], fake_clock: FakeClock
) -> None:
    pool = make_pool(max_idle=60, clock=fake_clock.clock())
    manager = pool.get(*orgs[0])
    with manager.in_flight():
        fake_clock.advance(120)
        assert pool.evict_idle() == 0
    assert pool.evict_idle() == 1


def test_eviction_runs_by_itself_and_ends_with_the_last_manager(
    make_pool: MakePool, orgs: list[tuple[str, str]]
) -> None:
    # Long enough that a loaded machine gets all five tokens before the first is evicted.
    pool = make_pool(max_idle=1.0)
    managers = [pool.get(*org) for org in orgs]
    for manager in managers:
        manager.get_token()
    assert poll(lambda: len(pool) == 0)
    assert all(m.closed for m in managers)
    # An empty pool plans no sweep: the scheduler's threads end (checked by conftest).


def test_a_get_racing_an_eviction_never_returns_a_closed_manager(
    make_pool: MakePool, orgs: list[tuple[str, str]], fake_clock: FakeClock
) -> None:
    # The clock read inside get() runs an eviction in another thread, as if the sweep
    # came at that very moment. It must wait for get() to finish (then it sees a use), or
    # get() would hand out the manager it is closing.
    armed = threading.Event()

    def monotonic() -> float:
        if armed.is_set():
            armed.clear()
            sweep = threading.Thread(target=pool.evict_idle)
            sweep.start()
            sweep.join(0.3)  # only a get() without the lock lets it finish here
        return fake_clock.monotonic

    clock = Clock(monotonic=monotonic, time=lambda: fake_clock.wall, random=lambda: 0.5)
    pool = make_pool(max_idle=1, clock=clock)
    first = pool.get(*orgs[0])
    fake_clock.advance(2)  # idle past max_idle: the sweep would take it...
    armed.set()
    again = pool.get(*orgs[0])  # ...but this get() is a use
    assert again is first
    assert not again.closed
    assert poll(lambda: pool.metrics()["evicted"] == 0 and len(pool) == 1)


# -- close, context manager, metrics ------------------------------------------------------


def test_close_closes_every_manager_and_refuses_later_gets(
    make_pool: MakePool, orgs: list[tuple[str, str]]
) -> None:
    with make_pool() as pool:
        managers = [pool.get(*org) for org in orgs]
        for manager in managers:
            manager.get_token()
    assert pool.closed and len(pool) == 0
    assert all(m.closed for m in managers)
    with pytest.raises(ManagerClosedError):
        pool.get(*orgs[0])
    pool.close()  # idempotent


def test_metrics_per_client_and_totals_without_any_secret(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    pool = make_pool()
    for org in orgs[:3]:
        pool.get(*org).get_token()
    pool.get(*orgs[3])  # no token yet
    metrics = pool.metrics()
    assert metrics["managers"] == 4
    assert metrics["totals"]["successes"] == 3
    assert metrics["totals"]["token_requests"] == 3
    assert metrics["totals"]["without_valid_token"] == 1
    assert [c["client_id"] for c in metrics["clients"]] == [o[0] for o in orgs[:4]]
    assert metrics["clients"][0]["token_url"] == emulator.token_url
    assert metrics["clients"][0]["metrics"]["successes"] == 1
    text = repr(metrics) + repr(pool)
    for _, secret in orgs:
        assert secret not in text
    for manager_metrics in metrics["clients"][:3]:
        assert manager_metrics["metrics"]["expires_in"] > 0


def test_a_pooled_manager_works_with_genesys_auth(
    make_pool: MakePool, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    import requests

    pool = make_pool()
    with requests.Session() as session:
        session.auth = GenesysAuth(pool.get(*orgs[0]))
        answer = session.get(f"{emulator.api_base_url}/api/v2/tokens/me", timeout=5)
    assert answer.status_code == 200
    assert answer.json()["OAuthClient"]["id"] == orgs[0][0]


# -- every store --------------------------------------------------------------------------


def _two_processes_share(
    store_a: Any, store_b: Any, emulator: GenesysEmulator, orgs: list[tuple[str, str]]
) -> None:
    """Two pools (two processes of a fleet) on one store: one token request per org."""
    settings = {"token_url": emulator.token_url, "api_base_url": emulator.api_base_url}
    with (
        TokenManagerPool(store=store_a, **settings) as a,
        TokenManagerPool(store=store_b, **settings) as b,
    ):
        before = emulator.token_requests
        first = [a.get(*org).get_token() for org in orgs]
        second = [b.get(*org).get_token() for org in orgs]
        assert emulator.token_requests - before == len(orgs)
        assert first == second
        assert len(set(first)) == len(orgs)


def test_a_pool_over_a_memory_store(emulator: GenesysEmulator, orgs: list[tuple[str, str]]):
    store = MemoryStore()
    _two_processes_share(store, store, emulator, orgs)


def test_a_pool_over_a_file_store(
    emulator: GenesysEmulator, orgs: list[tuple[str, str]], tmp_path: Path
) -> None:
    _two_processes_share(FileStore(tmp_path), FileStore(tmp_path), emulator, orgs)


def test_a_pool_over_a_redis_store(emulator: GenesysEmulator, orgs: list[tuple[str, str]]):
    with redis_server_or_skip() as server:
        prefix = f"pool-{uuid.uuid4().hex[:8]}:"
        a = RedisStore.from_url(server.url, prefix=prefix)
        b = RedisStore.from_url(server.url, prefix=prefix)
        try:
            _two_processes_share(a, b, emulator, orgs)
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"client_id": ["not", "a", "string"]}, "client_id"),
        ({"region": 7}, "region"),
        ({"token_url": b"https://login.mypurecloud.com/oauth/token"}, "token_url"),
        ({"api_base_url": 1.5}, "api_base_url"),
        ({"scopes": 5}, "scopes"),
        ({"scopes": [["nested"]]}, "scopes"),
        ({"client_secret": ""}, "client_secret"),
        ({"region": "nowhere-1"}, "region"),
    ],
)
def test_bad_get_arguments_raise_a_configuration_error_naming_the_field(
    arguments: dict[str, Any], field: str
) -> None:
    with TokenManagerPool() as pool:
        call = {"client_id": "org", "client_secret": "secret", **arguments}
        with pytest.raises(ConfigurationError) as excinfo:
            pool.get(call.pop("client_id"), call.pop("client_secret"), **call)
        assert excinfo.value.field == field
        assert len(pool) == 0


def test_a_sweep_drops_managers_their_holders_closed(
    make_pool: MakePool, orgs: list[tuple[str, str]], fake_clock: FakeClock
) -> None:
    pool = make_pool(max_idle=60, clock=fake_clock.clock())
    closed, kept = pool.get(*orgs[0]), pool.get(*orgs[1])
    closed.close()
    assert pool.evict_idle() == 0
    assert len(pool) == 1 and pool.metrics()["evicted"] == 0
    assert pool.get(*orgs[1]) is kept
