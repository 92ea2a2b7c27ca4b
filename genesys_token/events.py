"""``genesys_token.events``: kept for the import path the README shows; the code lives in
:mod:`genesys_token.observability.events`."""

from .observability.events import (
    ALL_EVENTS,
    EVENT_TYPES,
    RECORD_FIELDS,
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_EXPIRED,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
    WEBHOOK_DELIVERY_FAILED,
    EventBus,
    Listener,
    Record,
    audit_log,
    make_record,
    redact_value,
)

__all__ = [
    "ALL_EVENTS",
    "EVENT_TYPES",
    "RECORD_FIELDS",
    "TOKEN_DRAIN_COMPLETE",
    "TOKEN_DRAIN_TIMEOUT",
    "TOKEN_EXPIRED",
    "TOKEN_REFRESH_FAILURE",
    "TOKEN_REFRESH_SUCCESS",
    "TOKEN_REVOKED",
    "TOKEN_ROTATION_STARTED",
    "WEBHOOK_DELIVERY_FAILED",
    "EventBus",
    "Listener",
    "Record",
    "audit_log",
    "make_record",
    "redact_value",
]
