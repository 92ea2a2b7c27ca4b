"""genesys-token: Genesys Cloud client-credentials tokens, valid for every thread and process.

::

    from genesys_token import TokenManager, GenesysAuth

    with TokenManager.from_env() as manager:
        session = requests.Session()
        session.auth = GenesysAuth(manager)
"""

from ._gate import InFlight
from .auth import GenesysAuth
from .errors import (
    ConfigurationError,
    DrainTimeoutError,
    GenesysTokenError,
    InvalidClientError,
    InvalidTokenResponseError,
    ManagerClosedError,
    RateLimitedError,
    StoreError,
    TokenEndpointTLSError,
    TokenRequestError,
    TokenValidationError,
    UnauthorizedClientError,
)
from .manager import TokenManager
from .session import api_session
from .token import Token

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DrainTimeoutError",
    "GenesysAuth",
    "GenesysTokenError",
    "InFlight",
    "InvalidClientError",
    "InvalidTokenResponseError",
    "ManagerClosedError",
    "RateLimitedError",
    "StoreError",
    "Token",
    "TokenEndpointTLSError",
    "TokenManager",
    "TokenRequestError",
    "TokenValidationError",
    "UnauthorizedClientError",
    "__version__",
    "api_session",
]
