"""The retry policy of token requests, against the emulator's fault injection.

Most tests run the transport on a simulated clock whose time moves only when the transport
waits, so every requested delay is recorded exactly and nothing sleeps; a few run in real
time and read the gaps off the emulator's request log.
"""

from __future__ import annotations

import email.utils
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import run_scheduled

from genesys_token import InvalidClientError, RateLimitedError, TokenManager, TokenRequestError
from genesys_token.errors import ManagerClosedError, UnauthorizedClientError
from genesys_token.http.token_endpoint import Clock, RetryNotice, TokenEndpoint, TokenResponse
from genesys_token.settings import Config, Credentials
from genesys_token.testing import Fault, GenesysEmulator

pytestmark = pytest.mark.legacy


class SimTime:
    """Clocks that move only when the transport waits; records every wait it asks for."""

    def __init__(self, draw: float = 0.5) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0
        self.draw = draw
        self.waits: list[float] = []

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, time=lambda: self.wall, random=lambda: self.draw)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        self.wall += seconds
        return False


Build = Callable[..., tuple[TokenEndpoint, Credentials]]
MakeManager = Callable[..., TokenManager]


@pytest.fixture
def sim() -> SimTime:
    return SimTime()


@pytest.fixture
def build(emulator: GenesysEmulator, sim: SimTime) -> Iterator[Build]:
    """Build a TokenEndpoint on the simulated clock; closed after the test."""
    endpoints: list[TokenEndpoint] = []

    def make(
        client_id: str | None = None, client_secret: str | None = None, **options: Any
    ) -> tuple[TokenEndpoint, Credentials]:
        options.setdefault("timeout", (2.0, 2.0))
        on_retry = options.pop("on_retry", None)
        settings = Config.build(
            client_id or emulator.client_id,
            client_secret or emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            **options,
        )
        endpoint = TokenEndpoint(settings, clock=sim.clock(), wait=sim.wait, on_retry=on_retry)
        endpoints.append(endpoint)
        return endpoint, settings.credentials

    yield make
    for endpoint in endpoints:
        endpoint.close()


def _http_date(wall: float) -> str:
    return email.utils.formatdate(wall, usegmt=True)


BACKOFF_FIRST = 0.25  # backoff_base 0.5 * 2**0 * draw 0.5
GENESYS_429_BODY = {
    "message": "Rate limit exceeded the maximum. Retry the request in [2] seconds",
    "code": "too.many.requests.retry.after",
    "status": 429,
}

RETRYABLE = [
    pytest.param(Fault.too_many_requests(1), [1.0], id="429-retry-after-1"),
    pytest.param(Fault(status=429, body=GENESYS_429_BODY), [2.0], id="429-seconds-in-body"),
    pytest.param(Fault(status=429, body="slow down"), [BACKOFF_FIRST], id="429-no-hint"),
    pytest.param(Fault.server_error(500), [BACKOFF_FIRST], id="500"),
    pytest.param(Fault.server_error(502), [BACKOFF_FIRST], id="502"),
    pytest.param(Fault.server_error(503), [BACKOFF_FIRST], id="503"),
    pytest.param(Fault.server_error(504), [BACKOFF_FIRST], id="504"),
    pytest.param(Fault(status=503, headers={"Retry-After": "1"}), [1.0], id="503-retry-after"),
    pytest.param(Fault.html(503), [BACKOFF_FIRST], id="503-html-page"),
    pytest.param(Fault.rate_limited_token(), [BACKOFF_FIRST], id="genesys-400-rate-limit"),
    pytest.param(Fault.rate_limited_token(1), [1.0], id="genesys-400-rate-limit-retry-after"),
    pytest.param(Fault(drop=True), [BACKOFF_FIRST], id="connection-dropped"),
    pytest.param(Fault(status=200, body="{", headers={"Content-Length": "90"}), [0.25], id="cut"),
    pytest.param(Fault(status=503, headers={"Retry-After": "soon"}), [0.25], id="bad-header"),
    pytest.param(Fault(status=503, headers={"Retry-After": "-4"}), [0.25], id="negative-header"),
]


@pytest.mark.parametrize(("fault", "waits"), RETRYABLE)
def test_retryable_fault_then_success_gets_a_token(
    emulator: GenesysEmulator, build: Build, sim: SimTime, fault: Fault, waits: list[float]
) -> None:
    endpoint, credentials = build()
    emulator.inject(fault)
    response = endpoint.fetch(credentials)
    assert response.access_token == emulator.issued_tokens[-1]
    assert response.attempts == 2
    assert emulator.token_requests == 2
    assert sim.waits == pytest.approx(waits)


