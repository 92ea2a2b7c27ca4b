"""Proxies and gateways: the ``proxies=`` and ``cert=`` settings, and the
``GENESYSCLOUD_PROXY_*`` / ``GENESYSCLOUD_GATEWAY_*`` variables of Genesys' own tools.

A proxy URL's password is a secret: :class:`Proxies` keeps it in a
:class:`~genesys_token.credentials.SecretValue` and shows ``***`` in its place; the URLs are
given in clear only to the request that uses them (:meth:`Proxies.for_url`).

What wins for one request (like ``requests``): a proxy ``proxies=`` names for the URL's
scheme (or ``all``) is used whatever ``HTTPS_PROXY`` or ``NO_PROXY`` say; a URL it has no
entry for follows the environment. A loopback host is never reached through any proxy
(``http.connections``).

The variable names and their meaning are those of the Genesys Cloud Terraform provider
(MyPureCloud/terraform-provider-genesyscloud, ``genesyscloud/provider/provider_schema.go``)
and of the Go SDK it uses (``getConfUrl``): a gateway replaces the scheme, host and port of
both the login and the API host, and its path parameter named ``login`` or ``api`` is put
before ``/oauth/token`` or ``/api/v2/...``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .credentials import SecretValue
from .errors import ConfigurationError

__all__ = [
    "PROXY_SCHEMES",
    "Proxies",
    "check_cert",
    "gateway_from_env",
    "proxies_from_env",
]

log = logging.getLogger("genesys_token")

#: What ``requests`` can reach a proxy with (``socks*`` needs ``requests[socks]``).
PROXY_SCHEMES = frozenset({"http", "https", "socks4", "socks4a", "socks5", "socks5h"})
#: The keys ``requests`` looks a proxy up by, besides ``<scheme>://<host>`` ones.
_PLAIN_KEYS = frozenset({"http", "https", "all"})

ENV_PROXY_HOST = "GENESYSCLOUD_PROXY_HOST"
ENV_PROXY_PORT = "GENESYSCLOUD_PROXY_PORT"
ENV_PROXY_PROTOCOL = "GENESYSCLOUD_PROXY_PROTOCOL"
ENV_PROXY_USERNAME = "GENESYSCLOUD_PROXY_AUTH_USERNAME"
ENV_PROXY_PASSWORD = "GENESYSCLOUD_PROXY_AUTH_PASSWORD"
ENV_GATEWAY_HOST = "GENESYSCLOUD_GATEWAY_HOST"
ENV_GATEWAY_PORT = "GENESYSCLOUD_GATEWAY_PORT"
ENV_GATEWAY_PROTOCOL = "GENESYSCLOUD_GATEWAY_PROTOCOL"
ENV_GATEWAY_PATH_NAME = "GENESYSCLOUD_GATEWAY_PATH_NAME"
ENV_GATEWAY_PATH_VALUE = "GENESYSCLOUD_GATEWAY_PATH_VALUE"

#: Every variable :func:`proxies_from_env` and :func:`gateway_from_env` read.
ENV_NAMES = (
    ENV_PROXY_HOST,
    ENV_PROXY_PORT,
    ENV_PROXY_PROTOCOL,
    ENV_PROXY_USERNAME,
    ENV_PROXY_PASSWORD,
    ENV_GATEWAY_HOST,
    ENV_GATEWAY_PORT,
    ENV_GATEWAY_PROTOCOL,
    ENV_GATEWAY_PATH_NAME,
    ENV_GATEWAY_PATH_VALUE,
)


class _ProxyURL:
    """One proxy URL, its password hidden."""

    __slots__ = ("_password", "_shown")

    def __init__(self, key: str, url: object) -> None:
        where = f"proxies[{key!r}]"
        if not isinstance(url, str):
            raise ConfigurationError(
                f"{where} must be a URL string, not {type(url).__name__}", field="proxies"
            )
        if any(ch in url for ch in "\r\n\x00 "):
            raise ConfigurationError(
                f"{where} must not contain spaces or control characters", field="proxies"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            parts = None
        if parts is None or not parts.hostname:
            raise ConfigurationError(
                f"{where} must be a URL such as http://proxy.example.com:3128", field="proxies"
            )
        if parts.scheme.lower() not in PROXY_SCHEMES:
            raise ConfigurationError(
                f"{where}: proxy scheme {parts.scheme[:16]!r} is not one of "
                f"{', '.join(sorted(PROXY_SCHEMES))}",
                field="proxies",
            )
        password = parts.password
        self._password = None if password is None else SecretValue(password)
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username is not None:
            user = parts.username + (":***" if password is not None else "")
            netloc = f"{user}@{netloc}"
        self._shown = parts._replace(netloc=netloc).geturl()

    def reveal(self) -> str:
        """The URL in clear, for the request that uses it."""
        if self._password is None:
            return self._shown
        plain = self._password.reveal()
        return self._shown.replace(":***@", f":{plain}@", 1)

    @property
    def password(self) -> SecretValue | None:
        """The password, hidden (None: none)."""
        return self._password

    def __repr__(self) -> str:
        return repr(self._shown)


class Proxies:
    """``requests``-style proxies (``{"https": "http://user:pass@proxy:3128"}``), checked,
    immutable, the passwords hidden: ``repr`` shows ``user:***@``.

    Keys: ``http``, ``https``, ``all`` or ``<scheme>://<host>``; values: ``http``,
    ``https`` or ``socks*`` URLs with a host.

    Args:
        proxies: The mapping (or another :class:`Proxies`).

    Raises:
        ConfigurationError: A key or URL is not usable (``field`` is ``"proxies"``; the
            message never holds the URL).
    """

    __slots__ = ("_entries",)

    def __init__(self, proxies: Mapping[str, str] | Proxies) -> None:
        if isinstance(proxies, Proxies):
            self._entries: tuple[tuple[str, _ProxyURL], ...] = proxies._entries
            return
        if not isinstance(proxies, Mapping):
            raise ConfigurationError(
                f"proxies must be a dict such as {{'https': 'http://proxy:3128'}}, "
                f"not {type(proxies).__name__}",
                field="proxies",
            )
        entries = []
        for key, url in proxies.items():
            entries.append((_checked_key(key), _ProxyURL(str(key), url)))
        self._entries = tuple(sorted(entries, key=lambda item: item[0]))

    def for_url(self, url: str) -> str | None:
        """The proxy URL (in clear: hand it on at once) for a request to ``url``, looked up
        as ``requests`` does: ``<scheme>://<host>``, ``<scheme>``, ``all://<host>``,
        ``all``; None when there is no entry for it."""
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        found = dict(self._entries)
        for key in (f"{scheme}://{host}", scheme, f"all://{host}", "all"):
            if key in found:
                return found[key].reveal()
        return None

    def requests_proxies(self, url: str) -> dict[str, str] | None:
        """The ``proxies=`` of a request to ``url`` that makes the proxy for it win over the
        environment (``HTTPS_PROXY``, ``NO_PROXY``): set for the URL's own scheme, the key
        ``requests`` looks at before any the environment can give. None: no entry."""
        proxy = self.for_url(url)
        if proxy is None:
            return None
        return {urlsplit(url).scheme.lower(): proxy}

    def passwords(self) -> tuple[SecretValue, ...]:
        """The passwords, hidden, in every form a message could show them (as given and
        percent-decoded)."""
        found: list[SecretValue] = []
        for _, entry in self._entries:
            if entry.password is not None:
                found.append(entry.password)
                found.append(entry.password.map(unquote))
        return tuple(found)

    def hosts(self) -> tuple[str, ...]:
        """The proxies' hosts, for messages."""
        return tuple(urlsplit(repr(entry)[1:-1]).hostname or "?" for _, entry in self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Proxies):
            return NotImplemented
        return [(k, v.reveal()) for k, v in self._entries] == [
            (k, v.reveal()) for k, v in other._entries
        ]

    def __hash__(self) -> int:
        return hash(tuple(k for k, _ in self._entries))

    def __repr__(self) -> str:
        return "Proxies({" + ", ".join(f"{k!r}: {v!r}" for k, v in self._entries) + "})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("Proxies are not pickled: the pickle would hold a password in clear")


