"""Fork safety: a pre-forked worker (gunicorn --preload) gets tokens and its own refresh."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests
from conftest import MakeManager, in_child

from genesys_token.testing import Fault, GenesysEmulator

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _works(emulator: GenesysEmulator, token: str) -> bool:
    """Ask the (parent's) emulator over HTTP: the child's copy of its state is stale."""
    answer = requests.head(
        f"{emulator.api_base_url}/api/v2/tokens/me",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    return answer.status_code == 200


def test_child_gets_tokens_and_refreshes_in_the_background(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_ttl = 2
    manager = make_manager()
    parent_token = manager.get_token()
    # Fork while another thread is inside a token request, as a preloading server might.
    emulator.inject(Fault(delay=0.5, passthrough=True))
    requested = emulator.token_requests + 1
    busy = threading.Thread(target=lambda: manager.refresh(force=True))
    busy.start()
    deadline = time.monotonic() + 5
    while emulator.token_requests < requested:  # counted on arrival, before the delay
        assert time.monotonic() < deadline, "the delayed token request never arrived"
        time.sleep(0.005)

    def child() -> dict:
        first = manager.get_token()
        deadline = time.monotonic() + 5
        current = first
        while current == first and time.monotonic() < deadline:
            time.sleep(0.05)
            current = manager.get_token()
        names = [t.name for t in threading.enumerate()]
        return {
            "first_valid": _works(emulator, first),
            "refreshed": current != first,
            "current_valid": _works(emulator, current),
            "timer": "genesys-token-scheduler" in names,
            "in_flight": manager.in_flight_count,
        }

    result = in_child(child)
    busy.join(5)
    assert result == {
        "first_valid": True,
        "refreshed": True,
        "current_valid": True,
        "timer": True,
        "in_flight": 0,
    }
    assert parent_token


def test_child_can_force_a_refresh_over_fresh_connections(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    manager.get_token()
    before = emulator.token_requests

    def child() -> dict:
        token = manager.refresh(force=True)
        return {"valid": _works(emulator, token.access_token)}

    assert in_child(child) == {"valid": True}
    assert emulator.token_requests == before + 1
    # The parent still works on its own pool.
    assert manager.refresh(force=True)
