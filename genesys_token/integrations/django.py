"""Django helpers: one token manager per process, built from ``django.conf.settings``.

::

    # settings.py
    GENESYS_CLIENT_ID = os.environ["GENESYSCLOUD_OAUTHCLIENT_ID"]
    GENESYS_CLIENT_SECRET = os.environ["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    GENESYS_REGION = "eu-west-1"

    # apps.py
    class DemoConfig(AppConfig):
        def ready(self):
            get_manager()          # fail at start-up on a bad setting, not at the first call

    # views.py
    def org(request):
        url = f"{get_manager().api_base_url}/api/v2/organizations/me"
        return JsonResponse(get_session().get(url, timeout=10).json())

Settings: ``GENESYS_CLIENT_ID``, ``GENESYS_CLIENT_SECRET``, ``GENESYS_REGION``,
``GENESYS_TOKEN_URL``, ``GENESYS_API_URL`` (each falling back to its ``GENESYSCLOUD_*``
environment variable), ``GENESYS_TOKEN_OPTIONS`` (a dict of further
:class:`~genesys_token.TokenManager` arguments) and ``GENESYS_ALLOWED_ORIGINS`` (origins
besides the API's that :func:`get_session` sends the token to; it sends it nowhere else).
Changing one of them (``override_settings``
in tests) closes the manager, and the next :func:`get_manager` builds one from the new values.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
from django.conf import settings  # type: ignore[import-untyped]
from django.core.signals import setting_changed  # type: ignore[import-untyped]

from ..manager import TokenManager
from ._common import (
    ALLOWED_ORIGINS_SETTING,
    OPTIONS_SETTING,
    SETTING_ARGS,
    authorized_session,
    close_at_exit,
    manager_from_settings,
)

_lock = threading.Lock()
_manager: TokenManager | None = None
_session: requests.Session | None = None


def _setting(name: str) -> Any:
    return getattr(settings, name, None)


def get_manager() -> TokenManager:
    """The process's token manager, built from the settings on first call.

    Safe to call from any thread; all of them get the same manager. It is closed at
    interpreter exit, or by :func:`close`.

    Raises:
        ConfigurationError: A ``GENESYS_*`` setting is missing or invalid.
    """
    global _manager
    manager = _manager
    if manager is not None:
        return manager
    with _lock:
        if _manager is None:
            # Built under the lock: two managers would mean two token requests.
            _manager = manager_from_settings(_setting, "settings")
            close_at_exit(_manager)
        return _manager


def get_session() -> requests.Session:
    """A ``requests.Session`` sending the manager's token, shared by the process's threads.

    The token goes only to the API origin and the ``GENESYS_ALLOWED_ORIGINS`` (see
    :class:`~genesys_token.GenesysAuth`); calls to other hosts go out without it.

    Raises:
        ConfigurationError: A ``GENESYS_*`` setting is missing or invalid.
    """
    global _session
    session = _session
    if session is not None:
        return session
    manager = get_manager()
    with _lock:
        if _session is None:
            _session = authorized_session(manager, _setting, "settings")
        return _session


def close() -> None:
    """Close the manager and session; the next :func:`get_manager` builds new ones."""
    global _manager, _session
    with _lock:
        manager, session = _manager, _session
        _manager = _session = None
    if session is not None:
        session.close()
    if manager is not None:
        manager.close()


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in SETTING_ARGS or setting in (OPTIONS_SETTING, ALLOWED_ORIGINS_SETTING):
        close()


setting_changed.connect(_on_setting_changed, dispatch_uid="genesys_token.integrations.django")
