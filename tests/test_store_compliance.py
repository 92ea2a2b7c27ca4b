"""One behaviour suite run against every TokenStore (MemoryStore, FileStore, RedisStore).

Like google-auth's transport compliance suite: the same tests, a real backend each
(a temp directory, a real ``redis-server``), and the cross-process guarantees checked with
real processes talking to the emulator over HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from store_helpers import SECRET, sealer

from genesys_token import StoreError, Token, TokenManager
from genesys_token.stores import (
    FileStore,
    MemoryStore,
    RedisStore,
    TokenStore,
    store_key,
)
from genesys_token.testing import GenesysEmulator

KEY = store_key("client-a", "https://login.example/oauth/token", ())
OTHER_KEY = store_key("client-b", "https://login.example/oauth/token", ())
#: Generous bound for subprocesses (an import of the package takes ~0.3 s each).
PROCESS_TIMEOUT = 30.0


@dataclass
class Harness:
    """How to build (more) stores on one backend, and reach that backend directly."""

    kind: str
    make: Callable[[], TokenStore]
    location: str = ""
    prefix: str = ""

    def corrupt(self, key: str, raw: bytes) -> None:
        """Write ``raw`` where the entry of ``key`` lives, bypassing the store."""
        if self.kind == "file":
            path = Path(self.location) / f"{key}.json"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_bytes(raw)
        else:
            import redis

            with redis.Redis.from_url(self.location, socket_timeout=2) as client:
                client.set(f"{self.prefix}{{{key}}}:token", raw)

    def raw_entry(self, key: str) -> bytes:
        """The bytes the store keeps for ``key``'s entry."""
        if self.kind == "file":
            return (Path(self.location) / f"{key}.json").read_bytes()
        import redis

        with redis.Redis.from_url(self.location, socket_timeout=2) as client:
            value = client.get(f"{self.prefix}{{{key}}}:token")
        assert isinstance(value, bytes)
        return value

    def everything_stored(self) -> bytes:
        """Every byte of every file, or every key and value under the prefix, joined."""
        if self.kind == "file":
            return b"".join(
                p.name.encode() + p.read_bytes()
                for p in Path(self.location).rglob("*")
                if p.is_file()
            )
        import redis

        chunks: list[bytes] = []
        with redis.Redis.from_url(self.location, socket_timeout=2) as client:
            for name in client.scan_iter(match=f"{self.prefix}*"):
                chunks.append(name)
                if client.type(name) == b"string":
                    chunks.append(client.get(name) or b"")
        return b"".join(chunks)


