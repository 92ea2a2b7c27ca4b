"""Scenario 4: rotation under load; threads keep calling the API while 2 s tokens expire.

Then, for the peers that can rotate, the latency of calls started during a rotation with one
long call in flight (``_rotation_latency``), next to the p99 before it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import _rotation_latency as latency_part
from _common import (
    PEERS,
    THREAD_ERRORS,
    Chart,
    Row,
    Section,
    join_all,
    median,
    print_header,
)
from _peers import Target, make_peer
from _rotation_latency import LatencyRun, percentile
from _servers import EmulatorProcess

PATH = "/api/v2/organizations/me"
#: Peers that have a rotation of their own; it runs once, halfway through.
ROTATES = {"genesys-token": "manager.rotate()", "seed port": "drain_connections()"}


@dataclass
class LoadRun:
    """What one peer's run produced."""

    calls: int
    ok: int
    failed: int
    client_401: int
    server_401: int
    token_requests: int
    thread_errors: int
    rotation: str


def one_run(
    emulator: EmulatorProcess, target: Target, name: str, threads: int, seconds: float
) -> LoadRun:
    """Load the API through one peer for ``seconds``; rotate halfway if the peer can."""
    emulator.reset()
    THREAD_ERRORS.take()
    peer = make_peer(name, target)
    peer.get_token()
    url = target.api_url + PATH
    stop = threading.Event()
    statuses: list[Counter[int]] = [Counter() for _ in range(threads)]

    def worker(index: int) -> None:
        counts = statuses[index]
        while not stop.is_set():
            try:
                counts[peer.call(url)] += 1
            except Exception:  # noqa: BLE001 - a failed call is the measurement
                counts[-1] += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    rotation = _rotate_midway(peer, name, seconds, stop)
    stop.set()
    join_all(pool, 30.0)
    if rotation.is_alive():
        rotation.join(2.0)
    rotated = getattr(rotation, "outcome", "none (no rotation API)")
    if rotation.is_alive():
        rotated = "never finished: waited for in-flight calls without bound"
    total: Counter[int] = Counter()
    for counts in statuses:
        total.update(counts)
    server = emulator.api_statuses()
    result = LoadRun(
        calls=sum(total.values()),
        ok=total[200],
        failed=sum(count for status, count in total.items() if status != 200),
        client_401=total[401],
        server_401=server.get(401, 0),
        token_requests=emulator.token_requests,
        thread_errors=THREAD_ERRORS.take(),
        rotation=rotated,
    )
    peer.close()
    return result


def _rotate_midway(
    peer: object, name: str, seconds: float, stop: threading.Event
) -> threading.Thread:
    """Sleep half the run, start the peer's rotation in a thread, sleep the other half."""

    class Rotation(threading.Thread):
        outcome = "none (no rotation API)"

        def run(self) -> None:
            started = time.perf_counter()
            try:
                peer.rotate()  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                self.outcome = f"failed: {type(exc).__name__}"
                return
            self.outcome = f"{ROTATES[name]} took {(time.perf_counter() - started) * 1000:,.0f} ms"

    rotation = Rotation(daemon=True, name="bench-rotation")
    stop.wait(seconds / 2)
    if name in ROTATES:
        rotation.start()
    stop.wait(seconds / 2)
    return rotation


def run(
    emulator: EmulatorProcess,
    target: Target,
    *,
    threads: int,
    seconds: float,
    ttl: float,
    latency: float,
    shortened: str,
) -> Section:
    """One run per peer; failures, 401s and token requests for each."""
    params = {
        "threads": threads,
        "duration per peer": f"{seconds:g} s{shortened}",
        "token lifetime": f"{ttl:g} s (emulator token_ttl), about {seconds / ttl:.0f} "
        "refreshes per run",
        "early refresh": f"{target.early:g} s before expiry for every peer "
        "(genesys-token: its own 25% cap of the lifetime, minus jitter)",
        "token endpoint latency": f"{latency * 1000:.0f} ms",
        "rotation midway": "genesys-token: manager.rotate(); seed port: drain_connections(); "
        "authlib and requests-auth have none (their normal refresh is the rotation)",
        "call": f"GET {PATH}; failed = exception or non-200 answer to the caller",
        "repeats": "1 (a long run; counts, not timings)",
        **latency_part.params(seconds, latency),
    }
    section = Section("4. Rotation under load", params)
    print_header(section.title, params)
    emulator.set("token_ttl", ttl)
    emulator.token_latency(latency)
    results: dict[str, LoadRun] = {}
    try:
        for name in PEERS:
            results[name] = one_run(emulator, target, name, threads, seconds)
        latencies = latency_part.run_all(emulator, target, seconds=seconds)
    finally:
        emulator.token_latency(0.0)  # also ends the long call's slow path
        emulator.set("token_ttl", 86399)
    _report(section, results, seconds)
    _report_latency(section, latencies, latency_part.lengths(seconds)[0])
    return section


