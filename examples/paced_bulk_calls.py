"""A bulk job that stays under Genesys' per-token API limit: no 429s, no lost seconds.

Genesys allows each client-credentials token 300 API calls a minute. Set the limit and every
call the SDK makes takes a slot first; threads wait their turn instead of drawing 429s::

    export GENESYSCLOUD_OAUTHCLIENT_ID=...
    export GENESYSCLOUD_OAUTHCLIENT_SECRET=...
    export GENESYSCLOUD_API_RATE_LIMIT=300/60     # calls/seconds per token
    python examples/paced_bulk_calls.py 50        # 50 calls from 8 threads

With a ``FileStore`` or ``RedisStore`` (``store=``), every process sharing it shares the
limit too. Prints how many calls were answered and how many were throttled (429); exit status
1 when something failed.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from genesys_token import GenesysTokenError, TokenManager, api_session

PATH = "/api/v2/organizations/me"


def main(argv: list[str]) -> int:
    """Make ``argv[0]`` (default 50) API calls from 8 threads, paced; print the outcome."""
    calls = int(argv[0]) if argv else 50
    started = time.monotonic()
    try:
        with TokenManager.from_env() as manager, api_session(manager) as session:
            if manager.settings.api_rate_limit is None:
                print("set GENESYSCLOUD_API_RATE_LIMIT (e.g. 300/60)", file=sys.stderr)
                return 1
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: session.get(PATH).status_code, range(calls)))
            throttled = manager.metrics()["pacing"]["throttled"]
    except GenesysTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(f"{statuses.count(200)} of {calls} calls answered 200 in {took:.1f} s; {throttled} 429s")
    return 0 if statuses.count(200) == calls else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
