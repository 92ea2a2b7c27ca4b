"""Metrics: exact counters, a bounded latency window, flat memory, the Prometheus collector."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import re
import selectors
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import MakeManager, join_fetch_threads

from genesys_token import GenesysAuth, TokenManager, TokenRequestError
from genesys_token.core.refresher import FAILURE_BACKOFF_BASE
from genesys_token.observability.metrics import (
    COUNTERS,
    LATENCY_BUCKETS,
    LATENCY_WINDOW,
    Metrics,
    latency_summary,
)
from genesys_token.testing import Fault, GenesysEmulator

# -- the counters and the window ------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], {"avg": None, "p50": None, "p95": None, "max": None, "last": None}),
        ([5.0], {"avg": 5.0, "p50": 5.0, "p95": 5.0, "max": 5.0, "last": 5.0}),
        ([4.0, 2.0], {"avg": 3.0, "p50": 2.0, "p95": 4.0, "max": 4.0, "last": 2.0}),
        (
            [float(n) for n in range(100, 0, -1)],  # 100 .. 1, last is 1
            {"avg": 50.5, "p50": 50.0, "p95": 95.0, "max": 100.0, "last": 1.0},
        ),
        ([1.23456], {"avg": 1.235, "p50": 1.235, "p95": 1.235, "max": 1.235, "last": 1.235}),
    ],
)
def test_latency_summary_uses_nearest_rank_percentiles(
    samples: list[float], expected: dict[str, Any]
):
    assert latency_summary(samples) == expected


def test_latency_histogram_counts_every_acquisition_in_cumulative_buckets():
    metrics = Metrics()
    for seconds in (0.01, 0.025, 0.3, 0.3, 75.0):  # 0.025 sits on a bound: le is inclusive
        metrics.record_success(latency_s=seconds, requests=1)
    histogram = metrics.snapshot(in_flight=0, expires_in=None)["latency_histogram"]
    buckets = dict(histogram["buckets"])
    assert list(buckets) == [*LATENCY_BUCKETS, float("inf")]
    assert buckets[0.025] == 2
    assert buckets[0.25] == 2 and buckets[0.5] == 4
    assert buckets[60.0] == 4 and buckets[float("inf")] == 5 == histogram["count"]
    assert histogram["sum"] == pytest.approx(75.635)


def test_latency_window_is_bounded_and_recent():
    metrics = Metrics()
    for n in range(10 * LATENCY_WINDOW):
        metrics.record_success(latency_s=n / 1000.0, requests=1)
    snap = metrics.snapshot(in_flight=0, expires_in=None)
    assert len(metrics._latencies) == LATENCY_WINDOW
    oldest_kept = 9 * LATENCY_WINDOW
    assert snap["latency_ms"]["max"] == 10 * LATENCY_WINDOW - 1
    assert snap["latency_ms"]["avg"] == (oldest_kept + 10 * LATENCY_WINDOW - 1) / 2
    assert snap["successes"] == snap["token_requests"] == 10 * LATENCY_WINDOW


def test_counters_are_exact_under_concurrent_updates():
    """Without the lock, `+=` on the dict loses updates when threads interleave."""
    metrics = Metrics()
    barrier = threading.Barrier(8)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def work() -> None:
            barrier.wait(5)
            for _ in range(2000):
                metrics.incr("retries")
                metrics.record_success(0.001, 2)
                metrics.record_error(RuntimeError("x"), 1)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        sys.setswitchinterval(switch)
    snap = metrics.snapshot(in_flight=0, expires_in=None)
    assert snap["retries"] == snap["successes"] == snap["errors"] == 16000
    assert snap["token_requests"] == 48000
    assert snap["error_rate"] == 0.5


def test_last_error_is_redacted_and_short():
    metrics = Metrics()
    token = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"
    metrics.record_error(TokenRequestError(f"rejected Bearer {token} " + "x" * 500), 1)
    last = metrics.snapshot(in_flight=0, expires_in=None)["last_error"]
    assert last.startswith("TokenRequestError: rejected Bearer [REDACTED]")
    assert token not in last
    assert len(last) < 200


def test_snapshot_has_every_documented_key():
    snap = Metrics().snapshot(in_flight=2, expires_in=12.5)
    for key in (*COUNTERS, "error_rate", "in_flight", "latency_ms", "expires_in", "last_error"):
        assert key in snap
    assert (snap["in_flight"], snap["expires_in"], snap["error_rate"]) == (2, 12.5, 0.0)


# -- through the manager ---------------------------------------------------------------------


def test_manager_metrics_count_what_happened(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager(background_refresh=False, max_retries=1, backoff_base=0.001)
    assert manager.metrics()["expires_in"] is None
    emulator.inject(Fault.server_error(503))  # retried once, then granted
    manager.get_token()
    emulator.inject(Fault.server_error(503), times=2)  # both attempts fail
    with pytest.raises(TokenRequestError):
        manager.refresh(force=True)
    # After a failed fetch no token request goes out until its backoff ends (at most the
    # first step's ceiling), a 401's replacement included: wait it out.
    time.sleep(FAILURE_BACKOFF_BASE + 0.05)
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    emulator.revoke(manager.get_token())
    url = f"{emulator.api_base_url}/api/v2/organizations/me"
    assert session.get(url, timeout=5).status_code == 200  # replayed once after the 401
    manager.rotate(drain_timeout=1)
    with manager.in_flight():
        snap = manager.metrics()
    session.close()
    assert snap["successes"] == 3  # first token, the 401 replacement, the rotation
    assert snap["errors"] == 1
    assert snap["error_rate"] == 0.25
    assert snap["retries"] == 2
    assert snap["token_requests"] == emulator.token_requests == 6
    assert snap["replays_401"] == 1
    assert snap["rotations"] == 1
    assert snap["in_flight"] == 1
    assert 86000 < snap["expires_in"] <= 86399
    assert snap["last_error"].startswith("TokenRequestError")
    assert snap["latency_ms"]["p95"] >= snap["latency_ms"]["p50"] > 0
    assert manager.metrics()["in_flight"] == 0


# -- memory stays flat however long it runs --------------------------------------------------

#: The emulator runs in its own process so tracemalloc sees only the client: the in-process
#: emulator keeps every token it issued, for test assertions. The emulator writes headers
#: and body in two sends; without TCP_NODELAY each reply would wait ~40 ms for the client's
#: delayed ACK, so the launcher switches Nagle off for every handler in that process.
_LAUNCH_EMULATOR = (
    "import runpy, socketserver, sys;"
    "socketserver.StreamRequestHandler.disable_nagle_algorithm = True;"
    "runpy.run_module('genesys_token.testing', run_name='__main__', alter_sys=True)"
)


@pytest.fixture
def emulator_process() -> Iterator[dict[str, str]]:
    """A standalone emulator process; yields the GENESYSCLOUD_* variables it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH_EMULATOR, "--token-ttl", "86399", "-q"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    output = b""
    deadline = time.monotonic() + 15
    with selectors.DefaultSelector() as selector:
        # Raw reads: a buffered readline() could swallow lines the selector then waits for.
        selector.register(proc.stdout, selectors.EVENT_READ)
        while output.count(b"export ") < 4 and selector.select(deadline - time.monotonic()):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
    env = dict(re.findall(r"export (GENESYSCLOUD_\w+)=(\S+)", output.decode()))
    try:
        assert len(env) == 4, f"the emulator process did not start: {output!r}"
        yield env
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Production-like log levels: pytest keeps every captured log record until the test
    ends, so INFO audit lines (enabled by a ``--log-level`` option, say) would count as growth.
    """
    loggers = [logging.getLogger(name) for name in ("genesys_token", "urllib3", "requests")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


#: More refreshes than the latency window holds and than CPython 3.10 runs a code object before
#: it gives it an opcache (1,024 calls).
WARMUP = max(LATENCY_WINDOW, 1024) + 100


#: Frames kept per traced allocation: the lines that keep memory are named (the report
#: shows the top five); rerun with more to see who called them.
TRACE_FRAMES = 1


def _forced_refreshes(env: dict[str, str], count: int, budget_bytes: int, warmup: int) -> None:
    # Measured in a fresh interpreter, without coverage: tracemalloc counts every thread's
    # allocations (in this process earlier tests' threads still run), and coverage keeps a
    # tracer, with the last frames it saw, for every thread that ever ran (one per flight).
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_metrics import _measure\n"
        f"print(json.dumps(_measure(json.loads(sys.argv[1]), {count}, {warmup})))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COV")}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(env)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=min(840.0, 60 + count * 0.05),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    growth = result["growth"]
    print(f"traced growth over {count} refreshes: {growth} bytes")
    where = "\n".join(result["top"])
    assert growth < budget_bytes, f"memory grew by {growth} bytes over {count} refreshes:\n{where}"
    total = warmup + count
    assert result["successes"] == result["token_requests"] == result["events"] == total
    assert (result["errors"], result["retries"], result["error_rate"]) == (0, 0, 0.0)
    assert result["last_error"] is None
    assert result["changed"]


def _measure(env: dict[str, str], count: int, warmup: int) -> dict[str, Any]:
    manager = TokenManager(
        env["GENESYSCLOUD_OAUTHCLIENT_ID"],
        env["GENESYSCLOUD_OAUTHCLIENT_SECRET"],
        token_url=env["GENESYSCLOUD_TOKEN_URL"],
        api_base_url=env["GENESYSCLOUD_API_URL"],
        background_refresh=False,
    )
    events = [0]

    def count_event(record: dict[str, Any]) -> None:
        events[0] += 1

    manager.on("*", count_event)
    for _ in range(warmup):  # fills pools, caches (and, if long enough, the latency window)
        manager.refresh(force=True)
    first = manager.token
    join_fetch_threads()
    gc.collect()
    # Started after the warm-up: what it reports is exactly what the measured refreshes
    # allocated and kept. One frame per allocation: 12 made each refresh ~8x slower (19.3
    # vs 2.8 ms; 1 frame: 5.9 ms) and the 20,000-refresh soak 6.5 min instead of ~1.5.
    tracemalloc.start(TRACE_FRAMES)
    try:
        for _ in range(count):
            manager.refresh(force=True)
        join_fetch_threads()  # the last flight's thread is still returning
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0]
        top = tracemalloc.take_snapshot().statistics("lineno")[:5]
    finally:
        tracemalloc.stop()
        manager.close()
    snap = manager.metrics()
    last = manager.token
    return {
        "growth": growth,
        "top": ["\n".join(stat.traceback.format()) + f"\n  {stat.size} B" for stat in top],
        "events": events[0],
        "changed": last is not None and first is not None and last.fingerprint != first.fingerprint,
        **{key: snap[key] for key in ("successes", "token_requests", "errors", "retries")},
        "error_rate": snap["error_rate"],
        "last_error": snap["last_error"],
    }


def test_300_forced_refreshes_keep_memory_flat(emulator_process: dict[str, str], quiet_logs: None):
    # A quick guard for every run: 100 bytes per refresh like the 20,000-refresh test. The
    # warm-up fills the latency window and outlasts Python 3.10's opcache threshold: a code
    # object run 1,024 times gets a cache, ~80 kB once over requests and urllib3, which made
    # this test fail on 3.10 only when its 300 refreshes crossed that point.
    _forced_refreshes(emulator_process, 300, budget_bytes=30_000, warmup=WARMUP)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_20000_forced_refreshes_keep_memory_flat_and_counters_exact(
    emulator_process: dict[str, str], quiet_logs: None
):
    _forced_refreshes(emulator_process, 20_000, budget_bytes=2_000_000, warmup=WARMUP)


# -- Prometheus -------------------------------------------------------------------------------


def test_prometheus_module_explains_the_missing_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delitem(sys.modules, "genesys_token.observability.prometheus", raising=False)
    for name in ("prometheus_client", "prometheus_client.core"):
        monkeypatch.setitem(sys.modules, name, None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"genesys-token\[prometheus\]"):
        importlib.import_module("genesys_token.observability.prometheus")


def test_prometheus_collector_exports_the_snapshot(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from genesys_token.observability.prometheus import GenesysTokenCollector

    emulator.add_client("second-client", "second-secret")
    manager = make_manager(background_refresh=False)
    other = make_manager(
        background_refresh=False, client_id="second-client", client_secret="second-secret"
    )
    registry = CollectorRegistry()
    registry.register(GenesysTokenCollector(manager, other))
    assert registry.get_sample_value("genesys_token_expires_in_seconds", {"client_id": "x"}) is None
    manager.get_token()
    manager.refresh(force=True)
    other.get_token()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"client_id": emulator.client_id, **labels})

    assert sample("genesys_token_successes_total") == 2
    assert sample("genesys_token_token_requests_total") == 2
    assert sample("genesys_token_errors_total") == 0
    assert sample("genesys_token_error_rate") == 0
    assert sample("genesys_token_in_flight") == 0
    assert 86000 < (sample("genesys_token_expires_in_seconds") or 0) <= 86399
    # Latency is a histogram: bucket counts add up across hosts, quantile gauges do not.
    assert sample("genesys_token_latency_seconds_count") == 2
    assert sample("genesys_token_latency_seconds_bucket", le="+Inf") == 2
    assert 0 < (sample("genesys_token_latency_seconds_sum") or 0) < 10
    bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
    counts = [sample("genesys_token_latency_seconds_bucket", le=le) or 0 for le in bounds]
    assert counts == sorted(counts)
    assert sample("genesys_token_latency_seconds", stat="p95") is None
    assert (
        registry.get_sample_value("genesys_token_successes_total", {"client_id": "second-client"})
        == 1
    )
    text = generate_latest(registry).decode()
    assert "# TYPE genesys_token_successes_total counter" in text
    assert "# TYPE genesys_token_latency_seconds histogram" in text
    assert manager.get_token() not in text
