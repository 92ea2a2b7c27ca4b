"""SharedPacer over real stores: a fleet of processes keeps each token's API limit together.

Every fleet test runs real processes (tests/shared_pacing_worker.py) sending real HTTP calls
to the emulator, which enforces Genesys' per-token limit over a sliding window; a RedisStore
test uses a real redis-server, a FileStore test a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import poll
from redis_server import RedisServer, redis_server_or_skip

from genesys_token.core.clock import Clock
from genesys_token.core.shared_pacing import SharedPacer
from genesys_token.errors import ApiRateLimitedError, StoreError
from genesys_token.stores._file_slots import FileSlots
from genesys_token.stores._redis_slots import RedisSlots
from genesys_token.stores.file import FileStore
from genesys_token.stores.redis import RedisStore
from genesys_token.testing import GenesysEmulator

WORKER = Path(__file__).with_name("shared_pacing_worker.py")
ROOT = Path(__file__).resolve().parent.parent
LIMIT = (10, 1.0)
#: Commands Redis counts in INFO commandstats when our scripts run them (not round trips).
SCRIPT_COMMANDS = frozenset(
    {"zcount", "get", "set", "zremrangebyscore", "pexpire", "zadd", "zrem", "zrevrange",
     "zrevrangebyscore", "time"}
)  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server of this module's own (its command statistics are ours)."""
    with redis_server_or_skip() as started:
        yield started


def _token(emulator: GenesysEmulator) -> str:
    answer = requests.post(
        emulator.token_url,
        data={"grant_type": "client_credentials"},
        auth=(emulator.client_id, emulator.client_secret),
        timeout=5,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def _fingerprint(token: str) -> str:
    return "fp-" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _spawn(spec: dict[str, Any]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent)])}
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _round_trips(server: RedisServer) -> dict[str, int]:
    """Commands clients sent (not those our scripts ran), from INFO commandstats, with
    ``<name>!failed`` for those that failed (a NOSCRIPT)."""
    counts: dict[str, int] = {}
    for line in server.command("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_") :].partition(":")
            if name not in SCRIPT_COMMANDS:
                counts[name] = int(stats.split("calls=")[1].split(",")[0])
                counts[name + "!failed"] = int(stats.split("failed_calls=")[1].split(",")[0])
    return counts


def _store_spec(kind: str, server: RedisServer, tmp_path: Path, prefix: str) -> dict[str, Any]:
    if kind == "redis":
        return {"store": "redis", "url": server.url, "prefix": prefix}
    return {"store": "file", "path": str(tmp_path / "cache")}


def _backend(kind: str, server: RedisServer, tmp_path: Path, prefix: str, **options: Any) -> Any:
    if kind == "redis":
        return RedisStore(server.url, prefix=prefix, **options).slots()
    slots = FileStore(tmp_path / "cache").slots()
    assert slots is not None
    return slots


# -- the fleet against the emulator's limit ----------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_three_processes_share_one_tokens_limit_with_no_429(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    duration = 3.0
    with GenesysEmulator(api_rate_limit=LIMIT) as emulator:
        token = _token(emulator)
        server.command("CONFIG", "RESETSTAT")
        start_at = time.time() + 2.5
        spec = {
            **_store_spec(kind, server, tmp_path, prefix),
            "mode": "calls",
            "calls": LIMIT[0],
            "seconds": LIMIT[1],
            "token": token,
            "key": _fingerprint(token),
            "api": emulator.api_base_url,
            "threads": 2,
            "start_at": start_at,
            "end_at": start_at + duration,
        }
        workers = [_spawn(spec) for _ in range(3)]
        results = [json.loads(worker.communicate(timeout=30)[0]) for worker in workers]
        throttled = emulator.api_429s
    sent = sum(result["sent"] for result in results)
    statuses = [result["statuses"] for result in results]
    assert throttled == {}, statuses
    assert all(set(s) == {"200"} for s in statuses), statuses
    # Any window of 1 s holds at most 10 calls: 3 s from the first call hold 30 at most.
    assert sent >= 0.85 * LIMIT[0] / LIMIT[1] * duration, (sent, statuses)
    assert min(result["sent"] for result in results) > 0, statuses  # every process shared
    if kind == "redis":
        trips = _round_trips(server)
        taken = sent + sum(result["cancelled"] for result in results)
        # One script per slot taken (the releases ride on the next one); a process's first
        # call also meets a NOSCRIPT (EVALSHA failed, SCRIPT LOAD, EVALSHA).
        scripts = trips.get("evalsha", 0) - trips.get("evalsha!failed", 0)
        print(f"redis round trips: {trips} for {taken} slots taken, {sent} calls sent")
        assert scripts <= taken + 1, (trips, taken)


