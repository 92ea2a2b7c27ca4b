"""Rotation, make-before-break: fetch the new token while calls go on with the old one, swap
it in (new calls get it at once: nobody is held), then wait, bounded, for the old token's
counted uses to end, then revoke it if asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import DrainTimeoutError, ManagerClosedError
from ..observability.events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
)
from ..observability.reporter import Reporter
from ..token import Token
from .uses import UseGate

if TYPE_CHECKING:
    from .refresher import Refresher


def rotate(
    *,
    refresher: Refresher,
    gate: UseGate,
    reporter: Reporter,
    revoke: Callable[[str], bool],
    drain_timeout: float,
    revoke_previous: bool,
    strict: bool,
) -> Token:
    """One rotation (the caller serializes rotations). See ``TokenManager.rotate``.

    Args:
        revoke: Revokes an access token; True if it did.
    """
    state = refresher.flight

    def closed() -> bool:
        return state.closed

    before = state.cell
    first = before.token if before is not None else None
    me = threading.get_ident()
    uses = gate.count_of(first.access_token) if first is not None else 0
    reporter.emit(TOKEN_ROTATION_STARTED, first, {"in_flight": uses})
    new = refresher.fetch_new("rotation")  # raises on failure: the old token stays in place
    reporter.metrics.incr("rotations")
    retiring = _older_tokens(first, new.replaced, new.token)
    if not retiring:
        return new.token
    started = time.monotonic()
    pending = sum(gate.retire(t.access_token, exclude_owner=me) for t in retiring)
    left = 0
    for token in retiring:  # one drain bound for all of them
        waited = time.monotonic() - started
        remaining = drain_timeout - waited if drain_timeout > waited else 0.0
        left += gate.drain(token.access_token, remaining, closed, exclude_owner=me)
    if closed():
        raise ManagerClosedError("closed during the rotation")
    old = retiring[-1]  # the token the new one replaced: what the events are about
    data = {
        "in_flight": pending,
        "drained": pending - left,
        "drain_seconds": round(time.monotonic() - started, 3),
        "timeout": drain_timeout,
    }
    if left:
        reporter.metrics.incr("drain_timeouts")
        reporter.emit(TOKEN_DRAIN_TIMEOUT, old, {**data, "left": left})
        if strict:
            raise DrainTimeoutError(
                f"{left} use(s) of the old token still in flight after {drain_timeout:g}s; "
                "the new token is in place, the old one was not revoked",
                in_flight=left,
            )
    else:
        reporter.emit(TOKEN_DRAIN_COMPLETE, old, data)
    if revoke_previous:
        for token in retiring:
            if revoke(token.access_token):
                reporter.metrics.incr("revocations")
                reporter.emit(TOKEN_REVOKED, token, {})
    return new.token


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