def _harness(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    stores: list[TokenStore] = []

    def keep(store: TokenStore) -> TokenStore:
        stores.append(store)
        return store

    request.addfinalizer(lambda: [store.close() for store in stores])
    if kind == "memory":
        shared = MemoryStore()
        return Harness(kind, lambda: shared)
    if kind == "file":
        directory = str(tmp_path / "cache")
        return Harness(kind, lambda: keep(FileStore(directory)), location=directory)
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return Harness(
        kind, lambda: keep(RedisStore.from_url(url, prefix=prefix)), location=url, prefix=prefix
    )


@pytest.fixture(params=["memory", "file", "redis"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """Every store kind."""
    return _harness(request.param, request, tmp_path)


@pytest.fixture(params=["file", "redis"])
def shared_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """The stores shared between processes."""
    return _harness(request.param, request, tmp_path)


def make_token(value: str = "tok-one", *, lifetime: float = 3600.0, age: float = 0.0) -> Token:
    """A token issued ``age`` seconds ago on the real clocks."""
    return Token.issued(
        value,
        token_type="bearer",
        lifetime=lifetime,
        sent_monotonic=time.monotonic() - age,
        sent_wall=time.time() - age,
        scopes=("users:read",),
        claims={"client_id": "client-a", "exp": int(time.time() + lifetime - age)},
    )


def load(
    store: TokenStore, key: str = KEY, *, later: float = 0.0, secret: str = SECRET
) -> Token | None:
    """Load as if ``later`` seconds had passed on both clocks, as a holder of ``secret``."""
    return store.load(
        key,
        now_monotonic=time.monotonic() + later,
        now_wall=time.time() + later,
        sealer=sealer(key, secret),
    )


# -- entries -------------------------------------------------------------------------------


def test_every_store_implements_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.make(), TokenStore)


def test_saved_token_loads_back_with_its_fields(harness: Harness) -> None:
    store = harness.make()
    token = make_token()
    store.save(KEY, token, sealer=sealer(KEY))
    loaded = load(store)
    assert loaded is not None
    assert loaded.access_token == token.access_token
    assert loaded.token_type == "bearer"
    assert loaded.expires_in == token.expires_in
    assert loaded.expires_at == pytest.approx(token.expires_at)
    assert loaded.scopes == ("users:read",)
    assert loaded.claims == token.claims
    assert loaded.remaining() == pytest.approx(token.remaining(), abs=1.0)


def test_missing_key_loads_as_none(harness: Harness) -> None:
    assert load(harness.make()) is None


def test_token_loads_as_none_once_expired(harness: Harness) -> None:
    store = harness.make()
    store.save(KEY, make_token(lifetime=60.0), sealer=sealer(KEY))
    assert load(store, later=59.0) is not None
    assert load(store, later=61.0) is None


def test_token_saved_after_its_expiry_loads_as_none(harness: Harness) -> None:
    store = harness.make()
    store.save(KEY, make_token(lifetime=60.0, age=120.0), sealer=sealer(KEY))
    assert load(store) is None


def test_save_overwrites_the_previous_token(harness: Harness) -> None:
    store = harness.make()
    store.save(KEY, make_token("tok-old"), sealer=sealer(KEY))
    store.save(KEY, make_token("tok-new"), sealer=sealer(KEY))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-new"


def test_keys_are_independent(harness: Harness) -> None:
    store = harness.make()
    store.save(KEY, make_token("tok-a"), sealer=sealer(KEY))
    assert load(store, OTHER_KEY) is None
    store.save(OTHER_KEY, make_token("tok-b"), sealer=sealer(OTHER_KEY))
    first, second = load(store, KEY), load(store, OTHER_KEY)
    assert first is not None and first.access_token == "tok-a"
    assert second is not None and second.access_token == "tok-b"


def test_a_second_store_on_the_same_backend_sees_the_token(harness: Harness) -> None:
    harness.make().save(KEY, make_token("tok-shared"), sealer=sealer(KEY))
    loaded = load(harness.make())
    assert loaded is not None and loaded.access_token == "tok-shared"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b"{}",
        b'{"format": "genesys-token/1", "token": {"access_token": 5}}',
        b'{"format": "someone-else/9", "token": {}}',
        json.dumps(make_token("tok-foreign").to_dict()).encode(),  # no envelope: foreign
        json.dumps(
            {"format": "genesys-token/1", "token": make_token("tok-foreign").to_dict()}
        ).encode(),  # the old clear format, which was valid: no longer read
        b"gt2:" + b"A" * 64,  # looks sealed, is not
    ],
    ids=[
        "text",
        "binary",
        "list",
        "empty",
        "mistyped",
        "foreign-format",
        "no-envelope",
        "old-clear-format",
        "fake-sealed",
    ],
)
def test_corrupt_entry_loads_as_none_and_is_replaced_by_the_next_save(
    shared_harness: Harness, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    store = shared_harness.make()
    shared_harness.corrupt(KEY, raw)
    assert load(store) is None
    store.save(KEY, make_token("tok-good"), sealer=sealer(KEY))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-good"
    assert "tok-foreign" not in caplog.text


# -- sealed entries ------------------------------------------------------------------------

#: A token value whose every encoding is easy to look for.
VISIBLE = "tok-VISIBLE-0123456789abcdef-VISIBLE"


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        raw.hex().encode(),
        raw.hex().upper().encode(),
        raw[4:-4],  # a fragment of the value is a leak too
    ]


def test_no_stored_byte_contains_the_token_or_the_secret(shared_harness: Harness) -> None:
    store = shared_harness.make()
    store.save(KEY, make_token(VISIBLE), sealer=sealer(KEY))
    with store.lock(KEY, 1.0) as held:  # whatever the lock leaves behind counts too
        assert held
        stored = shared_harness.everything_stored()
    stored += shared_harness.everything_stored()
    assert stored
    for form in [*_encodings(VISIBLE), *_encodings(SECRET)]:
        assert form not in stored, form
    loaded = load(store)
    assert loaded is not None and loaded.access_token == VISIBLE


