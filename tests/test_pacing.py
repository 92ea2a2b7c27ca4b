"""The pacer of API calls per token: sliding windows from each answer, first come first
served, a bounded wait, 429 penalties, and exactly ``calls`` grants per window under races."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import pytest
from conftest import run_threads

from genesys_token import (
    ApiRateLimitedError,
    ConfigurationError,
    GenesysTokenError,
    RateLimitedError,
)
from genesys_token.core.clock import Clock
from genesys_token.core.pacing import Pacer, Slot

KEY = "3fa2c1d9e0b4"  # a token's fingerprint


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def pacer_on(
    clock: FakeClock,
    calls: int,
    seconds: float,
    wait: float = 30.0,
    wait_on: Callable[[threading.Condition, float], object] | None = None,
) -> Pacer:
    if wait_on is None:
        # Simulated time: a wait lets exactly the time asked pass.
        def wait_on(cond: threading.Condition, timeout: float) -> None:
            clock.t += timeout

    return Pacer(calls, seconds, wait, clock=Clock(monotonic=clock), wait_on=wait_on)


def take(pacer: Pacer, n: int) -> list[Slot]:
    slots = [pacer.try_acquire(KEY) for _ in range(n)]
    assert all(slots)
    return [s for s in slots if s is not None]


def test_grants_up_to_the_limit_then_no_room() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock, 3, 1.0)
    take(pacer, 3)
    assert pacer.try_acquire(KEY) is None
    assert pacer.try_acquire("another-token") is not None  # per token
    assert pacer.metrics()["calls_paced"] == 4


def test_a_burst_across_a_minute_boundary_is_paced() -> None:
    clock = FakeClock(59.0)
    pacer = pacer_on(clock, 3, 60.0)
    for slot in take(pacer, 3):  # the end of one minute
        slot.release()
    clock.t = 60.5  # the start of the next: a fixed-minute pacer would grant three more
    assert pacer.try_acquire(KEY) is None
    clock.t = 118.999
    assert pacer.try_acquire(KEY) is None
    clock.t = 119.0  # 60 s after the answers
    assert len(take(pacer, 3)) == 3
    assert pacer.try_acquire(KEY) is None


def test_a_slot_is_held_until_its_answer_then_for_a_window() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 1, 10.0)
    (slot,) = take(pacer, 1)
    clock.t = 100.0  # long past a window: the call may still be on its way
    assert pacer.try_acquire(KEY) is None
    slot.release()  # the answer arrives at 100: the service counted it at 100 at the latest
    clock.t = 109.9
    assert pacer.try_acquire(KEY) is None
    clock.t = 110.0
    assert pacer.try_acquire(KEY) is not None
    assert slot.release() and slot.done  # idempotent


def test_a_cancelled_slot_is_free_at_once() -> None:
    clock = FakeClock()
    pacer = pacer_on(clock, 1, 10.0)
    (slot,) = take(pacer, 1)
    slot.cancel()
    assert pacer.try_acquire(KEY) is not None
    assert pacer.in_use(KEY) == 1


def test_a_waiter_gets_the_slot_when_its_window_ends() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 1, 10.0)
    take(pacer, 1)[0].release()
    clock.t = 1.0
    slot = pacer.acquire(KEY)
    assert slot.granted_at == 10.0
    histogram = pacer.metrics()["wait_histogram"]
    assert histogram["sum"] == pytest.approx(9.0)
    assert histogram["count"] == 2  # the first call waited 0 s
    assert histogram["buckets"][0] == (0.0, 1)


def test_no_room_within_api_rate_wait_raises_and_grants_nothing() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 2, 1.0, wait=0.5)
    take(pacer, 2)  # held: their answers have not come
    with pytest.raises(ApiRateLimitedError) as caught:
        pacer.acquire(KEY)
    error = caught.value
    assert isinstance(error, RateLimitedError)
    assert isinstance(error, GenesysTokenError)
    assert clock.t == 0.5
    assert error.waited == 0.5
    assert error.limit == (2, 1.0)
    assert error.attempts == 0
    assert error.status is None
    assert error.retry_after is None  # held slots free when their answers come
    assert error.token_fingerprint == KEY
    for words in ("2 calls per 1 s (api_rate_limit)", "waited 0.500 s", "api_rate_wait 0.5"):
        assert words in str(error)
    assert "nothing was sent" in str(error)
    figures = pacer.metrics()
    assert (figures["calls_paced"], figures["rate_limited"], figures["waiting"]) == (2, 1, 0)


def test_the_error_says_when_a_window_frees_a_slot() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 1, 10.0, wait=2.0)
    take(pacer, 1)[0].release()
    with pytest.raises(ApiRateLimitedError) as caught:
        pacer.acquire(KEY)
    assert caught.value.retry_after == pytest.approx(8.0)


def test_a_shorter_caller_timeout_bounds_the_wait() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 1, 10.0, wait=30.0)
    take(pacer, 1)
    with pytest.raises(ApiRateLimitedError):
        pacer.acquire(KEY, timeout=0.0)
    assert clock.t == 0.0


def test_a_newcomer_never_overtakes_a_waiter() -> None:
    clock = FakeClock(0.0)
    looked = threading.Event()
    go = threading.Event()

    def wait_on(cond: threading.Condition, timeout: float) -> None:
        cond.release()
        try:
            looked.set()
            go.wait(5.0)
        finally:
            cond.acquire()

    pacer = pacer_on(clock, 1, 10.0, wait_on=wait_on)
    (held,) = take(pacer, 1)
    got: list[Slot] = []
    waiter = threading.Thread(target=lambda: got.append(pacer.acquire(KEY)))
    waiter.start()
    assert looked.wait(5.0)
    held.cancel()  # room now, while the waiter is still parked
    assert pacer.try_acquire(KEY) is None  # the newcomer queues behind it
    go.set()
    waiter.join(5.0)
    assert len(got) == 1


def test_waiters_are_served_first_come_first_served() -> None:
    """Only the head of the line takes a slot, whoever wakes first."""
    clock = FakeClock(0.0)
    permits: dict[str, threading.Semaphore] = {}
    looks: dict[str, int] = {}
    seen = threading.Condition()
    free = threading.Event()

    def wait_on(cond: threading.Condition, timeout: float) -> None:
        name = threading.current_thread().name
        if free.is_set():  # the order is decided: wait as the pacer would
            cond.wait(timeout)
            return
        with seen:
            looks[name] = looks.get(name, 0) + 1
            seen.notify_all()
        cond.release()
        try:
            permits[name].acquire(timeout=5.0)
        finally:
            cond.acquire()

    def parked(name: str, times: int) -> None:
        with seen:
            assert seen.wait_for(lambda: looks.get(name, 0) >= times, 5.0)

    pacer = pacer_on(clock, 1, 10.0, wait_on=wait_on)
    (held,) = take(pacer, 1)
    order: list[str] = []

    def call(name: str) -> None:
        slot = pacer.acquire(KEY)
        order.append(name)
        slot.cancel()

    threads = []
    for name in ("A", "B", "C"):
        permits[name] = threading.Semaphore(0)
        thread = threading.Thread(target=call, args=(name,), name=name)
        thread.start()
        parked(name, 1)  # in line before the next one comes
        threads.append(thread)
    held.cancel()
    permits["C"].release()  # the last in line wakes first: it must not take the slot
    parked("C", 2)
    permits["B"].release()
    parked("B", 2)
    assert order == []
    permits["A"].release()  # A takes it, gives it back and wakes the line
    threads[0].join(5.0)
    # From here B and C wait as they would (how often each wakes is not the test's business).
    free.set()
    for name in ("B", "C"):
        permits[name].release()
    for thread in threads:
        thread.join(5.0)
    assert order == ["A", "B", "C"]


def test_a_429_pauses_the_tokens_slots_for_every_caller() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 10, 1.0)
    pacer.penalize(KEY, 5.0)
    assert pacer.try_acquire(KEY) is None
    clock.t = 4.9
    assert pacer.try_acquire(KEY) is None
    slot = pacer.acquire(KEY)  # waits out the Retry-After
    assert slot.granted_at == 5.0
    assert pacer.try_acquire("other") is not None  # other tokens are not held back
    pacer.penalize(KEY, None)  # no Retry-After: a whole window
    assert pacer.try_acquire(KEY) is None
    clock.t = 6.0
    assert pacer.try_acquire(KEY) is not None
    figures = pacer.metrics()
    assert figures["throttled"] == 2
    assert figures["throttled_by_token"] == {KEY: 2}


def test_bookkeeping_is_bounded_and_idle_tokens_are_dropped() -> None:
    clock = FakeClock(0.0)
    pacer = pacer_on(clock, 5, 1.0)
    for _ in range(1000):
        pacer.acquire(KEY).release()
        clock.t += 0.01
        assert pacer.in_use(KEY) <= 5
    for n in range(50):
        pacer.acquire(f"token-{n}").release()
        clock.t += 2.0  # each one is out of its window when the next comes
    assert pacer.metrics()["tokens"] == 1
    held = pacer.acquire("held")
    clock.t += 100.0
    pacer.acquire("new").release()
    assert pacer.in_use("held") == 1  # a held slot is never dropped
    held.release()
    pacer.forget("held")
    assert pacer.in_use("held") == 0


def _race(pacer: Pacer, threads: int) -> int:
    """``threads`` threads ask for a slot at once; returns how many got one."""
    start = threading.Barrier(threads)
    granted: list[Slot] = []

    def ask() -> None:
        start.wait(5.0)
        slot = pacer.try_acquire(KEY)
        if slot is not None:
            granted.append(slot)

    run_threads(ask, threads, timeout=5.0)
    for slot in granted:
        slot.release()
    return len(granted)


def test_threads_racing_get_exactly_the_limit_per_window() -> None:
    """The clock is read between the room check and the count: a barrier there lets every
    thread pass the check together unless the lock keeps them apart."""
    threads, calls = 8, 3
    moment = FakeClock(0.0)
    inside = threading.Barrier(threads)

    def clock() -> float:
        with contextlib.suppress(threading.BrokenBarrierError):
            inside.wait(0.3)  # with the lock only one thread gets here at a time: it breaks
        return moment.t

    pacer = Pacer(calls, 1.0, clock=Clock(monotonic=clock))
    assert _race(pacer, threads) == calls
    moment.t += 1.0
    inside.reset()
    assert _race(pacer, threads) == calls


@pytest.mark.parametrize(
    ("calls", "seconds", "wait", "field"),
    [
        (0, 1.0, 30.0, "api_rate_limit"),
        (-1, 1.0, 30.0, "api_rate_limit"),
        (1.5, 1.0, 30.0, "api_rate_limit"),
        (True, 1.0, 30.0, "api_rate_limit"),
        (10, 0.0, 30.0, "api_rate_limit"),
        (10, -1.0, 30.0, "api_rate_limit"),
        (10, float("nan"), 30.0, "api_rate_limit"),
        (10, float("inf"), 30.0, "api_rate_limit"),
        (10, "1", 30.0, "api_rate_limit"),
        (10, 1.0, -0.1, "api_rate_wait"),
        (10, 1.0, float("inf"), "api_rate_wait"),
    ],
)
def test_bad_limits_are_refused_naming_the_setting(
    calls: object, seconds: object, wait: object, field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Pacer(calls, seconds, wait)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert field in str(caught.value)


def test_the_pacer_shows_no_token() -> None:
    pacer = Pacer(1, 1.0)
    slot = pacer.acquire(KEY)
    assert repr(pacer) == "Pacer(calls=1, seconds=1, wait=30)"
    assert "granted_at" in repr(slot)
