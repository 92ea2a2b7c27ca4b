"""When a manager goes to the network: the slow path of ``get_token``, the scheduled
refresh, on-demand refreshes, backoff after failures, the credentials cool-down at the
callers' door, the bound on 401 replacements, and bringing the refresh back after a fork.

Everything here runs with no lock held except the single flight's, briefly; network work is
the single flight's (``_flight``), which runs one acquisition at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..credentials import digest, is_known
from ..errors import (
    ConfigurationError,
    GenesysTokenError,
    InvalidClientError,
    ManagerClosedError,
    RateLimitedError,
    SecretSourceError,
    TokenRejectedError,
)
from ..http.retry_policy import FULL_JITTER, Backoff
from ..observability.reporter import Reporter
from ..settings import Config, Credentials
from .clock import Clock
from .outage import Outage
from .rejections import RejectedCredentials
from .schedule import Cell
from .scheduler import Job, scheduler
from .single_flight import (
    Acquire,
    AnyValid,
    FetchedAfter,
    Flight,
    NotDue,
    SingleFlight,
    copied_error,
)

log = logging.getLogger(__name__)

#: Backoff after a failed refresh: capped exponential with full jitter, and never longer than
#: a quarter of what is left of the latest-expiring token of the manager's lanes, so the
#: client is retried before its last token lapses (see ``_back_off``).
FAILURE_BACKOFF_BASE = 1.0
FAILURE_BACKOFF_MAX = 60.0
FAILURE_BACKOFF_MIN = 0.05
FAILURE_BACKOFF = Backoff(
    FAILURE_BACKOFF_BASE, FAILURE_BACKOFF_MAX, FULL_JITTER, minimum=FAILURE_BACKOFF_MIN
)
#: The scheduler looks at a background flight this long after its deadline.
SCHEDULER_SLACK = 0.05
#: During a credentials cool-down, a secret source (callable, file) is re-read at most this
#: often by callers; a plain string changes only through set_credentials().
SECRET_RECHECK = 1.0


def check_timeout(value: object, name: str) -> float:
    """A caller's bound in seconds: a number >= 0, ``inf`` meaning none of its own.

    Raises:
        ConfigurationError: Not a number, negative, or NaN (named ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number >= 0 or None", field=name)
    try:
        seconds = float(value)
    except OverflowError:  # an int past float's range: no bound of its own either
        seconds = float("inf")
    if not seconds >= 0:  # NaN too
        raise ConfigurationError(f"{name} must be a number >= 0 or None", field=name)
    return seconds


class Refresher:
    """The refresh policy of one manager, and the owner of its token state (``flight``:
    the current cell, the credentials, the acquisition in progress, closed) and of the
    credentials cool-down (``rejected``).

    Args:
        config: The manager's config.
        acquire: Runs one acquisition (see :class:`~genesys_token.core.acquisition.Acquirer`).
        rejected: The credentials cool-down the acquisitions record rejections in.
        reporter: Its events and metrics.
        clock: Its clock.
        name: Names the flights' threads.
        bound: Seconds a flight may run before it is abandoned.
        wait_bound: The longest a caller waits when it gave no timeout.
        outage: The backoff, fresh-401 rule and probe shared with the manager's other
            tokens (:class:`~genesys_token.core.outage.Outage`); its own when None.
    """

    def __init__(
        self,
        *,
        config: Config,
        acquire: Acquire,
        rejected: RejectedCredentials,
        reporter: Reporter,
        clock: Clock,
        name: str,
        bound: float,
        wait_bound: float,
        outage: Outage | None = None,
    ) -> None:
        self._outage = outage if outage is not None else Outage()
        self._inner = acquire
        #: The acquisition that failed with the probe's error (not a failure of its own).
        self._deferred: Flight | None = None
        self.flight = self._flight = SingleFlight(
            config=config,
            acquire=self._acquire,
            outcome=self,
            now=clock.monotonic,
            name=name,
            bound=bound,
        )
        self._reporter = reporter
        self._clock = clock
        self._now = clock.monotonic
        self._wait_bound = wait_bound
        self.rejected = rejected
        self.job: Job | None = None
        self._nudged: Cell | None = None
        self._parked: tuple[Cell, Cell] | None = None
        #: Called when a forked child's first use of this token resumed its refresh (the
        #: lanes resume every other token's too); None: nothing else to resume.
        self.on_resume: Callable[[], None] | None = None

    @property
    def _retry_at(self) -> float | None:
        return self._outage.retry_at

    def _acquire(self, flight: Flight, held: Cell | None) -> Cell:
        """The acquisition, once the shared probe lets it go (see ``Outage.admit``); the
        backoff does not hold back a fetch that skips the store (``refresh(force=True)``,
        ``rotate()``: the caller asked for the network now)."""
        error = self._outage.admit(self, flight, self._now, held=flight.spec.use_store)
        if error is not None:
            self._deferred = flight
            raise error
        flight.retry_check = lambda: self._may_retry(flight)
        return self._inner(flight, held)

    def _may_retry(self, flight: Flight) -> bool:
        """Before a retry of ``flight``'s token request: whether this token retries, or
        leaves the retries to the token probing the client (``Outage.may_retry``); then its
        failure is the probe's to count and report, as for an acquisition ``admit`` held."""
        if self._outage.may_retry(self, flight, self._now):
            return True
        self._deferred = flight
        return False

    # -- callers -------------------------------------------------------------------------

    def slow(self, timeout: float | None) -> Cell:
        """``get_token`` without a fresh token: refresh if due, fetch if none is valid."""
        if self._flight.closed:
            raise ManagerClosedError("the token manager is closed")
        if self._parked is not None:
            self._unpark()
        cell = self._flight.cell
        now = self._now()
        if cell is not None and cell.usable(now):
            if now >= cell.refresh_at:
                self._due(cell, timeout)
                cell, now = self._flight.cell, self._now()  # the refresh may have taken a while
            if cell is not None and cell.usable(now):
                return cell
        self._reporter.expired(cell)
        self.raise_if_rejected()
        self._raise_if_backing_off(now)
        want = AnyValid(self._flight.credentials)
        return self._flight.obtain(want, deadline=self.deadline(timeout), reason="no valid token")

    def _raise_if_backing_off(self, now: float) -> None:
        """After a failed acquisition, callers with no valid token get its error until the
        backoff (Retry-After included) has passed: an outage must not turn every call into
        token requests."""
        error, retry_at = self._outage.last_error, self._outage.retry_at
        if isinstance(error, InvalidClientError):
            return  # the credentials cool-down decides (it knows when the secret changes)
        if error is not None and retry_at is not None and now < retry_at:
            self._reporter.metrics.incr("rejected_calls")
            raise copied_error(error)

    def due_nowait(self, cell: Cell, now: float) -> bool:
        """For a caller that must not block: get a due refresh going. False when the token
        may not be handed out without the slow path (parked after a fork)."""
        if self._parked is not None:
            return False
        if now >= cell.refresh_at:
            if self._flight.config.background_refresh:
                self._due(cell, None)
            elif self._retry_at is None or now >= self._retry_at:
                self._flight.start(NotDue(self._flight.credentials), "on-demand")
        return True

    def _due(self, cell: Cell, timeout: float | None) -> None:
        if self._flight.config.background_refresh:
            # Once per token (the scheduler may be on a stale plan), and again while its
            # thread could not start (a pids limit): a caller then brings it back.
            if (
                self._retry_at is None
                and self.job is not None
                and (self._nudged is not cell or not scheduler().running)
            ):
                self._nudged = cell
                scheduler().schedule(self.job, 0.0)
            return
        retry_at = self._retry_at
        if self._flight.running or (retry_at is not None and self._now() < retry_at):
            return  # one caller refreshes; the others keep the valid token
        try:
            want = NotDue(self._flight.credentials)
            self._flight.obtain(want, deadline=self.deadline(timeout), reason="on-demand")
        except ManagerClosedError:
            raise
        except GenesysTokenError:
            pass  # backed off in finished(); the token in hand is still valid

    def allow_replacement(self, access_token: str) -> None:
        """Before replacing a token the API rejected: at most one fresh token per cool-down.

        Raises:
            TokenRejectedError: The API keeps rejecting freshly fetched tokens.
            InvalidClientError: The credentials are in their cool-down.
        """
        if self._parked is not None:
            self._unpark()
        with self._flight.lock:
            cell = self._flight.cell
            now = self._now()
            if cell is not None and cell.access_token == access_token:
                try:
                    with self._outage.lock:
                        self._outage.fresh_401.allow(access_token, now - cell.installed_at, now)
                except TokenRejectedError:
                    self._reporter.metrics.incr("api_rejections")
                    raise
        self.raise_if_rejected()

    def raise_if_rejected(self) -> None:
        """During a credentials cool-down, fail at once (no flight, no request); a secret
        source gets re-read once a second in case it now gives another secret, until the
        cool-down has tried one (then another waits for its end: see ``_rejections``)."""
        credentials = self._flight.config.credentials
        secret = credentials.client_secret
        # A string secret is known now: a cool-down of other credentials does not apply.
        named = digest(credentials.client_id, secret) if is_known(secret) else None
        error = self.rejected.check(named)
        if error is None:
            return
        if not is_known(secret) and self.rejected.open_to_another:
            now = self._now()
            with self._outage.lock:  # one re-read per second for all the tokens
                if now >= self._outage.recheck_at:
                    self._outage.recheck_at = now + SECRET_RECHECK
                    return  # let this caller's acquisition read the source again
        self._reporter.metrics.incr("rejected_calls")
        raise error

    def use_credentials(self, new: Credentials) -> None:
        """Use ``new`` for the next token request (``set_credentials``). If they differ from
        the ones in use, the cool-down ends at once, and so does a backoff that a rejection
        started (a backoff after an outage or throttling stays: new credentials do not
        bring the endpoint back). The same ones again change nothing: a cool-down stays."""
        if not self._flight.use_credentials(new):
            return
        self._reporter.client_id = new.client_id
        self.rejected.clear()
        if isinstance(self._outage.last_error, InvalidClientError):
            self._outage.forgive()
        self._outage.recheck_at = float("-inf")

    def deadline(self, timeout: float | None) -> float:
        """The ``time.monotonic()`` at which a caller with ``timeout`` gives up.

        ``inf`` sets no bound of the caller's own: it waits for the acquisitions, each of
        which ends by its own deadline.

        Raises:
            ConfigurationError: ``timeout`` is not a number >= 0 (nor ``inf``) or None.
        """
        if timeout is None:
            return time.monotonic() + self._wait_bound
        return time.monotonic() + check_timeout(timeout, "timeout")

    def fetch_new(self, reason: str) -> Cell:
        """A token from the network, by an acquisition that begins after this call
        (``refresh(force=True)``, ``rotate()``); its events are delivered before this
        returns, in order."""
        want = FetchedAfter(self._flight.generation)
        deadline = self.deadline(None)
        return self._flight.obtain(want, deadline=deadline, reason=reason, reported=True)

    # -- the scheduler -------------------------------------------------------------------

    def scheduled(self) -> None:
        """Run by the scheduler's thread at the planned refresh point: starts the refresh
        on a flight thread and never waits for it."""
        if self._flight.closed:
            return
        now = self._now()
        if self._retry_at is not None and now < self._retry_at:
            self.arm(self._retry_at - now)
            return
        cell = self._flight.cell
        if cell is None:
            return
        if cell.fresh(now):
            self.arm(cell.refresh_at - now)  # planned on stale state: refreshed meanwhile
            return
        # Started now, or one already running (a caller's): look again at its deadline.
        flight = self._flight.start(NotDue(self._flight.credentials), "background")
        flight = flight or self._flight.current
        if flight is not None:
            # Look again at its deadline: a flight still running then is abandoned, and the
            # backoff plans the next one. Ended already: its settle() has armed what comes next.
            with self._flight.lock:
                if not flight.done:
                    self.arm(flight.deadline - time.monotonic() + SCHEDULER_SLACK)

    def prefetch(self) -> None:
        """Start fetching a first token in the background when there is none yet (an event
        loop's turn on a token of ``tokens=N`` not fetched yet); never waits, and starts
        nothing during a backoff (a rejected secret's cool-down fails it at once)."""
        if self._flight.cell is not None or self._flight.closed:
            return
        if self._retry_at is not None and self._now() < self._retry_at:
            return
        self._flight.start(NotDue(self._flight.credentials), "first use")

    def arm(self, delay: float) -> None:
        """Plan the next scheduled refresh in ``delay`` seconds (background mode only).

        Under the flight's lock, which ``close()`` takes to set ``closed``: a refresh that
        finishes as the manager closes cannot plan another after close() cancelled it.
        """
        if self.job is None or not self._flight.config.background_refresh:
            return
        with self._flight.lock:
            if not self._flight.closed:
                scheduler().schedule(self.job, delay)

    def settle(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        """After each acquisition, before its waiters wake: the backoff, the next refresh."""
        now = self._now()
        deferred = self._deferred is flight
        if cell is not None:
            self._parked = None  # a new cell: nothing is parked any more
            self._outage.succeeded(self, flight.config.credentials, cell.usable_until)
            self.arm(cell.refresh_at - now)
        elif deferred or not isinstance(error, GenesysTokenError):
            self._outage.ended(self)  # the probe's failure, counted once by its lane
            retry_at = self._outage.retry_at
            if retry_at is not None and self._flight.cell is not None:
                self.arm(max(0.0, retry_at - now))
        elif isinstance(error, ManagerClosedError):
            self._outage.ended(self)
        else:
            self._back_off(self._rejection_kept(flight, error) or error, now)

    def _rejection_kept(
        self, flight: Flight, error: GenesysTokenError
    ) -> InvalidClientError | None:
        """The rejection behind a secret source's failure, now cooling its credentials down.

        A source is read after a token request only when Genesys rejected the secret (to
        look for a rotated one): a flight that made requests and then failed for its source
        was rejected, and the secret it sent still is. Its credentials cool down as if the
        source had given that secret again; the cool-down, not the failure's short backoff,
        then decides who may try again (issue 22: callers made a token request each time
        the backoff ran out). None for any other failure.
        """
        if not isinstance(error, SecretSourceError) or flight.requests == 0:
            return None
        if flight.credentials != self._flight.credentials:
            return None  # set_credentials() since: the new ones owe nothing to this rejection
        cause = error.__context__  # the read that failed ran while handling the rejection
        rejection = (
            cause
            if isinstance(cause, InvalidClientError)
            else InvalidClientError(  # a read abandoned past the deadline has no cause
                "credentials rejected by Genesys (the secret source then failed)",
                attempts=flight.requests,
            )
        )
        return rejection if self.rejected.keep(rejection) is not None else None

    def finished(self, flight: Flight, cell: Cell | None, error: BaseException | None) -> None:
        """After each acquisition, once its waiters woke (no lock held): report it."""
        now = self._now()
        if cell is not None:
            self._reporter.succeeded(cell, flight.reason, flight.requests, now - flight.started)
        elif self._deferred is flight:
            # The probe's failure: reported once, by the token that probed; the requests
            # this one sent before it left the retries to the probe still count.
            if flight.requests:
                self._reporter.metrics.incr("token_requests", flight.requests)
            return
        elif isinstance(error, GenesysTokenError) and not isinstance(error, ManagerClosedError):
            self._reporter.failed(
                error, flight.reason, flight.requests, self._flight.cell, now, now - flight.started
            )
            if not isinstance(error, InvalidClientError):  # that one logs once per cool-down
                log.warning(  # no timer, no next try to announce (the CLI exits)
                    "token refresh failed (%s)%s",
                    _failure_fields(error),
                    f"; next try in {max(0.0, (self._retry_at or now) - now):.2f}s"
                    if self._flight.config.background_refresh
                    else "",
                    extra={
                        "failures": self._outage.failures,
                        "correlation_id": getattr(error, "correlation_id", None),
                    },
                )

    def _back_off(self, error: GenesysTokenError, now: float) -> None:
        failures = self._outage.failures + 1
        cell = self._flight.cell
        # Retries come before the client's last token lapses: no wait longer than a quarter
        # of what is left of the latest-expiring token of ANY lane (every lane waits for this
        # retry time; a caller whose lane's token lapsed is served another lane's).
        until = self._outage.latest_until(now)
        if cell is not None and cell.usable(now):
            until = cell.usable_until if until is None else max(until, cell.usable_until)
        within = (until - now) / 4 if until is not None else None
        delay = FAILURE_BACKOFF.delay(failures, self._clock.random, within=within)
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        if isinstance(error, InvalidClientError):
            delay = max(delay, self.rejected.remaining)
        self._outage.failed(self, error, now + delay)
        if cell is not None:
            self.arm(delay)

    # -- fork ------------------------------------------------------------------------------

    def after_fork(self, job: Job) -> None:
        """In a forked child: fresh locks, a new job, and the cell parked until the first
        use, which brings the refresh back (the hot path takes the slow path once: see
        Cell.parked)."""
        self._flight.reset_after_fork()
        self.job = job
        self._nudged = None
        self.rejected.after_fork()
        self._outage.after_fork()
        cell = self._flight.cell
        if cell is None or self._flight.closed or not self._flight.config.background_refresh:
            return
        if self._parked is not None and cell is self._parked[1]:
            # Forked again before its first use: the real cell is the one parked before
            # (parking the parked copy would refresh every token at once on first use).
            cell = self._parked[0]
        shown = cell.parked()
        self._parked = (cell, shown)
        self._flight.put(shown)

    def _unpark(self) -> None:
        if self.resume() and self.on_resume is not None:
            self.on_resume()  # the other tokens' refreshes come back with this one's

    def resume(self) -> bool:
        """In a forked child: put the parked cell back and arm its refresh (the first use
        does). Returns False when nothing was parked."""
        with self._flight.lock:
            parked = self._parked
            if parked is None:
                return False
            self._parked = None
            real, shown = parked
            if self._flight.cell is shown:
                self._flight.put(real)
        self.arm(real.refresh_at - self._now())
        return True


def _failure_fields(error: GenesysTokenError) -> str:
    """``"TokenRequestError host=h cause=c correlation_id=x"``: absent fields left out."""
    parts = [type(error).__name__]
    for name in ("host", "cause", "status", "correlation_id"):
        value = getattr(error, name, None)
        if value not in (None, ""):
            parts.append(f"{name}={value}")
    return " ".join(parts)
