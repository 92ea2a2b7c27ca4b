"""What the adapters (GenesysAuth, the httpx auths, the official-SDK bridge) need of a
manager beyond its public API: counted uses, a 401's replacement, the replay counter.

It is internal: adapters reach it with :func:`genesys_token.manager.adapter_port`, users never
need it. It holds the manager's parts, never the manager (a manager dropped without
``close()`` must still be collected).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ApiRateLimitedError, ManagerClosedError
from ..http.answers import parse_retry_after
from ..observability.events import API_RATE_LIMITED, API_THROTTLED
from ..observability.metrics import Metrics
from ..token import Token, fingerprint_of
from .pacing import PaceSlot, Pacing, Ticket
from .refresher import Refresher
from .schedule import Cell
from .single_flight import Replacing
from .uses import InFlight, UseGate, reap_pending

#: Emits an event: ``(event type, token fingerprint, data)``; never given a token.
Emit = Callable[[str, str, dict[str, Any]], None]


class Line:
    """A place in the line for a slot of one token, for a caller that must not block."""

    __slots__ = ("cell", "ticket")

    def __init__(self, cell: Cell, ticket: Ticket) -> None:
        self.cell = cell
        self.ticket = ticket

    def __repr__(self) -> str:
        return f"Line(ticket={self.ticket!r})"


class AdapterPort:
    """Counted uses and 401 replacement of one manager.

    Args:
        refresher: The manager's refresher (owner of the token state).
        gate: The manager's counted uses.
        metrics: The manager's counters.
        now: The manager's monotonic clock.
        pacer: The manager's pacer (``api_rate_limit``), or None: nothing is paced.
        emit: Emits the pacing events (``API_RATE_LIMITED``, ``API_THROTTLED``).
    """

    __slots__ = ("_emit", "_flight", "_gate", "_metrics", "_now", "_refresher", "pacer")

    def __init__(
        self,
        refresher: Refresher,
        gate: UseGate,
        metrics: Metrics,
        now: Callable[[], float],
        pacer: Pacing | None = None,
        emit: Emit | None = None,
    ) -> None:
        self._refresher = refresher
        self._flight = refresher.flight
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
        while True:
            cell = self._flight.cell
            if cell is None or not self._now() < cell.refresh_at:
                # The manager's get_token, slow path.
                cell = self._refresher.slow(timeout if deadline is None else self._left(deadline))
            slot = None
            if pacer is not None:
                slot = self._slot(pacer, cell, deadline)
                if slot is None:
                    continue  # the token was replaced while this caller waited for a slot
            use = self._gate.begin(cell.access_token, self._is_current, slot)
            if use is not None:
                return use
            if slot is not None:
                slot.cancel()  # the token was swapped while we waited: nothing was sent

    def _left(self, deadline: float) -> float:
        return max(0.0, deadline - self._now())

    def _slot(self, pacer: Pacing, cell: Cell, deadline: float | None) -> PaceSlot | None:
        """A slot of ``cell``'s token; None when that token was replaced meanwhile."""
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
                None if deadline is None else self._left(deadline),
                lambda: self._flight.cell is not cell,
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
        pacer, cell = self.pacer, self._flight.cell
        if pacer is None or cell is None or self._flight.closed:
            return None
        if not cell.usable(self._now()):
            return None
        reap_pending()
        return Line(cell, pacer.line_up(cell.token.fingerprint))

    def poll_line(self, line: Line) -> InFlight | float | None:
        """The use, once ``line`` got its slot; else seconds to sleep before polling again;
        None when the token was replaced meanwhile (line up again).

        Raises:
            ApiRateLimitedError: No slot within ``api_rate_wait``; nothing counted.
        """
        assert self.pacer is not None
        cell = line.cell
        if self._flight.cell is not cell:
            return None
        key = cell.token.fingerprint
        try:
            got = self.pacer.poll(key, line.ticket)
        except ApiRateLimitedError as exc:
            self._gave_up(key, exc)
            raise
        if isinstance(got, float | int):
            return float(got)
        use = self._gate.begin(cell.access_token, self._is_current, got)
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
            seconds = min(seconds, self._flight.config.max_retry_after)
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
        (``api_session``'s urllib3 retries, not paced), so no adapter saw the answer: it is
        counted in ``api_429s``. The token it carried is not known there, so no pacer is
        told and no event is emitted (unpaced, the pacer would ignore it anyway)."""
        self._metrics.incr("api_429s")

    def try_begin_use(self) -> InFlight | None:
        """Count a use of a token that is usable now, without blocking or I/O.

        For event loops: ``None`` means no token is usable now (or it was swapped this
        instant); then call :meth:`begin_use` in a worker thread.
        """
        cell = self._flight.cell
        if cell is None or self._flight.closed:
            return None
        now = self._now()
        if not cell.usable(now) or not self._refresher.due_nowait(cell, now):
            return None
        if self.pacer is None:
            return self._gate.begin(cell.access_token, self._is_current)
        slot = self.pacer.try_acquire(cell.token.fingerprint)
        if slot is None:
            return None  # no room now: wait in line (see line_up)
        use = self._gate.begin(cell.access_token, self._is_current, slot)
        if use is None:
            slot.cancel()
        return use

    def replace_rejected(self, access_token: str, timeout: float | None = None) -> Token:
        """Replace a token the API rejected (a 401), unless that already happened.

        If ``access_token`` is no longer the current token, the current one is returned
        without a request; otherwise one replacement runs, shared by every caller. A token
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
        if self._flight.closed:
            raise ManagerClosedError("the token manager is closed")
        self._refresher.allow_replacement(access_token)
        want = Replacing(access_token, self._flight.credentials)
        deadline = self._refresher.deadline(timeout)
        return self._flight.obtain(want, deadline=deadline, reason="rejected by the API").token

    def note_replay(self) -> None:
        """Count a call replayed after a 401."""
        self._metrics.incr("replays_401")

    def _is_current(self, access_token: str) -> bool:
        cell = self._flight.cell
        return cell is not None and cell.access_token == access_token
