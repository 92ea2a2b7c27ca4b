"""``genesys_token.webhook``: kept for the import path the README shows; the code lives in
:mod:`genesys_token.observability.webhook`."""

from .observability.webhook import (
    BACKOFF_MAX,
    CLOSE_FLUSH_TIMEOUT,
    CLOSE_JOIN_GRACE,
    DEFAULT_BACKOFF_BASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_TOLERANCE,
    EVENT_ID_HEADER,
    IDLE_WAIT,
    RETRY_STATUSES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    UnsignedWebhookWarning,
    WebhookSender,
    sign,
    verified_event_id,
    verify_signature,
    webhook_body,
)

__all__ = [
    "BACKOFF_MAX",
    "CLOSE_FLUSH_TIMEOUT",
    "CLOSE_JOIN_GRACE",
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_TOLERANCE",
    "EVENT_ID_HEADER",
    "IDLE_WAIT",
    "RETRY_STATUSES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "UnsignedWebhookWarning",
    "WebhookSender",
    "sign",
    "verified_event_id",
    "verify_signature",
    "webhook_body",
]
