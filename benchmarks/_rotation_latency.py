"""Scenario 4, second part: how long calls wait while a rotation runs with a long call in flight.

Issue 12's set-up: 8 threads call the API, one 3 s call (a report download) is in flight, then
the peer rotates. The figures are the worst and the p99 latency of the calls *started* during
the rotation, next to the p99 and the worst of the calls started in as long a window before
it, in the same run. genesys-token
rotates make-before-break (new calls get the new token at once; only the rotation waits for
the old token's last call); the seed port's ``drain_connections()`` makes every call started
while it drains sleep 500 ms in ``get_token()``. The gate design genesys-token had before
issue 12 held every such call until the 3 s call ended: 2,871 ms worst (quoted, not run).

Day-long tokens here, so no ordinary refresh falls inside the measured windows.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import THREAD_ERRORS, join_all, run_threads
from _peers import Target, make_peer
from _servers import EmulatorProcess

#: The peers with a rotation of their own, and what it is called.
ROTATING = {"genesys-token": "manager.rotate()", "seed port": "drain_connections()"}
#: Threads calling the API, as in issue 12's measurement.
THREADS = 8
#: A cheap call for the threads, and a path the emulator answers ``long_call`` seconds late.
SHORT_PATH = "/api/v2/organizations/me"
LONG_PATH = "/api/v2/echo/report-download"
#: The long call's length in a full run (issue 12: 3 s).
LONG_CALL_SECONDS = 3.0
#: Calls measured before the rotation, after the first calls of each thread (new
#: connections) have been left out: as long as the rotation, so that the worst call before
#: (the machine's own hiccups) compares with the worst call during it.
BEFORE_SECONDS = 3.0
SETTLE_SECONDS = 0.25
#: Time for the long call to be sent and counted before the rotation starts (loopback:
#: milliseconds; generous so the rotation always finds it in flight).
LONG_CALL_LEAD = 0.1
#: How long after the long call's end a rotation may still run before it is reported as
#: never finishing (the seed port's drain has no bound).
ROTATION_GRACE = 5.0
#: The gate design's figures quoted by issue 12 (8 threads, one 3 s call; not run here: that
#: design is gone), for the reference column.
GATE_WORST_MS = 2871.0
GATE_P99_BEFORE_MS = 53.0
#: Runs per peer at full length, interleaved; the median of each figure is reported (the
#: worst call of one run moves with whatever else the machine does at that moment).
REPEATS = 3
#: What this part adds to ``make bench`` in a full run, both peers and set-up included
#: (measured: ~35 s on 2 cores); run.py leaves it out of scenario 4's load runs' share.
COST_SECONDS = (
    REPEATS * 2 * (SETTLE_SECONDS + BEFORE_SECONDS + LONG_CALL_LEAD + LONG_CALL_SECONDS + 1.0)
)


@dataclass
class LatencyRun:
    """One peer's run: latencies in seconds, by when the call started."""

    before: list[float]
    during: list[float]
    failed: int
    long_call: str
    rotation: str
    drain: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def one_run(
    emulator: EmulatorProcess, target: Target, name: str, *, long_call: float, before: float
) -> LatencyRun:
    """Load the API with ``THREADS`` threads, send one long call, rotate; time every call."""
    emulator.reset()
    THREAD_ERRORS.take()
    peer = make_peer(name, target)
    drain: dict[str, Any] = {}
    if name == "genesys-token":
        from genesys_token.observability.events import TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT

        for event in (TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT):
            peer.manager.on(event, lambda record: drain.update(record["data"]))  # type: ignore[attr-defined]
    peer.get_token()
    stop = threading.Event()
    samples: list[list[tuple[float, float, int]]] = [[] for _ in range(THREADS)]
    short_url = target.api_url + SHORT_PATH

    def worker(index: int) -> None:
        out = samples[index]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = peer.call(short_url)
            except Exception:  # noqa: BLE001 - a failed call is the measurement
                status = -1
            out.append((started, time.perf_counter() - started, status))

    threads = run_threads(THREADS, worker)
    time.sleep(SETTLE_SECONDS)
    before_from = time.perf_counter()
    time.sleep(before)
    long_thread = _LongCall(peer, target.api_url + LONG_PATH)
    before_until = time.perf_counter()
    long_thread.start()
    time.sleep(LONG_CALL_LEAD)
    rotation = _Rotation(peer)
    rotation.start()
    rotation.join(long_call + ROTATION_GRACE)
    during_until = rotation.ended or time.perf_counter()
    stop.set()
    join_all([*threads, long_thread], long_call + 15.0)
    peer.close()
    calls = [sample for per_thread in samples for sample in per_thread]
    return LatencyRun(
        before=[took for at, took, _ in calls if before_from <= at < before_until],
        during=[took for at, took, _ in calls if rotation.started <= at <= during_until],
        failed=sum(status != 200 for _, _, status in calls) + THREAD_ERRORS.take(),
        long_call=long_thread.outcome,
        rotation=rotation.outcome(name),
        drain=drain,
    )


