"""Origins (scheme, host, port): where a request goes, as far as the bearer token is concerned.

The token is a credential for one API origin. :class:`~genesys_token.GenesysAuth` and
:func:`~genesys_token.integrations.requests_session.api_session` put it only on calls to the
manager's API origin and to the origins the caller names; this module is the one place that
says what an origin is and which strings name one.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import ConfigurationError

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: An origin that matches no URL: what a URL that names no origin (no host, a bad port, a
#: scheme that is neither http nor https) is taken to be.
NO_ORIGIN: Origin = ("", "", 0)


def origin_of(url: str | bytes | None) -> Origin:
    """The origin of ``url``: lower-case scheme and host, the scheme's default port filled in.

    A URL that names no http(s) origin (relative, no host, an invalid port) gives
    :data:`NO_ORIGIN`, which equals no allowed origin.
    """
    text = url.decode("utf-8", "replace") if isinstance(url, bytes) else (url or "")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return NO_ORIGIN
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in _DEFAULT_PORTS or not host:
        return NO_ORIGIN
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


#: How many URL heads an :class:`OriginCache` remembers; past that it parses (a session
#: that calls thousands of hosts does not grow).
ORIGIN_CACHE_SIZE = 64


class OriginCache:
    """:func:`origin_of`, remembered for the few origins a caller sees over and over.

    An answer is kept by the URL's head: everything before the first ``/``, ``?`` or ``#``
    after ``://`` (``https://user@host:443``). ``origin_of`` reads nothing past it: the
    scheme ends at the first ``:``, which is in the head, and the authority ends at the
    first ``/``, ``?`` or ``#`` after ``//``, which is where the head ends or sooner. So a
    URL and its head have the same origin. A URL without ``://``, or not a ``str``, is
    parsed each time; so is every new head once :data:`ORIGIN_CACHE_SIZE` are kept.
    """

    __slots__ = ("_known", "_size")

    def __init__(self, size: int = ORIGIN_CACHE_SIZE) -> None:
        self._known: dict[str, Origin] = {}
        self._size = size

    def __call__(self, url: str | bytes | None) -> Origin:
        """The origin of ``url``, as :func:`origin_of` gives it."""
        if type(url) is not str:
            return origin_of(url)
        start = url.find("://") + 3
        if start < 3:
            return origin_of(url)
        end = url.find("/", start)
        head = url[:end] if end >= 0 else url
        if "?" in head or "#" in head:
            for mark in "?#":
                cut = head.find(mark, start)
                if cut >= 0:
                    head = head[:cut]
        known = self._known
        origin = known.get(head)
        if origin is None:
            origin = origin_of(head)
            # Two threads may both add one: a head or two past the bound, no lock held.
            if len(known) < self._size:
                known[head] = origin
        return origin


def show(origin: Origin) -> str:
    """``origin`` as a URL prefix, for messages (``https://api.example.com:8443``)."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    if port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def checked_origins(values: object, *, field: str = "allowed_origins") -> frozenset[Origin]:
    """The origins named by ``values``, an iterable of ``scheme://host[:port]`` strings.

    A trailing ``/`` is accepted; a path, query, fragment or user name is not (an origin is
    not a URL prefix: a token valid for a host is valid for every path on it).

    Raises:
        ConfigurationError: ``values`` is a string (not a list of them), not iterable, or
            holds something that is not an http(s) origin; the message names the entry.
    """
    if isinstance(values, str | bytes):
        raise ConfigurationError(
            f"{field} must be a list of origins, not one string: write [origin]",
            field=field,
        )
    if not isinstance(values, Iterable):
        raise ConfigurationError(
            f"{field} must be a list of origins, not {type(values).__name__}", field=field
        )
    origins = set()
    for value in values:
        if not isinstance(value, str):
            raise ConfigurationError(
                f"{field} entries must be strings, not {type(value).__name__}", field=field
            )
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        origin = origin_of(value)
        if (
            parts is None
            or origin == NO_ORIGIN
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            # A URL with a user name may hold a password: never echoed.
            shown = "with a user name" if "@" in value else repr(value)
            raise ConfigurationError(
                f"{field} entry {shown} is not an origin: write scheme://host[:port] "
                "(http or https, no path)",
                field=field,
            )
        origins.add(origin)
    return frozenset(origins)