def _checked_key(key: object) -> str:
    if not isinstance(key, str):
        raise ConfigurationError(
            f"proxies: keys are strings, not {type(key).__name__}", field="proxies"
        )
    lowered = key.lower()
    if lowered in _PLAIN_KEYS:
        return lowered
    scheme, sep, host = lowered.partition("://")
    if sep and scheme in _PLAIN_KEYS and host and "/" not in host:
        return lowered
    raise ConfigurationError(
        f"proxies: key {key[:40]!r} is not 'http', 'https', 'all' or '<scheme>://<host>'",
        field="proxies",
    )


def checked_proxies(value: object) -> Proxies | None:
    """``value`` (None, a mapping or :class:`Proxies`) as the ``proxies`` setting; an empty
    mapping is None.

    Raises:
        ConfigurationError: It is not usable.
    """
    if value is None:
        return None
    proxies = Proxies(value)  # type: ignore[arg-type]
    return proxies if proxies else None


def check_cert(value: object) -> str | tuple[str, str] | None:
    """``value`` as the ``cert`` setting: None, the path of a PEM file holding the client
    certificate and its key, or a ``(certificate, key)`` pair of paths (as ``requests``'
    ``cert=``). The files must exist now.

    Raises:
        ConfigurationError: Anything else; ``field`` is ``"cert"``.
    """
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        return _existing(value, "client certificate")
    if isinstance(value, tuple | list) and len(value) == 2:
        return (_existing(value[0], "client certificate"), _existing(value[1], "private key"))
    raise ConfigurationError(
        "cert must be a PEM file path or a (certificate, key) pair of paths, "
        f"not {type(value).__name__}",
        field="cert",
    )


