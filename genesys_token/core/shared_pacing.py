"""Pacing shared by processes: the slots of each token counted in a store's ``SlotBackend``.

:class:`SharedPacer` has the interface of :class:`~genesys_token.core.pacing.Pacer` and keeps
its rule (a slot counts from its grant until its answer, then for a window), but counts the
slots in a backend that every process sharing the store sees (``RedisStore.slots()``: a
fleet; ``FileStore.slots()``: one machine). Within the process, callers queue first come,
first served; the head of a token's line asks the backend, which grants a slot now, reserves
one at the moment room appears (the caller then sleeps until it and sends; the next caller
in line asks at once), or, when nobody can know that moment yet (it waits on a call in
flight), answers the earliest moment room can come: the head asks again then (after
:data:`POLL_SLICE` once that moment has passed), or as soon as one of this process's calls
of that token ends. A caller that finds no room within its
wait gets :class:`~genesys_token.errors.ApiRateLimitedError` with nothing sent. A 429 told to
any process (:meth:`SharedPacer.penalize`) holds that token's slots for every process; slots
reserved before it still go out at their moment (at most ``calls`` of them).

**Every call takes a slot of this process's own count first** (an in-process
:class:`~genesys_token.core.pacing.Pacer` of the same limit), then the shared one: a process
never sends more than the limit by itself, whatever the store says (a Redis restarted empty
forgets every slot and answers as if none were taken: the fleet may then exceed the limit
for one window, each process never), and its count is right the moment the store fails.

If the backend fails (Redis down, a directory that cannot be written), pacing goes on in this
process alone with that in-process count:
one WARNING per outage, one INFO when the backend answers again (it is asked again every
:data:`RETRY_BACKEND` seconds). Nothing fails because of it. Slots granted meanwhile are not
known to the other processes: during an outage each process keeps the limit on its own.
"""

from __future__ import annotations

import bisect
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ApiRateLimitedError, GenesysTokenError
from .clock import SYSTEM_CLOCK, Clock
from .pacing import GIVE_UP_CHECK, WAIT_BUCKETS, Pacer, Pacing, Slot, Ticket, WaitOn

if TYPE_CHECKING:  # stores sit above core: only their protocol's shape is needed here
    from ..stores.slots import Answer, SlotBackend

__all__ = ["DEFAULT_HOLD", "POLL_SLICE", "RETRY_BACKEND", "SharedPacer", "SharedSlot", "make_pacer"]

log = logging.getLogger("genesys_token.pacing")

#: How long a line's head sleeps before asking the backend again when room may come at any
#: moment (it waits on a call in flight): how soon an answer in another process is noticed.
POLL_SLICE = 0.05
#: Shortest sleep between two questions to the backend: never a busy loop.
MIN_PAUSE = 0.001
#: During an outage of the backend, it is asked again after this many seconds.
RETRY_BACKEND = 1.0
#: How long a granted slot is held at most before it counts as answered anyway. The service
#: counts a call when it *arrives*: a slot held ``hold`` then counted a window covers every
#: call that arrived within ``hold`` of its grant, however long its answer takes, so ``hold``
#: must exceed a request's way there (connect and send: the adapters' connect timeouts are
#: about 3 s), not its answer. The slots of a process killed mid-call come back ``hold +
#: window`` after their grant (60 s held a fleet without calls for a minute).
DEFAULT_HOLD = 15.0
#: 429s are counted per token for this many of the latest tokens (a label each in the
#: Prometheus export: retired tokens must not grow it for ever).
KEPT_TOKENS = 64


def _wait_on_condition(cond: threading.Condition, timeout: float) -> object:
    return cond.wait(min(timeout, threading.TIMEOUT_MAX))


