"""Settings: frozen objects, every value checked once, with the field named on error.

:class:`Settings` is the public one: every tuning setting, no credentials. :class:`Config`
is what a manager works with: its credentials and its settings, the login host resolved.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .api_rate import (
    DEFAULT_API_RATE_WAIT,
    api_rate_from_env,
    check_api_rate_limit,
    check_api_rate_wait,
    check_tokens,
)
from .credentials import (
    Secret,
    SecretFile,
    SecretValue,
    check_secret,
    checked_value,
    hide_text,
    is_known,
    read_secret,
)
from .env_names import warn_near_misses
from .errors import ConfigurationError
from .proxies import Proxies, check_cert, checked_proxies, gateway_from_env, proxies_from_env
from .regions import DEFAULT_REGION, check_url, resolve_region

log = logging.getLogger("genesys_token")

ENV_CLIENT_ID = "GENESYSCLOUD_OAUTHCLIENT_ID"
ENV_CLIENT_SECRET = "GENESYSCLOUD_OAUTHCLIENT_SECRET"
ENV_CLIENT_SECRET_FILE = "GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE"
ENV_REGION = "GENESYSCLOUD_REGION"
ENV_TOKEN_URL = "GENESYSCLOUD_TOKEN_URL"
ENV_API_URL = "GENESYSCLOUD_API_URL"

#: Genesys lets an OAuth client's token last at most 48 h; anything claiming much longer is
#: a broken answer, and trusting it could keep a dead token in use for days.
MAX_TOKEN_LIFETIME = 172800.0

#: Real token answers are ~200 bytes; a cap keeps a hostile or broken endpoint from filling
#: memory before we notice.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024

DEFAULT_TIMEOUT = (3.05, 10.0)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A client id and a secret, or a secret source (a zero-argument callable such as
    :class:`~genesys_token.SecretFile`); the secret never appears in ``repr``."""

    client_id: str
    client_secret: Secret = field(repr=False)

    def __post_init__(self) -> None:
        _check_text("client_id", self.client_id)
        # Kept hidden: no frame, dict or slot of ours holds a plain copy of the secret.
        object.__setattr__(self, "client_secret", check_secret(self.client_secret))

    def resolve(self) -> Credentials:
        """These credentials with the secret their source gives now.

        Raises:
            SecretSourceError: The source gave no usable secret.
        """
        if is_known(self.client_secret):
            return self
        return Credentials(self.client_id, read_secret(self.client_secret))


