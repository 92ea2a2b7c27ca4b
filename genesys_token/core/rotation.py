"""Rotation, make-before-break: fetch the new token while calls go on with the old one, swap
it in (new calls get it at once: nobody is held), then wait, bounded, for the old token's
counted uses to end, then revoke it if asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import DrainTimeoutError, GenesysTokenError, ManagerClosedError
from ..observability.events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
)
from ..observability.reporter import Reporter
from ..token import Token
from .acquisition import lock_bound
from .refresher import check_timeout
from .uses import UseGate

if TYPE_CHECKING:
    from .refresher import Refresher
    from .single_flight import SingleFlight


class Rotator:
    """Runs a manager's rotations, one at a time, over all its tokens (``rotate()``).

    Args:
        refreshers: One per token, lane 0's first.
        gate: The manager's counted uses.
        reporter: Its events and metrics.
        revoke: Revokes an access token; True if it did.
    """

    def __init__(
        self,
        refreshers: Sequence[Refresher],
        gate: UseGate,
        reporter: Reporter,
        revoke: Callable[[str], bool],
    ) -> None:
        self._refreshers = tuple(refreshers)
        self._gate = gate
        self._reporter = reporter
        self._revoke = revoke
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held this one)."""
        self._lock = threading.Lock()

    def run(self, drain_timeout: float | None, revoke_previous: bool, strict: bool) -> Token:
        """``TokenManager.rotate`` (see there): waits for a rotation in progress first."""
        state = self._refreshers[0].flight
        if state.closed:
            raise ManagerClosedError("the token manager is closed")
        config = state.config
        timeout = (
            config.drain_timeout
            if drain_timeout is None
            else check_timeout(drain_timeout, "drain_timeout")
        )
        # Another rotation's fetches and drain, at most (no bound of its own with inf).
        fetches = 2 * lock_bound(config) * len(self._refreshers)
        if not self._lock.acquire(timeout=min(timeout + fetches, threading.TIMEOUT_MAX)):
            raise DrainTimeoutError("another rotation is still running")
        try:
            return rotate(
                refreshers=self._refreshers,
                gate=self._gate,
                reporter=self._reporter,
                revoke=self._revoke,
                drain_timeout=timeout,
                revoke_previous=revoke_previous,
                strict=strict,
            )
        finally:
            self._lock.release()


def rotate(
    *,
    refreshers: Sequence[Refresher],
    gate: UseGate,
    reporter: Reporter,
    revoke: Callable[[str], bool],
    drain_timeout: float,
    revoke_previous: bool,
    strict: bool,
) -> Token:
    """One rotation of every token of a manager, lane 0 first (the caller serializes
    rotations). See ``TokenManager.rotate``: each lane's new token is fetched and swapped in
    turn, then the old tokens of all of them drain within ONE ``drain_timeout``, then they
    are revoked if asked. A lane whose fetch fails keeps its old token; the lanes swapped
    before it drain as usual, then its error is raised.

    Args:
        refreshers: One per token (lane 0's first); its new token is returned.
        revoke: Revokes an access token; True if it did.
    """
    me = threading.get_ident()
    swaps: list[tuple[Token, list[Token]]] = []  # (new token, what it retires) per lane
    failure: GenesysTokenError | None = None
    for refresher in refreshers:
        try:
            swaps.append(_swap(refresher, gate, reporter))
        except GenesysTokenError as exc:  # raised below, once the swapped lanes drained
            failure = exc
            break
    if not swaps:
        assert failure is not None
        raise failure  # lane 0's fetch failed: the old tokens stay, nothing to drain
    reporter.metrics.incr("rotations")
    state = refreshers[0].flight  # the lanes close together
    retiring = [token for _, older in swaps for token in older]
    if retiring:
        _drain(swaps, gate, reporter, me, state, drain_timeout, strict)
        if revoke_previous:
            for token in retiring:
                if revoke(token.access_token):
                    reporter.metrics.incr("revocations")
                    reporter.emit(TOKEN_REVOKED, token, {})
    if failure is not None:
        raise failure
    return swaps[0][0]


def _swap(refresher: Refresher, gate: UseGate, reporter: Reporter) -> tuple[Token, list[Token]]:
    """Fetch one lane's new token and swap it in; returns it and the tokens it retires."""
    before = refresher.flight.cell
    first = before.token if before is not None else None
    uses = gate.count_of(first.access_token) if first is not None else 0
    reporter.emit(TOKEN_ROTATION_STARTED, first, {"in_flight": uses})
    new = refresher.fetch_new("rotation")  # raises on failure: the old token stays in place
    return new.token, _older_tokens(first, new.replaced, new.token)


def _drain(
    swaps: list[tuple[Token, list[Token]]],
    gate: UseGate,
    reporter: Reporter,
    me: int,
    state: SingleFlight,
    drain_timeout: float,
    strict: bool,
) -> None:
    """Wait for the old tokens' uses, all of them within one ``drain_timeout``; one drain
    event per lane, about the token its new one replaced."""

    def closed() -> bool:
        return state.closed

    started = time.monotonic()
    pending = [sum(gate.retire(t.access_token, exclude_owner=me) for t in old) for _, old in swaps]
    left = [0] * len(swaps)
    for lane, (_, older) in enumerate(swaps):
        for token in older:  # one drain bound for all of them
            waited = time.monotonic() - started
            remaining = drain_timeout - waited if drain_timeout > waited else 0.0
            left[lane] += gate.drain(token.access_token, remaining, closed, exclude_owner=me)
    if closed():
        raise ManagerClosedError("closed during the rotation")
    seconds = round(time.monotonic() - started, 3)
    for lane, (_, older) in enumerate(swaps):
        if not older:
            continue
        data = {
            "in_flight": pending[lane],
            "drained": pending[lane] - left[lane],
            "drain_seconds": seconds,
            "timeout": drain_timeout,
        }
        if left[lane]:
            reporter.metrics.incr("drain_timeouts")
            reporter.emit(TOKEN_DRAIN_TIMEOUT, older[-1], {**data, "left": left[lane]})
        else:
            reporter.emit(TOKEN_DRAIN_COMPLETE, older[-1], data)
    stuck = sum(left)
    if stuck and strict:
        raise DrainTimeoutError(
            f"{stuck} use(s) of the old token(s) still in flight after {drain_timeout:g}s; "
            "the new token is in place, the old one was not revoked",
            in_flight=stuck,
        )


def _older_tokens(first: Token | None, replaced: Token | None, new: Token) -> list[Token]:
    """What a rotation retires: the token in place when it started and, when a refresh
    landed meanwhile, the token its own new token replaced; oldest first, each once."""
    older: list[Token] = []
    for token in (first, replaced):
        if token is None or token.access_token == new.access_token:
            continue
        if all(token.access_token != seen.access_token for seen in older):
            older.append(token)
    return older
