"""OpenTelemetry: a span per acquisition, the metrics as instruments, off and absent.

The SDK is configured once for this process (its global providers can be set only once):
an in-memory span exporter and an in-memory metric reader. Each test finds its own data by
the login host's port (every emulator listens on a port of its own) and the client digest.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import MakeManager, in_child, poll
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from genesys_token import InvalidClientError, TokenManager, TokenManagerPool
from genesys_token.observability import otel
from genesys_token.observability.metrics import COUNTERS
from genesys_token.stores import MemoryStore
from genesys_token.testing import GenesysEmulator

DIGEST = "genesys_token.client.digest"


class Sdk:
    """The process's OpenTelemetry SDK, exporting to memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace_api.set_tracer_provider(tracer_provider)
        metrics_api.set_meter_provider(MeterProvider(metric_readers=[self.reader]))

    def spans_of(self, emulator: GenesysEmulator, count: int = 0) -> list[ReadableSpan]:
        """The spans of acquisitions from ``emulator``, once there are ``count`` (events
        are delivered by the flight's thread, after its callers were woken)."""

        def spans() -> list[ReadableSpan]:
            return [
                span
                for span in self.spans.get_finished_spans()
                if span.attributes is not None
                and span.attributes.get("server.port") == emulator.port
            ]

        poll(lambda: len(spans()) >= count)
        return spans()

    def collect(self) -> dict[str, list[Any]]:
        """Every ``genesys_token`` metric's data points, by name."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != otel.SCOPE:
                    continue
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


_sdk: Sdk | None = None


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sdk]:
    global _sdk
    if _sdk is None:
        _sdk = Sdk()
    monkeypatch.delenv(otel.ENV_SWITCH, raising=False)
    monkeypatch.delenv(otel.OTEL_DISABLED_LIST, raising=False)
    _sdk.spans.clear()
    yield _sdk
    _sdk.spans.clear()


def points_of(points: dict[str, list[Any]], name: str, manager: TokenManager) -> list[Any]:
    digest = otel.client_digest(manager.client_id)
    port = int(manager.token_url.split(":")[2].split("/")[0])
    return [
        p
        for p in points.get(f"{otel.SCOPE}.{name}", [])
        if p.attributes.get(DIGEST) == digest and p.attributes.get("server.port") == port
    ]


def test_a_network_acquisition_is_a_span_with_its_attributes(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    manager.get_token()
    [span] = sdk.spans_of(emulator, 1)
    assert span.name == otel.SPAN_NAME == "genesys_token.acquire"
    assert (
        span.instrumentation_scope is not None
        and span.instrumentation_scope.name == "genesys_token"
    )
    assert dict(span.attributes or {}) == {
        "genesys_token.outcome": "success",
        "genesys_token.source": "network",
        "genesys_token.attempts": 1,
        "genesys_token.reason": "no valid token",
        DIGEST: otel.client_digest(emulator.client_id),
        "server.address": "127.0.0.1",
        "server.port": emulator.port,
    }
    assert span.status.status_code == StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert 0 < span.end_time - span.start_time < 5e9  # dated by the event's duration
    assert len(otel.client_digest(emulator.client_id)) == 12


def test_a_store_acquisition_is_a_span_with_source_store(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager
):
    store = MemoryStore()
    writer, reader = make_manager(store=store), make_manager(store=store)
    writer.get_token()
    reader.get_token()  # a second process's manager, as it were
    assert emulator.token_requests == 1
    network, stored = sorted(
        sdk.spans_of(emulator, 2),
        key=lambda span: (span.attributes or {})["genesys_token.attempts"],
        reverse=True,
    )
    assert network.attributes is not None and stored.attributes is not None
    assert network.attributes["genesys_token.source"] == "network"
    assert (
        stored.attributes["genesys_token.source"],
        stored.attributes["genesys_token.attempts"],
    ) == (
        "store",
        0,
    )
    assert stored.attributes["genesys_token.outcome"] == "success"
    # The duration histogram counts what metrics()' latency histogram counts: network only
    # (one series for both: same client, same host).
    [duration] = points_of(sdk.collect(), "acquisition.duration", reader)
    counted = [m.metrics()["latency_histogram"]["count"] for m in (writer, reader)]
    assert (duration.count, counted) == (1, [1, 0])


def test_a_failure_span_names_the_error_and_nothing_secret_is_exported(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager
):
    token = make_manager().get_token()
    wrong = "wrong-secret-0f3c9a"
    rejected = make_manager(client_secret=wrong, max_retries=0)
    with pytest.raises(InvalidClientError):
        rejected.get_token()
    [failure] = [
        span for span in sdk.spans_of(emulator, 2) if span.status.status_code == StatusCode.ERROR
    ]
    assert failure.attributes is not None
    assert failure.attributes["genesys_token.outcome"] == "failure"
    assert failure.attributes["error.type"] == "InvalidClientError"
    assert failure.attributes["http.response.status_code"] == 401
    assert failure.attributes["genesys_token.attempts"] == 1
    assert failure.status.status_code == StatusCode.ERROR
    # Everything exported, searched for what must never leave the process.
    exported = "".join(span.to_json() for span in sdk.spans.get_finished_spans())
    data = sdk.reader.get_metrics_data()
    exported += data.to_json() if data is not None else ""
    for value in (token, wrong, emulator.client_secret, emulator.client_id):
        assert value not in exported


def test_instruments_report_the_numbers_of_metrics(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    manager.get_token()
    manager.refresh(force=True)
    with manager.in_flight():
        expected = manager.metrics()
        points = sdk.collect()
    assert expected["successes"] == 2 and expected["token_requests"] == 2
    for name in COUNTERS:
        [point] = points_of(points, name, manager)
        assert point.value == expected[name], name
    [in_flight] = points_of(points, "in_flight", manager)
    assert in_flight.value == expected["in_flight"] == 1
    for name in ("error_rate", "credentials_cooldown"):
        [point] = points_of(points, name, manager)
        assert point.value == expected[name], name
    [expires_in] = points_of(points, "expires_in", manager)
    assert expires_in.value == pytest.approx(expected["expires_in"], abs=1.0)
    [duration] = points_of(points, "acquisition.duration", manager)
    histogram = expected["latency_histogram"]
    assert duration.count == histogram["count"] == 2
    assert duration.sum == pytest.approx(histogram["sum"], abs=1e-3)
    assert list(duration.explicit_bounds) == [bound for bound, _ in histogram["buckets"][:-1]]
    cumulative = [sum(duration.bucket_counts[: i + 1]) for i in range(len(duration.bucket_counts))]
    assert cumulative == [count for _, count in histogram["buckets"]]


def test_one_set_of_instruments_reads_each_pooled_manager_once_and_weakly(
    sdk: Sdk, emulator: GenesysEmulator
):
    calls: dict[str, int] = {}
    pool = TokenManagerPool()
    managers = []
    for n in range(30):
        client_id = f"org-{n}"
        emulator.add_client(client_id, f"secret-{n}")
        manager = pool.get(client_id, f"secret-{n}", token_url=emulator.token_url)
        manager.get_token()
        metrics = manager.metrics

        def counted(metrics: Any = metrics, client_id: str = client_id) -> dict[str, Any]:
            calls[client_id] = calls.get(client_id, 0) + 1
            return metrics()  # type: ignore[no-any-return]

        manager.metrics = counted  # type: ignore[method-assign]
        managers.append(manager)
    points = sdk.collect()
    assert calls == {f"org-{n}": 1 for n in range(30)}  # one snapshot for 21 instruments
    names = {name for name in points if name.startswith(otel.SCOPE)}
    assert len(names) == len(COUNTERS) + 5  # in_flight, 3 gauges, the duration histogram
    assert all(len(points_of(points, "successes", m)) == 1 for m in managers)
    pool.close()
    points = sdk.collect()
    assert not any(points_of(points, "successes", m) for m in managers)  # closed: gone
    refs = [weakref.ref(m) for m in managers]
    del managers, manager, counted, metrics
    gc.collect()
    assert [ref() for ref in refs] == [None] * 30  # the instruments hold none alive


def test_nothing_is_reported_when_turned_off(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(otel.ENV_SWITCH, "off")
    manager = make_manager()
    manager.refresh(force=True)  # its events are delivered before it returns
    with pytest.raises(InvalidClientError):
        make_manager(client_secret="wrong", max_retries=0).get_token()
    assert sdk.spans_of(emulator) == []
    assert points_of(sdk.collect(), "successes", manager) == []


@pytest.mark.parametrize(
    "environ",
    [
        {"GENESYSCLOUD_OTEL": "off"},
        {"GENESYSCLOUD_OTEL": " False "},
        {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests, genesys_token"},
    ],
)
def test_the_switches_that_turn_it_off(environ: dict[str, str]):
    assert not otel.enabled(environ)
    assert otel.enabled({}) and otel.enabled({"GENESYSCLOUD_OTEL": "on"})


_CHILD = textwrap.dedent(
    """
    import json, os, sys
    {prelude}
    from genesys_token import TokenManager
    manager = TokenManager(
        "emulator-client", "emulator-secret", token_url=os.environ["TOKEN_URL"],
        api_base_url=os.environ["API_URL"],
    )
    token = manager.get_token()
    manager.close()
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
    print(json.dumps({{"token": bool(token), "loaded": loaded}}))
    """
)


def run_child(emulator: GenesysEmulator, prelude: str, **environ: str) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != otel.ENV_SWITCH}
    env.update(TOKEN_URL=emulator.token_url, API_URL=emulator.api_base_url, **environ)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(prelude=prelude)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_a_process_without_opentelemetry_works_and_imports_nothing(emulator: GenesysEmulator):
    # `None` in sys.modules makes every `import opentelemetry...` raise ImportError.
    child = run_child(emulator, "sys.modules['opentelemetry'] = None")
    assert child == {"token": True, "loaded": ["opentelemetry"]}  # only the None we put


def test_a_process_turned_off_imports_no_opentelemetry(emulator: GenesysEmulator):
    assert run_child(emulator, "", GENESYSCLOUD_OTEL="off") == {"token": True, "loaded": []}
    on = run_child(emulator, "")
    assert "opentelemetry.trace" in on["loaded"]  # the switch, not luck, kept it out


def test_the_refresh_events_carry_what_a_span_needs(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    records: list[dict[str, Any]] = []
    from_store: list[dict[str, Any]] = []
    manager = make_manager(store=MemoryStore(), max_retries=0)
    manager.on("*", records.append)
    manager.refresh(force=True)  # forced: its events are delivered before it returns
    peer = make_manager(store=manager.store)
    peer.on("*", from_store.append)
    peer.get_token()
    emulator.remove_client(emulator.client_id)
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)
    assert poll(lambda: len(from_store) == 1)
    network, failure, stored = (r["data"] for r in (*records, *from_store))
    assert (network["source"], network["attempts"]) == ("network", 1)
    assert (stored["source"], stored["attempts"]) == ("store", 0)
    assert (failure["source"], failure["attempts"]) == ("network", 1)
    assert all(data["duration_ms"] > 0 for data in (network, stored, failure))


def test_a_forked_child_reports_though_a_lock_was_held_at_the_fork(
    sdk: Sdk, emulator: GenesysEmulator
):
    def child() -> dict[str, Any]:
        with TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
        ) as manager:
            manager.get_token()
            return {"instrumented": len(points_of(sdk.collect(), "successes", manager))}

    TokenManager("warm-up", "s", token_url=emulator.token_url).close()  # the process part made
    telemetry = otel._state
    assert isinstance(telemetry, otel._Telemetry)
    with otel._lock, telemetry._lock:  # as another thread may hold them when fork() runs
        assert in_child(child, timeout=5) == {"instrumented": 1}


def test_the_pacing_figures_are_instruments(
    sdk: Sdk, emulator: GenesysEmulator, make_manager: MakeManager
):
    from genesys_token.manager import adapter_port

    manager = make_manager(api_rate_limit=(5, 60.0))
    port = adapter_port(manager)
    for _ in range(3):
        port.begin_use().end()
    port.throttled(manager.get_token(), 1.0)
    points = sdk.collect()
    assert [p.value for p in points_of(points, "api.calls_paced", manager)] == [3]
    assert [p.value for p in points_of(points, "api.throttled", manager)] == [1]
    assert [p.value for p in points_of(points, "api.calls_rate_limited", manager)] == [0]
    assert [p.value for p in points_of(points, "api.waiting", manager)] == [0]
    assert [p.value for p in points_of(points, "api.tokens_paced", manager)] == [1]
    assert [p.value for p in points_of(points, "api_429s", manager)] == [1]
