"""RedisStore on a real 3-master Redis Cluster: hash-tagged keys, scripts, a fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster, key_slot
from redis_server import RedisCluster3, free_port
from store_helpers import KEY, load, make_token, save

from genesys_token import StoreError
from genesys_token.stores import RedisStore, store_key
from genesys_token.testing import GenesysEmulator

PROCESS_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster3]:
    """Three masters on free ports, stopped at the end of the module."""
    with RedisCluster3() as started:
        yield started


@pytest.fixture
def store(cluster: RedisCluster3, prefix: str) -> Iterator[RedisStore]:
    built = RedisStore.from_url(cluster.url, cluster=True, prefix=prefix, lock_ttl=0.6)
    yield built
    built.close()


@pytest.fixture
def client(cluster: RedisCluster3) -> Iterator[RedisCluster]:
    """A cluster client of the test's own, to look at what the store wrote."""
    made = RedisCluster.from_url(cluster.url, socket_timeout=2)
    yield made
    made.close()


def _keys(prefix: str, key: str) -> tuple[str, str]:
    return f"{prefix}{{{key}}}:token", f"{prefix}{{{key}}}:lock"


def _spread_keys(client: RedisCluster, count: int = 12) -> list[str]:
    """Store keys whose entries land on every master of the cluster."""
    keys = [store_key(f"client-{n}", "https://login.example/oauth/token", ()) for n in range(count)]
    nodes = {client.get_node_from_key(f"x{{{key}}}").name for key in keys}
    assert len(nodes) == 3, "the sample of keys must cover all three masters"
    return keys


def test_every_key_of_one_entry_shares_a_slot(store: RedisStore, prefix: str) -> None:
    token_key, lock_key = _keys(prefix, KEY)
    assert key_slot(token_key.encode()) == key_slot(lock_key.encode())
    assert store._key("token", KEY) == token_key
    assert store._key("lock", KEY) == lock_key


def test_entries_and_locks_work_on_every_master(
    store: RedisStore, client: RedisCluster, prefix: str
) -> None:
    for key in _spread_keys(client):
        save(store, make_token(f"tok-{key[:6]}"), key)
        loaded = load(store, key)
        assert loaded is not None and loaded.access_token == f"tok-{key[:6]}"
        with store.lock(key, 1.0) as held:  # the release script runs on the key's master
            assert held
            assert client.get(_keys(prefix, key)[1]) is not None
        assert client.get(_keys(prefix, key)[1]) is None
        stored = client.get(_keys(prefix, key)[0])
        assert isinstance(stored, bytes) and f"tok-{key[:6]}".encode() not in stored


def test_lock_renewal_script_runs_on_the_cluster(
    store: RedisStore, cluster: RedisCluster3, prefix: str
) -> None:
    peer = RedisStore.from_url(cluster.url, cluster=True, prefix=prefix)
    try:
        with store.lock(KEY, 1.0) as held:  # lock_ttl 0.6 s, held for 1.5 s
            assert held
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                with peer.lock(KEY, 0.0) as stolen:
                    assert stolen is False
                time.sleep(0.05)
        with peer.lock(KEY, 0.0) as free:
            assert free
    finally:
        peer.close()


def test_a_given_cluster_client_works_too(cluster: RedisCluster3, prefix: str) -> None:
    given = RedisCluster.from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1)
    store = RedisStore(client=given, prefix=prefix)
    save(store, make_token("tok-given"))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-given"
    with store.lock(KEY, 1.0) as held:
        assert held
    store.close()
    assert given.ping()  # a given client is the caller's to close
    given.close()


def test_a_cluster_that_is_down_at_start_up_is_an_outage_not_a_crash() -> None:
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0", cluster=True, socket_timeout=0.2
    )
    started = time.monotonic()
    with pytest.raises(StoreError, match="redis read failed"):
        load(store)
    with pytest.raises(StoreError, match="not retrying"):
        load(store)  # backed off: no second connection attempt
    assert time.monotonic() - started < 3.0
    store.close()


def test_cluster_needs_a_url_not_a_client(cluster: RedisCluster3) -> None:
    from genesys_token import ConfigurationError

    given = redis.Redis(socket_timeout=1)
    with pytest.raises(ConfigurationError, match="cluster"):
        RedisStore(client=given, cluster=True)
    given.close()


_FLEET_WORKER = """
import json, os, sys
from genesys_token import TokenManager
from genesys_token.stores import RedisStore
url, prefix, token_url, api_url = sys.argv[1:5]
store = RedisStore.from_url(url, cluster=True, prefix=prefix)
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


def test_four_processes_on_a_cluster_make_one_token_request(
    cluster: RedisCluster3, prefix: str, emulator: GenesysEmulator
) -> None:
    env = dict(
        os.environ, TEST_CLIENT_ID=emulator.client_id, TEST_CLIENT_SECRET=emulator.client_secret
    )
    argv = [
        sys.executable, "-c", _FLEET_WORKER,
        cluster.url, prefix, emulator.token_url, emulator.api_base_url,
    ]  # fmt: skip
    workers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # released together, once all are ready
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=PROCESS_TIMEOUT)
            assert worker.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5.0)
    assert emulator.token_requests == 1
    assert len({r["fingerprint"] for r in results}) == 1
    assert sorted(r["source"] for r in results).count("network") == 1
