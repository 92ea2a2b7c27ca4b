"""Many orgs in one process: one TokenManagerPool, one manager per org's OAuth client.

Give it a JSON file of orgs, as a partner platform would keep them::

    [{"client_id": "...", "client_secret": "...", "region": "eu-west-1"},
     {"client_id": "...", "client_secret": "...", "region": "us-east-1"}]

(an org may give ``token_url`` and ``api_base_url`` instead of ``region``, as the emulator
needs), then run ``python examples/many_orgs.py orgs.json``. Every org is served by 8
worker threads that ask the pool for the org's manager on each job; the script prints one
line per org, ``<client id>: <organization name>``, and the pool's totals. Exit status 1
(and a message on stderr, never a secret) when an org failed.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from genesys_token import GenesysTokenError, TokenManagerPool, api_session

#: Managers no job asked for in this long are closed (a later job makes a new one).
MAX_IDLE_SECONDS = 3600


def org_name(pool: TokenManagerPool, org: dict[str, Any]) -> str:
    """One job for one org: ask the pool for its manager, call the API with it."""
    manager = pool.get(
        org["client_id"],
        org["client_secret"],
        region=org.get("region"),
        token_url=org.get("token_url"),
        api_base_url=org.get("api_base_url"),
    )
    with api_session(manager) as session:
        answer = session.get("/api/v2/tokens/me")
        answer.raise_for_status()
        return str(answer.json()["organization"]["name"])


def main(argv: list[str]) -> int:
    """Print each org's name, then how many token requests all of it took."""
    if len(argv) != 1:
        print("usage: many_orgs.py ORGS.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        orgs: list[dict[str, Any]] = json.load(handle)
    failed = 0
    with TokenManagerPool(max_idle=MAX_IDLE_SECONDS) as pool, ThreadPoolExecutor(8) as jobs:
        # Three jobs per org, all at once: each org still makes one token request.
        futures = [(org, jobs.submit(org_name, pool, org)) for org in orgs for _ in range(3)]
        names: dict[str, str] = {}
        for org, future in futures:
            try:
                names[org["client_id"]] = future.result()
            except (GenesysTokenError, requests.RequestException) as exc:
                print(f"error: {org['client_id']}: {exc}", file=sys.stderr)
                failed += 1
        for client_id, name in names.items():
            print(f"{client_id}: {name}")
        totals = pool.metrics()["totals"]
        print(f"{len(pool)} managers, {totals['token_requests']} token requests")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