def _report(section: Section, results: dict[str, LoadRun], seconds: float) -> None:
    print(
        f"   {'':<16}{'calls':>8}{'failed':>8}{'401 to caller':>15}{'401 sent':>10}"
        f"{'tok req':>9}{'calls/s':>9}  rotation"
    )
    for name, r in results.items():
        print(
            f"   {name:<16}{r.calls:>8,}{r.failed:>8,}{r.client_401:>15,}{r.server_401:>10,}"
            f"{r.token_requests:>9,}{r.calls / seconds:>9,.0f}  {r.rotation}"
        )
        if r.thread_errors:
            section.notes.append(
                f"{name}: {r.thread_errors} exception(s) escaped its own threads (timer)"
            )
        if name in ROTATES:
            section.notes.append(f"{name} rotation: {r.rotation}")
    rows: list[tuple[str, Callable[[LoadRun], str], str]] = [
        ("failed calls / calls", lambda r: f"{r.failed:,} / {r.calls:,}", "ideal: 0 failed"),
        (
            "401s to caller (401s the server sent)",
            lambda r: f"{r.client_401:,} ({r.server_401:,})",
            "ideal: 0",
        ),
        ("token requests", lambda r: f"{r.token_requests:,}", ""),
        ("calls/s, all threads", lambda r: f"{r.calls / seconds:,.0f}", ""),
    ]
    for measure, cell, reference in rows:
        cells = {name: cell(r) for name, r in results.items()}
        cells["reference"] = reference
        section.rows.append(Row(section.title, measure, cells))
    section.charts.append(
        Chart(
            "Rotation under load: token requests (lower is better)",
            [f"{name}\n{r.failed:,} failed, {r.client_401:,} x 401" for name, r in results.items()],
            [float(r.token_requests) for r in results.values()],
            log=True,
            ylabel="token requests",
        )
    )


def _ms(seconds: float) -> str:
    if seconds != seconds:  # NaN: no call in the window
        return "n/a"
    ms = seconds * 1000
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def _figures(run: LatencyRun) -> tuple[float, float, float, float]:
    """p99 before, p99 during, worst during and worst before, in seconds (NaN: no call)."""
    nan = float("nan")
    return (
        percentile(run.before, 0.99),
        percentile(run.during, 0.99),
        max(run.during, default=nan),
        max(run.before, default=nan),
    )


def _report_latency(section: Section, runs: dict[str, list[LatencyRun]], long_call: float) -> None:
    """Worst and p99 of the calls started during the rotation vs the p99 before it."""
    print(f"\n   calls started during a rotation, one {long_call:g} s call in flight (ms)")
    print(
        f"   {'':<16}{'p99 before':>11}{'p99 during':>11}{'worst during':>13}"
        f"{'worst/p99':>10}{'worst before':>13}{'calls before/during':>21}{'failed':>7}"
        "  rotation"
    )
    medians: dict[str, tuple[float, ...]] = {}
    for name, peer_runs in runs.items():
        per_run = [_figures(r) for r in peer_runs]
        for r, (p99_before, p99_during, worst, worst_before) in zip(
            peer_runs, per_run, strict=True
        ):
            calls = f"{len(r.before):,} / {len(r.during):,}"
            print(
                f"   {name:<16}{_ms(p99_before):>11}{_ms(p99_during):>11}{_ms(worst):>13}"
                f"{worst / p99_before:>9.1f}x{_ms(worst_before):>13}{calls:>21}{r.failed:>7}"
                f"  {r.rotation}"
            )
        medians[name] = tuple(median(f[i] for f in per_run) for i in range(4))
        worsts = ", ".join(_ms(f[2]) for f in per_run)
        section.notes.append(
            f"{name}, rotation with a {long_call:g} s call in flight ({len(peer_runs)} run(s)): "
            f"worst call started during it per run {worsts} ms; "
            + "; ".join(_run_note(r) for r in peer_runs)
        )
    label = f"calls during rotation, {long_call:g} s call in flight"
    gate_p99 = latency_part.GATE_P99_BEFORE_MS
    gate_worst = f"{latency_part.GATE_WORST_MS:,.0f} ({latency_part.GATE_WORST_MS / gate_p99:.0f}x)"
    rows: list[tuple[str, int, str]] = [
        (f"{label}: worst ms", 2, f"gate design: {gate_worst} (issue 12)"),
        (f"{label}: p99 ms", 1, ""),
        ("calls before that rotation: p99 ms", 0, f"gate design: {gate_p99:,.0f} (issue 12)"),
        ("calls before that rotation: worst ms", 3, "the machine's own tail, same length"),
    ]
    for measure, index, reference in rows:
        cells = {name: "no rotation API" if index == 2 else "" for name in PEERS}
        for name, values in medians.items():
            cells[name] = _ms(values[index])
            if index == 2:
                cells[name] += f" ({values[2] / values[0]:.1f}x p99 before)"
        cells["reference"] = reference
        section.rows.append(Row(section.title, measure, cells))
    bars = [(f"{name}\n{what}", values[i] * 1000)
            for name, values in medians.items()
            for what, i in (("p99 before", 0), ("worst during", 2))]  # fmt: skip
    section.charts.append(
        Chart(
            f"Calls started during a rotation, {long_call:g} s call in flight: ms",
            [label for label, _ in bars],
            [value if value == value else 0.0 for _, value in bars],
            log=True,
            ylabel="ms (lower is better)",
        )
    )


def _run_note(run: LatencyRun) -> str:
    note = f"{run.rotation}, the long call answered {run.long_call}, {run.failed} failed"
    if run.drain:
        drain = run.drain
        note += (
            f", drained {drain.get('drained')} of {drain.get('in_flight')} use(s) of the old "
            f"token in {drain.get('drain_seconds')} s"
        )
    return note
