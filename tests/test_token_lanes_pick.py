"""tokens=N, which lane serves a caller: a turn whose lane has no usable token is served by
another lane's (its own is fetched in the background; a caller blocks only when no lane holds
a usable token), and a paced caller with no room now waits on the token that has room soonest
(a token a 429 holds waits last), in one process, across processes (FileStore, RedisStore:
still one round trip per call) and on an event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeClock, MakeManager, in_background, poll
from lane_helpers import fetch_every_token, given_up_on
from redis_server import redis_server_or_skip

from genesys_token import GenesysAuth, TokenManager
from genesys_token.core.pacing import Pacer
from genesys_token.errors import ApiRateLimitedError, GenesysTokenError
from genesys_token.integrations.httpx import async_api_client
from genesys_token.manager import adapter_port
from genesys_token.stores import FileStore, RedisStore
from genesys_token.stores.base import TokenStore
from genesys_token.testing import GenesysEmulator

ORG = "/api/v2/organizations/me"

#: 5 calls per 0.2 s per token; a waiter gives up after 1 s (a 429 of 20 s outlasts it).
LIMIT = (5, 0.2)
WAIT = 1.0
PAUSE = 20


# -- D2: a turn without a token is served by another lane's ----------------------------------


def test_a_lane_that_cannot_fetch_does_not_fail_callers_while_others_hold_tokens(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=3, retry_deadline=2.0, max_retries=1)
    first, second, _ = manager._lanes.all
    usable = {first.refresher.slow(None).access_token, second.refresher.slow(None).access_token}
    emulator.inject(status=503, times=None)  # the login host is down from now on
    got = [manager.get_token(timeout=3) for _ in range(30)]  # lane 2's turn every third
    assert set(got) == usable
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    statuses = [session.get(emulator.api_base_url + ORG, timeout=5).status_code for _ in range(30)]
    assert statuses == [200] * 30
    assert manager.metrics()["tokens_in_use"] == 2
    assert emulator.token_requests <= 4  # lane 2's background tries, within its backoff


def test_a_slow_login_host_blocks_the_first_call_only(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=5)
    emulator.inject(status=200, passthrough=True, delay=0.5, times=None)
    waits = []
    for _ in range(5):
        started = time.monotonic()
        manager.get_token()
        waits.append(time.monotonic() - started)
    assert waits[0] >= 0.45  # no token at all: lane 0's fetch, for every caller
    assert max(waits[1:]) < 0.2, waits  # lane 0's token serves while theirs come
    assert poll(lambda: manager.metrics()["tokens_in_use"] == 5)


def test_without_any_token_every_caller_waits_on_lane_zeros_fetch(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=3)
    emulator.inject(status=200, passthrough=True, delay=0.3, times=None)
    callers = [in_background(manager.get_token) for _ in range(3)]  # turns 0, 1 and 2
    for thread, _ in callers:
        thread.join(5)
    got = {out[0] for _, out in callers}
    assert got == {manager.token.access_token}  # type: ignore[union-attr]  # lane 0's, once
    assert poll(lambda: manager.metrics()["tokens_in_use"] == 3)  # the others came behind


# -- D5: a paced caller waits on the token with room soonest ----------------------------------


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore | None]:
    if request.param == "memory":
        yield None
    elif request.param == "file":
        yield FileStore(tmp_path / "tokens")
    else:
        with redis_server_or_skip() as server:
            yield RedisStore(server.url, prefix="pick:")


def _throttle_lane_zero(emulator: GenesysEmulator, manager: TokenManager) -> str:
    """A real 429 with Retry-After on lane 0's token, told to the manager; that token."""
    held = fetch_every_token(manager)[0]
    emulator.throttle_api(1, retry_after=PAUSE)
    answer = requests.get(
        emulator.api_base_url + ORG, headers={"Authorization": f"Bearer {held}"}, timeout=5
    )
    assert answer.status_code == 429
    adapter_port(manager).answered(held, 429, answer.headers.get("Retry-After"))
    return held


