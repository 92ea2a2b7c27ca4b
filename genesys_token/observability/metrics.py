"""Bounded, thread-safe counters and a latency window for ``TokenManager.metrics()``.

Memory is constant however long the process runs: a fixed set of integer counters, the
last error as one short redacted line, at most :data:`LATENCY_WINDOW` latency samples, and
a latency histogram of fixed buckets (:data:`LATENCY_BUCKETS`) counted since the start:
percentiles of one host cannot be combined with another's, bucket counts can.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any

from .redaction import excerpt

#: Latency samples kept for the percentiles: enough for a stable p95, and a fixed memory
#: cost however long the process runs (the original design kept every sample forever).
LATENCY_WINDOW = 512

#: Monotonic counters of a manager, as named in ``metrics()``; exporters treat them as
#: Prometheus counters.
COUNTERS = (
    "successes",
    "errors",
    "token_requests",
    "retries",
    "rotations",
    "replays_401",
    "api_rejections",
    "api_429s",
    "rejected_calls",
    "drain_timeouts",
    "revocations",
    "store_hits",
    "store_errors",
    "listener_errors",
    "webhook_deliveries",
    "webhook_failures",
    "webhook_dropped",
)

#: The statistics of ``metrics()["latency_ms"]``.
LATENCY_STATS = ("avg", "p50", "p95", "max", "last")

#: Upper bounds (seconds) of the latency histogram's buckets. A token request usually takes
#: 50 ms to 1 s; with retries and backoff an acquisition may last up to the retry deadline
#: (60 s by default). The last bucket, +Inf, is implied.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: ``last_error`` is cut to this many characters: enough to diagnose, bounded to store.
LAST_ERROR_CHARS = 160


class Metrics:
    """Counters of one manager. Every method is O(1) except :meth:`snapshot`."""

    def __init__(self) -> None:
        # One lock for all counters: `d[k] += 1` is a read-modify-write that threads
        # would otherwise interleave and lose updates in.
        self._lock = threading.Lock()
        # Only the counters that moved, and a ring that grows to LATENCY_WINDOW samples: a
        # manager of a many-org process makes a token request or two a day, and a full
        # deque block and sixteen zeros were a KiB each of its idle cost.
        self._latencies: list[float] = []
        self._oldest = 0  # where the next sample goes once the ring is full
        self._counts: dict[str, int] = {}
        self._last_error: str | None = None
        # One count per bucket of LATENCY_BUCKETS plus +Inf (not cumulative), and the sum.
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def after_fork(self) -> None:
        """Replace the lock in a forked child: a parent thread may have held it at fork."""
        self._lock = threading.Lock()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name`` (one of :data:`COUNTERS`)."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def record_success(self, latency_s: float, requests: int) -> None:
        """Count a successful acquisition and its latency (all attempts included).

        Args:
            latency_s: Seconds from the first request to the validated token.
            requests: Token requests the acquisition made.
        """
        with self._lock:
            counts = self._counts
            counts["successes"] = counts.get("successes", 0) + 1
            counts["token_requests"] = counts.get("token_requests", 0) + requests
            ring = self._latencies
            if len(ring) < LATENCY_WINDOW:
                ring.append(latency_s * 1000.0)
            else:
                ring[self._oldest] = latency_s * 1000.0
                self._oldest = (self._oldest + 1) % LATENCY_WINDOW
            self._bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self._latency_sum += latency_s

    def record_error(self, error: BaseException, requests: int) -> None:
        """Count a failed acquisition; keep a redacted one-line description of it.

        Args:
            error: What the acquisition raised.
            requests: Token requests the acquisition made.
        """
        description = f"{type(error).__name__}: {excerpt(str(error), LAST_ERROR_CHARS)}"
        with self._lock:
            counts = self._counts
            counts["errors"] = counts.get("errors", 0) + 1
            counts["token_requests"] = counts.get("token_requests", 0) + requests
            self._last_error = description

    def snapshot(self, *, in_flight: int, expires_in: float | None) -> dict[str, Any]:
        """A copy of every counter plus derived figures.

        Args:
            in_flight: Counted uses of the token in progress.
            expires_in: Seconds until the current token expires, or ``None``.

        Returns:
            Every counter of :data:`COUNTERS`, ``error_rate`` (errors per acquisition),
            ``in_flight``, ``latency_ms`` (``avg``, ``p50``, ``p95``, ``max``, ``last`` over
            the last :data:`LATENCY_WINDOW` acquisitions, ``None`` before the first),
            ``latency_histogram`` (every successful acquisition since the start:
            ``buckets``, cumulative ``(upper bound in seconds, count)`` pairs ending with
            ``inf``; ``sum`` in seconds; ``count``), ``expires_in`` and ``last_error``.
        """
        counts = dict.fromkeys(COUNTERS, 0)
        with self._lock:
            counts.update(self._counts)
            ring, oldest = self._latencies, self._oldest
            samples = ring[oldest:] + ring[:oldest]  # oldest first
            last_error = self._last_error
            bucket_counts = list(self._bucket_counts)
            latency_sum = self._latency_sum
        attempts = counts["successes"] + counts["errors"]
        return {
            **counts,
            "error_rate": round(counts["errors"] / attempts, 6) if attempts else 0.0,
            "in_flight": in_flight,
            "latency_ms": latency_summary(samples),
            "latency_histogram": _histogram(bucket_counts, latency_sum),
            "expires_in": expires_in,
            "last_error": last_error,
        }


def _histogram(bucket_counts: list[int], total: float) -> dict[str, Any]:
    cumulative = 0
    buckets = []
    for bound, count in zip((*LATENCY_BUCKETS, math.inf), bucket_counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return {"buckets": buckets, "sum": total, "count": cumulative}


def latency_summary(samples: list[float]) -> dict[str, float | None]:
    """Average, nearest-rank p50/p95, maximum and last of ``samples`` (in arrival order).

    Args:
        samples: Latencies in milliseconds, oldest first.

    Returns:
        A dict keyed by :data:`LATENCY_STATS`; every value ``None`` when there are no samples.
    """
    if not samples:
        return dict.fromkeys(LATENCY_STATS)
    ordered = sorted(samples)

    def rank(share: float) -> float:
        # Nearest rank: the smallest sample with at least `share` of the samples at or below.
        return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)], 3)

    return {
        "avg": round(sum(ordered) / len(ordered), 3),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "max": round(ordered[-1], 3),
        "last": round(samples[-1], 3),
    }
