"""The Genesys Cloud CLI's (``gc``) profiles, read as the CLI reads them.

The CLI (MyPureCloud/platform-client-sdk-cli, ``build/gc/config/config.go``) keeps its
profiles in ``~/.gc/config.toml``, one TOML table per profile, read with viper, so profile
and key names are case-insensitive (its default profile is ``[DEFAULT]``)::

    [DEFAULT]
    environment = "mypurecloud.ie"          # a domain, or a region such as "eu-west-1"
    client_credentials = "<the client id>"  # the CLI's name for the OAuth client id
    client_secret = "<the secret>"
    grant_type = "1"                        # 1 client credentials, 2 implicit, 3 PKCE

The file holds a secret and comes from outside the process: it is opened without blocking
(a FIFO cannot hang us), read up to :data:`MAX_PROFILE_FILE_BYTES`, refused when others may
write it (they could swap the credentials for their own), and a WARNING (once per file) says
when others may read it. It is not refused for that: the CLI itself writes it mode 0644.
Every error is a :class:`ProfileError` naming the file, the profile and the key, never a
value; the secret is hidden (:class:`~genesys_token.credentials.SecretValue`) as soon as it
is read, and no frame that raises holds the file's text.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .credentials import SecretValue
from .errors import ConfigurationError
from .regions import resolve_region
from .settings import LOCATION, Settings

log = logging.getLogger(__name__)

#: The CLI's default profile is ``DEFAULT``; names are case-insensitive, as in the CLI.
DEFAULT_PROFILE = "default"
#: Real files are a few kilobytes (cached token data included); a cap keeps a wrong path
#: (a log, a device) from filling memory.
MAX_PROFILE_FILE_BYTES = 1024 * 1024
#: The key names the CLI writes (``build/gc/config/config.go``).
CLIENT_ID_KEY = "client_credentials"
SECRET_KEY = "client_secret"
ENVIRONMENT_KEY = "environment"
GRANT_TYPE_KEY = "grant_type"
#: ``grant_type`` values of the CLI's browser logins: they have no usable client secret.
_BROWSER_GRANTS = {"2": "implicit grant", "3": "PKCE grant"}
#: Mode bits that let a user other than the owner change the file.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_READABLE_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH
_MAX_NAMES_SHOWN = 20
#: Keys whose values are credentials (the CLI's secret, tokens, proxy and gateway passwords).
_SECRET_KEYS = frozenset(
    {SECRET_KEY, "access_token", "oauth_token_data", "proxy_password", "gateway_password"}
)

_warned_paths: set[str] = set()
_warned_lock = threading.Lock()


def default_path() -> Path:
    """``~/.gc/config.toml``, where the CLI keeps its profiles."""
    return Path.home() / ".gc" / "config.toml"


class ProfileError(ConfigurationError):
    """A CLI profile could not be used. The message names the file, the profile and the key;
    it never holds a value read from the file.

    Attributes:
        path: The profile file.
        profile: The profile asked for.
        key: The offending key, when there is one (also in ``field``).
    """

    def __init__(self, message: str, *, path: str, profile: str, key: str | None = None) -> None:
        super().__init__(message, field=key)
        self.path = path
        self.profile = profile
        self.key = key


@dataclass(frozen=True, slots=True)
class Profile:
    """One client-credentials profile of the CLI's file.

    Attributes:
        name: The profile's name as the file spells it.
        path: The file it was read from.
        client_id: ``client_credentials``.
        client_secret: ``client_secret``, hidden.
        region: The region ``environment`` names (``None`` when it names none).
        local: ``environment`` is ``localhost[:port]``, the CLI's local test mode.
    """

    name: str
    path: str
    client_id: str
    client_secret: SecretValue = field(repr=False)
    region: str | None = None
    local: bool = False


def read_profile(
    name: str = DEFAULT_PROFILE, path: str | os.PathLike[str] | None = None
) -> Profile:
    """Read one client-credentials profile of the CLI's file.

    Args:
        name: The profile (case-insensitive, as in the CLI).
        path: The file (default ``~/.gc/config.toml``).

    Returns:
        The profile, its secret hidden.

    Raises:
        ProfileError: The file is missing, unreadable, not TOML or writable by others; the
            profile is not there (the message lists those that are); a key is missing or of
            the wrong type; the profile is a browser login.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("profile name must be a non-empty string", field="name")
    file = default_path() if path is None else Path(path)
    shown = str(file)
    tables, problem = _load(file)
    if problem is not None:
        raise ProfileError(f"CLI profile file {shown!r} {problem}", path=shown, profile=name)
    found, problem = _pick(tables, name)
    if found is None:
        raise ProfileError(f"{shown!r}: {problem}", path=shown, profile=name)
    real_name, table = found
    return _profile(table, real_name, shown, name)


