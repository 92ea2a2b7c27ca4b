"""Redaction of anything that looks like a credential, for excerpts, logs and events."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # key=value / "key": "value" pairs naming a credential.
    (
        re.compile(
            r"(?i)(\"?(?:access_token|refresh_token|id_token|client_secret|secret|password)\"?"
            r"\s*[:=]\s*\"?)[^\"&,\s}]+"
        ),
        rf"\1{REDACTED}",
    ),
    # JWTs.
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Long base64url runs: Genesys' opaque tokens are ~100 such characters.
    (re.compile(r"[A-Za-z0-9_\-+/]{32,}={0,2}"), REDACTED),
)


def redact(text: str) -> str:
    """Replace credentials and token-like strings in ``text`` with ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def excerpt(value: bytes | str, limit: int = 200) -> str:
    """A short, redacted, printable start of a body or string."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = redact(text[: limit * 4])
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit] + ("..." if len(text) > limit else "")
