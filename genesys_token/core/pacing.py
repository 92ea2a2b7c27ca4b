"""Pacing of API calls per access token: at most ``calls`` in any window of ``seconds``.

Genesys counts the API calls of each client-credentials token (300 a minute by default) in a
window that may slide, and answers 429 past it. It counts a call when the call *arrives*, and
a call sent later can arrive before one sent earlier (another connection, a retransmission, a
slow handshake): a pacer that stamps a call when it is sent, with no margin, still draws 429s
(a prototype that did exactly that drew 9 and 19 in 5 s).

**The rule kept here is the conservative one, with no margin to measure.** A call holds its
slot from the moment the slot is granted until its answer arrives (:meth:`Slot.release`);
only then does the slot's window start, at the answer time: the latest moment the service
can have counted the call. Why this never exceeds the limit, whatever the delays and
reorderings on the way and whatever the offset between our clock and the service's: take any
window ``(s, s + W]`` of the service, and among the calls that arrived in it the one granted
last, at ``g <= s + W``. Every other one was granted before ``g`` and answered after it
arrived, after ``s >= g - W``: at ``g`` it was either still held or answered within the last
``W``, and so counted. The slot at ``g`` was granted only with fewer than ``calls`` of those
counted, so the window holds at most ``calls``.

The price is the calls' duration: a slot is busy for ``W`` plus its call's round trip, so a
token paced flat out makes ``calls / (W + d)`` calls a second instead of ``calls / W``: 99.7%
of 300 a minute with 200 ms calls, 98% of 10 a second with 20 ms ones. A margin (stamp at
send plus ``m``) costs ``m`` instead of ``d``, but it only holds while every call arrives
within ``m`` of its send, which a retrying connection pool or a stalled TLS handshake breaks
without notice; the answer time holds by construction.

A call that finds no room waits its turn, first come, first served: while anyone waits for a
token, a newcomer queues behind them even when a slot is free, so nobody is overtaken
indefinitely. It waits at most ``wait`` seconds, then gets
:class:`~genesys_token.errors.ApiRateLimitedError` having sent nothing. A 429 seen by any
caller (:meth:`Pacer.penalize`) holds the token's slots until its ``Retry-After`` has passed,
for every caller.

Bookkeeping per token is a count of held slots plus the answer times still in their window,
together at most ``calls``; a token with neither, no waiter and no penalty left is dropped
when another token is first paced (or by :meth:`Pacer.forget`). Keys are opaque strings: the
callers pass a token's fingerprint, never the token.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ApiRateLimitedError, ConfigurationError
from .clock import SYSTEM_CLOCK, Clock

__all__ = [
    "GIVE_UP_CHECK",
    "WAIT_BUCKETS",
    "PaceSlot",
    "Pacer",
    "Pacing",
    "Slot",
    "Ticket",
    "WaitOn",
]

#: Upper bounds (seconds) of the waited-time histogram's buckets: most paced calls wait not
#: at all or a fraction of a window; ``api_rate_wait`` is 30 s by default. +Inf is implied.
WAIT_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: How often a waiter with a ``give_up`` condition looks at it (seconds): a token swap is
#: rare, so a tenth of a second late costs nothing that matters.
GIVE_UP_CHECK = 0.1

#: How a waiter waits: called with the pacer's condition held, it waits on it at most the
#: seconds given and returns with it held (spurious returns are fine). Tests pass their own.
WaitOn = Callable[[threading.Condition, float], object]


class PaceSlot(Protocol):
    """What a pacer grants (a :class:`Slot` here): released at the answer, or cancelled."""

    def release(self, wait: float = -1) -> bool:
        """The answer arrived: the slot's window starts now (see :meth:`Slot.release`)."""

    def cancel(self) -> None:
        """Nothing was sent: the slot goes back unused."""


