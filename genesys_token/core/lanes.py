"""The tokens of one manager (``tokens=N``): N lanes of the same client, picked round-robin.

Each lane owns one token: its acquisitions under its own store key (lane 0 keeps the
client's key, so stores and fleets of one token are unaffected; lane k adds ``-k``: lane k
of every process sharing a store shares lane k's token and lock), its refresher with its
single flight, and its scheduler job. The lanes share the manager's transport, reporter,
counted uses, credentials cool-down, pacer (its slots are keyed by token, so each token has
its own room) and one outage state (:mod:`.outage`: the failure backoff, the fresh-401 rule,
the secret source's re-read time, and a probe: while the credentials are unproven or fetches
fail, one fetch at a time goes out; a rejected secret or a login host that is down costs
about as many token requests as with one token).

The turn is one ``itertools.count()``: ``next()`` on it is atomic in CPython, so picking a
lane takes no lock. A turn whose lane holds no usable token is served by another lane's while
its own is fetched in the background (:meth:`Lanes.serve`): a caller waits for a fetch only
when no lane holds a usable token.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

from ..errors import GenesysTokenError, ManagerClosedError
from ..http.token_endpoint import TokenEndpoint
from ..observability.reporter import Reporter
from ..settings import Config, Credentials
from ..stores.base import TokenStore
from .acquisition import Acquirer, flight_bound, lock_bound
from .clock import Clock
from .outage import Outage
from .refresher import Refresher
from .rejections import RejectedCredentials
from .schedule import Cell
from .scheduler import Job, scheduler
from .single_flight import SingleFlight
from .validation import TokenValidator


class Lane:
    """One token of a manager: its acquirer, its refresher (the owner of its state) and
    that refresher's single flight (see the module docstring)."""

    __slots__ = ("acquirer", "flight", "index", "refresher")

    def __init__(self, index: int, acquirer: Acquirer, refresher: Refresher) -> None:
        #: 0 for the first token (the client's own store key), then 1, 2, ...
        self.index = index
        self.acquirer = acquirer
        self.refresher = refresher
        #: The lane's token state: current cell, credentials, acquisition, closed.
        self.flight: SingleFlight = refresher.flight

    def is_current(self, access_token: str) -> bool:
        """Whether this lane still holds ``access_token`` (a use of it is current)."""
        cell = self.flight.cell
        return cell is not None and cell.access_token == access_token

    def __repr__(self) -> str:
        cell = self.flight.cell
        return f"Lane({self.index}, token={cell.token.fingerprint if cell else None!r})"


