"""The fork hook: every manager of the process is told, in a forked child, to renew itself."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_managers: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_fork_hook_installed = False
_fork_hook_lock = threading.Lock()


def register_fork_handler(manager: _ForkAware) -> None:
    """Call ``manager._after_fork_in_child()`` in every forked child (held weakly)."""
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
