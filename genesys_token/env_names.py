"""Near-miss environment names: ``GENESYSCLOUD_REGOIN`` is pointed out, not ignored.

A misspelt variable is otherwise silently ignored and the default used (a manager in
us-east-1 for an org in eu-west-1). When the environment is read, every ``GENESYSCLOUD_*``
name that is neither one this package reads nor one another Genesys tool reads, but is
within a Damerau-Levenshtein distance of 2 of one we read, is logged once per process as a
WARNING on the ``genesys_token`` logger naming both. Logging, not :func:`warnings.warn`: the
command line sends that logger to stderr, services already collect it, and the default
warning filters would show it once per call site rather than once per name.

``GENESYS_*`` names are not checked: other Genesys samples and SDK wrappers use that prefix
freely (``GENESYS_CLIENT_ID``...), so a warning there would mostly be noise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping

from .regions import DEFAULT_REGION

log = logging.getLogger("genesys_token")

PREFIX = "GENESYSCLOUD_"

#: The names this package reads (the settings, the secret file, the CLI's cache, the proxy
#: and the gateway).
OWN_NAMES = frozenset(
    {
        "GENESYSCLOUD_OAUTHCLIENT_ID",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE",
        "GENESYSCLOUD_REGION",
        "GENESYSCLOUD_TOKEN_URL",
        "GENESYSCLOUD_API_URL",
        "GENESYSCLOUD_TOKEN_CACHE",
        # The proxy and the gateway, read under the Terraform provider's names and meaning
        # (genesyscloud/provider/provider_schema.go; see genesys_token.proxies).
        "GENESYSCLOUD_GATEWAY_HOST",
        "GENESYSCLOUD_GATEWAY_PORT",
        "GENESYSCLOUD_GATEWAY_PROTOCOL",
        "GENESYSCLOUD_GATEWAY_PATH_NAME",
        "GENESYSCLOUD_GATEWAY_PATH_VALUE",
        "GENESYSCLOUD_PROXY_HOST",
        "GENESYSCLOUD_PROXY_PORT",
        "GENESYSCLOUD_PROXY_PROTOCOL",
        "GENESYSCLOUD_PROXY_AUTH_USERNAME",
        "GENESYSCLOUD_PROXY_AUTH_PASSWORD",
        # OpenTelemetry off (genesys_token.observability.otel).
        "GENESYSCLOUD_OTEL",
        # Pacing of API calls (genesys_token.api_rate).
        "GENESYSCLOUD_API_RATE_LIMIT",
        "GENESYSCLOUD_API_RATE_WAIT",
        # Tokens per client (genesys_token.api_rate).
        "GENESYSCLOUD_TOKENS",
    }
)

#: Names other Genesys tools read and we do not (a gateway's credentials: the Go SDK builds
#: no request with them either); never reported, however close to ours. Source: the
#: Genesys Cloud Terraform provider, MyPureCloud/terraform-provider-genesyscloud,
#: genesyscloud/provider/provider_env_vars.go (the ``*EnvVar`` constants), plus
#: GENESYSCLOUD_SDK_CLIENT_POOL_DEBUG set by its acceptance tests.
OTHER_TOOLS_NAMES = frozenset(
    {
        "GENESYSCLOUD_ACCESS_TOKEN",
        "GENESYSCLOUD_SDK_DEBUG",
        "GENESYSCLOUD_SDK_DEBUG_FILE_PATH",
        "GENESYSCLOUD_SDK_DEBUG_FORMAT",
        "GENESYSCLOUD_SDK_CLIENT_POOL_DEBUG",
        "GENESYSCLOUD_TOKEN_POOL_SIZE",
        "GENESYSCLOUD_LOG_STACK_TRACES",
        "GENESYSCLOUD_LOG_STACK_TRACES_FILE_PATH",
        "GENESYSCLOUD_GATEWAY_AUTH_USERNAME",
        "GENESYSCLOUD_GATEWAY_AUTH_PASSWORD",
    }
)

#: At most this many single-character edits (insert, delete, replace, swap) apart.
MAX_DISTANCE = 2

_reported: set[str] = set()
_lock = threading.Lock()


def near_misses(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(found, meant)`` for each name that looks like a misspelling of one we read.

    Args:
        names: Environment variable names.
    """
    found = []
    for name in sorted(names):
        upper = name.upper()
        if not upper.startswith(PREFIX) or name in OWN_NAMES or name in OTHER_TOOLS_NAMES:
            continue
        best = min(OWN_NAMES, key=lambda own: (distance(upper, own), own))
        if distance(upper, best) <= MAX_DISTANCE:
            found.append((name, best))
    return found


def warn_near_misses(environ: Mapping[str, str]) -> None:
    """Log one WARNING per near-miss name in ``environ`` (once per name per process).

    Only names are looked at, never values (the secret is among them).
    """
    for name, meant in near_misses(list(environ.keys())):
        with _lock:
            if name in _reported:
                continue
            _reported.add(name)
        log.warning(
            "environment variable %s is not read by genesys_token; did you mean %s?%s",
            name,
            meant,
            "" if meant in environ else _unset(meant),
        )


def _unset(meant: str) -> str:
    """What applies instead when the name meant is not set: the user's next question."""
    if meant == "GENESYSCLOUD_REGION":
        return (
            f" It is not set, so region {DEFAULT_REGION} applies unless a region or URLs are"
            " given otherwise"
        )
    return f" {meant} is not set"


def distance(a: str, b: str) -> int:
    """The optimal-string-alignment Damerau-Levenshtein distance between ``a`` and ``b``."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]
