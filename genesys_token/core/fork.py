"""The one fork registry of the library.

In a forked child only the forking thread exists: every process-wide object (the shared
session, the host limiter, the scheduler, store locks) is renewed first, in the order it
registered, then every manager of the process renews itself (held weakly).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_process_wide: list[Callable[[], None]] = []
_before: list[Callable[[], None]] = []
_in_parent: list[Callable[[], None]] = []
_managers: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_lock = threading.Lock()


def on_fork_in_child(
    callback: Callable[[], None],
    *,
    before: Callable[[], None] | None = None,
    in_parent: Callable[[], None] | None = None,
) -> None:
    """Call ``callback()`` in every forked child, before the managers renew themselves;
    ``before`` in the forking thread just before a fork, ``in_parent`` in it just after."""
    with _lock:
        _process_wide.append(callback)
        if before is not None:
            _before.append(before)
        if in_parent is not None:
            _in_parent.append(in_parent)


def _before_fork() -> None:
    for callback in list(_before):
        callback()


def _after_fork_in_parent() -> None:
    for callback in list(_in_parent):
        callback()


def register_fork_handler(manager: _ForkAware) -> None:
    """Call ``manager._after_fork_in_child()`` in every forked child (held weakly)."""
    with _lock:
        _managers.add(manager)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at the fork
    for callback in list(_process_wide):
        callback()
    for manager in list(_managers):
        manager._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
