"""Settings of the demo project: no database, one app, Genesys settings from the environment.

``GENESYS_*`` settings feed :func:`genesys_token.integrations.django.get_manager`; left unset,
each falls back to its ``GENESYSCLOUD_*`` environment variable. ``GENESYS_TOKEN_OPTIONS``
takes further TokenManager arguments, e.g. ``{"store": FileStore()}`` to share one token
between the worker processes of a pre-fork server.
"""

from __future__ import annotations

import os
import secrets

DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# A throwaway key: this demo signs nothing that must survive a restart.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["genesys_demo.apps.GenesysDemoConfig"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "demo_site.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

GENESYS_CLIENT_ID = os.environ.get("GENESYSCLOUD_OAUTHCLIENT_ID")
GENESYS_CLIENT_SECRET = os.environ.get("GENESYSCLOUD_OAUTHCLIENT_SECRET")
GENESYS_REGION = os.environ.get("GENESYSCLOUD_REGION")
GENESYS_TOKEN_URL = os.environ.get("GENESYSCLOUD_TOKEN_URL")
GENESYS_API_URL = os.environ.get("GENESYSCLOUD_API_URL")
