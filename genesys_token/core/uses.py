"""Counted uses of tokens, per token, so a rotation can retire the old one after its last use.

A use counts against the token it carries. Nothing here ever holds a caller back: a rotation
swaps the token first (new uses get the new one at once), then waits for the old token's
uses. One plain lock guards the counts; it is never held during I/O.

Some uses end without anyone calling :meth:`InFlight.end` (a ``requests`` call that raised
gets no response hook): their owner registers a reaper with :func:`set_reaper`, and every
reading of the counts (and every slice of a drain) runs it first, on the reading thread and
outside the lock. Beginning and ending a use never run it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

#: Ends the uses whose end nobody reported (see :func:`set_reaper`); None: nothing to reap.
_reap: Callable[[], None] | None = None
#: The longest a drain waits before it runs the reaper again.
_reap_every: float = threading.TIMEOUT_MAX


def set_reaper(reap: Callable[[], None] | None, every: float = threading.TIMEOUT_MAX) -> None:
    """Run ``reap()`` before each reading of a count and at least every ``every`` seconds
    of a drain. ``reap`` ends uses (so it takes a gate's lock): it is never run with one
    held, nor from the collector. One reaper per process; None removes it."""
    global _reap, _reap_every
    _reap = reap
    _reap_every = every if reap is not None else threading.TIMEOUT_MAX


def _reap_pending() -> None:
    reap = _reap
    if reap is not None:
        reap()


def reap_pending() -> None:
    """Run the reaper now (see :func:`set_reaper`): ends the uses whose end nobody reported,
    giving back their pacing slots. Never call it with a gate's or a pacer's lock held."""
    _reap_pending()


class Releasable(Protocol):
    """What a use may hold besides its count: a pacing slot
    (:class:`~genesys_token.core.pacing.Slot`), released when the use ends."""

    def release(self, wait: float = -1) -> bool:
        """Give it back, stamped now; False when ``wait`` seconds passed first."""


class InFlight:
    """One counted use of a token (see :meth:`TokenManager.in_flight`).

    Attributes:
        token: The access token this use holds.
        owner: The ident of the thread that began it.
        slot: The pacing slot the use holds (with ``api_rate_limit``), released when the use
            ends, however it ends; None when not paced.
    """

    __slots__ = ("_ended", "_gate", "_pending", "_signalled", "owner", "slot", "token")

    def __init__(
        self, gate: UseGate, token: str, owner: int, slot: Releasable | None = None
    ) -> None:
        self._gate = gate
        self.slot = slot
        self._ended = False
        self._signalled = False
        # Made on first read: most uses are HTTP calls that never look at it, and an Event
        # (a Condition and a lock) per request is most of what counting a call costs.
        self._pending: threading.Event | None = None
        self.token = token
        self.owner = owner

    @property
    def rotation_pending(self) -> threading.Event:
        """Set once a rotation has swapped in a new token: reconnect with it soon; the
        rotation waits (up to its ``drain_timeout``) for this use to end."""
        with self._gate.lock:
            if self._pending is None:
                self._pending = threading.Event()
                if self._signalled:
                    self._pending.set()
            return self._pending

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` ran."""
        return self._ended

    def end(self) -> None:
        """Stop counting this use. Idempotent, and safe from any thread.

        Not from ``__del__`` or ``weakref.finalize``: the collector may run while this very
        thread holds the gate's lock. Note it there and end it later, as GenesysAuth does
        (its reaper ends it when the count is next read, see :func:`set_reaper`).
        """
        self._gate.end(self)

    def end_unless_busy(self, wait: float) -> bool:
        """End this use unless the gate's lock stays taken for ``wait`` seconds; whether it
        has ended. For a reaper that may run inside the collector, on a thread that holds
        the gate's lock (a ``gc`` callback reading a count): it gives up instead of waiting
        for itself, and the next reading ends the use."""
        return self._gate.end(self, wait=wait)

    def __repr__(self) -> str:
        return f"InFlight(ended={self._ended}, rotation_pending={self._signalled})"


class UseGate:
    """Uses in flight, by token."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Made by the first drain (a rotation): most managers never rotate, and a
        #: Condition is most of what an idle gate would cost.
        self._cond: threading.Condition | None = None
        self._uses: dict[str, set[InFlight]] = {}
        self._count = 0
        #: Tokens a rotation is draining: only then does ending a use notify.
        self._draining: set[str] | None = None

    def reset_after_fork(self) -> None:
        """Forget the parent's uses and locks (called in a forked child)."""
        self.__init__()  # type: ignore[misc]

    @property
    def count(self) -> int:
        """Uses in flight, every token together (ended ones reaped first)."""
        _reap_pending()
        return self._count

    def count_of(self, token: str) -> int:
        """Uses in flight of ``token`` (ended ones reaped first)."""
        _reap_pending()
        with self.lock:
            return len(self._uses.get(token, ()))

    def begin(
        self,
        token: str,
        still_current: Callable[[str], bool],
        slot: Releasable | None = None,
    ) -> InFlight | None:
        """Count a use of ``token`` holding ``slot``; None when it stopped being current
        (retry with the new; the caller still owns ``slot`` then).

        The check runs under the lock a drain takes after the swap, so a use either counts
        before the drain looks, or sees the new token: none slips past a drain.
        """
        with self.lock:
            if not still_current(token):
                return None
            use = InFlight(self, token, threading.get_ident(), slot)
            uses = self._uses.get(token)
            if uses is None:
                uses = self._uses[token] = set()
            uses.add(use)
            self._count += 1
            return use

    def end(self, use: InFlight, *, wait: float = -1) -> bool:
        """End a use; idempotent, and ignores uses begun in a parent before a fork.

        Args:
            wait: Give up if the lock is not free within this many seconds (-1: wait).

        Returns:
            Whether the use has ended (False only when ``wait`` ran out).
        """
        if use._ended:  # only ever goes False -> True: safe to read without the lock
            return True
        slot = use.slot
        # The slot first, and outside the gate's lock: the answer has arrived (or the call
        # failed), so its window starts now; a use ended in a forked child releases a slot
        # of the parent's pacer state, which the child's pacer has forgotten.
        if slot is not None and not slot.release(wait):
            return False
        if not self.lock.acquire(timeout=wait):
            return False
        try:
            uses = self._uses.get(use.token)
            if use._ended or uses is None or use not in uses:
                return True
            use._ended = True
            uses.discard(use)
            self._count -= 1
            if not uses:
                del self._uses[use.token]
            if self._draining and use.token in self._draining and self._cond is not None:
                self._cond.notify_all()
            return True
        finally:
            self.lock.release()

    def retire(self, token: str, exclude_owner: int) -> int:
        """Tell the uses of ``token`` that a newer token is in place; returns how many
        there are, those of ``exclude_owner`` left out (ended ones reaped first)."""
        _reap_pending()
        with self.lock:
            uses = self._uses.get(token, set())
            for use in uses:
                use._signalled = True
                if use._pending is not None:
                    use._pending.set()
            return self._others(token, exclude_owner)

    def drain(
        self, token: str, timeout: float, closed: Callable[[], bool], exclude_owner: int
    ) -> int:
        """Wait until no use of ``token`` is left but those of ``exclude_owner`` (a rotation
        called from inside a use does not wait for itself); returns how many others remain.

        The reaper runs before each look, outside the lock: a use that ended unreported is
        seen ended within the reaper's ``every`` seconds.
        """
        # Condition.wait runs on real time, so its deadline does too (not a test clock).
        deadline = time.monotonic() + timeout
        with self.lock:
            if self._cond is None:
                self._cond = threading.Condition(self.lock)
            cond = self._cond
            if self._draining is None:
                self._draining = set()
            draining = self._draining
            draining.add(token)
        try:
            while True:
                _reap_pending()  # ends uses: takes the lock, so not under it
                with self.lock:
                    left = self._others(token, exclude_owner)
                    remaining = deadline - time.monotonic()
                    if not left or closed() or remaining <= 0:
                        return left
                    cond.wait(min(remaining, _reap_every, threading.TIMEOUT_MAX))  # inf: no bound
        finally:
            with self.lock:
                draining.discard(token)

    def _others(self, token: str, exclude_owner: int) -> int:
        return sum(1 for use in self._uses.get(token, ()) if use.owner != exclude_owner)

    def wake_all(self) -> None:
        """Wake every drain (the manager is closing)."""
        with self.lock:
            if self._cond is not None:
                self._cond.notify_all()
