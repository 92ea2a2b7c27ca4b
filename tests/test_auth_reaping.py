"""GenesysAuth without a reaper thread: the counts of calls that raised end when they are read,
on the reading thread; and the origin of each call, remembered by the URL's head."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from conftest import MakeManager, MakeSession, in_background, in_child, poll

from genesys_token.http.origins import NO_ORIGIN, ORIGIN_CACHE_SIZE, OriginCache, origin_of
from genesys_token.integrations import requests_auth as auth_module
from genesys_token.observability.events import TOKEN_DRAIN_COMPLETE, TOKEN_ROTATION_STARTED
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"


def _reaper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "reaper" in t.name.lower()]


def _refused(session: requests.Session, closed_port: int) -> requests.ConnectionError:
    """A call through ``Session.request`` that is refused; its exception, to be kept."""
    with pytest.raises(requests.ConnectionError) as caught:
        session.get(f"http://127.0.0.1:{closed_port}{ORG_PATH}", timeout=5)
    return caught.value


def _refused_apart_and_collected(session: requests.Session, closed_port: int) -> None:
    """A request prepared apart, refused, its exception dropped and collected."""
    url = f"http://127.0.0.1:{closed_port}{ORG_PATH}"
    with contextlib.suppress(requests.ConnectionError):
        session.send(session.prepare_request(requests.Request("GET", url)), timeout=5)
    gc.collect()


# -- reaped when read ---------------------------------------------------------------------


def test_a_refused_call_whose_exception_is_kept_reads_zero_with_no_reaper_thread(
    make_manager: MakeManager, make_session: MakeSession, closed_port: int
):
    manager = make_manager()
    session = make_session(manager)
    kept = _refused(session, closed_port)
    assert poll(lambda: manager.in_flight_count == 0, 1.0), manager.in_flight_count
    assert manager.metrics()["in_flight"] == 0
    assert _reaper_threads() == []
    assert kept.request is not None  # still held: the frame told, not the collector


def test_a_rotation_sees_a_call_that_raises_during_its_drain_end_within_a_check(
    emulator: GenesysEmulator, make_manager: MakeManager, make_session: MakeSession
):
    # The call is in flight when the rotation starts, and times out while the rotation
    # drains; its future keeps the exception. Only a reap during the drain ends its use.
    manager = make_manager()
    old = manager.get_token()
    session = make_session(manager)
    emulator.inject(Fault(delay=3.0, passthrough=True), path=ORG_PATH)
    raised_at: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(session.get, emulator.api_base_url + ORG_PATH, timeout=(3, 0.6))
        future.add_done_callback(lambda _: raised_at.append(time.monotonic()))
        assert poll(lambda: emulator.api_requests == 1)
        assert manager.in_flight_count == 1
        # In a thread: a reap under the gate's lock would hang the rotation for good.
        rotation, outcome = in_background(lambda: manager.rotate(drain_timeout=5, strict=True))
        rotation.join(3)
        done_at = time.monotonic()
        assert not rotation.is_alive(), "the rotation is still draining"
        assert isinstance(future.exception(), requests.ReadTimeout)
    assert not isinstance(outcome[0], BaseException), outcome[0]
    assert outcome[0].access_token != old
    took = done_at - raised_at[0]
    # One drain slice (CALL_CHECK_SECONDS) after the raise, and then some for a slow runner.
    assert took < auth_module.CALL_CHECK_SECONDS + 0.5, f"drained {took:.2f}s after the raise"
    assert manager.in_flight_count == 0
    assert _reaper_threads() == []


def test_a_call_that_raised_while_the_new_token_was_fetched_is_not_reported_in_flight(
    emulator: GenesysEmulator, make_manager: MakeManager, make_session: MakeSession
):
    # The call raises after the rotation counted it, before it retires the old token (the
    # rotation's first event holds it there until then): the drain reports no use of it.
    manager = make_manager()
    manager.get_token()
    session = make_session(manager)
    emulator.inject(Fault(delay=3.0, passthrough=True), path=ORG_PATH)
    drained: list[dict[str, Any]] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(session.get, emulator.api_base_url + ORG_PATH, timeout=(3, 0.3))
        manager.on(TOKEN_ROTATION_STARTED, lambda _: future.exception(5))
        manager.on(TOKEN_DRAIN_COMPLETE, lambda record: drained.append(record["data"]))
        assert poll(lambda: emulator.api_requests == 1)
        manager.rotate(drain_timeout=5, strict=True)
        assert isinstance(future.exception(), requests.ReadTimeout)
    assert [(d["in_flight"], d["drained"]) for d in drained] == [(0, 0)]


class _ProbedLock:
    """The gate's lock, telling when a thread starts to wait for it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.waited_for = threading.Event()

    def __enter__(self) -> _ProbedLock:
        self.waited_for.set()
        self.inner.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.inner.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.waited_for.set()
        return bool(self.inner.acquire(blocking, timeout))

    def release(self) -> None:
        self.inner.release()


