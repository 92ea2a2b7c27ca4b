"""Where and why a request failed, in words: the host asked and the low-level cause.

requests wraps what the socket said several layers deep (``ConnectionError`` ->
urllib3 ``MaxRetryError`` -> ``NewConnectionError``/``NameResolutionError`` ->
``socket.gaierror``); urllib3 1.26 leaves the inner error as ``__context__`` or in
``args`` (``ProtocolError("Connection aborted.", ConnectionResetError(...))``), urllib3 2.x
as ``__cause__`` or ``reason``. :func:`cause_of` walks all of them.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests
import urllib3

from ..errors import TokenRequestError
from ..observability.redaction import excerpt
from ..proxies import Proxies

__all__ = [
    "CORRELATION_HEADER",
    "PROXY_AUTH_FAILED",
    "cause_of",
    "correlation_id_of",
    "failure_in_words",
    "host_of",
    "log_failed_call",
    "proxy_host",
]

#: The cause of a request a proxy refused with 407: its credentials are wrong or missing.
PROXY_AUTH_FAILED = "proxy authentication failed (407)"

CORRELATION_HEADER = "ININ-Correlation-Id"
"""The header Genesys tags every answer with; support asks for it."""

#: What a correlation id may be made of (Genesys sends a UUID): anything else in the header
#: could forge log fields (``abc status=200 host=x``) or carry an echoed secret.
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_LINKS = 32
_VERIFY_TEXTS = ("certificate_verify_failed", "doesn't match", "hostname mismatch")
_LOOKUP_TEXTS = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "getaddrinfo failed",
    "no address associated",
)


def host_of(url: str) -> str:
    """The host of ``url``, with ``:port`` when not the scheme's default; never userinfo.

    Args:
        url: An absolute URL (possibly ``https://user:pass@host:8443/path``).

    Returns:
        ``"host"`` or ``"host:port"``; ``"?"`` when the URL has no host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    host = parts.hostname or "?"  # .hostname drops "user:password@"
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


def correlation_id_of(
    value: str | None, redact: Callable[[str], str] = lambda text: excerpt(text, 64)
) -> str | None:
    """An answer's ``ININ-Correlation-Id``, kept only when it is safe to show.

    The header comes from the answering server, so it is untrusted: it is kept only if it
    is 1 to 64 characters of ``[A-Za-z0-9._:-]`` and ``redact`` leaves it unchanged (no known
    secret, nothing looking like a credential in it); otherwise it counts as absent.

    Args:
        value: The header's value, if any.
        redact: The redaction to pass (a token request's passes the known secrets).

    Returns:
        The id, stripped, or ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not _CORRELATION_ID.fullmatch(value) or redact(value) != value:
        return None
    return value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, breadth first, each once."""
    seen: set[int] = set()
    queue = [exc]
    while queue and len(seen) < _MAX_LINKS:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[object] = [
            getattr(current, "reason", None),
            current.__cause__,
            current.__context__,
            *current.args,
        ]
        queue.extend(item for item in linked if isinstance(item, BaseException))


def cause_of(exc: BaseException) -> str:
    """The cause of a failed request in words.

    Args:
        exc: What requests (or urllib3, or the socket) raised.

    Returns:
        ``"name lookup failed"``, ``"TLS verification failed"``, ``"TLS handshake failed"``,
        ``"connection refused"``, ``"connect timed out"``, ``"read timed out"``,
        ``"connection dropped"``, or the innermost exception's type name.
    """
    links = list(_chain(exc))
    texts = " ".join(str(link) for link in links).lower()

    def found(*types: type[BaseException]) -> bool:
        return any(isinstance(link, types) for link in links)

    if found(urllib3.exceptions.ProxyError) and "407 proxy authentication" in texts:
        return PROXY_AUTH_FAILED
    name_resolution = getattr(urllib3.exceptions, "NameResolutionError", socket.gaierror)
    if found(socket.gaierror, name_resolution) or any(t in texts for t in _LOOKUP_TEXTS):
        return "name lookup failed"
    # urllib3 1.26 checks the host name itself: its own CertificateError, "doesn't match".
    if (
        found(ssl.SSLCertVerificationError, ssl.CertificateError)
        or any(type(link).__name__ == "CertificateError" for link in links)
        or any(t in texts for t in _VERIFY_TEXTS)
    ):
        return "TLS verification failed"
    if found(ssl.SSLError, requests.exceptions.SSLError):
        return "TLS handshake failed"
    if found(ConnectionRefusedError) or "connection refused" in texts:
        return "connection refused"
    if found(requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return "connect timed out"
    if found(
        requests.exceptions.ReadTimeout,
        urllib3.exceptions.ReadTimeoutError,
        TimeoutError,
        urllib3.exceptions.TimeoutError,
    ):
        return "read timed out"
    if found(
        ConnectionResetError,
        ConnectionAbortedError,
        BrokenPipeError,
        http.client.RemoteDisconnected,
        http.client.IncompleteRead,
        urllib3.exceptions.ProtocolError,
        requests.exceptions.ChunkedEncodingError,
    ):
        return "connection dropped"
    return type(links[-1]).__name__


def failure_in_words(error: TokenRequestError) -> str:
    """Why one token request failed, in a few words, for a line that names it briefly.

    Args:
        error: The failure of one attempt.

    Returns:
        The low-level cause (``"connection refused"``) when no answer came, else the HTTP
        status with Genesys' ``code`` or the OAuth ``error`` (``"HTTP 503"``,
        ``"HTTP 400 invalid_client"``); the error's type name when it says neither.
    """
    if error.cause:
        return error.cause
    if error.status is None:
        return type(error).__name__
    code = error.code or error.error
    return f"HTTP {error.status}" + (f" {excerpt(code, 40)}" if code else "")


def proxy_host(url: str, proxies: Proxies | None) -> str:
    """The host (``host:port``, never credentials) of the proxy a request to ``url`` went
    through: the one ``proxies`` names for it, else the environment's; ``"?"`` if none."""
    chosen = None if proxies is None else proxies.for_url(url)
    if chosen is None:
        chosen = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    return "?" if chosen is None else host_of(chosen)


def log_failed_call(
    logger: logging.Logger, method: str, url: str, status: int, correlation_id: str | None
) -> None:
    """Log an API answer with status >= 400 at WARNING, with its correlation id.

    Names the method, host and path only: the query string may hold ids, and no header (so
    no token) is ever logged. Does nothing for a status below 400.

    Args:
        logger: Where to log.
        method: The request method.
        url: The request URL (its userinfo and query are left out).
        status: The answer's HTTP status.
        correlation_id: The answer's ``ININ-Correlation-Id``, if any; left out unless
            :func:`correlation_id_of` keeps it.
    """
    if status < 400:
        return
    try:
        path = urlsplit(url).path or "/"
    except ValueError:
        path = "?"
    shown = correlation_id_of(correlation_id)
    logger.warning(
        "API call %s %s%s failed: HTTP %d" + (" (correlation id %s)" if shown else ""),
        method.upper(),
        host_of(url),
        excerpt(path, 200),
        status,
        *((shown,) if shown else ()),
        extra={"status": status, "correlation_id": shown},
    )
