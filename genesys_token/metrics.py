"""Bounded, thread-safe counters and a latency window for ``TokenManager.metrics()``."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ._redact import excerpt

#: Latency samples kept for the percentiles: enough for a stable p95, and a fixed memory
#: cost however long the process runs (the original design kept every sample forever).
LATENCY_WINDOW = 512


class Metrics:
    """Counters of one manager. Every method is O(1) except :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "successes",
                "errors",
                "token_requests",
                "retries",
                "rotations",
                "replays_401",
                "drain_timeouts",
                "revocations",
                "store_hits",
                "store_errors",
                "listener_errors",
                "webhook_deliveries",
                "webhook_failures",
                "webhook_dropped",
            ),
            0,
        )
        self._last_error: str | None = None

    def incr(self, name: str, amount: int = 1) -> None:
        """Add to a counter."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def record_success(self, latency_s: float, requests: int) -> None:
        """Count a successful acquisition and its latency (all attempts included)."""
        with self._lock:
            self._counts["successes"] += 1
            self._counts["token_requests"] += requests
            self._latencies.append(latency_s * 1000.0)

    def record_error(self, error: BaseException, requests: int) -> None:
        """Count a failed acquisition; keep a redacted one-line description of it."""
        with self._lock:
            self._counts["errors"] += 1
            self._counts["token_requests"] += requests
            self._last_error = f"{type(error).__name__}: {excerpt(str(error), 160)}"

    def snapshot(self, *, in_flight: int, expires_in: float | None) -> dict[str, Any]:
        """A copy of every counter plus derived figures."""
        with self._lock:
            counts = dict(self._counts)
            samples = sorted(self._latencies)
            last = self._latencies[-1] if self._latencies else None
            last_error = self._last_error
        attempts = counts["successes"] + counts["errors"]
        return {
            **counts,
            "error_rate": counts["errors"] / attempts if attempts else 0.0,
            "in_flight": in_flight,
            "latency_ms": _summary(samples, last),
            "expires_in": expires_in,
            "last_error": last_error,
        }


def _summary(samples: list[float], last: float | None) -> dict[str, float | None]:
    if not samples:
        return {"avg": None, "p50": None, "p95": None, "max": None, "last": None}

    def pick(share: float) -> float:
        return round(samples[min(len(samples) - 1, int(share * len(samples)))], 3)

    return {
        "avg": round(sum(samples) / len(samples), 3),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "max": round(samples[-1], 3),
        "last": None if last is None else round(last, 3),
    }
