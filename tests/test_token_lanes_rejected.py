"""tokens=N when the API rejects (401) tokens fetched moments ago (review 9).

The fresh-401 rule replaces one fresh token per cool-down, shared by the lanes. Once it is
used up, a lane whose token is refused may still take a newer token from the store (another
process put it there: a fleet's rotation), and otherwise its turns go to the other lanes'
tokens until the cool-down ends (genesys_token/core/lanes.py). An API that rejects every
token still gets about one token request per cool-down, whatever N.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeClock, MakeManager
from lane_helpers import fetch_every_token

from genesys_token import TokenManager, TokenRejectedError, api_session
from genesys_token.core.uses import InFlight
from genesys_token.manager import adapter_port
from genesys_token.stores import FileStore, MemoryStore
from genesys_token.testing import GenesysEmulator
from genesys_token.token import Token

ME = "/api/v2/tokens/me"


def _tokens(manager: TokenManager) -> list[str]:
    """Each lane's current token, lane 0 first."""
    cells = [lane.flight.cell for lane in manager._lanes.all]
    return [cell.access_token for cell in cells if cell is not None]


def _ready(manager: TokenManager, tokens: int) -> None:
    """Every lane's token fetched (or loaded from the store) now."""
    fetch_every_token(manager)
    assert manager.metrics()["tokens_in_use"] == tokens


@pytest.fixture
def fleet(make_manager: MakeManager, tmp_path: Path) -> Callable[[], TokenManager]:
    """Managers of one fleet: tokens=3, one FileStore, no retries."""
    directory = tmp_path / "store"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)

    def make() -> TokenManager:
        manager = make_manager(tokens=3, store=FileStore(str(directory)), max_retries=0)
        _ready(manager, 3)
        return manager

    return make


def test_a_fleet_rotation_costs_the_other_managers_no_401_and_no_request(
    emulator: GenesysEmulator, fleet: Callable[[], TokenManager]
):
    # Review 9: after A's rotate(revoke_previous=True), B's calls with tokens=3 ended 401
    # 78 times in 10 s (tokens=1: none): lanes 1 and 2 were refused by the rule lane 0 used.
    a, b = fleet(), fleet()
    assert _tokens(a) == _tokens(b)  # one fleet: lane k's token is shared through the store
    a.rotate(revoke_previous=True)
    emulator.reset_counters()
    with api_session(b, max_retries=0) as session:
        statuses = [session.get(ME, timeout=5).status_code for _ in range(30)]
    assert statuses == [200] * 30
    assert emulator.token_requests == 0  # A's new tokens came from the store
    assert _tokens(b) == _tokens(a)
    assert b.metrics()["replays_401"] == 1  # one 401: lane 0's, replayed


def test_a_refused_replacement_is_taken_from_the_store_when_another_process_put_it_there(
    emulator: GenesysEmulator, fleet: Callable[[], TokenManager]
):
    a, b = fleet(), fleet()
    port = adapter_port(b)
    first, second, third = _tokens(b)
    emulator.revoke(first)
    port.replace_rejected(first)  # a fresh token: the rule's replacement of this cool-down
    assert emulator.token_requests == 4  # 3 tokens, then lane 0's replacement
    own = _tokens(b)[0]
    a.rotate(revoke_previous=True)  # revokes A's lanes 1 and 2: B's too
    emulator.reset_counters()
    # Lane 1's fresh token is refused by the rule (used up by lane 0): A's newer token for
    # lane 1 is in the store, and with it lane 2's.
    assert port.replace_rejected(second).access_token == _tokens(a)[1]
    assert _tokens(b) == _tokens(a)  # lane 0's too: A's is newer than B's own replacement
    assert own not in _tokens(b) and third not in _tokens(b)
    assert emulator.token_requests == 0
    assert b.metrics()["api_rejections"] == 1


