"""api_session() over the emulator: base URL, token scope, default timeout, retries on 429/5xx."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import MakeManager
from urllib3.util.retry import RequestHistory

from genesys_token import TokenManager, api_session
from genesys_token.integrations import requests_session as session_module
from genesys_token.integrations.requests_session import ApiSession, GenesysRetry, genesys_retry
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"
ECHO_PATH = "/api/v2/echo"

pytestmark = pytest.mark.legacy


@pytest.fixture
def manager(make_manager: MakeManager) -> TokenManager:
    return make_manager()


@pytest.fixture
def session(manager: TokenManager) -> Iterator[ApiSession]:
    with api_session(manager) as s:
        yield s


@pytest.fixture
def other_host() -> Iterator[GenesysEmulator]:
    """A second server: another origin (another port) that must never see the token."""
    with GenesysEmulator() as other:
        yield other


def _calls(emulator: GenesysEmulator) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in emulator.api_request_log]


# -- base URL and token scope --------------------------------------------------------------


def test_relative_paths_resolve_against_the_api_base_url(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession
):
    assert session.get(ORG_PATH).json()["id"] == emulator.org_id
    assert session.get(ORG_PATH.lstrip("/")).status_code == 200

    assert _calls(emulator) == [("GET", ORG_PATH, 200)] * 2
    assert {r.token_used for r in emulator.api_request_log} == {manager.token.access_token}
    assert manager.in_flight_count == 0


@pytest.mark.parametrize(
    ("base", "url", "expected"),
    [
        ("https://api.example.test", "/api/v2/users", "https://api.example.test/api/v2/users"),
        ("https://api.example.test/", "api/v2/users", "https://api.example.test/api/v2/users"),
        (
            "https://gw.example.test/genesys",
            "/api/v2/x",
            "https://gw.example.test/genesys/api/v2/x",
        ),
        ("https://api.example.test", "https://other.test/a", "https://other.test/a"),
        ("https://api.example.test", "//other.test/a", "https://other.test/a"),
        ("https://api.example.test", b"/api/v2/users", "https://api.example.test/api/v2/users"),
    ],
)
def test_resolve_keeps_absolute_urls_and_the_base_path(base: str, url: str, expected: str):
    assert ApiSession(base, 1.0).resolve(url) == expected


def test_absolute_url_to_the_api_origin_carries_the_token(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession
):
    assert session.get(emulator.api_base_url + ORG_PATH).status_code == 200
    assert emulator.api_request_log[0].token_used == manager.token.access_token


def test_absolute_url_to_another_origin_gets_no_token(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession, other_host
):
    seen = session.get(other_host.url + "/headers").json()

    assert "Authorization" not in seen
    assert emulator.token_requests == 0  # not even fetched: nothing needed it
    assert manager.in_flight_count == 0


def test_redirect_to_another_origin_drops_the_token(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession, other_host
):
    response = session.get("/redirect", params={"to": other_host.url + "/headers"})

    assert response.status_code == 200
    assert "Authorization" not in response.json()
    assert emulator.api_request_log[0].token_used == manager.token.access_token
    assert manager.in_flight_count == 0


def test_401_is_replayed_with_a_new_token(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession
):
    first = manager.get_token()
    emulator.revoke(first)

    response = session.get(ORG_PATH)

    assert response.status_code == 200
    assert [r.status for r in emulator.api_request_log] == [401, 200]
    assert manager.get_token() != first
    assert emulator.token_requests == 2


# -- timeout ----------------------------------------------------------------------------------


def test_every_call_gets_the_default_timeout(emulator: GenesysEmulator, manager: TokenManager):
    emulator.inject(Fault(delay=1.0, passthrough=True), path=ORG_PATH)
    with api_session(manager, timeout=(3.05, 0.2)) as session:
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout):  # not retried: it may be in progress
            session.get(ORG_PATH)
        assert time.monotonic() - started < 0.9
    assert emulator.api_requests == 1


def test_a_call_can_pass_its_own_timeout(emulator: GenesysEmulator, manager: TokenManager):
    emulator.inject(Fault(delay=0.3, passthrough=True), path=ORG_PATH)
    with api_session(manager, timeout=(3.05, 0.05), max_retries=0) as session:
        assert session.get(ORG_PATH, timeout=5).status_code == 200


# -- retries ----------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_after_the_pause(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession
):
    manager.get_token()
    emulator.throttle_api(times=1, retry_after=1)

    started = time.monotonic()
    response = session.get(ORG_PATH)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert _calls(emulator) == [("GET", ORG_PATH, 429), ("GET", ORG_PATH, 200)]
    assert 0.95 <= elapsed < 3.0  # the one-second pause Genesys asked for, no more
    assert manager.in_flight_count == 0


def test_no_retry_beyond_max_retries(emulator: GenesysEmulator, manager: TokenManager):
    emulator.throttle_api(times=None, retry_after=0)
    with api_session(manager, max_retries=2, backoff_factor=0) as session:
        response = session.get(ORG_PATH)

    assert response.status_code == 429  # the last answer comes back, nothing raises
    assert response.json()["code"] == "too.many.requests.retry.after"
    assert _calls(emulator) == [("GET", ORG_PATH, 429)] * 3


def test_429s_retried_within_one_call_are_counted_and_logged_with_their_ids(
    emulator: GenesysEmulator, manager: TokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    manager.get_token()
    emulator.throttle_api(times=None, retry_after=0)
    with (
        caplog.at_level(logging.INFO, logger="genesys_token.integrations"),
        api_session(manager, max_retries=3, backoff_factor=0) as session,
    ):
        assert session.get(f"{ORG_PATH}?userId=private-id-7").status_code == 429
    # Three retried inside urllib3 (no adapter saw them), and the last one returned.
    assert manager.metrics()["api_429s"] == 4
    ids = [r.correlation_id for r in emulator.api_request_log]
    assert len(ids) == 4 and all(ids)
    retried = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("genesys_token.integrations") and r.levelno == logging.INFO
    ]
    assert retried == [
        f"API call GET 127.0.0.1:{emulator.port}{ORG_PATH} answered HTTP 429; retry {n} of 3"
        f" (correlation id {ids[n - 1]})"
        for n in (1, 2, 3)
    ]
    assert "private-id-7" not in caplog.text
    assert manager.token is not None and manager.token.access_token not in caplog.text


def test_max_retries_zero_sends_once(emulator: GenesysEmulator, manager: TokenManager):
    emulator.throttle_api(times=None, retry_after=0)
    with api_session(manager, max_retries=0) as session:
        assert session.get(ORG_PATH).status_code == 429
    assert emulator.api_requests == 1


def test_post_is_retried_on_429_with_its_body(
    emulator: GenesysEmulator, manager: TokenManager, session: ApiSession
):
    emulator.throttle_api(times=2, retry_after=0)

    response = session.post(ECHO_PATH, data=b"x" * 1000)

    assert response.status_code == 200
    assert response.json()["length"] == 1000
    assert [(r.method, r.status) for r in emulator.api_request_log] == [
        ("POST", 429),
        ("POST", 429),
        ("POST", 200),
    ]


@pytest.mark.parametrize("status", [502, 503, 504])
def test_post_is_not_retried_on_a_gateway_error(
    emulator: GenesysEmulator, manager: TokenManager, status: int
):
    emulator.inject(Fault.server_error(status), path=ECHO_PATH)
    with api_session(manager, backoff_factor=0) as session:
        assert session.post(ECHO_PATH, data=b"{}").status_code == status
    assert emulator.api_requests == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_get_is_retried_on_a_gateway_error(
    emulator: GenesysEmulator, manager: TokenManager, status: int
):
    emulator.inject(Fault.server_error(status), times=2, path=ORG_PATH)
    with api_session(manager, backoff_factor=0) as session:
        assert session.get(ORG_PATH).status_code == 200
    assert [r.status for r in emulator.api_request_log] == [status, status, 200]


def test_retry_methods_widens_the_gateway_retries(emulator: GenesysEmulator, manager):
    emulator.inject(Fault.server_error(503), path=ECHO_PATH)
    with api_session(manager, backoff_factor=0, retry_methods=["post"]) as session:
        assert session.post(ECHO_PATH, data=b"{}").status_code == 200
    assert emulator.api_requests == 2


def test_a_long_retry_after_is_capped(emulator: GenesysEmulator, manager: TokenManager):
    emulator.throttle_api(times=1, retry_after=3600)
    with api_session(manager, max_retry_after=0.05) as session:
        started = time.monotonic()
        assert session.get(ORG_PATH).status_code == 200
        assert time.monotonic() - started < 1.0


def test_an_unparseable_retry_after_falls_back_to_the_backoff(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault.too_many_requests(retry_after="soon"), path=ORG_PATH)
    with api_session(manager, backoff_factor=0) as session:
        assert session.get(ORG_PATH).status_code == 200
    assert emulator.api_requests == 2


# -- the policy itself ------------------------------------------------------------------------


def _after_errors(retry: GenesysRetry, errors: int) -> GenesysRetry:
    return retry.new(history=(RequestHistory("GET", "/x", None, 503, None),) * errors)


def test_backoff_is_exponential_with_full_jitter(monkeypatch: pytest.MonkeyPatch):
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high / 2

    monkeypatch.setattr(session_module.random, "uniform", uniform)
    retry = genesys_retry(10, backoff_factor=0.5)

    waits = [_after_errors(retry, n).get_backoff_time() for n in (0, 1, 2, 3, 10)]

    assert waits == [0.0, 0.25, 0.5, 1.0, session_module.BACKOFF_MAX / 2]
    assert bounds == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, session_module.BACKOFF_MAX)]


def test_retry_after_parsing_is_capped_and_survives_garbage():
    retry = genesys_retry(max_retry_after=60.0)
    assert retry.parse_retry_after("5") == 5.0
    assert retry.parse_retry_after("3600") == 60.0
    assert retry.parse_retry_after("soon") == 0.0
    # the cap survives the copies urllib3 makes on every retry
    assert retry.increment("GET", "/x").max_retry_after == 60.0


def test_negative_max_retries_is_refused(manager: TokenManager):
    with pytest.raises(ValueError, match="max_retries"):
        api_session(manager, max_retries=-1)


def test_repr_shows_the_base_url_not_the_token(manager: TokenManager, session: ApiSession):
    session.get(ORG_PATH)
    token = manager.get_token()
    assert manager.api_base_url in repr(session)
    assert token not in repr(session) + repr(session.auth)


def test_failed_call_logs_its_correlation_id_once_without_query_or_token(
    emulator: GenesysEmulator,
    manager: TokenManager,
    session: ApiSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert session.get(ORG_PATH).status_code == 200  # not logged
        response = session.get("/api/v2/nowhere?userId=private-id-7")
    assert response.status_code == 404
    sent = response.headers["ININ-Correlation-Id"]
    assert emulator.api_request_log[-1].correlation_id == sent
    warnings = [r for r in caplog.records if r.name.startswith("genesys_token.integrations")]
    assert [(r.levelno, r.getMessage()) for r in warnings] == [
        (
            logging.WARNING,
            f"API call GET 127.0.0.1:{emulator.port}/api/v2/nowhere failed: HTTP 404"
            f" (correlation id {sent})",
        )
    ]
    assert "private-id-7" not in caplog.text
    assert manager.token.access_token not in caplog.text


def test_failed_call_on_a_path_holding_uuids_is_logged_readable(
    emulator: GenesysEmulator, session: ApiSession, caplog: pytest.LogCaptureFixture
) -> None:
    # Review api_path_uuid: the long-run rule took the whole path for a token.
    path = "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21/presences/purecloud"
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert session.get(path).status_code == 404
    (record,) = [r for r in caplog.records if r.name.startswith("genesys_token.integrations")]
    assert f"API call GET 127.0.0.1:{emulator.port}{path} failed: HTTP 404" in record.getMessage()


@pytest.mark.parametrize(
    "value", ["abc status=200 host=x) ok", "a b=c", "Bearer-" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0L"]
)
def test_failed_call_leaves_out_a_malformed_correlation_id(
    emulator: GenesysEmulator, session: ApiSession, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    emulator.inject(Fault(status=500, headers={"ININ-Correlation-Id": value}), path=ORG_PATH)
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert session.get(ORG_PATH).status_code == 500
    (record,) = [r for r in caplog.records if r.name.startswith("genesys_token.integrations")]
    assert record.getMessage() == (
        f"API call GET 127.0.0.1:{emulator.port}{ORG_PATH} failed: HTTP 500"
    )
    assert record.correlation_id is None


def test_failed_call_after_a_redirect_is_logged_once(
    emulator: GenesysEmulator, session: ApiSession, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.inject(Fault(status=302, headers={"Location": "/api/v2/nowhere"}), path=ORG_PATH)
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert session.get(ORG_PATH).status_code == 404
    shown = [r for r in caplog.records if r.name.startswith("genesys_token.integrations")]
    assert len(shown) == 1 and "/api/v2/nowhere failed: HTTP 404" in shown[0].getMessage()
