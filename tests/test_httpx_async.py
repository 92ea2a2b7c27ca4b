"""GenesysHTTPXAuth with httpx.AsyncClient: one fetch for many coroutines, a loop never stalled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from async_helpers import (
    EXIT_BOUND,
    GIVE_UP,
    HANG,
    MAX_GAP,
    SLOW_TOKEN,
    TICK,
    CountingExecutor,
    HeldPort,
    Ticker,
    run,
    run_and_time_exit,
)
from conftest import FakeClock, MakeManager

from genesys_token import TokenManager
from genesys_token.core.port import AdapterPort
from genesys_token.integrations.httpx import GenesysHTTPXAuth
from genesys_token.manager import adapter_port
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"
ECHO_PATH = "/api/v2/echo"
TOKEN_PATH = "/oauth/token"
TOKENS_ME = "/api/v2/tokens/me"


def _client(manager: TokenManager, **kwargs: Any) -> httpx.AsyncClient:
    auth = GenesysHTTPXAuth(manager, **kwargs)
    return httpx.AsyncClient(base_url=manager.api_base_url, auth=auth, timeout=10)


@pytest.fixture
def manager(make_manager: MakeManager) -> TokenManager:
    return make_manager()


def test_50_concurrent_calls_on_a_cold_manager_make_one_token_request(
    emulator: GenesysEmulator, manager: TokenManager
):
    executor = CountingExecutor()

    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(executor)
        async with _client(manager) as client:
            responses = await asyncio.gather(*(client.get(ORG_PATH) for _ in range(50)))
        return [r.status_code for r in responses]

    assert run(main) == [200] * 50
    assert emulator.token_requests == 1
    assert len(executor.submitted) == 1  # one worker-thread call, awaited by all 50
    assert {r.token_used for r in emulator.api_request_log} == {manager.token.access_token}
    assert manager.in_flight_count == 0


def test_loop_never_stalls_while_the_token_request_is_slow(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=TOKEN_PATH)
    ticker = Ticker()

    async def main() -> float:
        tick = asyncio.create_task(ticker.run())
        started = time.monotonic()
        async with _client(manager) as client:
            responses = await asyncio.gather(*(client.get(ORG_PATH) for _ in range(20)))
        elapsed = time.monotonic() - started
        ticker.stop()
        await tick
        assert [r.status_code for r in responses] == [200] * 20
        return elapsed

    elapsed = run(main)
    assert elapsed >= SLOW_TOKEN * 0.9  # the calls did wait for the slow token request...
    assert ticker.max_gap < MAX_GAP  # ...while the loop went on ticking
    assert ticker.ticks >= SLOW_TOKEN / TICK / 4
    assert emulator.token_requests == 1


def test_hot_path_stays_on_the_loop(emulator: GenesysEmulator, manager: TokenManager):
    manager.get_token()
    executor = CountingExecutor()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        async with _client(manager) as client:
            for _ in range(20):
                assert (await client.get(ORG_PATH)).status_code == 200

    run(main)
    assert executor.submitted == []  # no worker thread: counted and authorized inline
    assert emulator.token_requests == 1


def test_concurrent_401s_share_one_replacement(emulator: GenesysEmulator, manager: TokenManager):
    first = manager.get_token()
    emulator.revoke(first)

    async def main() -> list[int]:
        async with _client(manager) as client:
            calls = (client.post(ECHO_PATH, content=b"abc") for _ in range(20))
            responses = await asyncio.gather(*calls)
        return [r.status_code for r in responses]

    assert run(main) == [200] * 20
    assert emulator.token_requests == 2
    assert manager.get_token() != first
    assert manager.in_flight_count == 0
    assert manager.metrics()["replays_401"] == 20  # each call replayed once


def test_401_returned_when_no_new_token_can_be_had(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.revoke(manager.get_token())
    emulator.set_secret(emulator.client_id, "rotated-elsewhere")

    async def main() -> int:
        async with _client(manager) as client:
            return (await client.get(ORG_PATH)).status_code

    assert run(main) == 401
    assert emulator.api_requests == 1


def test_unreplayable_body_is_not_sent_twice(emulator: GenesysEmulator, manager: TokenManager):
    emulator.revoke(manager.get_token())

    async def body():  # type: ignore[no-untyped-def]
        yield b"chunk"

    async def main() -> int:
        async with _client(manager) as client:
            return (await client.post(ECHO_PATH, content=body())).status_code

    assert run(main) == 401
    assert emulator.api_requests == 1
    assert emulator.token_requests == 2  # replaced for the next call all the same


def test_count_ends_when_the_call_raises(emulator: GenesysEmulator, manager: TokenManager):
    emulator.inject(Fault(drop=True), path=ORG_PATH)

    async def main() -> None:
        async with _client(manager) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(ORG_PATH)
            assert manager.in_flight_count == 0

    run(main)


def test_a_cancelled_caller_leaves_the_fetch_to_the_others(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=TOKEN_PATH)

    async def main() -> list[int]:
        async with _client(manager) as client:
            calls = [asyncio.create_task(client.get(ORG_PATH)) for _ in range(5)]
            while emulator.token_requests == 0:  # the shared fetch is under way
                await asyncio.sleep(TICK)
            calls[0].cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        return [r.status_code for r in done[1:] if isinstance(r, httpx.Response)]

    assert run(main) == [200] * 4
    assert emulator.token_requests == 1
    assert manager.in_flight_count == 0


def test_token_errors_reach_every_waiting_caller(emulator: GenesysEmulator, make_manager):
    manager = make_manager(client_secret="wrong-secret")

    async def main() -> list[BaseException]:
        async with _client(manager) as client:
            calls = (client.get(ORG_PATH) for _ in range(5))
            return await asyncio.gather(*calls, return_exceptions=True)

    errors = run(main)
    assert {type(e).__name__ for e in errors} == {"InvalidClientError"}
    assert emulator.token_requests == 1
    assert emulator.api_requests == 0


def test_rotation_drains_async_calls_and_the_loop_keeps_ticking(
    emulator: GenesysEmulator, manager: TokenManager
):
    old = manager.get_token()
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=ORG_PATH)
    ticker = Ticker()
    rotated = threading.Event()
    started = threading.Event()
    # Make-before-break: the new token is in place once the rotation's fetch succeeded.
    manager.on(
        "TOKEN_REFRESH_SUCCESS",
        lambda record: record["data"]["reason"] == "rotation" and started.set(),
    )

    async def main() -> list[int]:
        tick = asyncio.create_task(ticker.run())
        async with _client(manager, replay_401=False) as client:
            slow = asyncio.create_task(client.get(ORG_PATH))
            while emulator.api_requests == 0:
                await asyncio.sleep(TICK)
            thread = threading.Thread(
                target=lambda: (manager.rotate(revoke_previous=True), rotated.set())
            )
            thread.start()
            while not started.is_set():
                await asyncio.sleep(TICK / 10)
            # A call made during the rotation's drain gets the new token at once.
            during = await client.get(TOKENS_ME)
            first = await slow
            thread.join(5)
        ticker.stop()
        await tick
        return [first.status_code, during.status_code]

    assert run(main) == [200, 200]  # the old token lived until its call ended
    assert rotated.is_set()
    assert old in emulator.revoked_tokens
    during = [r for r in emulator.api_request_log if (r.method, r.path) == ("GET", TOKENS_ME)]
    assert during[0].token_used == manager.get_token() != old
    assert ticker.max_gap < MAX_GAP
    assert manager.in_flight_count == 0


class _NoHotPathManager(TokenManager):
    """A manager whose non-blocking path always declines, and whose blocking one can be held:
    the adapter's last resort (``begin_use`` off the loop) made to run, deterministically."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._port = held = HeldPort(adapter_port(self))
        self.entered, self.release, self.returned = held.entered, held.release, held.returned


