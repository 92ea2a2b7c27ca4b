"""Remembering rejections, so that callers cannot turn them into token-request storms.

* :class:`RejectedCredentials` — after Genesys answers ``invalid_client`` or
  ``unauthorized_client``, callers get the same typed error at once, without a token request,
  for a cool-down that doubles from about 1 s to about 60 s (with jitter) with each
  CONSECUTIVE rejection, whichever secret was rejected: a source that gives a new wrong
  secret at each read (a broken vault) cannot reset it. Within one streak of rejections,
  the first secret other than the rejected one (a source rotated after the rejection) is
  tried at once, once; any later new secret waits for the cool-down to end, so a vault
  fixed after that recovers within the current step (at most about 60 s). Only
  ``set_credentials`` with another secret (:meth:`~RejectedCredentials.clear`), or an
  accepted token request, ends the streak. A source that fails when read again right
  after the rejection does not end it (:meth:`~RejectedCredentials.keep`): the secret last
  sent is still the rejected one.
* :class:`RejectedTokens` — after the API answers 401 to a token fetched moments ago,
  at most one such fresh token is replaced per cool-down: an API that rejects every token
  (another region's API host, a client without the role) gets its 401 back, not a new token
  per call.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable

from ..errors import InvalidClientError, TokenRejectedError
from ..http.retry_policy import Backoff

log = logging.getLogger(__name__)

#: Cool-down after a rejected secret: doubling from the first to the cap, +-25% jitter.
CREDENTIALS_COOLDOWN_FIRST = 1.0
CREDENTIALS_COOLDOWN_MAX = 60.0
CREDENTIALS_COOLDOWN = Backoff(
    CREDENTIALS_COOLDOWN_FIRST, CREDENTIALS_COOLDOWN_MAX, jitter=(0.75, 1.25)
)
#: A token younger than this that the API rejects is "fresh"; at most one fresh token is
#: replaced per this many seconds.
FRESH_TOKEN_COOLDOWN = 60.0


class RejectedCredentials:
    """The negative cache of rejected credentials (thread-safe)."""

    def __init__(self, now: Callable[[], float], draw: Callable[[], float]) -> None:
        self._now = now
        self._draw = draw
        self._lock = threading.Lock()
        self._digest: bytes | None = None
        self._error: InvalidClientError | None = None
        self._until = float("-inf")
        #: Consecutive rejections, whichever credentials (a new secret does not reset them).
        self._strikes = 0
        #: The one secret other than the rejected one that this streak tried (or lets try)
        #: at once; None while no other secret was named.
        self._other: bytes | None = None
        #: The credentials last named to :meth:`check` (an acquisition names those it is
        #: about to send), for :meth:`keep`.
        self._named: bytes | None = None

    @property
    def remaining(self) -> float:
        """Seconds left of the cool-down (0 when none)."""
        return max(0.0, self._until - self._now())

    @property
    def active(self) -> bool:
        """Whether a cool-down runs (read without the lock: it is advisory)."""
        return self._now() < self._until

    @property
    def open_to_another(self) -> bool:
        """Whether a secret other than the rejected one would be tried at once (read
        without the lock: it is advisory). False once this streak tried one: reading a
        source again during the cool-down is then pointless."""
        return self._other is None

    def record(self, digest: bytes, error: InvalidClientError) -> float:
        """Genesys rejected the credentials named by ``digest``; returns the cool-down."""
        with self._lock:
            cooldown = self._record(digest, error)
        # Once per cool-down: the only token request of the cool-down was just rejected.
        log.warning(
            "Genesys rejected the client credentials (%s); no token request for %.1fs. "
            "set_credentials() with another secret, or a token accepted, ends this.",
            error.error or f"HTTP {error.status}",
            cooldown,
            extra={"cooldown": round(cooldown, 3), "strikes": self._strikes},
        )
        return cooldown

    def check(self, digest: bytes | None = None) -> InvalidClientError | None:
        """The error to raise now without a request, or None.

        Args:
            digest: The credentials about to be used (remembered for :meth:`keep`). During
                the cool-down, the first ones other than the rejected ones in this streak
                may be tried at once (and again until they are rejected: callers at the door
                and the acquisition name them in turn); any others wait for its end, which
                the next rejection doubles. None: whichever credentials (the caller cannot
                tell yet).
        """
        with self._lock:
            if digest is not None:
                self._named = digest
            if self._error is None or self._now() >= self._until:
                return None
            if digest is None or digest == self._digest:
                return _copy(self._error)
            if self._other is None:
                self._other = digest  # a source rotated after the rejection: one try
            if digest == self._other:
                return None
            return _copy(self._error)

    def keep(self, error: InvalidClientError) -> float | None:
        """Genesys rejected the credentials last named to :meth:`check` with ``error``, and
        the secret source then failed when read again to look for a new secret: those
        credentials cool down all the same (without this, the failure's short backoff was
        all that stood between the callers and the token endpoint). Logs nothing: the
        caller reports the source's failure.

        Returns:
            The cool-down, or None when no credentials were named yet.
        """
        with self._lock:
            if self._named is None:
                return None
            return self._record(self._named, _copy(error))

    def after_fork(self) -> None:
        """A fresh lock in a forked child: a parent thread may have held this one."""
        self._lock = threading.Lock()

    def clear(self) -> None:
        """End the cool-down and the streak (new credentials, or a token accepted)."""
        with self._lock:
            self._clear()

    def _record(self, digest: bytes, error: InvalidClientError) -> float:
        """Start (or lengthen) the cool-down after ``digest`` was rejected (lock held);
        returns it. It doubles with each consecutive rejection, whichever the secret."""
        self._strikes += 1
        self._digest = digest
        self._error = error
        cooldown = CREDENTIALS_COOLDOWN.delay(self._strikes, self._draw)
        self._until = self._now() + cooldown
        return cooldown

    def _clear(self) -> None:
        self._digest = None
        self._error = None
        self._until = float("-inf")
        self._strikes = 0
        self._other = None


class RejectedTokens:
    """Which fresh token the API rejected last, and when (guarded by the manager's lock)."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._at = float("-inf")
        self._reported_at = float("-inf")

    def allow(self, rejected: str, age: float, now: float) -> None:
        """Allow replacing ``rejected`` (``age`` seconds old), or raise.

        Raises:
            TokenRejectedError: A fresh token other than ``rejected`` was already replaced
                within the cool-down.
        """
        if age >= FRESH_TOKEN_COOLDOWN:
            return  # a token that lived a while and is now refused was revoked: replace it
        if self._token == rejected:
            return  # the replacement of this very token: join it
        if now - self._at < FRESH_TOKEN_COOLDOWN:
            if now - self._reported_at >= FRESH_TOKEN_COOLDOWN:
                self._reported_at = now
                log.warning(
                    "the API rejected (401) a token fetched %.1fs ago, after a first fresh "
                    "token was rejected too; not requesting another for %.0fs. Usually the "
                    "API host (api_base_url) is in another region than the token endpoint, or "
                    "the OAuth client lacks the permission (role) the call needs.",
                    age,
                    FRESH_TOKEN_COOLDOWN - (now - self._at),
                )
            raise TokenRejectedError(
                "the API keeps rejecting freshly fetched tokens (401); not replacing this one"
            )
        self._token = rejected
        self._at = now


def _copy(error: InvalidClientError) -> InvalidClientError:
    duplicate = copy.copy(error)
    return duplicate.with_traceback(None)