def test_entry_sealed_with_another_secret_is_not_used_and_is_replaced(
    shared_harness: Harness,
) -> None:
    store = shared_harness.make()
    store.save(KEY, make_token("tok-planted"), sealer=sealer(KEY, "a-secret-we-do-not-hold"))
    assert load(store) is None
    store.save(KEY, make_token("tok-ours"), sealer=sealer(KEY))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-ours"
    assert load(store, secret="a-secret-we-do-not-hold") is None  # and the other way round


def test_entry_moved_to_another_key_does_not_open(shared_harness: Harness) -> None:
    store = shared_harness.make()
    store.save(OTHER_KEY, make_token("tok-b"), sealer=sealer(OTHER_KEY))
    shared_harness.corrupt(KEY, shared_harness.raw_entry(OTHER_KEY))
    assert load(store, KEY) is None


def test_a_flipped_byte_makes_the_entry_missing_not_an_error(shared_harness: Harness) -> None:
    store = shared_harness.make()
    store.save(KEY, make_token("tok-good"), sealer=sealer(KEY))
    original = shared_harness.raw_entry(KEY)
    for index in (0, 5, len(original) // 2, len(original) - 1):
        altered = bytearray(original)
        altered[index] ^= 0x04
        shared_harness.corrupt(KEY, bytes(altered))
        assert load(store) is None, index
    store.save(KEY, make_token("tok-again"), sealer=sealer(KEY))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-again"


def test_shared_store_without_a_sealer_raises_a_clear_store_error(shared_harness: Harness) -> None:
    store = shared_harness.make()
    with pytest.raises(StoreError, match="sealed entries only"):
        store.save(KEY, make_token())
    with pytest.raises(StoreError, match="sealed entries only"):
        store.load(KEY, now_monotonic=time.monotonic(), now_wall=time.time())
    assert shared_harness.everything_stored() == b""


def test_memory_store_keeps_tokens_in_process_without_a_sealer() -> None:
    store = MemoryStore()
    token = make_token("tok-memory")
    store.save(KEY, token)
    assert store.load(KEY, now_monotonic=time.monotonic(), now_wall=time.time()) is token
    assert load(store) is None  # an entry bound to no secret is not for a holder of one


def test_entry_saved_with_another_secret_is_missing_in_every_store(harness: Harness) -> None:
    # Review (issue 22): MemoryStore ignored the sealer, so a manager with a wrong secret
    # sharing a MemoryStore got the right secret's token with 0 token requests.
    store = harness.make()
    store.save(KEY, make_token("tok-right"), sealer=sealer(KEY))
    assert load(store, secret="a-wrong-secret") is None
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-right"
    if harness.kind == "memory":  # no sealer at all: no secret, no entry
        assert store.load(KEY, now_monotonic=time.monotonic(), now_wall=time.time()) is None


def test_manager_ignores_a_token_planted_without_the_secret(
    shared_harness: Harness, emulator: GenesysEmulator
) -> None:
    key = store_key(emulator.client_id, emulator.token_url, ())
    planted = shared_harness.make()
    planted.save(key, make_token("tok-planted"), sealer=sealer(key, "attacker-guess"))
    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        store=shared_harness.make(),
        background_refresh=False,
    )
    try:
        token = manager.get_token()
    finally:
        manager.close()
    assert token != "tok-planted"
    assert emulator.token_requests == 1
    for form in _encodings(token):  # the entry it wrote instead is sealed too
        assert form not in shared_harness.everything_stored()
    assert load(planted, key, secret=emulator.client_secret) is not None


# -- the lock ------------------------------------------------------------------------------


def test_lock_is_held_and_released(harness: Harness) -> None:
    store = harness.make()
    with store.lock(KEY, 1.0) as held:
        assert held is True
    with store.lock(KEY, 0.0) as again:
        assert again is True


def test_lock_is_released_when_the_block_raises(harness: Harness) -> None:
    store = harness.make()
    with pytest.raises(RuntimeError), store.lock(KEY, 1.0):
        raise RuntimeError("boom")
    with store.lock(KEY, 0.0) as held:
        assert held is True


def test_lock_timeout_yields_false_while_another_thread_holds_it(harness: Harness) -> None:
    store = harness.make()
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock(KEY, 1.0) as held:
            assert held
            taken.set()
            release.wait(5.0)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(5.0)
        started = time.monotonic()
        with harness.make().lock(KEY, 0.2) as held:
            waited = time.monotonic() - started
            assert held is False
        assert 0.15 <= waited < 1.5
        with harness.make().lock(OTHER_KEY, 0.0) as other:
            assert other is True  # locks of other keys are independent
    finally:
        release.set()
        thread.join(5.0)
    with harness.make().lock(KEY, 1.0) as held:
        assert held is True


