"""The in-flight count and the rotation gate of a manager.

Counted uses of the token (requests through ``GenesysAuth``, ``in_flight()`` blocks) are what
a rotation drains; the gate holds new callers while it does. One plain lock guards both, and
it is never held during I/O.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable


class InFlight:
    """One counted use of a token (see :meth:`TokenManager.in_flight`).

    Attributes:
        token: The access token this use holds.
        rotation_pending: Set when a rotation starts: reconnect with a fresh token soon; the
            rotation waits (up to its ``drain_timeout``) for this use to end.
    """

    __slots__ = ("__weakref__", "_ended", "_gate", "_pending", "_signalled", "owner", "token")

    def __init__(self, gate: UseGate, token: str, owner: int) -> None:
        self._gate = gate
        self._ended = False
        self._signalled = False
        # Made on first read: most uses are HTTP calls that never look at it, and an Event
        # (a Condition and a lock) per request is most of what counting a call costs.
        self._pending: threading.Event | None = None
        self.token = token
        self.owner = owner

    @property
    def rotation_pending(self) -> threading.Event:
        """Set when a rotation starts (see the class docstring)."""
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
        thread holds the gate's lock. Hand it to another thread, as GenesysAuth does.
        """
        self._gate.end(self)

    def __repr__(self) -> str:
        return f"InFlight(ended={self._ended}, rotation_pending={self._signalled})"


class UseGate:
    """Counts uses in flight, per thread too, and gates new uses during a rotation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self.count = 0
        #: Set while a rotation drains and swaps; read without the lock on the hot path.
        self.rotating = False
        self._rotator: int | None = None
        self._owned: dict[int, int] = {}
        self._holders: weakref.WeakSet[InFlight] = weakref.WeakSet()

    def reset_after_fork(self) -> None:
        """Forget the parent's uses and locks (called in a forked child)."""
        self.__init__()  # type: ignore[misc]

    def own_count(self) -> int:
        """Uses held by the calling thread."""
        return self._owned.get(threading.get_ident(), 0)

    def passes(self) -> bool:
        """The rotating thread (its listeners) and holders of uses never wait for a rotation:
        the rotation would be waiting for them."""
        me = threading.get_ident()
        return self._rotator == me or bool(self._owned.get(me))

    def wait_while_rotating(self, bound: float, closed: Callable[[], bool]) -> bool:
        """Wait until no rotation runs, at most ``bound`` seconds; False if the bound hit."""
        if not self.rotating or self.passes():
            return True
        # Condition.wait runs on real time, so its deadline does too (not a test clock).
        deadline = time.monotonic() + bound
        with self.lock:
            while self.rotating and not closed():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def try_begin(self, token: Callable[[], str | None]) -> InFlight | None:
        """Count a use of ``token()`` unless a rotation holds the gate; None means retry."""
        me = threading.get_ident()
        with self.lock:
            current = token()
            if current is None or (self.rotating and not self.passes()):
                return None
            self.count += 1
            self._owned[me] = self._owned.get(me, 0) + 1
            use = InFlight(self, current, me)
            self._holders.add(use)
            return use

    def end(self, use: InFlight) -> None:
        """End a use; idempotent, and ignores uses begun in a parent before a fork."""
        if use._ended:  # only ever goes False -> True: safe to read without the lock
            return
        with self.lock:
            if use._ended or use not in self._holders:
                return
            use._ended = True
            self._holders.discard(use)
            self.count = max(0, self.count - 1)
            owned = self._owned.get(use.owner, 0) - 1
            if owned > 0:
                self._owned[use.owner] = owned
            else:
                self._owned.pop(use.owner, None)
            if self.rotating:  # only a rotation's drain waits for the count to fall
                self._cond.notify_all()

    def close_gate(self) -> None:
        """Start a rotation: hold new uses and tell the uses in flight it is pending."""
        with self.lock:
            self.rotating = True
            self._rotator = threading.get_ident()
            for use in self._holders:
                use._signalled = True
                if use._pending is not None:
                    use._pending.set()

    def drain(self, own: int, timeout: float, closed: Callable[[], bool]) -> int:
        """Wait until only ``own`` uses are left; returns how many others still are."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.count - own > 0 and not closed():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self.count - own

    def open_gate(self) -> None:
        """End a rotation: release the callers held at the gate."""
        with self.lock:
            self.rotating = False
            self._rotator = None
            self._cond.notify_all()

    def wake_all(self) -> None:
        """Wake every waiter (the manager is closing)."""
        with self.lock:
            self._cond.notify_all()
