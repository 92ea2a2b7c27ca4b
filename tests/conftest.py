"""Shared fixtures: emulator-backed managers, a controllable clock, thread-leak checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from genesys_token import TokenManager
from genesys_token.testing import GenesysEmulator
from genesys_token.transport import Clock

MakeManager = Callable[..., TokenManager]


@pytest.fixture
def emulator(genesys_emulator: GenesysEmulator) -> GenesysEmulator:
    """A running emulator (short alias of the plugin's ``genesys_emulator``)."""
    return genesys_emulator


@pytest.fixture
def make_manager(emulator: GenesysEmulator) -> Iterator[MakeManager]:
    """Build managers against the emulator; every one is closed after the test."""
    managers: list[TokenManager] = []

    def make(**options: Any) -> TokenManager:
        options.setdefault("token_url", emulator.token_url)
        options.setdefault("api_base_url", emulator.api_base_url)
        client_id = options.pop("client_id", emulator.client_id)
        client_secret = options.pop("client_secret", emulator.client_secret)
        manager = TokenManager(client_id, client_secret, **options)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


class FakeClock:
    """Monotonic and wall clocks that move only when told, and a fixed random draw."""

    def __init__(self, draw: float = 0.5) -> None:
        self.monotonic = 1000.0
        self.wall = 1_800_000_000.0
        self.draw = draw
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.monotonic += seconds
            self.wall += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.monotonic, time=lambda: self.wall, random=self._draw)

    def _draw(self) -> float:
        return self.draw


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _no_leaked_refresh_threads() -> Iterator[None]:
    """Every refresh thread a test started must be gone once its managers are closed."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("genesys-token-refresh") and t.is_alive()
    ]
    for thread in leaked:
        thread.join(2.5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"refresh threads still running after the test: {still}"
