"""The refresh thread's loop and the fork hook: the parts of a manager's life outside it."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class _Timed(Protocol):
    _stop: threading.Event
    _wake: threading.Event

    def _timer_plan(self) -> float | None: ...

    def _background_refresh(self) -> bool: ...


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


def run_timer(ref: weakref.ref[_Timed]) -> None:
    """The refresh thread.

    It holds the manager only while it works, never while it sleeps, so a manager that
    was dropped without close() is collected and its thread ends at the next wake-up.
    """
    while True:
        manager = ref()
        if manager is None or manager._stop.is_set():
            return
        wait = manager._timer_plan()
        if wait is None:
            if not manager._background_refresh():
                return
            del manager
            continue
        wake, stop = manager._wake, manager._stop
        del manager
        wake.wait(wait)
        wake.clear()
        if stop.is_set():
            return


_managers: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_fork_hook_installed = False
_fork_hook_lock = threading.Lock()


def register_fork_handler(manager: _ForkAware) -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        _managers.add(manager)
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True


def _after_fork_in_child() -> None:
    global _fork_hook_lock
    _fork_hook_lock = threading.Lock()
    for manager in list(_managers):
        manager._after_fork_in_child()
