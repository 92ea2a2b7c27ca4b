"""Pacing in the httpx clients (sync and async) and the pacer's non-blocking line."""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import quote

import httpx
import pytest
from async_helpers import own_threads
from conftest import manager_for

from genesys_token import TokenManager
from genesys_token.core.pacing import Pacer, Slot
from genesys_token.errors import ApiRateLimitedError
from genesys_token.integrations.httpx import api_client, async_api_client
from genesys_token.testing import GenesysEmulator

ORG = "/api/v2/organizations/me"


def _manager(emulator: GenesysEmulator, calls: int = 10, wait: float = 30.0) -> TokenManager:
    return manager_for(emulator, api_rate_limit=(calls, 1.0), api_rate_wait=wait)


def _429s(emulator: GenesysEmulator) -> int:
    return sum(emulator.api_429s.values())


def test_api_client_threads_paced_draw_no_429(limited: GenesysEmulator) -> None:
    with _manager(limited) as manager, api_client(manager) as client:
        stop = time.monotonic() + 2.0
        statuses: list[int] = []

        def work() -> None:
            while time.monotonic() < stop:
                statuses.append(client.get(ORG).status_code)

        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=15)
        assert _429s(limited) == 0 and statuses.count(200) == len(statuses) >= 15


def test_api_client_429_then_200_is_one_retry(limited: GenesysEmulator) -> None:
    with _manager(limited, calls=20) as manager, api_client(manager, max_retry_after=2) as client:
        statuses = [client.get(ORG).status_code for _ in range(11)]
        assert statuses == [200] * 11 and _429s(limited) == 1
        assert manager.metrics()["pacing"]["calls_paced"] == 12
        assert manager.metrics()["pacing"]["throttled"] == 1


def test_async_api_client_paced_without_a_thread_per_waiter(limited: GenesysEmulator) -> None:
    async def run() -> tuple[list[int], int]:
        async with async_api_client(manager) as client:
            # Warm: the connections (and the resolver's worker threads) are made first.
            await asyncio.gather(*(client.get(ORG) for _ in range(8)))
            await asyncio.sleep(1.0)
            peak = base = own_threads()
            stop = time.monotonic() + 2.0
            statuses: list[int] = []

            async def work() -> None:
                nonlocal peak
                while time.monotonic() < stop:
                    statuses.append((await client.get(ORG)).status_code)
                    peak = max(peak, own_threads())

            await asyncio.gather(*(work() for _ in range(8)))
        return statuses, peak - base

    with _manager(limited) as manager:
        statuses, grown = asyncio.run(run())
        assert _429s(limited) == 0 and statuses.count(200) == len(statuses) >= 15
        assert grown <= 1  # no thread per waiting coroutine
        assert manager.metrics()["pacing"]["calls_waited"] > 0


def test_async_api_client_429_then_200_is_one_retry(limited: GenesysEmulator) -> None:
    async def run() -> list[int]:
        async with async_api_client(manager, max_retry_after=2) as client:
            return [(await client.get(ORG)).status_code for _ in range(11)]

    with _manager(limited, calls=20) as manager:
        assert asyncio.run(run()) == [200] * 11 and _429s(limited) == 1


def test_async_no_room_raises_after_the_wait(limited: GenesysEmulator) -> None:
    async def run() -> None:
        async with async_api_client(manager) as client:
            await client.get(ORG)
            await client.get(ORG)

    with _manager(limited, calls=1, wait=0.3) as manager:
        started = time.monotonic()
        with pytest.raises(ApiRateLimitedError):
            asyncio.run(run())
        assert 0.25 <= time.monotonic() - started < 1.0
        assert limited.api_requests == 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_the_line_is_first_come_first_served() -> None:
    clock = Clock()
    pacer = Pacer(1, 1.0, 5.0, clock=clock)  # type: ignore[arg-type]
    held = pacer.acquire("k")
    first, second = pacer.line_up("k"), pacer.line_up("k")
    assert pacer.try_acquire("k") is None  # someone waits: no overtaking
    assert pacer.poll("k", second) == pytest.approx(5.0)  # not its turn: until the wait ends
    assert isinstance(pacer.poll("k", first), float)
    held.release()
    clock.now += 0.5
    assert pacer.poll("k", first) == pytest.approx(0.5)  # room when the window has passed
    clock.now += 0.5
    slot = pacer.poll("k", first)
    assert isinstance(slot, Slot)  # held: no room for the second
    clock.now += 6.0
    with pytest.raises(ApiRateLimitedError):
        pacer.poll("k", second)
    pacer.leave("k", second)  # a no-op once out of line
    assert pacer.metrics()["waiting"] == 0 and pacer.metrics()["rate_limited"] == 1


