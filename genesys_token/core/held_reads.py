"""Reading the secret source a pooled manager holds, with a bound.

A pool caller with another source object than the manager's is compared by value: the
manager's source is read too. That source is someone else's (a vault client of the org's
code): a call of it that hangs must not hang every ``get()`` of the client. So it is called
in a helper thread, one call at a time per entry, and awaited for at most the pool's
timeout; what it gave is reused for :data:`HELD_READ_FRESH` seconds, so callers passing a
new ``lambda`` on every ``get()`` start at most one helper thread a second per client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..credentials import digest, read_secret
from ..errors import SecretSourceError

#: A read of the held source answers the callers of this many seconds.
HELD_READ_FRESH = 1.0


class _Read:
    """One call of a held source, in a helper thread."""

    __slots__ = ("at", "done", "error", "name", "source")

    def __init__(self, source: Callable[[], str]) -> None:
        self.source = source
        self.done = threading.Event()
        self.name: bytes | None = None
        self.error: str | None = None
        self.at = float("-inf")


class HeldReads:
    """The digest of what one pool entry's secret source gives (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: _Read | None = None

    def name(self, client_id: str, source: Callable[[], str], wait: float) -> bytes:
        """The digest of the value ``source`` gives: read in a helper thread (or by the
        call already running, or the one that ended less than HELD_READ_FRESH s ago),
        awaited for at most ``wait`` seconds.

        Raises:
            SecretSourceError: The source failed, or did not answer within ``wait``.
        """
        now = time.monotonic()
        with self._lock:
            read = self._read
            if (
                read is None
                or read.source is not source
                or (read.done.is_set() and now - read.at >= HELD_READ_FRESH)
            ):
                read = self._read = _Read(source)
                threading.Thread(
                    target=_run, args=(read, client_id), name="genesys-token-held-read", daemon=True
                ).start()
        if not read.done.wait(wait):
            raise SecretSourceError(
                f"the manager's client_secret source did not answer within {wait:g} s",
                field="client_secret",
            )
        if read.error is not None:
            raise SecretSourceError(read.error, field="client_secret")
        assert read.name is not None
        return read.name

    def after_fork(self) -> None:
        """In a forked child: a call running in a parent's thread never ends here."""
        self._lock = threading.Lock()
        self._read = None


def _run(read: _Read, client_id: str) -> None:
    try:
        read.name = digest(client_id, read_secret(read.source))
    except SecretSourceError as exc:
        read.error = str(exc)
    finally:
        read.at = time.monotonic()
        read.done.set()
