"""Redaction of anything that looks like a credential, for excerpts, logs and events.

Two layers: patterns catch what *looks* like a credential (header values, ``key=value``
pairs, JWTs, long base64 runs), and ``known`` values catch what the caller *knows* is one
(the client secret, its Basic encoding, a token just received) however short or plain it is:
a hostile endpoint may echo the secret back in an error body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

#: A UUID is an identifier Genesys support asks for (``contextId``), never a credential, yet
#: at 36 characters of ``[0-9a-f-]`` it would match the long-run pattern below.
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_RUN_CHARS = r"A-Za-z0-9_\-+/"

#: The shortest known value searched for in text. Genesys client secrets are 43 characters
#: and tokens about 100; below 8 a value is as likely a word (``Genesys`` has 7) as a secret.
#: Shorter secrets are caught structurally only (Basic header, ``client_secret=`` keys).
#: Values of this length or more are replaced wherever they occur, even glued to other
#: characters (``?cs=<secret>&a=1``, ``secret_<secret>``, ``/clients/<secret>``).
MIN_KNOWN = 8


def _forms(value: str) -> tuple[str, ...]:
    """``value`` and its JSON-escaped form (``/`` written ``\\/``), as a body may echo it."""
    escaped = value.replace("/", "\\/")
    return (value, escaped) if escaped != value else (value,)


#: One piece of a run between separators, and a piece made of a word (``SECRET``, ``cache``,
#: ``Genesys``, ``getToken``): letters cased like a word or an identifier.
_PIECE = re.compile(r"[^_\-+/=]+")
_WORDISH = re.compile(r"(?:[A-Z]+|[A-Z]?[a-z]+)(?:[A-Z][a-z]{2,})*[A-Z]*")
#: A short piece: at most 8 characters, or a temporary name (``tmpifwe3z2i``, lower case).
_SHORT = re.compile(r".{1,8}|tmp[a-z0-9]{1,9}")
#: A UUID standing as a piece of a path (``/api/v2/users/<uuid>``): an identifier, left out of
#: the judgement of its run. Bounded so no UUID is cut out of a longer run of characters.
_UUID_PIECE = re.compile(rf"(?<![A-Za-z0-9_\-]){_UUID}(?![A-Za-z0-9_\-])")


def _redact_run(match: re.Match[str]) -> str:
    """Redact a long run unless it is an identifier or path made of words.

    Spared: no ``+`` (base64, not identifiers), every piece a word or short (<= 8 like
    ``tmpk3j`` or ``9x2a``, or a temporary name like ``tmpifwe3z2i``), and words making at
    least half of its letters. UUIDs between separators (``/api/v2/users/<uuid>``) are
    identifiers and are left out of the judgement. Random runs have long pieces mixing case
    and digits: of 50,000 random base64url runs each of 32, 43, 64 and 100 characters, 6 of
    the 32-long pass and none longer (Genesys secrets are 43); no base64 or hex run passes.
    """
    if "+" in match[0]:
        return REDACTED
    # A piece over 64 characters is no word, and is never matched (bounded regex work).
    pieces = _PIECE.findall(_UUID_PIECE.sub("/", match[0]))
    if any(len(p) > 64 for p in pieces):
        return REDACTED
    words = sum(len(p) for p in pieces if _WORDISH.fullmatch(p))
    total = sum(len(p) for p in pieces)
    if all(_SHORT.fullmatch(p) or _WORDISH.fullmatch(p) for p in pieces) and 2 * words >= total:
        return match[0]
    return REDACTED


#: ``Bearer <value>`` / ``Basic <value>``, after an ``Authorization`` key or alone.
_AUTH_SCHEME = re.compile(
    r"(?i)(?P<header>\bauthorization[\"']?\s*[:=]\s*[\"']?)?"
    r"\b(?P<scheme>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]+)"
)
#: A word of prose ("Bearer token expired", "basic authentication failed"): letters, at most
#: a leading capital, no longer than English words get. No token or base64 value looks so.
_PROSE_AFTER_SCHEME = re.compile(r"[A-Za-z][a-z]{0,23}")


def _redact_scheme(match: re.Match[str]) -> str:
    """Redact what follows ``Bearer``/``Basic`` unless it is a word of prose (an
    ``Authorization`` key before them means a credential, whatever it looks like)."""
    if match["header"] is None and _PROSE_AFTER_SCHEME.fullmatch(match["value"]):
        return match[0]
    return f"{match['header'] or ''}{match['scheme']} {REDACTED}"


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # Authorization header values; prose such as "basic authentication failed" stays.
    (_AUTH_SCHEME, _redact_scheme),
    # JWTs.
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Long base64url runs: Genesys' opaque tokens are ~100 such characters. UUIDs stay.
    (
        re.compile(
            rf"(?<![{_RUN_CHARS}])(?!{_UUID}(?![{_RUN_CHARS}]))[{_RUN_CHARS}]{{32,}}={{0,2}}"
        ),
        _redact_run,
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
        known: Exact values to remove (secrets, tokens), longest first so that a value
            containing another is removed whole, each also in its JSON-escaped form. Only
            values of at least :data:`MIN_KNOWN` characters (a one-letter secret must not eat
            every ``e`` of the prose), wherever they occur, glued to other characters too.

    Returns:
        The text with every match replaced.
    """
    values = {form for v in known if len(v) >= MIN_KNOWN for form in _forms(v)}
    for value in sorted(values, key=len, reverse=True):
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
    known = tuple(form for k in known if k for form in _forms(k))
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