def test_leaving_the_line_lets_the_next_one_in() -> None:
    pacer = Pacer(1, 1.0, 5.0, clock=Clock())  # type: ignore[arg-type]
    first, second = pacer.line_up("k"), pacer.line_up("k")
    pacer.leave("k", first)
    assert isinstance(pacer.poll("k", second), Slot)


def test_aiohttp_middleware_paced_draws_no_429(limited: GenesysEmulator) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from genesys_token.integrations.aiohttp import genesys_middleware

    async def run() -> list[int]:
        statuses: list[int] = []
        async with aiohttp.ClientSession(
            base_url=limited.api_base_url + "/", middlewares=(genesys_middleware(manager),)
        ) as session:
            stop = time.monotonic() + 2.0

            async def work() -> None:
                while time.monotonic() < stop:
                    async with session.get(ORG.lstrip("/")) as response:
                        statuses.append(response.status)

            await asyncio.gather(*(work() for _ in range(8)))
        return statuses

    with _manager(limited) as manager:
        statuses = asyncio.run(run())
        assert _429s(limited) == 0 and statuses.count(200) == len(statuses) >= 15
        assert manager.metrics()["pacing"]["calls_waited"] > 0


def test_aiohttp_tells_the_pacer_of_a_429(limited: GenesysEmulator) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from genesys_token.integrations.aiohttp import genesys_middleware

    async def run() -> list[int]:
        async with aiohttp.ClientSession(
            base_url=limited.api_base_url + "/", middlewares=(genesys_middleware(manager),)
        ) as session:
            found = []
            for _ in range(11):
                async with session.get(ORG.lstrip("/")) as response:
                    found.append(response.status)
            return found

    with _manager(limited, calls=20) as manager:
        assert asyncio.run(run())[-1] == 429
        assert manager.metrics()["pacing"]["throttled"] == 1
        assert manager.metrics()["api_429s"] == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_api_clients_give_each_redirect_leg_its_own_slot(kind: str) -> None:
    # httpx follows a redirect inside one auth step: the second leg went out under the
    # first leg's slot (5 calls through a redirect at 5 per 10 s: one 429). The API clients
    # follow redirects themselves, one send (one use, one slot) per leg.
    with GenesysEmulator(api_rate_limit=(5, 10.0)) as emulator:
        manager = _manager(emulator, calls=5, wait=0.3)
        path = "/redirect?to=" + emulator.api_base_url + ORG
        outcomes: list[object] = []

        def sync_calls() -> None:
            with api_client(manager, follow_redirects=True, max_retries=0) as client:
                for _ in range(3):
                    try:
                        response = client.get(path)
                        outcomes.append((response.status_code, len(response.history)))
                    except ApiRateLimitedError:
                        outcomes.append("rate limited")

        async def async_calls() -> None:
            async with async_api_client(manager, follow_redirects=True, max_retries=0) as client:
                for _ in range(3):
                    try:
                        response = await client.get(path)
                        outcomes.append((response.status_code, len(response.history)))
                    except ApiRateLimitedError:
                        outcomes.append("rate limited")

        if kind == "sync":
            sync_calls()
        else:
            asyncio.run(async_calls())
        manager.close()
        assert outcomes == [(200, 1), (200, 1), "rate limited"]
        assert _429s(emulator) == 0
        assert emulator.api_requests == 5  # 2 + 2 + the third call's first leg


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_api_clients_follow_no_redirect_unless_asked(kind: str) -> None:
    # httpx passes USE_CLIENT_DEFAULT (a true object) from get(): read as "follow", every
    # default call followed up to 20 redirects, a POST after a 303 resent as a GET.
    with GenesysEmulator() as emulator:
        manager = _manager(emulator)
        path = "/redirect?to=" + emulator.api_base_url + ORG

        async def async_get() -> httpx.Response:
            async with async_api_client(manager) as client:
                return await client.get(path)

        if kind == "sync":
            with api_client(manager) as client:
                response = client.get(path)
        else:
            response = asyncio.run(async_get())
        manager.close()
    assert (response.status_code, len(response.history)) == (302, 0)
    assert emulator.api_requests == 1


def test_too_many_redirects_gives_a_streamed_legs_connection_back() -> None:
    with GenesysEmulator() as emulator:
        manager = _manager(emulator)
        inner = emulator.api_base_url + "/redirect?to=" + quote(emulator.api_base_url + ORG)
        path = "/redirect?to=" + quote(inner, safe="")  # two redirects, then the answer
        options = {"limits": httpx.Limits(max_connections=1), "timeout": httpx.Timeout(5, pool=1)}
        with api_client(manager, follow_redirects=True, max_redirects=1, **options) as client:
            for _ in range(2):  # a leaked connection: PoolTimeout the second time
                with pytest.raises(httpx.TooManyRedirects):
                    client.send(client.build_request("GET", path), stream=True)
            assert client.get(ORG).status_code == 200
        manager.close()
