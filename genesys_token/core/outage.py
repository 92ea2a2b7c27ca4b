"""What one client's failures leave behind, shared by the tokens (lanes) of a manager.

A login host that is down, a secret Genesys rejects, an API that rejects every token: each
is a fact about the client, not about one of its tokens. With ``tokens=N``, a backoff or
cool-down kept per token would let each token try on its own, N token requests where one
token makes one. :class:`Outage` keeps them once per manager:

* the failure count, the end of the backoff (``retry_at``) and the error callers get
  meanwhile (``last_error``); the backoff is capped by a quarter of what is left of the
  latest-expiring token of any lane (:meth:`Outage.latest_until`), so the client is retried
  before its last token lapses, as with one token (callers whose token lapsed are served the
  others'); capping by the earliest one made each token's end its own run of shrinking
  retries: N times the requests of one token in a long outage;
* the fresh-token 401 rule (:class:`~genesys_token.core.rejections.RejectedTokens`): at most
  one fresh token replaced per cool-down, whichever token the API rejected;
* when a secret source may next be re-read during a credentials cool-down (``recheck_at``);
* the probe: until a token was acquired with the credentials in use, and while acquisitions
  fail, ONE acquisition at a time may go to the network (or the store); the acquisitions of
  the other tokens wait for its outcome and fail with its error, or go on once it succeeded.
  No probe starts before ``retry_at``: an acquisition that passed the backoff check just
  before the previous probe failed fails with that error. A wrong secret costs one token
  request, not N; an outage one per backoff, not N.

With ``tokens=1`` the one acquisition is always the probe: nothing changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import GenesysTokenError, InvalidClientError, ManagerClosedError
from ..settings import Credentials
from .rejections import RejectedTokens
from .single_flight import Flight, copied_error

#: The longest an acquisition waiting for the probe sleeps before it looks at whether it was
#: abandoned (close() does not wake it).
PROBE_POLL = 0.25


class Outage:
    """The backoff, fresh-401 rule, secret re-read time and probe of one manager's client
    (thread-safe; see the module docstring)."""

    def __init__(self) -> None:
        self.after_fork()
        #: Consecutive failed acquisitions (0: none since the last success).
        self.failures = 0
        #: When (manager clock) the backoff after the last failure ends; None: no backoff.
        self.retry_at: float | None = None
        #: The last failure's error, raised to callers with no valid token until ``retry_at``.
        self.last_error: GenesysTokenError | None = None
        #: At most one fresh token replaced per cool-down (use under ``lock``).
        self.fresh_401 = RejectedTokens()
        #: During a credentials cool-down, a secret source is re-read no earlier than this.
        self.recheck_at = float("-inf")
        #: The credentials a token was last acquired with (None: none yet).
        self._proven: Credentials | None = None
        #: The lane (any object) whose acquisition is the probe now; None: no probe.
        self._prober: Any = None
        #: Each lane's last acquired token's usable-until (manager clock).
        self._until: dict[Any, float] = {}
        #: A token request failed and was to be retried since the last success: the client
        #: is in trouble before any acquisition has ended (see :meth:`may_retry`).
        self._troubled = False

    def after_fork(self) -> None:
        """Fresh lock, no probe (a forked child has none of the parent's threads)."""
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self._prober = None

    def admit(
        self, lane: object, flight: Flight, now: Callable[[], float], *, held: bool = True
    ) -> GenesysTokenError | None:
        """Before ``lane``'s acquisition ``flight`` goes to the network or the store, on the
        flight's thread: return at once while the client is known good (its credentials
        proven, no failure since), or when this one becomes the probe; otherwise wait for
        the probe in progress (until the flight is abandoned or its deadline). ``now`` is
        the manager clock ``retry_at`` is on: before it, no probe starts, unless ``held``
        is False (a caller's explicit fetch: ``refresh(force=True)``, ``rotate()``).

        Returns:
            None: go on. An error: the probe failed, or the backoff after it has not ended
            (its error, a copy); fail with it without counting another failure.
        """
        credentials = flight.config.credentials
        with self._cond:
            if self._healthy(credentials):
                return None
            if self._prober is None or self._prober is lane:
                return self._probe(lane, now() if held else None)
            while (
                self._prober is not None
                and not flight.cancel.is_set()
                and (left := flight.deadline - time.monotonic()) > 0
            ):
                self._cond.wait(min(left, PROBE_POLL))
            if flight.cancel.is_set():
                return ManagerClosedError("the token acquisition was abandoned")
            if self._healthy(credentials):
                return None
            if self.failures and self.last_error is not None:
                return copied_error(self.last_error)
            if self._prober is None:
                return self._probe(lane, now() if held else None)
            return None  # past its deadline: abandoned already, its result is discarded

    def _probe(self, lane: object, now: float | None) -> GenesysTokenError | None:
        """``lane``'s acquisition becomes the probe, unless the backoff has not ended (then
        the last failure's error, a copy). A rejected secret's backoff does not hold it
        back: the credentials cool-down decides (a secret source may give another secret).
        ``now`` None: no backoff holds it back."""
        error, retry_at = self.last_error, self.retry_at
        if (
            now is not None
            and self.failures
            and error is not None
            and not isinstance(error, InvalidClientError)
            and retry_at is not None
            and now < retry_at
        ):
            return copied_error(error)
        self._prober = lane
        return None

    def latest_until(self, now: float) -> float | None:
        """The latest usable-until after ``now`` among the lanes' tokens; None: no lane has
        a usable token."""
        with self._cond:
            return max((until for until in self._until.values() if until > now), default=None)

    def _healthy(self, credentials: Credentials) -> bool:
        return self.failures == 0 and not self._troubled and self._proven == credentials

    def may_retry(self, lane: object, flight: Flight, now: Callable[[], float]) -> bool:
        """Before a retry of ``lane``'s token request (``flight``), which failed: from now
        on the client is in trouble, so later acquisitions wait for the probe (:meth:`admit`).
        The first lane to ask becomes the probe and retries, unless a probe failed already
        and its backoff (``now``, the manager clock) has not ended. Another waits for the
        probe's outcome (as :meth:`admit` would) and retries only if it succeeded: acquisitions
        admitted together while the client looked good make one request each, not each
        its whole retry budget (review 9: 16 tokens made 79 requests where one made 6).

        Returns:
            True: retry. False: do not; the failure is the probe's to count.
        """
        with self._cond:
            if flight.cancel.is_set():
                return False  # abandoned (settled already): it must not become the probe
            self._troubled = True
            if self._prober is lane:
                return True
            if self._prober is None:
                return self._probe(lane, now()) is None  # not during the backoff
            while (
                self._prober is not None
                and not flight.cancel.is_set()
                and (left := flight.deadline - time.monotonic()) > 0
            ):
                self._cond.wait(min(left, PROBE_POLL))
            return self.failures == 0 and not self._troubled and not flight.cancel.is_set()

    def succeeded(self, lane: object, credentials: Credentials, usable_until: float) -> None:
        """``lane`` got a token with ``credentials``, usable until ``usable_until``: the
        backoff ends, the credentials are proven, the probe (if it was ``lane``'s) ends; the
        waiting acquisitions go on."""
        with self._cond:
            self.failures, self.retry_at, self.last_error = 0, None, None
            self._troubled = False
            self._proven = credentials
            self._until[lane] = usable_until
            if self._prober is lane:
                self._prober = None
            self._cond.notify_all()

    def failed(self, lane: object, error: GenesysTokenError, retry_at: float) -> None:
        """``lane``'s acquisition failed with ``error``; the next may start at ``retry_at``.
        Ends ``lane``'s probe; the waiting acquisitions fail with ``error``."""
        with self._cond:
            self.failures += 1
            self.retry_at, self.last_error = retry_at, error
            self._release(lane)

    def ended(self, lane: object) -> None:
        """``lane``'s acquisition ended with nothing to count (closed, or failed with the
        probe's error): ends its probe if it was one."""
        with self._cond:
            self._release(lane)

    def _release(self, lane: object) -> None:
        if self._prober is lane:
            self._prober = None
        self._cond.notify_all()

    def forgive(self) -> None:
        """New credentials after a rejection: its backoff ends (``set_credentials``)."""
        with self._cond:
            self.failures, self.retry_at, self.last_error = 0, None, None
            self.recheck_at = float("-inf")
            self._cond.notify_all()