class SharedSlot:
    """One call's place under the limit, counted in the shared backend; the same interface
    as :class:`~genesys_token.core.pacing.Slot`.

    Attributes:
        granted_at: When it was granted (the pacer's clock; after a reservation's sleep).
    """

    __slots__ = ("_done", "_id", "_key", "_local", "_pacer", "granted_at")

    def __init__(
        self, pacer: SharedPacer, key: str, slot_id: str, granted_at: float, local: Slot
    ) -> None:
        self._pacer = pacer
        self._key = key
        self._id = slot_id
        self._local = local  # the same call in this process's own count (see the module)
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
            wait: Give up if the pacer's lock stays taken this many seconds (-1: wait).

        Returns:
            Whether the slot is done (False only when ``wait`` ran out).
        """
        return self._pacer._finish(self, stamp=True, wait=wait)

    def cancel(self) -> None:
        """Give the slot back unused: nothing was sent, so nothing starts a window."""
        self._pacer._finish(self, stamp=False, wait=-1)

    def __repr__(self) -> str:
        return f"SharedSlot(granted_at={self.granted_at!r}, done={self._done})"


#: What a pacer hands out: its own slot, or the in-process fallback's during an outage.
AnySlot = Slot | SharedSlot


class _Booking(Ticket):
    """A place in a token's lines for a caller that must not block: first in this process's
    own line (``local``, until it holds ``held``), then in the shared one, with what the
    backend answered it: a slot reserved ahead (``slot_id``, ``starts_at``) or when to ask
    again (``ask_at``)."""

    __slots__ = ("ask_at", "held", "local", "slot_id", "starts_at")

    def __init__(self, asked: float, local: Ticket) -> None:
        super().__init__(asked)
        self.ask_at = asked
        self.slot_id: str | None = None
        self.starts_at = 0.0
        self.local = local
        self.held: Slot | None = None


class _BackendFailed:
    """What a shared wait answers when the backend failed: the caller's local slot serves."""


_FAILED = _BackendFailed()