class _FromSettings:
    """The default of a keyword that overrides a :class:`Settings` field: "not given"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<the settings' value>"

    def __reduce__(self) -> str:
        return "UNSET"


#: The default of every setting keyword of ``TokenManager``, ``TokenManager.from_env`` and
#: ``TokenManagerPool``: the keyword was not given, the settings' value applies. Typed
#: ``Any`` so it can stand as the default of a keyword of any type.
UNSET: Any = _FromSettings()

#: Where the login host is: region, then the two URLs that override the region's.
LOCATION = ("region", "token_url", "api_base_url")


@dataclass(frozen=True, slots=True, init=False)
class Settings:
    """How a :class:`~genesys_token.TokenManager` works, without its credentials.

    Immutable and checked when made: an invalid value raises
    :class:`~genesys_token.ConfigurationError` naming the field. One ``Settings`` can be
    shared by any number of managers and pools; :meth:`replace` derives another::

        base = Settings(timeout=5, refresh_buffer=120)
        eu = TokenManager(client_id, secret, settings=base.replace(region="eu-west-1"))

    Every field is also a keyword of ``TokenManager``, ``TokenManager.from_env`` and
    ``TokenManagerPool``, where a keyword given explicitly overrides the field.

    Attributes:
        region: ``"us-east-1"``, ``"us_east_1"``, ``"mypurecloud.ie"`` or a host. Kept as
            given; ``None`` (default) means ``us-east-1`` unless both URLs are given.
        token_url: Full token URL, overriding the region's (plain http: loopback only).
        api_base_url: API base URL, overriding the region's.
        scopes: Sent as ``scope`` only when non-empty; checked against JWT claims. A
            space-separated string or a list; kept as a tuple without repeats.
        refresh_buffer: Refresh this many seconds before expiry (at most 25% of the life)...
        refresh_jitter: ...minus a uniform random 0..jitter (at most 10% of the life).
        timeout: ``(connect, read)`` seconds; one number means both (kept as a pair).
        max_retries: Token request retries (429, 5xx, network, Genesys rate-limit 400).
        retry_deadline: Overall bound of one acquisition's retries (seconds).
        max_retry_after: Cap on a ``Retry-After`` the service asks for.
        backoff_base: First retry backoff ceiling (doubling, full jitter).
        backoff_max: Largest retry backoff ceiling.
        max_response_bytes: Largest token answer read (at least 1024).
        verify: TLS verification: True, False or a CA bundle path.
        jwks_url: When set, JWT signatures are verified against it.
        webhook_url: Events are POSTed there as JSON by a background worker (kept out of
            ``repr``: a webhook URL's path often is a credential itself).
        webhook_secret: Signs webhook bodies (``X-Genesys-Token-Signature``); kept hidden
            (a :class:`SecretValue`), out of ``repr``.
        background_refresh: Refresh ahead of expiry on the process-wide scheduler; False
            refreshes on demand only (cron scripts).
        drain_timeout: Default bound of ``rotate()``'s wait for the old token's uses.
        proxies: ``requests``-style proxies, ``{"https": "http://user:pass@proxy:3128"}``
            (``http``, ``https`` or ``socks*`` URLs), kept as :class:`Proxies`: a password
            never shows. The proxy named for a URL's scheme wins over ``HTTPS_PROXY`` and
            ``NO_PROXY``; a loopback host is never proxied.
        cert: Client certificate for an mTLS gateway: a PEM file holding the certificate
            and its key, or a ``(certificate, key)`` pair of paths (``requests``' ``cert``).
        api_rate_limit: ``(calls, seconds)``: at most ``calls`` API calls per token in any
            window of ``seconds`` (Genesys' default: ``(300, 60.0)``); None paces nothing.
        api_rate_wait: Longest a call waits for room under ``api_rate_limit``; then
            :class:`~genesys_token.errors.ApiRateLimitedError`, nothing sent.
        tokens: How many tokens of the client the manager holds (each with its own
            refresh, rejection and 401 replacement, shared through the store: a fleet makes
            ``tokens`` requests per token lifetime in all); calls go round-robin over them,
            so each token's own API limit adds up. An integer >= 1 (default 1).
    """

    region: str | None
    token_url: str | None
    api_base_url: str | None
    scopes: tuple[str, ...]
    refresh_buffer: float
    refresh_jitter: float
    timeout: tuple[float, float]
    max_retries: int
    retry_deadline: float
    max_retry_after: float
    backoff_base: float
    backoff_max: float
    max_response_bytes: int
    verify: bool | str
    jwks_url: str | None
    webhook_url: str | None = field(repr=False)
    webhook_secret: SecretValue | None = field(repr=False)
    background_refresh: bool
    drain_timeout: float
    proxies: Proxies | None
    cert: str | tuple[str, str] | None
    api_rate_limit: tuple[int, float] | None
    api_rate_wait: float
    tokens: int

    def __init__(
        self,
        *,
        region: str | None = None,
        token_url: str | None = None,
        api_base_url: str | None = None,
        scopes: str | Iterable[str] = (),
        refresh_buffer: float = 300.0,
        refresh_jitter: float = 60.0,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = 4,
        retry_deadline: float = 60.0,
        max_retry_after: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        verify: bool | str = True,
        jwks_url: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | SecretValue | None = None,
        background_refresh: bool = True,
        drain_timeout: float = 30.0,
        proxies: Mapping[str, str] | Proxies | None = None,
        cert: str | tuple[str, str] | None = None,
        api_rate_limit: tuple[int, float] | None = None,
        api_rate_wait: float = DEFAULT_API_RATE_WAIT,
        tokens: int = 1,
    ) -> None:
        """Check and normalise every value (see the class for what each one means).

        Raises:
            ConfigurationError: The first invalid value; ``field`` names it.
        """
        # Hidden first: whatever error follows, no frame of ours holds it in clear.
        webhook_secret = hide_text(webhook_secret)  # type: ignore[assignment]
        proxies = checked_proxies(proxies)  # first too: a proxy's password, hidden
        put = object.__setattr__
        if region is not None:
            resolve_region(region)  # checked now; kept as given, resolved by the manager
        put(self, "region", region)
        put(self, "token_url", _url_or_none("token_url", token_url))
        put(self, "api_base_url", _url_or_none("api_base_url", api_base_url))
        put(self, "scopes", _scopes(scopes))
        put(self, "refresh_buffer", _number("refresh_buffer", refresh_buffer))
        put(self, "refresh_jitter", _number("refresh_jitter", refresh_jitter))
        put(self, "timeout", _timeout(timeout))
        put(self, "max_retries", _integer("max_retries", max_retries, minimum=0))
        put(
            self,
            "retry_deadline",
            _number("retry_deadline", retry_deadline, positive=True),
        )
        put(self, "max_retry_after", _number("max_retry_after", max_retry_after))
        put(self, "backoff_base", _number("backoff_base", backoff_base))
        put(self, "backoff_max", _number("backoff_max", backoff_max, positive=True))
        put(
            self,
            "max_response_bytes",
            _integer("max_response_bytes", max_response_bytes, minimum=1024),
        )
        put(self, "verify", _verify(verify))
        put(self, "jwks_url", _url_or_none("jwks_url", jwks_url))
        put(self, "webhook_url", _url_or_none("webhook_url", webhook_url))
        put(self, "webhook_secret", _webhook_secret(webhook_secret))
        put(self, "background_refresh", _flag("background_refresh", background_refresh))
        put(
            self,
            "drain_timeout",
            _number("drain_timeout", drain_timeout, positive=True),
        )
        put(self, "proxies", proxies)
        put(self, "cert", check_cert(cert))
        put(self, "api_rate_limit", check_api_rate_limit(api_rate_limit))
        put(self, "api_rate_wait", check_api_rate_wait(api_rate_wait))
        put(self, "tokens", check_tokens(tokens))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the ``GENESYSCLOUD_*`` variables that are not credentials:
        ``GENESYSCLOUD_REGION``, ``GENESYSCLOUD_TOKEN_URL`` and ``GENESYSCLOUD_API_URL``
        (unset or empty: the default), the gateway ``GENESYSCLOUD_GATEWAY_*`` (its URLs
        when those two are unset) and the proxy ``GENESYSCLOUD_PROXY_*`` (see
        :mod:`genesys_token.proxies`), and the pacing ``GENESYSCLOUD_API_RATE_LIMIT``
        (``"300/60"``: 300 calls per 60 s) and ``GENESYSCLOUD_API_RATE_WAIT`` (seconds),
        and ``GENESYSCLOUD_TOKENS`` (how many tokens). Every other field has its default.

        Args:
            environ: The environment to read (default ``os.environ``).

        Raises:
            ConfigurationError: A variable holds an invalid value; ``field`` names the
                setting.
        """
        # The environment is read in a frame that has returned before any check can fail:
        # its repr shows every variable, the client secret among them.
        return cls(**_location_from_env(os.environ if environ is None else environ))

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, every value checked again.

        Raises:
            ConfigurationError: An unknown name or an invalid value; ``field`` names it.
        """
        if "webhook_secret" in changes:
            changes["webhook_secret"] = hide_text(changes["webhook_secret"])
        for name in changes:
            if name not in SETTING_NAMES:
                raise ConfigurationError(f"unknown setting {name!r}", field=name)
        values = {name: getattr(self, name) for name in SETTING_NAMES}
        values.update(changes)
        return Settings(**values)

    def merged(self, given: Mapping[str, Any]) -> Settings:
        """These settings with the fields in ``given`` that were passed (not :data:`UNSET`)
        applied: what a constructor's explicit keywords make of them. Other names in
        ``given`` are ignored, so a constructor passes its ``locals()``: its signature names
        every field (tests/test_settings.py checks that), and a field is written once."""
        changes = {
            name: given[name] for name in SETTING_NAMES if given.get(name, UNSET) is not UNSET
        }
        return self.replace(**changes) if changes else self


#: Every field of :class:`Settings`, in order.
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))


def given_settings(settings: object) -> Settings:
    """``settings`` as a constructor's ``settings=`` argument: a :class:`Settings`, or None
    for the defaults.

    Raises:
        ConfigurationError: Anything else.
    """
    if settings is None:
        return Settings()
    if not isinstance(settings, Settings):
        raise ConfigurationError(
            f"settings must be a genesys_token.Settings, not {type(settings).__name__}",
            field="settings",
        )
    return settings


def with_env_location(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """``settings`` with the location fields, ``proxies`` and the pacing fields it leaves
    unset (None; ``api_rate_wait`` at its default) taken from ``GENESYSCLOUD_REGION``,
    ``_TOKEN_URL``, ``_API_URL``, ``GENESYSCLOUD_GATEWAY_*``, ``GENESYSCLOUD_PROXY_*`` and
    ``GENESYSCLOUD_API_RATE_LIMIT`` / ``_WAIT`` and ``GENESYSCLOUD_TOKENS`` (``tokens`` at
    its default 1 counts as unset).

    Raises:
        ConfigurationError: A variable holds an invalid value.
    """
    found = _location_from_env(os.environ if environ is None else environ)
    missing = {k: v for k, v in found.items() if getattr(settings, k) is None and v is not None}
    if "api_rate_wait" in found and settings.api_rate_wait == DEFAULT_API_RATE_WAIT:
        missing["api_rate_wait"] = found["api_rate_wait"]  # the default is "not set"
    if "tokens" in found and settings.tokens == 1:
        missing["tokens"] = found["tokens"]  # likewise
    return settings.replace(**missing) if missing else settings


def _location_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    warn_near_misses(env)
    gateway = gateway_from_env(env)
    return {
        "region": env.get(ENV_REGION) or None,
        "token_url": env.get(ENV_TOKEN_URL) or gateway.get("token_url"),
        "api_base_url": env.get(ENV_API_URL) or gateway.get("api_base_url"),
        "proxies": proxies_from_env(env),
        **api_rate_from_env(env),
    }


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one manager works with: its credentials and its settings, the login
    host and API resolved (internal; the public face is :class:`Settings`).

    Built by :meth:`Config.of` or :meth:`Config.build`; the secret is kept out of ``repr``.
    See :class:`Settings` for what each setting means.
    """

    credentials: Credentials
    token_url: str
    api_base_url: str
    region: str | None = None
    scopes: tuple[str, ...] = ()
    refresh_buffer: float = 300.0
    refresh_jitter: float = 60.0
    timeout: tuple[float, float] = DEFAULT_TIMEOUT
    max_retries: int = 4
    retry_deadline: float = 60.0
    max_retry_after: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    verify: bool | str = True
    jwks_url: str | None = None
    #: Kept out of repr: a webhook URL's path often is a credential itself.
    webhook_url: str | None = field(default=None, repr=False)
    webhook_secret: SecretValue | None = field(default=None, repr=False)
    background_refresh: bool = True
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    drain_timeout: float = 30.0
    #: Shown with ``***`` for a password.
    proxies: Proxies | None = None
    cert: str | tuple[str, str] | None = None
    api_rate_limit: tuple[int, float] | None = None
    api_rate_wait: float = DEFAULT_API_RATE_WAIT
    tokens: int = 1

    @property
    def client_id(self) -> str:
        """The configured client id."""
        return self.credentials.client_id

    @classmethod
    def of(cls, credentials: Credentials, settings: Settings) -> Config:
        """The config of ``credentials`` with ``settings``, the region resolved: a URL
        given wins over the region's; no region and not both URLs means ``us-east-1``.

        Raises:
            ConfigurationError: The region names no known region.
        """
        region, token_url, api_base_url = (
            settings.region,
            settings.token_url,
            settings.api_base_url,
        )
        region_name = None
        if region is not None or token_url is None or api_base_url is None:
            resolved = resolve_region(DEFAULT_REGION if region is None else region)
            region_name = resolved.name
            token_url = resolved.token_url if token_url is None else token_url
            api_base_url = resolved.api_base_url if api_base_url is None else api_base_url
        assert token_url is not None and api_base_url is not None
        rest = {name: getattr(settings, name) for name in SETTING_NAMES if name not in LOCATION}
        return cls(
            credentials=credentials,
            region=region_name,
            token_url=token_url,
            api_base_url=api_base_url,
            **rest,
        )

    @classmethod
    def build(cls, client_id: Any, client_secret: Any, **options: Any) -> Config:
        """Check every value and build the config (for tests and internal callers).

        Args:
            client_id: The OAuth client id.
            client_secret: The OAuth client secret, or a zero-argument callable giving it.
            **options: Any :class:`Settings` field.

        Raises:
            ConfigurationError: The first invalid value, naming the field.
        """
        # Hidden first: any error below (a bad region, say) leaves no frame of ours holding
        # the secret in clear for an error tracker to capture.
        client_secret = hide_text(client_secret)
        if "webhook_secret" in options:
            options["webhook_secret"] = hide_text(options["webhook_secret"])
        for name in options:
            if name not in SETTING_NAMES:
                raise ConfigurationError(f"unknown setting {name!r}", field=name)
        credentials = Credentials(client_id, client_secret)
        return cls.of(credentials, Settings(**options))

    def with_credentials(self, credentials: Credentials) -> Config:
        """Return a copy with other credentials."""
        return replace(self, credentials=credentials)


def credentials_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    client_id: Any = None,
    client_secret: Any = None,
) -> Credentials:
    """The credentials the ``GENESYSCLOUD_OAUTHCLIENT_*`` variables give, ``client_id`` and
    ``client_secret`` (when not None) winning over them.

    The secret comes from ``client_secret``, ``GENESYSCLOUD_OAUTHCLIENT_SECRET``, or else
    the file named by ``GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE`` (read again for each token
    request, so a rotated mounted secret is picked up without a restart).

    Raises:
        ConfigurationError: A required variable is missing or a value is invalid.
    """
    client_secret = hide_text(client_secret)  # hidden first, as everywhere
    env_id, env_secret, secret_file = _credentials_from_environment(
        os.environ if environ is None else environ
    )
    client_id = env_id if client_id is None else client_id
    secret = env_secret if client_secret is None else client_secret
    if not secret and secret_file:
        source = SecretFile(secret_file)
        source()  # unreadable now: say so at start-up, not at the first token request
        secret = source
    if not client_id:
        raise ConfigurationError(
            f"client_id is not set: export {ENV_CLIENT_ID} or pass client_id=", field="client_id"
        )
    if not secret:
        raise ConfigurationError(
            f"client_secret is not set: export {ENV_CLIENT_SECRET} or "
            f"{ENV_CLIENT_SECRET_FILE}, or pass client_secret=",
            field="client_secret",
        )
    return Credentials(client_id, secret)


def _credentials_from_environment(
    env: Mapping[str, str],
) -> tuple[Any, Any, str | None]:
    """The client id, the secret (already hidden) and the secret file's name the
    environment gives; no frame that outlives this call holds the environment (its repr
    shows every variable, the secret among them).

    Surrounding whitespace of the id and the secret is stripped, as it is of the secret
    file's text (a pasted ``secret `` would otherwise be sent as is and refused), with one
    WARNING naming the variable, never its value."""
    warn_near_misses(env)
    return (
        _stripped(ENV_CLIENT_ID, env.get(ENV_CLIENT_ID)),
        hide_text(_stripped(ENV_CLIENT_SECRET, env.get(ENV_CLIENT_SECRET)) or None),
        env.get(ENV_CLIENT_SECRET_FILE),
    )


#: Variables already warned about (the warning is said once per process; tests clear it).
WARNED_STRIPPED: set[str] = set()


def _stripped(name: str, value: str | None) -> str | None:
    """``value`` without surrounding whitespace; says so (by name only, once per process and
    variable: every manager built from the environment reads it again) when it had some."""
    if value is None or value == value.strip():
        return value
    if name not in WARNED_STRIPPED:
        WARNED_STRIPPED.add(name)
        log.warning("%s had surrounding whitespace; it was stripped", name)
    return value.strip()


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}", field=name)
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty", field=name)
    if any(ch in value for ch in "\r\n\x00"):
        raise ConfigurationError(f"{name} must not contain control characters", field=name)
    if not value.isascii() and not _utf8(value):  # raised outside a handler: no chain
        raise ConfigurationError(
            f"{name} must be UTF-8 text (it holds a byte the environment could not decode)",
            field=name,
        )


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(name: str, value: Any, *, minimum: float = 0.0, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, not {type(value).__name__}", field=name)
    number = float(value)
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be finite, got {value!r}", field=name)
    if positive and number <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {value!r}", field=name)
    if number < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum:g}, got {value!r}", field=name)
    return number


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{name} must be an integer, not {type(value).__name__}", field=name
        )
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value!r}", field=name)
    return value