def _call_with(how: str, manager: TokenManager, emulator: GenesysEmulator) -> int:
    """One API call with a token taken as ``how`` says, a 401 handled as the adapters do
    (replace the token, no replay); its status."""
    port = adapter_port(manager)
    use = None
    if how == "get_token":
        token = manager.get_token()
    elif how == "line_up":  # an event loop's paced use
        line = port.line_up()
        got = None if line is None else port.poll_line(line)
        if line is not None and not isinstance(got, InFlight):
            port.leave_line(line)
        use = got if isinstance(got, InFlight) else port.begin_use()
        token = use.token
    else:
        use = port.try_begin_use() if how == "try_begin_use" else None
        use = use or port.begin_use()
        token = use.token
    try:
        status = requests.get(
            emulator.api_base_url + ME, headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).status_code
    finally:
        if use is not None:
            use.end()
    if status == 401:
        with contextlib.suppress(TokenRejectedError):
            port.replace_rejected(token)
    return status


@pytest.mark.parametrize("how", ["get_token", "begin_use", "paced", "try_begin_use", "line_up"])
def test_tokens_revoked_moments_after_issue_end_in_401_only_once_per_lane(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock, how: str
):
    # Review 9: 231 of 366 calls ended 401, the last at 58 s: lanes 1 and 2 were refused a
    # replacement and kept serving their rejected tokens until the cool-down ended.
    paced = how in ("paced", "line_up")
    options: dict[str, Any] = {"api_rate_limit": (1000, 1.0)} if paced else {}
    manager = make_manager(tokens=3, max_retries=0, clock=fake_clock.clock(), **options)
    _ready(manager, 3)
    fake_clock.advance(2.0)
    for token in list(emulator.issued_tokens):
        emulator.revoke(token)
    emulator.reset_counters()
    seen: list[list[int]] = []
    for _ in range(26):  # 130 s: two cool-downs and a bit
        seen.append([_call_with(how, manager, emulator) for _ in range(6)])
        fake_clock.advance(5.0)
    # The first round meets each revoked token once; then no call ends 401: lane 0's token
    # is replaced at once, lane 1's and 2's at the end of a cool-down each (at 60 s and
    # 120 s, by the first 401 each makes once its turn comes back: the bound is (N-1)
    # cool-downs plus a round).
    assert seen[0].count(401) == 3
    assert [status for round_ in seen[1:] for status in round_ if status != 200] == [401, 401]
    assert emulator.token_requests == 3
    assert not set(_tokens(manager)) & emulator.revoked_tokens


@pytest.mark.parametrize("tokens", [1, 4, 8])
def test_an_api_rejecting_every_token_costs_one_token_request_per_cool_down(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock, tokens: int
):
    # Another region's API host: the API rejects every token. With tokens=N each refused
    # token reaching 60 s was replaced (N more per cool-down); now a token refused once
    # stays fresh for the rule: one replacement per cool-down, whatever N.
    manager = make_manager(tokens=tokens, max_retries=0, clock=fake_clock.clock())
    _ready(manager, tokens)
    emulator.reject_all_tokens = True
    emulator.reset_counters()
    per_cool_down = []
    with api_session(manager, max_retries=0) as session:
        for _ in range(3):
            before = emulator.token_requests
            for _ in range(30):  # 30 rounds 2 s apart: one cool-down (60 s)
                statuses = {session.get(ME, timeout=5).status_code for _ in range(tokens)}
                assert statuses == {401}
                fake_clock.advance(2.0)
            per_cool_down.append(emulator.token_requests - before)
    assert per_cool_down == [1, 1, 1]  # N+1 allowed; N=1, 4, 8 all give 1


class _CountingStore(MemoryStore):
    """A MemoryStore that counts its loads."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self, key: str, **kwargs: Any) -> Token | None:
        self.loads += 1
        return super().load(key, **kwargs)


def test_a_refused_token_makes_one_store_look_a_second_not_one_per_401(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: FakeClock
):
    store = _CountingStore()
    manager = make_manager(tokens=4, max_retries=0, clock=fake_clock.clock(), store=store)
    _ready(manager, 4)
    emulator.reject_all_tokens = True
    with api_session(manager, max_retries=0) as session:
        session.get(ME, timeout=5)  # lane 0's replacement: the rule's one of this cool-down
        fake_clock.advance(1.0)
        store.loads = 0
        for _ in range(10):  # 2 s of 401s: every lane is known rejected, its token served
            statuses = {session.get(ME, timeout=5).status_code for _ in range(8)}
            assert statuses == {401}
            fake_clock.advance(0.2)
    # A look per lane when it is first refused, then one a second (STORE_LOOK_EVERY): 80
    # calls end 401 (each one a look without the bound).
    assert store.loads <= 4 * 3
