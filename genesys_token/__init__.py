"""genesys-token: Genesys Cloud client-credentials tokens, valid for every thread and process.

::

    from genesys_token import TokenManager, GenesysAuth

    with TokenManager.from_env() as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
"""

import logging as _logging

from .core.uses import InFlight
from .credentials import SecretFile
from .errors import (
    ApiRateLimitedError,
    ConfigurationError,
    DrainTimeoutError,
    GenesysTokenError,
    InvalidClientError,
    InvalidTokenResponseError,
    ManagerClosedError,
    RateLimitedError,
    SecretSourceError,
    StoreError,
    TokenEndpointTLSError,
    TokenRejectedError,
    TokenRequestError,
    TokenTimeoutError,
    TokenValidationError,
    UnauthorizedClientError,
)
from .integrations.requests_auth import GenesysAuth
from .integrations.requests_session import api_session
from .manager import TokenManager
from .observability.webhook import WebhookSender
from .pool import TokenManagerPool
from .settings import Settings
from .token import Token

__version__ = "0.2.0"

# The library configures no logging; without a handler of the application's, Python's
# last-resort handler would print every warning to stderr.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "ApiRateLimitedError",
    "ConfigurationError",
    "DrainTimeoutError",
    "GenesysAuth",
    "GenesysTokenError",
    "InFlight",
    "InvalidClientError",
    "InvalidTokenResponseError",
    "ManagerClosedError",
    "RateLimitedError",
    "SecretFile",
    "SecretSourceError",
    "Settings",
    "StoreError",
    "Token",
    "TokenEndpointTLSError",
    "TokenManager",
    "TokenManagerPool",
    "TokenRejectedError",
    "TokenRequestError",
    "TokenTimeoutError",
    "TokenValidationError",
    "UnauthorizedClientError",
    "WebhookSender",
    "__version__",
    "api_session",
]
