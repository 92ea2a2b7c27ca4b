"""The emulator's per-token API rate limit: Genesys' 429 past L calls in any W seconds."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
import requests
from conftest import poll

from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.testing._cli import build_parser, run

ORG_PATH = "/api/v2/organizations/me"
GRANT = {"grant_type": "client_credentials"}


class Clock:
    """The limit's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limited(clock: Clock) -> Iterator[GenesysEmulator]:
    with GenesysEmulator(api_rate_limit=(3, 60.0), api_rate_clock=clock) as emulator:
        yield emulator


def _token(emulator: GenesysEmulator) -> str:
    response = requests.post(
        emulator.token_url,
        data=GRANT,
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _get(emulator: GenesysEmulator, token: str | None, path: str = ORG_PATH) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.get(emulator.api_base_url + path, headers=headers, timeout=5)


def _statuses_at(
    emulator: GenesysEmulator, clock: Clock, token: str, times: list[float]
) -> list[int]:
    statuses = []
    for at in times:
        clock.now = 1000.0 + at
        statuses.append(_get(emulator, token).status_code)
    return statuses


def test_the_call_past_the_limit_gets_genesys_429_and_another_token_does_not(
    limited: GenesysEmulator,
) -> None:
    first, second = _token(limited), _token(limited)

    answers = [_get(limited, first) for _ in range(4)]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    throttled = answers[-1]
    assert throttled.headers["Retry-After"] == "60"
    body = throttled.json()
    assert body["code"] == "too.many.requests.retry.after"
    assert body["status"] == 429
    assert body["message"] == ("Rate limit exceeded the maximum. Retry the request in [60] seconds")
    assert {"contextId", "details", "errors"} <= set(body)
    assert _get(limited, second).status_code == 200  # each token has its own limit
    assert limited.api_429s == {first: 1}
    assert [r.status for r in limited.api_request_log] == [200, 200, 200, 429, 200]


def test_the_window_slides_not_fixed_minutes(clock: Clock) -> None:
    with GenesysEmulator(api_rate_limit=(2, 10.0), api_rate_clock=clock) as emulator:
        token = _token(emulator)

        # t=12: calls at 5 and 10 are within 10 s, although a fixed window [10, 20) would
        # hold only one.
        statuses = _statuses_at(emulator, clock, token, [0, 5, 9, 10, 12, 15])

        assert statuses == [200, 200, 429, 200, 429, 200]
        assert emulator.api_429s == {token: 2}


def test_retry_after_names_the_whole_seconds_until_room(clock: Clock) -> None:
    with GenesysEmulator(api_rate_limit=(2, 10.0), api_rate_clock=clock) as emulator:
        token = _token(emulator)
        _statuses_at(emulator, clock, token, [0, 5])

        clock.now = 1000.0 + 9.0
        at_9 = _get(emulator, token)
        clock.now = 1000.0 + 9.75
        at_9_75 = _get(emulator, token)

        assert at_9.headers["Retry-After"] == "1"  # the call of t=0 leaves at t=10
        assert "[1] seconds" in at_9.json()["message"]
        assert at_9_75.headers["Retry-After"] == "1"  # rounded up, never 0
        clock.now = 1000.0 + 10.0
        assert _get(emulator, token).status_code == 200


def test_a_call_answered_429_takes_no_place_in_the_window(clock: Clock) -> None:
    with GenesysEmulator(api_rate_limit=(1, 10.0), api_rate_clock=clock) as emulator:
        token = _token(emulator)

        assert _statuses_at(emulator, clock, token, [0, 5, 10, 14, 20]) == [
            200,
            429,
            200,
            429,
            200,
        ]


def test_a_call_is_counted_when_it_arrives_not_when_it_is_answered(
    limited: GenesysEmulator,
) -> None:
    limited.api_rate_limit = (1, 60.0)
    token = _token(limited)
    limited.inject(Fault(delay=0.3, passthrough=True), path=ORG_PATH)
    slow: list[int] = []
    first = threading.Thread(target=lambda: slow.append(_get(limited, token).status_code))
    first.start()
    assert poll(lambda: limited.api_requests == 1)

    # Arrives second, is answered first: the slot is the first arrival's.
    second = _get(limited, token, "/api/v2/tokens/me")
    first.join(timeout=5)

    assert second.status_code == 429
    assert slow == [200]


def test_a_call_answered_with_an_injected_fault_is_counted(limited: GenesysEmulator) -> None:
    limited.api_rate_limit = (1, 60.0)
    token = _token(limited)
    limited.inject(Fault.server_error(503), times=2, path=ORG_PATH)

    statuses = [_get(limited, token).status_code for _ in range(2)]

    assert statuses == [503, 429]  # the limiter sits in front of the API


def test_calls_without_a_token_and_token_requests_are_not_counted(
    limited: GenesysEmulator,
) -> None:
    limited.api_rate_limit = (1, 60.0)

    assert [_get(limited, None).status_code for _ in range(3)] == [401, 401, 401]
    tokens = [_token(limited) for _ in range(3)]
    assert [_get(limited, t).status_code for t in tokens] == [200, 200, 200]


def test_the_limit_is_off_by_default_and_can_be_changed_or_turned_off(
    limited: GenesysEmulator,
) -> None:
    assert GenesysEmulator().api_rate_limit is None
    token = _token(limited)
    assert [_get(limited, token).status_code for _ in range(4)][-1] == 429

    limited.api_rate_limit = None
    assert [_get(limited, token).status_code for _ in range(5)] == [200] * 5
    limited.api_rate_limit = (1, 60.0)  # a new limit starts every window empty
    assert [_get(limited, token).status_code for _ in range(2)] == [200, 429]
    assert limited.api_rate_limit == (1, 60.0)
    assert limited.api_429s == {token: 2}
    limited.reset_counters()
    assert limited.api_429s == {}


def test_injected_429s_are_counted_per_token_too(limited: GenesysEmulator) -> None:
    token = _token(limited)
    limited.throttle_api(times=1, retry_after=2)

    assert _get(limited, token).status_code == 429
    assert limited.api_429s == {token: 1}


@pytest.mark.parametrize(
    "bad", [(0, 60.0), (-1, 60.0), (1, 0.0), (1, -5.0), (1, math.inf), (1, math.nan), (True, 1)]
)
def test_a_bad_limit_is_refused(bad: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="API rate limit"):
        GenesysEmulator(api_rate_limit=bad)


# -- the command line --------------------------------------------------------------------------


def test_the_command_line_flag_sets_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[GenesysEmulator] = []
    ready = threading.Event()
    stop = threading.Event()
    result: list[int] = []

    def on_ready(emulator: GenesysEmulator) -> None:
        seen.append(emulator)
        ready.set()

    worker = threading.Thread(
        target=lambda: result.append(
            run(["--api-rate-limit", "2/60", "-q"], ready=on_ready, stop_event=stop)
        )
    )
    worker.start()
    assert ready.wait(5)
    emulator = seen[0]
    token = _token(emulator)
    statuses = [_get(emulator, token).status_code for _ in range(3)]
    stop.set()
    worker.join(timeout=5)

    assert statuses == [200, 200, 429]
    assert emulator.api_rate_limit == (2, 60.0)
    assert result == [0]
    lines = capsys.readouterr().out.splitlines()
    assert "API rate limit: 2 calls per 60 s per token" in lines
    assert lines[-1].endswith("3 API calls, 0 answered 401, 1 answered 429")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("300/60", (300, 60.0)), ("10/0.5", (10, 0.5)), ("off", None), ("OFF", None)],
)
def test_the_flag_reads_calls_per_seconds(text: str, expected: tuple[int, float] | None) -> None:
    assert build_parser().parse_args(["--api-rate-limit", text]).api_rate_limit == expected