class _LongCall(threading.Thread):
    """The long call (a report download), through the peer like any other call."""

    def __init__(self, peer: Any, url: str) -> None:
        super().__init__(daemon=True, name="bench-long-call")
        self._peer = peer
        self._url = url
        self.outcome = "never answered"

    def run(self) -> None:
        started = time.perf_counter()
        try:
            status = self._peer.call(self._url)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            self.outcome = f"failed: {type(exc).__name__}"
            return
        self.outcome = f"{status} after {(time.perf_counter() - started) * 1000:,.0f} ms"


class _Rotation(threading.Thread):
    """The peer's rotation; ``ended`` stays None while it runs (or if it raised)."""

    def __init__(self, peer: Any) -> None:
        super().__init__(daemon=True, name="bench-rotation")
        self._peer = peer
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.error = ""

    def outcome(self, name: str) -> str:
        """What the rotation did, for the report."""
        if self.ended is None:
            return f"{ROTATING[name]} never finished: its drain waits without bound"
        took = f"{(self.ended - self.started) * 1000:,.0f} ms"
        if self.error:
            return f"{ROTATING[name]} failed after {took}: {self.error}"
        return f"{ROTATING[name]} took {took}"

    def run(self) -> None:
        self.started = time.perf_counter()
        try:
            self._peer.rotate()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            self.error = type(exc).__name__
        self.ended = time.perf_counter()


def lengths(seconds: float) -> tuple[float, float, int]:
    """The long call's length, the 'before' window and the runs per peer, from scenario 4's
    seconds per peer.

    ``LONG_CALL_SECONDS``, ``BEFORE_SECONDS`` and ``REPEATS``; or a third of the load run
    per peer and one run when that is shorter than 9 s (``--quick``, a tight budget).
    """
    long_call = round(min(LONG_CALL_SECONDS, seconds / 3), 1)
    before = round(min(BEFORE_SECONDS, seconds / 3), 1)
    return long_call, before, REPEATS if long_call >= LONG_CALL_SECONDS else 1


def params(seconds: float, latency: float) -> dict[str, str]:
    """This part's parameters, for the scenario's header and the Markdown."""
    long_call, before, repeats = lengths(seconds)
    rotations = ", ".join(f"{name}: {what}" for name, what in ROTATING.items())
    return {
        "latency during a rotation": f"{THREADS} threads GET {SHORT_PATH} with day-long "
        f"tokens; after {before:g} s one {long_call:g} s call (GET {LONG_PATH}) starts and "
        f"{LONG_CALL_LEAD * 1000:.0f} ms later the peer rotates ({rotations}); token "
        f"endpoint latency {latency * 1000:.0f} ms; {repeats} run(s) per peer, interleaved, "
        "median of each figure reported",
        "latency windows": "'before': calls started in the "
        f"{before:g} s before the long call (each thread's first calls, which open "
        "connections, left out); 'during': calls started between the start and the "
        "return of the rotation; latency = the whole call as its caller sees it, getting "
        "the token included",
    }


def run_all(
    emulator: EmulatorProcess, target: Target, *, seconds: float
) -> dict[str, list[LatencyRun]]:
    """The runs of each rotating peer, interleaved, on the emulator's current token latency."""
    long_call, before, repeats = lengths(seconds)
    emulator.set("token_ttl", 86399)
    emulator.slow_path(LONG_PATH, long_call)
    runs: dict[str, list[LatencyRun]] = {name: [] for name in ROTATING}
    for _ in range(repeats):
        for name in ROTATING:
            runs[name].append(one_run(emulator, target, name, long_call=long_call, before=before))
    return runs
