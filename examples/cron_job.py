"""A cron job: one Genesys Cloud call per run, one token request per token lifetime.

``crontab -e`` (one job, one line; the variables are crontab settings, so no secret is on a
command line, which every local user can read in ``/proc/<pid>/cmdline``)::

    GENESYSCLOUD_OAUTHCLIENT_ID=your-client-id
    GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE=/home/jobs/.genesys/secret
    */5 * * * * /opt/jobs/venv/bin/python /opt/jobs/cron_job.py

The secret file holds the client secret alone, readable by its owner only (the job refuses
it otherwise).

A short-lived process gains nothing from a background refresh thread, so the manager runs
with ``background_refresh=False``. The token is kept in a
:class:`~genesys_token.stores.FileStore` (``GENESYSCLOUD_TOKEN_CACHE``: a directory, default
``~/.cache/genesys-token``; ``off`` for none), so the next runs reuse it until it is due
for refresh instead of asking Genesys for a token every time.

Exit status: 0 on success, 1 when the call failed, 2 on a configuration error.
"""

from __future__ import annotations

import os
import sys

import requests

from genesys_token import ConfigurationError, GenesysAuth, GenesysTokenError, TokenManager
from genesys_token.stores import FileStore, TokenStore

#: (connect, read) seconds: every network call has a timeout.
API_TIMEOUT = (3.05, 10.0)


def token_store() -> TokenStore | None:
    """The FileStore ``GENESYSCLOUD_TOKEN_CACHE`` names, or None when it says ``off``."""
    cache = os.environ.get("GENESYSCLOUD_TOKEN_CACHE", "").strip()
    if cache.lower() == "off":
        return None
    return FileStore(cache or None)


def secret_file_problem() -> str | None:
    """Why ``GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE`` must not be used, or None (unset, or
    readable by its owner only; a missing file is reported by the manager)."""
    path = os.environ.get("GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE", "")
    try:
        mode = os.stat(path).st_mode if path else 0
    except OSError:
        return None
    if mode & 0o077:
        return f"{path} is readable by other users: chmod 600 it"
    return None


def main() -> int:
    """Print the organization name; returns the exit status."""
    problem = secret_file_problem()
    if problem is not None:
        print(f"cron_job: {problem}", file=sys.stderr)
        return 2
    try:
        manager = TokenManager.from_env(store=token_store(), background_refresh=False)
    except ConfigurationError as exc:
        print(f"cron_job: {exc}", file=sys.stderr)
        return 2
    with manager, requests.Session() as session:
        session.auth = GenesysAuth(manager)
        url = f"{manager.api_base_url}/api/v2/organizations/me"
        try:
            response = session.get(url, timeout=API_TIMEOUT)
        except (GenesysTokenError, requests.RequestException) as exc:
            print(f"cron_job: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        if not response.ok:
            print(f"cron_job: Genesys Cloud answered {response.status_code}", file=sys.stderr)
            return 1
        print(response.json()["name"])
        return 0


if __name__ == "__main__":
    sys.exit(main())
