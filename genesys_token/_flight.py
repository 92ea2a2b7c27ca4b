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
the error of a fetch that began before it, with credentials since replaced).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._cell import Cell
from ._http import Cancel
from .errors import GenesysTokenError, ManagerClosedError, TokenRequestError, TokenTimeoutError

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
        "credentials",
        "done",
        "error",
        "generation",
        "reason",
        "requests",
        "spec",
        "started",
    )

    def __init__(
        self, generation: int, credentials: int, spec: Spec, reason: str, started: float
    ) -> None:
        self.generation = generation
        self.reason = reason
        self.started = started
        #: Token requests this acquisition made (0: it came from the store).
        self.requests = 0
        self.credentials = credentials
        self.spec = spec
        self.cancel = Cancel()
        self.done = False
        self.error: BaseException | None = None


Acquire = Callable[[Flight, Cell | None], Cell]
Finished = Callable[[Flight, Cell | None, BaseException | None], None]


class SingleFlight:
    """The flight state of one manager; ``lock`` is the manager's refresh-state lock.

    Args:
        cell: Reads the current cell (the manager's hot-path attribute).
        install: Sets the current cell; called with the lock held.
        acquire: Runs one acquisition (no lock held): returns the new cell or raises.
        settle: Called after each flight with the lock held, before the waiters wake
            (backoff and the next refresh: quick, no I/O, no listener).
        finished: Called after each flight, with no lock held, after the waiters woke
            (events: a slow listener holds nobody).
        now: The manager's clock.
        credentials: Reads the credentials generation (bumped by ``set_credentials``).
    """

    def __init__(
        self,
        *,
        cell: Callable[[], Cell | None],
        install: Callable[[Cell], None],
        acquire: Acquire,
        settle: Finished,
        finished: Finished,
        now: Callable[[], float],
        credentials: Callable[[], int],
        name: str,
    ) -> None:
        self._cell = cell
        self._install = install
        self._acquire = acquire
        self._settle = settle
        self._finished = finished
        self._now = now
        self._credentials = credentials
        self._name = name
        self._generations = itertools.count(1)
        self.generation = 0
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Fresh locks and no flight (a forked child has none of the parent's threads)."""
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._flight: Flight | None = None
        self.closed = False

    @property
    def running(self) -> bool:
        """Whether an acquisition is in progress."""
        return self._flight is not None

    def obtain(self, want: Want, *, deadline: float, reason: str, inline: bool = False) -> Cell:
        """Return a cell that satisfies ``want``, acquiring one if needed.

        Args:
            want: What the caller needs.
            reason: Why, for events and logs (of a flight this call starts).
            deadline: ``time.monotonic()`` after which this caller gives up.
            inline: Run a flight this call starts in this thread (scheduler workers), not
                in a new one.

        Raises:
            ManagerClosedError: The manager was closed.
            TokenTimeoutError: ``deadline`` passed (the flight goes on for the others).
            GenesysTokenError: The acquisition this caller relied on failed.
        """
        with self._cond:
            while True:
                if self.closed:
                    raise ManagerClosedError("the token manager is closed")
                cell = self._cell()
                if want.satisfied(cell, self._now()):
                    return cell  # type: ignore[return-value]
                flight = self._flight
                if flight is None:
                    flight = self._begin(want, cell, reason)
                    if inline:
                        self._cond.release()
                        try:
                            self._run(flight, cell)
                        finally:
                            self._cond.acquire()
                    else:
                        self._spawn(flight, cell)
                self._wait(flight, deadline)
                if self.closed:
                    raise ManagerClosedError("the token manager is closed")
                cell = self._cell()
                if want.satisfied(cell, self._now()):
                    return cell  # type: ignore[return-value]
                if flight.error is not None and want.accepts(flight):
                    raise _copy(flight.error)
                # The flight could not answer this want (begun before it, or it installed
                # a token this want excludes): go round, joining or starting the next one.

    def start(self, want: Want, reason: str) -> None:
        """Start a flight for ``want`` unless one runs or it is satisfied; do not wait."""
        with self._cond:
            cell = self._cell()
            if self.closed or self._flight is not None or want.satisfied(cell, self._now()):
                return
            flight = self._begin(want, cell, reason)
            self._spawn(flight, cell)

    def _spawn(self, flight: Flight, cell: Cell | None) -> None:
        """Run ``flight`` on a thread of its own (lock held). A thread that cannot start
        must not leave a flight that never ends: every later caller would wait on it."""
        try:
            threading.Thread(
                target=self._run, args=(flight, cell), name=self._name, daemon=True
            ).start()
        except BaseException as exc:  # noqa: BLE001 - re-raised, typed, below
            flight.error = TokenRequestError(f"could not start a token request ({exc})")
            flight.done = True
            self._flight = None
            raise flight.error from None

    def _begin(self, want: Want, cell: Cell | None, reason: str) -> Flight:
        self.generation = next(self._generations)
        spec = want.spec(cell)
        flight = Flight(self.generation, self._credentials(), spec, reason, self._now())
        self._flight = flight
        return flight

    def _wait(self, flight: Flight, deadline: float) -> None:
        while not flight.done and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TokenTimeoutError(
                    "gave up waiting for a token (the token request goes on for the others)"
                )
            self._cond.wait(remaining)

    def _run(self, flight: Flight, held: Cell | None) -> None:
        cell: Cell | None = None
        error: BaseException | None = None
        try:
            cell = self._acquire(flight, held)
        except GenesysTokenError as exc:
            error = exc
        except BaseException as exc:
            log.exception("token acquisition failed unexpectedly")
            error = TokenRequestError(
                f"token acquisition failed unexpectedly ({type(exc).__name__})"
            )
        with self._cond:
            if self.closed or flight.cancel.cancelled:
                cell, error = None, ManagerClosedError("the token manager is closed")
            elif cell is not None:
                self._install(cell)
            flight.error = error
            flight.done = True
            if self._flight is flight:
                self._flight = None
            # Before the waiters wake: a waiter must find the backoff of a failure in place.
            self._settle(flight, cell, error)
            self._cond.notify_all()
        # After the waiters woke (a slow listener must not hold them), with no lock held (a
        # listener may call back into the manager; the next flight may start).
        self._finished(flight, cell, error)

    def close(self) -> None:
        """Refuse every later call, abandon the flight in progress, release the waiters."""
        with self._cond:
            self.closed = True
            flight = self._flight
            self._cond.notify_all()
        if flight is not None:
            flight.cancel.cancel()


def _copy(error: BaseException) -> BaseException:
    """A copy per waiter: one exception object raised in many threads shares a traceback."""
    try:
        duplicate = copy.copy(error)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is raised as is
        return error
    return duplicate.with_traceback(None)
