"""tokens=N (issue 23): N tokens of one client per manager, picked round-robin, each with its
own refresh, 401 replacement and pacing slots, shared through the store; one cool-down for a
rejected secret; rotation drains every old token within one bound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    API_LIMIT,
    FakeClock,
    MakeHolder,
    MakeManager,
    in_background,
    in_child,
    manager_for,
    poll,
    run_threads,
)
from lane_helpers import fetch_every_token, given_up_on
from redis_server import redis_server_or_skip

from genesys_token import (
    ConfigurationError,
    GenesysAuth,
    InvalidClientError,
    Settings,
    TokenManager,
    TokenManagerPool,
)
from genesys_token.core.scheduler import scheduler
from genesys_token.errors import ApiRateLimitedError
from genesys_token.events import TOKEN_DRAIN_TIMEOUT
from genesys_token.integrations.httpx import async_api_client
from genesys_token.manager import adapter_port
from genesys_token.stores import FileStore, RedisStore
from genesys_token.stores.base import TokenStore, store_key
from genesys_token.testing import GenesysEmulator

ORG = "/api/v2/organizations/me"


def _lane_jobs(manager: TokenManager) -> list[Any]:
    return [lane.refresher.job for lane in manager._lanes.all]


# -- round-robin over N tokens --------------------------------------------------------------


def test_three_tokens_take_three_requests_and_get_token_cycles_over_them(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=3)
    fetch_every_token(manager)
    got = [manager.get_token() for _ in range(9)]
    assert emulator.token_requests == 3
    assert len(set(got)) == 3
    assert got[0:3] == got[3:6] == got[6:9]  # round-robin, in order
    snap = manager.metrics()
    assert (snap["tokens"], snap["tokens_in_use"]) == (3, 3)
    assert manager.token is not None and manager.token.access_token == got[0]  # lane 0's
    assert "tokens=3" in repr(manager) and not any(token in repr(manager) for token in got)


def test_prometheus_exports_the_tokens_in_use(make_manager: MakeManager) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from genesys_token.observability.prometheus import GenesysTokenCollector

    manager = make_manager(tokens=2)
    registry = CollectorRegistry()
    registry.register(GenesysTokenCollector(manager))
    labels = {"client_id": manager.client_id}
    assert registry.get_sample_value("genesys_token_tokens_in_use", labels) == 0
    manager.get_token()
    assert registry.get_sample_value("genesys_token_tokens_in_use", labels) == 1
    manager.get_token()  # lane 1's turn: lane 0's token serves, lane 1's comes meanwhile
    assert poll(lambda: registry.get_sample_value("genesys_token_tokens_in_use", labels) == 2)


def test_one_token_is_unchanged(emulator: GenesysEmulator, make_manager: MakeManager) -> None:
    manager = make_manager()
    assert len({manager.get_token() for _ in range(5)}) == 1
    assert emulator.token_requests == 1
    assert "get_token" not in vars(manager)  # the class's own hot path serves one token
    snap = manager.metrics()
    assert (snap["tokens"], snap["tokens_in_use"]) == (1, 1)


# -- shared through the store ---------------------------------------------------------------


@pytest.fixture(params=["file", "redis"])
def shared_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[TokenStore]]:
    if request.param == "file":
        yield [FileStore(tmp_path / "tokens"), FileStore(tmp_path / "tokens")]
        return
    with redis_server_or_skip() as server:
        yield [RedisStore(server.url, prefix="lanes:"), RedisStore(server.url, prefix="lanes:")]


def test_two_managers_with_two_tokens_on_one_store_make_two_requests_in_all(
    emulator: GenesysEmulator, make_manager: MakeManager, shared_stores: list[TokenStore]
) -> None:
    first, second = (make_manager(tokens=2, store=store) for store in shared_stores)
    mine = set(fetch_every_token(first))
    theirs = set(fetch_every_token(second))
    assert emulator.token_requests == 2  # lane k of each shares lane k's key and lock
    assert mine == theirs and len(mine) == 2


def test_a_process_with_two_tokens_takes_both_from_another_process_file_store(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    def manager() -> TokenManager:
        return manager_for(emulator, tokens=2, store=FileStore(tmp_path / "tokens"))

    with manager() as first:
        mine = set(fetch_every_token(first))

        def child() -> dict[str, Any]:
            with manager() as second:
                return {"tokens": sorted(set(fetch_every_token(second)))}

        result = in_child(child)
    assert set(result["tokens"]) == mine and len(mine) == 2
    assert emulator.token_requests == 2  # two per lifetime for both processes


def test_the_first_token_keeps_the_store_key_of_one_token(
    emulator: GenesysEmulator, make_manager: MakeManager, tmp_path: Path
) -> None:
    before = make_manager(store=FileStore(tmp_path / "tokens")).get_token()  # tokens=1
    after = make_manager(tokens=2, store=FileStore(tmp_path / "tokens"))
    assert after.get_token() == before  # a fleet moving to tokens=2 keeps its token
    assert fetch_every_token(after)[1] != before and emulator.token_requests == 2
    # The key of before lanes existed (what stores written by earlier versions hold).
    key = store_key(emulator.client_id, emulator.token_url, ())
    names = {path.name for path in (tmp_path / "tokens").iterdir()}
    assert any(name.startswith(key + ".") for name in names), names
    assert any(name.startswith(key + "-1.") for name in names), names


# -- one cool-down for a rejected secret ----------------------------------------------------


def _requests_with_a_wrong_secret(
    emulator: GenesysEmulator, fake_clock: FakeClock, tokens: int
) -> int:
    before = emulator.token_requests
    with manager_for(
        emulator,
        client_secret="not-the-secret",
        background_refresh=False,
        max_retries=0,
        tokens=tokens,
        clock=fake_clock.clock(),
    ) as manager:
        for _ in range(12):
            with pytest.raises(InvalidClientError):
                manager.get_token()
    return emulator.token_requests - before


def test_a_rejected_secret_cools_every_token_down_at_once(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    one = _requests_with_a_wrong_secret(emulator, fake_clock, 1)
    three = _requests_with_a_wrong_secret(emulator, fake_clock, 3)
    assert one == 1
    assert three <= one  # not one request per token


# -- a 401 replaces the token of its lane only ------------------------------------------------


def test_a_401_on_the_second_token_replaces_that_token_only(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2)
    first, second = fetch_every_token(manager)
    assert first != second
    emulator.revoke(second)
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    statuses = [session.get(emulator.api_base_url + ORG, timeout=5) for _ in range(2)]
    assert [r.status_code for r in statuses] == [200, 200]
    assert sum(len(r.history) for r in statuses) == 1  # one 401, replayed
    assert emulator.token_requests == 3  # one replacement
    assert manager.token is not None and manager.token.access_token == first
    now = {manager.get_token() for _ in range(4)}
    assert first in now and second not in now and len(now) == 2
    # A token no lane holds any more: a current one, without a request.
    assert adapter_port(manager).replace_rejected(second).access_token in now
    assert emulator.token_requests == 3
    session.close()


# -- rotation: every lane, one drain bound --------------------------------------------------


def test_rotate_swaps_every_token_and_drains_them_within_one_bound(
    emulator: GenesysEmulator, make_manager: MakeManager, holders: MakeHolder
) -> None:
    manager = make_manager(tokens=2)
    old = set(fetch_every_token(manager))
    held = [holders(manager), holders(manager)]
    assert {h.token for h in held} == old  # one use in flight on each old token
    timeouts: list[dict[str, Any]] = []
    manager.on(TOKEN_DRAIN_TIMEOUT, timeouts.append)
    started = time.monotonic()
    thread, out = in_background(lambda: manager.rotate(drain_timeout=0.4))
    for holder in held:  # swapped: the old uses are told
        assert holder.pending is not None and holder.pending.wait(5)
    new = {manager.get_token(), manager.get_token()}  # nobody is held by the drain
    assert not new & old and len(new) == 2
    assert thread.is_alive()  # still draining meanwhile
    thread.join(5)
    elapsed = time.monotonic() - started
    assert out and out[0].access_token in new
    assert out[0].access_token == manager.token.access_token  # type: ignore[union-attr]
    assert 0.35 < elapsed < 0.7  # ONE drain bound of 0.4 s, not one per token
    assert len(timeouts) == 2 and emulator.token_requests == 4
    assert manager.metrics()["rotations"] == 1


def test_a_forced_refresh_replaces_every_token_with_the_credentials_set(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2)
    old = set(fetch_every_token(manager))
    emulator.set_secret(emulator.client_id, "the-new-secret")
    manager.set_credentials("the-new-secret")
    fresh = manager.refresh(force=True)  # every token, each with the new secret
    now = {manager.get_token(), manager.get_token()}
    assert not now & old and len(now) == 2 and fresh.access_token in now
    assert emulator.token_requests == 4
    assert manager.refresh().access_token == fresh.access_token  # none due: no request
    assert emulator.token_requests == 4


# -- pacing over three tokens ---------------------------------------------------------------


def _paced(emulator: GenesysEmulator, **options: Any) -> TokenManager:
    return manager_for(emulator, api_rate_limit=API_LIMIT, **options)


def test_three_paced_tokens_give_three_limits_in_one_window_without_429s(
    limited: GenesysEmulator,
) -> None:
    calls = 3 * API_LIMIT[0]
    with _paced(limited, tokens=3) as manager:
        fetch_every_token(manager)
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        statuses: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(calls // 6):
                status = session.get(limited.api_base_url + ORG, timeout=5).status_code
                with lock:
                    statuses.append(status)

        started = time.monotonic()
        run_threads(work, 6)
        elapsed = time.monotonic() - started
        assert statuses == [200] * calls
        assert sum(limited.api_429s.values()) == 0
        assert elapsed < 0.8 * API_LIMIT[1]  # 3L in one window: nobody waited for a second one
        assert limited.token_requests == 3
        session.close()


def test_async_api_client_spreads_paced_calls_over_three_tokens(limited: GenesysEmulator) -> None:
    calls = 3 * API_LIMIT[0]

    async def run() -> tuple[list[int], float]:
        async with async_api_client(manager) as client:
            started = time.monotonic()
            answers = await asyncio.gather(*(client.get(ORG) for _ in range(calls)))
            return [a.status_code for a in answers], time.monotonic() - started

    with _paced(limited, tokens=3) as manager:
        fetch_every_token(manager)
        statuses, elapsed = asyncio.run(run())
    assert statuses == [200] * calls and sum(limited.api_429s.values()) == 0
    assert elapsed < 0.8 * API_LIMIT[1]  # no waiting for a second window
    used = [record.token_used for record in limited.api_request_log]
    assert sorted(used.count(token) for token in set(used)) == [API_LIMIT[0]] * 3


def test_a_paced_use_takes_a_token_with_room_rather_than_wait_for_its_turn(
    limited: GenesysEmulator,
) -> None:
    with _paced(limited, tokens=3, api_rate_wait=0.0) as manager:
        held = fetch_every_token(manager)[0]
        port = adapter_port(manager)
        port.throttled(held, 30.0)  # that token has no room for 30 s
        uses = []
        for _ in range(2 * API_LIMIT[0]):  # what the two others have room for
            use = port.begin_use()
            uses.append(use.token)
            use.end()
        assert held not in uses and len(set(uses)) == 2
        with pytest.raises(ApiRateLimitedError):
            port.begin_use()  # now no token has room


def test_event_loop_uses_fetch_every_token_without_blocking(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=3)
    manager.get_token()  # the first token; an event loop only ever tries the others
    port = adapter_port(manager)
    seen: set[str] = set()

    def three_tokens_served() -> bool:
        use = port.try_begin_use()
        if use is not None:
            seen.add(use.token)
            use.end()
        return len(seen) == 3

    assert poll(three_tokens_served)
    assert emulator.token_requests == 3


def test_try_begin_use_takes_a_token_with_room_rather_than_give_up(
    limited: GenesysEmulator,
) -> None:
    with _paced(limited, tokens=3) as manager:
        held = fetch_every_token(manager)[0]
        port = adapter_port(manager)
        port.throttled(held, 30.0)
        uses = [port.try_begin_use() for _ in range(6)]  # what an event loop tries first
        assert all(use is not None for use in uses)
        assert held not in {use.token for use in uses if use is not None}
        for use in uses:
            assert use is not None
            use.end()


def test_paced_callers_with_no_room_wait_in_turn_on_every_token(
    limited: GenesysEmulator,
) -> None:
    with _paced(limited, tokens=2, api_rate_wait=0.01) as manager:
        port = adapter_port(manager)
        held = [port.begin_use() for _ in range(2 * API_LIMIT[0])]  # every slot of both taken
        assert limited.token_requests == 2  # a token not fetched yet is fetched on its turn
        gave_up_on = given_up_on(port, 4)
        for use in held:
            use.end()
        assert len(set(gave_up_on)) == 2  # the waiters' lines alternate between the tokens


# -- close and fork -------------------------------------------------------------------------


def test_close_cancels_every_tokens_refresh(make_manager: MakeManager) -> None:
    manager = make_manager(tokens=3)
    fetch_every_token(manager)
    jobs = _lane_jobs(manager)
    assert all(job is not None and job.ticket is not None for job in jobs)
    pending = scheduler().pending
    manager.close()
    assert all(job.ticket is None for job in jobs)
    assert scheduler().pending == pending - 3


def test_a_forked_child_gets_fresh_lanes(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2)
    parent = set(fetch_every_token(manager))
    parent_jobs = [id(job) for job in _lane_jobs(manager)]

    def child() -> dict[str, Any]:
        tokens = {manager.get_token() for _ in range(4)}
        jobs = [id(job) for job in _lane_jobs(manager)]
        return {
            "tokens": sorted(tokens),
            "new_jobs": [a != b for a, b in zip(jobs, parent_jobs, strict=True)],
        }

    result = in_child(child)
    assert "error" not in result, result
    assert set(result["tokens"]) == parent  # the parent's tokens, no request
    assert result["new_jobs"] == [True, True]  # every lane's refresh is its own
    assert emulator.token_requests == 2


def test_the_first_use_in_a_forked_child_brings_back_every_tokens_refresh(
    make_manager: MakeManager,
) -> None:
    # Review 9: only the lane the first use landed on was resumed; an idle child let the
    # other tokens lapse, to be fetched on demand instead of ahead of expiry.
    manager = make_manager(tokens=3)
    fetch_every_token(manager)

    def child() -> dict[str, Any]:
        parked = [lane.flight.cell.refresh_at == float("-inf") for lane in manager._lanes.all]
        manager.get_token()  # one use: one lane's turn
        jobs = _lane_jobs(manager)
        return {
            "parked_before": parked,
            "armed": [job is not None and job.ticket is not None for job in jobs],
            "parked_after": [
                lane.flight.cell.refresh_at == float("-inf") for lane in manager._lanes.all
            ],
        }

    result = in_child(child)
    assert "error" not in result, result
    assert result == {
        "parked_before": [True, True, True],
        "armed": [True, True, True],
        "parked_after": [False, False, False],
    }


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_a_bad_tokens_value_is_a_configuration_error_naming_it(
    emulator: GenesysEmulator, bad: Any
) -> None:
    for build in (
        lambda: Settings(tokens=bad),
        lambda: TokenManager("id", "secret", tokens=bad),
        lambda: TokenManagerPool(tokens=bad),
        lambda: Settings().replace(tokens=bad),
    ):
        with pytest.raises(ConfigurationError) as caught:
            build()
        assert caught.value.field == "tokens"


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two", "²"])
def test_a_bad_genesyscloud_tokens_is_a_configuration_error_naming_it(text: str) -> None:
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "id",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret",
        "GENESYSCLOUD_TOKENS": text,
    }
    for build in (lambda: Settings.from_env(env), lambda: TokenManager.from_env(env)):
        with pytest.raises(ConfigurationError) as caught:
            build()
        assert caught.value.field == "tokens" and "GENESYSCLOUD_TOKENS" in str(caught.value)


def test_tokens_reach_every_way_of_building_a_manager(emulator: GenesysEmulator) -> None:
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
        "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
        "GENESYSCLOUD_API_URL": emulator.api_base_url,
        "GENESYSCLOUD_TOKENS": "2",
    }
    assert Settings.from_env(env).tokens == 2
    with TokenManager.from_env(env) as manager:
        assert manager.settings.tokens == 2
        assert len(set(fetch_every_token(manager))) == 2
    with TokenManager.from_env(env, tokens=3) as manager:  # a keyword wins
        assert manager.settings.tokens == 3
    with TokenManagerPool(tokens=2) as pool:
        pooled = pool.get(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
        )
        assert len(set(fetch_every_token(pooled))) == 2
