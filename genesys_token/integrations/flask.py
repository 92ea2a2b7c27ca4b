"""The ``GenesysToken`` Flask extension: one token manager per app and process.

::

    from flask import Flask
    from genesys_token.integrations.flask import GenesysToken

    genesys = GenesysToken()

    def create_app(config=None):
        app = Flask(__name__)
        app.config.update(config or {})
        genesys.init_app(app)

        @app.get("/org")
        def org():
            url = f"{genesys.manager.api_base_url}/api/v2/organizations/me"
            return genesys.session.get(url, timeout=10).json()

        return app

Settings come from ``app.config``: ``GENESYS_CLIENT_ID``, ``GENESYS_CLIENT_SECRET``,
``GENESYS_REGION``, ``GENESYS_TOKEN_URL``, ``GENESYS_API_URL`` (each falling back to its
``GENESYSCLOUD_*`` environment variable), ``GENESYS_TOKEN_OPTIONS`` (a dict of further
:class:`~genesys_token.TokenManager` arguments) and ``GENESYS_ALLOWED_ORIGINS`` (origins besides
the API's that ``genesys.session`` sends the token to; it sends it nowhere else). The
manager is built on first use, so an app factory can run without credentials and a pre-fork
server (gunicorn ``--preload``) imports the app without making a token request; it is closed
at interpreter exit or by :meth:`GenesysToken.close`.
"""

from __future__ import annotations

import threading

import requests
from flask import Flask, current_app, has_app_context

from ..manager import TokenManager
from ._common import authorized_session, close_at_exit, manager_from_settings

#: The key of the per-app state in ``app.extensions``.
EXTENSION_KEY = "genesys_token"


class _AppState:
    """One app's manager and session, built once however many threads ask at once."""

    def __init__(self, app: Flask) -> None:
        self.config = app.config
        self.lock = threading.Lock()
        self.manager: TokenManager | None = None
        self.session: requests.Session | None = None

    def get_manager(self) -> TokenManager:
        manager = self.manager
        if manager is not None:
            return manager
        with self.lock:
            if self.manager is None:
                # Built under the lock: two managers would mean two token requests.
                self.manager = manager_from_settings(self.config.get, "app.config")
                close_at_exit(self.manager)
            return self.manager

    def get_session(self) -> requests.Session:
        session = self.session
        if session is not None:
            return session
        manager = self.get_manager()
        with self.lock:
            if self.session is None:
                self.session = authorized_session(manager, self.config.get, "app.config")
            return self.session

    def close(self) -> None:
        with self.lock:
            manager, session = self.manager, self.session
            self.manager = self.session = None
        if session is not None:
            session.close()
        if manager is not None:
            manager.close()


class GenesysToken:
    """Flask extension holding a :class:`~genesys_token.TokenManager` per app.

    Bind it with ``GenesysToken(app)`` or, in an app factory, ``GenesysToken()`` then
    :meth:`init_app`. Inside a request (or any app context) :attr:`manager` and
    :attr:`session` belong to ``current_app``.

    Args:
        app: The app to bind now; ``None`` to bind later with :meth:`init_app`.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app`` (no manager and no network call yet).

        Args:
            app: The Flask application.
        """
        app.extensions[EXTENSION_KEY] = _AppState(app)

    def _state(self) -> _AppState:
        app = current_app._get_current_object() if has_app_context() else self._app  # type: ignore[attr-defined]
        if app is None:
            raise RuntimeError(
                "GenesysToken used outside an application context and bound to no app: "
                "use it in a request, inside `with app.app_context():`, or pass the app"
            )
        state: _AppState | None = app.extensions.get(EXTENSION_KEY)
        if state is None:
            raise RuntimeError("GenesysToken.init_app(app) was not called for this app")
        return state

    @property
    def manager(self) -> TokenManager:
        """The app's token manager, built from ``app.config`` on first use.

        Raises:
            ConfigurationError: A ``GENESYS_*`` setting is missing or invalid.
        """
        return self._state().get_manager()

    @property
    def session(self) -> requests.Session:
        """A ``requests.Session`` sending the app's token (shared by the app's threads).

        Raises:
            ConfigurationError: A ``GENESYS_*`` setting is missing or invalid.
        """
        return self._state().get_session()

    def close(self, app: Flask | None = None) -> None:
        """Close the manager and session of ``app`` (default: the current app).

        The next use builds new ones. Idempotent.

        Args:
            app: The app whose manager to close.
        """
        state = app.extensions.get(EXTENSION_KEY) if app is not None else self._state()
        if state is not None:
            state.close()
