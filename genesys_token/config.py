"""Settings: one frozen object, every value checked once, with the field named on error."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ._secrets import (
    Secret,
    SecretFile,
    SecretValue,
    check_secret,
    checked_value,
    hide_text,
    is_known,
    read_secret,
)
from .errors import ConfigurationError
from .regions import DEFAULT_REGION, check_url, resolve_region

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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a :class:`~genesys_token.TokenManager` is configured with.

    Built by :meth:`Settings.build` (which checks every value); the secret is kept out of
    ``repr``. See :class:`~genesys_token.TokenManager` for what each setting means.
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

    @property
    def client_id(self) -> str:
        """The configured client id."""
        return self.credentials.client_id

    @classmethod
    def build(
        cls,
        client_id: Any,
        client_secret: Any,
        *,
        region: Any = None,
        token_url: Any = None,
        api_base_url: Any = None,
        **options: Any,
    ) -> Settings:
        """Check every value and build the settings.

        Args:
            client_id: The OAuth client id.
            client_secret: The OAuth client secret, or a zero-argument callable giving it.
            region: Any accepted spelling of a region (default ``us-east-1``).
            token_url: A full token URL, overriding the region's.
            api_base_url: An API base URL, overriding the region's.
            **options: Any other :class:`Settings` field.

        Returns:
            The settings.

        Raises:
            ConfigurationError: The first invalid value, naming the field.
        """
        # Hidden first: any error below (a bad region, say) leaves no frame of ours holding
        # the secret in clear for an error tracker to capture.
        client_secret = hide_text(client_secret)
        if "webhook_secret" in options:
            options["webhook_secret"] = hide_text(options["webhook_secret"])
        known = {f.name for f in fields(cls)} - {"credentials", "token_url", "api_base_url"}
        for name in options:
            if name not in known:
                raise ConfigurationError(f"unknown setting {name!r}", field=name)
        credentials = Credentials(client_id, client_secret)
        region_name = None
        if region is not None or token_url is None or api_base_url is None:
            resolved = resolve_region(DEFAULT_REGION if region is None else region)
            region_name = resolved.name
            token_url = resolved.token_url if token_url is None else token_url
            api_base_url = resolved.api_base_url if api_base_url is None else api_base_url
        return cls(
            credentials=credentials,
            region=region_name,
            token_url=check_url(token_url, field="token_url"),
            api_base_url=check_url(api_base_url, field="api_base_url"),
            **_check_options(options),
        )

    def with_credentials(self, credentials: Credentials) -> Settings:
        """Return a copy with other credentials."""
        return replace(self, credentials=credentials)


def _from_environment(env: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The settings the environment gives, the secret already hidden, and the secret file's
    name; no frame that outlives this call holds the environment (its repr shows every
    variable, the secret among them)."""
    values: dict[str, Any] = {
        "client_id": env.get(ENV_CLIENT_ID),
        "client_secret": hide_text(env.get(ENV_CLIENT_SECRET)),
        "region": env.get(ENV_REGION) or None,
        "token_url": env.get(ENV_TOKEN_URL) or None,
        "api_base_url": env.get(ENV_API_URL) or None,
    }
    return values, env.get(ENV_CLIENT_SECRET_FILE)


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the ``GENESYSCLOUD_*`` variables Genesys tooling uses.

    The secret comes from ``GENESYSCLOUD_OAUTHCLIENT_SECRET``, or else from the file named by
    ``GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE`` (read again for each token request, so a
    rotated mounted secret is picked up without a restart).

    Args:
        environ: The environment to read (default ``os.environ``).
        **overrides: Keyword arguments that win over the environment.

    Returns:
        The settings.

    Raises:
        ConfigurationError: A required variable is missing or a value is invalid.
    """
    values, secret_file = _from_environment(os.environ if environ is None else environ)
    values.update(overrides)
    values["client_secret"] = hide_text(values.get("client_secret")) or None
    if not values.get("client_secret") and secret_file:
        source = SecretFile(secret_file)
        source()  # unreadable now: say so at start-up, not at the first token request
        values["client_secret"] = source
    if not values.get("client_id"):
        raise ConfigurationError(
            f"client_id is not set: export {ENV_CLIENT_ID} or pass client_id=", field="client_id"
        )
    if not values.get("client_secret"):
        raise ConfigurationError(
            f"client_secret is not set: export {ENV_CLIENT_SECRET} or "
            f"{ENV_CLIENT_SECRET_FILE}, or pass client_secret=",
            field="client_secret",
        )
    client_id = values.pop("client_id")
    client_secret = values.pop("client_secret")
    return Settings.build(client_id, client_secret, **values)


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


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name == "scopes":
            checked[name] = _scopes(value)
        elif name == "timeout":
            checked[name] = _timeout(value)
        elif name in ("refresh_buffer", "refresh_jitter", "max_retry_after", "backoff_base"):
            checked[name] = _number(name, value)
        elif name in ("retry_deadline", "backoff_max", "drain_timeout"):
            checked[name] = _number(name, value, positive=True)
        elif name == "max_retries":
            checked[name] = _integer(name, value, minimum=0)
        elif name == "max_response_bytes":
            checked[name] = _integer(name, value, minimum=1024)
        elif name == "verify":
            checked[name] = _verify(value)
        elif name in ("jwks_url", "webhook_url"):
            checked[name] = None if value is None else check_url(value, field=name)
        elif name == "webhook_secret":
            value = hide_text(value)  # hidden, as the client secret is
            if value is not None and not isinstance(value, SecretValue):
                raise ConfigurationError(
                    f"{name} must be a string, not {type(value).__name__}", field=name
                )
            checked[name] = None if value is None else checked_value(value, name)
        elif name == "background_refresh":
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"background_refresh must be True or False, not {type(value).__name__}",
                    field=name,
                )
            checked[name] = value
        else:  # pragma: no cover - build() rejects unknown names first
            raise ConfigurationError(f"unknown setting {name!r}", field=name)
    return checked
