"""A wrong secret gets nothing (issue 22): not the token of a right one through a shared
MemoryStore, nor through a pool, and it never replaces the right one's secret."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, in_background, poll

from genesys_token import (
    InvalidClientError,
    Token,
    TokenManager,
    TokenManagerPool,
    TokenRequestError,
)
from genesys_token.stores import MemoryStore, store_key
from genesys_token.stores._seal import Sealer
from genesys_token.testing import Fault, GenesysEmulator

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


# -- the pool --------------------------------------------------------------------------------


@pytest.fixture
def pool(emulator: GenesysEmulator) -> Iterator[TokenManagerPool]:
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        background_refresh=False,
    ) as made:
        yield made


def test_a_wrong_secret_gets_neither_the_token_nor_the_manager_of_a_pool(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Review (issue 22): get(cid, wrong) returned the manager with the right one's live token
    # and handed it the wrong secret, so its next refresh failed with InvalidClientError.
    cid, secret = emulator.client_id, emulator.client_secret
    manager = pool.get(cid, secret)
    token = manager.get_token()
    with pytest.raises(InvalidClientError):
        pool.get(cid, WRONG)
    assert emulator.token_requests == 2  # the wrong secret's own request
    with pytest.raises(InvalidClientError):
        pool.get(cid, WRONG)  # its cool-down: no request
    assert emulator.token_requests == 2
    assert pool.get(cid, secret) is manager  # its secret is unchanged: no proof needed
    assert manager.get_token() == token
    assert manager.refresh(force=True).access_token != token
    assert emulator.token_requests == 3
    checks = pool.metrics()["secret_checks"]
    assert checks == {"accepted": 0, "rejected": 2, "token_requests": 1}


def test_a_wrong_secret_before_the_first_token_leaves_the_manager_alone(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    manager = pool.get(emulator.client_id, emulator.client_secret)
    with pytest.raises(InvalidClientError):
        pool.get(emulator.client_id, WRONG)
    assert manager.get_token()
    assert emulator.token_requests == 2
    assert not manager.closed


def test_a_manager_made_with_a_wrong_secret_is_replaced_not_handed_the_right_one(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Whoever made the manager with an unproven secret holds it: it must not get a token once
    # the right secret is proven.
    planted = pool.get(emulator.client_id, WRONG)
    manager = pool.get(emulator.client_id, emulator.client_secret)  # proven: 1 request
    assert manager is not planted and planted.closed
    with pytest.raises(Exception, match="closed"):
        planted.get_token()
    assert manager.get_token()
    assert emulator.token_requests == 2
    assert pool.get(emulator.client_id, emulator.client_secret) is manager
    with pytest.raises(InvalidClientError):
        pool.get(emulator.client_id, WRONG)
    assert emulator.token_requests == 3


def test_secret_rotation_through_the_pool_still_works(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    cid = emulator.client_id
    manager = pool.get(cid, emulator.client_secret)
    token = manager.get_token()
    emulator.set_secret(cid, "rotated-secret", keep_old=True)
    assert pool.get(cid, "rotated-secret") is manager  # proven by 1 request
    assert emulator.token_requests == 2
    assert manager.get_token() == token  # the current token stays
    emulator.set_secret(cid, "rotated-secret")  # the old one revoked
    assert manager.refresh(force=True).access_token != token  # the new secret is used
    assert emulator.token_requests == 3
    assert pool.get(cid, "rotated-secret") is manager
    assert emulator.token_requests == 3
    assert pool.metrics()["secret_checks"]["accepted"] == 1


def test_callers_with_one_wrong_secret_share_one_request_then_its_cool_down(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret)
        token = manager.get_token()
        emulator.inject(
            Fault(delay=0.3, passthrough=True)
        )  # all eight are waiting on the one request
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def hammer() -> None:
            start.wait(5.0)
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                try:
                    pool.get(emulator.client_id, WRONG)
                except InvalidClientError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        assert emulator.token_requests == 2  # one for the right secret, one for the wrong
        assert len(errors) > 8
        fake_clock.advance(1.3)  # past the first cool-down (1 s +- 25%)
        with pytest.raises(InvalidClientError):
            pool.get(emulator.client_id, WRONG)
        assert emulator.token_requests == 3
        assert manager.get_token() == token


def test_callers_with_one_new_secret_share_its_proof(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    cid = emulator.client_id
    manager = pool.get(cid, emulator.client_secret)
    manager.get_token()
    emulator.set_secret(cid, "rotated-secret")
    emulator.inject(Fault(delay=0.3, passthrough=True))
    results = [in_background(lambda: pool.get(cid, "rotated-secret")) for _ in range(8)]
    for thread, _ in results:
        thread.join(10.0)
    assert all(out == [manager] for _, out in results), results
    assert emulator.token_requests == 2


def test_an_outage_during_a_proof_changes_nothing_and_is_not_a_storm(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    manager = pool.get(emulator.client_id, emulator.client_secret)
    token = manager.get_token()
    emulator.inject(Fault.server_error(503), times=None)
    for _ in range(5):
        with pytest.raises(TokenRequestError) as excinfo:
            pool.get(emulator.client_id, "rotated-secret")
        assert not isinstance(excinfo.value, InvalidClientError)
    assert emulator.token_requests == 2  # then the failure backoff: no request
    assert manager.get_token() == token
    emulator.clear_faults()
    assert manager.refresh(force=True).access_token != token  # its own secret still works


def test_a_wrong_secret_source_is_proven_like_a_string(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    manager = pool.get(emulator.client_id, emulator.client_secret)
    token = manager.get_token()
    for _ in range(5):
        with pytest.raises(InvalidClientError):
            pool.get(emulator.client_id, lambda: WRONG)  # a new source object each time
    assert emulator.token_requests == 2
    assert manager.get_token() == token


def test_a_proof_is_a_token_request_never_an_entry_planted_in_the_store(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    # Whoever can write the cache directory can seal an entry with a secret of their own
    # choosing: if a proof read the shared store, that entry would "prove" the wrong secret.
    from genesys_token.stores import FileStore

    store = FileStore(tmp_path / "cache")
    with TokenManagerPool(
        token_url=emulator.token_url, api_base_url=emulator.api_base_url, store=store
    ) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret)
        token = manager.get_token()
        key = store_key(emulator.client_id, emulator.token_url, ())
        planted = Token.issued(
            "tok-planted",
            token_type="bearer",
            lifetime=3600.0,
            sent_monotonic=time.monotonic(),
            sent_wall=time.time(),
            claims={"client_id": emulator.client_id, "exp": int(time.time() + 3600)},
        )
        FileStore(tmp_path / "cache").save(key, planted, sealer=Sealer(WRONG, key))
        with pytest.raises(InvalidClientError):
            pool.get(emulator.client_id, WRONG)
        assert emulator.token_requests == 2
        assert manager.refresh(force=True).access_token != token  # its secret unchanged
    store.close()


def test_a_pool_remembers_a_few_wrong_secrets_per_client_not_every_guess(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    from genesys_token._proofs import PROBES_PER_CLIENT

    manager = pool.get(emulator.client_id, emulator.client_secret)
    manager.get_token()
    guesses = [f"guess-{i}" for i in range(PROBES_PER_CLIENT + 1)]
    for guess in guesses:
        with pytest.raises(InvalidClientError):
            pool.get(emulator.client_id, guess)
    assert emulator.token_requests == 1 + len(guesses)
    with pytest.raises(InvalidClientError):
        pool.get(emulator.client_id, guesses[-1])  # remembered: its cool-down
    assert emulator.token_requests == 1 + len(guesses)
    with pytest.raises(InvalidClientError):
        pool.get(emulator.client_id, guesses[0])  # forgotten (the bound): asked again
    assert emulator.token_requests == 2 + len(guesses)
    assert pool.metrics()["secret_checks"]["token_requests"] == 1 + len(guesses)


def test_a_proven_source_is_what_becomes_current_not_a_source_that_joined_it(
    pool: TokenManagerPool, emulator: GenesysEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every source shares one probe: a second source joining the proof of the first must not
    # be what the manager gets, even when its caller finishes first.
    cid = emulator.client_id
    manager = pool.get(cid, emulator.client_secret)
    manager.get_token()
    emulator.set_secret(cid, "rotated-secret")
    emulator.inject(Fault(delay=0.3, passthrough=True))
    release = threading.Event()
    original = pool._make_current
    right_source_thread: list[threading.Thread] = []

    def held_back(*args: Any) -> Any:
        if threading.current_thread() in right_source_thread:
            release.wait(5.0)
        return original(*args)

    monkeypatch.setattr(pool, "_make_current", held_back)
    right, right_out = in_background(lambda: pool.get(cid, lambda: "rotated-secret"))
    right_source_thread.append(right)
    assert poll(lambda: emulator.token_requests == 2)  # the probe's request is in flight
    wrong, wrong_out = in_background(lambda: pool.get(cid, lambda: WRONG))
    wrong.join(10.0)
    release.set()
    right.join(10.0)
    assert right_out == [manager] and wrong_out == [manager]  # sources are trusted alike
    assert manager.refresh(force=True)  # but the secret it uses is the proven one


def test_two_valid_secrets_alternating_cost_a_proof_each_per_window_not_per_get(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    from genesys_token._proofs import ACCEPTED_FOR

    cid, first = emulator.client_id, emulator.client_secret
    emulator.set_secret(cid, "second-secret", keep_old=True)  # a rollout in progress
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        background_refresh=False,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(cid, first)
        manager.get_token()
        for i in range(10):
            assert pool.get(cid, "second-secret" if i % 2 == 0 else first) is manager
        assert emulator.token_requests == 3  # a proof of each (was: one per get)
        fake_clock.advance(ACCEPTED_FOR + 1)
        assert pool.get(cid, "second-secret") is manager
        assert emulator.token_requests == 4
        emulator.set_secret(cid, "second-secret")  # the rollout ends: the first one revoked
        assert manager.refresh(force=True)  # it was switched to the second


def test_a_manager_whose_secret_is_rejected_takes_a_recently_accepted_one(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    cid, first = emulator.client_id, emulator.client_secret
    emulator.set_secret(cid, "second-secret", keep_old=True)
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        background_refresh=False,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(cid, first)
        token = manager.get_token()
        assert pool.get(cid, "second-secret") is manager  # proven, switched
        assert pool.get(cid, first) is manager  # proven, switched back (stale worker)
        emulator.set_secret(cid, "second-secret")  # the first one revoked
        with pytest.raises(InvalidClientError):
            manager.refresh(force=True)
        requests = emulator.token_requests
        assert pool.get(cid, "second-secret") is manager  # proven again, switched
        assert emulator.token_requests == requests + 1
        assert manager.refresh(force=True).access_token != token