@pytest.mark.parametrize("ended_by", ["frame", "collector"])
def test_a_reader_does_not_wait_for_another_threads_reap(
    make_manager: MakeManager, make_session: MakeSession, closed_port: int, ended_by: str
):
    # One reader reaps, and ending the use it found waits for the gate's lock (another
    # thread holds it). A second reader, of another manager's count, must not wait too:
    # neither for the first reap to finish, nor on the same lock to end the same use.
    manager = make_manager()
    other = make_manager()
    session = make_session(manager)
    kept: list[BaseException] = []
    if ended_by == "frame":
        kept.append(_refused(session, closed_port))
    else:
        _refused_apart_and_collected(session, closed_port)
    gate = manager._gate
    inner = gate.lock
    probe = _ProbedLock(inner)
    gate.lock = probe  # type: ignore[assignment]
    inner.acquire()  # the lock's holder (this thread) lets go only at the end
    try:
        first, first_read = in_background(lambda: manager.in_flight_count)
        assert probe.waited_for.wait(2), "the first reader never came to end the use"
        second, second_read = in_background(lambda: other.in_flight_count)
        second.join(1)
        assert not second.is_alive(), "the second reader waited for the first one's reap"
        assert second_read == [0]
    finally:
        inner.release()
    first.join(2)
    second.join(2)
    assert not first.is_alive()
    # The first reader normally reaps and reads 0; it reads 1 when a thread left by another
    # test was reaping at that moment (a reader never waits for another's reap, by design:
    # seen once under xdist). Either way the use ends.
    assert first_read in ([0], [1])
    assert poll(lambda: manager.in_flight_count == 0, 2.0), manager.in_flight_count
    assert len(kept) == (ended_by == "frame")


def test_unread_raised_calls_of_ended_threads_do_not_pile_up(
    make_manager: MakeManager,
    make_session: MakeSession,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
):
    # Nobody reads the count; each thread makes one call that is refused, keeps nothing and
    # ends (a thread per request, say): no next call of that thread ends the watch. New
    # calls reap once the watched ones doubled, so they stay few, frames and all.
    monkeypatch.setattr(auth_module, "_REAP_AT_LEAST", 8)
    monkeypatch.setattr(auth_module._reaper, "_reap_at", 8)
    manager = make_manager()
    session = make_session(manager)
    watched: list[int] = []
    for _ in range(40):
        worker = threading.Thread(target=lambda: _refused(session, closed_port))
        worker.start()
        worker.join(10)
        watched.append(auth_module._reaper.watched)
    assert max(watched) <= 8, watched
    assert manager.in_flight_count == 0
    assert auth_module._reaper.watched == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reaps_though_the_parent_was_reaping_at_the_fork(
    make_manager: MakeManager, make_session: MakeSession, closed_port: int
):
    manager = make_manager()
    session = make_session(manager)

    def child() -> dict[str, Any]:
        kept = _refused(session, closed_port)
        ended = poll(lambda: manager.in_flight_count == 0, 1.0)
        return {"ended": ended, "kept": kept.request is not None}

    # As if a parent thread were in the middle of a reap when another thread forks: the
    # child's copy of that lock stays held, and the child needs a reaper of its own.
    with auth_module._reaper._reaping:
        assert in_child(child) == {"ended": True, "kept": True}
    assert manager.in_flight_count == 0


# -- the origin of each call, remembered ----------------------------------------------------