class Lanes:
    """The lanes of one manager and the turn that picks among them.

    Args:
        lanes: Lane 0 first.
        now: The manager's monotonic clock.
    """

    __slots__ = ("_now", "_turn", "all", "count", "first")

    def __init__(self, lanes: Sequence[Lane], now: Callable[[], float]) -> None:
        #: Every lane, lane 0 first.
        self.all: tuple[Lane, ...] = tuple(lanes)
        #: How many (``tokens``).
        self.count = len(self.all)
        #: Lane 0: ``TokenManager.token``'s, and the one a rotation returns.
        self.first = self.all[0]
        self._now = now
        self._turn = itertools.count()

    def next(self) -> Lane:
        """The lane whose turn it is (round-robin, no lock)."""
        return self.all[next(self._turn) % self.count]

    def from_next(self) -> Iterator[Lane]:
        """Every lane once, starting at the one whose turn it is."""
        return self.starting_at(self.next())

    def starting_at(self, first: Lane) -> Iterator[Lane]:
        """Every lane once, starting at ``first``."""
        for offset in range(self.count):
            yield self.all[(first.index + offset) % self.count]

    def get_token(self, timeout: float | None = None) -> str:
        """``TokenManager.get_token`` with more than one token: the turn's lane's token, by
        the same lock-free path as with one (see there)."""
        lane = self.all[next(self._turn) % self.count]
        cell = lane.flight.cell
        if cell is not None and self._now() < cell.refresh_at:
            return cell.access_token
        return self.serve(lane, timeout)[1].access_token

    def serve(
        self,
        turn: Lane,
        timeout: float | None,
        *,
        join: bool = False,
        join_within: float | None = None,
    ) -> tuple[Lane, Cell]:
        """The slow path of a turn whose token is not fresh: the lane that serves and its
        usable token.

        A usable token of ``turn`` takes ``turn``'s slow path (a due refresh). Without one,
        ``turn``'s fetch starts in the background and the next lane with a fresh token
        serves, read without a lock (a caller never fails or waits while another token is
        valid); then one with a usable token, by its slow path. Only when no lane holds a
        usable token does the caller block, on lane 0's slow path: one flight for every
        caller while the client has no token at all.

        ``join``: wait for ``turn``'s first token if its fetch is under way (a paced caller
        whose other tokens have no room soon), at most ``join_within`` seconds if given (the
        time until another token has room, the caller's pacing wait: no join when <= 0);
        if that fails or takes longer, serve as above.

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: No lane holds a usable token and acquiring one failed.
        """
        now = self._now()
        cell = turn.flight.cell
        if cell is not None and cell.usable(now):
            return turn, turn.refresher.slow(timeout)
        if (
            join
            and cell is None
            and turn.flight.running
            and (join_within is None or join_within > 0)
        ):
            wait = timeout
            if join_within is not None and (timeout is None or join_within < timeout):
                wait = join_within
            try:
                return turn, turn.refresher.slow(wait)
            except ManagerClosedError:
                raise
            except GenesysTokenError:
                now = self._now()  # failed or timed out: another lane's token serves
        elif turn is not self.first and not turn.flight.closed:
            _fetch_behind(turn, cell, now)
        usable = None
        for lane in self.starting_at(turn):
            cell = lane.flight.cell
            if cell is None or not cell.usable(now):
                continue
            if now < cell.refresh_at:
                return lane, cell
            usable = usable or lane
        lane = usable or self.first
        return lane, lane.refresher.slow(timeout)

    def holding(self, access_token: str) -> Lane | None:
        """The lane whose current token is ``access_token``; None if none holds it now."""
        for lane in self.all:
            if lane.is_current(access_token):
                return lane
        return None

    def in_use(self) -> int:
        """How many lanes hold a token usable now ("tokens in use")."""
        now = self._now()
        return sum(1 for lane in self.all if _usable(lane.flight.cell, now))

    def use_credentials(self, new: Credentials) -> None:
        """``set_credentials`` for every lane."""
        for lane in self.all:
            lane.refresher.use_credentials(new)

    def close(self) -> bool:
        """Close every lane and cancel its scheduler job.

        Returns:
            False if they were closed already.
        """
        first = self.first.flight.close()
        for lane in self.all[1:]:
            lane.flight.close()
        for lane in self.all:
            if lane.refresher.job is not None:
                scheduler().cancel(lane.refresher.job)
        return first

    def after_fork(self, job_for: Callable[[int], Job]) -> None:
        """In a forked child: fresh locks, a new job per lane; every lane's refresh comes
        back on the first use of any (an idle child must not let the others lapse)."""
        for lane in self.all:
            lane.acquirer.after_fork()
        for lane in self.all:
            lane.refresher.after_fork(job_for(lane.index))

    def resume(self) -> None:
        """After a fork, on the first use of any lane: every lane's refresh comes back."""
        for lane in self.all:
            lane.refresher.resume()

    def scheduled(self, index: int) -> None:
        """Run by lane ``index``'s scheduler job at its planned refresh point."""
        self.all[index].refresher.scheduled()

    def __repr__(self) -> str:
        return f"Lanes({list(self.all)!r})"


def build_lanes(
    *,
    count: int,
    config: Config,
    store: TokenStore,
    transport: TokenEndpoint,
    reporter: Reporter,
    clock: Clock,
    job_for: Callable[[int], Job],
) -> Lanes:
    """The ``count`` lanes of a manager, sharing ``transport``, ``reporter``, one token
    validator, one credentials cool-down and one :class:`~genesys_token.core.outage.Outage`
    (a failure backs every lane off; one lane at a time probes a failing or unproven client);
    ``job_for(index)`` makes lane ``index``'s scheduler job."""
    rejected = RejectedCredentials(clock.monotonic, clock.random)
    outage = Outage()
    validator = TokenValidator(config)
    lanes = []
    for index in range(count):
        acquirer = Acquirer(
            store=store,
            transport=transport,
            validator=validator,
            clock=clock,
            rejections=rejected,
            metrics=reporter.metrics,
            lane=index,
        )
        suffix = f"-{index}" if index else ""
        refresher = Refresher(
            config=config,
            acquire=acquirer.acquire,
            rejected=rejected,
            reporter=reporter,
            clock=clock,
            name=f"genesys-token-fetch-{config.client_id[:16]}{suffix}",
            bound=flight_bound(config),
            wait_bound=2 * lock_bound(config) + 30.0,
            outage=outage,
        )
        refresher.job = job_for(index)
        lanes.append(Lane(index, acquirer, refresher))
    built = Lanes(lanes, clock.monotonic)
    if count > 1:
        for lane in built.all:
            lane.refresher.on_resume = built.resume
    return built


def _fetch_behind(lane: Lane, cell: Cell | None, now: float) -> None:
    """Start ``lane``'s fetch (its first, or of an expired token) in the background; nothing
    during a backoff."""
    if cell is None:
        lane.refresher.prefetch()
    else:
        lane.refresher.due_nowait(cell, now)


def _usable(cell: Cell | None, now: float) -> bool:
    return cell is not None and cell.usable(now)
