"""Pacing wired into the product: GenesysAuth, api_session, the port, settings and metrics,
against the emulator's per-token limit (10 calls per 1 s here)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import pytest
import requests
from conftest import API_LIMIT, manager_for, run_threads
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from genesys_token import ConfigurationError, GenesysAuth, Settings, TokenManager, api_session
from genesys_token.errors import ApiRateLimitedError
from genesys_token.events import API_RATE_LIMITED, API_THROTTLED
from genesys_token.manager import adapter_port
from genesys_token.testing import Fault, GenesysEmulator

ORG = "/api/v2/organizations/me"


def _hammer(session: requests.Session, url: str, threads: int, seconds: float) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop:
            status = session.get(url, timeout=5).status_code
            with lock:
                statuses.append(status)

    run_threads(work, threads, timeout=seconds + 10)
    return statuses


def test_eight_threads_paced_draw_no_429_and_keep_the_rate(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=API_LIMIT) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        manager.get_token()
        started = time.monotonic()
        statuses = _hammer(session, limited.api_base_url + ORG, 8, 3.0)
        elapsed = time.monotonic() - started
        assert sum(limited.api_429s.values()) == 0
        assert statuses.count(200) == len(statuses)
        # Each slot is busy a window plus its call: >= 90% of 10/s over the run.
        assert len(statuses) >= 0.9 * API_LIMIT[0] * (elapsed - 0.5) / API_LIMIT[1]
        assert manager.metrics()["pacing"]["calls_paced"] == len(statuses)
        session.close()


def test_the_same_load_unpaced_draws_429s(limited: GenesysEmulator) -> None:
    with manager_for(limited) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        statuses = _hammer(session, limited.api_base_url + ORG, 8, 1.0)
        assert 429 in statuses and sum(limited.api_429s.values()) > 0
        assert "pacing" not in manager.metrics()
        session.close()


def test_no_room_within_the_wait_raises_and_sends_nothing(limited: GenesysEmulator) -> None:
    seen: list[dict[str, Any]] = []
    with manager_for(limited, api_rate_limit=(2, 60.0), api_rate_wait=0.5) as manager:
        manager.on(API_RATE_LIMITED, seen.append)
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        url = limited.api_base_url + ORG
        assert [session.get(url, timeout=5).status_code for _ in range(2)] == [200, 200]
        calls = limited.api_requests
        started = time.monotonic()
        with pytest.raises(ApiRateLimitedError) as caught:
            session.get(url, timeout=5)
        waited = time.monotonic() - started
        assert 0.45 <= waited <= 1.0
        assert limited.api_requests == calls  # nothing sent
        assert manager.in_flight_count == 0
        token = manager.get_token()
        assert caught.value.token_fingerprint == manager.token.fingerprint  # type: ignore[union-attr]
        assert token not in repr(caught.value) and token not in str(caught.value)
        assert [r["event_type"] for r in seen] == [API_RATE_LIMITED]
        assert seen[0]["data"]["limit"] == [2, 60.0] and token not in repr(seen)
        assert manager.metrics()["pacing"]["rate_limited"] == 1
        session.close()


def test_a_call_that_raises_gives_its_slot_back(limited: GenesysEmulator, closed_port: int) -> None:
    # One call per 0.2 s. A refused call on another thread ends unreported (no response
    # hook): the next caller must reap it before waiting, not wait api_rate_wait for it.
    with manager_for(limited, api_rate_limit=(1, 0.2), api_rate_wait=2.0) as manager:
        session = requests.Session()
        refused = f"http://127.0.0.1:{closed_port}"
        session.auth = GenesysAuth(manager, allowed_origins=[refused])
        failed: list[BaseException] = []

        def refused_call() -> None:
            try:
                session.get(refused + ORG, timeout=2)
            except requests.ConnectionError as exc:
                failed.append(exc)

        worker = threading.Thread(target=refused_call)
        worker.start()
        worker.join(timeout=5)
        assert failed
        started = time.monotonic()
        assert session.get(limited.api_base_url + ORG, timeout=5).status_code == 200
        assert time.monotonic() - started < 0.6  # the window of 0.2 s, not the 2 s wait
        assert manager.metrics()["pacing"]["calls_paced"] == 2
        session.close()


def test_a_429_pauses_every_caller_of_the_token(limited: GenesysEmulator) -> None:
    seen: list[dict[str, Any]] = []
    # The pacer allows more than the emulator: the 11th call draws a 429.
    with manager_for(limited, api_rate_limit=(20, 1.0), api_rate_wait=5.0) as manager:
        manager.on(API_THROTTLED, seen.append)
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        url = limited.api_base_url + ORG
        statuses = [session.get(url, timeout=5).status_code for _ in range(11)]
        assert statuses[-1] == 429 and sum(limited.api_429s.values()) == 1
        thrown_at = time.monotonic()
        done: list[float] = []
        worker = threading.Thread(
            target=lambda: done.append(session.get(url, timeout=5).status_code and time.monotonic())
        )
        worker.start()
        worker.join(timeout=10)
        assert done and done[0] - thrown_at >= 0.5  # waited out Retry-After (>= 1 s, rounded)
        assert sum(limited.api_429s.values()) == 1
        assert [r["event_type"] for r in seen] == [API_THROTTLED]
        assert seen[0]["data"]["retry_after"] is not None
        assert manager.get_token() not in repr(seen)
        pacing = manager.metrics()["pacing"]
        assert pacing["throttled"] == 1
        assert manager.metrics()["api_429s"] == 1
        session.close()


def test_api_session_paced_retries_a_429_with_a_slot_per_attempt(
    limited: GenesysEmulator,
) -> None:
    with manager_for(limited, api_rate_limit=(20, 1.0), api_rate_wait=5.0) as manager:
        session = api_session(manager, max_retries=2, max_retry_after=2.0)
        statuses = [session.get(ORG).status_code for _ in range(11)]
        # The 11th met the emulator's limit, waited Retry-After, and was sent again.
        assert statuses == [200] * 11
        assert sum(limited.api_429s.values()) == 1
        assert manager.metrics()["pacing"]["calls_paced"] == 12
        session.close()


def test_status_retries_of_a_users_adapter_are_charged_and_warned_about_once(
    limited: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # urllib3 resends a 503 inside one adapter.send, under the call's one slot: the pacer
    # cannot hold those attempts back, but it counts them afterwards and says so, once.
    limited.inject(Fault.server_error(503), times=None, path="/api/v2/organizations")
    with manager_for(limited, api_rate_limit=(50, 60.0)) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        retries = Retry(total=2, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
        session.mount("http://", HTTPAdapter(max_retries=retries))
        for _ in range(2):
            assert session.get(limited.api_base_url + ORG, timeout=5).status_code == 503
        assert manager.metrics()["pacing"]["calls_paced"] == 6  # 2 calls, 3 attempts each
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "api_session" in warnings[0], warnings
        session.close()


def test_a_429_a_users_adapter_waited_out_does_not_pause_the_token(
    limited: GenesysEmulator,
) -> None:
    # The adapter already honoured the 429 and got a 200: pausing the token for a window
    # (fleet-wide with a shared store) would fail the next calls with nothing sent.
    limited.inject(Fault(status=429), times=1, path="/api/v2/organizations")
    with manager_for(limited, api_rate_limit=(50, 60.0), api_rate_wait=0.5) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        retries = Retry(total=2, status_forcelist=[429], backoff_factor=0)
        session.mount("http://", HTTPAdapter(max_retries=retries))
        url = limited.api_base_url + ORG
        assert session.get(url, timeout=5).status_code == 200
        started = time.monotonic()
        assert [session.get(url, timeout=5).status_code for _ in range(2)] == [200, 200]
        assert time.monotonic() - started < 0.5
        assert manager.metrics()["pacing"]["throttled"] == 0
        assert manager.metrics()["api_429s"] == 1  # counted all the same
        session.close()


def test_a_final_429_after_a_users_adapter_retries_pauses_for_its_retry_after(
    limited: GenesysEmulator,
) -> None:
    limited.throttle_api(times=3, retry_after=1)
    seen: list[dict[str, Any]] = []
    with manager_for(limited, api_rate_limit=(50, 60.0), api_rate_wait=5.0) as manager:
        manager.on(API_THROTTLED, seen.append)
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        retries = Retry(
            total=2,
            status_forcelist=[429],
            backoff_factor=0,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        session.mount("http://", HTTPAdapter(max_retries=retries))
        url = limited.api_base_url + ORG
        assert session.get(url, timeout=5).status_code == 429
        assert [r["data"]["retry_after"] for r in seen] == [1.0]  # its own, not a window
        started = time.monotonic()
        assert session.get(url, timeout=5).status_code == 200
        assert 0.5 <= time.monotonic() - started < 2.0
        assert manager.metrics()["api_429s"] == 3
        session.close()


def test_token_swapped_while_waiting_for_a_slot_goes_round(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(1, 60.0), api_rate_wait=5.0) as manager:
        port = adapter_port(manager)
        first = port.begin_use()
        old = first.token
        got: list[Any] = []

        def wait_for_slot() -> None:
            use = port.begin_use()
            got.append(use.token)
            use.end()

        worker = threading.Thread(target=wait_for_slot)
        worker.start()
        assert port.pacer is not None
        deadline = time.monotonic() + 5
        while port.pacer.metrics()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.end()  # the old token's window is now full
        manager.rotate(drain_timeout=1.0)  # a new token: its slots are free
        worker.join(timeout=10)
        assert got and got[0] != old  # gave up the old token's slot, took the new one's
        assert port.pacer.in_use(manager.token.fingerprint) == 1  # type: ignore[union-attr]


def test_after_fork_the_pacer_forgets_the_parents_slots(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(1, 60.0), api_rate_wait=0.0) as manager:
        use = adapter_port(manager).begin_use()
        manager._after_fork_in_child()
        again = adapter_port(manager).begin_use()  # the parent's slot is not ours
        again.end()
        use.end()


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [(0, 1.0), (1, 0), (1, -1.0), ("a", 1.0), (True, 1.0), (1, math.nan), (1,), 5]
)
def test_a_bad_limit_names_api_rate_limit(value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(api_rate_limit=value)
    assert caught.value.field == "api_rate_limit"


@pytest.mark.parametrize("value", [-1, math.inf, math.nan, "1", True])
def test_a_bad_wait_names_api_rate_wait(value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(api_rate_wait=value)
    assert caught.value.field == "api_rate_wait"


def test_a_list_limit_is_frozen_to_a_tuple_and_keywords_reach_the_manager() -> None:
    assert Settings(api_rate_limit=[300, 60]).api_rate_limit == (300, 60.0)  # type: ignore[arg-type]
    with TokenManager("id", "secret", api_rate_limit=(5, 2.0), api_rate_wait=1.0) as manager:
        assert manager.settings.api_rate_limit == (5, 2.0)
        assert manager.settings.api_rate_wait == 1.0
        assert manager.metrics()["pacing"]["calls_paced"] == 0


def test_the_environment_sets_the_pacing() -> None:
    env = {"GENESYSCLOUD_API_RATE_LIMIT": "300/60", "GENESYSCLOUD_API_RATE_WAIT": "2.5"}
    settings = Settings.from_env(env)
    assert settings.api_rate_limit == (300, 60.0) and settings.api_rate_wait == 2.5
    env.update(GENESYSCLOUD_OAUTHCLIENT_ID="id", GENESYSCLOUD_OAUTHCLIENT_SECRET="s")
    with TokenManager.from_env(env) as manager:
        assert manager.settings.api_rate_limit == (300, 60.0)
        assert manager.settings.api_rate_wait == 2.5
    with TokenManager.from_env(env, api_rate_wait=1.0) as manager:
        assert manager.settings.api_rate_wait == 1.0


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("GENESYSCLOUD_API_RATE_LIMIT", "300", "api_rate_limit"),
        ("GENESYSCLOUD_API_RATE_LIMIT", "0/60", "api_rate_limit"),
        ("GENESYSCLOUD_API_RATE_LIMIT", "300/0", "api_rate_limit"),
        ("GENESYSCLOUD_API_RATE_LIMIT", "a/b", "api_rate_limit"),
        ("GENESYSCLOUD_API_RATE_WAIT", "-1", "api_rate_wait"),
        ("GENESYSCLOUD_API_RATE_WAIT", "soon", "api_rate_wait"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: value})
    assert caught.value.field == field and name in str(caught.value)


# -- every leg that reaches the wire takes a slot ------------------------------------------


def test_each_followed_redirect_leg_takes_its_own_slot(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(3, 60.0), api_rate_wait=0.3) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        url = limited.api_base_url + "/redirect"
        target = limited.api_base_url + ORG
        response = session.get(url, params={"to": target}, timeout=5)
        assert response.status_code == 200 and len(response.history) == 1
        assert manager.metrics()["pacing"]["calls_paced"] == 2
        assert manager.in_flight_count == 0
        port = adapter_port(manager)
        assert port.pacer is not None
        assert port.pacer.in_use(manager.token.fingerprint) == 2  # type: ignore[union-attr]
        # One slot left: the first leg takes it, the second finds none and raises.
        with pytest.raises(ApiRateLimitedError):
            session.get(url, params={"to": target}, timeout=5)
        assert manager.in_flight_count == 0
        session.close()


def test_a_401_replay_takes_its_own_slot(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(5, 60.0)) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        first = manager.get_token()
        limited.revoke(first)
        assert session.get(limited.api_base_url + ORG, timeout=5).status_code == 200
        assert manager.get_token() != first
        assert manager.metrics()["pacing"]["calls_paced"] == 2
        assert manager.metrics()["replays_401"] == 1
        session.close()


def test_in_flight_takes_no_slot(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(1, 60.0), api_rate_wait=0.0) as manager:
        with manager.in_flight():
            session = requests.Session()
            session.auth = GenesysAuth(manager)
            assert session.get(limited.api_base_url + ORG, timeout=5).status_code == 200
            session.close()
        assert manager.metrics()["pacing"]["calls_paced"] == 1


def test_begin_use_timeout_bounds_the_slot_wait(limited: GenesysEmulator) -> None:
    with manager_for(limited, api_rate_limit=(1, 60.0), api_rate_wait=30.0) as manager:
        port = adapter_port(manager)
        port.begin_use().end()
        started = time.monotonic()
        with pytest.raises(ApiRateLimitedError):
            port.begin_use(timeout=0.2)
        assert time.monotonic() - started < 1.0


# -- exports ----------------------------------------------------------------------------


def test_prometheus_exports_the_pacing_figures_and_no_token(limited: GenesysEmulator) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from genesys_token.prometheus import GenesysTokenCollector

    with manager_for(limited, api_rate_limit=(20, 1.0), api_rate_wait=5.0) as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        for _ in range(11):  # the 11th draws the emulator's 429
            session.get(limited.api_base_url + ORG, timeout=5)
        registry = prometheus_client.CollectorRegistry()
        registry.register(GenesysTokenCollector(manager))
        text = prometheus_client.generate_latest(registry).decode()
        token = manager.get_token()
        assert token not in text
        client = f'client_id="{limited.client_id}"'
        assert f"genesys_token_api_calls_paced_total{{{client}}} 11.0" in text
        assert f"genesys_token_api_throttled_total{{{client}}} 1.0" in text
        assert f"genesys_token_api_429s_total{{{client}}} 1.0" in text
        fingerprint = manager.token.fingerprint  # type: ignore[union-attr]
        assert f'token_fingerprint="{fingerprint}"' in text
        assert "genesys_token_api_wait_seconds_bucket" in text
        assert f"genesys_token_api_waiting{{{client}}} 0.0" in text
        session.close()


def test_api_session_returns_the_429_when_no_slot_comes_for_its_retry(
    limited: GenesysEmulator,
) -> None:
    with manager_for(limited, api_rate_limit=(11, 60.0), api_rate_wait=0.2) as manager:
        session = api_session(manager, max_retries=2, max_retry_after=2.0)
        statuses = [session.get(ORG).status_code for _ in range(11)]
        # The 11th met the emulator's limit; its retry found no slot within 0.2 s (all 11
        # are in their minute): the 429 comes back, nothing more was sent.
        assert statuses == [200] * 10 + [429]
        assert limited.api_requests == 11
        assert manager.metrics()["pacing"]["rate_limited"] == 1
        session.close()


def test_a_pool_paces_the_managers_it_makes(limited: GenesysEmulator) -> None:
    from genesys_token import TokenManagerPool

    with TokenManagerPool(
        token_url=limited.token_url,
        api_base_url=limited.api_base_url,
        api_rate_limit=(2, 60.0),
        api_rate_wait=0.1,
    ) as pool:
        manager = pool.get(limited.client_id, limited.client_secret)
        assert manager.settings.api_rate_limit == (2, 60.0)
        port = adapter_port(manager)
        port.begin_use().end()
        port.begin_use().end()
        with pytest.raises(ApiRateLimitedError):
            port.begin_use()


def test_a_429_from_another_origin_does_not_pause_the_token(limited: GenesysEmulator) -> None:
    with GenesysEmulator() as other, manager_for(limited, api_rate_limit=(5, 60.0)) as manager:
        other.throttle_api(times=None, retry_after=30)
        session = requests.Session()
        session.auth = GenesysAuth(manager)
        response = session.get(
            limited.api_base_url + "/redirect", params={"to": other.api_base_url + ORG}, timeout=5
        )
        assert response.status_code == 429  # from the other host, sent without our token
        assert manager.metrics()["pacing"]["throttled"] == 0
        assert manager.metrics()["api_429s"] == 0
        session.close()