def test_http_date_retry_after_is_measured_on_the_injected_wall_clock(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build()
    emulator.inject(Fault(status=503, headers={"Retry-After": _http_date(sim.wall + 3)}))
    endpoint.fetch(credentials)
    assert sim.waits == pytest.approx([3.0], abs=1.0)  # HTTP-dates have whole seconds


def test_read_timeout_is_retried(emulator: GenesysEmulator, build: Build, sim: SimTime) -> None:
    endpoint, credentials = build(timeout=(2.0, 0.2))
    emulator.inject(Fault(delay=0.5, passthrough=True))
    assert endpoint.fetch(credentials).attempts == 2
    assert sim.waits == [BACKOFF_FIRST]


def test_refused_connection_is_retried_then_raised(sim: SimTime) -> None:
    settings = Config.build("id", "pw", token_url="http://127.0.0.1:9/oauth/token", max_retries=2)
    endpoint = TokenEndpoint(settings, clock=sim.clock(), wait=sim.wait)
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(settings.credentials)
    endpoint.close()
    assert caught.value.status is None
    assert caught.value.retryable
    assert caught.value.attempts == 3
    assert len(sim.waits) == 2


def test_backoff_grows_exponentially_and_is_capped(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    sim.draw = 1.0
    endpoint, credentials = build(backoff_base=0.5, backoff_max=1.5)
    emulator.inject(Fault.server_error(500), times=4)
    assert endpoint.fetch(credentials).attempts == 5
    assert sim.waits == [0.5, 1.0, 1.5, 1.5]


def test_full_jitter_draws_within_the_ceiling(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    sim.draw = 0.1
    endpoint, credentials = build(backoff_base=2.0)
    emulator.inject(Fault.server_error(502), times=2)
    endpoint.fetch(credentials)
    assert sim.waits == pytest.approx([0.2, 0.4])


NON_RETRYABLE = [
    pytest.param(
        Fault.json({"error": "invalid_client", "description": "authentication failed"}, status=400),
        InvalidClientError,
        "invalid_client",
        id="400-invalid-client",
    ),
    pytest.param(Fault(status=401, body=""), InvalidClientError, None, id="401-no-body"),
    pytest.param(
        Fault.json({"error": "unauthorized_client", "description": "no"}, status=400),
        UnauthorizedClientError,
        "unauthorized_client",
        id="400-unauthorized-client",
    ),
    pytest.param(
        Fault.json({"error": "invalid_request", "description": "grant_type is required"}, 400),
        TokenRequestError,
        "invalid_request",
        id="400-other-invalid-request",
    ),
    pytest.param(Fault(status=403), TokenRequestError, None, id="403"),
    pytest.param(Fault(status=404), TokenRequestError, None, id="404"),
    pytest.param(Fault(status=408), TokenRequestError, None, id="408"),
    pytest.param(
        Fault(status=302, headers={"Location": "http://127.0.0.1:9/steal"}),
        TokenRequestError,
        None,
        id="302-redirect-not-followed",
    ),
]


@pytest.mark.parametrize(("fault", "error_type", "code"), NON_RETRYABLE)
def test_non_retryable_answer_raises_its_typed_error_after_one_request(
    emulator: GenesysEmulator,
    build: Build,
    sim: SimTime,
    fault: Fault,
    error_type: type[TokenRequestError],
    code: str | None,
) -> None:
    endpoint, credentials = build()
    emulator.inject(fault)
    with pytest.raises(error_type) as caught:
        endpoint.fetch(credentials)
    error = caught.value
    assert type(error) is error_type
    assert not error.retryable
    assert error.status == fault.status
    assert error.error == code
    assert error.attempts == 1
    assert emulator.token_requests == 1
    assert sim.waits == []


def test_wrong_secret_is_invalid_client_after_one_request(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(client_secret="not-the-secret")
    with pytest.raises(InvalidClientError) as caught:
        endpoint.fetch(credentials)
    assert (caught.value.status, caught.value.error) == (401, "invalid_client")
    assert caught.value.description == "authentication failed"
    assert emulator.token_requests == 1


def test_unknown_client_is_invalid_client(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build(client_id="nobody")
    with pytest.raises(InvalidClientError, match="client not found"):
        endpoint.fetch(credentials)
    assert emulator.token_requests == 1


def test_client_without_the_grant_is_unauthorized_client(
    emulator: GenesysEmulator, build: Build
) -> None:
    emulator.add_client("no-grant", "pw-no-grant", grant_allowed=False)
    endpoint, credentials = build(client_id="no-grant", client_secret="pw-no-grant")
    with pytest.raises(UnauthorizedClientError) as caught:
        endpoint.fetch(credentials)
    assert (caught.value.status, caught.value.error) == (400, "unauthorized_client")
    assert isinstance(caught.value, InvalidClientError)  # callers catching that see it too
    assert emulator.token_requests == 1


def test_endless_503_with_max_retries_2_makes_exactly_3_requests(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build(max_retries=2)
    emulator.inject(Fault.server_error(503), times=None)
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(credentials)
    assert type(caught.value) is TokenRequestError
    assert caught.value.status == 503
    assert caught.value.attempts == 3
    assert emulator.token_requests == 3
    assert len(sim.waits) == 2


def test_max_retries_0_makes_one_request(emulator: GenesysEmulator, build: Build) -> None:
    endpoint, credentials = build(max_retries=0)
    emulator.inject(Fault.server_error(500), times=None)
    with pytest.raises(TokenRequestError):
        endpoint.fetch(credentials)
    assert emulator.token_requests == 1


def test_deadline_stops_retries_that_would_end_past_it(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build(max_retries=50, retry_deadline=5.0)
    emulator.inject(Fault(status=503, headers={"Retry-After": "2"}), times=None)
    with pytest.raises(TokenRequestError):
        endpoint.fetch(credentials)
    assert sim.waits == [2.0, 2.0]  # a third wait would end at 6 s > 5 s
    assert emulator.token_requests == 3


def test_retry_after_beyond_the_deadline_fails_fast_with_retry_after(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build(retry_deadline=10.0, max_retry_after=60.0)
    emulator.inject(Fault.too_many_requests(30))
    with pytest.raises(RateLimitedError) as caught:
        endpoint.fetch(credentials)
    assert caught.value.retry_after == 30.0
    assert emulator.token_requests == 1
    assert sim.waits == []


def test_retry_after_is_capped_at_max_retry_after(
    emulator: GenesysEmulator, build: Build, sim: SimTime, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, credentials = build(max_retry_after=5.0)
    emulator.inject(Fault.too_many_requests(3600))
    endpoint.fetch(credentials)
    assert sim.waits == [5.0]
    assert "waiting at most 5s" in caplog.text


def test_still_throttled_after_retries_raises_rate_limited_with_retry_after(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build(max_retries=2)
    emulator.inject(Fault.too_many_requests(1), times=None)
    with pytest.raises(RateLimitedError) as caught:
        endpoint.fetch(credentials)
    assert caught.value.retry_after == 1.0
    assert caught.value.status == 429
    assert caught.value.attempts == 3
    assert sim.waits == [1.0, 1.0]


def test_genesys_400_rate_limit_after_retries_is_rate_limited(
    emulator: GenesysEmulator, build: Build
) -> None:
    endpoint, credentials = build(max_retries=1)
    emulator.inject(Fault.rate_limited_token(), times=None)
    with pytest.raises(RateLimitedError) as caught:
        endpoint.fetch(credentials)
    assert (caught.value.status, caught.value.error) == (400, "invalid_request")
    assert caught.value.description is not None
    assert caught.value.description.startswith("rate limit exceeded;")
    assert emulator.token_requests == 2


def test_each_retry_is_reported_and_logged(
    emulator: GenesysEmulator, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    notices: list[RetryNotice] = []
    endpoint, credentials = build(on_retry=notices.append)
    emulator.inject(Fault.server_error(503))
    emulator.inject(Fault.too_many_requests(1))
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        endpoint.fetch(credentials)
    assert [(n.attempt, n.delay, n.error.status) for n in notices] == [
        (1, BACKOFF_FIRST, 503),
        (2, 1.0, 429),
    ]
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    # Each try's line names the answer's correlation id (what Genesys support asks for).
    ids = [record.correlation_id for record in emulator.token_request_log[:2]]
    assert [r.getMessage() for r in retries] == [
        f"token request failed (HTTP 503 correlation_id={ids[0]}); retry 1 of 4 in 0.25s",
        f"token request failed (HTTP 429 correlation_id={ids[1]}); retry 2 of 4 in 1.00s",
    ]
    assert [r.__dict__["attempt"] for r in retries] == [1, 2]
    assert [r.__dict__["correlation_id"] for r in retries] == ids


def test_closing_during_a_retry_wait_raises_manager_closed(emulator: GenesysEmulator) -> None:
    settings = Config.build(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    )
    stop = threading.Event()
    stop.set()  # the owner closed: every wait returns at once, interrupted
    endpoint = TokenEndpoint(settings, wait=stop.wait)
    emulator.inject(Fault.too_many_requests(30))
    with pytest.raises(ManagerClosedError):
        endpoint.fetch(settings.credentials)
    endpoint.close()
    assert emulator.token_requests == 1


def test_real_retry_after_gap_is_honoured(emulator: GenesysEmulator) -> None:
    settings = Config.build(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    )
    endpoint = TokenEndpoint(settings)
    emulator.inject(Fault.too_many_requests(1))
    response = endpoint.fetch(settings.credentials)
    endpoint.close()
    first, second = emulator.token_request_log
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.0
    assert isinstance(response, TokenResponse)


# -- through the manager -----------------------------------------------------------------

NO_JITTER = Clock(random=lambda: 0.0)  # real time; backoff and refresh jitter draw 0


def test_manager_counts_each_retry_in_metrics(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(clock=NO_JITTER, background_refresh=False)
    emulator.inject(Fault.server_error(503))
    emulator.inject(Fault(drop=True))
    assert manager.get_token() == emulator.issued_tokens[-1]
    snapshot = manager.metrics()
    assert (snapshot["retries"], snapshot["token_requests"], snapshot["successes"]) == (2, 3, 1)
    assert emulator.token_requests == 3


def test_manager_with_max_retries_2_and_endless_503_raises_after_3_requests(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(clock=NO_JITTER, background_refresh=False, max_retries=2)
    emulator.inject(Fault.server_error(503), times=None)
    with pytest.raises(TokenRequestError) as caught:
        manager.get_token()
    assert caught.value.status == 503
    assert emulator.token_requests == 3
    snapshot = manager.metrics()
    assert (snapshot["errors"], snapshot["token_requests"], snapshot["retries"]) == (1, 3, 2)
    assert snapshot["last_error"].startswith("TokenRequestError: token request failed (HTTP 503")


def test_background_refresh_waits_at_least_retry_after(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: Any
) -> None:
    manager = make_manager(clock=fake_clock.clock(), background_refresh=False, max_retries=0)
    manager.get_token()
    fake_clock.advance(86399 - 330)  # past the refresh point, still usable
    emulator.inject(Fault.too_many_requests(7))
    run_scheduled(manager)  # what a scheduler worker runs: fails, rate-limited
    assert emulator.token_requests == 2
    # Its own backoff would be 0.5 s here (first failure: 1 s ceiling x draw 0.5).
    fake_clock.advance(6.9)
    run_scheduled(manager)
    assert emulator.token_requests == 2  # still inside Retry-After: no request
    fake_clock.advance(0.2)
    run_scheduled(manager)
    assert emulator.token_requests == 3


def test_background_refresher_gap_after_rate_limit_honours_retry_after(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    emulator.token_ttl = 2  # refresh point ~1.4 s after the first token
    manager = make_manager(max_retries=0)
    manager.get_token()
    emulator.inject(Fault.rate_limited_token(retry_after=1))
    done = threading.Event()
    # The log, not the counter: the emulator counts a request when it arrives and logs it
    # once answered (minting a token takes a moment), so a count of 3 may come with 2 records.
    for _ in range(200):  # bounded: 200 x 50 ms
        if len(emulator.token_request_log) >= 3 or done.wait(0.05):
            break
    log = emulator.token_request_log
    assert [record.status for record in log[:3]] == [200, 400, 200]
    assert log[2].time - log[1].time >= 1.0
    assert manager.metrics()["errors"] == 1


def test_retry_after_from_a_429_body_is_capped_too(
    emulator: GenesysEmulator, build: Build, sim: SimTime
) -> None:
    endpoint, credentials = build(max_retry_after=0.5, max_retries=1)
    emulator.inject(Fault(status=429, body=GENESYS_429_BODY), times=None)
    with pytest.raises(RateLimitedError) as caught:
        endpoint.fetch(credentials)
    assert sim.waits == [0.5]
    assert caught.value.retry_after == 0.5
