"""Single flight: one token acquisition at a time, any number of waiters, each with its bound.

A waiter says what it wants instead of passing flags:

* :class:`AnyValid` — any token usable now (``get_token``);
* :class:`NotDue` — a token not yet due for refresh (a scheduled refresh);
* :class:`Replacing` — a usable token other than one the API rejected (a 401);
* :class:`FetchedAfter` — a token from the network, fetched by an acquisition that began
  after the call (``refresh(force=True)``, ``rotate()``).

A want is checked against the current cell first, so a refresh planned on stale state or a
401 for a token already replaced costs no request. Otherwise the waiter joins the flight in
progress, or starts one. Giving up (its own deadline) never cancels the shared flight: the
fetch goes on in its own thread and later callers get its token. A waiter takes a failed
flight's error only if that flight could have answered it (a forced refresh does not take
the error of a fetch that began before it, with credentials since replaced), and gets the
token of the flight it relied on (a rotation retires what *its* token replaced).

A flight has a deadline of its own. One still running past it (a secret source that hangs, a
store that never answers) is abandoned by whoever notices first (a waiter, or the next
:meth:`SingleFlight.start`): it fails with a typed error, the next flight may begin, and
whatever its thread brings back later is discarded. Its thread is its own: nothing shared
waits for it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from ..errors import (
    GenesysTokenError,
    ManagerClosedError,
    SecretSourceError,
    TokenRequestError,
    TokenTimeoutError,
    where_raised,
)
from ..http.failures import failure_in_words, host_of
from ..settings import Config, Credentials
from .schedule import Cell

if TYPE_CHECKING:
    from ..http.token_endpoint import RetryNotice

_E = TypeVar("_E", bound=BaseException)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """What an acquisition may use.

    Attributes:
        use_store: Take a token from the shared store when one there is fresh.
        reject: Tokens not to take from the store (the one being replaced).
    """

    use_store: bool = True
    reject: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AnyValid:
    """Any token usable now, from an acquisition on the current credentials."""

    credentials: int

    def satisfied(self, cell: Cell | None, now: float) -> bool:
        return cell is not None and cell.usable(now)

    def accepts(self, flight: Flight) -> bool:
        return flight.credentials >= self.credentials

    def spec(self, cell: Cell | None) -> Spec:
        return Spec()


@dataclass(frozen=True)
class NotDue:
    """A token that is not yet due for refresh."""

    credentials: int

    def satisfied(self, cell: Cell | None, now: float) -> bool:
        return cell is not None and cell.fresh(now)

    def accepts(self, flight: Flight) -> bool:
        return flight.credentials >= self.credentials

    def spec(self, cell: Cell | None) -> Spec:
        return Spec(reject=frozenset() if cell is None else frozenset({cell.access_token}))


@dataclass(frozen=True)
class Replacing:
    """A usable token other than ``rejected``."""

    rejected: str
    credentials: int

    def satisfied(self, cell: Cell | None, now: float) -> bool:
        return cell is not None and cell.usable(now) and cell.access_token != self.rejected

    def accepts(self, flight: Flight) -> bool:
        return flight.credentials >= self.credentials

    def spec(self, cell: Cell | None) -> Spec:
        return Spec(reject=frozenset({self.rejected}))


@dataclass(frozen=True)
class FetchedAfter:
    """A token from the network, fetched by an acquisition that began after ``generation``."""

    generation: int

    def satisfied(self, cell: Cell | None, now: float) -> bool:
        return (
            cell is not None
            and cell.usable(now)
            and cell.generation > self.generation
            and cell.network
        )

    def accepts(self, flight: Flight) -> bool:
        return flight.generation > self.generation and not flight.spec.use_store

    def spec(self, cell: Cell | None) -> Spec:
        return Spec(use_store=False)


Want = AnyValid | NotDue | Replacing | FetchedAfter


class Flight:
    """One acquisition in progress."""

    __slots__ = (
        "cancel",
        "cell",
        "config",
        "credentials",
        "deadline",
        "done",
        "error",
        "generation",
        "last_failure",
        "reading_secret",
        "reason",
        "reported",
        "requests",
        "retry_check",
        "spec",
        "started",
    )

    def __init__(
        self,
        generation: int,
        credentials: int,
        config: Config,
        spec: Spec,
        reason: str,
        started: float,
        deadline: float,
    ) -> None:
        self.generation = generation
        #: The config (credentials) in place when it began: what it acquires with.
        self.config = config
        self.reason = reason
        self.started = started
        #: ``time.monotonic()`` past which the flight is abandoned if still running.
        self.deadline = deadline
        #: Token requests this acquisition made (0: it came from the store).
        self.requests = 0
        self.credentials = credentials
        self.spec = spec
        #: Set when the flight is abandoned (close(), its deadline): its waits end, and what
        #: it brings back is discarded.
        self.cancel = threading.Event()
        #: Whether it is waiting for the secret source now (names the abandonment's cause).
        self.reading_secret = False
        #: Why its last failed attempt failed, in words (a waiter that gives up names it).
        self.last_failure: str | None = None
        self.done = False
        self.error: BaseException | None = None
        #: The cell this flight installed.
        self.cell: Cell | None = None
        #: Set once its events were delivered (its listeners ran).
        self.reported = threading.Event()
        #: Asked before each retry of its token request (None: the policy alone decides).
        self.retry_check: Callable[[], bool] | None = None

    def attempt_failed(self, notice: RetryNotice) -> None:
        """Keep why an attempt failed before a retry (the transport's ``on_retry``)."""
        self.last_failure = failure_in_words(notice.error)


Acquire = Callable[[Flight, Cell | None], Cell]


class Outcome(Protocol):
    """What a flight's end is reported to."""

    def settle(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        """After each flight, with the lock held, before the waiters wake (backoff and the
        next refresh: quick, no I/O, no listener)."""

    def finished(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        """After each flight, with no lock held, after the waiters woke (events: a slow
        listener holds nobody)."""


class SingleFlight:
    """The one owner of a manager's token state: the current cell, the config and
    credentials generation the next acquisition uses, the acquisition in progress, and
    whether the manager is closed. ``lock`` guards every change; ``cell`` is read without
    it (one immutable value, replaced whole: the hot path).

    Args:
        config: The manager's config (credentials change with :meth:`use_credentials`).
        acquire: Runs one acquisition (no lock held): returns the new cell or raises.
        outcome: Told of each flight's end (see :class:`Outcome`).
        now: The manager's clock.
        bound: Seconds a flight may run before it is abandoned.
    """

    def __init__(
        self,
        *,
        config: Config,
        acquire: Acquire,
        outcome: Outcome,
        now: Callable[[], float],
        name: str,
        bound: float,
    ) -> None:
        self._acquire = acquire
        self._outcome = outcome
        self._now = now
        self._name = name
        self._bound = bound
        self._generations = itertools.count(1)
        self.generation = 0
        #: The current token's cell (None before the first one).
        self.cell: Cell | None = None
        self.config = config
        #: Bumped each time the credentials change.
        self.credentials = 0
        self.closed = False
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Fresh locks and no flight (a forked child has none of the parent's threads)."""
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._flight: Flight | None = None

    def use_credentials(self, new: Credentials) -> bool:
        """Use ``new`` for the next acquisition. False when they are the ones in use."""
        with self.lock:
            if new == self.config.credentials:
                return False
            self.config = self.config.with_credentials(new)
            self.credentials += 1
            return True

    def put(self, cell: Cell) -> None:
        """Replace the current cell as is (lock held): parking it, or unparking it."""
        self.cell = cell

    @property
    def running(self) -> bool:
        """Whether an acquisition is in progress."""
        return self._flight is not None

    @property
    def current(self) -> Flight | None:
        """The acquisition in progress, if any."""
        return self._flight

    def obtain(self, want: Want, *, deadline: float, reason: str, reported: bool = False) -> Cell:
        """Return a cell that satisfies ``want``, acquiring one if needed.

        Args:
            want: What the caller needs.
            reason: Why, for events and logs (of a flight this call starts).
            deadline: ``time.monotonic()`` after which this caller gives up.
            reported: Also wait (within ``deadline``) until the events of the flight this
                call relied on were delivered (``rotate()``: its events come in order).

        Raises:
            ManagerClosedError: The manager was closed.
            TokenTimeoutError: ``deadline`` passed (the flight goes on for the others).
            GenesysTokenError: The acquisition this caller relied on failed.
        """
        with self._cond:
            while True:
                if self.closed:
                    raise ManagerClosedError("the token manager is closed")
                cell = self.cell
                if want.satisfied(cell, self._now()):
                    return cell  # type: ignore[return-value]
                flight = self._flight
                if flight is None:
                    flight = self._begin(want, cell, reason)
                    try:
                        self._spawn(flight, cell)
                    except GenesysTokenError:
                        self._cond.release()  # reported like any failed flight, no lock held
                        try:
                            self._report(flight, None, flight.error)
                        finally:
                            self._cond.acquire()
                        raise
                self._wait(flight, deadline)
                if reported and flight.done:
                    self._cond.release()
                    try:
                        left = deadline - time.monotonic()
                        flight.reported.wait(max(0.0, min(left, threading.TIMEOUT_MAX)))
                    finally:
                        self._cond.acquire()
                if self.closed:
                    raise ManagerClosedError("the token manager is closed")
                now = self._now()
                if want.accepts(flight) and want.satisfied(flight.cell, now):
                    return flight.cell  # type: ignore[return-value]  # the one relied on
                cell = self.cell
                if want.satisfied(cell, now):
                    return cell  # type: ignore[return-value]
                if want.accepts(flight):
                    # The flight this caller relied on ended: never another one for it (an
                    # endpoint that re-issues the rejected token, or tokens that arrive
                    # already due, must not turn one call into a stream of requests).
                    if flight.error is not None:
                        raise copied_error(flight.error)
                    got = flight.cell
                    if (
                        isinstance(want, Replacing)
                        and got is not None
                        and got.access_token == want.rejected
                    ):
                        raise TokenRequestError(
                            "the token endpoint answered with the token the API rejected"
                        )
                    if got is not None and got.usable(now):
                        return got
                    if cell is not None and cell.usable(now) and not isinstance(want, Replacing):
                        return cell
                    raise TokenRequestError("the token acquisition brought no usable token")
                # The flight could not answer this want (begun before it, with older
                # credentials): go round, joining or starting the next one.

    def start(self, want: Want, reason: str) -> Flight | None:
        """Start a flight for ``want`` unless one runs or it is satisfied; never waits for
        it (the scheduler's thread calls this). A flight past its deadline is abandoned
        instead (the backoff then decides when the next one starts).

        Returns:
            The flight started, or None.
        """
        abandoned: Flight | None = None
        with self._cond:
            cell = self.cell
            running = self._flight
            if running is not None and time.monotonic() >= running.deadline:
                self._abandon(running)
                abandoned = running
            elif not (self.closed or running is not None or want.satisfied(cell, self._now())):
                flight = self._begin(want, cell, reason)
                try:
                    self._spawn(flight, cell)
                except GenesysTokenError:
                    abandoned = flight  # settled in _spawn; reported below
                else:
                    return flight
        if abandoned is not None:
            self._report(abandoned, None, abandoned.error)
        return None

    def _spawn(self, flight: Flight, cell: Cell | None) -> None:
        """Run ``flight`` on a thread of its own (lock held). A thread that cannot start
        must not leave a flight that never ends (every later caller would wait on it): the
        flight fails like any other, backoff included, and the caller gets a typed error."""
        try:
            threading.Thread(
                target=self._run, args=(flight, cell), name=self._name, daemon=True
            ).start()
        except RuntimeError as exc:  # "can't start new thread": a pids or memory limit
            failure = TokenRequestError(f"could not start a token request ({exc})")
            self._fail(flight, failure)
            raise copied_error(flight.error or failure) from None

    def _begin(self, want: Want, cell: Cell | None, reason: str) -> Flight:
        self.generation = next(self._generations)
        spec = want.spec(cell)
        deadline = time.monotonic() + self._bound
        flight = Flight(
            self.generation, self.credentials, self.config, spec, reason, self._now(), deadline
        )
        self._flight = flight
        return flight

    def _wait(self, flight: Flight, deadline: float) -> None:
        """Wait for ``flight`` until ``deadline`` (this caller's), abandoning it at its own."""
        while not flight.done and not self.closed:
            now = time.monotonic()
            if now >= flight.deadline:
                self._abandon(flight)
                self._cond.release()  # report with no lock held, as every flight does
                try:
                    self._report(flight, None, flight.error)
                finally:
                    self._cond.acquire()
                return
            remaining = deadline - now
            if remaining <= 0:
                raise _timed_out(flight)
            self._cond.wait(min(remaining, flight.deadline - now))

    def _abandon(self, flight: Flight) -> None:
        """Fail ``flight``, still running past its deadline (lock held); its thread's result
        is discarded when it comes."""
        seconds = f"{self._bound:g}s"
        error: GenesysTokenError
        if flight.reading_secret:
            error = SecretSourceError(
                f"the client_secret source did not answer within {seconds}",
                field="client_secret",
            )
        else:
            error = TokenRequestError(
                f"the token acquisition did not finish within {seconds}", retryable=True
            )
        log.warning("abandoning a token acquisition past its deadline: %s", error)
        flight.cancel.set()
        self._fail(flight, error)

    def _fail(self, flight: Flight, error: GenesysTokenError) -> None:
        """End ``flight`` with ``error`` (lock held): backoff, then wake the waiters."""
        self._end(flight, None, error)

    def _end(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        """Mark ``flight`` ended (lock held), settle it (a waiter must find the backoff of a
        failure in place), then wake the waiters."""
        flight.error = error
        flight.done = True
        if self._flight is flight:
            self._flight = None
        self._outcome.settle(flight, cell, error)
        self._cond.notify_all()

    def _run(self, flight: Flight, held: Cell | None) -> None:
        cell: Cell | None = None
        error: BaseException | None = None
        unexpected: str | None = None
        try:
            cell = self._acquire(flight, held)
        except GenesysTokenError as exc:
            error = exc
        except BaseException as exc:  # noqa: BLE001 - a flight thread must end its flight
            unexpected = where_raised(exc)
        if unexpected is not None:
            # Its type and place only, logged out of the handler and without the traceback:
            # an error tracker sends every frame's locals, and the frames of an acquisition
            # may hold what no log may (an answer's bytes, a user's secret source's state).
            log.error("token acquisition failed unexpectedly (%s)", unexpected)
            error = TokenRequestError(f"token acquisition failed unexpectedly ({unexpected})")
        with self._cond:
            if flight.done:
                return  # abandoned past its deadline: reported then; this result is stale
            if self.closed or flight.cancel.is_set():
                cell, error = None, ManagerClosedError("the token manager is closed")
            elif cell is not None:
                # As installed, it knows what it replaced.
                cell = flight.cell = self.cell = cell.replacing(self.cell)
            self._end(flight, cell, error)
        # After the waiters woke (a slow listener must not hold them), with no lock held (a
        # listener may call back into the manager; the next flight may start).
        self._report(flight, cell, error)

    def _report(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        try:
            self._outcome.finished(flight, cell, error)
        finally:
            flight.reported.set()

    def close(self) -> bool:
        """Refuse every later call, park the cell (the hot path then takes the slow path,
        which refuses), abandon the flight in progress, release the waiters. Under one lock:
        a flight ending now finds the manager closed, never a parked cell to replace.

        Returns:
            False if it was closed already.
        """
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            if self.cell is not None:
                self.cell = self.cell.parked()
            flight = self._flight
            self._cond.notify_all()
        if flight is not None:
            flight.cancel.set()
        return True


def _timed_out(flight: Flight) -> TokenTimeoutError:
    """The error of a waiter that gives up on ``flight``: the host it asks, and why its last
    attempt failed when one did."""
    host = host_of(flight.config.token_url)
    cause = flight.last_failure
    last = f"; last failure: {cause}" if cause else ""
    return TokenTimeoutError(
        f"gave up waiting for a token from {host} (the token request goes on for the others{last})",
        host=host,
        cause=cause,
    )


def copied_error(error: _E) -> _E:
    """A copy per caller: one exception object raised in many threads shares a traceback
    (each raise appends to it). An exception that cannot be copied is raised as is."""
    try:
        duplicate = copy.copy(error)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is raised as is
        return error
    return duplicate.with_traceback(None)
