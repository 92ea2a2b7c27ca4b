"""Issue 13: our own callers cannot hammer the token endpoint; secrets change under a
running process (set_credentials, callables, mounted files)."""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeClock, MakeManager, eventually, in_background, join_fetch_threads, poll

from genesys_token import (
    ConfigurationError,
    GenesysAuth,
    InvalidClientError,
    RateLimitedError,
    SecretFile,
    SecretSourceError,
    TokenManager,
    TokenRequestError,
)
from genesys_token.manager import adapter_port
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"


def test_a_rejected_secret_costs_at_most_five_requests_from_8_threads_in_3_s(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    manager = make_manager(client_secret="a-wrong-secret", max_retries=0)
    stop = threading.Event()
    durations: list[float] = []
    other: list[BaseException] = []
    lock = threading.Lock()

    def caller() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                manager.get_token()
            except InvalidClientError:
                with lock:
                    durations.append(time.monotonic() - started)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                other.append(exc)
            time.sleep(0.001)

    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        stop.wait(3)
        stop.set()
        for thread in threads:
            thread.join(5)
    assert other == []
    assert len(durations) > 100
    assert emulator.token_requests <= 5  # was 684
    # Most calls answer at once from the negative cache: far below a token round trip.
    round_trip = max(durations)
    assert statistics.median(durations) < round_trip / 10
    rejections = [r for r in caplog.records if "rejected the client credentials" in r.message]
    assert len(rejections) == emulator.token_requests  # once per cool-down, not per call
    assert manager.metrics()["rejected_calls"] > 100


def test_set_credentials_ends_the_cool_down_at_once(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(client_secret="a-wrong-secret", max_retries=0)
    with pytest.raises(InvalidClientError):
        manager.get_token()
    with pytest.raises(InvalidClientError):
        manager.get_token()  # inside the cool-down: no request
    assert emulator.token_requests == 1
    assert manager.metrics()["credentials_cooldown"] > 0
    manager.set_credentials(emulator.client_secret)
    assert emulator.is_token_valid(manager.get_token())
    assert emulator.token_requests == 2


def test_a_callable_secret_is_read_again_after_a_rejection(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # A secrets manager whose cached answer lags the console by one read.
    answers = [emulator.client_secret, emulator.client_secret]
    reads: list[int] = []

    def source() -> str:
        reads.append(1)
        return answers[len(reads) - 1] if len(reads) <= len(answers) else "rotated-in-console"

    manager = make_manager(client_secret=source)
    first = manager.get_token()
    emulator.set_secret(emulator.client_id, "rotated-in-console")
    # The next refresh is rejected, the source read again, the request retried at once.
    token = manager.refresh(force=True)
    assert token.access_token != first
    assert emulator.is_token_valid(token.access_token)
    assert emulator.token_requests == 3


def test_a_mounted_secret_file_is_read_again_after_a_rejection(
    emulator: GenesysEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    secret_file = tmp_path / "secret"
    secret_file.write_text(emulator.client_secret + "\n")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", emulator.client_id)
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", raising=False)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE", str(secret_file))
    with TokenManager.from_env(
        token_url=emulator.token_url, api_base_url=emulator.api_base_url
    ) as manager:
        manager.get_token()
        emulator.set_secret(emulator.client_id, "the-new-mounted-secret")
        secret_file.write_text("  the-new-mounted-secret  \n")  # Kubernetes updates it
        token = manager.refresh(force=True)
        assert emulator.is_token_valid(token.access_token)
        assert "the-new-mounted-secret" not in repr(manager) + repr(manager.settings)


def test_a_secret_file_that_cannot_be_read_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "id")
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", raising=False)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="secret file"):
        TokenManager.from_env()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (lambda: 42, "returned int"),
        (lambda: "", "bad value"),
        (lambda: (_ for _ in ()).throw(OSError("vault is down: secret=hunter2")), "raised"),
    ],
)
def test_a_secret_source_that_gives_nothing_usable_is_a_typed_error(
    make_manager: MakeManager, source: object, message: str
):
    manager = make_manager(client_secret=source)
    with pytest.raises(SecretSourceError, match=message) as caught:
        manager.get_token()
    assert "hunter2" not in str(caught.value) + repr(caught.value)
    assert SecretFile("/x").__class__.__name__ in repr(SecretFile("/x"))


