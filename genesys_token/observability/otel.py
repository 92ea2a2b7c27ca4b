"""OpenTelemetry: a span per token acquisition, and the managers' metrics as instruments.

Active when ``opentelemetry-api`` can be imported (the ``[otel]`` extra) and not turned off;
the application configures the SDK (providers, exporters) as usual, before or after the
managers are made. Without ``opentelemetry`` nothing here imports it and nothing happens.

Turned off, for managers made afterwards, by ``GENESYSCLOUD_OTEL=off`` (or ``0``, ``false``,
``no``), or by ``genesys_token`` in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``; the SDK's own
switches (``OTEL_SDK_DISABLED``, ``OTEL_TRACES_SAMPLER``...) apply as always.

**Spans.** Each acquisition (a token request to the login host, or a token taken from the
shared store) ends in a ``TOKEN_REFRESH_SUCCESS`` or ``TOKEN_REFRESH_FAILURE`` event; a
listener turns that record into a span named :data:`SPAN_NAME` on the tracer
``genesys_token``, dated after the fact (start = the event's time minus its
``duration_ms``). Attributes: ``genesys_token.outcome`` (``success``/``failure``),
``genesys_token.source`` (``network``/``store``), ``genesys_token.attempts`` (token
requests sent), ``genesys_token.reason``, ``genesys_token.client.digest``
(:func:`client_digest`, never the client id), ``server.address`` and ``server.port`` (the
login host); on failure ``error.type`` (the exception's class), ``http.response.status_code``
and ``genesys_token.correlation_id`` when known, and the status ERROR. No message, secret or
token is ever exported.

**Metrics.** One set of instruments for the whole process (meter ``genesys_token``), whose
callbacks read ``TokenManager.metrics()`` of every live, open manager (held weakly; a
closed or collected manager drops out): observable counters ``genesys_token.<name>`` for
each of :data:`~genesys_token.observability.metrics.COUNTERS`, the observable up-down
counter ``genesys_token.in_flight``, and gauges ``genesys_token.error_rate``,
``genesys_token.expires_in`` and ``genesys_token.credentials_cooldown``; each point carries
``genesys_token.client.digest``, ``server.address`` and ``server.port``. A collection
takes one ``metrics()`` snapshot per manager, whatever the number of instruments.
OpenTelemetry has no asynchronous histogram, so ``genesys_token.acquisition.duration``
(seconds, the buckets of :data:`~genesys_token.observability.metrics.LATENCY_BUCKETS`) is
recorded from the success events of network acquisitions: the acquisitions
``metrics()["latency_histogram"]`` counts. With ``api_rate_limit``, the pacing figures of
``metrics()["pacing"]`` too: counters ``genesys_token.api.calls_paced``,
``.api.calls_waited``, ``.api.calls_rate_limited``, ``.api.throttled`` and gauges
``genesys_token.api.waiting``, ``.api.tokens_paced`` (the wait histogram is exported by the
Prometheus collector only: it has no asynchronous counterpart here).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..core.fork import on_fork_in_child
from ..token import fingerprint_of
from .events import TOKEN_REFRESH_FAILURE, TOKEN_REFRESH_SUCCESS, Record
from .metrics import COUNTERS, LATENCY_BUCKETS

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, Observation
    from opentelemetry.trace import Tracer

    from ..manager import TokenManager

__all__ = ["ENV_SWITCH", "SCOPE", "SPAN_NAME", "client_digest", "enabled", "instrument"]

#: The tracer and meter name.
SCOPE = "genesys_token"
#: The name of every acquisition's span (low cardinality: what varies is in attributes).
SPAN_NAME = "genesys_token.acquire"
#: ``off``, ``0``, ``false`` or ``no`` turns the OpenTelemetry support off.
ENV_SWITCH = "GENESYSCLOUD_OTEL"
#: OpenTelemetry's own list of instrumentations to leave off (comma-separated names).
OTEL_DISABLED_LIST = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
_OFF = frozenset({"off", "0", "false", "no"})
_OUR_NAMES = frozenset({"genesys_token", "genesys-token"})

#: Instruments other than the first reuse the snapshots the first one's callback took
#: this recently: a collection then costs one ``metrics()`` per manager, not one per
#: instrument (22 of them; a pool may hold 10,000 managers).
SNAPSHOT_REUSE = 10.0

_DIGEST = "genesys_token.client.digest"

#: Unit and description of each counter of ``metrics()``.
_COUNTERS = {
    "successes": ("{acquisition}", "Token acquisitions that succeeded."),
    "errors": ("{acquisition}", "Token acquisitions that failed."),
    "token_requests": ("{request}", "Requests sent to the token endpoint (retries included)."),
    "retries": ("{request}", "Token requests retried."),
    "rotations": ("{rotation}", "Token rotations completed."),
    "replays_401": ("{request}", "API requests replayed after a 401 with a fresh token."),
    "api_rejections": ("{rejection}", "Fresh tokens the API kept rejecting."),
    "rejected_calls": ("{call}", "Calls failed at once during a cool-down or backoff."),
    "drain_timeouts": ("{rotation}", "Rotations whose drain timed out."),
    "revocations": ("{token}", "Tokens revoked after a rotation."),
    "store_hits": ("{acquisition}", "Tokens taken from the shared store, not the network."),
    "store_errors": ("{error}", "Token store reads or writes that failed."),
    "listener_errors": ("{error}", "Event listeners that raised."),
    "webhook_deliveries": ("{record}", "Webhook records delivered."),
    "webhook_failures": ("{record}", "Webhook records given up on."),
    "webhook_dropped": ("{record}", "Webhook records dropped unsent (queue full or closed)."),
    "api_429s": ("{answer}", "API answers 429 seen by the adapters."),
}
#: ``metrics()["pacing"]`` counters (with ``api_rate_limit``): key, instrument, description.
_PACING_COUNTERS = (
    ("calls_paced", "api.calls_paced", "API calls that took a pacing slot."),
    ("calls_waited", "api.calls_waited", "Paced API calls that waited for their slot."),
    ("rate_limited", "api.calls_rate_limited", "API calls that found no slot: nothing sent."),
    ("throttled", "api.throttled", "429s told to the pacer (every caller waits them out)."),
)
#: ``metrics()["pacing"]`` gauges: key, instrument, description.
_PACING_GAUGES = (
    ("waiting", "api.waiting", "API calls waiting for a pacing slot now."),
    ("tokens", "api.tokens_paced", "Tokens the pacer keeps (in use, waited for, in a window)."),
)
_GAUGES = (
    ("error_rate", "1", "Failed share of token acquisitions."),
    ("expires_in", "s", "Seconds until the current token expires."),
    ("credentials_cooldown", "s", "Seconds left of a rejected credentials' cool-down."),
)


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment leaves the OpenTelemetry support on.

    Args:
        environ: The environment to read (default ``os.environ``).

    Returns:
        False when :data:`ENV_SWITCH` says ``off`` (``0``, ``false``, ``no``) or
        ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``genesys_token``.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "").strip().lower() in _OFF:
        return False
    listed = {name.strip().lower() for name in env.get(OTEL_DISABLED_LIST, "").split(",")}
    return not listed & _OUR_NAMES


def client_digest(client_id: str) -> str:
    """The client id as spans and metrics show it: the first 12 hex digits of its SHA-256
    (the token fingerprint's form), e.g. to find an org's series.

    Args:
        client_id: An OAuth client id.
    """
    return fingerprint_of(client_id)


def instrument(manager: TokenManager) -> bool:
    """Report ``manager``'s acquisitions as spans and its metrics through the process's
    instruments; called once by the manager's constructor.

    Args:
        manager: A manager, fully built.

    Returns:
        Whether it is instrumented: False when turned off or without ``opentelemetry``
        (then nothing is imported or registered).
    """
    if not enabled():
        return False
    telemetry = _telemetry()
    if telemetry is None:
        return False
    telemetry.add(manager)
    listener = _SpanListener(telemetry, manager.token_url)
    manager.on(TOKEN_REFRESH_SUCCESS, listener)
    manager.on(TOKEN_REFRESH_FAILURE, listener)
    return True


# -- the process-wide part ----------------------------------------------------------------

_lock = threading.Lock()
#: None: not tried yet; False: opentelemetry cannot be imported.
_state: _Telemetry | bool | None = None


def _telemetry() -> _Telemetry | None:
    global _state
    with _lock:
        if _state is None:
            try:
                from opentelemetry import metrics as metrics_api
                from opentelemetry import trace as trace_api
            except ImportError:
                _state = False
            else:
                from .. import __version__

                tracer = trace_api.get_tracer(SCOPE, __version__)
                _state = _Telemetry(tracer, metrics_api.get_meter(SCOPE, __version__))
        return _state if isinstance(_state, _Telemetry) else None


def _renew_lock() -> None:
    global _lock
    _lock = threading.Lock()


class _Telemetry:
    """The tracer, and the instruments reading every live manager (one set per process)."""

    def __init__(self, tracer: Tracer, meter: Any) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._observation = Observation
        self._internal = SpanKind.INTERNAL
        self._error: Callable[[str], Status] = lambda text: Status(StatusCode.ERROR, text)
        self._lock = threading.Lock()
        self._managers: weakref.WeakSet[TokenManager] = weakref.WeakSet()
        self._taken: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._taken_at = float("-inf")
        on_fork_in_child(self._after_fork)
        for index, name in enumerate(COUNTERS):
            unit, description = _COUNTERS.get(name, ("1", name))
            meter.create_observable_counter(
                f"{SCOPE}.{name}",
                callbacks=[self._reader(name, leader=index == 0)],
                unit=unit,
                description=description,
            )
        meter.create_observable_up_down_counter(
            f"{SCOPE}.in_flight",
            callbacks=[self._reader("in_flight")],
            unit="{call}",
            description="Counted uses of the token in progress.",
        )
        for name, unit, description in _GAUGES:
            meter.create_observable_gauge(
                f"{SCOPE}.{name}",
                callbacks=[self._reader(name)],
                unit=unit,
                description=description,
            )
        for key, name, description in _PACING_COUNTERS:
            meter.create_observable_counter(
                f"{SCOPE}.{name}",
                callbacks=[self._reader(key, part="pacing")],
                unit="{call}",
                description=description,
            )
        for key, name, description in _PACING_GAUGES:
            meter.create_observable_gauge(
                f"{SCOPE}.{name}",
                callbacks=[self._reader(key, part="pacing")],
                unit="1",
                description=description,
            )
        self.duration: Histogram = meter.create_histogram(
            f"{SCOPE}.acquisition.duration",
            unit="s",
            description="Time successful token acquisitions from the network took (retries "
            "included).",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )

    def span(self, attributes: dict[str, Any], start: int, end: int, error: str | None) -> None:
        """Export one finished acquisition (times in ns since the epoch)."""
        span = self._tracer.start_span(
            SPAN_NAME, kind=self._internal, attributes=attributes, start_time=start
        )
        if error is not None:
            span.set_status(self._error(error))
        span.end(end_time=end)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def add(self, manager: TokenManager) -> None:
        """Read ``manager`` at each collection while it lives and is open."""
        with self._lock:
            self._managers.add(manager)

    def _reader(
        self, key: str, *, leader: bool = False, part: str | None = None
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """Observes ``snap[key]`` (``snap[part][key]`` with ``part``) of each manager."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            found = []
            for attributes, snap in self._snapshots(fresh=leader):
                values = snap if part is None else snap.get(part, {})
                if values.get(key) is not None:
                    found.append(self._observation(float(values[key]), attributes))
            return found

        return observe

    def _snapshots(self, *, fresh: bool) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """One ``metrics()`` per open manager, with its attributes; taken anew by the first
        instrument of a collection, reused by the others."""
        now = time.monotonic()
        with self._lock:
            if not fresh and now - self._taken_at < SNAPSHOT_REUSE:
                return self._taken
            live = list(self._managers)  # a WeakSet must not change while iterated
        taken = [
            (_attributes(manager.client_id, manager.token_url), manager.metrics())
            for manager in live
            if not manager.closed
        ]
        del live  # hold no manager past the collection
        with self._lock:
            self._taken, self._taken_at = taken, now
        return taken


def _attributes(client_id: str, token_url: str) -> dict[str, Any]:
    return {_DIGEST: client_digest(client_id), **_server(token_url)}


def _server(token_url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of the login host."""
    parts = urlsplit(token_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname, "server.port": port}


class _SpanListener:
    """Turns one manager's acquisition events into spans (and network successes into the
    duration histogram). Holds no reference to the manager."""

    __slots__ = ("_server", "_telemetry")

    def __init__(self, telemetry: _Telemetry, token_url: str) -> None:
        self._telemetry = telemetry
        self._server = _server(token_url)

    def __call__(self, record: Record) -> None:
        data = record["data"]
        success = record["event_type"] == TOKEN_REFRESH_SUCCESS
        digest = client_digest(record["client_id"])
        attempts = int(data.get("attempts") or 0)
        attributes: dict[str, Any] = {
            "genesys_token.outcome": "success" if success else "failure",
            "genesys_token.source": str(data.get("source") or "network"),
            "genesys_token.attempts": attempts,
            "genesys_token.reason": str(data.get("reason")),
            _DIGEST: digest,
            **self._server,
        }
        error = None if success else str(data.get("error"))
        if error is not None:
            attributes["error.type"] = error
            if data.get("status") is not None:
                attributes["http.response.status_code"] = int(data["status"])
            if data.get("correlation_id") is not None:
                attributes["genesys_token.correlation_id"] = str(data["correlation_id"])
        duration_ns = int(float(data.get("duration_ms") or 0.0) * 1e6)
        end = int(datetime.fromisoformat(record["timestamp"]).timestamp() * 1e9)
        self._telemetry.span(attributes, end - duration_ns, end, error)
        if success and attempts > 0:
            self._telemetry.duration.record(duration_ns / 1e9, {_DIGEST: digest, **self._server})


on_fork_in_child(_renew_lock)
