"""App configuration: the token manager is built once, when Django starts."""

from __future__ import annotations

from django.apps import AppConfig

from genesys_token.integrations.django import get_manager


class GenesysDemoConfig(AppConfig):
    """Builds the process's token manager at start-up.

    Building it here makes a bad ``GENESYS_*`` setting fail ``manage.py check`` and server
    start-up rather than the first request. No token is fetched yet: the first call does
    that, so a pre-fork server makes no token request before it forks.
    """

    name = "genesys_demo"

    def ready(self) -> None:
        """Build the manager from the settings (raises ConfigurationError when invalid)."""
        get_manager()
