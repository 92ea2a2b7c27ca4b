"""The emulator's per-token API rate limit: calls per sliding window, counted on arrival."""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingWindowLimit", "parse_rate_limit"]

#: Below this many keys no sweep runs.
SWEEP_MIN_KEYS = 1024


class SlidingWindowLimit:
    """At most ``calls`` admitted per key in **any** window of ``window`` seconds.

    A call is counted when it arrives, and only if admitted: a call answered 429 takes no
    place in the window (it was not served). Windows are half-open: a call that arrived
    at ``t`` no longer counts at ``t + window``. Not thread-safe: the emulator calls it
    under its own lock.

    Args:
        calls: Calls admitted per window (>= 1).
        window: The window's length in seconds (finite, > 0).

    Raises:
        ValueError: ``calls`` or ``window`` out of range.
    """

    def __init__(self, calls: int, window: float) -> None:
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"the API rate limit's calls must be a whole number >= 1: {calls!r}")
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ValueError(f"the API rate limit's window must be a number: {window!r}")
        if not math.isfinite(window) or window <= 0:
            raise ValueError(f"the API rate limit's window must be > 0 seconds: {window!r}")
        self.calls = calls
        self.window = float(window)
        self._arrivals: dict[str, deque[float]] = {}
        #: Keys are swept of idle ones when there are more than this (amortised O(1)).
        self._sweep_at = SWEEP_MIN_KEYS

    def admit(self, key: str, now: float) -> float | None:
        """Count a call of ``key`` arriving at ``now``, if there is room.

        Returns:
            ``None`` when admitted; else the seconds until the oldest counted call leaves
            the window (> 0), when the next call of ``key`` would be admitted.
        """
        if len(self._arrivals) >= self._sweep_at:  # junk bearers must not grow it forever
            self._sweep(now)
        arrivals = self._arrivals.setdefault(key, deque())
        while arrivals and arrivals[0] <= now - self.window:
            arrivals.popleft()
        if len(arrivals) >= self.calls:
            return arrivals[0] + self.window - now
        arrivals.append(now)
        return None

    def _sweep(self, now: float) -> None:
        idle = [k for k, arrivals in self._arrivals.items() if arrivals[-1] <= now - self.window]
        for key in idle:
            del self._arrivals[key]
        self._sweep_at = max(SWEEP_MIN_KEYS, 2 * len(self._arrivals))

    @property
    def keys_kept(self) -> int:
        """How many keys have calls counted (idle ones are swept as keys are added)."""
        return len(self._arrivals)

    def as_tuple(self) -> tuple[int, float]:
        """``(calls, window)``."""
        return self.calls, self.window


def parse_rate_limit(text: str) -> tuple[int, float] | None:
    """``"300/60"`` -> ``(300, 60.0)``; ``"off"`` -> ``None``.

    Raises:
        ValueError: Anything else; the message says what is expected.
    """
    if text.strip().lower() == "off":
        return None
    calls_text, slash, window_text = text.partition("/")
    try:
        calls = int(calls_text)
        window = float(window_text)
    except ValueError:
        calls, window = 0, math.nan
    if not slash or calls < 1 or not math.isfinite(window) or window <= 0:
        raise ValueError(
            "expected CALLS/SECONDS with CALLS a whole number >= 1 and SECONDS a number > 0"
            f" (e.g. 300/60), or off; got {text!r}"
        )
    return calls, window
