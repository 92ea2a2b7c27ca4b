"""Where the API-call slots of a token live when processes share them: the ``SlotBackend``.

A :class:`~genesys_token.core.shared_pacing.SharedPacer` keeps ``calls`` per ``window`` per
token across every process that shares a store, by keeping each token's slots in the store
rather than in memory: ``RedisStore.slots()`` (a fleet; Redis's own clock) and
``FileStore.slots()`` (the processes of one machine sharing its monotonic clock).
``MemoryStore`` has none: a process alone paces with an in-process
:class:`~genesys_token.core.pacing.Pacer`.

**The rule is the in-process pacer's** (see :mod:`genesys_token.core.pacing`): a slot counts
from its grant until its answer arrives (:meth:`SlotBackend.release`), then for a window. Each
slot kept in a backend carries the time until which it counts: ``start + hold + window`` while
it is held (so a slot of a process that died counts until its lease ``hold`` has run out, and
then for a window: never lost, never counted forever), ``answer + window`` once released.

**Reservations.** A token with no room now often has a known moment of room: when the
``calls``-th most recent answer leaves its window. Then ``acquire`` *reserves* the slot at
that moment (if it is within ``max_wait``) and the caller sends its call no earlier: one
question to the backend per call, however long it waits, instead of one per poll. The
reserved slot is counted from the moment it is granted (earlier than needed: safe). When the
moment is not known (the slot that would free it is held by a call in flight, whose answer
time nobody knows yet), ``acquire`` grants nothing and answers the earliest moment room can
come (a held slot counts at least a window past its start); the caller asks again then, or
after a short slice when that moment has passed, or sooner when one of its own calls ends.

Keys are token fingerprints, never tokens.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Answer", "SlotBackend"]


class Answer(NamedTuple):
    """What :meth:`SlotBackend.acquire` answered.

    Attributes:
        granted: Whether the slot is the caller's now.
        seconds: Granted: seconds until the slot may be used (0.0 at once; more for a
            reservation). Not granted: the earliest moment room can come (0.0: any moment,
            as soon as a call in flight is answered).
    """

    granted: bool
    seconds: float


@runtime_checkable
class SlotBackend(Protocol):
    """The slots of each token, shared by every process that uses the same backend.

    Every method raises :class:`~genesys_token.errors.StoreError` when the backend cannot be
    used (Redis down, a directory that cannot be written): the pacer then paces in its own
    process until the backend answers again.
    """

    def acquire(
        self,
        key: str,
        slot_id: str,
        *,
        calls: int,
        window: float,
        hold: float,
        max_wait: float,
    ) -> Answer:
        """Take a slot named ``slot_id`` (unique, chosen by the caller) for ``key``.

        Args:
            key: The token's fingerprint.
            slot_id: A fresh random name of the slot, for :meth:`release`/:meth:`cancel`.
            calls: Calls allowed per window.
            window: The window's length in seconds.
            hold: Seconds the slot counts as held before it counts as answered anyway.
            max_wait: Reserve a slot at most this many seconds ahead (0: only now).
        """
        ...

    def release(self, key: str, slot_id: str, *, window: float) -> None:
        """The slot's call was answered: it counts for ``window`` seconds from now on. A
        backend may defer the write (never stamping it earlier than now) for a short,
        bounded time; one that cannot write it now keeps it and writes it with its next
        operation that succeeds, rather than letting the slot count ``hold + window``."""
        ...

    def cancel(self, key: str, slot_id: str) -> None:
        """Give the slot back unused: nothing was sent. Kept for later as a release is,
        when it cannot be written now."""
        ...

    def penalize(self, key: str, seconds: float) -> None:
        """A 429 came back: no slot of ``key`` starts within ``seconds`` from now, for
        any process."""
        ...

    def in_use(self, key: str) -> int:
        """Slots of ``key`` that count now (held, reserved, or answered within a window)."""
        ...

    def after_fork(self) -> None:
        """In a forked child: forget the parent's deferred work (its slots are its own)."""
        ...
