"""genesys_middleware with aiohttp.ClientSession: the token on API calls only, counted,
replayed once after a 401, fetched off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from async_helpers import (
    EXIT_BOUND,
    GIVE_UP,
    HANG,
    MAX_GAP,
    SLOW_TOKEN,
    TICK,
    CountingExecutor,
    Ticker,
    run,
    run_and_time_exit,
)
from conftest import MakeManager

from genesys_token import TokenManager
from genesys_token.integrations.aiohttp import genesys_middleware
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"
ECHO_PATH = "/api/v2/echo"
TOKEN_PATH = "/oauth/token"
TOKENS_ME = "/api/v2/tokens/me"


def _session(manager: TokenManager, **kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=manager.api_base_url + "/",
        middlewares=(genesys_middleware(manager, **kwargs),),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def _status(session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> int:
    async with session.request(method, path.lstrip("/"), **kw) as response:
        await response.read()
        return response.status


@pytest.fixture
def manager(make_manager: MakeManager) -> TokenManager:
    return make_manager()


def test_50_calls_on_a_cold_manager_carry_one_token(
    emulator: GenesysEmulator, manager: TokenManager
):
    executor = CountingExecutor()

    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(executor)
        async with _session(manager) as session:
            return await asyncio.gather(*(_status(session, "GET", ORG_PATH) for _ in range(50)))

    assert run(main) == [200] * 50
    assert len(executor.submitted) == 1  # one worker-thread wait, shared by the 50
    assert emulator.token_requests == 1
    assert {r.token_used for r in emulator.api_request_log} == {manager.token.access_token}
    assert manager.in_flight_count == 0


def test_no_token_to_another_origin(emulator: GenesysEmulator, manager: TokenManager):
    manager.get_token()
    with GenesysEmulator() as other:

        async def main() -> dict[str, str]:
            async with _session(manager) as session, session.get(other.url + "/headers") as r:
                return await r.json()  # type: ignore[no-any-return]

        seen = run(main)
    assert "Authorization" not in seen
    assert manager.in_flight_count == 0


def test_loop_never_stalls_while_the_token_request_is_slow(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=TOKEN_PATH)
    ticker = Ticker()

    async def main() -> float:
        tick = asyncio.create_task(ticker.run())
        started = time.monotonic()
        async with _session(manager) as session:
            statuses = await asyncio.gather(*(_status(session, "GET", ORG_PATH) for _ in range(5)))
        elapsed = time.monotonic() - started
        ticker.stop()
        await tick
        assert statuses == [200] * 5
        return elapsed

    elapsed = run(main)
    assert elapsed >= SLOW_TOKEN * 0.9  # the calls did wait for the slow token request...
    assert ticker.max_gap < MAX_GAP  # ...while the loop went on ticking
    assert ticker.ticks >= SLOW_TOKEN / TICK / 4
    assert emulator.token_requests == 1


def test_401_replays_once_with_a_new_token(emulator: GenesysEmulator, manager: TokenManager):
    first = manager.get_token()
    emulator.revoke(first)

    async def main() -> list[int]:
        async with _session(manager) as session:
            calls = (_status(session, "POST", ECHO_PATH, data=b"abc") for _ in range(5))
            return await asyncio.gather(*calls)

    assert run(main) == [200] * 5
    assert emulator.token_requests == 2  # one replacement shared by the five
    assert manager.get_token() != first
    assert manager.metrics()["replays_401"] == 5
    assert manager.in_flight_count == 0


def test_401_returned_when_no_new_token_can_be_had(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.revoke(manager.get_token())
    emulator.set_secret(emulator.client_id, "rotated-elsewhere")

    async def main() -> int:
        async with _session(manager) as session:
            return await _status(session, "GET", ORG_PATH)

    assert run(main) == 401
    assert emulator.api_requests == 1
    assert manager.in_flight_count == 0


def test_401_untouched_without_replay(emulator: GenesysEmulator, manager: TokenManager):
    emulator.revoke(manager.get_token())

    async def main() -> int:
        async with _session(manager, replay_401=False) as session:
            return await _status(session, "GET", ORG_PATH)

    assert run(main) == 401
    assert emulator.token_requests == 1


def test_count_ends_when_the_call_raises(manager: TokenManager, closed_port: int):
    dead = f"http://127.0.0.1:{closed_port}"
    manager.get_token()

    async def main() -> None:
        async with aiohttp.ClientSession(
            middlewares=(genesys_middleware(manager, origins=[dead]),)
        ) as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await _status(session, "GET", dead + ORG_PATH)
            assert manager.in_flight_count == 0

    run(main)


def test_a_call_in_flight_is_counted_until_it_ends(
    emulator: GenesysEmulator, manager: TokenManager
):
    manager.get_token()
    emulator.inject(Fault(delay=0.5, passthrough=True), path=ORG_PATH)

    async def main() -> list[int]:
        async with _session(manager) as session:
            call = asyncio.create_task(_status(session, "GET", ORG_PATH))
            while emulator.api_requests == 0:
                await asyncio.sleep(TICK)
            during = manager.in_flight_count
            await call
            return [during, manager.in_flight_count]

    assert run(main) == [1, 0]


def test_cancelled_while_waiting_for_a_token_leaks_no_use(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=TOKEN_PATH)
    done = threading.Event()
    manager.on("TOKEN_REFRESH_SUCCESS", lambda record: done.set())

    async def main() -> None:
        async with _session(manager) as session:
            call = asyncio.create_task(_status(session, "GET", ORG_PATH))
            while emulator.token_requests == 0:  # the fetch is under way
                await asyncio.sleep(TICK)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # The worker thread sees the token arrive; nothing may stay counted.
            while not done.is_set():
                await asyncio.sleep(TICK)
            for _ in range(50):
                await asyncio.sleep(TICK)
                if manager.in_flight_count == 0:
                    break

    run(main)
    assert done.is_set()
    assert manager.in_flight_count == 0
    assert emulator.api_requests == 0


def test_rotation_waits_for_an_aiohttp_call(emulator: GenesysEmulator, manager: TokenManager):
    old = manager.get_token()
    emulator.inject(Fault(delay=SLOW_TOKEN, passthrough=True), path=ORG_PATH)
    fetched = threading.Event()
    rotated = threading.Event()
    manager.on(
        "TOKEN_REFRESH_SUCCESS",
        lambda record: record["data"]["reason"] == "rotation" and fetched.set(),
    )

    async def main() -> tuple[int, bool]:
        async with _session(manager, replay_401=False) as session:
            slow = asyncio.create_task(_status(session, "GET", ORG_PATH))
            while emulator.api_requests == 0:
                await asyncio.sleep(TICK)
            thread = threading.Thread(
                target=lambda: (manager.rotate(revoke_previous=True), rotated.set())
            )
            thread.start()
            while not fetched.is_set():  # the new token is in; the drain begins
                await asyncio.sleep(TICK)
            await asyncio.sleep(0.2)
            drained_early = rotated.is_set() or slow.done()
            status = await slow
            await asyncio.to_thread(thread.join, 5)
        return status, drained_early

    status, drained_early = run(main)
    assert status == 200  # the old token lived until its call ended
    assert not drained_early  # the rotation waited for the call in flight
    assert rotated.is_set()
    assert old in emulator.revoked_tokens


def test_unreplayable_body_is_not_sent_twice(emulator: GenesysEmulator, manager: TokenManager):
    emulator.revoke(manager.get_token())

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    async def main() -> int:
        async with _session(manager) as session:
            return await _status(session, "POST", ECHO_PATH, data=body())

    assert run(main) == 401
    assert emulator.api_requests == 1
    assert emulator.token_requests == 2  # replaced for the next call all the same
    assert manager.in_flight_count == 0


def test_giving_up_on_a_token_leaves_no_executor_work_behind(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)
    emulator.inject(Fault(delay=HANG, passthrough=True), path=TOKEN_PATH)

    async def main() -> float:
        async with _session(manager) as session:
            calls = asyncio.gather(*(_status(session, "GET", ORG_PATH) for _ in range(3)))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(calls, GIVE_UP)
            return time.monotonic()

    # asyncio.run() ends by waiting for the worker threads of its default executor.
    exit_delay = run_and_time_exit(main)
    assert emulator.token_requests == 1  # the wait did reach the token endpoint
    assert exit_delay < EXIT_BOUND, f"asyncio.run() returned {exit_delay:.2f}s after giving up"
    assert manager.in_flight_count == 0
