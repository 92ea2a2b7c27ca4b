"""Scenario 8: throughput under Genesys' per-token API limit, with and without pacing.

Genesys allows each client-credentials token 300 API calls a minute and answers 429 past
that. The emulator enforces the same rule (``api_rate_limit``), time-scaled: LIMIT calls per
WINDOW seconds. Each case runs THREADS callers flat out through ``api_session`` (which waits
out a 429's ``Retry-After`` and retries) for SECONDS and reports the calls answered 200 a
second against the limit's LIMIT / WINDOW, and the 429s the emulator sent:

* one process, one token, paced at the limit (``api_rate_limit``);
* the same load without pacing (what the 429s cost: the headline ratio);
* ``api_rate_wait=0.5`` with no room: how long until ``RateLimitedError`` and what was sent;
* three tokens of one client in one process (``tokens=3``): three times the calls;
* a fleet of processes sharing one token through a FileStore, then a RedisStore, and two
  tokens (``tokens=2``) through each;
* the cost of pacing per call when there is room (``benchmarks/pacing.py``), and the Redis
  commands per paced call across processes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Chart, Row, Section, print_header
from _servers import EmulatorProcess
from bench_fleet import run_together

#: The per-token limit, time-scaled from Genesys' 300 per 60 s.
LIMIT, WINDOW = 10, 1.0
THREADS = 8
PROCESSES = 3
PATH = "/api/v2/organizations/me"
HERE = Path(__file__).resolve().parent

_CALLER = """
import json, os, sys, threading, time
from genesys_token import TokenManager, api_session
from genesys_token.errors import GenesysTokenError
kind, location, token_url, api_url, seconds, threads, paced, tokens = sys.argv[1:9]
limit, window = json.loads(os.environ["BENCH_LIMIT"])
store = None
if kind == "file":
    from genesys_token.stores import FileStore
    store = FileStore(location)
elif kind == "redis":
    from genesys_token.stores import RedisStore
    store = RedisStore.from_url(location)
pacing = {"api_rate_limit": (limit, window)} if paced == "1" else {}
if tokens != "1":
    pacing["tokens"] = int(tokens)
manager = TokenManager(os.environ["BENCH_CLIENT_ID"], os.environ["BENCH_CLIENT_SECRET"],
                       token_url=token_url, api_base_url=api_url, store=store, **pacing)
for _ in range(int(tokens)):
    manager.get_token()  # one per token: round-robin
print("ready", flush=True)
sys.stdin.readline()
ok, failed, lock = [0], [0], threading.Lock()
end = time.monotonic() + float(seconds)
def caller():
    with api_session(manager, max_retries=20) as session:
        while time.monotonic() < end:
            try:
                status = session.get(os.environ["BENCH_PATH"]).status_code
            except (GenesysTokenError, OSError):
                status = 0
            with lock:
                if status != 200:
                    failed[0] += 1
                elif time.monotonic() <= end:  # answered within the measured seconds
                    ok[0] += 1
workers = [threading.Thread(target=caller) for _ in range(int(threads))]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({"ok": ok[0], "failed": failed[0], "seconds": float(seconds),
                  "pacing": manager.metrics().get("pacing", {})}), flush=True)
