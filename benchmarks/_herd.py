"""Scenario 3: a cold-start herd; N threads need a token at the same moment."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from _common import PEERS, Chart, Row, Section, fmt_num, median, print_header
from _peers import Target, make_peer
from _servers import EmulatorProcess

#: How long one herd may take before its stragglers are abandoned (reported as such).
HERD_TIMEOUT = 120.0
#: A peer whose first herd takes longer than this runs once: its herd is serial (one token
#: request after another), so repeats change nothing but the length of ``make bench``.
SLOW_HERD_MS = 5000.0


@dataclass
class HerdRun:
    """One herd: token requests the server saw, wall time until the last token, errors."""

    token_requests: int
    wall_ms: float
    errors: int
    distinct_tokens: int
    unfinished: int
    error_kinds: dict[str, int] = field(default_factory=dict)


def one_herd(emulator: EmulatorProcess, target: Target, peer_name: str, threads: int) -> HerdRun:
    """Release ``threads`` threads at once on a fresh, token-less peer."""
    emulator.reset()
    peer = make_peer(peer_name, target)
    barrier = threading.Barrier(threads + 1)
    done = [0.0] * threads
    tokens: list[str | None] = [None] * threads
    kinds: dict[str, int] = {}
    lock = threading.Lock()

    def worker(index: int) -> None:
        barrier.wait()
        try:
            tokens[index] = peer.get_token()
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the herd
            with lock:
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
        done[index] = time.perf_counter()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    deadline = start + HERD_TIMEOUT
    for thread in pool:
        thread.join(max(0.0, deadline - time.perf_counter()))
    unfinished = sum(thread.is_alive() for thread in pool)
    wall = (max(done) - start) * 1000
    requests = emulator.token_requests
    peer.close()
    return HerdRun(
        token_requests=requests,
        wall_ms=wall,
        errors=sum(kinds.values()),
        distinct_tokens=len({t for t in tokens if t is not None}),
        unfinished=unfinished,
        error_kinds=kinds,
    )


def run(
    emulator: EmulatorProcess, target: Target, *, threads: int, repeats: int, latency: float
) -> Section:
    """Run each peer's herd ``repeats`` times; report median token requests and wall time."""
    params = {
        "threads": threads,
        "repeats (median reported)": repeats,
        "token endpoint latency": f"{latency * 1000:.0f} ms added by the emulator to every "
        "token request (a real Genesys round trip is slower, which favours the peers "
        "without single-flight)",
        "set-up": "each peer fresh (no token), one shared instance, all threads released "
        "by one barrier; authlib: fetch_token() when session.token is missing or expired",
        "ideal": "1 token request",
    }
    section = Section(f"3. Cold-start herd: {threads} threads need a token at once", params)
    print_header(section.title, params)
    emulator.token_latency(latency)
    results: dict[str, list[HerdRun]] = {name: [] for name in PEERS}
    try:
        for turn in range(repeats):
            for name in PEERS:
                runs = results[name]
                if turn and runs[0].wall_ms > SLOW_HERD_MS:
                    continue
                runs.append(one_herd(emulator, target, name, threads))
    finally:
        emulator.token_latency(0.0)
    _report(section, results)
    return section


def _report(section: Section, results: dict[str, list[HerdRun]]) -> None:
    print(f"   {'':<16}{'token requests':>16}{'wall ms':>10}{'errors':>8}  per repeat")
    requests, walls, cells_req, cells_wall = {}, {}, {}, {}
    for name, runs in results.items():
        counts = [r.token_requests for r in runs]
        requests[name] = median(counts)
        walls[name] = median(r.wall_ms for r in runs)
        errors = sum(r.errors for r in runs)
        unfinished = sum(r.unfinished for r in runs)
        print(
            f"   {name:<16}{requests[name]:>16,.0f}{walls[name]:>10,.0f}{errors:>8}  "
            + ", ".join(f"{c:,}" for c in counts)
        )
        spread = f" ({min(counts):,}-{max(counts):,})" if min(counts) != max(counts) else ""
        extra = f", {errors} errors" if errors else ""
        extra += f", {unfinished} unfinished" if unfinished else ""
        cells_req[name] = f"{fmt_num(requests[name])}{spread}{extra}"
        cells_wall[name] = fmt_num(walls[name])
        kinds: dict[str, int] = {}
        for r in runs:
            for kind, count in r.error_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        if kinds:
            section.notes.append(f"{name} herd errors over all repeats: {kinds}")
        if len(runs) == 1 and runs[0].wall_ms > SLOW_HERD_MS:
            section.notes.append(
                f"{name}: run once, not repeated (one herd took {runs[0].wall_ms / 1000:.1f} s "
                f"> {SLOW_HERD_MS / 1000:g} s; its token requests are serial)"
            )
    cells_req["reference"] = "ideal: 1"
    cells_wall["reference"] = ""
    section.rows.append(Row(section.title, "token requests, median (min-max)", cells_req))
    section.rows.append(Row(section.title, "ms until every thread has a token", cells_wall))
    section.charts.append(
        Chart(
            "Cold-start herd: token requests (lower is better)",
            list(requests),
            list(requests.values()),
            log=True,
            ylabel="token requests",
        )
    )
