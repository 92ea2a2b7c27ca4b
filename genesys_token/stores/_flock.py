"""The ``flock`` of a FileStore lock file, waited for only while its holder shows it lives.

An ``flock`` frees when its holder dies, but not while it is stopped (``SIGSTOP``, a frozen
container) or when a process that is no genesys-token holder took it (another local program,
a planted lock). So a holder also keeps a *heartbeat*: it touches its lock file (the mtime)
when it takes the lock and every :data:`HEARTBEAT` seconds while it holds it, but never past
its lease, the way a RedisStore holder renews its key. A waiter that finds the lock taken and
the file untouched for :data:`SILENT_AFTER` seconds (still so :data:`CONFIRM` seconds later)
stops waiting with a :class:`~genesys_token.errors.StoreError` naming the file, and the
manager fetches its own token. A lock whose holder does not renew it thus delays a cold
acquisition at most about ``SILENT_AFTER + CONFIRM`` (+ one poll): 3.5 s; a live holder is
waited for as long as the caller allows (the manager: one acquisition's bound), so peers
still reuse its token rather than add requests while the endpoint throttles.

The mtime is the kernel's wall clock, compared with ``time.time()`` on the same host: a wall
clock stepped forward makes a live holder look silent (one more token request); stepped back,
it makes a silent one look alive for that much longer, never beyond the caller's timeout.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError
from . import _leases
from .base import poll_until

try:  # POSIX only; importing this module must still work elsewhere (issue 16, #9).
    _fcntl: Any = importlib.import_module("fcntl")
except ImportError:  # pragma: no cover - Windows
    _fcntl = None

log = logging.getLogger("genesys_token.stores")

#: Whether this platform has ``flock`` (not Windows).
AVAILABLE = _fcntl is not None
#: A holder touches its lock file this often while it holds the lock.
HEARTBEAT = 1.0
#: A lock file untouched this long (three missed heartbeats) has a holder that does not renew
#: it: waiters stop waiting for it.
SILENT_AFTER = 3.0
#: ...once it is still so this much later: a holder that has just taken the lock touches the
#: file right after its ``flock``, and may be descheduled in between.
CONFIRM = 0.25


def try_lock(fd: int) -> bool:
    """Take the exclusive ``flock`` of ``fd`` if it is free; never waits."""
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    """Release the ``flock`` of ``fd`` (for every descriptor sharing its open file)."""
    _fcntl.flock(fd, _fcntl.LOCK_UN)


def wait_for_lock(fd: int, timeout: float, path: Path) -> bool:
    """Take the ``flock`` of ``fd`` within ``timeout`` seconds, while its holder lives.

    Returns:
        True when taken; False when ``timeout`` passed while a live holder had it.

    Raises:
        StoreError: The holder has not touched ``path`` for :data:`SILENT_AFTER` seconds.
        OSError: ``flock`` itself failed (a file system without it).
    """
    silent_since: float | None = None

    def attempt() -> bool:
        nonlocal silent_since
        if try_lock(fd):
            return True
        age = time.time() - os.fstat(fd).st_mtime
        if age <= SILENT_AFTER:
            silent_since = None
            return False
        now = time.monotonic()
        if silent_since is None:
            silent_since = now
        elif now - silent_since >= CONFIRM:
            raise StoreError(
                f"lock file {path} is held by a process that has not renewed it for "
                f"{age:.0f}s; going on without it"
            )
        return False

    return poll_until(attempt, timeout)


class Heartbeat:
    """Touches a held lock file now, then every :data:`HEARTBEAT` seconds until stopped or
    its lease has run out (from the process-wide keeper thread, see ``_leases``)."""

    def __init__(self, fd: int, lease: float) -> None:
        lease_end = time.monotonic() + lease
        _touch(fd)  # at once: a waiter must not take a fresh holder for a silent one
        self._lease = _leases.hold(
            lambda: _touch(fd), HEARTBEAT, lease_end, "token cache lock", _leases.FILE_LOCKS
        )

    def stop(self) -> None:
        """Stop touching the file; once this returns, the descriptor is no longer used."""
        self._lease.release()


def _touch(fd: int) -> bool:
    try:
        os.utime(fd)
    except OSError as exc:
        log.debug("cannot renew the token cache lock: %s", exc.strerror)
        return False
    return True
