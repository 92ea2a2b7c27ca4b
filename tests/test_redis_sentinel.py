"""RedisStore behind Sentinel: a real master, replica and sentinel, and a failover under load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.sentinel import Sentinel
from redis_server import SentinelGroup, wait_for
from store_helpers import KEY, load, make_token, save

from genesys_token.stores import RedisStore
from genesys_token.testing import GenesysEmulator

PROCESS_TIMEOUT = 60.0


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A fresh group per test: a failover changes who is master."""
    with SentinelGroup() as started:
        yield started


def _master_client(group: SentinelGroup) -> object:
    sentinel = Sentinel([group.sentinel_address], socket_timeout=1.0)
    return sentinel.master_for(group.MASTER_NAME, socket_timeout=1.0)


def test_store_works_through_a_sentinel_master(group: SentinelGroup) -> None:
    client = _master_client(group)
    store = RedisStore(client=client, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    save(store, make_token("tok-sentinel"))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-sentinel"
    with store.lock(KEY, 1.0) as held:
        assert held
    store.close()
    client.close()  # type: ignore[attr-defined]


_WORKER = """
import json, os, sys, time
from redis.sentinel import Sentinel
from genesys_token import TokenManager
from genesys_token.stores import RedisStore
host, port, name, prefix, token_url, api_url, seconds = sys.argv[1:8]
client = Sentinel([(host, int(port))], socket_timeout=1.0).master_for(name, socket_timeout=1.0)
store = RedisStore(client=client, prefix=prefix, outage_backoff=0.5, lock_ttl=2.0)
manager = TokenManager(
    os.environ["TEST_CLIENT_ID"], os.environ["TEST_CLIENT_SECRET"],
    token_url=token_url, api_base_url=api_url, store=store,
)
print("ready", flush=True)
sys.stdin.readline()
calls = failures = 0
errors = []
tokens = set()
deadline = time.monotonic() + float(seconds)
while time.monotonic() < deadline:
    calls += 1
    try:
        tokens.add(manager.get_token())
    except Exception as exc:
        failures += 1
        errors.append(type(exc).__name__)
    time.sleep(0.01)
manager.close()
client.close()
print(json.dumps({"calls": calls, "failures": failures, "errors": errors[:5],
                  "tokens": len(tokens), "store_errors": manager.metrics()["store_errors"]}))
"""


@pytest.mark.genesys_emulator(token_ttl=2)
def test_failover_under_load_fails_no_call(group: SentinelGroup, emulator: GenesysEmulator) -> None:
    env = dict(
        os.environ, TEST_CLIENT_ID=emulator.client_id, TEST_CLIENT_SECRET=emulator.client_secret
    )
    host, port = group.sentinel_address
    argv = [
        sys.executable, "-c", _WORKER,
        host, str(port), group.MASTER_NAME, f"test-{uuid.uuid4().hex[:8]}:",
        emulator.token_url, emulator.api_base_url, "8",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        time.sleep(2.0)  # a token or so into the run: Redis is in use
        old_master = group.master_port()
        group.failover()
        wait_for(lambda: group.master_port() != old_master, 20.0, "the failover")
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
    print("sentinel failover:", results, "token requests:", emulator.token_requests)
    assert all(r["failures"] == 0 for r in results), results
    assert all(r["calls"] > 100 for r in results)
    assert group.master_port() == group.replica.port  # the replica took over
    # 8 s of 2 s tokens: about 6 lifetimes; the failover may cost a few extra requests, but
    # never one per call.
    assert emulator.token_requests <= 10
