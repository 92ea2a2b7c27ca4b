"""Rotation, make-before-break: fetch the new token while calls go on with the old one, swap
it in (new calls get it at once: nobody is held), then wait, bounded, for the old token's
counted uses to end, then revoke it if asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._gate import UseGate
from ._reporter import Reporter
from .errors import DrainTimeoutError, ManagerClosedError
from .events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
)
from .token import Token

if TYPE_CHECKING:
    from ._refresher import Refresher


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
    old = before.token if before is not None else None
    me = threading.get_ident()
    uses = gate.count_of(old.access_token) if old is not None else 0
    reporter.emit(TOKEN_ROTATION_STARTED, old, {"in_flight": uses})
    new = refresher.fetch_new("rotation")  # raises on failure: the old token stays in place
    reporter.metrics.incr("rotations")
    # Retire what the new token replaced: a refresh that landed since `before` was read
    # installed a token newer than `old`, and that one is the token to drain and revoke.
    old = new.replaced
    if old is None or old.access_token == new.access_token:
        return new.token
    started = time.monotonic()
    pending = gate.retire(old.access_token, exclude_owner=me)
    left = gate.drain(old.access_token, drain_timeout, closed, exclude_owner=me)
    if closed():
        raise ManagerClosedError("closed during the rotation")
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
    if revoke_previous and revoke(old.access_token):
        reporter.metrics.incr("revocations")
        reporter.emit(TOKEN_REVOKED, old, {})
    return new.token
