"""Async calls with httpx: many coroutines, one token, an event loop that never blocks on it.

Configure it with the environment, then run ``python examples/httpx_async.py``::

    pip install 'genesys-token[httpx]'
    export GENESYSCLOUD_OAUTHCLIENT_ID=...      # the OAuth client (client credentials grant)
    export GENESYSCLOUD_OAUTHCLIENT_SECRET=...
    export GENESYSCLOUD_REGION=us-east-1        # or GENESYSCLOUD_TOKEN_URL + GENESYSCLOUD_API_URL

Against the emulator (``genesys-token emulator`` prints the values to use), set
``GENESYSCLOUD_TOKEN_URL`` and ``GENESYSCLOUD_API_URL`` to its addresses. Ten concurrent
calls share one token request; the script prints the organization's name and how many calls
succeeded. Exit status 1 (and a message on stderr) when something failed.
"""

from __future__ import annotations

import asyncio
import sys

import httpx

from genesys_token import GenesysTokenError, TokenManager
from genesys_token.integrations.httpx import GenesysHTTPXAuth

CONCURRENT_CALLS = 10


async def fetch_org_name(manager: TokenManager) -> tuple[str, int]:
    """The organization's name, and how many of the concurrent calls got a 200."""
    auth = GenesysHTTPXAuth(manager)
    async with httpx.AsyncClient(
        base_url=manager.api_base_url, auth=auth, timeout=httpx.Timeout(10.0, connect=3.05)
    ) as client:
        calls = [client.get("/api/v2/organizations/me") for _ in range(CONCURRENT_CALLS)]
        responses = await asyncio.gather(*calls)
    for response in responses:
        response.raise_for_status()
    return responses[0].json()["name"], len(responses)


def main() -> int:
    """Run the calls; report errors without a traceback (and never with the secret)."""
    try:
        with TokenManager.from_env() as manager:
            name, ok = asyncio.run(fetch_org_name(manager))
    except (GenesysTokenError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name} ({ok} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