def _existing(path: object, what: str) -> str:
    if not isinstance(path, str | os.PathLike):
        raise ConfigurationError(
            f"cert: the {what} must be a path, not {type(path).__name__}", field="cert"
        )
    text = os.fspath(path)
    if not isinstance(text, str) or not os.path.isfile(text):
        raise ConfigurationError(f"cert: the {what} {text!r} is not a file", field="cert")
    return text


def proxies_from_env(env: Mapping[str, str]) -> Proxies | dict[str, str] | None:
    """The ``proxies`` ``GENESYSCLOUD_PROXY_HOST``, ``_PORT``, ``_PROTOCOL`` (default
    ``http``), ``_AUTH_USERNAME`` and ``_AUTH_PASSWORD`` give, for http and https requests
    alike; None when the host is unset or empty.

    Never raises (the caller's frame holds the whole environment, the client secret among
    it): a value that is not usable comes back without its credentials, for the settings'
    check to refuse with a message naming no password.
    """
    host = (env.get(ENV_PROXY_HOST) or "").strip()
    if not host:
        return None
    protocol = (env.get(ENV_PROXY_PROTOCOL) or "http").strip().lower()
    netloc = _host_port(host, env.get(ENV_PROXY_PORT))
    bare = f"{protocol}://{netloc}"
    user = env.get(ENV_PROXY_USERNAME) or ""
    if not user:
        if env.get(ENV_PROXY_PASSWORD):
            log.warning(
                "%s is set but %s is not: the proxy is used without credentials",
                ENV_PROXY_PASSWORD,
                ENV_PROXY_USERNAME,
            )
        return {"http": bare, "https": bare}
    password = env.get(ENV_PROXY_PASSWORD) or ""
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    try:
        return Proxies(dict.fromkeys(("http", "https"), f"{protocol}://{auth}@{netloc}"))
    except ConfigurationError:
        return {"http": bare, "https": bare}


def gateway_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """``token_url`` and ``api_base_url`` of the gateway ``GENESYSCLOUD_GATEWAY_HOST``,
    ``_PORT``, ``_PROTOCOL`` (default ``https``) and its path parameter
    ``_PATH_NAME``/``_PATH_VALUE`` (name ``login``: the token URL's prefix; ``api``: the
    API's) name; empty when the host is unset or empty.

    Never raises (see :func:`proxies_from_env`): a port that is not a number makes URLs
    the settings' check refuses.
    """
    host = (env.get(ENV_GATEWAY_HOST) or "").strip()
    if not host:
        return {}
    protocol = (env.get(ENV_GATEWAY_PROTOCOL) or "https").strip().lower()
    origin = f"{protocol}://{_host_port(host, env.get(ENV_GATEWAY_PORT))}"
    name = (env.get(ENV_GATEWAY_PATH_NAME) or "").strip().lower()
    value = (env.get(ENV_GATEWAY_PATH_VALUE) or "").strip().strip("/")
    prefix = {name: f"/{value}"} if name and value else {}
    return {
        "token_url": f"{origin}{prefix.get('login', '')}/oauth/token",
        "api_base_url": f"{origin}{prefix.get('api', '')}",
    }


def _host_port(host: str, port: str | None) -> str:
    """``host`` or ``host:port``; the default ports 80 and 443 are left out, as the Go SDK
    does."""
    port = (port or "").strip()
    if not port or port in ("80", "443"):
        return host
    return f"{host}:{port}"
