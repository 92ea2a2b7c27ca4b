"""The one backoff and retry policy (http/retry_policy.py), and the figures of every site
that backs off through it: token endpoint, refresher, credentials cool-down, webhook sender,
GenesysRetry."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from conftest import FakeClock, MakeManager
from urllib3.util.retry import RequestHistory

from genesys_token import ConfigurationError
from genesys_token.core.rejections import RejectedCredentials
from genesys_token.errors import InvalidClientError
from genesys_token.http.retry_policy import (
    EQUAL_JITTER,
    FULL_JITTER,
    NO_JITTER,
    Backoff,
    RetryPolicy,
)
from genesys_token.integrations.requests_session import BACKOFF_MAX, genesys_retry
from genesys_token.observability.webhook import WebhookSender
from genesys_token.settings import Config
from genesys_token.testing import Fault, GenesysEmulator

ALMOST_ONE = 1.0 - 2.0**-53  # the largest draw random() can give


def draws(*values: float) -> Any:
    """A ``random`` that gives ``values`` in turn."""
    it = iter(values)
    return lambda: next(it)


# -- Backoff ----------------------------------------------------------------------------------


def test_ceiling_doubles_from_base_and_stops_at_maximum() -> None:
    backoff = Backoff(0.5, 30.0)
    assert [backoff.ceiling(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]


def test_ceiling_never_overflows_after_very_many_failures() -> None:
    # 2.0 ** 1100 raises OverflowError: the doubling stops long before.
    assert Backoff(1.0, 60.0).ceiling(1100) == 60.0
    assert Backoff(0.0, 60.0).ceiling(10**9) == 0.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_there_is_no_ceiling_before_the_first_failure(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(1.0, 2.0).ceiling(attempt)


def test_full_jitter_draws_from_nothing_to_the_ceiling() -> None:
    backoff = Backoff(1.0, 60.0, FULL_JITTER)
    assert backoff.delay(3, draws(0.0)) == 0.0
    assert backoff.delay(3, draws(0.25)) == 1.0
    assert backoff.delay(3, draws(ALMOST_ONE)) < 4.0
    assert backoff.delay(10, draws(ALMOST_ONE)) < 60.0
    assert backoff.interval(3) == (0.0, 4.0)


def test_equal_jitter_draws_from_half_the_ceiling_to_all_of_it() -> None:
    backoff = Backoff(0.5, 5.0, EQUAL_JITTER)
    assert backoff.delay(2, draws(0.0)) == 0.5
    assert backoff.delay(2, draws(0.5)) == 0.75
    assert backoff.delay(20, draws(ALMOST_ONE)) <= 5.0
    assert backoff.interval(20) == (2.5, 5.0)


def test_no_jitter_is_the_ceiling_and_a_spread_can_pass_it() -> None:
    assert Backoff(1.0, 8.0, NO_JITTER).delay(3, draws(0.9)) == 4.0
    spread = Backoff(1.0, 60.0, (0.75, 1.25))
    assert [spread.delay(n, draws(0.0)) for n in (1, 7)] == [0.75, 45.0]
    assert spread.delay(7, draws(1.0)) == 75.0  # +25% of the 60 s cap


def test_delay_is_what_uniform_draws_within_the_interval() -> None:
    backoff = Backoff(0.3, 7.0, (0.2, 1.1))
    for attempt in range(1, 8):
        seed = random.Random(attempt)
        expected = random.Random(attempt).uniform(*backoff.interval(attempt))
        assert backoff.delay(attempt, seed.random) == pytest.approx(expected, rel=1e-15)


def test_minimum_and_within_bound_a_wait() -> None:
    backoff = Backoff(1.0, 60.0, FULL_JITTER, minimum=0.05)
    assert backoff.delay(1, draws(0.0)) == 0.05
    assert backoff.delay(5, draws(0.5)) == 8.0
    assert backoff.delay(5, draws(0.5), within=4.0) == 2.0  # within lowers the ceiling
    assert backoff.delay(5, draws(0.5), within=100.0) == 8.0  # but never raises it
    assert backoff.delay(5, draws(ALMOST_ONE), within=0.0) == 0.05  # nor below minimum


BAD_BACKOFFS = [
    pytest.param({"base": -0.1}, "base", id="negative-base"),
    pytest.param({"base": float("nan")}, "base", id="nan-base"),
    pytest.param({"base": "1"}, "base", id="text-base"),
    pytest.param({"base": True}, "base", id="bool-base"),
    pytest.param({"maximum": float("inf")}, "maximum", id="infinite-maximum"),
    pytest.param({"maximum": -1}, "maximum", id="negative-maximum"),
    pytest.param({"minimum": -0.01}, "minimum", id="negative-minimum"),
    pytest.param({"jitter": (1.0, 0.5)}, "jitter", id="jitter-reversed"),
    pytest.param({"jitter": (-0.1, 1.0)}, "jitter", id="jitter-negative"),
    pytest.param({"jitter": (0.0, 1.0, 2.0)}, "jitter", id="jitter-three"),
    pytest.param({"jitter": [0.0, 1.0]}, "jitter", id="jitter-list"),
]


@pytest.mark.parametrize(("change", "field"), BAD_BACKOFFS)
def test_a_bad_backoff_is_refused_at_construction_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"base": 1.0, "maximum": 2.0, **change}
    with pytest.raises(ConfigurationError) as caught:
        Backoff(**values)
    assert caught.value.field == field


def test_a_backoff_is_an_immutable_value() -> None:
    backoff = Backoff(1, 60, EQUAL_JITTER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.base = 2.0  # type: ignore[misc]
    assert isinstance(backoff.base, float) and isinstance(backoff.maximum, float)
    assert backoff == Backoff(1.0, 60.0, (0.5, 1.0))
    assert hash(backoff) == hash(Backoff(1.0, 60.0, (0.5, 1.0)))
    assert dataclasses.replace(backoff, maximum=5.0).ceiling(10) == 5.0
    assert backoff.ceiling(10) == 60.0


# -- RetryPolicy ------------------------------------------------------------------------------


def _policy(**change: Any) -> RetryPolicy:
    values: dict[str, Any] = {
        "max_retries": 2,
        "deadline": 10.0,
        "max_retry_after": 30.0,
        "backoff": Backoff(0.5, 4.0),
        **change,
    }
    return RetryPolicy(**values)


def test_retries_are_bounded_by_count_and_deadline() -> None:
    policy = _policy()
    assert policy.allows(1, 5.0, 10.0)
    assert policy.allows(2, 10.0, 10.0)  # ending exactly at the deadline is allowed
    assert not policy.allows(3, 5.0, 10.0)  # a third retry: over max_retries
    assert not policy.allows(1, 10.001, 10.0)  # would start past the deadline
    assert not _policy(max_retries=0).allows(1, 0.0, 10.0)


def test_the_wait_is_retry_after_capped_or_else_the_backoff() -> None:
    policy = _policy()
    assert policy.wait(1, 7.0, draws()) == 7.0  # no draw taken
    assert policy.wait(1, 3600.0, draws()) == 30.0
    assert policy.retry_after(45.0) == 30.0
    assert policy.wait(3, None, draws(0.5)) == 1.0
    assert policy.wait(9, None, draws(0.5)) == 2.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"deadline": float("nan")}, "deadline"),
        ({"max_retry_after": -5}, "max_retry_after"),
        ({"backoff": (0.5, 4.0)}, "backoff"),
    ],
)
def test_a_bad_retry_policy_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _policy(**change)
    assert caught.value.field == field


def test_a_retry_policy_is_an_immutable_value() -> None:
    policy = _policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 9  # type: ignore[misc]
    assert policy == _policy()


# -- the sites --------------------------------------------------------------------------------


def test_credentials_cool_down_doubles_from_1s_to_60s_with_25_percent_spread() -> None:
    for draw, low_or_high in ((0.0, 0.75), (1.0, 1.25)):
        rejected = RejectedCredentials(lambda: 0.0, lambda draw=draw: draw)
        rejected.check(b"digest")
        error = InvalidClientError("credentials rejected")
        cooldowns = [rejected.keep(error) for _ in range(9)]
        ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
        assert cooldowns == [c * low_or_high for c in ceilings]


def test_webhook_waits_grow_from_base_with_equal_jitter_up_to_5s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Config.build(
        "client-id",
        "client-secret-value",
        webhook_url="http://127.0.0.1:9/",
        webhook_secret="webhook-signing-key",
    )
    sender = WebhookSender(
        settings.webhook_url,
        settings.webhook_secret,
        on_failure=lambda data: None,
        backoff_base=0.5,
    )
    try:
        for draw, share in ((0.0, 0.5), (ALMOST_ONE, 0.5 + ALMOST_ONE / 2)):
            monkeypatch.setattr(random, "random", lambda draw=draw: draw)
            # _backoff(n): the wait before attempt n (2 for the first retry).
            waits = [sender._backoff(n) for n in range(2, 9)]
            assert waits == [c * share for c in (0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0)]
    finally:
        monkeypatch.undo()
        sender.close()


def test_genesys_retry_draws_uniformly_up_to_a_capped_ceiling() -> None:
    retry = genesys_retry(20, backoff_factor=0.25)
    ceilings = []
    for errors in range(1, 12):
        history = (RequestHistory("GET", "/x", None, 503, None),) * errors
        ceilings.append(retry.new(history=history)._backoff.interval(errors))
    assert ceilings == [(0.0, min(BACKOFF_MAX, 0.25 * 2.0 ** (n - 1))) for n in range(1, 12)]
    with pytest.raises(ConfigurationError) as caught:
        genesys_retry(backoff_factor=-1.0)
    assert caught.value.field == "base"


def test_refresh_failures_back_off_doubling_within_a_quarter_of_the_token_left(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    fake = FakeClock(draw=ALMOST_ONE)
    manager = make_manager(clock=fake.clock(), background_refresh=False, max_retries=0)
    old = manager.get_token()
    cell = manager._flight.cell
    assert cell is not None
    emulator.inject(Fault.server_error(503), times=1000)
    fake.advance(cell.refresh_at - fake.monotonic + 1)
    seen: list[tuple[float, float]] = []
    for failures in range(1, 30):
        assert manager.get_token() == old
        retry_at = manager._refresher._retry_at
        assert retry_at is not None
        now = fake.monotonic
        ceiling = min(60.0, 2.0 ** (failures - 1), max(0.05, (cell.usable_until - now) / 4))
        seen.append((retry_at - now, ceiling))
        if not cell.usable(retry_at + 0.01):
            break
        fake.advance(retry_at - now + 0.01)
    assert len(seen) >= 8, seen  # doubling from 1 s, then the quarter of the life left
    for delay, ceiling in seen:
        # retry_at is now + delay on a clock near 1e3..1e5 s: compare to the microsecond.
        assert delay == pytest.approx(max(0.05, ceiling * ALMOST_ONE), abs=1e-6)