@pytest.fixture
def declining_manager(emulator: GenesysEmulator) -> Iterator[_NoHotPathManager]:
    manager = _NoHotPathManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    )
    yield manager
    manager.close()


def test_begin_use_runs_off_the_loop_when_the_hot_path_declines(
    emulator: GenesysEmulator, declining_manager: _NoHotPathManager
):
    async def main() -> list[int]:
        async with _client(declining_manager) as client:
            responses = await asyncio.gather(*(client.get(ORG_PATH) for _ in range(3)))
        return [r.status_code for r in responses]

    assert run(main) == [200] * 3
    assert emulator.token_requests == 1
    assert declining_manager.in_flight_count == 0


def test_a_use_begun_for_a_cancelled_caller_is_ended(
    emulator: GenesysEmulator, declining_manager: _NoHotPathManager
):
    declining_manager.release.clear()

    async def main() -> None:
        async with _client(declining_manager) as client:
            call = asyncio.create_task(client.get(ORG_PATH))
            while not declining_manager.entered.is_set():
                await asyncio.sleep(TICK)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            declining_manager.release.set()  # begin_use now returns a use nobody awaits
            while not declining_manager.returned.is_set():
                await asyncio.sleep(TICK)
            for _ in range(100):  # the executor's result reaches the loop a moment later
                await asyncio.sleep(TICK)
                if declining_manager.in_flight_count == 0:
                    break

    run(main)
    assert declining_manager.returned.is_set()  # begin_use did count a use...
    assert declining_manager.in_flight_count == 0  # ...which was ended for the cancelled caller
    assert emulator.api_requests == 0


