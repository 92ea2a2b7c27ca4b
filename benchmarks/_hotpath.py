"""Scenario 1: the hot path, ``get_token()`` with a valid token, against a floor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from _common import PEERS, Chart, Row, Section, fmt_num, median, print_header, ratio
from _peers import Target, make_peer

THREADS = 8


def make_floor() -> Callable[[], str]:
    """The least any token getter can do: compare the clock with an expiry, return a str."""
    expiry = time.monotonic() + 3600.0
    token = "x" * 128

    def floor() -> str:
        if time.monotonic() < expiry:
            return token
        raise RuntimeError("the floor's token expired")

    return floor


def _loop(fn: Callable[[], str], calls: int) -> None:
    for _ in range(calls):
        fn()


def ns_single(fn: Callable[[], str], calls: int) -> float:
    """Nanoseconds per call, one thread."""
    start = time.perf_counter_ns()
    _loop(fn, calls)
    return (time.perf_counter_ns() - start) / calls


def ns_threads(fn: Callable[[], str], calls: int, threads: int = THREADS) -> float:
    """Wall nanoseconds per call with ``threads`` threads sharing ``calls`` calls."""
    each = max(1, calls // threads)
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        _loop(fn, each)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for thread in pool:
        thread.join(120)
    return (time.perf_counter_ns() - start) / (each * threads)


def run(target: Target, *, calls: int, repeats: int) -> Section:
    """Measure every peer's valid-token path and the floor, interleaved, ``repeats`` times."""
    params = {
        "calls per measurement": fmt_num(calls),
        "repeats (median reported)": repeats,
        "threads": f"1 and {THREADS} (8 threads: wall time / total calls)",
        "floor": "a function comparing time.monotonic() with an expiry, returning a str",
        "token": "long-lived (86,399 s): every call finds a valid token",
    }
    section = Section("1. Hot path: get_token() with a valid token", params)
    print_header(section.title, params)
    peers = {name: make_peer(name, target) for name in PEERS}
    subjects: dict[str, Callable[[], str]] = {"reference": make_floor()}
    for name, peer in peers.items():
        peer.get_token()  # the one token request; every measured call is a hit
        subjects[name] = peer.get_token
    single: dict[str, list[float]] = {name: [] for name in subjects}
    multi: dict[str, list[float]] = {name: [] for name in subjects}
    try:
        for fn in subjects.values():
            _loop(fn, max(1, calls // 10))  # warm caches and specialise the bytecode
        for _ in range(repeats):
            for name, fn in subjects.items():
                single[name].append(ns_single(fn, calls))
                multi[name].append(ns_threads(fn, calls))
    finally:
        for peer in peers.values():
            peer.close()
    one = {name: median(v) for name, v in single.items()}
    eight = {name: median(v) for name, v in multi.items()}
    _report(section, one, eight)
    return section


def _report(section: Section, one: dict[str, float], eight: dict[str, float]) -> None:
    floor1, floor8 = one["reference"], eight["reference"]
    print(f"   {'':<16}{'ns/call 1t':>12}{'x floor':>9}{'ns/call 8t':>12}{'x floor':>9}")
    for name in one:
        label = "floor" if name == "reference" else name
        print(
            f"   {label:<16}{one[name]:>12,.0f}{ratio(one[name], floor1):>9.1f}"
            f"{eight[name]:>12,.0f}{ratio(eight[name], floor8):>9.1f}"
        )
    section.rows.append(
        Row(section.title, "ns per call, 1 thread (x floor)", _cells(one, floor1, "floor"))
    )
    section.rows.append(
        Row(
            section.title,
            f"ns per call, {THREADS} threads (x floor)",
            _cells(eight, floor8, "floor"),
        )
    )
    section.charts.append(
        Chart(
            "Hot path, 1 thread (ns/call, lower is better)",
            ["floor" if n == "reference" else n for n in one],
            list(one.values()),
            log=True,
            ylabel="ns per call",
        )
    )


def _cells(values: dict[str, float], reference: float, ref_label: str) -> dict[str, str]:
    cells = {}
    for name, value in values.items():
        if name == "reference":
            cells[name] = f"{ref_label}: {value:,.0f}"
        else:
            cells[name] = f"{value:,.0f} ({ratio(value, reference):.1f}x)"
    return cells
