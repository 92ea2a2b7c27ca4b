"""Event names, records, listeners and the audit log.

One vocabulary serves audit log lines, ``manager.on(...)`` listeners and webhooks. A record
is a plain dict: ``timestamp`` (ISO 8601 UTC), ``event_id`` (uuid4), ``event_type``,
``client_id``, ``token_fingerprint`` (never the token), ``metrics`` and ``data``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ._redact import redact

TOKEN_REFRESH_SUCCESS = "TOKEN_REFRESH_SUCCESS"
TOKEN_REFRESH_FAILURE = "TOKEN_REFRESH_FAILURE"
TOKEN_ROTATION_STARTED = "TOKEN_ROTATION_STARTED"
TOKEN_DRAIN_COMPLETE = "TOKEN_DRAIN_COMPLETE"
TOKEN_DRAIN_TIMEOUT = "TOKEN_DRAIN_TIMEOUT"
TOKEN_REVOKED = "TOKEN_REVOKED"
TOKEN_EXPIRED = "TOKEN_EXPIRED"
WEBHOOK_DELIVERY_FAILED = "WEBHOOK_DELIVERY_FAILED"

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
)
ALL_EVENTS = "*"

#: Failures and timeouts are warnings in the audit log; the rest is routine.
_WARNING_EVENTS = frozenset(
    {TOKEN_REFRESH_FAILURE, TOKEN_DRAIN_TIMEOUT, TOKEN_EXPIRED, WEBHOOK_DELIVERY_FAILED}
)

Record = dict[str, Any]
Listener = Callable[[Record], None]

log = logging.getLogger("genesys_token")
audit_log = logging.getLogger("genesys_token.audit")


def make_record(
    event_type: str,
    *,
    client_id: str,
    token_fingerprint: str | None,
    metrics: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> Record:
    """Build an event record. ``data`` values that are strings are redacted."""
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "client_id": client_id,
        "token_fingerprint": token_fingerprint,
        "metrics": dict(metrics),
        "data": {k: redact(v) if isinstance(v, str) else v for k, v in (data or {}).items()},
    }


class EventBus:
    """Listeners by event type. Thread-safe; listeners run in the emitting thread, outside
    every manager lock, and an exception in one is logged and swallowed."""

    def __init__(self, on_listener_error: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._on_listener_error = on_listener_error

    def on(self, event_type: str, callback: Listener) -> Callable[[], None]:
        """Subscribe ``callback`` to ``event_type`` (or ``"*"`` for every event).

        Returns:
            A callable that unsubscribes; calling it twice is harmless.

        Raises:
            ValueError: Unknown event type.
            TypeError: ``callback`` is not callable.
        """
        if event_type != ALL_EVENTS and event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        if not callable(callback):
            raise TypeError("callback must be callable")
        with self._lock:
            self._listeners[event_type] = (*self._listeners.get(event_type, ()), callback)

        def unsubscribe() -> None:
            with self._lock:
                current = self._listeners.get(event_type, ())
                if callback in current:
                    index = current.index(callback)
                    self._listeners[event_type] = current[:index] + current[index + 1 :]

        return unsubscribe

    def emit(self, record: Record) -> None:
        """Log ``record`` to the audit log and hand it to the listeners."""
        event_type = record["event_type"]
        level = logging.WARNING if event_type in _WARNING_EVENTS else logging.INFO
        if audit_log.isEnabledFor(level):
            audit_log.log(
                level,
                "%s",
                event_type,
                extra={
                    "event_id": record["event_id"],
                    "event_type": event_type,
                    "client_id": record["client_id"],
                    "token_fingerprint": record["token_fingerprint"],
                    "event_data": record["data"],
                },
            )
        with self._lock:
            listeners = self._listeners.get(event_type, ()) + self._listeners.get(ALL_EVENTS, ())
        for listener in listeners:
            try:
                listener(record)
            except Exception:
                log.exception("event listener %r failed on %s", listener, event_type)
                if self._on_listener_error is not None:
                    self._on_listener_error()
