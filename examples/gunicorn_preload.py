"""A WSGI app for gunicorn ``--preload``: one manager built before the fork, one token shared.

::

    export GENESYSCLOUD_OAUTHCLIENT_ID=... GENESYSCLOUD_OAUTHCLIENT_SECRET=...
    export GENESYSCLOUD_TOKEN_CACHE=/run/myapp/genesys-token     # optional, a directory
    gunicorn --preload -w 3 -b 127.0.0.1:8000 --chdir examples gunicorn_preload:app
    curl http://127.0.0.1:8000/whoami

With ``--preload`` the master imports this module once and forks the workers. The manager
is built here, at import, and makes no token request until a worker's first call; each
worker's copy renews its own locks and connections after the fork, and the
:class:`~genesys_token.stores.FileStore` lets the workers share one token: the first worker
to need it fetches it under a file lock, the others read it from the cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import requests

from genesys_token import GenesysAuth, TokenManager
from genesys_token.stores import FileStore

#: (connect, read) seconds: every network call has a timeout.
API_TIMEOUT = (3.05, 10.0)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

manager = TokenManager.from_env(store=FileStore(os.environ.get("GENESYSCLOUD_TOKEN_CACHE") or None))


def _new_session() -> requests.Session:
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    return session


session = _new_session()


def _fresh_session_in_child() -> None:
    # A forked worker must not share pooled connections with its parent or siblings. The
    # inherited session is dropped, not closed: closing could end the parent's connections.
    global session
    session = _new_session()


os.register_at_fork(after_in_child=_fresh_session_in_child)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application: ``/whoami`` (worker pid and organization) and ``/healthz``."""
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _reply(start_response, "200 OK", {"ok": True})
    if path != "/whoami":
        return _reply(start_response, "404 Not Found", {"error": "not found"})
    url = f"{manager.api_base_url}/api/v2/organizations/me"
    response = session.get(url, timeout=API_TIMEOUT)
    if not response.ok:
        error = {"error": "Genesys Cloud call failed", "status": response.status_code}
        return _reply(start_response, "502 Bad Gateway", error)
    return _reply(start_response, "200 OK", {"pid": os.getpid(), "org": response.json()["name"]})


def _reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]