class Pacing(Protocol):
    """What the manager and its adapters use of a pacer: :class:`Pacer` in one process, or
    one whose slots are shared between processes, built in one place (the manager's
    ``_make_pacer``).

    Attributes:
        remote: Whether taking a slot asks a store (a round trip): callers then skip
            :meth:`try_acquire` before a wait, which would make it two.
        wait: Seconds a caller waits for a slot at most (``api_rate_wait``).
    """

    remote: bool
    wait: float

    def try_acquire(self, key: str) -> PaceSlot | None:
        """A slot now, or None (see :meth:`Pacer.try_acquire`)."""

    def acquire_unless(
        self, key: str, timeout: float | None, give_up: Callable[[], bool] | None
    ) -> PaceSlot | None:
        """A slot, waiting in line (see :meth:`Pacer.acquire_unless`)."""

    def line_up(self, key: str) -> Ticket:
        """Join the line without blocking (see :meth:`Pacer.line_up`)."""

    def poll(self, key: str, ticket: Ticket) -> PaceSlot | float:
        """The slot, or seconds to sleep (see :meth:`Pacer.poll`)."""

    def leave(self, key: str, ticket: Ticket) -> None:
        """Leave the line (see :meth:`Pacer.leave`)."""

    def room_in(self, key: str) -> float:
        """Seconds until a slot may be free, as far as this process knows; no I/O (see
        :meth:`Pacer.room_in`)."""

    def penalize(self, key: str, retry_after: float | None) -> None:
        """A 429: hold the token's slots (see :meth:`Pacer.penalize`)."""

    def after_fork(self) -> None:
        """In a forked child (see :meth:`Pacer.after_fork`)."""

    def metrics(self) -> dict[str, Any]:
        """The figures (see :meth:`Pacer.metrics`)."""


def _wait_on_condition(cond: threading.Condition, timeout: float) -> object:
    return cond.wait(min(timeout, threading.TIMEOUT_MAX))


class _Token:
    """What the pacer knows of one token."""

    __slots__ = ("ended", "held", "penalty_until", "queue", "throttled")

    def __init__(self, calls: int) -> None:
        self.held = 0
        #: Answer times of released slots still in their window, oldest first.
        self.ended: deque[float] = deque(maxlen=calls)
        #: Waiters, first come first: only the head may take a slot.
        self.queue: deque[object] = deque()
        #: No slot is granted before this (a 429's Retry-After); 0.0: no penalty.
        self.penalty_until = 0.0
        self.throttled = 0


class Ticket:
    """A place in a token's line for a caller that must not block (see :meth:`Pacer.line_up`).

    Attributes:
        asked: When it lined up (the pacer's clock).
    """

    __slots__ = ("asked",)

    def __init__(self, asked: float) -> None:
        self.asked = asked

    def __repr__(self) -> str:
        return f"Ticket(asked={self.asked!r})"


class Slot:
    """One call's place under the limit, held until :meth:`release` (the answer arrived)
    or :meth:`cancel` (nothing was sent).

    Attributes:
        granted_at: When it was granted (the pacer's clock).
    """

    __slots__ = ("_done", "_pacer", "_token", "granted_at")

    def __init__(self, pacer: Pacer, token: _Token, granted_at: float) -> None:
        self._pacer = pacer
        self._token = token
        self._done = False
        self.granted_at = granted_at

    @property
    def done(self) -> bool:
        """Whether it was released or cancelled."""
        return self._done

    def release(self, wait: float = -1) -> bool:
        """The call's answer arrived (or it failed after sending): the slot's window starts
        now. Idempotent, safe from any thread.

        Args:
            wait: Give up if the pacer's lock stays taken this many seconds (-1: wait), for
                a reaper that may run on a thread that holds it.

        Returns:
            Whether the slot is done (False only when ``wait`` ran out).
        """
        return self._pacer._finish(self, stamp=True, wait=wait)

    def cancel(self) -> None:
        """Give the slot back unused: nothing was sent, so nothing starts a window."""
        self._pacer._finish(self, stamp=False, wait=-1)

    def __repr__(self) -> str:
        return f"Slot(granted_at={self.granted_at!r}, done={self._done})"


