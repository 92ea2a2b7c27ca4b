"""Fork safety: a pre-forked worker (gunicorn --preload) gets tokens and its own refresh."""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from typing import Any

import pytest
import requests
from conftest import MakeManager, in_background, in_child

from genesys_token import TokenManager
from genesys_token.core.scheduler import scheduler
from genesys_token.manager import adapter_port
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


# -- finalizers, locks copied at fork, first use in a child --------------------------------


def test_dropping_a_manager_in_a_child_keeps_the_others_refreshing(emulator: GenesysEmulator):
    # Defect fork_finalizer_kills_scheduler: the parent job's finalizer decremented the
    # child's scheduler, which then stopped every other manager's refresh.
    emulator.token_ttl = 1.0
    options = {"token_url": emulator.token_url, "api_base_url": emulator.api_base_url}
    # Not make_manager: its list would keep `a` alive in the child.
    held = [TokenManager(emulator.client_id, emulator.client_secret, **options) for _ in "ab"]
    b = held[1]
    try:
        for manager in held:
            manager.get_token()  # both scheduled in the parent

        def child() -> dict[str, Any]:
            for manager in held:
                manager.get_token()  # first use in the child: both re-arm
            first = b.get_token()
            held[0].close()
            del held[0]  # the last reference: a's finalizers run now
            gc.collect()
            sched, job = scheduler(), b._refresher.job
            assert job is not None
            with sched._lock:  # b's job is out of the heap while its refresh runs (1 s tokens)
                live = sched._live + (job.ticket is None)
            deadline = time.monotonic() + 5
            while b.get_token() == first and time.monotonic() < deadline:
                time.sleep(0.02)
            return {"live": live, "refreshed": b.get_token() != first}

        assert in_child(child) == {"live": 1, "refreshed": True}
    finally:
        for manager in held:
            manager.close()


def test_a_child_forked_while_a_thread_checks_the_cooldown_gets_tokens(
    make_manager: MakeManager,
):
    # Defect fork_rejections_lock_inherited: the credentials cool-down lock was copied held.
    manager = make_manager()
    inside, leave = threading.Event(), threading.Event()

    def in_check() -> None:
        with manager._refresher.rejected._lock:  # a thread inside RejectedCredentials.check()
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=in_check)
    holder.start()
    try:
        assert inside.wait(5)

        def child() -> dict[str, Any]:
            caller, got = in_background(lambda: manager.get_token(timeout=2))
            caller.join(4)
            return {"returned": not caller.is_alive(), "token": isinstance(got and got[0], str)}

        result = in_child(child)
    finally:
        leave.set()
        holder.join(5)
    assert result == {"returned": True, "token": True}


def test_replace_rejected_as_first_use_in_a_child_rearms_the_refresh(
    make_manager: MakeManager,
):
    # Defect fork_first_use_paths: replace_rejected() of a stale 401 as the child's first
    # use returned the current token without bringing the refresh back.
    manager = make_manager()
    stale = manager.get_token()
    current = manager.refresh(force=True).access_token

    def child() -> dict[str, Any]:
        got = adapter_port(manager).replace_rejected(stale).access_token
        job = manager._refresher.job
        assert job is not None
        return {
            "current": got == current,
            "armed": job.ticket is not None and job.owner is scheduler(),
        }

    assert in_child(child) == {"current": True, "armed": True}


def test_child_survives_locks_held_by_parent_threads_at_fork(make_manager: MakeManager):
    manager = make_manager()
    manager.get_token()
    use = adapter_port(manager).begin_use()
    holding, release = threading.Event(), threading.Event()

    def hold_locks() -> None:
        with manager._gate.lock, manager._reporter.metrics._lock, manager._reporter.events._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_locks)
    holder.start()
    assert holding.wait(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        signal.alarm(5)
        try:
            use.end()  # begun in the parent: ignored, without touching a copied lock
            manager.metrics()
            with manager.in_flight():
                pass
            code = 0 if manager.in_flight_count == 0 else 1
        except BaseException:  # noqa: BLE001
            code = 2
        os._exit(code)
    release.set()
    holder.join(5)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child hung on a lock copied at fork")
        select.select([], [], [], 0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    use.end()
    assert manager.in_flight_count == 0


def test_a_child_forking_before_its_first_use_makes_no_token_request_in_the_grandchild(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Review 10: the grandchild took the parked copy (refresh due at once) for the real
    # cell, so its first use refreshed every token at once.
    manager = make_manager(tokens=2)
    for lane in manager._lanes.all:
        lane.refresher.slow(None)
    before = emulator.token_requests

    def child() -> dict[str, Any]:
        def grandchild() -> dict[str, Any]:
            manager.get_token()
            manager.get_token()
            now = time.monotonic()
            return {"due_later": [lane.flight.cell.refresh_at > now for lane in manager._lanes.all]}

        return in_child(grandchild)

    assert in_child(child, timeout=20) == {"due_later": [True, True]}
    assert emulator.token_requests == before
