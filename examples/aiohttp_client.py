"""Async calls with aiohttp: a client middleware puts the token on every API call.

Configure it with the environment, then run ``python examples/aiohttp_client.py``::

    pip install 'genesys-token[aiohttp]'
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

import aiohttp

from genesys_token import GenesysTokenError, TokenManager
from genesys_token.integrations.aiohttp import genesys_middleware

CONCURRENT_CALLS = 10


async def fetch_org_name(manager: TokenManager) -> tuple[str, int]:
    """The organization's name, and how many of the concurrent calls got a 200."""

    async def get_org(session: aiohttp.ClientSession) -> dict[str, str]:
        async with session.get("api/v2/organizations/me") as response:
            response.raise_for_status()
            return await response.json()  # type: ignore[no-any-return]

    async with aiohttp.ClientSession(
        base_url=manager.api_base_url + "/",
        middlewares=(genesys_middleware(manager),),
        timeout=aiohttp.ClientTimeout(total=10.0, connect=3.05),
    ) as session:
        orgs = await asyncio.gather(*(get_org(session) for _ in range(CONCURRENT_CALLS)))
    return orgs[0]["name"], len(orgs)


def main() -> int:
    """Run the calls; report errors without a traceback (and never with the secret)."""
    try:
        with TokenManager.from_env() as manager:
            name, ok = asyncio.run(fetch_org_name(manager))
    except (GenesysTokenError, aiohttp.ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name} ({ok} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
