"""``genesys_token.session``: kept for the import path the README shows; the code lives in
:mod:`genesys_token.integrations.requests_session`."""

from .integrations.requests_session import (
    ANY_METHOD_STATUSES,
    BACKOFF_MAX,
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    IDEMPOTENT_METHODS,
    IDEMPOTENT_STATUSES,
    ApiSession,
    GenesysRetry,
    api_session,
    genesys_retry,
)

__all__ = [
    "ANY_METHOD_STATUSES",
    "BACKOFF_MAX",
    "DEFAULT_BACKOFF_FACTOR",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "IDEMPOTENT_STATUSES",
    "ApiSession",
    "GenesysRetry",
    "api_session",
    "genesys_retry",
]
