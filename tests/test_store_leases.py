"""The process-wide lease keeper: one thread renews every held FileStore and RedisStore lock."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import poll, read_child
from redis_server import redis_server_or_skip

from genesys_token import StoreError
from genesys_token.stores import FileStore, RedisStore
from genesys_token.stores import _flock as flock_module
from genesys_token.stores import _leases as leases
from genesys_token.stores import _redis_lock as redis_lock_module

SECRET_LOOKING = "s3cr3t-in-an-exception-message"


def keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == leases.THREAD_NAME and t.is_alive()]


def join_keepers(timeout: float = 2.0) -> None:
    for thread in keepers():
        thread.join(timeout)


@pytest.fixture(autouse=True)
def quick_idle_exit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The keeper ends 0.1 s after its last lease (1 s in production), and is gone before the
    next test: each test starts with no keeper."""
    join_keepers()
    assert keepers() == []
    monkeypatch.setattr(leases, "IDLE_EXIT", 0.1)
    yield
    join_keepers()


@pytest.fixture
def quick_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rules, faster: a beat every 0.05 s (files) or 0.1 s (Redis, lock_ttl 0.3),
    waiters give up on a file untouched for 0.4 s and take over a Redis value unchanged for
    0.4 s."""
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.05)
    monkeypatch.setattr(flock_module, "SILENT_AFTER", 0.4)
    monkeypatch.setattr(flock_module, "CONFIRM", 0.1)
    monkeypatch.setattr(redis_lock_module, "STALE_AFTER", 0.4)


class Counter:
    """A renewal that counts its calls and can be told to fail, raise or block."""

    def __init__(self) -> None:
        self.calls = 0
        self.result = True
        self.raises: BaseException | None = None
        self.entered = threading.Event()
        self.proceed: threading.Event | None = None

    def __call__(self) -> bool:
        self.calls += 1
        self.entered.set()
        if self.proceed is not None:
            assert self.proceed.wait(5.0)
        if self.raises is not None:
            raise self.raises
        return self.result


def hold(renew: Callable[[], bool], every: float = 0.02, lease: float = 30.0) -> leases.Lease:
    return leases.hold(renew, every, time.monotonic() + lease, "test lock")


def test_a_renewal_that_hangs_delays_no_lease_of_another_group() -> None:
    # Review of issue 20: a hung Redis (no socket timeout) once stopped every FileStore
    # heartbeat of the process, and a waiter elsewhere took over a live holder's lock.
    hung, files = Counter(), Counter()
    hung.proceed = threading.Event()
    group = leases.Group()  # a RedisStore's locks
    stuck = leases.hold(hung, 0.02, time.monotonic() + 30.0, "test lock", group)
    touched = leases.hold(files, 0.02, time.monotonic() + 30.0, "test lock", leases.FILE_LOCKS)
    try:
        assert hung.entered.wait(2.0)
        calls = files.calls
        assert poll(lambda: files.calls >= calls + 5, 2.0)  # renewed while the other hangs
    finally:
        touched.release()
        hung.proceed.set()
        stuck.release()


# -- many locks, one thread --------------------------------------------------------------


@pytest.mark.usefixtures("quick_locks")
def test_many_locks_held_at_once_share_one_keeper_and_are_all_renewed(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    file_keys = [f"file{i}" for i in range(5)]
    redis_keys = [f"redis{i}" for i in range(3)]
    holders = FileStore(tmp_path), RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.3)
    peers = FileStore(tmp_path), RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.3)
    everyone_in = threading.Barrier(len(file_keys) + len(redis_keys) + 1)
    done = threading.Event()
    errors: list[BaseException] = []

    def holder(store: Any, key: str) -> None:
        try:
            with store.lock(key, 2.0, lease=30.0) as held:
                assert held
                everyone_in.wait(5.0)
                assert done.wait(10.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
            everyone_in.abort()

    threads = [threading.Thread(target=holder, args=(holders[0], k)) for k in file_keys]
    threads += [threading.Thread(target=holder, args=(holders[1], k)) for k in redis_keys]
    for thread in threads:
        thread.start()
    try:
        everyone_in.wait(5.0)
        assert leases.held() == 8
        assert len(keepers()) == 2  # eight locks: one thread for the files, one for Redis
        # Eight waiters at once, each waiting 1.2 s: three times the silence after which a
        # holder that is not renewed is given up on (files) or taken over (Redis).
        results: dict[str, object] = {}

        def waiter(store: Any, key: str) -> None:
            try:
                with store.lock(key, 1.2) as got:
                    results[key] = got
            except StoreError as exc:
                results[key] = exc

        waiters = [threading.Thread(target=waiter, args=(peers[0], k)) for k in file_keys]
        waiters += [threading.Thread(target=waiter, args=(peers[1], k)) for k in redis_keys]
        for thread in waiters:
            thread.start()
        for thread in waiters:
            thread.join(10.0)
        assert results == dict.fromkeys(file_keys + redis_keys, False)  # none taken over
        assert len(keepers()) == 2
    finally:
        done.set()
        for thread in threads:
            thread.join(10.0)
        for store in (holders[1], peers[1]):
            store.close()
    assert errors == []
    assert leases.held() == 0


# -- the keeper's life ---------------------------------------------------------------------


def test_keeper_starts_with_the_first_lease_and_ends_after_the_idle_time(
    tmp_path: Path,
) -> None:
    assert keepers() == []
    store = FileStore(tmp_path)
    with store.lock("a", 1.0) as held:
        assert held
        [keeper] = keepers()
        assert keeper.name == "genesys-token-lease-keeper" and keeper.daemon
    with store.lock("b", 1.0) as held:  # within the idle time: the same thread
        assert keepers() == [keeper]
    released = time.monotonic()
    keeper.join(2.0)
    assert not keeper.is_alive()
    # IDLE_EXIT (0.1 s), not at once; "released" is read a moment after the release.
    assert time.monotonic() - released >= 0.05
    # The next lock starts a keeper again, which renews it.
    counter = Counter()
    lease = hold(counter)
    try:
        assert len(keepers()) == 1
        assert poll(lambda: counter.calls >= 2, 2.0)
    finally:
        lease.release()


def test_lease_is_renewed_every_interval_after_a_wait_and_dropped_at_its_end() -> None:
    counter = Counter()
    started = time.monotonic()
    lease = hold(counter, every=0.05, lease=0.3)
    assert counter.calls == 0  # the first renewal is one interval away
    assert poll(lambda: not lease.active, 2.0)
    assert time.monotonic() - started >= 0.29
    assert 3 <= counter.calls <= 6  # ~0.05 s apart, none past the end
    calls = counter.calls
    time.sleep(0.1)
    assert counter.calls == calls
    assert leases.held() == 0
    lease.release()  # harmless once dropped
    assert leases.held() == 0


def test_renew_that_reports_the_lock_lost_drops_its_lease_only() -> None:
    lost, kept = Counter(), Counter()
    lost.result = False
    lease_lost, lease_kept = hold(lost), hold(kept)
    try:
        assert poll(lambda: not lease_lost.active, 2.0)
        assert lost.calls == 1
        calls = kept.calls
        assert poll(lambda: kept.calls >= calls + 3, 2.0)
        assert lost.calls == 1  # never renewed again
        assert leases.held() == 1
    finally:
        lease_kept.release()
        lease_lost.release()
    assert leases.held() == 0


def test_a_slow_renewal_delays_another_lease_by_its_own_length_only() -> None:
    # One thread renews everything: a renewal that stalls (a Redis that does not answer,
    # bounded by its socket timeout) holds the others back while it runs. The next renewal
    # of a lease is due one interval after its last one *ended*, so the stalled lease does
    # not go again before the others, however late it is.
    slow_calls: list[float] = []
    fast_calls: list[float] = []

    def slow() -> bool:
        slow_calls.append(time.monotonic())
        time.sleep(0.1)
        return True

    def fast() -> bool:
        fast_calls.append(time.monotonic())
        return True

    lease_slow, lease_fast = hold(slow, every=0.02), hold(fast, every=0.02)
    try:
        assert poll(lambda: len(slow_calls) >= 6, 5.0)
    finally:
        lease_slow.release()
        lease_fast.release()
    gaps = [b - a for a, b in itertools.pairwise(fast_calls)]
    assert len(fast_calls) >= len(slow_calls) - 1  # one fast renewal after each slow one
    assert max(gaps) < 0.1 + 0.02 + 0.1  # the stall, one interval, scheduling slack


def test_quick_leases_are_renewed_before_each_known_stall() -> None:
    # Two leases whose renewals stall (0.35 s each: two locks on a Redis that does not
    # answer) and a quick one due every 0.4 s. Once the stalls are known, the quick lease is
    # renewed before each stall whenever it is half-way to its due time: at every stall's
    # start it was renewed less than 0.2 s before, not one or two stalls before.
    events: list[tuple[str, float]] = []

    def stalling(label: str) -> Callable[[], bool]:
        def renew() -> bool:
            events.append((label, time.monotonic()))
            time.sleep(0.35)
            return True

        return renew

    def quick() -> bool:
        events.append(("quick", time.monotonic()))
        return True

    held = [hold(stalling("s1"), every=0.02), hold(stalling("s2"), every=0.02)]
    assert poll(lambda: {label for label, _ in events} == {"s1", "s2"}, 5.0)  # known slow
    held.append(hold(quick, every=0.4))
    try:
        assert poll(lambda: sum(label != "quick" for label, _ in events) >= 7, 10.0)
    finally:
        for lease in held:
            lease.release()
    ages = []
    last_quick: float | None = None
    for label, at in list(events):
        if label == "quick":
            last_quick = at
        elif last_quick is not None:
            ages.append(at - last_quick)
    assert len(ages) >= 4
    assert max(ages) < 0.2 + 0.075, ages  # half its interval, not a stall (0.35)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_stalled_redis_delays_file_heartbeats_by_its_socket_timeout_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Redis that stops answering (SIGSTOP: connections are accepted, nothing is read):
    # each beat of its lock waits out the socket timeout (0.2 s here, 1 s from a URL by
    # default) on its first try and on its one retry; the file lock's heartbeat runs between
    # them, late by that much at most, never starved.
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.05)
    lock_file = tmp_path / "k.lock"
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url, lock_ttl=0.3, socket_timeout=0.2)
        pid = server._process.pid  # type: ignore[union-attr]
        with FileStore(tmp_path).lock("k", 1.0) as file_held, store.lock("r", 1.0) as held:
            assert file_held and held
            os.kill(pid, signal.SIGSTOP)
            try:
                changes = [time.monotonic()]
                mtime = lock_file.stat().st_mtime_ns
                end = changes[0] + 1.5
                while time.monotonic() < end:
                    now_mtime = lock_file.stat().st_mtime_ns
                    if now_mtime != mtime:
                        mtime = now_mtime
                        changes.append(time.monotonic())
                    time.sleep(0.005)
            finally:
                os.kill(pid, signal.SIGCONT)
        store.close()
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert len(gaps) >= 3
    assert max(gaps) < 2 * 0.2 + 0.05 + 0.25  # two tries' timeouts, a beat, slack


# -- release against a renewal under way ---------------------------------------------------


def test_release_waits_for_the_renewal_under_way_and_none_follows() -> None:
    counter = Counter()
    counter.proceed = threading.Event()
    lease = hold(counter, every=0.01)
    assert counter.entered.wait(5.0)  # the keeper is inside renew() now
    returned = threading.Event()

    def release() -> None:
        lease.release()
        returned.set()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        # The caller would close the descriptor (delete the key) as soon as this returns.
        assert not returned.wait(0.2)
    finally:
        counter.proceed.set()
        releaser.join(5.0)
    assert returned.is_set()
    calls = counter.calls
    time.sleep(0.1)  # five intervals
    assert counter.calls == calls == 1


def test_renewal_may_release_its_own_lease_without_waiting_for_itself() -> None:
    box: list[leases.Lease] = []
    other = Counter()

    def release_self() -> bool:
        box[0].release()
        return True

    box.append(hold(release_self, every=0.01))
    lease_other = hold(other, every=0.01)
    try:
        assert poll(lambda: not box[0].active, 2.0)
        calls = other.calls
        assert poll(lambda: other.calls >= calls + 3, 2.0)  # the keeper did not hang
    finally:
        lease_other.release()
    assert leases.held() == 0


def test_file_lock_is_not_touched_after_its_block_even_with_a_renewal_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real FileStore path: a touch blocked inside the keeper while the block ends. The
    # block's exit must wait for it, so the descriptor is closed only after the last touch.
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.01)
    inside, proceed = threading.Event(), threading.Event()
    touched: list[tuple[int, bool]] = []
    closed: list[int] = []
    real_touch = flock_module._touch

    def blocking_touch(fd: int) -> bool:
        if threading.current_thread().name == leases.THREAD_NAME:
            inside.set()
            proceed.wait(5.0)
        touched.append((fd, fd in closed))
        return real_touch(fd)

    monkeypatch.setattr(flock_module, "_touch", blocking_touch)
    store = FileStore(tmp_path)
    real_close = store._close_lock_file

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(store, "_close_lock_file", close)
    ended = threading.Event()

    def block() -> None:
        with store.lock("k", 1.0) as held:
            assert held
            assert inside.wait(5.0)
        ended.set()

    thread = threading.Thread(target=block)
    thread.start()
    try:
        assert inside.wait(5.0)
        assert not ended.wait(0.2)  # the block's exit waits for the touch under way
    finally:
        proceed.set()
        thread.join(5.0)
    assert ended.is_set()
    assert touched and not any(after_close for _, after_close in touched)


# -- a renewal that raises ------------------------------------------------------------------


def test_renew_that_raises_is_logged_and_kept_and_the_keeper_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    raising, other = Counter(), Counter()
    raising.raises = ValueError(SECRET_LOOKING)
    lease_raising, lease_other = hold(raising), hold(other)
    try:
        assert poll(lambda: raising.calls >= 3 and other.calls >= 3, 2.0)
        assert lease_raising.active  # kept: the next renewal may succeed
        assert leases.held() == 2
        assert len(keepers()) == 1
    finally:
        lease_raising.release()
        lease_other.release()
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not renew the test lock (ValueError)" in m for m in messages)
    assert not any(SECRET_LOOKING in m for m in messages)
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_redis_outage_under_a_held_lock_keeps_the_keeper_and_other_leases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.05)
    lock_file = tmp_path / "k.lock"
    with redis_server_or_skip() as server:
        store = RedisStore.from_url(server.url, lock_ttl=0.15, outage_backoff=0.05)
        with ExitStack() as stack:
            assert stack.enter_context(FileStore(tmp_path).lock("k", 1.0))
            with pytest.raises(StoreError), store.lock("r", 1.0) as held:
                assert held
                server.stop()
                mtime = lock_file.stat().st_mtime_ns
                assert poll(lambda: lock_file.stat().st_mtime_ns > mtime, 2.0)
                # 5 s: each beat on the stopped server fails at once, but a loaded machine
                # (CI, other tests) delayed the keeper's first failing beat past 2 s.
                assert poll(lambda: "could not renew the token store lock" in caplog.text, 5.0)
                assert leases.held() == 2
            mtime = lock_file.stat().st_mtime_ns
            assert poll(lambda: lock_file.stat().st_mtime_ns > mtime, 2.0)  # still touched
            assert len(keepers()) == 2  # the files' and this store's
        store.close()


# -- a thread that cannot start ------------------------------------------------------------


def test_keeper_that_cannot_start_leaves_the_lock_held_and_the_next_hold_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.05)
    refusals = [2]
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == leases.THREAD_NAME and refusals[0] > 0:
            refusals[0] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    store = FileStore(tmp_path)
    with ExitStack() as stack:
        for key in ("a", "b"):  # two holds: the thread is refused twice
            assert stack.enter_context(store.lock(key, 1.0)) is True  # held all the same
        assert keepers() == []
        assert leases.held() == 2
        mtimes = {k: (tmp_path / f"{k}.lock").stat().st_mtime_ns for k in ("a", "b")}
        time.sleep(0.15)  # three beats
        assert {k: (tmp_path / f"{k}.lock").stat().st_mtime_ns for k in "ab"} == mtimes
        assert stack.enter_context(store.lock("c", 1.0)) is True  # this one starts it
        assert len(keepers()) == 1
        for key in ("a", "b", "c"):  # every lock still held is renewed again
            path = tmp_path / f"{key}.lock"
            mtime = path.stat().st_mtime_ns
            assert poll(lambda p=path, m=mtime: p.stat().st_mtime_ns > m, 2.0), key
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # one for the refusals, one when it runs again
    assert "cannot start the store lock keeper thread" in warnings[0]
    assert "runs again" in warnings[1]


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_has_no_keeper_and_forgets_the_parents_leases() -> None:
    counter = Counter()
    lease = hold(counter)
    assert poll(lambda: counter.calls >= 1, 2.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            parent_calls = counter.calls
            report = [leases.held(), len(keepers())]
            lease.release()  # the parent's: harmless here, and never waited for
            report.append(leases.held())
            mine = Counter()
            child_lease = hold(mine)
            renewed = poll(lambda: mine.calls >= 3, 2.0)
            report += [len(keepers()), int(renewed), int(counter.calls == parent_calls)]
            child_lease.release()
            os.write(write_end, repr(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        report = read_child(pid, read_end, 10.0)
        # Child: no lease held, no keeper; a release of the parent's lease changes nothing;
        # its own lease gets a keeper of its own that renews it.
        assert report == b"[0, 0, 0, 1, 1, 1]"
        calls = counter.calls
        assert poll(lambda: counter.calls >= calls + 2, 2.0)  # the parent's goes on
        assert lease.active
    finally:
        lease.release()


def test_redis_block_exit_waits_for_a_beat_under_way(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A beat under way when the block ends: the release (a DEL) comes after it. (A beat
    # after the DEL would find the key gone and write nothing: the scripts compare owners.)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(redis_url, prefix=prefix, lock_ttl=0.06)  # a beat / 0.02 s
    raw = redis.Redis.from_url(redis_url, socket_timeout=2)
    name = f"{prefix}{{k}}:lock"
    inside, proceed = threading.Event(), threading.Event()
    real_beat = redis_lock_module.RedisLock.beat

    def beat(self: Any, *args: Any) -> bool:
        inside.set()
        proceed.wait(5.0)
        return real_beat(self, *args)

    monkeypatch.setattr(redis_lock_module.RedisLock, "beat", beat)
    ended = threading.Event()

    def block() -> None:
        with store.lock("k", 1.0, lease=30.0) as held:
            assert held
            assert inside.wait(5.0)
        ended.set()

    thread = threading.Thread(target=block)
    thread.start()
    try:
        assert inside.wait(5.0)
        assert not ended.wait(0.2)
    finally:
        proceed.set()
        thread.join(5.0)
    assert ended.is_set()
    assert raw.get(name) is None  # deleted after the last beat, not before it
    raw.close()
    store.close()