def test_no_token_to_another_origin(emulator: GenesysEmulator, manager: TokenManager):
    with GenesysEmulator() as other:

        async def main() -> dict[str, str]:
            async with _client(manager) as client:
                return (await client.get(other.url + "/headers")).json()

        seen = run(main)
    assert "Authorization" not in seen
    assert emulator.token_requests == 0
    assert manager.in_flight_count == 0


# -- giving up: nothing of the call outlives the caller's own bound ------------------------


def test_giving_up_on_a_token_leaves_no_executor_work_behind(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    emulator.inject(Fault(delay=HANG, passthrough=True), path=TOKEN_PATH)

    async def main() -> float:
        async with _client(manager) as client:
            calls = asyncio.gather(*(client.get(ORG_PATH) for _ in range(3)))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(calls, GIVE_UP)  # every waiter of the shared call
            return time.monotonic()

    exit_delay = run_and_time_exit(main)
    assert emulator.token_requests == 1  # the slow path did wait on the token endpoint
    assert exit_delay < EXIT_BOUND, f"asyncio.run() returned {exit_delay:.2f}s after giving up"
    assert manager.in_flight_count == 0


def test_a_caller_after_a_give_up_gets_the_same_fetch(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    emulator.inject(Fault(delay=4 * GIVE_UP, passthrough=True), path=TOKEN_PATH)

    async def main() -> int:
        async with _client(manager) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get(ORG_PATH), GIVE_UP)
            return (await client.get(ORG_PATH)).status_code

    assert run(main) == 200
    assert emulator.token_requests == 1  # giving up did not cancel the manager's fetch
    assert manager.in_flight_count == 0


class _ExpiringManager(TokenManager):
    """A manager whose non-blocking path always declines and whose token expires on the way
    to ``begin_use``: the adapter's last resort (``begin_use`` off the loop, for one
    coroutine) made to wait on the token endpoint."""

    def __init__(self, *args: Any, fake_clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(*args, clock=fake_clock.clock(), background_refresh=False, **kwargs)
        self.fake_clock = fake_clock
        self._port = _ExpiringPort(self, adapter_port(self))


class _ExpiringPort:
    """The adapter port of an :class:`_ExpiringManager` (the adapters' way in, hooked)."""

    def __init__(self, owner: _ExpiringManager, port: AdapterPort) -> None:
        self._owner = owner
        self._port = port
        self.replace_rejected = port.replace_rejected
        self.answered = port.answered

    def try_begin_use(self) -> None:
        return None

    def line_up(self) -> None:
        return None  # not paced

    def begin_use(self, timeout: float | None = None) -> Any:
        token = self._owner.token
        clock = self._owner.fake_clock
        if token is not None and clock.monotonic <= token.monotonic_expiry:
            clock.advance(token.monotonic_expiry - clock.monotonic + 1)
        return self._port.begin_use(timeout)


def test_giving_up_on_begin_use_off_the_loop_leaves_no_executor_work_behind(
    emulator: GenesysEmulator, fake_clock: FakeClock
):
    manager = _ExpiringManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        fake_clock=fake_clock,
    )
    try:
        manager.get_token()
        emulator.inject(Fault(delay=HANG, passthrough=True), path=TOKEN_PATH)

        async def main() -> float:
            async with _client(manager) as client:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.get(ORG_PATH), GIVE_UP)
                return time.monotonic()

        exit_delay = run_and_time_exit(main)
        assert emulator.token_requests == 2  # begin_use did wait on a new token
        assert exit_delay < EXIT_BOUND, f"asyncio.run() returned {exit_delay:.2f}s after"
        assert manager.in_flight_count == 0
    finally:
        manager.close()
