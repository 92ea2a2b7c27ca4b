"""The three-line setup: a ``requests`` session that always carries a valid Genesys token.

Configure it with the environment, then run ``python examples/requests_session.py``::

    export GENESYSCLOUD_OAUTHCLIENT_ID=...      # the OAuth client (client credentials grant)
    export GENESYSCLOUD_OAUTHCLIENT_SECRET=...
    export GENESYSCLOUD_REGION=us-east-1        # or GENESYSCLOUD_TOKEN_URL + GENESYSCLOUD_API_URL

Against the emulator (``genesys-token emulator`` prints the values to use), set
``GENESYSCLOUD_TOKEN_URL`` and ``GENESYSCLOUD_API_URL`` to its addresses. The script prints
the organization's name; exit status 1 (and a message on stderr) when something failed.
"""

from __future__ import annotations

import sys

import requests

from genesys_token import GenesysAuth, GenesysTokenError, TokenManager


def main() -> int:
    """Print the name of the organization the OAuth client belongs to."""
    try:
        with TokenManager.from_env() as manager, requests.Session() as session:
            session.auth = GenesysAuth(manager)
            url = f"{manager.api_base_url}/api/v2/organizations/me"
            response = session.get(url, timeout=(3.05, 10))
            response.raise_for_status()
            print(response.json()["name"])
    except (GenesysTokenError, requests.RequestException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
