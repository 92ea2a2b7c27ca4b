"""The async adapters' off-loop token wait (integrations._offloop): a use begun for a
caller that left is ended whichever side sees it first, and a failed acquisition's
timeout is raised, not waited out slice after slice."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from async_helpers import TICK, HeldPort, run
from conftest import MakeManager

from genesys_token import TokenTimeoutError
from genesys_token.core.uses import InFlight
from genesys_token.integrations._offloop import (
    SLICE,
    Abandoned,
    OffLoopTokens,
    begin_in_slices,
    in_slices,
)
from genesys_token.manager import adapter_port
from genesys_token.testing import GenesysEmulator


def test_a_use_begun_after_its_caller_left_is_ended_in_the_worker_thread(
    make_manager: MakeManager,
):
    manager = make_manager()
    port = adapter_port(manager)
    stop = threading.Event()

    def begin(timeout: float) -> InFlight:
        use = port.begin_use(timeout)
        stop.set()  # the caller leaves while its use is being counted
        return use

    # The loop may never see this thread's result (stopped, closed): the thread ends it.
    with pytest.raises(Abandoned):
        begin_in_slices(begin, stop)
    assert manager.in_flight_count == 0


def test_a_use_delivered_after_its_caller_was_cancelled_is_ended_on_the_loop(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    port = HeldPort(adapter_port(manager))
    port.release.clear()
    tokens = OffLoopTokens(manager, port)  # type: ignore[arg-type]
    delivered = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def call_soon_threadsafe(*args: Any, **kwargs: Any) -> asyncio.Handle:
            handle = real(*args, **kwargs)
            if port.returned.is_set():
                delivered.set()  # the worker thread's use is on its way to the loop
            return handle

        loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]
        call = asyncio.create_task(tokens.begin_use())
        while not port.entered.is_set():
            await asyncio.sleep(TICK)
        port.release.set()
        # Held on purpose: the use is counted and sent to the loop, with the caller not
        # yet stopped (the worker thread keeps it), and the cancel comes before the loop
        # hands it over.
        assert delivered.wait(5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(100):
            await asyncio.sleep(TICK)
            if manager.in_flight_count == 0:
                break

    run(main)
    assert port.returned.is_set()  # begin_use did count a use...
    assert manager.in_flight_count == 0  # ...which the loop ended for the cancelled caller
    assert emulator.api_requests == 0


def test_a_quick_token_timeout_is_raised_not_waited_out():
    stop = threading.Event()
    calls = 0

    def wait(timeout: float) -> str:
        nonlocal calls
        calls += 1
        raise TokenTimeoutError("an acquisition's own timeout, not this slice's")

    # Were it taken for the slice running out, the thread would retry until stopped.
    timer = threading.Timer(10 * SLICE, stop.set)
    timer.start()
    try:
        with pytest.raises(TokenTimeoutError):
            in_slices(wait, stop)
    finally:
        timer.cancel()
    assert calls == 1
