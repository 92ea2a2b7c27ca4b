"""What the adapters (GenesysAuth, the httpx auths, the official-SDK bridge) need of a
manager beyond its public API: counted uses, a 401's replacement, the replay counter.

It is internal: adapters reach it with :func:`genesys_token.manager.adapter_port`, users never
need it. It holds the manager's parts, never the manager (a manager dropped without
``close()`` must still be collected).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ManagerClosedError
from ..observability.metrics import Metrics
from ..token import Token
from .refresher import Refresher
from .single_flight import Replacing
from .uses import InFlight, UseGate


class AdapterPort:
    """Counted uses and 401 replacement of one manager.

    Args:
        refresher: The manager's refresher (owner of the token state).
        gate: The manager's counted uses.
        metrics: The manager's counters.
        now: The manager's monotonic clock.
    """

    __slots__ = ("_flight", "_gate", "_metrics", "_now", "_refresher")

    def __init__(
        self, refresher: Refresher, gate: UseGate, metrics: Metrics, now: Callable[[], float]
    ) -> None:
        self._refresher = refresher
        self._flight = refresher.flight
        self._gate = gate
        self._metrics = metrics
        self._now = now

    def begin_use(self, timeout: float | None = None) -> InFlight:
        """Count one use of the current token and return it (end it with
        :meth:`InFlight.end`, from any thread).

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        while True:
            cell = self._flight.cell
            if cell is None or not self._now() < cell.refresh_at:
                cell = self._refresher.slow(timeout)  # the manager's get_token, slow path
            use = self._gate.begin(cell.access_token, self._is_current)
            if use is not None:
                return use

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
        return self._gate.begin(cell.access_token, self._is_current)

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
