"""Event names, records, listeners and the audit log.

One vocabulary serves audit log lines, ``manager.on(...)`` listeners and webhooks. A record
is a plain dict::

    {
        "timestamp": "2024-05-01T12:00:00.123+00:00",   # ISO 8601, UTC
        "event_id": "5f0c...",                          # uuid4, also the webhook X-Event-Id
        "event_type": "TOKEN_REFRESH_SUCCESS",
        "client_id": "...",
        "token_fingerprint": "3fa2c1d9e0b4",            # never the token itself
        "metrics": {"error_rate": 0.0, "latency_ms": {...}, "token_requests": 1},
        "data": {...},                                  # per event type; strings redacted
    }

Every event is also logged on the ``genesys_token.audit`` logger (INFO; failures and
timeouts at WARNING) with the record's fields as ``extra`` attributes under the same names
(``event_id``, ``event_type``, ``client_id``, ``token_fingerprint``, ``metrics``, ``data``),
except one: the record's ``timestamp`` is ``event_timestamp`` there, because ``timestamp``
is the log line's own time. :func:`genesys_token.observability.logging.configure_json_logging` turns
those lines into JSON::

    {"level": "INFO", "logger": "genesys_token.audit", "message": "TOKEN_REFRESH_SUCCESS ...",
     "timestamp": "2024-05-01T12:00:00.125000+00:00",
     "event_timestamp": "2024-05-01T12:00:00.123+00:00", "event_id": "5f0c...",
     "event_type": "TOKEN_REFRESH_SUCCESS", "client_id": "...",
     "token_fingerprint": "3fa2c1d9e0b4", "metrics": {...}, "data": {...}}
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigurationError
from .redaction import redact

TOKEN_REFRESH_SUCCESS = "TOKEN_REFRESH_SUCCESS"
TOKEN_REFRESH_FAILURE = "TOKEN_REFRESH_FAILURE"
TOKEN_ROTATION_STARTED = "TOKEN_ROTATION_STARTED"
TOKEN_DRAIN_COMPLETE = "TOKEN_DRAIN_COMPLETE"
TOKEN_DRAIN_TIMEOUT = "TOKEN_DRAIN_TIMEOUT"
TOKEN_REVOKED = "TOKEN_REVOKED"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
WEBHOOK_DELIVERY_FAILED = "WEBHOOK_DELIVERY_FAILED"
#: A call gave up waiting for a pacing slot (``api_rate_wait``): data ``waited``, ``limit``.
API_RATE_LIMITED = "API_RATE_LIMITED"
#: The API answered 429: the token's slots wait out ``retry_after`` (data) for every caller.
API_THROTTLED = "API_THROTTLED"

#: Every event type, in the order of a token's life.
EVENT_TYPES = (
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REFRESH_FAILURE,
    TOKEN_ROTATION_STARTED,
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REVOKED,
    TOKEN_EXPIRED,
    WEBHOOK_DELIVERY_FAILED,
    API_RATE_LIMITED,
    API_THROTTLED,
)
#: Subscribe to this to receive every event type.
ALL_EVENTS = "*"

#: The keys of every record, in order; webhooks send exactly these and nothing else.
RECORD_FIELDS = (
    "timestamp",
    "event_id",
    "event_type",
    "client_id",
    "token_fingerprint",
    "metrics",
    "data",
)

#: Failures and timeouts are warnings in the audit log; the rest is routine.
_WARNING_EVENTS = frozenset(
    {
        TOKEN_REFRESH_FAILURE,
        TOKEN_DRAIN_TIMEOUT,
        TOKEN_EXPIRED,
        WEBHOOK_DELIVERY_FAILED,
    }
)
#: Nested event data deeper than this is cut: records stay small and a cyclic structure
#: cannot make redaction recurse forever.
_MAX_DATA_DEPTH = 6

Record = dict[str, Any]
Listener = Callable[[Record], None]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("genesys_token.audit")


def redact_value(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` with every string in it (nested in dicts, lists, tuples) redacted.

    Args:
        value: A JSON-like value.

    Returns:
        A copy with strings passed through the credential redaction; other scalars as is.
    """
    if isinstance(value, str):
        return redact(value)
    if _depth >= _MAX_DATA_DEPTH and isinstance(value, (Mapping, list, tuple)):
        return "[TRUNCATED]"
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, _depth + 1) for v in value]
    return value