class Pacer:
    """Grants at most ``calls`` slots per token in any window of ``seconds`` (see the module).

    Args:
        calls: Calls allowed per window and token (``api_rate_limit[0]``).
        seconds: The window's length (``api_rate_limit[1]``).
        wait: Longest a call waits for a slot (``api_rate_wait``).
        clock: Its ``monotonic`` clock times windows, waits and penalties.
        wait_on: How a waiter blocks (see :data:`WaitOn`).
        counted: Whether its grants, waits and give-ups count in :meth:`metrics` (False for
            the process's own count under a shared pacer, which counts each call once).

    Raises:
        ConfigurationError: ``calls`` < 1, ``seconds`` <= 0 (field ``api_rate_limit``), or
            ``wait`` < 0 (field ``api_rate_wait``); or any of them not a finite number.
    """

    #: Slots are counted in this process: taking one asks no store.
    remote = False

    def __init__(
        self,
        calls: int,
        seconds: float,
        wait: float = 30.0,
        *,
        clock: Clock = SYSTEM_CLOCK,
        wait_on: WaitOn = _wait_on_condition,
        counted: bool = True,
    ) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ConfigurationError(
                f"api_rate_limit calls must be an integer >= 1, got {calls!r}",
                field="api_rate_limit",
            )
        if not _finite(seconds) or seconds <= 0:
            raise ConfigurationError(
                f"api_rate_limit seconds must be a number > 0, got {seconds!r}",
                field="api_rate_limit",
            )
        if not _finite(wait) or wait < 0:
            raise ConfigurationError(
                f"api_rate_wait must be a number >= 0, got {wait!r}", field="api_rate_wait"
            )
        self.calls = calls
        self.seconds = float(seconds)
        self.wait = float(wait)
        self._now = clock.monotonic
        self._wait_on = wait_on
        self._counted = counted
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._tokens: dict[str, _Token] = {}
        self._paced = 0  # slots granted
        self._waited = 0  # of those, granted after waiting
        self._gave_up = 0  # ApiRateLimitedError raised
        self._throttled = 0  # 429s told by penalize()
        self._bucket_counts = [0] * (len(WAIT_BUCKETS) + 1)  # waiters' grants only
        self._wait_sum = 0.0

    # -- taking slots ----------------------------------------------------------------------

    def try_acquire(self, key: str) -> Slot | None:
        """A slot for ``key`` if one is free now and nobody waits for one; never blocks
        (for event loops)."""
        with self._lock:
            token = self._token(key)
            if token.queue or not self._has_room(token):
                return None
            return self._grant(token)

    def acquire(self, key: str, timeout: float | None = None) -> Slot:
        """A slot for ``key``, waiting in line for one if need be.

        Args:
            key: The token's fingerprint (never the token).
            timeout: Waits at most this long, if shorter than the pacer's ``wait``.

        Raises:
            ApiRateLimitedError: No slot within the wait; nothing may be sent.
        """
        slot = self.acquire_unless(key, timeout, None)
        assert slot is not None  # only a give_up gives up without raising
        return slot

    def acquire_unless(
        self, key: str, timeout: float | None, give_up: Callable[[], bool] | None
    ) -> Slot | None:
        """:meth:`acquire`, leaving the line with None once ``give_up()`` is true (looked at
        least every :data:`GIVE_UP_CHECK` seconds): a caller whose token was replaced while
        it waited stops waiting for that token's slots.

        Raises:
            ApiRateLimitedError: No slot within the wait; nothing may be sent.
        """
        with self._lock:
            token = self._token(key)
            if not token.queue and self._has_room(token):
                return self._grant(token)
            limit = self.wait if timeout is None else max(0.0, min(timeout, self.wait))
            return self._wait_in_line(key, token, limit, give_up)

    # -- waiting without blocking (event loops) -----------------------------------------

    def line_up(self, key: str) -> Ticket:
        """Join ``key``'s line without blocking; then :meth:`poll` until a slot comes, and
        :meth:`leave` in every case (a coroutine that waits with ``asyncio.sleep``). Threads
        and tickets share one line, first come first served."""
        ticket = Ticket(self._now())
        with self._lock:
            self._token(key).queue.append(ticket)
        return ticket

    def poll(self, key: str, ticket: Ticket) -> Slot | float:
        """The slot, if ``ticket`` heads the line and there is room now; else the seconds
        to sleep before polling again (until room may come, at most the wait left).

        Raises:
            ApiRateLimitedError: ``wait`` has passed since :meth:`line_up` (out of line).
        """
        with self._lock:
            token = self._token(key)
            if ticket not in token.queue:
                token.queue.append(ticket)  # dropped by after_fork: line up again
            now = self._now()
            free_at = self._free_at(token, now) if token.queue[0] is ticket else math.inf
            if free_at <= now:
                token.queue.popleft()
                slot = self._grant(token, now)
                self._note_wait(now - ticket.asked)
                if token.queue:
                    self._cond.notify_all()
                return slot
            deadline = ticket.asked + self.wait
            if now >= deadline:
                token.queue.remove(ticket)
                if token.queue:
                    self._cond.notify_all()
                self._gave_up += self._counted
                raise self._no_room(key, now - ticket.asked, free_at - now)
            return min(free_at, deadline) - now

    def leave(self, key: str, ticket: Ticket) -> None:
        """Leave ``key``'s line (no-op once served or given up)."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and ticket in token.queue:
                token.queue.remove(ticket)
                if token.queue:
                    self._cond.notify_all()

    def _wait_in_line(
        self, key: str, token: _Token, limit: float, give_up: Callable[[], bool] | None = None
    ) -> Slot | None:
        asked = self._now()
        deadline = asked + limit
        ticket = object()
        token.queue.append(ticket)
        try:
            while True:
                now = self._now()
                free_at = self._free_at(token, now) if token.queue[0] is ticket else math.inf
                if free_at <= now:
                    token.queue.popleft()
                    slot = self._grant(token, now)
                    self._note_wait(now - asked)
                    return slot
                if give_up is not None and give_up():
                    return None
                if now >= deadline:
                    self._gave_up += self._counted
                    raise self._no_room(key, now - asked, free_at - now)
                until = min(deadline, free_at)
                if give_up is not None:
                    until = min(until, now + GIVE_UP_CHECK)
                self._wait_on(self._cond, until - now)
        finally:
            if ticket in token.queue:
                token.queue.remove(ticket)
            if token.queue:
                self._cond.notify_all()  # a new head: it may have room

    def _has_room(self, token: _Token) -> bool:
        if not token.penalty_until and token.held + len(token.ended) < self.calls:
            return True  # room without reading the clock: the hot path
        now = self._now()
        return self._free_at(token, now) <= now

    def _free_at(self, token: _Token, now: float) -> float:
        """When ``token`` next has room (``now`` if it has; inf while every slot is held)."""
        ended, window = token.ended, self.seconds
        while ended and ended[0] + window <= now:
            ended.popleft()
        if token.penalty_until and token.penalty_until <= now:
            token.penalty_until = 0.0
        if token.held + len(ended) < self.calls:
            free = now
        elif token.held < self.calls:
            free = ended[0] + window
        else:
            free = math.inf
        return max(free, token.penalty_until)

    def _grant(self, token: _Token, now: float | None = None) -> Slot:
        slot = Slot(self, token, self._now() if now is None else now)
        token.held += 1
        self._paced += self._counted
        return slot

    def _finish(self, slot: Slot, *, stamp: bool, wait: float) -> bool:
        if slot.done:  # only ever goes False -> True: read without the lock
            return True
        if not self._lock.acquire(timeout=wait):
            return False
        try:
            if slot._done:
                return True
            slot._done = True
            token = slot._token
            token.held -= 1
            if stamp:
                token.ended.append(self._now())
            if token.queue:
                self._cond.notify_all()
            return True
        finally:
            self._lock.release()

    # -- 429s and tokens -------------------------------------------------------------------

    def penalize(self, key: str, retry_after: float | None) -> None:
        """A 429 came back for ``key``'s token: grant none of its slots for ``retry_after``
        seconds (a whole window when the answer did not say), whoever asks.

        Args:
            key: The token's fingerprint.
            retry_after: The answer's ``Retry-After`` in seconds (already capped).
        """
        pause = self.seconds if retry_after is None or not _finite(retry_after) else retry_after
        with self._lock:
            token = self._token(key)
            token.penalty_until = max(token.penalty_until, self._now() + max(0.0, pause))
            token.throttled += 1
            self._throttled += 1

    def forget(self, key: str) -> None:
        """Drop what is kept of ``key``'s token (it is retired) unless calls still hold or
        wait for its slots."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and not token.held and not token.queue:
                del self._tokens[key]

    def _token(self, key: str) -> _Token:
        token = self._tokens.get(key)
        if token is None:
            self._drop_idle()
            token = self._tokens[key] = _Token(self.calls)
        return token

    def _drop_idle(self) -> None:
        """Forget tokens with nothing held, waited for, penalized or in a window (a new token
        is rare: once per token lifetime, so a scan then costs nothing that matters)."""
        now = self._now()
        idle = [
            key
            for key, token in self._tokens.items()
            if not token.held
            and not token.queue
            and token.penalty_until <= now
            and (not token.ended or token.ended[-1] + self.seconds <= now)
        ]
        for key in idle:
            del self._tokens[key]

    def room_in(self, key: str) -> float:
        """Seconds until ``key``'s token may have a slot for one more caller: 0 when it has
        room now; a 429's pause counts whole; each caller already in its line adds one
        slot's share of the window (``seconds / calls``), every slot held one window. A cheap
        estimate (no wait, no I/O) to choose among tokens which one to wait on."""
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return 0.0
            now = self._now()
            free_at = self._free_at(token, now)
            if math.isinf(free_at):  # every slot held: room a window after an answer
                free_at = max(now + self.seconds, token.penalty_until)
            return free_at - now + len(token.queue) * self.seconds / self.calls

    def in_use(self, key: str) -> int:
        """Slots of ``key``'s token held or still in their window (at most ``calls``)."""
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return 0
            self._free_at(token, self._now())
            return token.held + len(token.ended)

    def after_fork(self) -> None:
        """In a forked child: new locks, nothing held (the parent's calls are not ours)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._tokens = {}

    # -- reporting -------------------------------------------------------------------------

    def _no_room(self, key: str, waited: float, free_in: float) -> ApiRateLimitedError:
        return ApiRateLimitedError(
            f"no room to call the API with token {key}: at most {self.calls} calls per "
            f"{self.seconds:g} s (api_rate_limit); waited {waited:.3f} s (api_rate_wait "
            f"{self.wait:g} s); nothing was sent",
            limit=(self.calls, self.seconds),
            waited=waited,
            token_fingerprint=key,
            retry_after=None if math.isinf(free_in) else max(0.0, free_in),
        )

    def _note_wait(self, waited: float) -> None:
        if not self._counted:
            return
        self._waited += 1
        self._bucket_counts[bisect.bisect_left(WAIT_BUCKETS, waited)] += 1
        self._wait_sum += waited

    def metrics(self) -> dict[str, Any]:
        """A copy of the pacer's figures.

        Returns:
            ``calls_paced`` (slots granted), ``calls_waited`` (of those, after waiting),
            ``rate_limited`` (calls that gave up, nothing sent), ``throttled`` (429s told),
            ``throttled_by_token`` (fingerprint -> 429s, for the tokens still kept),
            ``waiting`` (calls in line now), ``tokens`` (tokens kept), ``wait_histogram``
            (seconds waited per granted call, those that did not wait in the first bucket:
            cumulative ``(upper bound, count)`` pairs ending with ``inf``, ``sum``,
            ``count``).
        """
        with self._lock:
            paced, waited = self._paced, self._waited
            counts = list(self._bucket_counts)
            total = self._wait_sum
            by_token = {key: t.throttled for key, t in self._tokens.items() if t.throttled}
            waiting = sum(len(t.queue) for t in self._tokens.values())
            kept = len(self._tokens)
            figures = {"rate_limited": self._gave_up, "throttled": self._throttled}
        counts[0] += paced - waited  # the calls that found room at once waited 0 s
        cumulative, buckets = 0, []
        for bound, count in zip((*WAIT_BUCKETS, math.inf), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return {
            "calls_paced": paced,
            "calls_waited": waited,
            **figures,
            "throttled_by_token": by_token,
            "waiting": waiting,
            "tokens": kept,
            "wait_histogram": {"buckets": buckets, "sum": total, "count": cumulative},
        }

    def __repr__(self) -> str:
        return f"Pacer(calls={self.calls}, seconds={self.seconds:g}, wait={self.wait:g})"


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