def with_profile_location(settings: Settings, profile: Profile) -> Settings:
    """``settings`` with the region of ``profile`` when they name no location of their own
    (no region, and not both URLs): a keyword or a settings field wins over the profile.

    Raises:
        ProfileError: The profile's ``environment`` is ``localhost`` (the CLI's local test
            mode, no region) and the settings do not give both URLs.
    """
    region, token_url, api_base_url = (getattr(settings, name) for name in LOCATION)
    if region is not None or (token_url is not None and api_base_url is not None):
        return settings
    if profile.local:
        raise ProfileError(
            f"profile {profile.name!r} of {profile.path!r}: its {ENVIRONMENT_KEY!r} is "
            "localhost, the CLI's local test mode, which names no region: pass token_url= "
            "and api_base_url=",
            path=profile.path,
            profile=profile.name,
            key=ENVIRONMENT_KEY,
        )
    return settings if profile.region is None else settings.replace(region=profile.region)


def _load(file: Path) -> tuple[dict[str, Any], str | None]:
    """The file's tables, or why it cannot be read (returned, not raised: this frame holds
    the file's text)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}, "does not exist (create it with `gc profiles new`, or pass path=)"
    except OSError as exc:
        return {}, f"cannot be opened: {exc.strerror or type(exc).__name__}"
    try:
        status = os.fstat(fd)
        problem = _mode_problem(status)
        if problem is not None:
            return {}, problem
        _warn_if_readable(file, status)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_PROFILE_FILE_BYTES + 1)
    except OSError as exc:
        return {}, f"cannot be read: {exc.strerror or type(exc).__name__}"
    finally:
        os.close(fd)
    if len(raw) > MAX_PROFILE_FILE_BYTES:
        return {}, f"is larger than {MAX_PROFILE_FILE_BYTES} bytes"
    return _parse(raw)


def _parse(raw: bytes) -> tuple[dict[str, Any], str | None]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10: the tomli backport, a declared dependency there
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return {}, "is not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        # Only the position: a parser's message could one day quote the text around it.
        where = re.search(r"\(at [^)]*\)", str(exc))
        return {}, f"is not valid TOML {where[0] if where else ''}".rstrip()
    return {k: _hidden(v) for k, v in data.items() if isinstance(v, dict)}, None


def _hidden(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with every value that is a credential hidden, before anything can raise."""
    return {
        key: _hidden_value(value) if key.lower() in _SECRET_KEYS else value
        for key, value in table.items()
    }


def _hidden_value(value: Any) -> Any:
    """A secret key's value hidden: a string as a SecretValue, anything else (a list, an
    inline table holding the secret) replaced by a stand-in naming only its type, so no
    frame of a later error holds it in clear."""
    if isinstance(value, str):
        return SecretValue(value)
    return _NotText(type(value).__name__)


