"""The official SDK (PureCloudPlatformClientV2) bound to a manager, against the emulator."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import MakeManager
from urllib3.exceptions import MaxRetryError

from genesys_token.observability.events import TOKEN_DRAIN_COMPLETE, TOKEN_REFRESH_SUCCESS
from genesys_token.testing import Fault, GenesysEmulator

# Importing the SDK silences the urllib3 logger process-wide; undo that for the other tests.
_URLLIB3 = logging.getLogger("urllib3")
_URLLIB3_STATE = (_URLLIB3.level, _URLLIB3.propagate)
import PureCloudPlatformClientV2 as gc  # type: ignore[import-untyped]  # noqa: E402
from PureCloudPlatformClientV2.logger import LogLevel  # type: ignore[import-untyped]  # noqa: E402
from PureCloudPlatformClientV2.rest import ApiException  # type: ignore[import-untyped]  # noqa: E402

from genesys_token.integrations.platform_client import (  # noqa: E402
    GenesysHttpClient,
    bind_api_client,
    default_http_client,
)

_URLLIB3.setLevel(_URLLIB3_STATE[0])
_URLLIB3.propagate = _URLLIB3_STATE[1]


def _tokens_used(emulator: GenesysEmulator) -> list[str | None]:
    return [r.token_used for r in emulator.api_request_log]


@pytest.mark.genesys_emulator(token_ttl=2)
def test_sdk_calls_stay_valid_across_token_expiry(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    refreshed = threading.Event()
    manager = make_manager()
    manager.on(
        TOKEN_REFRESH_SUCCESS,
        lambda record: refreshed.set() if len(emulator.issued_tokens) >= 2 else None,
    )
    api_client = bind_api_client(manager)
    first = gc.TokensApi(api_client).get_tokens_me()
    assert first.organization.id == emulator.org_id
    assert refreshed.wait(5), "the background refresh did not replace the 2 s token"
    second = gc.OrganizationApi(api_client).get_organizations_me()
    assert second.id == emulator.org_id
    assert [r.status for r in emulator.api_request_log] == [200, 200]
    assert _tokens_used(emulator) == emulator.issued_tokens
    assert len(emulator.issued_tokens) == 2


def test_expired_token_is_replaced_and_the_call_replayed(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    api = gc.TokensApi(bind_api_client(manager))
    api.get_tokens_me()
    emulator.expire(emulator.issued_tokens[0])
    assert api.get_tokens_me().organization.id == emulator.org_id
    assert [r.status for r in emulator.api_request_log] == [200, 401, 200]
    assert len(emulator.issued_tokens) == 2
    assert manager.metrics()["replays_401"] == 1


def test_shared_api_client_makes_one_token_request_for_many_threads(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    api = gc.OrganizationApi(bind_api_client(make_manager()))
    barrier = threading.Barrier(16)
    results: list[Any] = []

    def call() -> None:
        barrier.wait(5)
        results.append(api.get_organizations_me().id)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [emulator.org_id] * 16
    assert emulator.token_requests == 1
    assert set(_tokens_used(emulator)) == {emulator.issued_tokens[0]}


def test_rotation_waits_for_an_sdk_call_in_flight(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    drained = threading.Event()
    manager.on(TOKEN_DRAIN_COMPLETE, lambda record: drained.set())
    client = bind_api_client(manager)
    api = gc.TokensApi(client)
    answered = threading.Event()  # set as the SDK's own client returns the answer
    sdk_client = client.http_client.inner

    class Answered:
        def request(self, options: Any) -> Any:
            response = sdk_client.request(options)
            answered.set()
            return response

    client.http_client.inner = Answered()
    old = manager.get_token()
    emulator.api_delay = 0.4
    slow = threading.Thread(target=api.get_tokens_me)
    slow.start()
    deadline = time.monotonic() + 5
    while manager.in_flight_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.in_flight_count == 1
    new = manager.rotate(drain_timeout=5)
    # Not "the caller's thread is done": the in-flight count ends before that thread runs on.
    assert answered.is_set(), "rotate() returned before the SDK call in flight had its answer"
    assert drained.is_set()
    slow.join(5)
    assert new.access_token != old
    assert _tokens_used(emulator) == [old]
    assert manager.in_flight_count == 0


def test_401_is_raised_when_no_new_token_can_be_had(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False, max_retries=0)
    api = gc.TokensApi(bind_api_client(manager))
    api.get_tokens_me()
    emulator.revoke(emulator.issued_tokens[0])
    emulator.inject(Fault.server_error(503), times=None)
    with pytest.raises(ApiException) as excinfo:
        api.get_tokens_me()
    assert excinfo.value.status == 401
    assert manager.in_flight_count == 0


def test_replay_can_be_turned_off(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    api_client = gc.ApiClient(host=emulator.api_base_url)
    api_client.set_http_client(GenesysHttpClient(manager, replay_401=False))
    api = gc.TokensApi(api_client)
    api.get_tokens_me()
    emulator.revoke(emulator.issued_tokens[0])
    with pytest.raises(ApiException) as excinfo:
        api.get_tokens_me()
    assert excinfo.value.status == 401
    assert emulator.token_requests == 1


def test_other_api_errors_pass_through_untouched(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    api_client = bind_api_client(manager)
    with pytest.raises(ApiException) as excinfo:
        api_client.call_api("/api/v2/no-such-thing", "GET", auth_settings=["PureCloud OAuth"])
    assert excinfo.value.status == 404
    assert emulator.token_requests == 1
    assert manager.in_flight_count == 0


def test_token_never_reaches_the_sdk_debug_log(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    sdk_logger = gc.Configuration().logger
    saved = (sdk_logger.log_level, sdk_logger.log_to_console)
    sdk_logger.log_to_console = False
    sdk_logger.log_level = LogLevel.LTrace
    caplog.set_level(1)
    try:
        manager = make_manager()
        api_client = bind_api_client(manager)
        gc.TokensApi(api_client).get_tokens_me()
        with pytest.raises(ApiException):
            api_client.call_api("/api/v2/missing", "GET", auth_settings=["PureCloud OAuth"])
        texts = [r.getMessage() for r in caplog.records] + [
            repr(r.__dict__) for r in caplog.records
        ]
        texts.append(repr(api_client.http_client))
        logged = "\n".join(texts)
        assert "/api/v2/tokens/me" in logged  # the SDK did log the request and its headers
        assert len(emulator.issued_tokens) == 1
        for secret in [*emulator.issued_tokens, emulator.client_secret]:
            assert secret not in logged
    finally:
        sdk_logger.log_level, sdk_logger.log_to_console = saved


def test_rebinding_replaces_the_manager_and_keeps_hooks(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    seen: list[str] = []
    api_client = gc.ApiClient(host=emulator.api_base_url)
    default = api_client.get_http_client()
    default.set_pre_request_hook(lambda options: seen.append(options.url) or options)
    first, second = make_manager(), make_manager()
    bind_api_client(first, api_client)
    assert bind_api_client(second, api_client) is api_client
    wrapper = api_client.http_client
    assert isinstance(wrapper, GenesysHttpClient) and wrapper.manager is second
    assert not isinstance(wrapper.inner, GenesysHttpClient)
    gc.TokensApi(api_client).get_tokens_me()
    assert seen == [f"{emulator.api_base_url}/api/v2/tokens/me"]
    assert _tokens_used(emulator) == [second.get_token()]
    assert first.token is None


def test_wrapper_hooks_run_and_a_custom_inner_client_is_kept(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    inner = default_http_client((2.0, 5.0))
    api_client = gc.ApiClient(host=emulator.api_base_url)
    api_client.set_http_client(inner)
    custom = type("Custom", (type(inner),), {})()
    api_client.set_http_client(custom)
    bind_api_client(make_manager(), api_client)
    wrapper = api_client.http_client
    assert wrapper.inner is custom
    statuses: list[int] = []
    headers_seen: list[bool] = []
    wrapper.set_pre_request_hook(
        lambda options: headers_seen.append("Authorization" in options.headers) or options
    )
    wrapper.set_post_request_hook(lambda response: statuses.append(response.status) or response)
    gc.TokensApi(api_client).get_tokens_me()
    assert statuses == [200]
    assert headers_seen == [True]  # the SDK's own (empty) header; the token is added after


def test_api_calls_time_out_instead_of_hanging(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    api_client = bind_api_client(make_manager(), timeout=(1.0, 0.05))
    pool_kw = api_client.http_client.inner.rest_client.pool_manager.connection_pool_kw
    assert pool_kw["timeout"].read_timeout == 0.05
    emulator.api_delay = 0.5
    started = time.monotonic()
    with pytest.raises(MaxRetryError, match="Read timed out"):  # after the SDK's retries
        gc.TokensApi(api_client).get_tokens_me()
    assert time.monotonic() - started < 3
    assert api_client.http_client.manager.in_flight_count == 0  # a failed call is not counted


def test_core_package_imports_no_framework():
    code = (
        "import sys, genesys_token, genesys_token.integrations, genesys_token.stores\n"
        "heavy = {'flask', 'django', 'PureCloudPlatformClientV2', 'websockets', 'redis'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.genesys_emulator(api_rate_limit=(3, 1.0))
def test_sdk_calls_are_paced_and_a_429_is_resent_with_its_own_slot(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    from genesys_token.errors import ApiRateLimitedError

    # The pacer allows more than the emulator: the 4th call draws a 429, waits it out in
    # the pacer and is sent again, taking another slot.
    manager = make_manager(api_rate_limit=(5, 1.0), api_rate_wait=5.0)
    api = gc.OrganizationApi(bind_api_client(manager))
    for _ in range(4):
        assert api.get_organizations_me().id == emulator.org_id
    assert [r.status for r in emulator.api_request_log] == [200, 200, 200, 429, 200]
    pacing = manager.metrics()["pacing"]
    assert pacing["throttled"] == 1 and pacing["calls_paced"] == 5
    fast = make_manager(api_rate_limit=(5, 60.0), api_rate_wait=0.2)
    fast_api = gc.OrganizationApi(bind_api_client(fast))
    sent = emulator.api_requests
    with pytest.raises(ApiRateLimitedError):
        for _ in range(6):
            try:
                fast_api.get_organizations_me()
            except ApiException as exc:
                assert exc.status == 429
    assert emulator.api_requests - sent <= 5


@pytest.mark.genesys_emulator(api_rate_limit=(5, 10.0))
def test_a_paced_sdk_call_whose_read_fails_is_not_resent_under_its_slot(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # urllib3 inside the SDK resent a request whose read timed out (the request had reached
    # the API, which counted it) up to 10 times, all under the one slot the call took.
    manager = make_manager(api_rate_limit=(5, 10.0), api_rate_wait=1.0)
    api = gc.OrganizationApi(bind_api_client(manager, timeout=(3.05, 0.2)))
    emulator.api_delay = 0.3
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps urllib3's error
        api.get_organizations_me()
    emulator.api_delay = 0.0
    assert emulator.api_requests == manager.metrics()["pacing"]["calls_paced"] == 1
    assert sum(emulator.api_429s.values()) == 0
