"""Genesys Cloud regions and how a user's way of naming one resolves to hosts.

Users write a region as ``us-east-1``, ``us_east_1`` (the official SDKs' enum style), as the
environment domain (``mypurecloud.ie``) or as a host (``login.mypurecloud.ie``,
``api.mypurecloud.ie``). All of them resolve to the same :class:`Region`.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigurationError

#: Region name -> environment domain, from Genesys' region list (see shared/GENESYS.md).
REGION_DOMAINS: dict[str, str] = {
    "us-east-1": "mypurecloud.com",
    "us-east-2": "use2.us-gov-pure.cloud",
    "us-west-2": "usw2.pure.cloud",
    "ca-central-1": "cac1.pure.cloud",
    "sa-east-1": "sae1.pure.cloud",
    "mx-central-1": "mxc1.pure.cloud",
    "eu-west-1": "mypurecloud.ie",
    "eu-west-2": "euw2.pure.cloud",
    "eu-central-1": "mypurecloud.de",
    "eu-central-2": "euc2.pure.cloud",
    "eusc-de-east-1": "edee1.eusc-pure.cloud",
    "me-central-1": "mec1.pure.cloud",
    "ap-south-1": "aps1.pure.cloud",
    "ap-southeast-1": "apse1.pure.cloud",
    "ap-southeast-2": "mypurecloud.com.au",
    "ap-northeast-1": "mypurecloud.jp",
    "ap-northeast-2": "apne2.pure.cloud",
    "ap-northeast-3": "apne3.pure.cloud",
}

DEFAULT_REGION = "us-east-1"

_DOMAIN_TO_REGION = {domain: name for name, domain in REGION_DOMAINS.items()}
# Only "localhost" (RFC 6761 reserves it for loopback): "localhost.localdomain" and the like
# are names a resolver may send to DNS, and plain http to them could leave the machine.
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Region:
    """One Genesys Cloud region.

    Attributes:
        name: The region name, e.g. ``"eu-west-1"``.
        domain: The environment domain, e.g. ``"mypurecloud.ie"``.
    """

    name: str
    domain: str

    @property
    def login_host(self) -> str:
        """The OAuth host, ``login.<domain>``."""
        return f"login.{self.domain}"

    @property
    def api_host(self) -> str:
        """The API host, ``api.<domain>``."""
        return f"api.{self.domain}"

    @property
    def token_url(self) -> str:
        """The client-credentials token endpoint of this region."""
        return f"https://{self.login_host}/oauth/token"

    @property
    def api_base_url(self) -> str:
        """The base URL of the Platform API of this region."""
        return f"https://{self.api_host}"


def resolve_region(value: str) -> Region:
    """Resolve any accepted spelling of a region.

    Args:
        value: A region name (``us-east-1``), enum style (``us_east_1``, any case), a domain
            (``mypurecloud.ie``), or a login/API host (``login.mypurecloud.ie``), optionally
            with a scheme.

    Returns:
        The matching :class:`Region`.

    Raises:
        ConfigurationError: The value names no known region; the message lists the valid names.
    """
    if not isinstance(value, str):
        raise ConfigurationError(
            f"region must be a string, not {type(value).__name__}", field="region"
        )
    text = value.strip().lower()
    if "://" in text:
        text = urlsplit(text).hostname or ""
    text = text.rstrip("/").rstrip(".")
    name = text.replace("_", "-")
    if name in REGION_DOMAINS:
        return Region(name, REGION_DOMAINS[name])
    for prefix in ("login.", "api.", "apps.", ""):
        if text.startswith(prefix) and text[len(prefix) :] in _DOMAIN_TO_REGION:
            domain = text[len(prefix) :]
            return Region(_DOMAIN_TO_REGION[domain], domain)
    valid = ", ".join(REGION_DOMAINS)
    raise ConfigurationError(
        f"unknown Genesys Cloud region {value.strip()[:64]!r}; valid regions: {valid} "
        "(or their domains, e.g. mypurecloud.ie)",
        field="region",
    )


def is_loopback_host(host: str) -> bool:
    """Tell whether ``host`` is this machine: 127.0.0.0/8, ::1 or localhost."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, field: str) -> str:
    """Validate an endpoint override.

    ``https`` is required except for loopback hosts (the emulator), where plain ``http`` is
    allowed: a client secret must never cross a network in clear text.

    Args:
        url: The URL to check.
        field: The setting name, for the error message.

    Returns:
        The URL without a trailing slash.

    Raises:
        ConfigurationError: Not a string, not an absolute http(s) URL, a port that is not
            1 to 65535, or plain http to a host that is not loopback.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"{field} must be a string, not {type(url).__name__}", field=field)
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            # Never echo the URL: webhook URLs often carry a secret in their path.
            f"{field} must be an absolute http(s) URL",
            field=field,
        )
    if parts.username or parts.password:
        raise ConfigurationError(f"{field} must not carry credentials", field=field)
    try:
        port = parts.port  # raises for a port that is not a number or out of range
    except ValueError:
        port = 0
    if port == 0 and parts.netloc.rpartition("]")[2].rpartition(":")[1]:
        raise ConfigurationError(f"{field} has a port that is not 1 to 65535", field=field)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigurationError(
            f"{field} uses plain http to {parts.hostname!r}; http is only allowed for loopback "
            "hosts (127.0.0.0/8, ::1, localhost); use https",
            field=field,
        )
    return url.strip().rstrip("/")


def region_of_url(url: str) -> str | None:
    """The region whose login or API host ``url`` names, or None (loopback, proxies, ...)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    for prefix in ("login.", "api.", "apps."):
        if host.startswith(prefix) and host[len(prefix) :] in _DOMAIN_TO_REGION:
            return _DOMAIN_TO_REGION[host[len(prefix) :]]
    return None


def warn_region_mismatch(token_url: str, api_base_url: str) -> None:
    """Log one warning when the token URL and the API URL belong to two regions: the API
    would reject every token (401)."""
    login, api = region_of_url(token_url), region_of_url(api_base_url)
    if login is not None and api is not None and login != api:
        logging.getLogger(__name__).warning(
            "token_url is in region %s but api_base_url is in %s: the API will reject the "
            "tokens (401). Set region= alone, or both URLs of one region.",
            login,
            api,
        )
