"""A wrong secret gets nothing (issue 22): not the token of a right one through a shared
MemoryStore, nor through a pool, and it never replaces the right one's secret."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from genesys_token import InvalidClientError, TokenManager
from genesys_token.stores import MemoryStore, store_key
from genesys_token.stores._seal import Sealer
from genesys_token.testing import GenesysEmulator

WRONG = "not-the-secret-of-this-client"


def test_a_sealers_fingerprint_names_its_secret_and_key_without_showing_them() -> None:
    key, other_key = store_key("a", "https://x/oauth/token", ()), store_key("b", "u", ())
    fingerprint = Sealer("s3cret-value", key).fingerprint
    assert fingerprint == Sealer("s3cret-value", key).fingerprint
    assert fingerprint != Sealer("another-value", key).fingerprint
    assert fingerprint != Sealer("s3cret-value", other_key).fingerprint
    assert len(fingerprint) == 32 and b"s3cret-value" not in fingerprint


@pytest.fixture
def make(emulator: GenesysEmulator) -> Iterator[Callable[..., TokenManager]]:
    managers: list[TokenManager] = []

    def build(secret: str, **options: Any) -> TokenManager:
        options.setdefault("token_url", emulator.token_url)
        options.setdefault("api_base_url", emulator.api_base_url)
        manager = TokenManager(
            emulator.client_id, secret, background_refresh=False, max_retries=0, **options
        )
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()


def test_a_wrong_secret_sharing_a_memory_store_gets_its_own_rejection(
    make: Callable[..., TokenManager], emulator: GenesysEmulator
) -> None:
    store = MemoryStore()
    right, wrong = make(emulator.client_secret, store=store), make(WRONG, store=store)
    token = right.get_token()
    assert emulator.token_requests == 1
    with pytest.raises(InvalidClientError):
        wrong.get_token()
    assert emulator.token_requests == 2  # its own request, its own answer
    assert wrong.token is None
    with pytest.raises(InvalidClientError):
        wrong.get_token()  # the cool-down: no request
    assert emulator.token_requests == 2
    assert right.get_token() == token  # unharmed
    assert right.refresh(force=True).access_token != token
    assert emulator.token_requests == 3


def test_the_right_secret_still_shares_a_memory_store(
    make: Callable[..., TokenManager], emulator: GenesysEmulator
) -> None:
    store = MemoryStore()
    first, second = (
        make(emulator.client_secret, store=store),
        make(emulator.client_secret, store=store),
    )
    assert first.get_token() == second.get_token()
    assert emulator.token_requests == 1