def test_the_flag_is_off_by_default() -> None:
    assert build_parser().parse_args([]).api_rate_limit is None


@pytest.mark.parametrize("text", ["300", "0/60", "-1/60", "10/0", "10/-1", "ten/60", "10/nan", "/"])
def test_a_bad_flag_is_one_clear_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([f"--api-rate-limit={text}"])

    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("python -m genesys_token.testing: error: argument --api-rate-limit:")
    assert "CALLS/SECONDS" in error and "300/60" in error and repr(text) in error


def test_help_shows_the_flag_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])

    text = " ".join(capsys.readouterr().out.split())
    assert "--api-rate-limit CALLS/SECONDS" in text
    assert "(default: off)" in text


def test_keys_of_bearers_gone_idle_are_swept() -> None:
    # Review: 3000 junk bearers were kept forever by a long-running emulator CLI.
    from genesys_token.testing._rate import SWEEP_MIN_KEYS, SlidingWindowLimit

    limit = SlidingWindowLimit(1, 0.1)
    for n in range(3000):
        assert limit.admit(f"junk-{n}", 0.0) is None
    for n in range(1200):  # every window passed: the next sweep drops the 3000
        assert limit.admit(f"late-{n}", 1.0) is None
    assert limit.keys_kept == 1200  # kept: at most twice the keys active, or SWEEP_MIN_KEYS
    assert SWEEP_MIN_KEYS < 1200