def test_paced_calls_go_through_the_token_a_429_does_not_hold(
    emulator: GenesysEmulator, make_manager: MakeManager, store: TokenStore | None
) -> None:
    manager = make_manager(tokens=2, api_rate_limit=LIMIT, api_rate_wait=WAIT, store=store)
    held = _throttle_lane_zero(emulator, manager)
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    sent = len(emulator.api_request_log)
    started = time.monotonic()
    statuses = [session.get(emulator.api_base_url + ORG, timeout=5).status_code for _ in range(20)]
    assert statuses == [200] * 20  # not one ApiRateLimitedError
    assert time.monotonic() - started < 3.0  # lane 1's pace: 20 calls in 4 windows of 0.2 s
    used = [record.token_used for record in emulator.api_request_log[sent:]]
    assert held not in used and len(set(used)) == 1


def test_an_event_loop_waits_on_the_token_a_429_does_not_hold(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2, api_rate_limit=LIMIT, api_rate_wait=WAIT)
    held = _throttle_lane_zero(emulator, manager)

    async def run() -> list[int]:
        async with async_api_client(manager) as client:
            return [(await client.get(ORG)).status_code for _ in range(20)]

    sent = len(emulator.api_request_log)
    assert asyncio.run(run()) == [200] * 20
    assert held not in {record.token_used for record in emulator.api_request_log[sent:]}


def test_a_paced_caller_waits_for_a_token_on_its_way_rather_than_a_429s_pause(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2, api_rate_limit=LIMIT, api_rate_wait=WAIT)
    held = manager.get_token()  # lane 0
    emulator.inject(status=200, passthrough=True, delay=0.3)  # lane 1's first fetch is slow
    assert manager.get_token() == held  # lane 1's turn: served by lane 0, lane 1 fetches
    port = adapter_port(manager)
    port.throttled(held, float(PAUSE))
    use = port.begin_use()  # lane 0's turn, held for 20 s: waits for lane 1's token instead
    assert use.token != held
    use.end()


@pytest.mark.parametrize("wait", [5.0, 0.3])
def test_a_paced_caller_joins_a_slow_fetch_no_longer_than_another_token_needs_for_room(
    emulator: GenesysEmulator, make_manager: MakeManager, wait: float
) -> None:
    # Lane 0's window is full for ~1 s, lane 1's first token takes 2 s: the caller waits
    # for lane 0's room (not the fetch), and never longer than api_rate_wait in all.
    manager = make_manager(tokens=2, api_rate_limit=(2, 1.0), api_rate_wait=wait)
    held = manager.get_token()  # lane 0
    emulator.inject(status=200, passthrough=True, delay=2.0)  # lane 1's first fetch
    port = adapter_port(manager)
    for _ in range(2):
        use = port.begin_use()
        assert use.token == held
        use.end()
    started = time.monotonic()
    if wait > 1.0:
        use = port.begin_use()
        waited = time.monotonic() - started
        assert use.token == held and 0.5 < waited < 1.5, waited
        use.end()
    else:
        with pytest.raises(ApiRateLimitedError):
            port.begin_use()
        waited = time.monotonic() - started
        assert waited < wait + 0.2, waited
    assert poll(lambda: manager.metrics()["tokens_in_use"] == 2)  # lane 1's came all the same


def test_waiters_with_no_room_anywhere_still_spread_over_the_tokens(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2, api_rate_limit=LIMIT, api_rate_wait=0.01)
    fetch_every_token(manager)
    port = adapter_port(manager)
    held = [port.begin_use() for _ in range(2 * LIMIT[0])]
    gave_up_on = given_up_on(port, 4)
    for use in held:
        use.end()
    assert len(set(gave_up_on)) == 2


