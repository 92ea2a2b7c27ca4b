"""The one backoff and retry policy of the SDK: immutable values, validated when built.

Every place that backs off or retries (the token endpoint, the refresh after a failure, the
credentials cool-down, the webhook sender, :class:`~genesys_token.GenesysRetry`) asks a
:class:`Backoff` how long to wait; none writes the formula itself. Like urllib3's ``Retry``,
a policy is a value: nothing in it changes, so one instance is shared by every thread.

The wait before retry ``n`` (``n >= 1``: the number of failures so far) is drawn from::

    ceiling(n) = min(maximum, base * 2 ** (n - 1))
    delay(n)   = max(minimum, ceiling(n) * (low + (high - low) * draw))    # draw in [0, 1)

where ``(low, high)`` is the jitter: :data:`FULL_JITTER` (0..ceiling, spreads a herd of
clients best), :data:`EQUAL_JITTER` (half to all of it), :data:`NO_JITTER`, or any other
pair of fractions (the credentials cool-down uses 75% to 125%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = [
    "ANY_METHOD_STATUSES",
    "API_BACKOFF_MAX",
    "EQUAL_JITTER",
    "FULL_JITTER",
    "IDEMPOTENT_METHODS",
    "IDEMPOTENT_STATUSES",
    "MAX_EXPONENT",
    "NO_JITTER",
    "Backoff",
    "RetryPolicy",
    "api_answer_retried",
]

#: Anywhere from nothing to the whole ceiling ("full jitter").
FULL_JITTER = (0.0, 1.0)
#: From half the ceiling to all of it ("equal jitter").
EQUAL_JITTER = (0.5, 1.0)
#: Exactly the ceiling.
NO_JITTER = (1.0, 1.0)
#: The doubling stops here: 2**60 times any sane ``base`` is far past any ``maximum``, and a
#: larger exponent only risks an OverflowError after very many failures.
MAX_EXPONENT = 60

# -- API calls (api_session's GenesysRetry and the httpx API clients) ---------------------------
#: A 429 means Genesys did not process the request: safe to send again, whatever the method.
ANY_METHOD_STATUSES = frozenset({429})
#: A gateway or service error may come after the request was processed: idempotent methods.
IDEMPOTENT_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: No single backoff wait of an API call (without ``Retry-After``) is longer than this.
API_BACKOFF_MAX = 10.0


def api_answer_retried(
    method: str, status: int, methods: Collection[str] = IDEMPOTENT_METHODS
) -> bool:
    """Whether an API call that got ``status`` is sent again: a 429 whatever the method,
    502/503/504 only for ``methods`` (the idempotent ones by default)."""
    if status in ANY_METHOD_STATUSES:
        return True
    return status in IDEMPOTENT_STATUSES and method.upper() in methods


def _seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds >= 0, or ConfigurationError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, not {type(value).__name__}", field=name)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}", field=name)
    return number


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter (immutable, thread-safe).

    Attributes:
        base: Ceiling of the first wait, in seconds; it doubles with each failure.
        maximum: Largest ceiling, in seconds.
        jitter: ``(low, high)``: the wait is drawn between these fractions of the ceiling.
        minimum: No wait is shorter than this, in seconds.

    Raises:
        ConfigurationError: A field is not a finite number >= 0, or ``jitter`` is not two
            such fractions with ``low <= high`` (``field`` names it).
    """

    base: float
    maximum: float
    jitter: tuple[float, float] = FULL_JITTER
    minimum: float = 0.0

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "base", _seconds("base", self.base))
        put(self, "maximum", _seconds("maximum", self.maximum))
        put(self, "minimum", _seconds("minimum", self.minimum))
        jitter = self.jitter
        if not isinstance(jitter, tuple) or len(jitter) != 2:
            raise ConfigurationError("jitter must be a (low, high) pair", field="jitter")
        low, high = (_seconds("jitter", fraction) for fraction in jitter)
        if low > high:
            raise ConfigurationError(
                f"jitter must have low <= high, got {jitter!r}", field="jitter"
            )
        put(self, "jitter", (low, high))

    def ceiling(self, attempt: int) -> float:
        """The longest wait after ``attempt`` failures (1 for the first): ``base`` doubled
        ``attempt - 1`` times, at most ``maximum``.

        Raises:
            ValueError: ``attempt`` is below 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        return min(self.maximum, self.base * 2.0 ** min(attempt - 1, MAX_EXPONENT))

    def interval(self, attempt: int) -> tuple[float, float]:
        """The bounds the wait after ``attempt`` failures is drawn between (no ``minimum``):
        ``random.uniform(*interval)`` draws the same waits as :meth:`delay`."""
        ceiling = self.ceiling(attempt)
        low, high = self.jitter
        return ceiling * low, ceiling * high

    def delay(
        self, attempt: int, random: Callable[[], float], *, within: float | None = None
    ) -> float:
        """The wait after ``attempt`` failures (1 for the first), in seconds.

        Args:
            attempt: Failures so far (>= 1).
            random: A uniform draw in [0, 1) (the caller's clock, for deterministic tests).
            within: A further cap on the ceiling (never below ``minimum``), such as a
                quarter of what is left of a token.

        Raises:
            ValueError: ``attempt`` is below 1.
        """
        ceiling = self.ceiling(attempt)
        if within is not None:
            ceiling = min(ceiling, max(self.minimum, within))
        low, high = self.jitter
        return max(self.minimum, ceiling * (low + (high - low) * random()))


@dataclass(frozen=True)
class RetryPolicy:
    """How often, for how long, and how far apart a request is tried again (immutable).

    Attributes:
        max_retries: Retries after the first attempt (0: none).
        deadline: No retry may start later than this many seconds after the first attempt.
        max_retry_after: Longest ``Retry-After`` honoured, in seconds.
        backoff: The wait when the server names none.

    Raises:
        ConfigurationError: A field is out of range (``field`` names it).
    """

    max_retries: int
    deadline: float
    max_retry_after: float
    backoff: Backoff

    def __post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"max_retries must be an integer >= 0, got {retries!r}", field="max_retries"
            )
        object.__setattr__(self, "deadline", _seconds("deadline", self.deadline))
        object.__setattr__(
            self, "max_retry_after", _seconds("max_retry_after", self.max_retry_after)
        )
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError("backoff must be a Backoff", field="backoff")

    def retry_after(self, seconds: float) -> float:
        """A server's ``Retry-After``, capped at ``max_retry_after``."""
        return min(seconds, self.max_retry_after)

    def wait(self, attempt: int, retry_after: float | None, random: Callable[[], float]) -> float:
        """The wait after ``attempt`` failed: the server's ``Retry-After`` (capped) when it
        named one, else the backoff."""
        if retry_after is not None:
            return self.retry_after(retry_after)
        return self.backoff.delay(attempt, random)

    def allows(self, attempt: int, resume_at: float, give_up_at: float) -> bool:
        """Whether ``attempt`` (1 for the first request) may be followed by another that
        starts at ``resume_at``; ``give_up_at`` is the first attempt's start plus
        ``deadline`` (same clock)."""
        return attempt <= self.max_retries and resume_at <= give_up_at
