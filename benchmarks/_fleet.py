"""Scenario 5: a fleet of processes, with FileStore / RedisStore vs no shared store.

The measurement itself lives in ``bench_fleet.py`` (``run(processes, lifetimes) -> dict``);
this module only calls it and turns its answer into rows of the table.
"""

from __future__ import annotations

import importlib
import shutil
from typing import Any

from _common import Chart, Row, Section, print_header

LABELS = {"none": "no store", "file": "FileStore", "redis": "RedisStore"}


def _fleet_module() -> Any:
    try:
        return importlib.import_module("bench_fleet")
    except ImportError:
        return importlib.import_module("fleet_fallback")


def run(*, processes: int, lifetimes: int) -> Section:
    """Run the fleet benchmark and report token requests per store."""
    module = _fleet_module()
    params: dict[str, Any] = {
        "processes": processes,
        "token lifetimes": lifetimes,
        "implementation": f"benchmarks/{module.__name__}.py",
        "redis-server": shutil.which("redis-server") or "not installed (Redis row skipped)",
    }
    title = "5. Fleet: token requests from N processes sharing (or not) a store"
    print_header(title, params)
    result: dict[str, Any] = module.run(processes=processes, lifetimes=lifetimes)
    section = Section(title, params)
    if "token_ttl" in result:
        section.params["token lifetime"] = f"{result['token_ttl']:g} s"
    requests: dict[str, int | None] = dict(result.get("requests", {}))
    if not requests:  # an answer of another shape: show it as it is rather than drop it
        cells = {"genesys-token": ", ".join(f"{k}={v}" for k, v in result.items())}
        section.rows.append(Row(section.title, "result", cells))
    for kind, count in requests.items():
        label = LABELS.get(kind, kind)
        if kind == "none":
            continue
        value = "skipped: no redis-server" if count is None else f"{count:,}"
        cells = {"genesys-token": value, "reference": f"no store: {requests.get('none')}"}
        section.rows.append(
            Row(section.title, f"token requests, {processes} processes, {label}", cells)
        )
        if count is None:
            section.notes.append(f"{label} row skipped: redis-server is not installed")
    section.notes.append(
        "ideal with a shared store: the whole fleet needs about as many token requests as "
        "one process alone (the no-store count divided by the process count)"
    )
    shown = {LABELS.get(k, k): float(v) for k, v in requests.items() if v is not None}
    section.charts.append(
        Chart(
            f"Fleet of {processes}: token requests (lower is better)",
            list(shown),
            list(shown.values()),
            ylabel="token requests",
        )
    )
    return section