def test_30_calls_against_an_api_that_rejects_every_token_make_at_most_3_requests(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    manager = make_manager()
    emulator.reject_all_tokens = True
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        statuses = [
            session.get(emulator.api_base_url + ORG_PATH, timeout=5).status_code for _ in range(30)
        ]
    assert statuses == [401] * 30  # each call answered with its 401, not an exception
    assert emulator.token_requests <= 3  # was 31
    explained = [r for r in caplog.records if "another region" in r.message]
    assert len(explained) == 1
    assert manager.metrics()["api_rejections"] >= 1
    session.close()


def test_a_token_that_lived_a_while_is_replaced_on_a_401(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: object
):
    # A revoked token (not a fresh one) is always replaced: the cool-down is for fresh ones.
    manager = make_manager()
    first = manager.get_token()
    second = adapter_port(manager).replace_rejected(first).access_token
    assert second != first
    cell = manager._flight.cell
    assert cell is not None
    manager._flight.cell = type(cell)(**{**_fields(cell), "installed_at": cell.installed_at - 3600})
    third = adapter_port(manager).replace_rejected(second).access_token
    assert third != second
    assert emulator.token_requests == 3


def _fields(cell: object) -> dict[str, object]:
    return {name: getattr(cell, name) for name in cell.__slots__}  # type: ignore[attr-defined]


def test_a_region_mismatch_is_warned_about_once_at_construction(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        TokenManager(
            "id",
            "secret",
            token_url="https://login.mypurecloud.ie/oauth/token",
            api_base_url="https://api.mypurecloud.de",
        ).close()
    warnings = [r.message for r in caplog.records if "region" in r.message]
    assert len(warnings) == 1
    assert "eu-west-1" in warnings[0] and "eu-central-1" in warnings[0]


def test_re_applying_the_same_rejected_secret_keeps_the_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A caller that re-applies its (wrong) secret before each call: nothing changed, so the
    # cool-down must hold (8 threads x 1.5 s made 954 requests in 3 s when it did not).
    manager = make_manager(client_secret="wrong", max_retries=0)
    stop = time.monotonic() + 1.5

    def caller() -> None:
        while time.monotonic() < stop:
            manager.set_credentials("wrong")
            with contextlib.suppress(InvalidClientError):
                manager.get_token(timeout=1)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert emulator.token_requests <= 5
    manager.set_credentials(emulator.client_secret)  # another secret ends it at once
    assert emulator.is_token_valid(manager.get_token())


def test_a_secret_source_that_hangs_costs_one_thread_and_fails_typed_by_the_deadline(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A vault client with no timeout, in an outage: the acquisition fails with a
    # SecretSourceError by its deadline (2 x (0.1 + 0.2) + 0.1 + 0.2 + 1 = 1.9 s); a later
    # acquisition waits for the same call instead of calling again; once the source answers,
    # tokens come again and no thread is left.
    release = threading.Event()
    calls: list[float] = []

    def vault() -> str:
        calls.append(time.monotonic())
        if len(calls) > 1:
            release.wait(10)
        return emulator.client_secret

    manager = make_manager(
        client_secret=vault, timeout=(0.1, 0.1), retry_deadline=0.1, background_refresh=False
    )
    manager.get_token()
    started = time.monotonic()
    with pytest.raises(SecretSourceError, match="did not answer"):
        manager.refresh(force=True)  # the source's second call: it hangs
    assert 1.7 < time.monotonic() - started < 2.6
    with pytest.raises(SecretSourceError, match="source"):
        manager.refresh(force=True)  # waits for the hanging call, does not call again
    assert len(calls) == 2
    fetchers = lambda: [  # noqa: E731
        t for t in threading.enumerate() if t.name.startswith("genesys-token-fetch")
    ]
    assert poll(lambda: len(fetchers()) == 1, 1.0)  # the one still inside the source
    release.set()
    join_fetch_threads()
    assert emulator.is_token_valid(manager.refresh(force=True).access_token)


def test_an_endpoint_that_re_issues_the_rejected_token_costs_one_request_per_401(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A login host (or proxy cache) that answers every request with the same token: the 401
    # replacement relied on one flight and must not start another for the same caller (it
    # looped until the caller's deadline, and with timeout=inf for good).
    body = {"access_token": "FIXED-TOKEN-abcdefghijklmnop", "token_type": "bearer"}
    emulator.inject(Fault.json({**body, "expires_in": 3600}), times=None)
    manager = make_manager(background_refresh=False)
    rejected = manager.get_token()
    for timeout in (3.0, float("inf")):
        started = time.monotonic()
        with pytest.raises(TokenRequestError, match="the token the API rejected"):
            adapter_port(manager).replace_rejected(rejected, timeout=timeout)
        assert time.monotonic() - started < 1.0
    assert emulator.token_requests <= 3  # the first, then one per replacement asked for


def test_a_token_that_arrives_already_due_is_taken_not_fetched_again(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: Any
) -> None:
    # background_refresh=False: a call that finds the token due refreshes inline. A slow
    # endpoint makes the new token arrive due (still usable): the caller takes it; starting
    # another flight for it turned one get_token() into a request per round trip.
    manager = make_manager(background_refresh=False, clock=fake_clock.clock())
    first = manager.get_token()
    cell = manager._flight.cell
    assert cell is not None
    halfway = (cell.refresh_at + cell.usable_until) / 2 - fake_clock.monotonic  # due, usable
    fake_clock.advance(halfway)
    emulator.inject(Fault(passthrough=True, delay=0.3), times=None)
    got: list[str] = []
    caller = threading.Thread(target=lambda: got.append(manager.get_token(timeout=10)))
    caller.start()
    assert poll(lambda: emulator.token_requests == 2, 2.0)
    fake_clock.advance(halfway)  # while it is on the wire: it arrives as due as the first
    caller.join(5)
    assert not caller.is_alive()
    assert got and got[0] != first and emulator.is_token_valid(got[0])
    assert emulator.token_requests == 2


# -- callers with no valid token -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=429, headers={"Retry-After": "120"}),
        Fault.rate_limited_token(retry_after=120),
    ],
    ids=["429", "genesys-400"],
)
def test_callers_without_a_token_honour_retry_after(
    emulator: GenesysEmulator, make_manager: MakeManager, fault: Fault
):
    # Defect storm_retry_after: every get_token() without a token ignored Retry-After.
    emulator.inject(fault, times=None)
    manager = make_manager()
    errors = []
    for _ in range(10):
        with pytest.raises(RateLimitedError) as excinfo:
            manager.get_token(timeout=5)
        errors.append(excinfo.value)
    assert emulator.token_requests <= 2
    assert all(error.retry_after == 60 for error in errors)  # capped at max_retry_after


def test_callers_without_a_token_wait_out_the_failure_backoff(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    # Defect storm_401_and_503 (b): a 503 outage with no token made a request per call.
    emulator.inject(Fault.server_error(503), times=None)
    manager = make_manager(max_retries=0, clock=fake_clock.clock())
    for _ in range(20):
        with pytest.raises(TokenRequestError, match="503"):
            manager.get_token(timeout=5)
    assert emulator.token_requests == 1  # the rest got the failure within its backoff
    fake_clock.advance(0.6)  # past the first backoff (1 s ceiling x draw 0.5)
    with pytest.raises(TokenRequestError, match="503"):
        manager.get_token(timeout=5)
    assert emulator.token_requests == 2


def test_set_credentials_during_a_rejected_flight_does_not_cool_down_the_new_secret(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Defect set_credentials_cooldown_revived: the old secret's invalid_client, arriving
    # after set_credentials(), put the new, good credentials in a cool-down.
    manager = make_manager(client_secret="wrong-secret")
    emulator.inject(Fault(delay=0.3, passthrough=True), times=1)  # the old-secret request
    caller, got = in_background(manager.get_token)
    eventually(lambda: emulator.token_requests == 1)
    emulator.add_client("second-client", "second-secret-value")
    manager.set_credentials("second-secret-value", client_id="second-client")
    caller.join(5)
    assert isinstance(got[0], InvalidClientError)
    assert emulator.is_token_valid(manager.get_token())
    assert emulator.token_requests == 2