manager.close()
"""


def _fleet(
    emulator: EmulatorProcess,
    kind: str,
    location: str,
    *,
    processes: int,
    seconds: float,
    paced: bool,
    tokens: int = 1,
) -> dict[str, Any]:
    """Run ``processes`` callers at once, each with ``tokens`` tokens of the client; their
    200s, failures, the emulator's 429s and token requests."""
    env = dict(
        os.environ,
        BENCH_CLIENT_ID=emulator.client_id,
        BENCH_CLIENT_SECRET=emulator.client_secret,
        BENCH_LIMIT=json.dumps([LIMIT, WINDOW]),
        BENCH_PATH=PATH,
        PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    )
    argv = [sys.executable, "-c", _CALLER, kind, location, emulator.token_url, emulator.url,
            str(seconds), str(THREADS), "1" if paced else "0", str(tokens)]  # fmt: skip
    emulator.reset()
    outputs = run_together(argv, env, processes, seconds + 60.0)
    answers = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    statuses = emulator.api_statuses()
    took = max(answer["seconds"] for answer in answers)
    ok = sum(answer["ok"] for answer in answers)
    # The most a sliding limit lets through in `took` seconds: LIMIT per token in each window
    # begun (the first window's calls all go at once). Calls answered after the seconds are
    # over (callers still in line at the end) are not counted.
    allowed = tokens * LIMIT * math.ceil(took / WINDOW - 1e-9)
    return {
        "ok": ok,
        "allowed": allowed,
        "failed": sum(answer["failed"] for answer in answers),
        "rate": ok / took,
        "share": ok / allowed,
        "429s": statuses.get(429, 0),
        "token_requests": emulator.token_requests,  # reset before the processes started
        "waited": sum(answer["pacing"].get("calls_waited", 0) for answer in answers),
        "paced": sum(answer["pacing"].get("calls_paced", 0) for answer in answers),
    }


def _no_room(emulator: EmulatorProcess) -> dict[str, Any]:
    """``api_rate_wait=0.5`` when every slot is taken: seconds until the error, calls sent."""
    from genesys_token import TokenManager, api_session
    from genesys_token.errors import RateLimitedError

    emulator.reset()
    manager = TokenManager(
        emulator.client_id, emulator.client_secret, token_url=emulator.token_url,
        api_base_url=emulator.url, api_rate_limit=(LIMIT, WINDOW * 30), api_rate_wait=0.5,
    )  # fmt: skip
    try:
        with api_session(manager) as session:
            for _ in range(LIMIT):
                session.get(PATH)
            sent = sum(emulator.api_statuses().values())
            began = time.monotonic()
            try:
                session.get(PATH)
                error = "none"
            except RateLimitedError as exc:
                error = type(exc).__name__
            took = time.monotonic() - began
            return {
                "seconds": took,
                "error": error,
                "sent": sum(emulator.api_statuses().values()) - sent,
            }
    finally:
        manager.close()


def _pacing_cost() -> dict[str, float]:
    """``benchmarks/pacing.py``: a counted call with and without a slot, medians in us."""
    out = subprocess.run(
        [sys.executable, str(HERE / "pacing.py")], capture_output=True, text=True,
        check=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(HERE.parent)),
    ).stdout  # fmt: skip
    figures: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("counted call without pacing:"):
            figures["base"] = float(line.split(":")[1].split()[0])
        elif line.startswith("counted call with pacing:"):
            figures["paced"] = float(line.split(":")[1].split()[0])
    return figures


def _row(section: Section, measure: str, value: str, reference: str = "") -> None:
    cells = {"genesys-token": value}
    if reference:
        cells["reference"] = reference
    section.rows.append(Row(section.title, measure, cells))


def _case(result: dict[str, Any]) -> str:
    return (
        f"{result['ok']} calls answered 200 of the {result['allowed']} the limit allows "
        f"({result['share']:.0%}), {result['429s']} 429s, {result['failed']} failed"
    )


