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
    RateLimitedError,
    Token,
    TokenManager,
    TokenManagerPool,
    TokenRequestError,
)
from genesys_token.core import secret_proofs as proofs
from genesys_token.stores import MemoryStore, store_key
from genesys_token.stores._seal import Sealer
from genesys_token.testing import Fault, GenesysEmulator

WRONG = "not-the-secret-of-this-client"


def test_a_sealers_fingerprint_names_its_secret_and_key_without_showing_them() -> None:
    key, other_key = (
        store_key("a", "https://x/oauth/token", ()),
        store_key("b", "u", ()),
    )
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
            emulator.client_id,
            secret,
            background_refresh=False,
            max_retries=0,
            **options,
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


def test_many_wrong_secrets_cost_a_request_per_pause_not_per_guess(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    # Review B (D3): rejections lived only in the probes, 4 per client, least recently used
    # forgotten first: 5 secrets round-robin evicted each other, a token request per get().
    from genesys_token.core.secret_proofs import PROBES_PER_CLIENT

    cid = emulator.client_id
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(cid, emulator.client_secret)
        token = manager.get_token()
        guesses = [f"guess-{i}" for i in range(2 * PROBES_PER_CLIENT)]
        with pytest.raises(InvalidClientError):
            pool.get(cid, guesses[0])
        assert emulator.token_requests == 2
        for _ in range(3):
            for guess in guesses[1:]:
                with pytest.raises(RateLimitedError, match="paused") as paused:
                    pool.get(cid, guess)
                assert paused.value.retry_after == pytest.approx(1.0)
            with pytest.raises(InvalidClientError):
                pool.get(cid, guesses[0])  # remembered, whatever was asked meanwhile
        assert emulator.token_requests == 2
        fake_clock.advance(1.1)
        with pytest.raises(InvalidClientError):
            pool.get(cid, guesses[1])  # the pause is over: one proof
        assert emulator.token_requests == 3
        fake_clock.advance(1.1)  # the second pause is 2 s
        with pytest.raises(RateLimitedError, match="paused"):
            pool.get(cid, guesses[2])
        assert emulator.token_requests == 3
        assert pool.get(cid, emulator.client_secret) is manager  # never paused
        assert manager.get_token() == token
        assert pool.metrics()["secret_checks"]["token_requests"] == 2


def test_wrong_secrets_round_robin_from_threads_are_not_a_storm(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Review B (D3): 8 distinct wrong secrets from 4 threads for 3 s made a request per get().
    cid = emulator.client_id
    manager = pool.get(cid, emulator.client_secret)
    token = manager.get_token()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(4)

    def guesser(first: int) -> None:
        start.wait(5.0)
        deadline = time.monotonic() + 3.0
        i = first
        while time.monotonic() < deadline:
            try:
                pool.get(cid, f"wrong-secret-{i % 8}")
                outcome = "manager"
            except (InvalidClientError, RateLimitedError) as exc:
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            i += 1

    threads = [threading.Thread(target=guesser, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert "manager" not in outcomes
    assert sum(outcomes.values()) > 100
    # Up to one proof per thread before the first rejection, then one per pause (1 s, 2 s):
    # 4 measured (was: one per get, 1,241 in 3 s).
    assert emulator.token_requests - 1 <= 8, emulator.token_requests
    assert pool.get(cid, emulator.client_secret) is manager
    assert manager.get_token() == token
    assert manager.metrics()["token_requests"] == 1


def test_an_accepted_proof_ends_the_pause_and_its_doubling(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    cid = emulator.client_id
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(cid, emulator.client_secret)
        manager.get_token()
        emulator.set_secret(cid, "rotated-secret", keep_old=True)
        with pytest.raises(InvalidClientError):
            pool.get(cid, WRONG)
        with pytest.raises(RateLimitedError):
            pool.get(cid, "rotated-secret")  # paused: even a right new secret waits
        fake_clock.advance(1.1)
        assert pool.get(cid, "rotated-secret") is manager
        with pytest.raises(InvalidClientError):
            pool.get(cid, "another-guess")  # a first rejection again: a 1 s pause, not 2 s
        fake_clock.advance(1.1)
        with pytest.raises(InvalidClientError):
            pool.get(cid, "a-third-guess")
        assert emulator.token_requests == 5


def test_after_a_rejection_other_secrets_are_proven_one_at_a_time(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    # Guessers in parallel must not each start a proof the moment a pause ends.
    cid = emulator.client_id
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        clock=fake_clock.clock(),
    ) as pool:
        pool.get(cid, emulator.client_secret).get_token()
        with pytest.raises(InvalidClientError):
            pool.get(cid, "guess-0")
        fake_clock.advance(1.1)
        emulator.inject(Fault(delay=0.5, passthrough=True))
        first, first_out = in_background(lambda: pool.get(cid, "guess-1"))
        assert poll(lambda: emulator.token_requests == 3)  # its proof is in flight
        with pytest.raises(RateLimitedError, match="paused"):
            pool.get(cid, "guess-2")
        first.join(10.0)
        assert len(first_out) == 1 and isinstance(first_out[0], InvalidClientError)
        assert emulator.token_requests == 3


# -- secret sources: the value they give, never their say-so ---------------------------------


def test_a_wrong_source_gets_neither_the_manager_nor_the_token_of_a_source(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Review B (D1): any two sources counted as the same secret.
    cid = emulator.client_id
    manager = pool.get(cid, lambda: emulator.client_secret)
    token = manager.get_token()
    with pytest.raises(InvalidClientError):
        pool.get(cid, lambda: "attacker-wrong-secret")
    assert emulator.token_requests == 2  # the wrong source's own proof
    assert manager.get_token() == token
    checks = pool.metrics()["secret_checks"]
    assert checks == {"accepted": 0, "rejected": 1, "token_requests": 1}


def test_a_wrong_secret_file_gets_nothing_of_a_right_one(
    pool: TokenManagerPool, emulator: GenesysEmulator, tmp_path: Path
) -> None:
    from genesys_token import SecretFile

    (tmp_path / "good").write_text(emulator.client_secret)
    (tmp_path / "bad").write_text(WRONG)
    manager = pool.get(emulator.client_id, SecretFile(tmp_path / "good"))
    manager.get_token()
    assert pool.get(emulator.client_id, SecretFile(tmp_path / "good")) is manager
    with pytest.raises(InvalidClientError):
        pool.get(emulator.client_id, SecretFile(tmp_path / "bad"))
    assert emulator.token_requests == 2


def test_a_new_source_giving_the_managers_value_costs_no_request(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    cid = emulator.client_id
    by_value = pool.get(cid, emulator.client_secret)
    by_value.get_token()
    for _ in range(20):
        assert pool.get(cid, lambda: emulator.client_secret) is by_value  # a local read
    other = pool.get(cid, lambda: emulator.client_secret, scopes="other")  # held: a source
    other.get_token()
    for _ in range(20):
        assert pool.get(cid, lambda: emulator.client_secret, scopes="other") is other
    assert emulator.token_requests == 2
    assert pool.metrics()["secret_checks"]["token_requests"] == 0


def test_a_wrong_source_first_on_a_cold_pool_does_not_hold_back_the_right_one(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Review B (D2): the right source got the manager the wrong one made, and its rejection.
    cid = emulator.client_id
    planted = pool.get(cid, lambda: WRONG)
    manager = pool.get(cid, lambda: emulator.client_secret)  # proven: 1 request
    assert manager is not planted and planted.closed
    assert manager.get_token()
    assert pool.get(cid, lambda: emulator.client_secret) is manager
    assert emulator.token_requests == 2  # the proof, then the manager's own token


def test_a_wrong_source_does_not_lock_out_a_right_source(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    # Review B (D2): a wrong and a right source shared one probe: the right one was refused
    # with the wrong one's rejection for as long as the wrong caller kept asking.
    cid = emulator.client_id
    manager = pool.get(cid, emulator.client_secret)
    token = manager.get_token()
    for _ in range(5):
        with pytest.raises(InvalidClientError):
            pool.get(cid, lambda: WRONG)
        assert pool.get(cid, lambda: emulator.client_secret) is manager
    assert emulator.token_requests == 2
    assert manager.get_token() == token


def test_a_proven_source_is_what_becomes_current_not_a_source_that_joined_it(
    pool: TokenManagerPool, emulator: GenesysEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second source proven while the first is must not be what the manager gets, even when
    # its caller finishes first.
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
    assert right_out == [manager]
    assert len(wrong_out) == 1 and isinstance(wrong_out[0], InvalidClientError)
    assert manager.refresh(force=True)  # the secret it uses is the proven one


def test_two_valid_secrets_alternating_cost_a_proof_each_per_window_not_per_get(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    from genesys_token.core.secret_proofs import ACCEPTED_FOR

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


def test_a_secret_of_the_wrong_type_is_refused_by_name_not_read(
    pool: TokenManagerPool, emulator: GenesysEmulator
) -> None:
    from genesys_token import ConfigurationError

    pool.get(emulator.client_id, emulator.client_secret)
    with pytest.raises(ConfigurationError, match="must be a string or a zero-argument") as exc:
        pool.get(emulator.client_id, 12345)  # type: ignore[arg-type]
    assert exc.value.field == "client_secret"
    assert emulator.token_requests == 0


@pytest.mark.parametrize("bad", ["", "two\nlines", "lone-\udcff-surrogate"])
def test_an_unusable_other_secret_is_refused_by_name_before_any_proof(
    pool: TokenManagerPool, emulator: GenesysEmulator, bad: str
) -> None:
    from genesys_token import ConfigurationError

    pool.get(emulator.client_id, emulator.client_secret)
    with pytest.raises(ConfigurationError) as exc:
        pool.get(emulator.client_id, bad)
    assert exc.value.field == "client_secret"
    assert emulator.token_requests == 0


def test_a_hanging_held_source_does_not_hang_get(emulator: GenesysEmulator) -> None:
    # Comparing by value reads the manager's source: someone else's vault call that hangs
    # must cost a get() at most the pool's timeout, then the caller's secret is proven.
    cid, secret = emulator.client_id, emulator.client_secret
    hang = threading.Event()
    release = threading.Event()

    def held() -> str:
        if hang.is_set():
            release.wait(5.0)
        return secret

    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        background_refresh=False,
        timeout=0.3,
    ) as pool:
        manager = pool.get(cid, held)
        manager.get_token()
        hang.set()
        started = time.monotonic()
        try:
            assert pool.get(cid, lambda: secret) is manager  # proven: its own request
            assert time.monotonic() - started < 2.0
            assert emulator.token_requests == 2
            started = time.monotonic()
            assert pool.get(cid, lambda: secret) is manager  # now held: no read, no request
            assert time.monotonic() - started < 0.2
            assert emulator.token_requests == 2
        finally:
            release.set()


def test_a_stale_secret_polled_again_never_keeps_the_rotated_one_out(
    emulator: GenesysEmulator, fake_clock: FakeClock
) -> None:
    # Workers not yet rolled poll with the old secret, which the endpoint now rejects; the
    # rotated secret must get through within the shared pause's cap, whoever wins the race
    # when a pause ends (review C: 60 of 60 refused over 150 s).
    cid = emulator.client_id
    with TokenManagerPool(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        clock=fake_clock.clock(),
    ) as pool:
        manager = pool.get(cid, emulator.client_secret)
        manager.get_token()
        emulator.set_secret(cid, "rotated-secret", keep_old=False)
        stale = "stale-wrong-secret"
        waited = 0.0
        got = None
        while got is None and waited < 3 * proofs.SHARED_PAUSE_MAX:
            for _ in range(3):  # the stale pollers always ask first
                with pytest.raises((InvalidClientError, RateLimitedError)):
                    pool.get(cid, stale)
            try:
                got = pool.get(cid, "rotated-secret")
            except (RateLimitedError, InvalidClientError):
                fake_clock.advance(0.5)
                waited += 0.5
        assert got is manager
        assert waited <= proofs.SHARED_PAUSE_MAX
        assert emulator.token_requests <= 2 + 2 + 2  # first token, stale rejections, proof