class SharedPacer:
    """Grants at most ``calls`` slots per token in any window of ``seconds``, counted across
    every process sharing ``backend`` (see the module).

    Args:
        calls: Calls allowed per window and token (``api_rate_limit[0]``).
        seconds: The window's length (``api_rate_limit[1]``).
        wait: Longest a call waits for a slot (``api_rate_wait``).
        backend: Where the slots are counted (``store.slots()``).
        clock: Its ``monotonic`` clock times this process's waits (the backend keeps its
            own clock for the slots).
        hold: Seconds a slot counts as held at most (a process that dies holding slots
            frees them ``hold + seconds`` later).
        poll: Longest sleep between two questions to the backend while the moment of room
            is unknown.
        retry_backend: Seconds between tries of a backend that failed.
        wait_on: How a waiter blocks on the pacer's condition (tests pass their own).
        sleep: How a caller sleeps until its reserved slot starts.

    Raises:
        ConfigurationError: As :class:`~genesys_token.core.pacing.Pacer`.
    """

    #: Taking a slot asks the backend (one round trip): see ``Pacing.remote``.
    remote = True

    def __init__(
        self,
        calls: int,
        seconds: float,
        wait: float = 30.0,
        *,
        backend: SlotBackend,
        clock: Clock = SYSTEM_CLOCK,
        hold: float = DEFAULT_HOLD,
        poll: float = POLL_SLICE,
        retry_backend: float = RETRY_BACKEND,
        wait_on: WaitOn = _wait_on_condition,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        # Validates; the process's own count (and all there is during an outage). Its grants
        # are not counted in metrics: this pacer counts each call once, at its final grant.
        self._local = Pacer(calls, seconds, wait, clock=clock, counted=False)
        self.calls = self._local.calls
        self.seconds = self._local.seconds
        self.wait = self._local.wait
        self._backend = backend
        self._now = clock.monotonic
        self._hold = float(hold)
        self._poll = float(poll)
        self._wait_on = wait_on
        self._sleep = sleep
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queues: dict[str, deque[object]] = {}
        self._held: dict[str, int] = {}
        self._outages = _Outages(clock.monotonic, float(retry_backend))
        self._figures = _Figures()  # under self._lock
        self._loop_lines = _LoopLines(self)

    # -- taking slots ----------------------------------------------------------------------

    def try_acquire(self, key: str) -> AnySlot | None:
        """A slot for ``key`` if one is free now and nobody here waits for one (one
        question to the backend; none while it is down)."""
        local = self._local.try_acquire(key)
        if local is None or not self._shared_now():
            return self._local_final(local, None)
        with self._lock:
            if self._queues.get(key):
                local.cancel()
                return None
        slot_id = secrets.token_hex(8)
        answer = self._ask(key, slot_id, 0.0)
        if answer is None:  # the backend failed: this process's own count serves
            return self._local_final(local, None)
        if not answer.granted or answer.seconds > 0:
            if answer.granted:  # reserved ahead although asked for now: give it back
                self._cancel_quietly(key, slot_id)
            local.cancel()
            return None
        return self._granted(key, slot_id, local, waited=None)

    def acquire(self, key: str, timeout: float | None = None) -> AnySlot:
        """A slot for ``key``, waiting in line for one if need be.

        Args:
            key: The token's fingerprint (never the token).
            timeout: Waits at most this long, if shorter than the pacer's ``wait``.

        Raises:
            ApiRateLimitedError: No slot within the wait; nothing may be sent.
        """
        slot = self.acquire_unless(key, timeout, None)
        assert slot is not None  # only a give_up condition makes it None
        return slot

    def acquire_unless(
        self, key: str, timeout: float | None, give_up: Callable[[], bool] | None
    ) -> AnySlot | None:
        """:meth:`acquire`, leaving the line with None once ``give_up()`` is true (looked at
        least every :data:`~genesys_token.core.pacing.GIVE_UP_CHECK` seconds): a caller whose
        token was replaced while it waited stops waiting for that token's slots.

        Raises:
            ApiRateLimitedError: No slot within the wait; nothing may be sent.
        """
        limit = self.wait if timeout is None else max(0.0, min(timeout, self.wait))
        asked = self._now()
        # This process's own calls first: never more than the limit, whatever the store says
        # (a Redis restarted empty), and its count is right when the store fails.
        try:
            local = self._local.acquire_unless(key, limit, give_up)
        except ApiRateLimitedError:
            self._note_gave_up()
            raise
        if local is None or not self._shared_now():
            return self._local_final(local, self._now() - asked)
        try:
            got = self._shared_acquire(key, asked, asked + limit, give_up, local)
        except BaseException:
            local.cancel()
            raise
        if got is None:
            local.cancel()
        if isinstance(got, _BackendFailed):
            return self._local_final(local, self._now() - asked)
        return got

    def _local_final(self, local: Slot | None, waited: float | None) -> Slot | None:
        """``local`` handed out alone (no store now): counted here, once."""
        return None if local is None else self._count_alone(local, waited)

    def _count_alone(self, local: Slot, waited: float | None) -> Slot:
        with self._lock:
            self._figures.granted(waited if waited is not None and waited > MIN_PAUSE else None)
        return local

    def _note_gave_up(self) -> None:
        with self._lock:
            self._figures.gave_up += 1

    def _shared_acquire(
        self,
        key: str,
        asked: float,
        deadline: float,
        give_up: Callable[[], bool] | None,
        local: Slot,
    ) -> SharedSlot | _BackendFailed | None:
        ticket = object()
        with self._lock:
            queue = self._queues.setdefault(key, deque())
            queue.append(ticket)
        try:
            return self._wait_in_line(key, queue, ticket, asked, deadline, give_up, local)
        finally:
            with self._lock:
                if ticket in queue:
                    queue.remove(ticket)
                if queue:
                    self._cond.notify_all()  # a new head: it asks at once
                elif self._queues.get(key) is queue:
                    del self._queues[key]

    def _wait_in_line(
        self,
        key: str,
        queue: deque[object],
        ticket: object,
        asked: float,
        deadline: float,
        give_up: Callable[[], bool] | None,
        local: Slot,
    ) -> SharedSlot | _BackendFailed | None:
        # In this process's line before, in the shared one, or for room: a wait, even short.
        waited = self._now() - asked > MIN_PAUSE
        slice_ = math.inf if give_up is None else GIVE_UP_CHECK
        while True:
            with self._lock:
                while queue[0] is not ticket:
                    waited = True
                    now = self._now()
                    if now >= deadline:
                        raise self._no_room(key, now - asked, None)
                    if give_up is not None and give_up():
                        return None
                    self._wait_on(self._cond, min(deadline - now, slice_))
            if give_up is not None and give_up():
                return None
            now = self._now()
            slot_id = secrets.token_hex(8)
            answer = self._ask(key, slot_id, deadline - now)
            if answer is None:  # the backend failed: this process's own count serves
                with self._lock:
                    queue.remove(ticket)
                    self._cond.notify_all()
                return _FAILED
            if answer.granted:
                with self._lock:
                    queue.remove(ticket)  # the next in line asks while this one sleeps
                    self._cond.notify_all()
                return self._start(key, slot_id, answer.seconds, asked, waited, local)
            now = self._now()
            if now >= deadline:
                raise self._no_room(key, now - asked, answer.seconds)
            waited = True
            self._pause(answer.seconds, now, deadline, give_up)
            if (later := self._now()) >= deadline:  # asking again could grant nothing now
                free_in = max(0.0, answer.seconds - (later - now))
                raise self._no_room(key, later - asked, free_in)

    def _pause(
        self, earliest: float, now: float, deadline: float, give_up: Callable[[], bool] | None
    ) -> None:
        """The head's sleep before it asks again. ``earliest`` > 0: room comes no sooner,
        whatever ends meanwhile, so it sleeps that long (cut short once ``give_up()``, looked
        at every :data:`~genesys_token.core.pacing.GIVE_UP_CHECK` seconds). 0: room may come
        any moment (a call in flight): it sleeps a slice, or until a call of this process
        ends (its release rides on the next question)."""
        with self._lock:
            if earliest <= 0:
                self._wait_on(self._cond, min(self._poll, deadline - now))
                return
            until = min(now + max(MIN_PAUSE, earliest), deadline)
            while (now := self._now()) < until:
                if give_up is not None and give_up():
                    return
                slice_ = until - now if give_up is None else min(until - now, GIVE_UP_CHECK)
                self._wait_on(self._cond, slice_)

    def _start(
        self, key: str, slot_id: str, seconds: float, asked: float, waited: bool, local: Slot
    ) -> SharedSlot:
        """Sleep until a reserved slot starts; the slot goes back if the sleep is cut.
        ``waited``: whether the caller already waited in line or for room."""
        if seconds > 0:
            try:
                self._sleep(seconds)
            except BaseException:
                self._cancel_quietly(key, slot_id)
                raise
        if not waited and seconds <= 0:
            return self._granted(key, slot_id, local, waited=None)
        return self._granted(key, slot_id, local, waited=self._now() - asked)

    # -- waiting without blocking (event loops): see _LoopLines --------------------------

    def line_up(self, key: str) -> Ticket:
        """Join ``key``'s line without blocking (see :meth:`_LoopLines.line_up`)."""
        return self._loop_lines.line_up(key)

    def poll(self, key: str, ticket: Ticket) -> AnySlot | float:
        """The slot, or seconds to sleep (see :meth:`_LoopLines.poll`).

        Raises:
            ApiRateLimitedError: ``wait`` has passed since :meth:`line_up` (out of line).
        """
        return self._loop_lines.poll(key, ticket)

    def leave(self, key: str, ticket: Ticket) -> None:
        """Leave ``key``'s lines (see :meth:`_LoopLines.leave`)."""
        self._loop_lines.leave(key, ticket)

    def _leave_queue(self, key: str, ticket: object) -> None:
        with self._lock:
            queue = self._queues.get(key)
            if queue is None or ticket not in queue:
                return
            queue.remove(ticket)
            if queue:
                self._cond.notify_all()  # a new head: it asks at once
            else:
                del self._queues[key]

    def _granted(self, key: str, slot_id: str, local: Slot, *, waited: float | None) -> SharedSlot:
        now = self._now()
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
            self._figures.granted(waited)
        return SharedSlot(self, key, slot_id, now, local)

    def _finish(self, slot: SharedSlot, *, stamp: bool, wait: float) -> bool:
        if slot.done:  # only ever goes False -> True: read without the lock
            return True
        # This process's count first (idempotent: a reaper that gives up comes back).
        if stamp and not slot._local.release(wait):
            return False
        if not stamp:
            slot._local.cancel()
        if not self._lock.acquire(timeout=wait):
            return False
        try:
            if slot._done:
                return True
            slot._done = True
            held = self._held.get(slot._key, 1) - 1
            if held > 0:
                self._held[slot._key] = held
            else:
                self._held.pop(slot._key, None)
            if self._queues.get(slot._key):
                self._cond.notify_all()  # the head may learn of room sooner
        finally:
            self._lock.release()
        try:
            if stamp:
                self._backend.release(slot._key, slot._id, window=self.seconds)
            else:
                self._backend.cancel(slot._key, slot._id)
        except Exception as exc:  # noqa: BLE001 - a backend failure never fails a call
            # Our backends keep what they cannot write (see SlotBackend.release); another
            # backend's slot counts out its lease.
            log.debug("could not give a paced slot back (%s)", _what(exc))
        return True

    def _cancel_quietly(self, key: str, slot_id: str) -> None:
        try:
            self._backend.cancel(key, slot_id)
        except Exception as exc:  # noqa: BLE001 - a backend failure never fails a call
            log.debug("could not cancel a paced slot (%s)", _what(exc))

    # -- the backend and its outages -------------------------------------------------------

    def _shared_now(self) -> bool:
        return self._outages.usable()

    def _ask(self, key: str, slot_id: str, max_wait: float) -> Answer | None:
        """The backend's answer; None when it failed (and the outage is noted)."""
        return self._outages.run(
            lambda: self._backend.acquire(
                key,
                slot_id,
                calls=self.calls,
                window=self.seconds,
                hold=self._hold,
                max_wait=max(0.0, max_wait),
            )
        )

    # -- 429s and tokens -------------------------------------------------------------------

    def penalize(self, key: str, retry_after: float | None) -> None:
        """A 429 came back for ``key``'s token: no slot of it starts for ``retry_after``
        seconds (a window when the answer did not say), in any process.

        Args:
            key: The token's fingerprint.
            retry_after: The answer's ``Retry-After`` in seconds (already capped).
        """
        self._local.penalize(key, retry_after)
        finite = retry_after is not None and math.isfinite(retry_after)
        pause = max(0.0, retry_after) if finite and retry_after is not None else self.seconds
        with self._lock:
            self._figures.throttled(key)
        if self._shared_now():
            self._outages.run(lambda: self._backend.penalize(key, pause))

    def forget(self, key: str) -> None:
        """Drop what is kept of ``key``'s token (it is retired) unless calls here still
        hold or wait for its slots."""
        self._local.forget(key)
        with self._lock:
            if not self._held.get(key) and not self._queues.get(key):
                self._figures.by_token.pop(key, None)

    def room_in(self, key: str) -> float:
        """Seconds until ``key``'s token may have a slot, as far as this process knows (its
        own count and the 429s it saw; no question to the backend): see
        :meth:`~genesys_token.core.pacing.Pacer.room_in`."""
        return self._local.room_in(key)

    def in_use(self, key: str) -> int:
        """Slots of ``key``'s token counted now by every process (this process's own
        count while the backend is down)."""
        if self._shared_now():
            count = self._outages.run(lambda: self._backend.in_use(key))
            if count is not None:
                return count
        return self._local.in_use(key)

    def after_fork(self) -> None:
        """In a forked child: new locks, nothing held (the parent's calls are not ours)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queues = {}
        self._held = {}
        self._local.after_fork()
        self._outages.after_fork()
        self._backend.after_fork()

    # -- reporting -------------------------------------------------------------------------

    def _no_room(self, key: str, waited: float, free_in: float | None) -> ApiRateLimitedError:
        with self._lock:
            self._figures.gave_up += 1
        return ApiRateLimitedError(
            f"no room to call the API with token {key}: at most {self.calls} calls per "
            f"{self.seconds:g} s (api_rate_limit) across the processes sharing its store; "
            f"waited {waited:.3f} s (api_rate_wait {self.wait:g} s); nothing was sent",
            limit=(self.calls, self.seconds),
            waited=waited,
            token_fingerprint=key,
            retry_after=free_in,
        )

    def metrics(self) -> dict[str, Any]:
        """The pacer's figures, the in-process fallback's included.

        Returns:
            What :meth:`~genesys_token.core.pacing.Pacer.metrics` returns, plus ``shared``
            (whether the backend is in use now) and ``store_outages`` (outages seen).
        """
        local = self._local.metrics()
        with self._lock:
            waiting = sum(len(q) for q in self._queues.values())
            kept = len(set(self._held) | set(self._queues))
            figures = self._figures.merged(local, waiting=waiting, kept=kept)
        return {**figures, "shared": not self._outages.down, "store_outages": self._outages.count}

    def __repr__(self) -> str:
        return (
            f"SharedPacer(calls={self.calls}, seconds={self.seconds:g}, wait={self.wait:g}, "
            f"backend={self._backend!r})"
        )


class _LoopLines:
    """The lines of :class:`SharedPacer` for callers that must not block (event loops): a
    ticket waits in this process's own line, then in the shared one, and the caller sleeps
    with ``asyncio.sleep`` between polls. Part of the pacer (same module, its state)."""

    def __init__(self, pacer: SharedPacer) -> None:
        self._pacer = pacer

    def line_up(self, key: str) -> Ticket:
        """Join ``key``'s line without blocking; then :meth:`poll` until a slot comes, and
        :meth:`leave` in every case. Threads and tickets share the lines, first come first
        served: this process's own first, then the shared one (as :meth:`acquire_unless`)."""
        pacer = self._pacer
        local = pacer._local.line_up(key)
        if not pacer._shared_now():
            return local
        return _Booking(local.asked, local)

    def poll(self, key: str, ticket: Ticket) -> AnySlot | float:
        """The slot, once ``ticket`` holds one of this process's count and the backend grants
        one; else the seconds to sleep before polling again. The head of the shared line asks
        the backend at most once per answer it got (a reservation, or the earliest moment of
        room), not at every poll.

        Raises:
            ApiRateLimitedError: ``wait`` has passed since :meth:`line_up` (out of line).
        """
        pacer = self._pacer
        if not isinstance(ticket, _Booking):  # lined up during an outage: local alone
            alone = self._local_poll(key, ticket)
            if isinstance(alone, float):
                return alone
            return pacer._count_alone(alone, _waited(pacer._now(), ticket.asked))
        if ticket.held is None:
            got = self._local_poll(key, ticket.local)
            if isinstance(got, float):
                return got
            ticket.held = got
            if not pacer._shared_now():
                held = _hand_over_ticket(ticket)
                return pacer._count_alone(held, _waited(pacer._now(), ticket.asked))
            with pacer._lock:
                pacer._queues.setdefault(key, deque()).append(ticket)
        now = pacer._now()
        if ticket.slot_id is not None:  # reserved: it starts at its moment
            if now < ticket.starts_at:
                return ticket.starts_at - now
            slot_id, ticket.slot_id = ticket.slot_id, None
            held = _hand_over_ticket(ticket)
            return pacer._granted(key, slot_id, held, waited=_waited(now, ticket.asked))
        deadline = ticket.asked + pacer.wait
        with pacer._lock:
            queue = pacer._queues.setdefault(key, deque())
            if ticket not in queue:
                queue.append(ticket)  # dropped by after_fork: line up again
            head = queue[0] is ticket
        if now >= deadline:
            pacer._leave_queue(key, ticket)
            raise pacer._no_room(key, now - ticket.asked, None)
        if not head:
            return min(pacer._poll, deadline - now)
        if now < ticket.ask_at:  # the backend's last answer said: no room before then
            return min(ticket.ask_at, deadline) - now
        slot_id = secrets.token_hex(8)
        answer = pacer._ask(key, slot_id, deadline - now)
        if answer is None:  # the backend failed: this process's own count serves
            pacer._leave_queue(key, ticket)
            return pacer._count_alone(_hand_over_ticket(ticket), _waited(now, ticket.asked))
        if answer.granted:
            pacer._leave_queue(key, ticket)  # the next in line asks while this one sleeps
            if answer.seconds > 0:
                ticket.slot_id, ticket.starts_at = slot_id, now + answer.seconds
                return answer.seconds
            held = _hand_over_ticket(ticket)
            return pacer._granted(key, slot_id, held, waited=_waited(now, ticket.asked))
        pause = max(MIN_PAUSE, answer.seconds) if answer.seconds > 0 else pacer._poll
        ticket.ask_at = now + pause
        return min(ticket.ask_at, deadline) - now

    def _local_poll(self, key: str, ticket: Ticket) -> Slot | float:
        """The process's own line's answer; its give-up counted here (it counts nothing)."""
        try:
            got = self._pacer._local.poll(key, ticket)
        except ApiRateLimitedError:
            self._pacer._note_gave_up()
            raise
        return float(got) if isinstance(got, float | int) else got

    def leave(self, key: str, ticket: Ticket) -> None:
        """Leave ``key``'s lines (a no-op once served or given up); a slot held or reserved
        for a ticket that leaves before it is served goes back unused."""
        pacer = self._pacer
        if not isinstance(ticket, _Booking):
            pacer._local.leave(key, ticket)
            return
        pacer._local.leave(key, ticket.local)
        pacer._leave_queue(key, ticket)
        if ticket.slot_id is not None:
            slot_id, ticket.slot_id = ticket.slot_id, None
            pacer._cancel_quietly(key, slot_id)
        if ticket.held is not None:
            ticket.held.cancel()
            ticket.held = None


def _what(exc: BaseException) -> object:
    """A backend failure as logged: our own errors' messages, others' type only."""
    return exc if isinstance(exc, GenesysTokenError) else type(exc).__name__


def _waited(now: float, asked: float) -> float | None:
    """How long a call waited for its slot, None when it did not wait (a millisecond or less:
    the time it takes to ask)."""
    waited = now - asked
    return waited if waited > MIN_PAUSE else None


def _hand_over_ticket(ticket: _Booking) -> Slot:
    """The ticket's local slot, now the caller's (``leave`` no longer cancels it)."""
    held, ticket.held = ticket.held, None
    assert held is not None
    ticket.local = Ticket(ticket.asked)  # served: leaving its local line is a no-op
    return held


class _Figures:
    """The shared pacer's counts (kept under its lock), merged with its fallback's."""

    def __init__(self) -> None:
        self.paced = 0
        self.waited = 0
        self.gave_up = 0
        self.throttled_total = 0
        self.by_token: dict[str, int] = {}
        self.wait_sum = 0.0
        self.bucket_counts = [0] * (len(WAIT_BUCKETS) + 1)  # waiters' grants only

    def granted(self, waited: float | None) -> None:
        self.paced += 1
        if waited is not None and waited > 0:
            self.waited += 1
            self.wait_sum += waited
            self.bucket_counts[bisect.bisect_left(WAIT_BUCKETS, waited)] += 1

    def throttled(self, key: str) -> None:
        self.by_token[key] = self.by_token.pop(key, 0) + 1  # moved to the newest end
        while len(self.by_token) > KEPT_TOKENS:
            del self.by_token[next(iter(self.by_token))]
        self.throttled_total += 1

    def merged(self, local: dict[str, Any], *, waiting: int, kept: int) -> dict[str, Any]:
        """Each call counted once, at its final grant (shared, or local alone), here; the
        process's own count under it counts nothing (``local``: zeros but for ``waiting``
        and ``tokens``)."""
        counts = list(self.bucket_counts)
        counts[0] += self.paced - self.waited  # granted at once: waited 0 s
        buckets, mine = [], 0
        for (bound, count), own in zip(local["wait_histogram"]["buckets"], counts, strict=True):
            mine += own
            buckets.append((bound, count + mine))
        return {
            "calls_paced": local["calls_paced"] + self.paced,
            "calls_waited": local["calls_waited"] + self.waited,
            "rate_limited": local["rate_limited"] + self.gave_up,
            "throttled": self.throttled_total,
            "throttled_by_token": dict(self.by_token),
            "waiting": local["waiting"] + waiting,
            "tokens": max(local["tokens"], kept),
            "wait_histogram": {
                "buckets": buckets,
                "sum": local["wait_histogram"]["sum"] + self.wait_sum,
                "count": buckets[-1][1] if buckets else 0,
            },
        }


T = TypeVar("T")


class _Outages:
    """Whether the backend is usable: one WARNING when it fails, one INFO when it answers
    again, and between the two it is tried again every ``retry`` seconds."""

    def __init__(self, now: Callable[[], float], retry: float) -> None:
        self._now = now
        self._retry = retry
        self._lock = threading.Lock()
        self.down = False
        self.count = 0
        self._retry_at = 0.0

    def usable(self) -> bool:
        """It works, or it failed long enough ago to be tried again."""
        return not self.down or self._now() >= self._retry_at

    def run(self, call: Callable[[], T]) -> T | None:
        """``call()``; None when the backend failed (noted, warned about once)."""
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - a backend's failure must not fail a call
            self._failed(exc)
            return None
        if self.down:
            with self._lock:
                back, self.down = self.down, False
            if back:
                log.info("the pacing store answers again: API calls are paced with the fleet")
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self.down
            self.down = True
            self._retry_at = self._now() + self._retry
            self.count += first
        if first:
            log.warning(
                "the pacing store failed (%s): API calls are paced in this process alone "
                "until it answers again",
                _what(exc),
            )

    def after_fork(self) -> None:
        """In a forked child: a new lock."""
        self._lock = threading.Lock()


def make_pacer(
    limit: tuple[int, float] | None, wait: float, store: object, clock: Clock
) -> Pacing | None:
    """The one pacer of a manager with ``api_rate_limit`` (``limit``), None without: the
    slots are shared with every process using ``store`` when it offers them (``RedisStore``,
    ``FileStore``: ``store.slots()``), else counted in this process."""
    from ..stores.slots import SlotBackend  # at run time only: stores sit above core

    if limit is None:
        return None
    calls, seconds = limit
    slots = getattr(store, "slots", None)
    backend = slots() if callable(slots) else None
    if isinstance(backend, SlotBackend):
        return SharedPacer(calls, seconds, wait, backend=backend, clock=clock)
    return Pacer(calls, seconds, wait, clock=clock)