def _script_calls(url: str) -> int:
    """Scripts Redis ran (EVAL and EVALSHA), from INFO commandstats."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    )


def run(*, seconds: float = 4.0, quick: bool = False) -> Section:
    """Measure throughput against the emulator's per-token limit with and without pacing."""
    from bench_fleet import local_redis

    title = "8. Throughput: API calls per token under Genesys' per-token limit"
    params: dict[str, Any] = {
        "limit": f"{LIMIT} calls per {WINDOW:g} s per token (time-scaled 300 / 60 s)",
        "callers": f"{THREADS} threads per process, api_session (retries 429s)",
        "seconds per case": seconds,
        "fleet processes": PROCESSES,
    }
    print_header(title, params)
    section = Section(title, params)
    rates: dict[str, float] = {}
    with EmulatorProcess(token_format="jwt", api_rate_limit=(LIMIT, WINDOW)) as emulator:
        paced = _fleet(emulator, "none", "", processes=1, seconds=seconds, paced=True)
        unpaced = _fleet(emulator, "none", "", processes=1, seconds=seconds, paced=False)
        _row(section, "1 process, 1 token, paced", _case(paced), f"limit {LIMIT / WINDOW:g}/s")
        _row(section, "1 process, 1 token, not paced", _case(unpaced))
        rates["paced"], rates["not paced"] = paced["rate"], unpaced["rate"]
        if paced["rate"]:
            _row(
                section,
                "not paced / paced, calls answered 200 a second",
                f"{unpaced['rate'] / paced['rate']:.2f}x",
                f"{unpaced['429s']} 429s vs {paced['429s']}",
            )
        three = _fleet(emulator, "none", "", processes=1, seconds=seconds, paced=True, tokens=3)
        _row(
            section,
            "1 process, 3 tokens (tokens=3), paced",
            _case(three),
            f"{three['token_requests']} token requests",
        )
        rates["3 tokens"] = three["rate"]
        no_room = _no_room(emulator)
        _row(
            section,
            "api_rate_wait=0.5 s, no room",
            f"{no_room['error']} after {no_room['seconds']:.3f} s, {no_room['sent']} sent",
        )
        with tempfile.TemporaryDirectory() as tmp:
            kinds: list[tuple[str, str | None]] = [("file", tmp)]
            with local_redis() as url:
                kinds.append(("redis", url))
                for kind, location in kinds:
                    label = f"{PROCESSES} processes, 1 token, {kind.title()}Store, paced"
                    if location is None or quick:
                        _row(section, label, "skipped" + (" (--quick)" if quick else ""))
                        continue
                    scripts = _script_calls(location) if kind == "redis" else 0
                    fleet = _fleet(
                        emulator, kind, location, processes=PROCESSES, seconds=seconds,
                        paced=True,
                    )  # fmt: skip
                    _row(section, label, _case(fleet), f"{fleet['token_requests']} token requests")
                    if kind == "redis":
                        per_call = (_script_calls(location) - scripts) / max(1, fleet["paced"])
                        _row(section, "Redis scripts per paced call (fleet)", f"{per_call:.2f}")
                    rates[f"fleet {kind}"] = fleet["rate"]
                    # A fresh store: the one-token run's token must not count as lane 0's.
                    fresh = os.path.join(location, "two") if kind == "file" else location[:-1] + "1"
                    two = _fleet(
                        emulator, kind, fresh, processes=PROCESSES, seconds=seconds,
                        paced=True, tokens=2,
                    )  # fmt: skip
                    _row(
                        section,
                        f"{PROCESSES} processes, 2 tokens (tokens=2), {kind.title()}Store, paced",
                        _case(two),
                        f"{two['token_requests']} token requests",
                    )
                    rates[f"fleet {kind}, 2 tokens"] = two["rate"]
    cost = {} if quick else _pacing_cost()
    if cost:
        _row(
            section,
            "a counted call, room available: without / with pacing",
            f"{cost['paced']:.2f} us (+{cost['paced'] - cost['base']:.2f} us)",
            f"{cost['base']:.2f} us",
        )
    section.notes.append(
        "a paced token is held from a call's grant until its answer, then for a window: it "
        "makes calls / (window + round trip) a second at most, never a 429 on its own"
    )
    section.charts.append(
        Chart(
            f"Throughput: 200s per second (limit {LIMIT / WINDOW:g}/s)",
            list(rates),
            list(rates.values()),
            ylabel="calls/s",
        )
    )
    return section


if __name__ == "__main__":
    print(run(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 4.0))
