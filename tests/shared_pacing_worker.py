"""One process of a fleet that paces real API calls through a shared store (run by
tests/test_shared_pacing.py): ``python shared_pacing_worker.py '<json>'``.

``mode`` "calls": ``threads`` threads each take a slot, send ``GET /api/v2/organizations/me``
with the bearer token to the emulator, release the slot, from wall time ``start_at`` until
``end_at``; prints ``{"sent": n, "cancelled": n, "statuses": {...}}`` (cancelled: slots taken
past ``end_at`` and given back unused). ``mode`` "hold": takes ``calls`` slots, prints
``{"held": wall time}`` and sleeps until killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import requests

from genesys_token.core.shared_pacing import SharedPacer
from genesys_token.stores.file import FileStore
from genesys_token.stores.redis import RedisStore


def _backend(spec: dict[str, Any]) -> Any:
    if spec["store"] == "redis":
        return RedisStore(spec["url"], prefix=spec["prefix"]).slots()
    return FileStore(spec["path"]).slots()


def _calls(spec: dict[str, Any], pacer: SharedPacer) -> None:
    statuses: Counter[int] = Counter()
    guard = threading.Lock()
    headers = {"Authorization": f"Bearer {spec['token']}"}
    url = spec["api"] + "/api/v2/organizations/me"

    def loop() -> None:
        session = requests.Session()
        while time.time() < spec["end_at"]:
            slot = pacer.acquire(spec["key"], timeout=5.0)
            if time.time() >= spec["end_at"]:
                slot.cancel()
                with guard:
                    statuses[0] += 1  # taken past the end: given back unused
                break
            try:
                status = session.get(url, headers=headers, timeout=5).status_code
            finally:
                slot.release()
            with guard:
                statuses[status] += 1

    time.sleep(max(0.0, spec["start_at"] - time.time()))
    threads = [threading.Thread(target=loop) for _ in range(spec["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cancelled = statuses.pop(0, 0)
    answer = {"sent": sum(statuses.values()), "cancelled": cancelled, "statuses": dict(statuses)}
    print(json.dumps(answer), flush=True)


def main() -> None:
    spec = json.loads(sys.argv[1])
    pacer = SharedPacer(
        spec["calls"], spec["seconds"], backend=_backend(spec), hold=spec.get("hold", 60.0)
    )
    if spec["mode"] == "calls":
        _calls(spec, pacer)
        return
    for _ in range(spec["calls"]):
        pacer.acquire(spec["key"], timeout=5.0)
    print(json.dumps({"held": time.time()}), flush=True)
    time.sleep(60)


if __name__ == "__main__":
    main()
