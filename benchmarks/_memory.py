"""Scenario 6: resident memory after many refreshes vs after the first thousand.

Each peer runs in a fresh child process (so memory one peer freed cannot hide another's
growth) against a minimal token server that answers at once in its own process.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

from _common import PEERS, Chart, Row, Section, fmt_num, print_header
from _peers import SEED_SCOPES, Target, make_peer
from _servers import MinimalTokenServer, static_jwt

CLIENT_ID = "bench-memory-client"
CHILD_TIMEOUT = 180.0
#: RSS moves in 4 KiB pages and the allocator keeps slack: growth up to this is not projected.
NOISE_BYTES = 16 * 1024


def _refresher(name: str, target: Target) -> tuple[Any, Any]:
    """A callable forcing one token request through the peer, and the peer."""
    if name == "genesys-token":
        from genesys_token import TokenManager

        manager = TokenManager(
            target.client_id,
            target.client_secret,
            token_url=target.token_url,
            api_base_url="http://127.0.0.1:9",
            background_refresh=False,
        )
        return (lambda: manager.refresh(force=True)), manager
    peer = make_peer(name, target)
    if name == "authlib":
        session = peer.session  # type: ignore[attr-defined]
        return (
            lambda: session.fetch_token(target.token_url, grant_type="client_credentials")
        ), peer
    if name == "requests-auth":
        auth, cache = peer.auth, peer._cache  # type: ignore[attr-defined]

        def once() -> None:
            state, token, expires_in = auth.request_new_token()
            cache._add_access_token(state, token, expires_in)

        return once, peer
    return peer.manager.execute_refresh, peer  # type: ignore[attr-defined]


def _child(
    conn: Connection, name: str, target: Target, warm: int, goal: int, budget: float
) -> None:
    import sys

    import psutil

    sys.setswitchinterval(0.005)
    refresh, holder = _refresher(name, target)
    process = psutil.Process()
    start = time.perf_counter()
    for _ in range(warm):
        refresh()
    rate = warm / (time.perf_counter() - start)
    total = max(warm * 2, min(goal, int(warm + rate * budget)))
    gc.collect()
    rss_warm = process.memory_info().rss
    for _ in range(total - warm):
        refresh()
    gc.collect()
    rss_end = process.memory_info().rss
    extra = {}
    if name == "seed port":
        extra["latency entries"] = len(holder.manager.metrics.acquisition_latency)
    conn.send({"rate": rate, "total": total, "rss_warm": rss_warm, "rss_end": rss_end, **extra})


def measure(name: str, target: Target, warm: int, goal: int, budget: float) -> dict[str, Any]:
    """Run one peer's refresh loop in a spawned child and return its numbers."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_child, args=(child, name, target, warm, goal, budget), daemon=True
    )
    process.start()
    try:
        if not parent.poll(CHILD_TIMEOUT):
            raise RuntimeError(f"memory run of {name} did not finish in time")
        result: dict[str, Any] = parent.recv()
        return result
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def run(*, warm: int, goal: int, budget: float) -> Section:
    """RSS after ``warm`` refreshes vs after up to ``goal``, for every peer."""
    params = {
        "refreshes": f"RSS after {fmt_num(warm)} vs after up to {fmt_num(goal)} forced refreshes",
        "time budget per peer": f"{budget:g} s: the refresh rate is measured over the first "
        f"{fmt_num(warm)} and the total scaled down to fit (printed per peer)",
        "server": "a minimal token endpoint in its own process answering at once (same JWT)",
        "genesys-token": "background_refresh=False, refresh(force=True) in a loop",
        "peers": "authlib fetch_token(); requests-auth request_new_token() + cache insert; "
        "seed port execute_refresh()",
        "isolation": "each peer in a fresh spawned process; RSS read after gc.collect()",
        "projection": f"growth per refresh x {fmt_num(goal)} when the run was scaled down; "
        f"growth up to {NOISE_BYTES // 1024} KiB is page noise and not projected",
    }
    section = Section("6. Memory: RSS growth over many refreshes", params)
    print_header(section.title, params)
    token = static_jwt(CLIENT_ID, " ".join(SEED_SCOPES))
    results: dict[str, dict[str, Any]] = {}
    with MinimalTokenServer(token) as server:
        target = Target(server.token_url, "http://127.0.0.1:9", CLIENT_ID, "memory-secret")
        for name in PEERS:
            results[name] = measure(name, target, warm, goal, budget)
    _report(section, results, warm, goal)
    return section


def _report(section: Section, results: dict[str, dict[str, Any]], warm: int, goal: int) -> None:
    print(
        f"   {'':<16}{'refreshes':>10}{'rate/s':>8}{'RSS@warm MiB':>14}{'RSS@end MiB':>13}"
        f"{'growth KiB':>12}{'B/refresh':>11}{f'at {goal:,} KiB':>16}"
    )
    cells, growth = {}, {}
    for name, r in results.items():
        grown = r["rss_end"] - r["rss_warm"]
        per = grown / max(1, r["total"] - warm)
        growth[name] = grown / 1024
        print(
            f"   {name:<16}{r['total']:>10,}{r['rate']:>8,.0f}{r['rss_warm'] / 2**20:>14.1f}"
            f"{r['rss_end'] / 2**20:>13.1f}{grown / 1024:>12,.0f}{per:>11.1f}"
            f"{per * (goal - warm) / 1024:>16,.0f}"
        )
        measured = f"+{grown / 1024:,.0f} over {r['total'] - warm:,}"
        if grown <= NOISE_BYTES:
            cells[name] = f"~0 ({measured}: page noise)"
        else:
            cells[name] = f"~{per * (goal - warm) / 1024:,.0f} ({measured})"
        if r["total"] < goal:
            section.notes.append(
                f"{name}: scaled down to {r['total']:,} refreshes from {goal:,} "
                f"(measured {r['rate']:,.0f} refreshes/s)"
            )
        if "latency entries" in r:
            section.notes.append(
                f"seed port keeps {r['latency entries']:,} latency entries (one per refresh)"
            )
    cells["reference"] = "ideal: ~0"
    measure = f"RSS growth in KiB, projected to {goal:,} refreshes (measured)"
    section.rows.append(Row(section.title, measure, cells))
    section.charts.append(
        Chart(
            "Memory growth after warm-up (KiB, lower is better)",
            list(growth),
            list(growth.values()),
            ylabel="KiB",
        )
    )
