"""Starting the library's long-lived daemon threads (the scheduler, the store lock keeper).

A thread that cannot start (``RuntimeError``: a pids or memory limit) must not take its
service down: the caller keeps its work and tries again at its next start; the failure is
logged once, and the recovery once, however many starts fail in between.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class DaemonStarter:
    """Starts one service's daemon thread, logging a failure to start once per outage.

    Args:
        log: Where the failure and the recovery are logged.
        what: The thread, as a log line names it ("the refresh scheduler thread").
        meanwhile: What waits while no thread runs ("refreshes wait until a thread can start").
        level: The level of the failure line.
    """

    __slots__ = ("_failed", "_level", "_log", "_meanwhile", "_what")

    def __init__(
        self, log: logging.Logger, what: str, meanwhile: str, level: int = logging.WARNING
    ) -> None:
        self._log = log
        self._what = what
        self._meanwhile = meanwhile
        self._level = level
        self._failed = False

    def start(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        """Start ``target`` on a new daemon thread; None when it could not start."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a pids or memory limit
            if not self._failed:
                self._failed = True
                self._log.log(
                    self._level, "cannot start %s (%s); %s", self._what, exc, self._meanwhile
                )
            return None
        if self._failed:
            self._failed = False
            self._log.warning("%s runs again", self._what)
        return thread
