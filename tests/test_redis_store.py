"""RedisStore specifics: TTLs, the owner-only lock, outages, forks, the optional import."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import poll, read_child
from redis_server import RedisServer, free_port, redis_server_or_skip
from store_helpers import KEY, load, make_token, save

from genesys_token import ConfigurationError, StoreError, TokenManager
from genesys_token.stores import RedisStore, store_key
from genesys_token.stores import _leases as leases
from genesys_token.stores._redis_lock import RENEW_EVERY, STALE_AFTER
from genesys_token.testing import Fault, GenesysEmulator

MakeManager = Callable[..., TokenManager]


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(redis_url, prefix=prefix)
    yield store
    store.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, to look at and tamper with what the store wrote."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    yield client
    client.close()


# -- entries and the lock ------------------------------------------------------------------


def test_token_lives_in_redis_exactly_as_long_as_it_is_valid(
    store: RedisStore, raw: redis.Redis, prefix: str
) -> None:
    save(store, make_token(lifetime=120.0))
    ttl_ms = raw.pttl(f"{prefix}{{{KEY}}}:token")
    assert 118_000 < ttl_ms <= 120_000


def test_string_replies_from_a_decoding_client_are_understood(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=1)
    store = RedisStore(client=client, prefix=prefix)
    save(store, make_token("tok-text"))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-text"
    store.close()
    assert client.ping()  # a given client is the caller's to close
    client.close()


def test_taking_the_lock_is_idempotent_for_its_owner(store: RedisStore, raw: redis.Redis) -> None:
    # Review: a SET whose answer was lost (timeout, then redis-py's retry) found the lock
    # already set by its own owner and waited for it until it expired (30 s).
    name = store._key("lock", KEY)
    take = store._lock._take
    a, b = "a" * 32 + ":", "b" * 32 + ":"  # owners: 32 hex digits and a colon
    assert take(keys=[name], args=[a, a + "0", 5000]) == 1
    assert take(keys=[name], args=[a, a + "0", 5000]) == 1  # ours already
    assert take(keys=[name], args=[b, b + "0", 5000]) == (a + "0").encode()
    # A takeover is a compare-and-set: only the value the waiter judged stale is replaced.
    assert take(keys=[name], args=[b, b + "0", 5000, a + "7"]) == (a + "0").encode()
    assert take(keys=[name], args=[b, b + "0", 5000, a + "0"]) == 1
    assert raw.get(name) == (b + "0").encode()
    raw.delete(name)


def test_a_lock_attempt_whose_answer_is_lost_leaves_no_orphan(
    store: RedisStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = store._key("lock", KEY)
    real = store._lock._take

    def landed_but_lost(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # the SET lands...
        raise redis.exceptions.ConnectionError("...but its answer is lost")

    monkeypatch.setattr(store._lock, "_take", landed_but_lost)
    with pytest.raises(StoreError), store.lock(KEY, 1):
        pass
    assert raw.exists(name) == 0  # released at once: peers are not held off for lock_ttl


def test_renewals_go_on_during_the_outage_backoff(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # Review: one failed call started the outage backoff, which skipped every renewal, so the
    # lock lapsed under its live holder.
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.6, outage_backoff=30)
    name = store._key("lock", KEY)
    try:
        with store.lock(KEY, 1, lease=10) as held:
            assert held
            store._down_until = time.monotonic() + 30  # as after a failed read
            time.sleep(1.5)  # 2.5 lock TTLs: renewals had to run
            assert raw.exists(name) == 1
    finally:
        store.close()


def test_abandoned_lock_expires_by_itself(redis_url: str, prefix: str, raw: redis.Redis) -> None:
    raw.set(f"{prefix}{{{KEY}}}:lock", "a-process-that-died", px=200)
    store = RedisStore.from_url(redis_url, prefix=prefix)
    started = time.monotonic()
    with store.lock(KEY, 3.0) as held:
        assert held is True
    assert 0.1 < time.monotonic() - started < 2.0
    store.close()


def test_lock_is_released_only_by_its_owner(redis_url: str, prefix: str, raw: redis.Redis) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.2)
    name = f"{prefix}{{{KEY}}}:lock"
    with store.lock(KEY, 1.0, lease=0.3) as held:
        assert held
        assert poll(lambda: raw.get(name) is None)  # our lease ran out mid-refresh...
        raw.set(name, "peer", px=10_000)  # ...and a peer took it
    assert raw.get(name) == b"peer"  # leaving our block must not free the peer's lock
    with store.lock(KEY, 0.0) as again:
        assert again is False
    store.close()


def test_other_redis_errors_become_store_errors(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # A user that may not touch the store's keys: NOPERM, a ResponseError like any other.
    user = f"limited-{uuid.uuid4().hex[:8]}"
    raw.acl_setuser(
        user, enabled=True, passwords=["+pw"], commands=["+@all"], keys=[f"{prefix}ok*"]
    )
    url = redis_url.replace("redis://", f"redis://{user}:pw@")
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        with pytest.raises(StoreError, match="redis read failed: NoPermissionError"):
            load(store)
        allowed = RedisStore.from_url(url, prefix=prefix + "ok")
        save(allowed, make_token())
        assert load(allowed) is not None  # not treated as an outage
        allowed.close()
    finally:
        store.close()
        raw.acl_deluser(user)


def test_reply_that_is_not_a_string_is_ignored(redis_url: str, prefix: str) -> None:
    class OddClient(redis.Redis):  # a proxy or mock-alike answering with a list
        def evalsha(self, *args: object) -> object:  # type: ignore[override]
            return [42]

    client = OddClient.from_url(redis_url, socket_timeout=1)
    assert load(RedisStore(client=client, prefix=prefix)) is None
    client.close()


# -- outages -------------------------------------------------------------------------------


def test_redis_killed_get_token_still_works_quickly(
    make_manager: MakeManager, emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url)
        first = make_manager(store=store, background_refresh=False)
        first.get_token()
        make_manager(store=store, background_refresh=False).get_token()
        assert emulator.token_requests == 1
        server.kill()
        assert not server.running

        started = time.monotonic()
        third = make_manager(store=store, background_refresh=False)
        token = third.get_token()
        assert time.monotonic() - started < 3.0
        assert emulator.token_requests == 2
        assert first.get_token()  # a manager holding a token needs no Redis at all
        fresh_store = RedisStore.from_url(server.url)
        try:
            fresh = make_manager(store=fresh_store, background_refresh=False)
            assert fresh.get_token()
            assert time.monotonic() - started < 5.0
        finally:
            fresh_store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("token store unavailable" in message for message in warnings)
    assert token not in caplog.text
    assert emulator.client_secret not in caplog.text
    store.close()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung or firewalled Redis)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()


def test_hung_redis_costs_one_timeout_then_is_skipped(
    make_manager: MakeManager, emulator: GenesysEmulator, blackhole: str
) -> None:
    store = RedisStore.from_url(blackhole, socket_timeout=0.2)
    started = time.monotonic()
    manager = make_manager(store=store, background_refresh=False)
    assert manager.get_token()
    # load: one timeout and one retry; then lock, load and save skip Redis at once.
    assert time.monotonic() - started < 1.5
    assert emulator.token_requests == 1
    store.close()


def test_redis_is_tried_again_after_the_outage_backoff() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", outage_backoff=0.2)
    with pytest.raises(StoreError, match="redis read failed: ConnectionError"):
        load(store)
    with pytest.raises(StoreError, match="not retrying"):
        load(store)
    started = time.monotonic()
    with pytest.raises(StoreError, match="not retrying"), store.lock(KEY, 5.0):
        pytest.fail("the block must not run without the lock")
    assert time.monotonic() - started < 1.0  # at once, not after the 5 s
    time.sleep(0.25)
    with pytest.raises(StoreError, match="redis read failed"):
        load(store)
    store.close()


def test_lock_release_failure_raises_a_store_error_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url)
        with pytest.raises(StoreError, match="redis unlock failed"), store.lock(KEY, 1.0) as held:
            assert held
            server.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    store.close()


def test_lock_release_failure_does_not_hide_the_error_of_the_block() -> None:
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url)
        with pytest.raises(RuntimeError, match="the block's own"), store.lock(KEY, 1.0):
            server.stop()
            raise RuntimeError("the block's own error")
    store.close()


# -- configuration -------------------------------------------------------------------------


def test_from_url_builds_a_client_with_short_socket_timeouts(store: RedisStore) -> None:
    kwargs = store._client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.0
    assert kwargs["socket_connect_timeout"] == 1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("redis://localhost/0",), {"client": object()}, "url"),
        ((42,), {}, "url"),
        (("http://:hunter2@localhost/0",), {}, "url"),
        ((), {"prefix": 3}, "prefix"),
        ((), {"lock_ttl": 0}, "lock_ttl"),
        ((), {"outage_backoff": True}, "outage_backoff"),
        ((), {"socket_timeout": -1}, "socket_timeout"),
    ],
)
def test_bad_settings_are_configuration_errors(
    args: tuple[object, ...], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert "hunter2" not in str(info.value)


def test_url_password_stays_out_of_repr_and_errors() -> None:
    store = RedisStore.from_url(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError) as info:
        load(store)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(store)
    store.close()


def test_given_client_without_socket_timeout_is_warned_about(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    RedisStore(client=client)
    assert any("no socket_timeout" in r.getMessage() for r in caplog.records)
    client.close()


def test_stores_import_without_redis_and_building_one_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import genesys_token.stores as stores\n"
        "stores.FileStore; stores.MemoryStore\n"
        "try:\n"
        "    stores.RedisStore('redis://localhost/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "genesys-token[redis]" in result.stdout


def test_unknown_attribute_of_the_stores_package_raises_attribute_error() -> None:
    import genesys_token.stores as stores

    with pytest.raises(AttributeError):
        _ = stores.NoSuchStore  # type: ignore[attr-defined]


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_connections(
    emulator: GenesysEmulator, redis_url: str, prefix: str
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix)
    manager = TokenManager(  # its fork handler resets the store in the child
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        store=store,
        background_refresh=False,
    )
    token = manager.get_token()  # the parent's pool now holds a connection
    key = store_key(emulator.client_id, emulator.token_url, ())
    parent_client = store._client
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            loaded = load(store, key, secret=emulator.client_secret)
            fresh = store._client is not parent_client
            ok = loaded is not None and loaded.access_token == token and fresh
            os.write(write_end, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    assert read_child(pid, read_end, 10.0) == b"ok"
    assert load(store, key, secret=emulator.client_secret) is not None  # parent's still work
    manager.close()
    store.close()


def test_redis_server_helper_reports_a_server_that_cannot_start() -> None:
    server = RedisServer(binary=sys.executable)  # "python --port ..." exits at once
    with pytest.raises(RuntimeError, match="exited"):
        server.start()
    server.stop()


# -- the lock as a lease -------------------------------------------------------------------


def _renewal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == leases.THREAD_NAME and t.is_alive()]


def test_lock_is_renewed_while_its_holder_is_inside(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    # TTLs in tests are scaled down from 30 s, not so far that a loaded machine's scheduling
    # delays (a renewal every TTL / 3) would look like an expiry.
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=1.2)
    peer = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=1.2)
    name = f"{prefix}{{{KEY}}}:lock"
    before = set(_renewal_threads())  # other stores' keepers may still be ending
    with store.lock(KEY, 1.0, lease=30.0) as held:
        assert held
        assert len(set(_renewal_threads()) - before) == 1
        assert leases.held() == 1
        deadline = time.monotonic() + 2.4  # two lock TTLs
        while time.monotonic() < deadline:
            with peer.lock(KEY, 0.0) as stolen:
                assert stolen is False
            assert 0 < raw.pttl(name) <= 1200
            time.sleep(0.05)
    assert raw.get(name) is None  # released at once on exit...
    assert leases.held() == 0  # ...and no longer renewed
    store.close()
    peer.close()


def test_lock_is_never_renewed_past_its_lease(redis_url: str, prefix: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.3)
    peer = RedisStore.from_url(redis_url, prefix=prefix)
    with store.lock(KEY, 1.0, lease=0.6) as held:
        assert held
        taken = time.monotonic()
        with peer.lock(KEY, 5.0) as peer_held:  # the holder is still inside, but overdue
            assert peer_held
            waited = time.monotonic() - taken
    assert 0.5 <= waited < 3.0  # renewed without end, the peer would time out at 5 s
    store.close()
    peer.close()


def test_a_short_lease_caps_the_first_ttl_too(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=30.0)
    with store.lock(KEY, 1.0, lease=0.5) as held:
        assert held
        assert 0 < raw.pttl(f"{prefix}{{{KEY}}}:lock") <= 500
    with pytest.raises(ConfigurationError, match="lease"), store.lock(KEY, 1.0, lease=0):
        pass
    store.close()


def test_renewal_that_finds_the_lock_taken_stops_and_leaves_it_alone(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.15)
    name = f"{prefix}{{{KEY}}}:lock"
    with store.lock(KEY, 1.0) as held:
        assert held
        raw.set(name, "peer", px=5_000)  # e.g. an operator's manual takeover
        assert poll(lambda: leases.held() == 0, 2.0)  # it noticed and stopped renewing
        assert 4_000 < raw.pttl(name) <= 5_000  # not extended by us
    assert raw.get(name) == b"peer"
    store.close()


def test_renewal_survives_a_failing_redis_and_ends_with_the_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url, lock_ttl=0.15, outage_backoff=0.05)
        before = set(_renewal_threads())  # other stores' keepers may still be ending
        with pytest.raises(StoreError), store.lock(KEY, 1.0) as held:
            assert held
            server.stop()
            time.sleep(0.4)  # several renewals fail meanwhile
            assert leases.held() == 1  # still trying: Redis may come back
            assert len(set(_renewal_threads()) - before) == 1
        assert leases.held() == 0
    assert any("could not renew" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    store.close()


_HOLDER = """
import sys, time
from genesys_token.stores import RedisStore
url, prefix, key = sys.argv[1:4]
store = RedisStore.from_url(url, prefix=prefix, lock_ttl=0.5)
with store.lock(key, 5.0, lease=60.0) as held:
    print("held" if held else "not held", flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_frees_the_lock_within_lock_ttl(redis_url: str, prefix: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url, prefix, KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = RedisStore.from_url(redis_url, prefix=prefix)
        with store.lock(KEY, 0.6) as held:
            assert held is False  # renewed: alive past its 0.5 s TTL
        holder.kill()
        holder.wait(5.0)
        killed = time.monotonic()
        with store.lock(KEY, 3.0) as held:
            assert held
            assert time.monotonic() - killed < 2.0  # its lease was 60 s: the TTL freed it
        store.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5.0)


_SLOW_FLEET_WORKER = """
import json, os, sys
from genesys_token import TokenManager
from genesys_token.stores import RedisStore
url, prefix, token_url, api_url, lock_ttl = sys.argv[1:6]
store = RedisStore.from_url(url, prefix=prefix, lock_ttl=float(lock_ttl))
manager = TokenManager(
    os.environ["TEST_CLIENT_ID"], os.environ["TEST_CLIENT_SECRET"],
    token_url=token_url, api_base_url=api_url, store=store, background_refresh=False,
)
manager.get_token()
print(json.dumps({"fingerprint": manager.token.fingerprint, "source": manager.token.source}))
manager.close()
store.close()
"""


def test_peer_waits_for_a_holder_throttled_longer_than_the_lock_ttl(
    emulator: GenesysEmulator, redis_url: str, prefix: str
) -> None:
    # Issue 15's acceptance, scaled: TTL 0.6 s, the first token request held 3 s (5 TTLs).
    emulator.inject(Fault(delay=3.0, passthrough=True))
    env = dict(
        os.environ, TEST_CLIENT_ID=emulator.client_id, TEST_CLIENT_SECRET=emulator.client_secret
    )
    argv = [
        sys.executable, "-c", _SLOW_FLEET_WORKER,
        redis_url, prefix, emulator.token_url, emulator.api_base_url, "0.6",
    ]  # fmt: skip
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    second: subprocess.Popen[str] | None = None
    try:
        assert poll(lambda: emulator.token_requests == 1, 15.0)
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        outputs = [p.communicate(timeout=30.0)[0] for p in (first, second)]
        assert first.returncode == 0 and second.returncode == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5.0)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert emulator.token_requests == 1
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    assert [r["source"] for r in results] == ["network", "store"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_inside_a_lock_block_neither_releases_nor_renews_it(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.6)
    name = f"{prefix}{{{KEY}}}:lock"
    read_end, write_end = os.pipe()
    with store.lock(KEY, 1.0) as held:
        assert held
        pid = os.fork()
        if pid != 0:
            os.close(write_end)
            assert read_child(pid, read_end, 10.0) == b"left"
            assert raw.get(name) is not None  # the child's exit left the parent's lock
            time.sleep(0.9)  # longer than lock_ttl: the parent's renewal still runs
            assert raw.get(name) is not None
    if pid == 0:  # pragma: no cover - the child left the block above
        os.write(write_end, b"left")
        os._exit(0)
    assert raw.get(name) is None
    store.close()


# -- a holder shows that it is alive ---------------------------------------------------------


def test_a_planted_lock_that_never_changes_is_taken_over(
    make_manager: MakeManager, emulator: GenesysEmulator, redis_url: str, prefix: str,
    raw: redis.Redis,
) -> None:  # fmt: skip
    # Issue 22: a lock key planted by hand with a long TTL stalled every cold acquisition for
    # the whole lock wait (73 s with default settings).
    key = store_key(emulator.client_id, emulator.token_url, ())
    name = f"{prefix}{{{key}}}:lock"
    raw.set(name, "planted-by-hand", px=3_600_000)
    store = RedisStore.from_url(redis_url, prefix=prefix)
    manager = make_manager(store=store, background_refresh=False)
    started = time.monotonic()
    assert manager.get_token(timeout=8.0)
    waited = time.monotonic() - started
    assert STALE_AFTER - 0.1 <= waited < STALE_AFTER + 1.5
    assert emulator.token_requests == 1
    assert raw.get(name) is None  # taken over, then released like any lock of ours
    store.close()


def test_a_live_holder_is_never_taken_over(
    make_manager: MakeManager, emulator: GenesysEmulator, redis_url: str, prefix: str,
    raw: redis.Redis,
) -> None:  # fmt: skip
    # The holder's token request takes longer than STALE_AFTER: its lock must look alive all
    # along, or the waiter takes it over and makes a second token request.
    emulator.inject(Fault(delay=STALE_AFTER + 2.0, passthrough=True))
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    holder, waiter = (make_manager(store=s, background_refresh=False) for s in stores)
    key = store_key(emulator.client_id, emulator.token_url, ())
    name = f"{prefix}{{{key}}}:lock"
    fetch = threading.Thread(target=holder.get_token)
    fetch.start()
    try:
        assert poll(lambda: emulator.token_requests == 1, 5.0)
        seen = raw.get(name)
        assert seen is not None
        assert poll(lambda: raw.get(name) not in (None, seen), 2 * RENEW_EVERY + 1.0)  # a beat
        assert waiter.get_token(timeout=STALE_AFTER + 10.0) == holder.get_token()
    finally:
        fetch.join(15.0)
        for store in stores:
            store.close()
    assert emulator.token_requests == 1
    assert waiter.token is not None and waiter.token.source == "store"
