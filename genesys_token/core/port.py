"""What the adapters (GenesysAuth, the httpx auths, the official-SDK bridge) need of a
manager beyond its public API: counted uses, a 401's replacement, the replay counter.

With ``tokens=N`` it serves every lane (:mod:`.lanes`): a use takes the turn's lane, or, when
paced in this process, the first lane from the turn whose token has room now, so N tokens
give N times the calls; with no room now, the caller waits on the token that has room soonest
as far as this process knows (a token held by a 429 waits last); a turn without a usable
token is served by another lane's (see ``Lanes.serve``); a 401 replaces the token of the
lane that holds it.

It is internal: adapters reach it with :func:`genesys_token.manager.adapter_port`, users never
need it. It holds the manager's parts, never the manager (a manager dropped without
``close()`` must still be collected).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import ApiRateLimitedError, ManagerClosedError
from ..http.answers import parse_retry_after
from ..observability.events import API_RATE_LIMITED, API_THROTTLED
from ..observability.metrics import Metrics
from ..token import Token, fingerprint_of
from .lanes import Lane, Lanes
from .pacing import PaceSlot, Pacing, Ticket
from .schedule import Cell
from .single_flight import Replacing
from .uses import InFlight, UseGate, reap_pending

#: Seconds a lane whose first token is being fetched is taken to need before it has room
#: (about one token request; its slots are all free): a caller with no room now waits for
#: that fetch rather than for a token with no room sooner (a 429's pause, a full window),
#: but no longer than another token needs for room, nor than its ``api_rate_wait``.
FETCH_GUESS = 0.1

#: Emits an event: ``(event type, token fingerprint, data)``; never given a token.
Emit = Callable[[str, str, dict[str, Any]], None]


class Line:
    """A place in the line for a slot of one token (of ``lane``), for a caller that must
    not block."""

    __slots__ = ("cell", "lane", "ticket")

    def __init__(self, cell: Cell, ticket: Ticket, lane: Lane) -> None:
        self.cell = cell
        self.ticket = ticket
        self.lane = lane

    def __repr__(self) -> str:
        return f"Line(ticket={self.ticket!r})"


class AdapterPort:
    """Counted uses and 401 replacement of one manager, over all its tokens.

    Args:
        lanes: The manager's tokens (each lane's refresher owns its token's state).
        gate: The manager's counted uses.
        metrics: The manager's counters.
        now: The manager's monotonic clock.
        pacer: The manager's pacer (``api_rate_limit``), or None: nothing is paced.
        emit: Emits the pacing events (``API_RATE_LIMITED``, ``API_THROTTLED``).
    """

    __slots__ = ("_emit", "_gate", "_lanes", "_metrics", "_now", "pacer")

    def __init__(
        self,
        lanes: Lanes,
        gate: UseGate,
        metrics: Metrics,
        now: Callable[[], float],
        pacer: Pacing | None = None,
        emit: Emit | None = None,
    ) -> None:
        self._lanes = lanes
        self._gate = gate
        self._metrics = metrics
        self._now = now
        #: The pacer every counted use takes a slot from (None: not paced).
        self.pacer = pacer
        self._emit = emit

    def begin_use(self, timeout: float | None = None, *, paced: bool = True) -> InFlight:
        """Count one use of the current token and return it (end it with
        :meth:`InFlight.end`, from any thread). With pacing, the use holds a slot of its
        token (released when it ends): the caller waits for one, in line.

        Args:
            timeout: Bounds the wait for a token and for a slot together (default: the
                token wait of ``get_token``, and ``api_rate_wait`` for the slot).
            paced: False for a use that is not one API call (``TokenManager.in_flight``: a
                WebSocket held for minutes must not hold a slot all that time).

        Raises:
            ManagerClosedError: The manager was closed.
            ApiRateLimitedError: No slot within the wait; nothing counted, nothing to send.
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        pacer = self.pacer if paced else None
        deadline = None if timeout is None or pacer is None else self._now() + timeout
        joined = 0.0  # seconds spent waiting for a fetch instead of a slot (pacing waits)
        turn = self._lanes.next()
        if turn.flight.cell is None and self._lanes.count > 1:
            turn.refresher.prefetch()  # its first token, meanwhile another lane's serves
        while True:
            lane = turn
            if pacer is not None and self._lanes.count > 1:
                if not pacer.remote:
                    use = self._with_room(pacer, turn)
                    if use is not None:
                        return use
                lane = self._soonest(pacer, turn)  # a local estimate: no round trip
            cell = lane.flight.cell
            if cell is None or not self._now() < cell.refresh_at:
                # The manager's get_token, slow path (another lane's token if the turn has none).
                left = timeout if deadline is None else self._left(deadline)
                within = None
                if pacer is not None and cell is None:
                    within = self._join_within(pacer, lane, deadline, joined)
                began = self._now()
                lane, cell = self._lanes.serve(
                    lane, left, join=pacer is not None, join_within=within
                )
                if within is not None:
                    joined += self._now() - began
            slot = None
            if pacer is not None:
                slot = self._slot(pacer, lane, cell, self._slot_wait(pacer, deadline, joined))
                if slot is None:
                    continue  # replaced or no longer usable while this caller waited: serve again
                if not cell.usable(self._now()):
                    slot.cancel()  # it expired as the slot came: nothing was sent
                    continue
            use = self._gate.begin(cell.access_token, lane.is_current, slot)
            if use is not None:
                return use
            if slot is not None:
                slot.cancel()  # the token was swapped while we waited: nothing was sent

    def _with_room(self, pacer: Pacing, turn: Lane) -> InFlight | None:
        """A use of the first lane from ``turn`` whose token is fresh and has a slot free
        now (no wait, no I/O); None when none has (then see :meth:`_soonest`)."""
        now = self._now()
        for lane in self._lanes.starting_at(turn):
            cell = lane.flight.cell
            if cell is None or not now < cell.refresh_at:
                continue
            slot = pacer.try_acquire(cell.token.fingerprint)
            if slot is None:
                continue
            use = self._gate.begin(cell.access_token, lane.is_current, slot)
            if use is not None:
                return use
            slot.cancel()  # swapped this instant: nothing was sent
        return None

    def _soonest(self, pacer: Pacing, turn: Lane, usable: bool = False) -> Lane:
        """The lane to wait on: the one from ``turn`` whose token has room soonest as far as
        this process knows (``Pacing.room_in``: a 429's pause, its slots, its line), ties to
        the earliest from the turn so waiters spread; among fresh tokens (``usable``: usable
        ones, for a caller that must not block), and a lane whose first token is being
        fetched counts as :data:`FETCH_GUESS`; ``turn`` when none is."""
        now = self._now()
        best, best_in = turn, math.inf
        for lane in self._lanes.starting_at(turn):
            cell = lane.flight.cell
            if cell is None:
                if usable or not lane.flight.running:
                    continue
                room_in = FETCH_GUESS  # its first token is on its way, its room is whole
            elif not (cell.usable(now) if usable else now < cell.refresh_at):
                continue
            else:
                room_in = pacer.room_in(cell.token.fingerprint)
            if room_in < best_in:
                best, best_in = lane, room_in
                if room_in <= 0.0:
                    break
        return best

    def _join_within(
        self, pacer: Pacing, lane: Lane, deadline: float | None, joined: float
    ) -> float | None:
        """How long a paced caller may wait for ``lane``'s first token: no longer than until
        another lane's fresh token has room (as far as this process knows), nor than its
        pacing wait left (``api_rate_wait`` less what it joined already, the ``timeout``);
        None when no other lane holds a fresh token (then it is a wait for any token)."""
        now = self._now()
        held_in = math.inf
        for other in self._lanes.all:
            cell = other.flight.cell
            if other is not lane and cell is not None and now < cell.refresh_at:
                held_in = min(held_in, pacer.room_in(cell.token.fingerprint))
        if held_in == math.inf:
            return None
        within = min(held_in, pacer.wait - joined)
        if deadline is not None:
            within = min(within, deadline - now)
        return max(0.0, within)

    def _slot_wait(self, pacer: Pacing, deadline: float | None, joined: float) -> float | None:
        """Seconds the slot wait may take: the ``timeout`` left, and ``api_rate_wait`` less
        the time spent joining a fetch; None: the pacer's own wait."""
        left = None if deadline is None else self._left(deadline)
        if not joined:
            return left
        rest = max(0.0, pacer.wait - joined)
        return rest if left is None else min(left, rest)

    def _left(self, deadline: float) -> float:
        return max(0.0, deadline - self._now())

    def _slot(self, pacer: Pacing, lane: Lane, cell: Cell, wait: float | None) -> PaceSlot | None:
        """A slot of ``cell``'s token; None when that token was replaced meanwhile or is no
        longer usable (a failed refresh: the slot would come after its expiry)."""
        key = cell.token.fingerprint
        if not pacer.remote:  # a shared pacer's try is a round trip: a waiter would make two
            slot = pacer.try_acquire(key)
            if slot is not None:
                return slot
        # Uses that ended unreported (a requests call that raised) hold slots until reaped:
        # reap them before waiting, outside every lock (the reaper takes the gate's).
        reap_pending()
        try:
            return pacer.acquire_unless(
                key,
                wait,
                lambda: lane.flight.cell is not cell or not cell.usable(self._now()),
            )
        except ApiRateLimitedError as exc:
            self._gave_up(key, exc)
            raise

    def _gave_up(self, key: str, exc: ApiRateLimitedError) -> None:
        if self._emit is not None:
            data = {"waited": round(exc.waited, 3), "limit": list(exc.limit)}
            self._emit(API_RATE_LIMITED, key, data)

    def line_up(self) -> Line | None:
        """For event loops: join the line for a slot of the current token without blocking
        (then :meth:`poll_line`, and :meth:`leave_line` in every case). None when not paced
        or no token is usable now (take the slow path). Reaps first (see :func:`reap_pending`)."""
        lane, pacer = self._lanes.next(), self.pacer
        if pacer is not None and self._lanes.count > 1:
            lane = self._soonest(pacer, lane, usable=True)
        cell = lane.flight.cell
        if pacer is None or cell is None or lane.flight.closed:
            return None
        if not cell.usable(self._now()):
            return None
        reap_pending()
        return Line(cell, pacer.line_up(cell.token.fingerprint), lane)

    def poll_line(self, line: Line) -> InFlight | float | None:
        """The use, once ``line`` got its slot; else seconds to sleep before polling again;
        None when the token was replaced meanwhile or is no longer usable (line up again).

        Raises:
            ApiRateLimitedError: No slot within ``api_rate_wait``; nothing counted.
        """
        assert self.pacer is not None
        cell = line.cell
        if line.lane.flight.cell is not cell or not cell.usable(self._now()):
            return None
        key = cell.token.fingerprint
        try:
            got = self.pacer.poll(key, line.ticket)
        except ApiRateLimitedError as exc:
            self._gave_up(key, exc)
            raise
        if isinstance(got, float | int):
            return float(got)
        use = self._gate.begin(cell.access_token, line.lane.is_current, got)
        if use is None:
            got.cancel()
        return use

    def leave_line(self, line: Line) -> None:
        """Leave ``line`` (a no-op once it got its slot or gave up)."""
        if self.pacer is not None:
            self.pacer.leave(line.cell.token.fingerprint, line.ticket)

    def next_slot(self, use: InFlight, timeout: float | None = None) -> None:
        """One leg of ``use`` was answered (a redirect) and the next goes out with the same
        token: release the leg's slot and wait in line for the next one's.

        Raises:
            ApiRateLimitedError: No slot within the wait (``use`` keeps no slot then).
        """
        pacer, old = self.pacer, use.slot
        if pacer is None or old is None:
            return
        old.release()
        key = fingerprint_of(use.token)
        slot = None if pacer.remote else pacer.try_acquire(key)
        if slot is None:
            reap_pending()
            try:
                slot = pacer.acquire_unless(key, timeout, None)
            except ApiRateLimitedError as exc:
                self._gave_up(key, exc)
                raise
        use.slot = slot

    def answered(self, access_token: str, status: int, retry_after: str | None) -> None:
        """An API answer to a call with ``access_token`` arrived: a 429 tells the pacer
        (see :meth:`throttled`), its ``Retry-After`` capped at ``max_retry_after``."""
        if status != 429:
            return
        seconds = parse_retry_after(retry_after)
        if seconds is not None:
            seconds = min(seconds, self._lanes.first.flight.config.max_retry_after)
        self.throttled(access_token, seconds)

    def throttled(self, access_token: str, retry_after: float | None) -> None:
        """The API answered 429 to a call with ``access_token``: every caller of that token
        waits ``retry_after`` seconds (already capped; None: a window) for its next slot.

        Args:
            access_token: The token the call carried (only its fingerprint is kept).
            retry_after: The answer's ``Retry-After`` in seconds, capped, or None.
        """
        key = fingerprint_of(access_token)
        self._metrics.incr("api_429s")
        if self.pacer is not None:
            self.pacer.penalize(key, retry_after)
        if self._emit is not None:
            self._emit(API_THROTTLED, key, {"retry_after": retry_after})

    def throttled_unseen(self) -> None:
        """The API answered 429 to a call that was then sent again beneath the adapter
        (``api_session``'s urllib3 retries, not paced; a user's ``HTTPAdapter`` retries), so
        no adapter saw the answer: it is counted in ``api_429s``. No pacer is told and no
        event is emitted: the retry already waited out its ``Retry-After``, and a 429 that is
        the final answer reaches :meth:`answered` with its own."""
        self._metrics.incr("api_429s")

    def try_begin_use(self) -> InFlight | None:
        """Count a use of a token that is usable now, without blocking or I/O.

        For event loops: ``None`` means no token is usable now (or it was swapped this
        instant); then call :meth:`begin_use` in a worker thread. With several tokens, the
        first from the turn that is usable (and, paced, has room) serves.
        """
        turn = self._lanes.next()
        if turn.flight.cell is None and self._lanes.count > 1:
            turn.refresher.prefetch()  # its first token, meanwhile another serves
        for lane in self._lanes.starting_at(turn):
            use = self._try_lane(lane)
            if use is not None:
                return use
        return None

    def _try_lane(self, lane: Lane) -> InFlight | None:
        cell = lane.flight.cell
        if cell is None or lane.flight.closed:
            return None
        now = self._now()
        if not cell.usable(now) or not lane.refresher.due_nowait(cell, now):
            return None
        if self.pacer is None:
            return self._gate.begin(cell.access_token, lane.is_current)
        slot = self.pacer.try_acquire(cell.token.fingerprint)
        if slot is None:
            return None  # no room now: wait in line (see line_up)
        use = self._gate.begin(cell.access_token, lane.is_current, slot)
        if use is None:
            slot.cancel()
        return use

    def replace_rejected(self, access_token: str, timeout: float | None = None) -> Token:
        """Replace a token the API rejected (a 401), unless that already happened.

        If no lane holds ``access_token`` any more, a current token is returned without a
        request; otherwise one replacement of that lane's token runs, shared by every
        caller (the other lanes' tokens stay). A token
        fetched moments ago is replaced at most once per cool-down (an API that rejects
        every token must not turn each call into a token request).

        Args:
            access_token: The token the API rejected.
            timeout: Seconds this caller waits at most (as for ``get_token``).

        Raises:
            ManagerClosedError: The manager was closed.
            TokenRejectedError: The API keeps rejecting fresh tokens (no request made).
            GenesysTokenError: Acquiring a token failed.
        """
        lane = self._lanes.holding(access_token) or self._lanes.first
        flight = lane.flight
        if flight.closed:
            raise ManagerClosedError("the token manager is closed")
        lane.refresher.allow_replacement(access_token)
        want = Replacing(access_token, flight.credentials)
        deadline = lane.refresher.deadline(timeout)
        return flight.obtain(want, deadline=deadline, reason="rejected by the API").token

    def note_replay(self) -> None:
        """Count a call replayed after a 401."""
        self._metrics.incr("replays_401")