def test_lock_excludes_other_threads(harness: Harness) -> None:
    store = harness.make()
    threads, rounds = 8, 5
    barrier = threading.Barrier(threads)
    state = {"inside": 0, "most": 0, "entries": 0}
    failures: list[str] = []

    def worker() -> None:
        barrier.wait(5.0)
        for _ in range(rounds):
            with store.lock(KEY, 10.0) as held:
                if not held:
                    failures.append("lock not acquired")
                    continue
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
                time.sleep(0.002)  # widen the window in which a second holder would show
                state["entries"] += 1
                state["inside"] -= 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30.0)
    assert not failures
    assert state["most"] == 1
    assert state["entries"] == threads * rounds


# -- between processes (the stores meant for it) -------------------------------------------

_LOCK_PROBE = """
import sys
from genesys_token.stores import FileStore, RedisStore
kind, location, prefix, key = sys.argv[1:5]
store = FileStore(location) if kind == "file" else RedisStore.from_url(location, prefix=prefix)
with store.lock(key, 0.2) as held:
    print(held)
store.close()
"""


def _probe_lock(harness: Harness) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _LOCK_PROBE, harness.kind, harness.location, harness.prefix, KEY],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=True,
    )
    return result.stdout.strip()


def test_lock_excludes_other_processes(shared_harness: Harness) -> None:
    store = shared_harness.make()
    with store.lock(KEY, 1.0) as held:
        assert held
        assert _probe_lock(shared_harness) == "False"
    assert _probe_lock(shared_harness) == "True"


_FLEET_WORKER = """
import json, os, sys
from genesys_token import TokenManager
from genesys_token.stores import FileStore, RedisStore
kind, location, prefix, token_url, api_url = sys.argv[1:6]
store = FileStore(location) if kind == "file" else RedisStore.from_url(location, prefix=prefix)
manager = TokenManager(
    os.environ["TEST_CLIENT_ID"], os.environ["TEST_CLIENT_SECRET"],
    token_url=token_url, api_base_url=api_url, store=store, background_refresh=False,
)
print("ready", flush=True)
sys.stdin.readline()
manager.get_token()
print(json.dumps({"fingerprint": manager.token.fingerprint, "source": manager.token.source}))
manager.close()
store.close()
"""


def run_fleet(harness: Harness, emulator: GenesysEmulator, processes: int) -> list[dict[str, str]]:
    """Start ``processes`` workers, release them together, return what each got."""
    env = dict(
        os.environ, TEST_CLIENT_ID=emulator.client_id, TEST_CLIENT_SECRET=emulator.client_secret
    )
    argv = [
        sys.executable, "-c", _FLEET_WORKER,
        harness.kind, harness.location, harness.prefix, emulator.token_url, emulator.api_base_url,
    ]  # fmt: skip
    workers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    try:
        for worker in workers:  # every one has imported and built its manager...
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # ...before any is let go
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=PROCESS_TIMEOUT)
            assert worker.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5.0)


def test_one_token_request_for_processes_started_together(
    shared_harness: Harness, emulator: GenesysEmulator
) -> None:
    processes = 8 if shared_harness.kind == "file" else 4
    results = run_fleet(shared_harness, emulator, processes)
    assert emulator.token_requests == 1
    assert len({result["fingerprint"] for result in results}) == 1
    assert sorted(result["source"] for result in results).count("network") == 1

    later = run_fleet(shared_harness, emulator, 1)
    assert emulator.token_requests == 1  # a later process reuses the shared token
    assert later[0]["source"] == "store"
    assert later[0]["fingerprint"] == results[0]["fingerprint"]


def test_threads_of_many_managers_share_one_token_request(
    harness: Harness, emulator: GenesysEmulator
) -> None:
    managers = [
        TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            store=harness.make(),
            background_refresh=False,
        )
        for _ in range(6)
    ]
    barrier = threading.Barrier(len(managers))
    tokens: list[str] = []

    def run(manager: TokenManager) -> None:
        barrier.wait(5.0)
        tokens.append(manager.get_token())

    threads = [threading.Thread(target=run, args=(m,)) for m in managers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
    finally:
        for manager in managers:
            manager.close()
    assert len(tokens) == 6 and len(set(tokens)) == 1
    assert emulator.token_requests == 1
