"""A Prometheus collector for ``TokenManager.metrics()`` (needs the ``[prometheus]`` extra).

::

    from prometheus_client import REGISTRY, start_http_server
    from genesys_token.observability.prometheus import GenesysTokenCollector

    REGISTRY.register(GenesysTokenCollector(manager))
    start_http_server(9100)

Each scrape reads one ``metrics()`` snapshot per manager (no network, no token lock) and
yields, labelled with ``client_id``:

* counters ``genesys_token_<name>_total`` for every counter of
  :data:`genesys_token.observability.metrics.COUNTERS` (``successes``, ``errors``,
  ``token_requests``, ...);
* gauges ``genesys_token_error_rate``, ``genesys_token_in_flight``,
  ``genesys_token_expires_in_seconds`` (absent before the first token),
  ``genesys_token_tokens_in_use`` (tokens of the client usable now: ``tokens=N``);
* histogram ``genesys_token_latency_seconds`` (``_bucket{le=...}``, ``_sum``, ``_count``):
  how long successful token acquisitions took, since the manager started. A histogram, not
  quantile gauges, so that a fleet's latency can be aggregated across hosts
  (``histogram_quantile(0.95, sum by (le) (rate(genesys_token_latency_seconds_bucket[5m])))``);
* with ``api_rate_limit`` (pacing): counters ``genesys_token_api_calls_paced_total``,
  ``_api_calls_waited_total``, ``_api_calls_rate_limited_total`` (gave up, nothing sent),
  ``_api_throttled_total`` (429s, also by ``token_fingerprint``), gauges
  ``genesys_token_api_waiting`` and ``_api_tokens_paced``, and the histogram
  ``genesys_token_api_wait_seconds`` of the time calls waited for a slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.core import (  # type: ignore[import-not-found,unused-ignore]
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError as exc:
    raise ImportError(
        "genesys_token.prometheus needs prometheus_client: pip install 'genesys-token[prometheus]'"
    ) from exc

from .metrics import COUNTERS

if TYPE_CHECKING:
    from ..manager import TokenManager

__all__ = ["GenesysTokenCollector"]

PREFIX = "genesys_token"

_COUNTER_HELP = {
    "successes": "Token acquisitions that succeeded.",
    "errors": "Token acquisitions that failed.",
    "token_requests": "Requests sent to the token endpoint (retries included).",
    "retries": "Token requests retried.",
    "rotations": "Token rotations completed.",
    "replays_401": "API requests replayed after a 401 with a fresh token.",
    "drain_timeouts": "Rotations whose drain timed out.",
    "revocations": "Tokens revoked after a rotation.",
    "store_hits": "Tokens taken from the shared store instead of the network.",
    "store_errors": "Token store reads or writes that failed.",
    "listener_errors": "Event listeners that raised.",
    "webhook_deliveries": "Webhook records delivered.",
    "webhook_failures": "Webhook records given up on.",
    "webhook_dropped": "Webhook records dropped unsent (queue full or closed).",
    "api_429s": "API answers 429 seen by the adapters.",
}

#: ``metrics()["pacing"]`` counters -> (exported name, help).
_PACING_COUNTERS = (
    ("calls_paced", "api_calls_paced", "API calls that took a pacing slot."),
    ("calls_waited", "api_calls_waited", "Paced API calls that waited for their slot."),
    ("rate_limited", "api_calls_rate_limited", "API calls that found no slot: nothing sent."),
    ("throttled", "api_throttled", "429s told to the pacer (every caller waits them out)."),
)
#: ``metrics()["pacing"]`` gauges -> (exported name, help).
_PACING_GAUGES = (
    ("waiting", "api_waiting", "API calls waiting for a pacing slot now."),
    ("tokens", "api_tokens_paced", "Tokens the pacer keeps (in use, waited for or in a window)."),
)


class GenesysTokenCollector:
    """Yields the metrics of one or more managers at each scrape.

    Args:
        manager: The manager to export.
        *more: Further managers (one per OAuth client); each series carries its
            ``client_id`` label.
    """

    def __init__(self, manager: TokenManager, *more: TokenManager) -> None:
        self._managers = (manager, *more)

    def describe(self) -> Iterator[Any]:
        """The metric families, without samples (lets a registry check names up front)."""
        yield from self._families([])

    def collect(self) -> Iterator[Any]:
        """One snapshot of every manager, as metric families."""
        snapshots = [(m.client_id, m.metrics()) for m in self._managers]
        yield from self._families(snapshots)

    def _families(self, snapshots: list[tuple[str, dict[str, Any]]]) -> Iterator[Any]:
        labels = ["client_id"]
        for name in COUNTERS:
            counter = CounterMetricFamily(
                f"{PREFIX}_{name}", _COUNTER_HELP.get(name, name), labels=labels
            )
            for client_id, snap in snapshots:
                counter.add_metric([client_id], float(snap.get(name, 0)))
            yield counter
        gauges = (
            ("error_rate", "error_rate", "Failed share of token acquisitions."),
            ("in_flight", "in_flight", "Counted uses of the token in progress."),
            ("expires_in", "expires_in_seconds", "Seconds until the current token expires."),
            ("tokens_in_use", "tokens_in_use", "Tokens of the client usable now (tokens=N)."),
        )
        for key, name, help_text in gauges:
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
            for client_id, snap in snapshots:
                if snap.get(key) is not None:
                    gauge.add_metric([client_id], float(snap[key]))
            yield gauge
        latency = HistogramMetricFamily(
            f"{PREFIX}_latency_seconds",
            "Time successful token acquisitions took (retries included).",
            labels=labels,
        )
        for client_id, snap in snapshots:
            histogram = snap["latency_histogram"]
            buckets = [(_bound(le), float(count)) for le, count in histogram["buckets"]]
            latency.add_metric([client_id], buckets, sum_value=histogram["sum"])
        yield latency
        yield from _pacing_families(snapshots)


def _pacing_families(snapshots: list[tuple[str, dict[str, Any]]]) -> Iterator[Any]:
    """The pacing figures of the managers that pace (``metrics()["pacing"]``)."""
    paced = [(client_id, snap["pacing"]) for client_id, snap in snapshots if "pacing" in snap]
    labels = ["client_id"]
    for key, name, help_text in _PACING_COUNTERS:
        counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
        for client_id, pacing in paced:
            counter.add_metric([client_id], float(pacing[key]))
        yield counter
    by_token = CounterMetricFamily(
        f"{PREFIX}_api_throttled_by_token",
        "429s told to the pacer, per token fingerprint (tokens still kept).",
        labels=[*labels, "token_fingerprint"],
    )
    for client_id, pacing in paced:
        for fingerprint, count in sorted(pacing["throttled_by_token"].items()):
            by_token.add_metric([client_id, fingerprint], float(count))
    yield by_token
    for key, name, help_text in _PACING_GAUGES:
        gauge = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
        for client_id, pacing in paced:
            gauge.add_metric([client_id], float(pacing[key]))
        yield gauge
    waits = HistogramMetricFamily(
        f"{PREFIX}_api_wait_seconds", "Time paced API calls waited for a slot.", labels=labels
    )
    for client_id, pacing in paced:
        histogram = pacing["wait_histogram"]
        buckets = [(_bound(le), float(count)) for le, count in histogram["buckets"]]
        waits.add_metric([client_id], buckets, sum_value=histogram["sum"])
    yield waits


def _bound(value: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf`` for the last)."""
    return "+Inf" if value == float("inf") else repr(float(value))
