"""Redaction of anything that looks like a credential, for excerpts, logs and events.

Two layers: patterns catch what *looks* like a credential (header values, ``key=value``
pairs, JWTs, long base64 runs), and ``known`` values catch what the caller *knows* is one
(the client secret, its Basic encoding, a token just received) however short or plain it is:
a hostile endpoint may echo the secret back in an error body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

#: A UUID is an identifier Genesys support asks for (``contextId``), never a credential, yet
#: at 36 characters of ``[0-9a-f-]`` it would match the long-run pattern below.
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_RUN_CHARS = r"A-Za-z0-9_\-+/"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # JWTs.
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Long base64url runs: Genesys' opaque tokens are ~100 such characters. UUIDs stay.
    (
        re.compile(
            rf"(?<![{_RUN_CHARS}])(?!{_UUID}(?![{_RUN_CHARS}]))[{_RUN_CHARS}]{{32,}}={{0,2}}"
        ),
        REDACTED,
    ),
)


#: ``key=value``, ``"key": "value"``, ``'key': 'value'`` (a Python repr) and ``key: value``
#: naming a credential, snake_case or camelCase (``accessToken``). The key stands alone:
#: ``genesys-token`` (a directory name in OS errors) is not the key ``token``.
_KEY_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9-])(?P<key>[\"']?(?:access_?token|refresh_?token|id_?token"
    r"|client_?secret|api_?key|secret|password|token)[\"']?)(?P<sep>\s*[:=]\s*)"
    r"(?P<quote>[\"']?)(?P<value>[^\"'&,\s}]+)(?=(?P<next>\s+[A-Za-z])?)"
)
#: An unquoted ``key: value`` whose value is a word followed by more words is prose, such as
#: an OS error (``token: Permission denied``, ``token: Not a directory``, ``[Errno 13] ...``).
_PROSE_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def _redact_value(match: re.Match[str]) -> str:
    quoted = match["quote"] or match["key"].endswith(('"', "'"))
    if not quoted and ":" in match["sep"] and "=" not in match["sep"]:
        value = match["value"]
        if value.startswith("[Errno") or (match["next"] and _PROSE_WORD.fullmatch(value)):
            return match[0]
    return f"{match['key']}{match['sep']}{match['quote']}{REDACTED}"


def redact(text: str, known: Iterable[str] = ()) -> str:
    """Replace credentials and token-like strings in ``text`` with ``[REDACTED]``.

    Args:
        text: Any text that may carry a credential.
        known: Exact values to remove wherever they appear (secrets, tokens), longest first
            so that a value containing another is removed whole.

    Returns:
        The text with every match replaced.
    """
    for value in sorted({v for v in known if v}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _KEY_VALUE.sub(_redact_value, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def excerpt(value: bytes | str, limit: int = 200, known: Iterable[str] = ()) -> str:
    """A short, redacted, printable start of a body or string.

    Args:
        value: A response body or any text.
        limit: The most characters kept (``...`` marks a cut).
        known: Exact values to redact besides the patterns (see :func:`redact`).

    Returns:
        At most ``limit`` printable characters (plus ``...``), credentials replaced.
    """
    known = tuple(k for k in known if k)
    # Only a margin past the limit is redacted (bodies can be large), and redaction may
    # shrink the text, so what sat at the cut can move into view: a credential cut there
    # is no longer whole, and no pattern recognises half of one. Drop the cut-off tail.
    margin = limit * 4 + max((len(k.encode()) for k in known), default=0)
    head = value[:margin]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    text = redact(text, known)
    if len(value) > margin:
        text = _TRAILING_WORD.sub("", text)
        for secret in known:
            text = _strip_prefix_tail(text, secret)
        text += " ..."
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit] + ("..." if len(text) > limit else "")


#: The unfinished word at the end of a cut text (may be the start of a token).
_TRAILING_WORD = re.compile(r"[^\s\"',;{}\[\]<>()]*$")


def _strip_prefix_tail(text: str, secret: str) -> str:
    """Remove an ending of ``text`` that is the start of ``secret``."""
    for size in range(min(len(secret), len(text)), 0, -1):
        if text.endswith(secret[:size]):
            return text[:-size]
    return text
