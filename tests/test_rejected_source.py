"""Issue 22: a secret source that fails when read again after Genesys rejected its secret
keeps the credentials cool-down (it used to skip it, so callers stormed the token endpoint)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import FakeClock, MakeManager, join_fetch_threads, run_threads

from genesys_token import GenesysTokenError, InvalidClientError, SecretSourceError
from genesys_token.testing import GenesysEmulator

THREADS = 8
ROUNDS = 10
#: Fake seconds per round: 10 rounds stay inside the first cool-down (1 s at a 0.5 draw)
#: and run well past the failure backoff (0.5 s at a 0.5 draw) that was all that held.
ROUND_SECONDS = 0.09


class FlakySource:
    """Gives the (rejected) secret, fails the read right after the rejection, then gives the
    same secret again: a vault client that times out once (or, with ``hang``, that hangs
    until ``release`` is set)."""

    def __init__(self, secret: str, *, hang: bool = False) -> None:
        self.secret = secret
        self.reads = 0
        self.hang = hang
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.reads += 1
            second = self.reads == 2
        if second and self.hang:
            self.release.wait(10)
        elif second:
            raise OSError("vault timed out")
        return self.secret


def _storm(manager: Any, fake_clock: FakeClock) -> list[BaseException]:
    """8 threads x 10 rounds of get_token; the fake clock moves between rounds."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    rounds = threading.Barrier(THREADS, action=lambda: fake_clock.advance(ROUND_SECONDS))

    def caller() -> None:
        for _ in range(ROUNDS):
            try:
                manager.get_token(timeout=5)
            except GenesysTokenError as exc:
                with lock:
                    errors.append(exc)
            rounds.wait(10)

    run_threads(caller, THREADS, timeout=20)
    return errors


def test_a_source_failing_after_a_rejection_keeps_the_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    source = FlakySource("a-wrong-secret")
    manager = make_manager(client_secret=source, max_retries=0, clock=fake_clock.clock())
    errors = _storm(manager, fake_clock)
    assert len(errors) == THREADS * ROUNDS  # every call failed, typed
    assert isinstance(errors[0], SecretSourceError | InvalidClientError)
    assert emulator.token_requests == 1  # was 2: the failure backoff ran out, not the cool-down
    assert manager.metrics()["credentials_cooldown"] > 0
    assert source.reads >= 2  # the failing read happened, and the rejection held after it


def test_a_source_hanging_after_a_rejection_keeps_the_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    # The read after the rejection hangs: the flight is abandoned by its deadline
    # (2 x (0.1 + 0.1) + 0.1 + 0.1 + 1 = 1.8 s) with a SecretSourceError of its own.
    source = FlakySource("a-wrong-secret", hang=True)
    manager = make_manager(
        client_secret=source,
        max_retries=0,
        timeout=(0.1, 0.1),
        retry_deadline=0.1,
        clock=fake_clock.clock(),
    )
    with pytest.raises(SecretSourceError, match="did not answer"):
        manager.get_token(timeout=5)
    source.release.set()
    join_fetch_threads()
    errors = _storm(manager, fake_clock)
    assert len(errors) == THREADS * ROUNDS
    assert all(isinstance(e, InvalidClientError) for e in errors)  # the cool-down answers
    assert emulator.token_requests == 1  # was 2
    assert source.reads >= 2


def test_a_new_secret_from_the_source_still_ends_that_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    source = FlakySource("a-wrong-secret")
    manager = make_manager(client_secret=source, max_retries=0, clock=fake_clock.clock())
    with pytest.raises(SecretSourceError):
        manager.get_token(timeout=5)  # the read after the rejection raised
    assert emulator.token_requests == 1
    source.secret = emulator.client_secret  # rotated in the vault
    assert emulator.is_token_valid(manager.get_token(timeout=5))
    assert emulator.token_requests == 2


def test_set_credentials_while_the_source_fails_does_not_cool_down_the_new_secret(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    # set_credentials() while the source is read again after the rejection, and a caller
    # names the new secret at the door meanwhile: the failure cools down nothing of it.
    manager: Any = None

    class Rotating(FlakySource):
        def __call__(self) -> str:
            if self.reads == 1:  # the read after the rejection
                manager.set_credentials(emulator.client_secret)
                with pytest.raises(GenesysTokenError):  # waits on this very flight
                    manager.get_token(timeout=0.01)
            return super().__call__()

    manager = make_manager(
        client_secret=Rotating("a-wrong-secret"),
        max_retries=0,
        clock=fake_clock.clock(),
    )
    with pytest.raises(SecretSourceError):
        manager.get_token(timeout=5)
    fake_clock.advance(0.6)  # past the failure's backoff (0.5 s), inside a cool-down (1 s)
    assert emulator.is_token_valid(manager.get_token(timeout=5))
    assert emulator.token_requests == 2
