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

A token the API rejected (401) whose replacement the fresh-401 rule refuses is replaced from
the store when another process put a newer one there (a fleet's rotation: no request), else
its lane is *known rejected* (``Lane.rejected``) until the rule's cool-down ends: its turns
go to the other lanes' tokens, as a lane without a token's do. When every usable token is
known rejected, they are handed out as before (the API answers 401, the adapters return it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

from ..errors import GenesysTokenError, ManagerClosedError, TokenRejectedError
from ..http.token_endpoint import TokenEndpoint
from ..observability.reporter import Reporter
from ..settings import Config, Credentials
from ..stores.base import TokenStore
from .acquisition import Acquirer, flight_bound, lock_bound
from .clock import Clock
from .outage import Outage
from .refresher import Refresher
from .rejections import RejectedCredentials, RejectedTokens
from .schedule import Cell
from .scheduler import Job, scheduler
from .single_flight import SingleFlight
from .validation import TokenValidator

#: A known-rejected lane's store is looked at again for its replacement at most this often.
STORE_LOOK_EVERY = 1.0


class Lane:
    """One token of a manager: its acquirer, its refresher (the owner of its state) and
    that refresher's single flight (see the module docstring)."""

    __slots__ = ("acquirer", "flight", "index", "looked_at", "refresher", "rejected")

    def __init__(self, index: int, acquirer: Acquirer, refresher: Refresher) -> None:
        #: 0 for the first token (the client's own store key), then 1, 2, ...
        self.index = index
        self.acquirer = acquirer
        self.refresher = refresher
        #: The lane's token state: current cell, credentials, acquisition, closed.
        self.flight: SingleFlight = refresher.flight
        #: The cell whose token the API rejected and the fresh-401 rule did not let replace:
        #: while it is current and the rule's cool-down runs, other lanes serve.
        self.rejected: Cell | None = None
        #: When the store was last looked at for the rejected token's replacement.
        self.looked_at = float("-inf")

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

    __slots__ = ("_fresh_401", "_now", "_turn", "all", "count", "first")

    def __init__(
        self,
        lanes: Sequence[Lane],
        now: Callable[[], float],
        fresh_401: RejectedTokens | None = None,
    ) -> None:
        #: Every lane, lane 0 first.
        self.all: tuple[Lane, ...] = tuple(lanes)
        #: How many (``tokens``).
        self.count = len(self.all)
        #: Lane 0: ``TokenManager.token``'s, and the one a rotation returns.
        self.first = self.all[0]
        self._now = now
        self._turn = itertools.count()
        #: The fresh-401 rule the lanes share (its cool-down ends a lane's known rejection).
        self._fresh_401 = fresh_401 if fresh_401 is not None else RejectedTokens()

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
        if cell is not None and self._now() < cell.refresh_at and cell is not lane.rejected:
            return cell.access_token
        return self.serve(lane, timeout)[1].access_token

    def allow_replacement(self, lane: Lane, access_token: str) -> Cell | None:
        """Before replacing ``lane``'s token ``access_token``, which the API rejected:
        None when a replacement may be acquired (``Refresher.allow_replacement``); when the
        fresh-401 rule refuses, a newer token of this lane that another process put in the
        store, installed (no request); else the lane is known rejected until the rule's
        cool-down ends (its turns go to the other lanes) and the refusal is raised.

        Raises:
            TokenRejectedError: The API keeps rejecting fresh tokens; none in the store.
            InvalidClientError: The credentials are in their cool-down.
        """
        try:
            lane.refresher.allow_replacement(access_token)
        except TokenRejectedError:
            cell = lane.flight.cell
            if cell is None or cell.access_token != access_token:
                return None  # replaced meanwhile: the replacement takes the current token
            now = self._now()
            if cell is not lane.rejected or now - lane.looked_at >= STORE_LOOK_EVERY:
                lane.looked_at = now
                found = lane.acquirer.stored(lane.flight, access_token)
                if found is not None:
                    return self._install(lane, found, cell)
            lane.rejected = cell
            raise
        return None

    def adopt_stored(self, replaced: Lane) -> None:
        """``replaced``'s rejected token was replaced from the store: another process put
        its newer token there, as a fleet's rotation does for every lane (then revokes the
        old ones). The other lanes take theirs from the store too (no request; a token
        there that is ours already changes nothing), so the 401's replay, which goes to the
        next lane, is not sent with a token retired with it."""
        if self.count == 1:
            return
        for lane in self.all:
            cell = lane.flight.cell
            if lane is replaced or cell is None or lane.flight.closed:
                continue
            found = lane.acquirer.stored(lane.flight, cell.access_token)
            if found is not None:
                self._install(lane, found, cell)

    def known_rejected(self, lane: Lane, cell: Cell, now: float) -> bool:
        """Whether ``cell`` (``lane``'s) is a token known rejected while the fresh-401 rule's
        cool-down runs (the one then, or a later one: once one lane's token was replaced at
        its end, the others wait for the next). Forgotten once no cool-down runs: its next
        401 may replace it."""
        if cell is not lane.rejected:
            return False
        if now < self._fresh_401.until:
            return True
        lane.rejected = None
        return False

    def _install(self, lane: Lane, found: Cell, over: Cell) -> Cell | None:
        """Install ``found`` (from the store) over ``lane``'s ``over`` if still current,
        and plan its refresh; the installed cell, or None."""
        installed = lane.flight.install(found, over)
        if installed is not None:
            lane.refresher.arm(installed.refresh_at - self._now())
        return installed

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
        caller while the client has no token at all. A token known rejected (see
        :meth:`allow_replacement`) serves only when no other usable token does.

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
        if cell is not None and self.known_rejected(turn, cell, now):
            pass  # its turn goes to another lane's token (see allow_replacement)
        elif cell is not None and cell.usable(now):
            return turn, turn.refresher.slow(timeout)
        elif (
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
        usable = rejected = None
        for lane in self.starting_at(turn):
            cell = lane.flight.cell
            if cell is None or not cell.usable(now):
                continue
            if self.known_rejected(lane, cell, now):
                rejected = rejected or lane  # handed out only if every usable token is
                continue
            if now < cell.refresh_at:
                return lane, cell
            usable = usable or lane
        lane = usable or rejected or self.first
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
    built = Lanes(lanes, clock.monotonic, outage.fresh_401)
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
