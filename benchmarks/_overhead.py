"""Scenario 2: requests/s through each peer's auth vs a fixed Authorization header.

genesys-token is measured through both of its adapters: ``GenesysAuth`` on a
``requests.Session`` (against the same session with a fixed header) and
``GenesysHTTPXAuth`` on an ``httpx.Client`` (against the same client with a fixed header).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _common import PEERS, Chart, Row, Section, fmt_num, median, print_header
from _peers import CALL_TIMEOUT, GenesysTokenPeer, Peer, Target, make_peer, pooled_session

PATH = "/api/v2/organizations/me"
HTTPX_REFERENCE = "httpx fixed header"
HTTPX_SUBJECT = "genesys-token (httpx)"
#: What GenesysAuth should keep of the fixed-header rate (reported, never asserted).
TARGET_RATIO = 0.97
WARMUP_CALLS = 30
#: Calls per timed block; blocks of all subjects alternate, and ratios pair them up.
BLOCK_CALLS = 100


def _elapsed(call: Callable[[], int], calls: int) -> float:
    """Seconds for ``calls`` sequential requests (any non-200 answer is an error)."""
    start = time.perf_counter()
    for _ in range(calls):
        if call() != 200:
            raise RuntimeError("the API call did not succeed")
    return time.perf_counter() - start


def _caller(peer: Peer, url: str) -> Callable[[], int]:
    return lambda: peer.call(url)


def run(target: Target, *, calls: int, repeats: int) -> Section:
    """Interleave every subject ``repeats`` times; report the median rate and the ratio."""
    url = target.api_url + PATH
    params = {
        "request": f"GET {PATH} on the emulator (its own process, loopback, keep-alive)",
        "calls": f"{fmt_num(calls)} per subject per repeat, in blocks of {BLOCK_CALLS} "
        "alternating between subjects",
        "repeats": f"{repeats}; req/s is the median over blocks, the ratio the median of "
        "per-block ratios to the fixed-header block next to it",
        "reference": "the same requests.Session as genesys-token, with a fixed header",
        "target": f"genesys-token >= {TARGET_RATIO} x reference (reported, not asserted)",
    }
    section = Section("2. Auth overhead: requests/s vs a fixed Authorization header", params)
    print_header(section.title, params)
    genesys = make_peer("genesys-token", target)
    assert isinstance(genesys, GenesysTokenPeer)
    from genesys_token import GenesysAuth

    shared = pooled_session()
    auth = GenesysAuth(genesys.manager)
    fixed = {"Authorization": f"Bearer {genesys.manager.get_token()}"}

    def with_header() -> int:
        return shared.get(url, headers=fixed, timeout=CALL_TIMEOUT).status_code

    def with_auth() -> int:
        return shared.get(url, auth=auth, timeout=CALL_TIMEOUT).status_code

    others = {name: make_peer(name, target) for name in PEERS if name != "genesys-token"}
    subjects: dict[str, Callable[[], int]] = {"reference": with_header, "genesys-token": with_auth}
    subjects.update({name: _caller(peer, url) for name, peer in others.items()})
    httpx_client = _httpx_subjects(subjects, genesys, url, fixed)
    times: dict[str, list[float]] = {name: [] for name in subjects}
    try:
        for call in subjects.values():
            _elapsed(call, WARMUP_CALLS)
        names = list(subjects)
        blocks = max(1, calls // BLOCK_CALLS)
        for turn in range(repeats * blocks):
            # Paired blocks, in an order that rotates: load from anything else on the
            # machine hits every subject alike, and each ratio compares neighbours in time.
            shift = turn % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_elapsed(subjects[name], min(calls, BLOCK_CALLS)))
    finally:
        shared.close()
        if httpx_client is not None:
            httpx_client.close()
        genesys.close()
        for peer in others.values():
            peer.close()
    block = min(calls, BLOCK_CALLS)
    rates = {name: median(block / t for t in values) for name, values in times.items()}
    ratios = {
        name: median(ref / t for ref, t in zip(times[_reference_of(name)], values, strict=True))
        for name, values in times.items()
    }
    _report(section, rates, ratios)
    return section


def _reference_of(name: str) -> str:
    return HTTPX_REFERENCE if name in (HTTPX_REFERENCE, HTTPX_SUBJECT) else "reference"


def _httpx_subjects(
    subjects: dict[str, Callable[[], int]],
    genesys: GenesysTokenPeer,
    url: str,
    fixed: dict[str, str],
) -> Any:
    """Add the httpx pair to ``subjects``; returns the client to close (None without httpx)."""
    try:
        import httpx

        from genesys_token.integrations.httpx import GenesysHTTPXAuth
    except ImportError:
        print("   httpx is not installed: the httpx adapter is left out")
        return None
    client = httpx.Client(timeout=CALL_TIMEOUT)
    auth = GenesysHTTPXAuth(genesys.manager)
    subjects[HTTPX_REFERENCE] = lambda: client.get(url, headers=fixed).status_code
    subjects[HTTPX_SUBJECT] = lambda: client.get(url, auth=auth).status_code
    return client


def _report(section: Section, medians: dict[str, float], ratios: dict[str, float]) -> None:
    print(f"   {'':<16}{'req/s':>10}{'x fixed header':>16}")
    cells = {}
    for name in ("reference", *PEERS):
        label = "fixed header" if name == "reference" else name
        value = medians[name]
        print(f"   {label:<16}{value:>10,.0f}{ratios[name]:>16.3f}")
        cells[name] = (
            f"fixed header: {value:,.0f}"
            if name == "reference"
            else f"{value:,.0f} ({ratios[name]:.3f}x)"
        )
    got = ratios["genesys-token"]
    verdict = "meets" if got >= TARGET_RATIO else "misses"
    note = f"genesys-token keeps {got:.3f} of the fixed-header rate ({verdict} >= {TARGET_RATIO})"
    print(f"   {note}")
    section.notes.append(note)
    section.rows.append(Row(section.title, "requests/s, 1 thread (x fixed header)", cells))
    if HTTPX_SUBJECT in medians:
        _report_httpx(section, medians, ratios)
    section.charts.append(
        Chart(
            "Auth overhead (requests/s, higher is better)",
            ["fixed header" if n == "reference" else n for n in ("reference", *PEERS)],
            [medians[n] for n in ("reference", *PEERS)],
            ylabel="requests/s",
        )
    )


def _report_httpx(section: Section, medians: dict[str, float], ratios: dict[str, float]) -> None:
    reference, subject = medians[HTTPX_REFERENCE], medians[HTTPX_SUBJECT]
    got = ratios[HTTPX_SUBJECT]
    print(f"   {'httpx header':<16}{reference:>10,.0f}{1.0:>16.3f}")
    print(f"   {'httpx + auth':<16}{subject:>10,.0f}{got:>16.3f}")
    verdict = "meets" if got >= TARGET_RATIO else "misses"
    note = (
        f"GenesysHTTPXAuth keeps {got:.3f} of httpx's fixed-header rate "
        f"({verdict} >= {TARGET_RATIO})"
    )
    print(f"   {note}")
    section.notes.append(note)
    cells = {
        "genesys-token": f"{subject:,.0f} ({got:.3f}x)",
        "reference": f"httpx fixed header: {reference:,.0f}",
    }
    section.rows.append(Row(section.title, "httpx requests/s, 1 thread (x fixed header)", cells))