def _timeout(value: Any) -> tuple[float, float]:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ConfigurationError(
                "timeout must be a number or a (connect, read) pair", field="timeout"
            )
        return (
            _number("timeout", value[0], positive=True),
            _number("timeout", value[1], positive=True),
        )
    number = _number("timeout", value, positive=True)
    return (number, number)


def _scopes(value: Any) -> tuple[str, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ConfigurationError(
            f"scopes must be a string or a list of strings, not {type(value).__name__}",
            field="scopes",
        )
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip() or any(c.isspace() for c in item):
            raise ConfigurationError(
                f"scopes: each scope must be a non-empty string without spaces, got {item!r}",
                field="scopes",
            )
        if item not in result:
            result.append(item)
    return tuple(result)


def _verify(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if not os.path.exists(path):
            raise ConfigurationError(f"verify: CA bundle {path!r} does not exist", field="verify")
        return str(path)
    raise ConfigurationError(
        f"verify must be True, False or a CA bundle path, not {type(value).__name__}",
        field="verify",
    )


def _url_or_none(name: str, value: Any) -> str | None:
    return None if value is None else check_url(value, field=name)


def _webhook_secret(value: Any) -> SecretValue | None:
    value = hide_text(value)  # hidden, as the client secret is
    if value is None:
        return None
    if not isinstance(value, SecretValue):
        raise ConfigurationError(
            f"webhook_secret must be a string, not {type(value).__name__}",
            field="webhook_secret",
        )
    return checked_value(value, "webhook_secret")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{name} must be True or False, not {type(value).__name__}", field=name
        )
    return value
