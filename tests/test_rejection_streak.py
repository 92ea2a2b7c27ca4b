"""Issue 22 (review B): a secret source that gives a NEW wrong secret at each read (a broken
vault) kept the credentials cool-down at its first second, since a new secret ended it:
4 callers made 64 token requests in 20 s (about 11,500 an hour per manager). The cool-down
now doubles with each consecutive rejection, whichever secret was rejected."""

from __future__ import annotations

import itertools

import pytest
from conftest import FakeClock, MakeManager

from genesys_token import InvalidClientError
from genesys_token.testing import GenesysEmulator

#: Fake seconds between calls: far below the first cool-down (1 s), so every window end is
#: seen within one step.
STEP = 0.05


class BrokenVault:
    """Gives a new wrong secret at each read, or ``fixed`` once it is set."""

    def __init__(self) -> None:
        self.numbers = itertools.count()
        self.fixed: str | None = None
        self.reads = 0

    def __call__(self) -> str:
        self.reads += 1
        return self.fixed or f"wrong-{next(self.numbers)}"


def _call_for(manager: object, fake_clock: FakeClock, seconds: float) -> int:
    """get_token every STEP fake seconds for ``seconds``; returns the failed calls."""
    failed = 0
    for _ in range(round(seconds / STEP)):
        with pytest.raises(InvalidClientError):
            manager.get_token(timeout=5)  # type: ignore[attr-defined]
        failed += 1
        fake_clock.advance(STEP)
    return failed


def test_a_source_giving_a_new_wrong_secret_each_read_backs_off_exponentially(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    vault = BrokenVault()
    manager = make_manager(client_secret=vault, max_retries=0, clock=fake_clock.clock())
    _call_for(manager, fake_clock, 20)
    in_20_s = emulator.token_requests
    # 1 s, 2 s, 4 s, 8 s, ... at a 0.5 draw: requests at 0 (the rotated-source retry
    # too), 2, 6 and 14 s. Was 76.
    assert in_20_s <= 5
    _call_for(manager, fake_clock, 580)
    in_600_s = emulator.token_requests
    # Then 30 and 62 s, and once a minute (the cap) after that: 15. Was 2,184.
    assert in_600_s <= 16
    # The source is not read once a second either, once the cool-down tried a new secret.
    assert vault.reads <= 2 * in_600_s


def test_a_fixed_vault_recovers_within_the_current_step(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    vault = BrokenVault()
    manager = make_manager(client_secret=vault, max_retries=0, clock=fake_clock.clock())
    _call_for(manager, fake_clock, 100)  # the cool-down is at its cap (60 s)
    before = emulator.token_requests
    vault.fixed = emulator.client_secret
    waited = 0.0
    while True:
        try:
            token = manager.get_token(timeout=5)
            break
        except InvalidClientError:
            fake_clock.advance(STEP)
            waited += STEP
            assert waited <= 60 * 1.25 + 1  # the cap, its jitter, and a step
    assert emulator.is_token_valid(token)
    assert emulator.token_requests == before + 1
    # Accepted: the streak ended; a new wrong secret starts again from about 1 s.
    vault.fixed = None
    emulator.set_secret(emulator.client_id, "rotated-in-console")
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)
    rejected_at = emulator.token_requests
    assert rejected_at == before + 3  # the request, and the streak's one try of a new secret
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)  # inside its cool-down: no request
    assert emulator.token_requests == rejected_at
    fake_clock.advance(2.0 * 1.25 + STEP)  # the second step (2 s), its jitter
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)
    assert emulator.token_requests == rejected_at + 1


def test_set_credentials_with_another_secret_ends_the_streak_at_once(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    manager = make_manager(client_secret=BrokenVault(), max_retries=0, clock=fake_clock.clock())
    _call_for(manager, fake_clock, 100)
    before = emulator.token_requests
    manager.set_credentials(emulator.client_secret)
    assert emulator.is_token_valid(manager.get_token(timeout=5))
    assert emulator.token_requests == before + 1


def test_a_rotated_source_is_still_tried_at_once_after_a_fixed_wrong_secret(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    # The first new secret of a streak is tried at once: a vault rotated after many
    # rejections of one wrong secret recovers at the next read (1 s), not at the cap.
    vault = BrokenVault()
    vault.fixed = "a-wrong-secret"
    manager = make_manager(client_secret=vault, max_retries=0, clock=fake_clock.clock())
    _call_for(manager, fake_clock, 100)
    before = emulator.token_requests
    assert manager.metrics()["credentials_cooldown"] > 0
    vault.fixed = emulator.client_secret
    fake_clock.advance(1.0)  # SECRET_RECHECK
    assert emulator.is_token_valid(manager.get_token(timeout=5))
    assert emulator.token_requests == before + 1
