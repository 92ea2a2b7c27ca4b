"""httpx api_client / async_api_client over the emulator: base URL, timeout, retries, logs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import MakeManager

from genesys_token import TokenManager
from genesys_token.integrations.httpx import api_client, async_api_client
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"
ECHO_PATH = "/api/v2/echo"
FAST = {"backoff_factor": 0.01}


@pytest.fixture
def manager(make_manager: MakeManager) -> TokenManager:
    return make_manager()


def _statuses(emulator: GenesysEmulator) -> list[int]:
    return [r.status for r in emulator.api_request_log]


def test_a_429_then_200_gives_200_in_two_calls(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.throttle_api(times=1, retry_after=0)
    with api_client(manager) as client:
        response = client.get(ORG_PATH)

    assert response.status_code == 200
    assert _statuses(emulator) == [429, 200]
    assert manager.in_flight_count == 0


def test_async_a_429_then_200_gives_200_in_two_calls(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.throttle_api(times=1, retry_after=0)

    async def call() -> httpx.Response:
        async with async_api_client(manager) as client:
            return await client.get(ORG_PATH)

    assert asyncio.run(call()).status_code == 200
    assert _statuses(emulator) == [429, 200]


@pytest.mark.parametrize("path", [ORG_PATH, ORG_PATH.lstrip("/")])
def test_relative_paths_go_to_the_api_base_url(
    emulator: GenesysEmulator, manager: TokenManager, path: str
) -> None:
    with api_client(manager) as client:
        assert client.get(path).status_code == 200

    async def call() -> int:
        async with async_api_client(manager) as client:
            return (await client.get(path)).status_code

    assert asyncio.run(call()) == 200
    assert [r.path for r in emulator.api_request_log] == [ORG_PATH, ORG_PATH]


def test_the_default_timeout_is_api_sessions(manager: TokenManager) -> None:
    with api_client(manager) as client:
        assert (client.timeout.connect, client.timeout.read) == (3.05, 30.0)
    with api_client(manager, timeout=(1.0, 2.0)) as client:
        assert (client.timeout.connect, client.timeout.read) == (1.0, 2.0)


def test_post_is_retried_on_429(emulator: GenesysEmulator, manager: TokenManager) -> None:
    emulator.throttle_api(times=1, retry_after=0)
    with api_client(manager) as client:
        response = client.post(ECHO_PATH, content=b"payload")

    assert response.status_code == 200
    assert response.json()["length"] == len(b"payload")
    assert [(r.method, r.status) for r in emulator.api_request_log] == [
        ("POST", 429),
        ("POST", 200),
    ]


def test_post_is_not_retried_on_503_but_get_is(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.inject(Fault.server_error(503), times=2, path=ECHO_PATH)
    with api_client(manager, **FAST) as client:
        posted = client.post(ECHO_PATH, content=b"x")
        got = client.get(ECHO_PATH)

    assert posted.status_code == 503
    assert got.status_code == 200
    assert [(r.method, r.status) for r in emulator.api_request_log] == [
        ("POST", 503),
        ("GET", 503),
        ("GET", 200),
    ]


def test_retry_methods_choose_what_503_retries(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.inject(Fault.server_error(503), times=1, path=ECHO_PATH)
    with api_client(manager, retry_methods=["post"], **FAST) as client:
        assert client.post(ECHO_PATH, content=b"x").status_code == 200
    assert _statuses(emulator) == [503, 200]


def test_retry_after_is_capped(emulator: GenesysEmulator, manager: TokenManager) -> None:
    emulator.throttle_api(times=1, retry_after=3600)
    started = time.monotonic()
    with api_client(manager, max_retry_after=0.05) as client:
        response = client.get(ORG_PATH)

    assert response.status_code == 200
    assert time.monotonic() - started < 2.0
    assert _statuses(emulator) == [429, 200]


def test_the_retries_are_bounded(emulator: GenesysEmulator, manager: TokenManager) -> None:
    emulator.throttle_api(times=None, retry_after=0)
    with api_client(manager, max_retries=2) as client:
        response = client.get(ORG_PATH)

    assert response.status_code == 429  # the last answer, nothing raises
    assert _statuses(emulator) == [429, 429, 429]


def test_async_retries_are_bounded(emulator: GenesysEmulator, manager: TokenManager) -> None:
    emulator.throttle_api(times=None, retry_after=0)

    async def call() -> int:
        async with async_api_client(manager, max_retries=1) as client:
            return (await client.post(ECHO_PATH, content=b"x")).status_code

    assert asyncio.run(call()) == 429
    assert _statuses(emulator) == [429, 429]


def test_a_body_that_cannot_be_sent_twice_is_not_retried(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.throttle_api(times=1, retry_after=0)

    def body() -> Iterator[bytes]:
        yield b"once"

    with api_client(manager) as client:
        response = client.post(ECHO_PATH, content=body())

    assert response.status_code == 429
    assert _statuses(emulator) == [429]


def test_the_emulators_rate_limit_is_waited_out(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.api_rate_limit = (2, 0.2)
    # Retry-After names whole seconds (1); capped at 0.3 s, past the 0.2 s window.
    with api_client(manager, max_retry_after=0.3) as client:
        statuses = [client.get(ORG_PATH).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert _statuses(emulator) == [200, 200, 429, 200]


def test_a_failed_call_is_logged_once_after_its_retries(
    emulator: GenesysEmulator, manager: TokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.throttle_api(times=3, retry_after=0)
    caplog.set_level(logging.WARNING, logger="genesys_token")
    with api_client(manager, max_retries=1) as client:
        assert client.get(ORG_PATH).status_code == 429  # two 429s
        assert client.get(ORG_PATH).status_code == 200  # a 429, then 200: nothing logged

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    sent = emulator.api_request_log[1].correlation_id
    assert warnings[0].getMessage() == (
        f"API call GET {emulator.url.split('//')[1]}{ORG_PATH} failed: HTTP 429"
        f" (correlation id {sent})"
    )


def test_bad_retry_settings_are_refused(manager: TokenManager) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        api_client(manager, max_retries=-1)
    with pytest.raises(ValueError, match="max_retry_after"):
        async_api_client(manager, max_retry_after=-1.0)


def test_a_loopback_api_host_is_not_reached_through_a_proxy(
    emulator: GenesysEmulator, manager: TokenManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with api_client(manager) as client:
        assert client.get(ORG_PATH).status_code == 200


def test_a_call_a_redirect_turned_into_a_get_is_not_retried(
    emulator: GenesysEmulator, manager: TokenManager
) -> None:
    emulator.throttle_api(times=1, retry_after=0, path=ECHO_PATH)
    target = emulator.api_base_url + ECHO_PATH
    with api_client(manager, follow_redirects=True) as client:
        response = client.post("/redirect", params={"to": target, "status": "303"}, content=b"x")

    assert response.status_code == 429  # the POST was processed: not sent again
    assert [(r.method, r.status) for r in emulator.api_request_log] == [
        ("POST", 303),
        ("GET", 429),
    ]
