"""What a slot backend could not tell its store yet: releases and slots to drop, per token.

A release or a cancel that fails (a store that hiccups, a slot file locked a moment too
long), or an acquisition that failed on the client but may still run on the server (a Redis
timeout: the script was sent), must not leave its slot counted for ``hold + window`` while
every process is alive. The backend keeps them here and applies them with its next
successful operation on that token (or its keeper's next flush): a release stamped late
only over-counts, and dropping a slot that was never written changes nothing. An entry is
kept only as long as it matters: once its slot would have stopped counting anyway (``hold +
window`` after its acquisition, plus how far ahead it was reserved) it is given up, so a
store that stays down does not keep a keeper retrying for ever.

The lists are bounded (:data:`MAX_PENDING` entries in all): past that, the oldest are given
up (their slots count out their lease) with one WARNING per backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("genesys_token.stores")

#: Entries kept at most, all tokens together: a store down for long while calls go on (each
#: call adds one) must not grow memory for ever; ten thousand are a few hundred kilobytes.
MAX_PENDING = 10_000


class Pending(NamedTuple):
    """One thing to tell the store about a slot.

    Attributes:
        slot_id: The slot's name.
        window: Seconds the slot counts once released; None: drop the held slot.
        until: When the entry no longer matters (the pending list's clock).
    """

    slot_id: str
    window: float | None
    until: float


class PendingSlots:
    """The pending entries of one backend, by token key, oldest first (thread-safe).

    Args:
        what: Names the backend in the WARNING given when entries are given up.
        limit: Entries kept at most (:data:`MAX_PENDING`).
        clock: Seconds, for how long entries matter.
    """

    def __init__(
        self, what: str, limit: int = MAX_PENDING, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._limit = limit
        self._now = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, deque[Pending]] = {}
        self._count = 0
        self._warned = False

    def release(self, key: str, slot_id: str, window: float, keep: float) -> None:
        """Keep a release of ``key``'s slot for ``keep`` seconds at most: it counts
        ``window`` from when it is applied."""
        self._add(key, [Pending(slot_id, float(window), self._now() + keep)])

    def drop(self, key: str, slot_id: str, keep: float) -> None:
        """Keep the removal of ``key``'s held slot (a cancel, or an acquisition that failed)
        for ``keep`` seconds at most."""
        self._add(key, [Pending(slot_id, None, self._now() + keep)])

    def put_back(self, key: str, entries: list[Pending]) -> None:
        """Entries taken that could not be applied after all: kept again, as the oldest."""
        self._add(key, entries, front=True)

    def take(self, key: str) -> list[Pending]:
        """Every entry of ``key``, oldest first; they are the caller's now."""
        with self._lock:
            entries = self._by_key.pop(key, None)
            if not entries:
                return []
            self._count -= len(entries)
        now = self._now()
        return [e for e in entries if e.until > now]

    def take_all(self) -> dict[str, list[Pending]]:
        """Every entry, by key; they are the caller's now."""
        with self._lock:
            taken, self._by_key, self._count = self._by_key, {}, 0
        now = self._now()
        kept = {key: [e for e in entries if e.until > now] for key, entries in taken.items()}
        return {key: entries for key, entries in kept.items() if entries}

    def __len__(self) -> int:
        return self._count

    def after_fork(self) -> None:
        """In a forked child: the parent's entries are not ours."""
        self._lock = threading.Lock()
        self._by_key = {}
        self._count = 0

    def _add(self, key: str, entries: list[Pending], *, front: bool = False) -> None:
        if not entries:
            return
        gave_up = 0
        with self._lock:
            line = self._by_key.setdefault(key, deque())
            if front:
                line.extendleft(reversed(entries))
            else:
                line.extend(entries)
            self._count += len(entries)
            while self._count > self._limit:
                oldest = next(iter(self._by_key))  # the key that waits longest
                self._by_key[oldest].popleft()
                if not self._by_key[oldest]:
                    del self._by_key[oldest]
                self._count -= 1
                gave_up += 1
            warn, self._warned = gave_up and not self._warned, self._warned or bool(gave_up)
        if warn:
            log.warning(
                "%s: more than %d slot releases wait for the store; the oldest are given up "
                "(their slots count until their lease runs out)",
                self._what,
                self._limit,
            )
        elif gave_up:
            log.debug("%s: %d pending slot releases given up", self._what, gave_up)