TRICKY_URLS = [
    "https://gateway.example.com/api/v2/x",
    "https://gateway.example.com@evil.test/",
    "https://gateway.example.com:443@evil.test:8443/x",
    "https://user:pw@gateway.example.com/x",
    "https://a:b:c@host/",
    "https://host\\@evil.test/",
    "HTTPS://GATEWAY.EXAMPLE.COM/b?c=1",
    "HtTp://Host.Example.COM:8080",
    "https://gateway.example.com:443/a",
    "https://gateway.example.com:0443/a",
    "http://gateway.example.com:80",
    "https://gateway.example.com:/x",
    "https://gateway.example.com:8443/a",
    "https://gateway.example.com:99999/",
    "https://gateway.example.com:abc/",
    "https://gateway.example.com.evil.test/a",
    "https://evil.test/?https://gateway.example.com",
    "https://evil.test?https://gateway.example.com/x",
    "https://evil.test#https://gateway.example.com/x",
    "https://evil.test?x=@gateway.example.com",
    "https://host?page=1",
    "https://host#frag",
    "https://host",
    "https://host.:443/",
    "http://[::1]:8080/x",
    "http://[::1]/",
    "http://[fe80::1%25eth0]:8080/",
    "http://[::1/",
    "http://::1]/",
    "http://[v1.x]/",
    "https://xn--bcher-kva.example/",
    "https://bücher.example/",
    "https://evil\uff03.test/",
    "https:///path",
    "https://",
    "https://?x",
    "http://:8080/",
    " https://gateway.example.com/x",
    "\x00https://gateway.example.com/x",
    "\thttps://gateway.example.com/",
    "https://gate\tway.example.com/x",
    "https://gateway.example.com\n.evil.test/x",
    "https:\t//gateway.example.com/x",
    "https://gateway.example.com /x",
    "https:/gateway.example.com/x",
    "https:gateway.example.com/x",
    "gateway.example.com/path",
    "//gateway.example.com/path",
    "/redirect?to=https://gateway.example.com/x",
    "x?y://host/",
    "http?://host/",
    "http/x://host/",
    "a:b://host/",
    "ftp://gateway.example.com/",
    "mailto:someone@gateway.example.com",
    "",
]


def test_the_remembered_origin_is_origin_of_for_every_url():
    for order in (TRICKY_URLS, TRICKY_URLS[::-1]):
        cache = OriginCache()
        for url in [*order, *order]:  # the second time from memory
            assert cache(url) == origin_of(url), url
    cache = OriginCache()
    for raw in [b"https://gateway.example.com/x", b"https://\xff/", None]:
        assert cache(raw) == origin_of(raw)


def test_the_remembered_origins_are_bounded():
    cache = OriginCache()
    for n in range(ORIGIN_CACHE_SIZE * 3):
        url = f"https://host{n}.example.com/x"
        assert cache(url) == ("https", f"host{n}.example.com", 443)
        assert cache(url) == ("https", f"host{n}.example.com", 443)
    assert len(cache._known) == ORIGIN_CACHE_SIZE
    # Queries and fragments right after the host share the host's entry.
    fresh = OriginCache()
    for n in range(10):
        assert fresh(f"https://host?page={n}") == fresh(f"https://host#part{n}") != NO_ORIGIN
    assert len(fresh._known) == 1


def test_a_count_read_inside_the_collector_under_the_gate_lock_does_not_deadlock(
    make_manager: MakeManager, make_session: MakeSession, closed_port: int
) -> None:
    # Review of issue 20: a gc callback (a metrics exporter, a __del__) that reads the count
    # while its thread holds the gate's lock (a collection at any allocation there) reaped,
    # and ending the use took that lock again: the thread waited for itself for good.
    manager = make_manager(background_refresh=False)
    session = make_session(manager)
    kept = in_background(lambda: _refused(session, closed_port))[1]
    assert poll(lambda: bool(kept), 5.0)
    seen: list[int] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(manager.in_flight_count)

    def collect_under_the_lock() -> None:
        with manager._gate.lock:
            gc.collect(0)  # what any allocation under the lock may trigger

    gc.callbacks.append(on_gc)
    try:
        thread, _ = in_background(collect_under_the_lock)
        thread.join(5.0)
        assert not thread.is_alive(), "the thread holding the gate lock waited for itself"
    finally:
        gc.callbacks.remove(on_gc)
    assert seen and seen[-1] == 1  # left for the next reading, which ends it
    assert manager.in_flight_count == 0