def make_record(
    event_type: str,
    *,
    client_id: str,
    token_fingerprint: str | None,
    metrics: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> Record:
    """Build an event record.

    Args:
        event_type: One of :data:`EVENT_TYPES`.
        client_id: The OAuth client id the manager uses.
        token_fingerprint: The fingerprint of the token concerned, or ``None``.
        metrics: A short metrics summary (error rate, latency).
        data: Event-specific details; every string in it is redacted.

    Returns:
        The record, with a fresh ``event_id`` and the current UTC ``timestamp``.
    """
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "client_id": client_id,
        "token_fingerprint": token_fingerprint,
        "metrics": dict(metrics),
        "data": redact_value(dict(data or {})),
    }


class _Subscription:
    """One ``on()`` call; its identity, not the callback's, is what unsubscribe removes."""

    __slots__ = ("callback", "event_type")

    def __init__(self, event_type: str, callback: Listener) -> None:
        self.event_type = event_type
        self.callback = callback


class EventBus:
    """Listeners by event type, called in subscription order.

    Thread-safe. Listeners run in the emitting thread, after the manager has released its
    locks; an exception in one is logged and swallowed, and the next listener still runs.

    Args:
        on_listener_error: Called (with no arguments) each time a listener raises; the
            manager counts these in its metrics.
    """

    def __init__(self, on_listener_error: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        # Copy-on-write: emit() takes the current tuple and iterates it without the lock,
        # so a listener may subscribe or unsubscribe (even itself) while it runs.
        self._subscriptions: tuple[_Subscription, ...] = ()
        self._on_listener_error = on_listener_error

    def after_fork(self) -> None:
        """Replace the lock in a forked child: a parent thread may have held it at fork."""
        self._lock = threading.Lock()

    def on(self, event_type: str, callback: Listener) -> Callable[[], None]:
        """Subscribe ``callback`` to ``event_type`` (or ``"*"`` for every event).

        Args:
            event_type: One of :data:`EVENT_TYPES`, or ``"*"``.
            callback: Called with each matching record (a dict).

        Returns:
            A callable that unsubscribes this subscription; calling it twice is harmless.

        Raises:
            ConfigurationError: Unknown event type, or ``callback`` is not callable.
        """
        if event_type != ALL_EVENTS and event_type not in EVENT_TYPES:
            raise ConfigurationError(
                f'unknown event type {event_type!r}; known: "*", {", ".join(EVENT_TYPES)}',
                field="event_type",
            )
        if not callable(callback):
            raise ConfigurationError(
                f"callback must be callable, not {type(callback).__name__}", field="callback"
            )
        subscription = _Subscription(event_type, callback)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)

        def unsubscribe() -> None:
            with self._lock:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

        return unsubscribe

    @property
    def listener_count(self) -> int:
        """How many subscriptions exist (every event type together)."""
        return len(self._subscriptions)

    def emit(self, record: Record) -> None:
        """Log ``record`` to the audit log, then hand it to each matching listener.

        Args:
            record: A record built by :func:`make_record`.
        """
        event_type = record["event_type"]
        _audit(record)
        for subscription in self._subscriptions:
            if subscription.event_type not in (event_type, ALL_EVENTS):
                continue
            try:
                subscription.callback(record)
            except BaseException:
                log.exception(
                    "event listener %s failed on %s", _name_of(subscription.callback), event_type
                )
                if self._on_listener_error is not None:
                    self._on_listener_error()


def _audit(record: Record) -> None:
    event_type = record["event_type"]
    level = logging.WARNING if event_type in _WARNING_EVENTS else logging.INFO
    if not audit_log.isEnabledFor(level):
        return
    # Absent fields are left out of the text: "fingerprint=None" reads like a value.
    shown = [("client_id", record["client_id"]), ("fingerprint", record["token_fingerprint"])]
    present = [(name, value) for name, value in shown if value is not None]
    audit_log.log(
        level,
        "%s" + "".join(f" {name}=%s" for name, _ in present),
        event_type,
        *(value for _, value in present),
        extra={
            "event_id": record["event_id"],
            "event_type": event_type,
            "event_timestamp": record["timestamp"],
            "client_id": record["client_id"],
            "token_fingerprint": record["token_fingerprint"],
            "metrics": record["metrics"],
            "data": record["data"],
        },
    )


def _name_of(callback: Listener) -> str:
    # The qualified name, not repr(): a bound method's repr shows its object's repr, which
    # is user code and could print anything.
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    return f"{getattr(callback, '__module__', '?')}.{name}"
