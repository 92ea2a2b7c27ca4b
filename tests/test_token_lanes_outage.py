"""tokens=N on failure paths: as many token requests as tokens=1 (review 5: D1, D3, D4, D6).

A login host that is down, a rejected secret, an API that rejects every token are facts
about the client: the tokens of a manager share one backoff, one fresh-401 rule and one
probe (genesys_token/core/outage.py), so N tokens do not make N times the requests.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from conftest import (
    FakeClock,
    MakeManager,
    in_background,
    join_fetch_threads,
    poll,
    run_threads,
)
from lane_helpers import fetch_every_token

from genesys_token import (
    ConfigurationError,
    GenesysAuth,
    GenesysTokenError,
    InvalidClientError,
    TokenManager,
    api_session,
)
from genesys_token.api_rate import api_rate_from_env
from genesys_token.core.clock import Clock
from genesys_token.core.outage import Outage
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"


def _together(manager: TokenManager, callers: int) -> list[BaseException]:
    """``callers`` threads call get_token() at once (one per lane first); their errors."""
    start = threading.Barrier(callers)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait(5)
        try:
            manager.get_token(timeout=5)
        except GenesysTokenError as exc:
            with lock:
                errors.append(exc)

    run_threads(call, callers)
    join_fetch_threads()
    return errors


@pytest.fixture
def clocked(make_manager: MakeManager, fake_clock: FakeClock) -> MakeManager:
    """Managers on the test's fake clock that never retry: a failure is one token request."""

    def make(**options: Any) -> TokenManager:
        return make_manager(max_retries=0, clock=fake_clock.clock(), **options)

    return make


def _rounds(
    emulator: GenesysEmulator,
    manager: TokenManager,
    clock: FakeClock,
    step: float,
    rounds: int = 6,
) -> list[int]:
    """Token requests after each round of concurrent calls, the clock moved ``step`` s."""
    seen = []
    for _ in range(rounds):
        errors = _together(manager, 6)
        assert len(errors) == 6  # every call failed: nothing was granted
        seen.append(emulator.token_requests)
        clock.advance(step)
    return seen


@pytest.mark.parametrize("tokens", [1, 3])
def test_a_login_host_down_costs_tokens3_what_it_costs_tokens1(
    emulator: GenesysEmulator, clocked: MakeManager, fake_clock: Any, tokens: int
):
    # D1: each lane kept its own backoff: 9 requests in 6 s with tokens=1, 28 with 3. The
    # answers are slow, so the lanes' first acquisitions overlap (the probe's guard).
    emulator.inject(Fault(status=503, delay=0.2), times=None)
    manager = clocked(tokens=tokens)
    # FakeClock's draw 0.5: backoffs of 0.5, 1, 2, 4 s (from the failure); a round a second.
    assert _rounds(emulator, manager, fake_clock, 1.0) == [1, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("source", [False, True], ids=["string", "callable"])
def test_a_wrong_secret_costs_tokens3_what_it_costs_tokens1(
    emulator: GenesysEmulator,
    clocked: MakeManager,
    fake_clock: Any,
    tokens: int,
    source: bool,
):
    # D4: every lane passed the cool-down check before the first rejection was recorded (7
    # requests at t=0.01 s with tokens=10), and each cool-down's end let every lane try.
    reads = [0]

    def wrong() -> str:
        reads[0] += 1
        return "a-wrong-secret"

    secret: str | Callable[[], str] = wrong if source else "a-wrong-secret"
    emulator.inject(Fault(passthrough=True, delay=0.2), times=None)
    manager = clocked(tokens=tokens, client_secret=secret)
    # Cool-downs of about 1, 2, 4 s: each round ends one (the clock moves 5 s).
    seen = _rounds(emulator, manager, fake_clock, 5.0, rounds=4)
    assert seen == [1, 2, 3, 4]
    if source:
        assert reads[0] <= 3 * len(seen)  # was 81 reads against 12 for tokens=1


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("client", ["auth", "api_session"])
def test_an_api_rejecting_every_token_gets_one_replacement_per_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager, tokens: int, client: str
):
    # D3: one fresh-401 rule per lane let each lane replace its token: 2N requests, not 2.
    manager = make_manager(tokens=tokens)
    # Every lane has its token first (fetched in the background): those requests are due.
    assert poll(lambda: manager.get_token() and manager.metrics()["tokens_in_use"] == tokens, 5)
    assert emulator.token_requests == tokens
    emulator.reject_all_tokens = True
    if client == "auth":
        session = requests.Session()
        session.auth = GenesysAuth(manager)
    else:
        session = api_session(manager, max_retries=0)
    with session:
        statuses = [
            session.get(emulator.api_base_url + ORG_PATH, timeout=5).status_code
            for _ in range(4 * tokens)
        ]
    assert set(statuses) == {401}
    assert emulator.token_requests == tokens + 1  # one replacement in all (was 2 * tokens)


