"""What the web framework integrations share: building a manager from settings, sessions."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import requests

from ..credentials import hide_text
from ..errors import ConfigurationError
from ..http.connections import LoopbackDirectAdapter
from ..manager import TokenManager
from ..settings import ENV_CLIENT_ID, ENV_CLIENT_SECRET, given_settings
from .requests_auth import GenesysAuth

#: Setting name -> TokenManager argument. Unset (or empty) settings fall back to the
#: ``GENESYSCLOUD_*`` environment variables, as :meth:`TokenManager.from_env` reads them.
SETTING_ARGS: dict[str, str] = {
    "GENESYS_CLIENT_ID": "client_id",
    "GENESYS_CLIENT_SECRET": "client_secret",
    "GENESYS_REGION": "region",
    "GENESYS_TOKEN_URL": "token_url",
    "GENESYS_API_URL": "api_base_url",
}
#: A list of further origins that get the token from the integration's session
#: (``["https://gateway.example.com"]``); the API origin always does.
ALLOWED_ORIGINS_SETTING = "GENESYS_ALLOWED_ORIGINS"
#: A dict of further TokenManager arguments (``settings``, ``store``, ``refresh_buffer``, ...).
OPTIONS_SETTING = "GENESYS_TOKEN_OPTIONS"
#: What ``GENESYS_TOKEN_OPTIONS`` may hold besides setting fields (a ``Settings`` the fields
#: are applied to, and objects given to the manager as they are).
_OBJECTS = frozenset({"settings", "store", "clock", "session"})
_ENV_OF = {"client_id": ENV_CLIENT_ID, "client_secret": ENV_CLIENT_SECRET}
_SETTING_OF = {arg: name for name, arg in SETTING_ARGS.items()}


def manager_from_settings(lookup: Callable[[str], Any], where: str) -> TokenManager:
    """Build a manager from ``GENESYS_*`` settings, the environment filling the gaps.

    Args:
        lookup: Returns a setting's value, or ``None`` when it is not set.
        where: Where the settings live, for error messages (``"app.config"``).

    Raises:
        ConfigurationError: A setting is missing or invalid; the message names the setting.
    """
    options = lookup(OPTIONS_SETTING)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{OPTIONS_SETTING} in {where} must be a dict, not {type(options).__name__}",
            field=OPTIONS_SETTING,
        )
    fields = {k: v for k, v in options.items() if k not in _OBJECTS}
    for name, arg in SETTING_ARGS.items():
        value = lookup(name)
        if value is not None and value != "":
            fields[arg] = value
    client_id = fields.pop("client_id", None)
    # Hidden at once: no frame of ours holds it in clear, whatever error follows.
    client_secret = hide_text(fields.pop("client_secret", None))
    try:
        # replace() checks the fields, naming an unknown one; the environment fills the
        # location fields left unset.
        return TokenManager.from_env(
            client_id=client_id,
            client_secret=client_secret,  # type: ignore[arg-type]
            settings=given_settings(options.get("settings")).replace(**fields),
            store=options.get("store"),
            clock=options.get("clock"),
            session=options.get("session"),
        )
    except ConfigurationError as exc:
        if exc.field in _ENV_OF:
            setting = _SETTING_OF[exc.field]
            raise ConfigurationError(
                f"{exc.field} is not set: set {setting} in {where} or export {_ENV_OF[exc.field]}",
                field=setting,
            ) from None
        raise


def authorized_session(
    manager: TokenManager, lookup: Callable[[str], Any], where: str
) -> requests.Session:
    """A ``requests.Session`` that sends the manager's token on calls to the API origin and
    the origins in the ``GENESYS_ALLOWED_ORIGINS`` setting, and on no other call.

    Raises:
        ConfigurationError: ``GENESYS_ALLOWED_ORIGINS`` is not a list of origins.
    """
    origins = lookup(ALLOWED_ORIGINS_SETTING)
    try:
        auth = GenesysAuth(manager, allowed_origins=() if origins is None else origins)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{ALLOWED_ORIGINS_SETTING} in {where}: {exc}", field=ALLOWED_ORIGINS_SETTING
        ) from None
    session = requests.Session()
    adapter = LoopbackDirectAdapter()  # the token to a loopback API never goes via a proxy
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = auth
    return session


def close_at_exit(manager: TokenManager) -> None:
    """Close ``manager`` when the interpreter exits, without keeping it alive until then."""
    atexit.register(_close_if_alive, weakref.ref(manager))


def _close_if_alive(ref: weakref.ref[TokenManager]) -> None:
    manager = ref()
    if manager is not None:
        manager.close()