def test_a_paced_use_served_by_another_token_gets_its_turns_token_fetched(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    manager = make_manager(tokens=2, api_rate_limit=LIMIT, api_rate_wait=WAIT)
    port = adapter_port(manager)
    for _ in range(2):  # lane 1's turn has room on lane 0's token: that serves it
        port.begin_use().end()
    assert poll(lambda: manager.metrics()["tokens_in_use"] == 2)  # lane 1's came behind


# -- a slot waited for is never one of an unusable token ---------------------------------


@pytest.mark.parametrize(
    ("tokens", "window"),
    [(1, 1e9), (2, 1e9), (1, 60.0)],
    ids=["expires-while-waiting", "two-tokens", "expires-as-the-slot-comes"],
)
def test_a_slot_wait_never_hands_out_a_token_that_stopped_being_usable(
    emulator: GenesysEmulator,
    make_manager: MakeManager,
    fake_clock: FakeClock,
    tokens: int,
    window: float,
) -> None:
    # Every token's window is full; the login host goes down; a caller waits for a slot and
    # the tokens pass their usable-until before (1e9) or as (60 s) a slot comes: the caller
    # gets the refresh's error, never an expired token the API would answer 401.
    manager = make_manager(
        tokens=tokens,
        api_rate_limit=(1, window),
        api_rate_wait=1e9,
        max_retries=0,
        background_refresh=False,
        clock=fake_clock.clock(),
    )
    fetch_every_token(manager)
    cells = [lane.flight.cell for lane in manager._lanes.all]
    port = adapter_port(manager)
    for _ in range(tokens):
        port.begin_use().end()
    emulator.inject(status=503, times=None)
    pacer = port.pacer
    assert pacer is not None
    thread, out = in_background(port.begin_use)
    assert poll(lambda: pacer.metrics()["waiting"] == 1)
    last = max(cell.usable_until for cell in cells if cell is not None)
    fake_clock.advance(last - fake_clock.monotonic + 1.0)
    thread.join(timeout=3)
    still_waiting = thread.is_alive()  # for a slot of a token it can no longer use
    if still_waiting:  # let the slot come so the thread ends
        fake_clock.advance(2e9)
        thread.join(timeout=5)
    assert not still_waiting
    assert out and isinstance(out[0], GenesysTokenError), out


def test_an_event_loops_place_in_line_ends_when_its_token_stops_being_usable(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
) -> None:
    manager = make_manager(
        api_rate_limit=(1, 1e9),
        api_rate_wait=1e9,
        background_refresh=False,
        clock=fake_clock.clock(),
    )
    port = adapter_port(manager)
    port.begin_use().end()  # the window is full
    cell = manager._lanes.first.flight.cell
    assert cell is not None
    line = port.line_up()
    assert line is not None
    try:
        assert isinstance(port.poll_line(line), float)  # no room: sleep and poll again
        fake_clock.advance(cell.usable_until - fake_clock.monotonic + 1.0)
        assert port.poll_line(line) is None  # line up again: the slow path refreshes
    finally:
        port.leave_line(line)
    assert port.line_up() is None


# -- the estimate -------------------------------------------------------------------------


def test_room_in_counts_slots_a_429_and_the_line(fake_clock: FakeClock) -> None:
    waits: list[Any] = []
    pacer = Pacer(2, 1.0, 5.0, clock=fake_clock.clock(), wait_on=lambda cond, t: waits.append(t))
    assert pacer.room_in("a") == 0.0  # never seen: room
    first = pacer.try_acquire("a")
    assert first is not None and pacer.room_in("a") == 0.0
    second = pacer.try_acquire("a")
    assert second is not None
    assert pacer.room_in("a") == pytest.approx(1.0)  # every slot held: a window after one
    first.release()
    fake_clock.advance(0.25)
    assert pacer.room_in("a") == pytest.approx(0.75)  # the first slot's window ends then
    ticket = pacer.line_up("a")
    assert pacer.room_in("a") == pytest.approx(0.75 + 0.5)  # one caller ahead: half a window
    pacer.leave("a", ticket)
    pacer.penalize("b", 20.0)
    assert pacer.room_in("b") == pytest.approx(20.0)
    assert pacer.room_in("a") < pacer.room_in("b")
