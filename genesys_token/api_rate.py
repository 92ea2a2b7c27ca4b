"""The throughput settings, ``api_rate_limit``, ``api_rate_wait`` and ``tokens``: checks and
environment.

``api_rate_limit`` is ``(calls, seconds)``: at most ``calls`` API calls per token in any window
of ``seconds`` (Genesys' default is ``(300, 60.0)``); ``None`` paces nothing.
``api_rate_wait`` is the longest a call waits for room before it gives up with
:class:`~genesys_token.errors.ApiRateLimitedError`, having sent nothing.
``tokens`` is how many tokens of one client a manager holds (Genesys limits each token on its
own, so N tokens give N times the calls).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

ENV_API_RATE_LIMIT = "GENESYSCLOUD_API_RATE_LIMIT"
ENV_API_RATE_WAIT = "GENESYSCLOUD_API_RATE_WAIT"
ENV_TOKENS = "GENESYSCLOUD_TOKENS"

#: ``api_rate_wait``'s default: long enough to ride out a window of Genesys' default limit
#: half spent, short enough that a thread does not vanish for minutes.
DEFAULT_API_RATE_WAIT = 30.0
#: The most tokens one manager holds (Genesys' Terraform provider's largest pool): each is a
#: token request per lifetime, and every failure path is bounded per client, not per token.
MAX_TOKENS = 50

__all__ = [
    "DEFAULT_API_RATE_WAIT",
    "ENV_API_RATE_LIMIT",
    "ENV_API_RATE_WAIT",
    "ENV_TOKENS",
    "MAX_TOKENS",
    "api_rate_from_env",
    "check_api_rate_limit",
    "check_api_rate_wait",
    "check_tokens",
]


def check_api_rate_limit(value: Any) -> tuple[int, float] | None:
    """``value`` as an ``api_rate_limit``: None, or ``(calls, seconds)`` (a list is frozen
    to a tuple).

    Raises:
        ConfigurationError: Not a pair, ``calls`` not an integer >= 1 (a bool is not one),
            or ``seconds`` not a finite number > 0 (``field="api_rate_limit"``).
    """
    if value is None:
        return None
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigurationError(
            f"api_rate_limit must be None or a (calls, seconds) pair, not {type(value).__name__}",
            field="api_rate_limit",
        )
    calls, seconds = value
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ConfigurationError(
            f"api_rate_limit calls must be an integer >= 1, got {calls!r}",
            field="api_rate_limit",
        )
    if not _finite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"api_rate_limit seconds must be a finite number > 0, got {seconds!r}",
            field="api_rate_limit",
        )
    return (calls, float(seconds))


def check_api_rate_wait(value: Any) -> float:
    """``value`` as an ``api_rate_wait``: seconds, finite and >= 0.

    Raises:
        ConfigurationError: Anything else (``field="api_rate_wait"``).
    """
    if not _finite(value) or value < 0:
        raise ConfigurationError(
            f"api_rate_wait must be a finite number >= 0, got {value!r}", field="api_rate_wait"
        )
    return float(value)


def check_tokens(value: Any) -> int:
    """``value`` as a ``tokens``: an integer from 1 to :data:`MAX_TOKENS` (a bool is not one).

    Raises:
        ConfigurationError: Anything else (``field="tokens"``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise ConfigurationError(
            f"tokens must be an integer from 1 to {MAX_TOKENS}, got {value!r}", field="tokens"
        )
    return value


def api_rate_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The pacing fields ``GENESYSCLOUD_API_RATE_LIMIT`` (``"300/60"``: 300 calls per 60 s)
    and ``GENESYSCLOUD_API_RATE_WAIT`` (seconds), and ``tokens`` from ``GENESYSCLOUD_TOKENS``
    (an integer >= 1), when set; unset or empty ones are left out.

    Raises:
        ConfigurationError: A value that does not parse, naming the variable.
    """
    found: dict[str, Any] = {}
    limit = (env.get(ENV_API_RATE_LIMIT) or "").strip()
    if limit:
        found["api_rate_limit"] = _parse_limit(limit)
    wait = (env.get(ENV_API_RATE_WAIT) or "").strip()
    if wait:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigurationError(
                f"{ENV_API_RATE_WAIT} must be seconds >= 0 (e.g. 30), got {wait!r}",
                field="api_rate_wait",
            )
        found["api_rate_wait"] = seconds
    tokens = (env.get(ENV_TOKENS) or "").strip()
    if tokens:
        count = int(tokens) if tokens.isascii() and tokens.isdigit() else 0
        if not 1 <= count <= MAX_TOKENS:
            raise ConfigurationError(
                f"{ENV_TOKENS} must be an integer from 1 to {MAX_TOKENS} (e.g. 3), got {tokens!r}",
                field="tokens",
            )
        found["tokens"] = count
    return found


def _parse_limit(text: str) -> tuple[int, float]:
    calls_text, sep, seconds_text = text.partition("/")
    try:
        calls = int(calls_text.strip())
        seconds = float(seconds_text.strip())
    except ValueError:
        calls, seconds = 0, math.nan
    if not sep or calls < 1 or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"{ENV_API_RATE_LIMIT} must be CALLS/SECONDS with CALLS >= 1 and SECONDS > 0 "
            f"(e.g. 300/60), got {text!r}",
            field="api_rate_limit",
        )
    return (calls, seconds)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