class _NotText:
    """What a secret key held when it was not a string: only its type is kept."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}, hidden>"


def _mode_problem(status: os.stat_result) -> str | None:
    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file"
    mode = stat.S_IMODE(status.st_mode)
    if mode & _WRITABLE_BY_OTHERS:
        return (
            f"is writable by its group or others (mode {mode:04o}): refused, another user "
            "could put their credentials in it (chmod 600 it)"
        )
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and status.st_uid != geteuid():
        # Its owner may write it whatever its mode: their credentials, our calls.
        return (
            f"belongs to another user (uid {status.st_uid}): refused, its owner could put "
            "their credentials in it"
        )
    return None


def _warn_if_readable(file: Path, status: os.stat_result) -> None:
    mode = stat.S_IMODE(status.st_mode)
    if not mode & _READABLE_BY_OTHERS:
        return
    with _warned_lock:
        if str(file) in _warned_paths:
            return
        _warned_paths.add(str(file))
    log.warning(
        "CLI profile file %r holds a client secret and is readable by other users "
        "(mode %04o); chmod 600 it",
        str(file),
        mode,
    )


def _pick(
    tables: dict[str, Any], name: str
) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
    """The table of profile ``name``: the exact name, else the one name equal but for case."""
    if name in tables:
        return (name, tables[name]), None
    matches = [key for key in tables if key.casefold() == name.casefold()]
    if len(matches) == 1:
        return (matches[0], tables[matches[0]]), None
    if matches:
        return None, f"profiles {', '.join(matches)} differ only by case; pass the exact name"
    names = sorted(tables)
    listed = ", ".join(names[:_MAX_NAMES_SHOWN]) + (" ..." if len(names) > _MAX_NAMES_SHOWN else "")
    return None, f"no profile {name!r}; profiles there: {listed or '(none)'}"


def _profile(table: dict[str, Any], name: str, path: str, asked: str) -> Profile:
    def fail(key: str | None, problem: str) -> ProfileError:
        where = f"profile {name!r} of {path!r}"
        return ProfileError(f"{where}: {problem}", path=path, profile=asked, key=key)

    keys: dict[str, str] = {}
    for key in table:
        if key.lower() in keys:
            raise fail(key.lower(), f"key {key.lower()!r} is set twice (keys ignore case)")
        keys[key.lower()] = key

    def text(key: str, *, required: bool, what: str) -> str | None:
        if key not in keys:
            if not required:
                return None
            raise fail(key, f"key {key!r} ({what}) is missing{_login_hint(keys)}")
        if not isinstance(table[keys[key]], str):
            found = table[keys[key]]
            kind = found.type_name if isinstance(found, _NotText) else type(found).__name__
            raise fail(key, f"key {key!r} ({what}) must be a string, not {kind}")
        value: str = table[keys[key]]
        if required and not value.strip():
            raise fail(key, f"key {key!r} ({what}) is empty{_login_hint(keys)}")
        return value

    grant = table.get(keys.get(GRANT_TYPE_KEY, ""))
    if isinstance(grant, str | int) and str(grant).strip() in _BROWSER_GRANTS:
        raise fail(
            GRANT_TYPE_KEY,
            f"is a browser login ({_BROWSER_GRANTS[str(grant).strip()]}); a client-credentials "
            "profile (grant_type 1) is needed",
        )
    client_id = text(CLIENT_ID_KEY, required=True, what="the client id")
    secret = table.get(keys.get(SECRET_KEY, ""))
    if not isinstance(secret, SecretValue):
        text(SECRET_KEY, required=True, what="the client secret")  # raises: missing, or type
    assert isinstance(secret, SecretValue) and client_id is not None
    if not secret.reveal().strip():
        raise fail(SECRET_KEY, f"key {SECRET_KEY!r} (the client secret) is empty")
    environment = (text(ENVIRONMENT_KEY, required=False, what="the region or domain") or "").strip()
    region, local = None, False
    if re.fullmatch(r"localhost(:\d+)?", environment.lower()):
        local = True
    elif environment:
        try:
            region = resolve_region(environment).name
        except ConfigurationError as exc:
            raise fail(ENVIRONMENT_KEY, f"key {ENVIRONMENT_KEY!r}: {exc}") from None
    return Profile(name, path, client_id, secret, region, local)


def _login_hint(keys: dict[str, str]) -> str:
    if "access_token" in keys:
        return " (an access-token profile: a client-credentials profile is needed)"
    return ""