def test_the_lanes_wait_for_the_probe_and_then_fetch_their_own_tokens(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Cold start with a good secret: one probe, then each lane its own token.
    emulator.inject(Fault(passthrough=True, delay=0.2), times=3)
    manager = make_manager(tokens=3)
    assert _together(manager, 3) == []
    assert emulator.token_requests == 3
    assert len({manager.get_token() for _ in range(3)}) == 3


def test_new_credentials_after_a_rejection_are_probed_once(
    emulator: GenesysEmulator, clocked: MakeManager
):
    manager = clocked(tokens=3, client_secret="a-wrong-secret")
    with pytest.raises(InvalidClientError):
        manager.get_token()
    manager.set_credentials(emulator.client_secret)
    emulator.inject(Fault(passthrough=True, delay=0.2), times=3)
    assert _together(manager, 3) == []
    assert emulator.token_requests == 1 + 3


@pytest.mark.parametrize("tokens", [0, 51, 100_000])
def test_tokens_is_capped_at_50(tokens: int):
    # D6: tokens=100000 took 9.2 s and 352 MiB to build, and as many token requests.
    with pytest.raises(ConfigurationError) as caught:
        TokenManager("id", "secret", tokens=tokens)
    assert caught.value.field == "tokens"
    assert "50" in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        api_rate_from_env({"GENESYSCLOUD_TOKENS": str(tokens)})
    assert caught.value.field == "tokens"


def test_fifty_tokens_are_allowed():
    TokenManager("id", "secret", tokens=50).close()


@pytest.mark.parametrize("tokens", [1, 3])
def test_a_secret_source_is_reread_once_a_second_whatever_the_tokens(
    emulator: GenesysEmulator, clocked: MakeManager, fake_clock: Any, tokens: int
):
    # D4: each lane re-read the source once a second during a cool-down (81 reads vs 12).
    reads = [0]

    def wrong() -> str:
        reads[0] += 1
        return "a-wrong-secret"

    manager = clocked(tokens=tokens, client_secret=wrong)
    for _ in range(2):  # two rejections: a cool-down of about 2 s
        with pytest.raises(InvalidClientError):
            manager.get_token()
        fake_clock.advance(1.5)
    assert emulator.token_requests == 2
    fake_clock.advance(-1.5 + 1.1)  # within the cool-down, past the re-read's second
    before = reads[0]
    for _ in range(3 * tokens):  # every lane's callers, one after another
        with pytest.raises(InvalidClientError):
            manager.get_token()
    assert reads[0] - before == 1
    assert emulator.token_requests == 2


def test_a_failed_probe_is_reported_once_not_once_per_token(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    # The lanes that waited for the probe fail with its error, without an event, an error
    # count or a log line of their own: one failure, one report.
    emulator.inject(Fault(status=503, delay=0.2), times=None)
    manager = make_manager(tokens=3, max_retries=0)
    failures: list[object] = []
    manager.on("TOKEN_REFRESH_FAILURE", failures.append)
    with caplog.at_level(logging.WARNING, logger="genesys_token.core.refresher"):
        assert len(_together(manager, 3)) == 3
    assert emulator.token_requests == 1
    assert len(failures) == 1
    assert manager.metrics()["errors"] == 1
    assert len([r for r in caplog.records if "token refresh failed" in r.message]) == 1


@pytest.mark.genesys_emulator(token_ttl=40)
@pytest.mark.parametrize("background", [False, True], ids=["on-demand", "background"])
@pytest.mark.parametrize("tokens", [1, 3])
def test_every_token_is_retried_before_it_lapses_whichever_lane_failed(
    emulator: GenesysEmulator,
    clocked: MakeManager,
    fake_clock: Any,
    tokens: int,
    background: bool,
):
    # Review 6 D2: the shared backoff was capped by the FAILING lane's token only; a lane
    # with none set it uncapped (to t=57 for a token usable until t=38), and every lane
    # waited for it: 79 errors from t=38 although the endpoint came back at t=33.
    manager = clocked(tokens=tokens, refresh_jitter=0.0, background_refresh=background)
    manager.get_token()
    emulator.inject(Fault.server_error(503), times=None)
    late_errors = []
    for step in range(92):  # t = 0 .. 46 s, three calls every 0.5 s
        now = step * 0.5
        if now == 33.0:
            emulator.clear_faults()
        if background:
            manager._scheduled_refresh(0)  # what the scheduler runs (it keeps real time)
        for _ in range(3):
            try:
                manager.get_token(timeout=5)
            except GenesysTokenError:
                if now >= 34.0:
                    late_errors.append(now)
        join_fetch_threads()
        fake_clock.advance(0.5)
    assert late_errors == []


@pytest.mark.genesys_emulator(token_ttl=40)
@pytest.mark.parametrize("tokens", [1, 3])
def test_a_fetch_that_passed_the_backoff_check_does_not_probe_before_the_retry_time(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: Any, tokens: int
):
    # Review 6 D3: a fetch that passed the backoff check just before the probe failed became
    # the next probe at once, and sent: 5 token requests in 11 s of outage with one token,
    # 25 with 10, back to back before the retry time. Now it fails with the probe's error.
    # The hook: the clock read of a due token's refresh check (Refresher._due, after it read
    # the retry time) of one caller waits until another caller's probe has failed.
    armed, arrived, release = threading.Event(), threading.Event(), threading.Event()

    def monotonic() -> float:
        if armed.is_set() and sys._getframe(1).f_code.co_name == "_due":
            armed.clear()
            arrived.set()
            release.wait(5)
        return fake_clock.monotonic

    clock = Clock(monotonic=monotonic, time=lambda: fake_clock.wall, random=lambda: 0.5)
    manager = make_manager(
        tokens=tokens, max_retries=0, refresh_jitter=0.0, background_refresh=False, clock=clock
    )
    failures: list[object] = []
    manager.on("TOKEN_REFRESH_FAILURE", failures.append)
    assert _together(manager, 3 * tokens) == []
    fake_clock.advance(34.0)  # every token due (usable until about t=38)
    emulator.inject(Fault.server_error(503), times=None)
    emulator.reset_counters()
    manager.get_token()  # the refresh fails; the token in hand is still valid
    assert emulator.token_requests == 1
    fake_clock.advance(0.6)  # past the backoff (0.5 s)
    armed.set()
    late = threading.Thread(target=manager.get_token)
    late.start()
    assert arrived.wait(5)  # passed the backoff check; its flight not started yet
    manager.get_token()  # the probe: fails, a new backoff
    assert emulator.token_requests == 2
    release.set()
    late.join(5)
    assert not late.is_alive()
    join_fetch_threads()
    assert emulator.token_requests == 2  # was 3: sent at once
    assert len(failures) == 2  # the late fetch's failure is the probe's, reported once


def _outage_requests(
    emulator: GenesysEmulator, clocked: MakeManager, fake_clock: Any, tokens: int
) -> int:
    """Token requests in 46 s of a login host answering 503, for ``tokens`` tokens fetched
    2 s apart (their ends spread, as refresh jitter spreads them)."""
    manager = clocked(tokens=tokens, refresh_jitter=0.0, background_refresh=False)
    for _ in range(tokens):  # each turn's lane fetched in its turn, 2 s apart
        manager.get_token(timeout=5)
        join_fetch_threads()
        fake_clock.advance(2.0)
    emulator.inject(Fault.server_error(503), times=None)
    before = emulator.token_requests
    for _ in range(92):  # three calls every 0.5 s, past every token's end
        for _ in range(3):
            with contextlib.suppress(GenesysTokenError):
                manager.get_token(timeout=5)
        join_fetch_threads()
        fake_clock.advance(0.5)
    manager.close()
    return emulator.token_requests - before


@pytest.mark.genesys_emulator(token_ttl=40)
def test_a_long_outage_costs_four_tokens_about_what_it_costs_one(
    emulator: GenesysEmulator, clocked: MakeManager, fake_clock: Any
):
    # Review 7: the shared backoff was capped by the EARLIEST-expiring token, so each token's
    # end got its own run of shrinking retries (0.05 s at the last): 80 token requests with
    # tokens=8 where tokens=1 made 25. It is capped by the latest-expiring one now.
    one = _outage_requests(emulator, clocked, fake_clock, 1)
    emulator.clear_faults()
    four = _outage_requests(emulator, clocked, fake_clock, 4)
    assert one > 0
    assert four <= 1.5 * one + 2, (one, four)  # (13, 25) with the earliest-token cap


# -- acquisitions admitted together, then the login host fails (review 9) ----------------------


def _refresh_every_token_at_once(
    manager: TokenManager, then: Callable[[], None] | None = None
) -> list[BaseException]:
    """Each token's forced refresh from its own thread, started together: admitted while the
    client looked good, their first token requests are in flight at once (the last token's
    starts after ``then()`` returns, if given). Their errors."""
    lanes = list(manager._lanes.all)
    together = lanes if then is None else lanes[:-1]
    start = threading.Barrier(len(together))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def refresh(index: int) -> None:
        if index < len(together):
            start.wait(5)
        elif then is not None:
            then()
        try:
            lanes[index].refresher.fetch_new("forced")
        except GenesysTokenError as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=refresh, args=(i,)) for i in range(len(lanes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads)
    join_fetch_threads()
    return errors


def _failing_together(emulator: GenesysEmulator, make_manager: MakeManager, **options: Any):
    manager = make_manager(tokens=4, max_retries=3, backoff_base=0.01, **options)
    fetch_every_token(manager)
    # Slow failures: every token's first request is in flight before any has failed.
    before = emulator.token_requests
    return manager, before


def test_tokens_admitted_together_leave_the_retries_to_one_probe(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # Review 9: 16 tokens made 79 token requests in an outage where one token made 6; each
    # acquisition admitted before the first failure ran its whole retry budget.
    manager, before = _failing_together(emulator, make_manager)
    counted = manager.metrics()["token_requests"]
    emulator.inject(Fault.server_error(503), times=None, delay=0.3)
    errors = _refresh_every_token_at_once(manager)
    assert len(errors) == 4  # every token's refresh failed: the login host is down
    # At most one request per token, then the probe's 3 retries (a token admitted only after
    # the first failure, on a loaded machine, sends none); without the probe, 4 x 4 = 16.
    sent = emulator.token_requests - before
    assert sent <= 4 + 3
    # Review 10: the requests of the tokens that left the retries to the probe count too.
    assert manager.metrics()["token_requests"] - counted == sent
    assert manager.metrics()["errors"] == 1  # counted once, by the probe's token


def test_tokens_waiting_for_the_probe_retry_once_it_succeeded(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A blip: the first requests fail, the probe's retry succeeds; the others then retry too
    # (no caller gets a failure a retry would have mended).
    manager, before = _failing_together(emulator, make_manager)
    emulator.inject(Fault.server_error(503), times=4, delay=0.3)
    errors = _refresh_every_token_at_once(manager)
    assert errors == []
    assert emulator.token_requests - before == 4 + 1 + 3
    assert manager._lanes.in_use() == 4


def test_a_token_whose_fetch_starts_while_the_probe_retries_waits_for_it(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # The client is in trouble from its first failed request, not from the end of the first
    # failed acquisition: a fetch starting meanwhile waits for the probe and sends nothing.
    manager, before = _failing_together(emulator, make_manager)
    emulator.inject(Fault.server_error(503), times=None, delay=0.3)

    def after_the_first_failure() -> None:
        assert poll(lambda: manager.metrics()["retries"] >= 1, timeout=5)

    errors = _refresh_every_token_at_once(manager, then=after_the_first_failure)
    assert len(errors) == 4
    assert emulator.token_requests - before <= 3 + 3  # the last token's fetch sent nothing


def test_an_abandoned_acquisition_never_becomes_the_probe() -> None:
    # Its flight was settled when abandoned: a probe set after that would never end, and
    # every other token's fetch would wait for it.
    outage = Outage()
    flight = SimpleNamespace(cancel=threading.Event(), deadline=time.monotonic() + 5)
    flight.cancel.set()
    assert outage.may_retry("lane-1", flight, time.monotonic) is False  # type: ignore[arg-type]
    other = SimpleNamespace(cancel=threading.Event(), deadline=time.monotonic() + 5)
    assert outage.may_retry("lane-2", other, time.monotonic) is True  # type: ignore[arg-type]


def test_a_token_whose_request_fails_after_the_probe_failed_does_not_retry(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    # Review 10: admitted while the client looked good, its request failed only after the
    # probe's acquisition had failed: it became a new probe and retried during the backoff
    # (4 requests, not 1, and the failure counted twice).
    manager = make_manager(
        tokens=2, max_retries=3, backoff_base=0.01, timeout=(2.0, 2.0), clock=fake_clock.clock()
    )
    first, second = manager._lanes.all
    fetch_every_token(manager)
    before = emulator.token_requests
    emulator.inject(Fault(passthrough=True, delay=4.0), times=1)  # second's: read timeout
    emulator.inject(Fault.server_error(503), times=None)  # then every request fails
    slow, slow_error = in_background(lambda: second.refresher.fetch_new("forced"))
    assert poll(lambda: emulator.token_requests == before + 1)  # in flight, admitted
    with pytest.raises(GenesysTokenError):
        first.refresher.fetch_new("forced")  # the probe: 4 requests, failed
    assert slow.is_alive(), "the second token's request ended before the probe failed"
    slow.join(10)
    assert slow_error and isinstance(slow_error[0], GenesysTokenError)
    join_fetch_threads()
    assert emulator.token_requests - before == 1 + 4
    assert manager.metrics()["errors"] == 1


def test_a_token_that_waited_for_the_probe_waits_only_what_is_left_of_its_delay(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # Review 10: after waiting ~2 s for the probe, it slept its whole Retry-After of 2 s
    # again (4.2 s, past retry_deadline=3).
    manager = make_manager(tokens=2, max_retries=3, retry_deadline=3.0, max_retry_after=5.0)
    fetch_every_token(manager)
    emulator.inject(Fault.too_many_requests(2), times=2, delay=0.2)  # both first requests
    took: dict[int, float] = {}
    start = threading.Barrier(2)

    def refresh(index: int) -> None:
        start.wait(5)
        began = time.monotonic()
        manager._lanes.all[index].refresher.fetch_new("forced")
        took[index] = time.monotonic() - began

    threads = [threading.Thread(target=refresh, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    join_fetch_threads()
    assert sorted(took) == [0, 1]  # both refreshed, no error
    assert max(took.values()) < 3.4  # 2.2 s and a bit; 4.2 s when it slept the delay again