# -- a process killed while holding slots ----------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_slots_of_a_killed_process_come_back_after_hold_and_window_never_before(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    hold = 1.0
    key = "fp-killed"
    spec = {
        **_store_spec(kind, server, tmp_path, prefix),
        "mode": "hold",
        "calls": LIMIT[0],
        "seconds": LIMIT[1],
        "key": key,
        "hold": hold,
    }
    worker = _spawn(spec)
    try:
        assert worker.stdout is not None
        held_at = json.loads(worker.stdout.readline())["held"]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(5)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
    pacer = SharedPacer(*LIMIT, backend=_backend(kind, server, tmp_path, prefix), hold=hold)
    seen: list[float] = []

    def free() -> bool:
        slot = pacer.try_acquire(key)
        if slot is None:
            return False
        seen.append(time.time())
        slot.cancel()
        return True

    assert pacer.in_use(key) == LIMIT[0]
    assert poll(free, timeout=hold + LIMIT[1] + 2.0)
    # Granted before "held" was printed: at held_at at the latest, so a first free slot
    # no sooner than hold + window after that minus the time the 10 grants took.
    assert seen[0] - held_at >= hold + LIMIT[1] - 0.1, seen[0] - held_at
    assert seen[0] - held_at <= hold + LIMIT[1] + 1.0, seen[0] - held_at
    assert pacer.metrics()["shared"] is True


# -- waits, FIFO, reservations, penalties -----------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_no_room_within_the_wait_raises_after_it_and_nothing_was_granted(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    backend = _backend(kind, server, tmp_path, prefix)
    pacer = SharedPacer(*LIMIT, wait=0.3, backend=backend)
    held = [pacer.acquire("fp-wait") for _ in range(LIMIT[0])]
    started = time.monotonic()
    with pytest.raises(ApiRateLimitedError) as caught:
        pacer.acquire("fp-wait")
    assert 0.28 <= time.monotonic() - started < 1.0
    assert caught.value.token_fingerprint == "fp-wait"
    assert pacer.in_use("fp-wait") == LIMIT[0]
    for slot in held:
        slot.cancel()
    assert pacer.in_use("fp-wait") == 0
    assert pacer.metrics()["rate_limited"] == 1


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_a_full_window_reserves_the_slot_that_frees_first(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    slept: list[float] = []
    other = SharedPacer(*LIMIT, backend=_backend(kind, server, tmp_path, prefix))
    pacer = SharedPacer(
        *LIMIT, backend=_backend(kind, server, tmp_path, prefix), sleep=slept.append
    )
    for _ in range(LIMIT[0]):  # another process fills the window
        other.acquire("fp-res").release()
    slot = pacer.acquire("fp-res")
    # One question: the reservation starts when the first answer leaves its window.
    assert len(slept) == 1 and 0.9 <= slept[0] <= 1.0, slept
    slot.release()


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_a_429_told_to_one_process_pauses_the_others(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    first = SharedPacer(*LIMIT, backend=_backend(kind, server, tmp_path, prefix))
    other = SharedPacer(*LIMIT, backend=_backend(kind, server, tmp_path, prefix))
    first.penalize("fp-429", 0.5)
    assert other.try_acquire("fp-429") is None
    started = time.monotonic()
    other.acquire("fp-429").release()
    assert 0.45 <= time.monotonic() - started < 1.0
    assert first.metrics()["throttled_by_token"] == {"fp-429": 1}


def test_a_client_clock_step_changes_nothing_on_redis(
    server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    now = [1000.0]
    stepped = SharedPacer(
        *LIMIT,
        wait=0.0,
        backend=_backend("redis", server, tmp_path, prefix),
        clock=Clock(monotonic=lambda: now[0]),
    )
    for _ in range(LIMIT[0]):
        stepped.acquire("fp-step").release()
    for step in (3600.0, -7200.0):
        now[0] += step
        assert stepped.try_acquire("fp-step") is None
        with pytest.raises(ApiRateLimitedError):
            stepped.acquire("fp-step")
    assert stepped.in_use("fp-step") == LIMIT[0]


def test_releases_reach_redis_within_a_tenth_of_a_second_without_another_call(
    server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    store = RedisStore(server.url, prefix=prefix)
    pacer = SharedPacer(*LIMIT, backend=store.slots())
    pacer.acquire("fp-flush").release()
    client = store._client
    name = f"{prefix}{{fp-flush}}:api-slots"
    assert poll(lambda: client.zrange(name, 0, -1)[0].startswith(b"e"), timeout=0.5)
    score = client.zscore(name, client.zrange(name, 0, -1)[0])
    server_now = float(b".".join(map(lambda v: str(v).encode(), client.time())))
    assert score - server_now <= LIMIT[1]  # answered: one window, no longer the lease


def test_redis_keys_are_the_fingerprints_under_one_hash_tag_and_expire(
    server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    store = RedisStore(server.url, prefix=prefix)
    pacer = SharedPacer(*LIMIT, backend=store.slots())
    pacer.acquire("fp-keys").release()
    store.slots().flush()
    pacer.penalize("fp-keys", 5.0)
    client = store._client
    keys = sorted(k.decode() for k in client.keys(prefix + "*"))
    assert keys == [f"{prefix}{{fp-keys}}:api-penalty", f"{prefix}{{fp-keys}}:api-slots"]
    assert all(0 < client.pttl(key) <= (60 + 2) * 1000 for key in keys)


def test_redis_entries_that_are_not_ours_do_not_hold_the_tokens_slots(
    server: RedisServer, prefix: str
) -> None:
    # Slots scored years ahead and a penalty a year long (a broken or hostile writer) would
    # hold the token's slots for as long as they say: nothing of ours counts a day ahead.
    import redis

    client = redis.Redis.from_url(server.url)
    slots_key, penalty_key = (
        f"{prefix}{{fp-hostile}}:api-slots",
        f"{prefix}{{fp-hostile}}:api-penalty",
    )
    far = 4_000_000_000.0  # the year 2096, in Redis's TIME seconds
    client.zadd(slots_key, {f"hX{i}": far for i in range(LIMIT[0])})
    client.set(penalty_key, str(far))
    pacer = SharedPacer(*LIMIT, wait=0.3, backend=RedisStore(server.url, prefix=prefix).slots())
    pacer.acquire("fp-hostile").release()
    assert pacer.metrics()["shared"] is True
    assert client.zcount(slots_key, far - 1, "+inf") == 0
    assert client.get(penalty_key) is None
    client.close()


# -- outages -------------------------------------------------------------------------------


def test_redis_restart_warns_once_paces_locally_and_shares_again(
    caplog: pytest.LogCaptureFixture, prefix: str, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="genesys_token")
    with redis_server_or_skip() as own:
        store = RedisStore(own.url, prefix=prefix, outage_backoff=0.2)
        pacer = SharedPacer(*LIMIT, wait=0.5, backend=store.slots(), retry_backend=0.1)
        pacer.acquire("fp-down").release()
        own.kill()
        # This process's own count goes on: the call made before the outage still counts.
        slots = [pacer.acquire("fp-down") for _ in range(LIMIT[0] - 1)]
        with pytest.raises(ApiRateLimitedError):
            pacer.acquire("fp-down")
        assert pacer.metrics()["shared"] is False
        for slot in slots:
            slot.cancel()
        for _ in range(3):  # the store is asked again, and fails again: no new warning
            time.sleep(0.25)
            pacer.acquire("fp-down").cancel()
        own.start(own.port)
        assert poll(lambda: _paced_shared(pacer, "fp-down"), timeout=5.0)
        store.close()  # its pending slots end with it, not with the server
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "again" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "paced in this process alone" in warnings[0].getMessage()
    assert len(infos) == 1
    assert pacer.metrics()["store_outages"] == 1


def _paced_shared(pacer: SharedPacer, key: str) -> bool:
    try:
        pacer.acquire(key, timeout=0.05).release()
    except ApiRateLimitedError:
        return False
    return bool(pacer.metrics()["shared"])


# -- hostile slot files ----------------------------------------------------------------------


def _file_pacer(tmp_path: Path) -> tuple[SharedPacer, Path]:
    store = FileStore(tmp_path / "cache")
    slots = store.slots()
    assert isinstance(slots, FileSlots)
    (tmp_path / "cache").mkdir(mode=0o700, exist_ok=True)
    return SharedPacer(*LIMIT, wait=0.0, backend=slots), tmp_path / "cache" / "fp-file.slots"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": 1}', b"[1, 2]", b"[" * 200_000, None],
    ids=["not-json", "no-slots", "not-an-object", "nested-too-deep", "oversized"],
)
def test_garbage_in_a_slot_file_warns_and_takes_a_whole_window(
    content: bytes | None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pacer, path = _file_pacer(tmp_path)
    if content is None:  # a file of ours, padded past the size cap with valid JSON space
        pacer.acquire("fp-file").cancel()
        content = path.read_bytes() + b" " * (1024 * 1024)
    caplog.clear()
    path.write_bytes(content)
    path.chmod(0o600)
    assert pacer.try_acquire("fp-file") is None
    assert pacer.metrics()["shared"] is True  # no outage: garbage is read conservatively
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0], warnings
    assert "whole window" in warnings[0]
    assert json.loads(path.read_bytes())["format"] == 1  # rewritten clean
    assert poll(lambda: _granted(pacer, "fp-file"), timeout=2.0)


def test_a_slot_time_far_ahead_is_garbage_not_a_slot_counted_for_ever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pacer, path = _file_pacer(tmp_path)
    pacer.acquire("fp-file").release()  # a valid file of ours
    data = json.loads(path.read_bytes())
    data["slots"] = {"eplanted": time.monotonic() + 10 * 86400.0}
    path.write_text(json.dumps(data))
    assert pacer.try_acquire("fp-file") is None
    assert any("no process of ours" in r.getMessage() for r in caplog.records)
    assert poll(lambda: _granted(pacer, "fp-file"), timeout=2.0)


def test_a_slot_file_written_in_another_time_namespace_takes_a_whole_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Same boot, another time namespace (unshare --time, a restored container): its
    # monotonic clock runs 1000 s behind ours, so its fresh slots would read as long expired.
    from genesys_token.stores import _file_slots

    monkeypatch.setattr(_file_slots, "_time_namespace", lambda: "4026531999")
    other = FileStore(tmp_path / "cache").slots()
    monkeypatch.undo()
    ours = FileStore(tmp_path / "cache").slots()
    assert other is not None and ours is not None
    options: dict[str, Any] = {"calls": 2, "window": 30.0, "hold": 5.0, "max_wait": 0.0}
    for name in ("a", "b"):
        assert other.acquire("fp-ns", name, **options).granted
        other.release("fp-ns", name, window=30.0)
    path = tmp_path / "cache" / "fp-ns.slots"
    data = json.loads(path.read_bytes())
    data["slots"] = {name: until - 1000.0 for name, until in data["slots"].items()}
    path.write_text(json.dumps(data))
    caplog.clear()
    assert not ours.acquire("fp-ns", "c", **options).granted  # the whole window is taken
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "time namespace" in warnings[0], warnings
    assert not ours.acquire("fp-ns", "d", **options).granted  # rewritten on our clock


def _granted(pacer: SharedPacer, key: str) -> bool:
    slot = pacer.try_acquire(key)
    if slot is None:
        return False
    slot.cancel()
    return True


@pytest.mark.parametrize("planted", ["fifo", "symlink", "other-owner", "group-writable"])
def test_a_planted_slot_file_is_refused_and_pacing_goes_on_locally(
    planted: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pacer, path = _file_pacer(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("{}")
    plant: dict[str, Callable[[], None]] = {
        "fifo": lambda: os.mkfifo(path, 0o600),
        "symlink": lambda: path.symlink_to(target),
        "other-owner": lambda: (path.write_text("{}"), os.chown(path, 12345, 12345)),
        "group-writable": lambda: (path.write_text("{}"), path.chmod(0o660)),
    }  # type: ignore[dict-item]
    plant[planted]()
    if planted == "other-owner" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    done = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: (result.append(pacer.acquire("fp-file")), done.set()))
    thread.start()
    assert done.wait(3.0), "a planted slot file blocked the pacer"
    thread.join()
    result[0].release()
    assert pacer.metrics()["shared"] is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and "refused" in w for w in warnings), warnings
    assert any("paced in this process alone" in w for w in warnings), warnings
    assert target.read_text() == "{}"  # nothing written through the link


def test_memory_store_has_no_slots_and_file_store_off_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genesys_token.stores import MemoryStore

    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", "off")
    assert not hasattr(MemoryStore(), "slots")
    assert FileStore().slots() is None


def test_redis_slots_repr_and_backend_types(server: RedisServer, prefix: str) -> None:
    slots = RedisStore(server.url, prefix=prefix).slots()
    assert isinstance(slots, RedisSlots)
    assert "prefix" in repr(slots)
    pacer = SharedPacer(*LIMIT, backend=slots)
    assert "SharedPacer(calls=10" in repr(pacer)


def test_pacing_runs_on_a_redis_cluster_for_keys_on_every_master(prefix: str) -> None:
    from redis.cluster import RedisCluster
    from redis_server import RedisCluster3

    with RedisCluster3() as cluster:
        store = RedisStore.from_url(cluster.url, cluster=True, prefix=prefix)
        pacer = SharedPacer(2, 1.0, wait=0.0, backend=store.slots())
        look = RedisCluster.from_url(cluster.url, socket_timeout=2)
        keys = [f"fp-{n}" for n in range(12)]
        assert len({look.get_node_from_key(f"x{{{k}}}").name for k in keys}) == 3
        for key in keys:
            pacer.acquire(key).release()
            pacer.penalize(key, 0.5)  # the penalty key shares the slots key's hash tag
            assert pacer.try_acquire(key) is None
            assert pacer.in_use(key) == 1
        assert pacer.metrics()["shared"] is True
        look.close()
        store.close()


def test_metrics_count_grants_waits_and_the_histogram(
    server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    pacer = SharedPacer(2, 0.2, backend=_backend("redis", server, tmp_path, prefix))
    for _ in range(4):
        pacer.acquire("fp-metrics").release()
    figures = pacer.metrics()
    assert figures["calls_paced"] == 4
    # The third waited for the first one's window (in this process's line, and maybe the
    # shared one: Redis stamps a release up to 0.1 s late); the fourth, microseconds more.
    assert 1 <= figures["calls_waited"] <= 4
    count = figures["wait_histogram"]["count"]
    assert 4 <= count <= 6
    assert 0.15 <= figures["wait_histogram"]["sum"] <= 1.0
    assert figures["wait_histogram"]["buckets"][-1] == (float("inf"), count)
    assert figures["shared"] is True and figures["store_outages"] == 0


class CountingBackend:
    """A real backend, with its questions counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked = 0

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        return self.inner.acquire(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_slots_in_flight_are_not_polled_before_a_window_from_their_start(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    backend = CountingBackend(_backend(kind, server, tmp_path, prefix))
    other = SharedPacer(*LIMIT, backend=_backend(kind, server, tmp_path, prefix))
    pacer = SharedPacer(*LIMIT, wait=0.5, backend=backend)  # type: ignore[arg-type]
    held = [other.acquire("fp-flight") for _ in range(LIMIT[0])]  # another's calls in flight
    backend.asked = 0
    with pytest.raises(ApiRateLimitedError):
        pacer.acquire("fp-flight")
    # Room comes no sooner than a window after those calls started: one question only.
    assert backend.asked == 1
    for slot in held:
        slot.cancel()


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_a_waiter_behind_calls_in_flight_asks_again_a_window_after_they_started(
    kind: str, server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    backend = CountingBackend(_backend(kind, server, tmp_path, prefix))
    pacer = SharedPacer(*LIMIT, wait=3.0, backend=backend)  # type: ignore[arg-type]
    held = [pacer.acquire("fp-behind") for _ in range(LIMIT[0])]
    answered = threading.Timer(0.1, lambda: [slot.release() for slot in held])
    backend.asked = 0
    started = time.monotonic()
    answered.start()
    pacer.acquire("fp-behind").release()
    took = time.monotonic() - started
    answered.join()
    # Answered at ~0.1 s: room at ~1.1 s. The waiter asks at ~1.0 s (a window after the
    # calls started), learns the moment, and takes it: a few questions, not one per slice.
    assert 1.05 <= took <= 1.6, took
    assert backend.asked <= 4, backend.asked


def test_a_forked_child_paces_with_the_fleet_and_leaves_the_parents_slots_alone(
    server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    from conftest import in_child

    store = RedisStore(server.url, prefix=prefix)
    pacer = SharedPacer(2, 5.0, wait=0.0, backend=store.slots())
    held = pacer.acquire("fp-fork")  # the parent's call in flight, as the child is forked

    def child() -> dict[str, Any]:
        pacer.after_fork()
        mine = pacer.acquire("fp-fork")  # the second slot of two
        mine.release()
        store.slots().flush()
        try:
            pacer.acquire("fp-fork")
        except ApiRateLimitedError:
            return {"in_use": pacer.in_use("fp-fork"), "full": True}
        return {"full": False}

    assert in_child(child) == {"in_use": 2, "full": True}
    assert pacer.in_use("fp-fork") == 2  # the parent's held slot still counts
    held.release()


def test_a_slot_file_write_that_fails_keeps_the_slots_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that fills up mid-write (or a crash between two syscalls) must not leave an
    # empty slot file: that reads as "no slot taken" and lets a whole window through again.
    slots = FileStore(tmp_path / "cache").slots()
    assert slots is not None
    options: dict[str, Any] = {"calls": 2, "window": 30.0, "hold": 5.0, "max_wait": 0.0}
    for name in ("a", "b"):
        assert slots.acquire("fp-disk", name, **options).granted
        slots.release("fp-disk", name, window=30.0)

    def full_disk(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(StoreError):
        slots.acquire("fp-disk", "c", **options)
    monkeypatch.undo()
    assert not slots.acquire("fp-disk", "d", **options).granted  # both still counted


def test_a_redis_restarted_empty_lets_a_process_send_no_more_than_its_own_limit(
    prefix: str,
) -> None:
    # Redis keeps the slots in memory: restarted, it answers again, with none of them. This
    # process's own count (every shared slot takes one of it first) still holds its calls.
    with redis_server_or_skip() as own:
        store = RedisStore(own.url, prefix=prefix)
        pacer = SharedPacer(10, 30.0, wait=0.3, backend=store.slots())
        for _ in range(10):
            pacer.acquire("fp-restart").release()
        own.kill()
        own.start(own.port)
        with pytest.raises(ApiRateLimitedError):
            pacer.acquire("fp-restart")
        assert pacer.metrics()["calls_paced"] == 10
        store.close()
