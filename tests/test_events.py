"""Events: records, listener order, unsubscribe, isolation from failures and from locks."""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import MakeManager, in_background

from genesys_token import ConfigurationError, InvalidClientError, TokenManager, TokenRequestError
from genesys_token.observability.events import (
    EVENT_TYPES,
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_EXPIRED,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
    EventBus,
    make_record,
    redact_value,
)
from genesys_token.testing import Fault, GenesysEmulator

Record = dict[str, Any]


def _types(records: list[Record]) -> list[str]:
    return [r["event_type"] for r in records]


def _recorder(manager: TokenManager, event_type: str = "*") -> list[Record]:
    records: list[Record] = []
    manager.on(event_type, records.append)
    return records


def test_success_record_carries_every_field(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    records = _recorder(manager)
    token = manager.refresh(force=True)
    [record] = records
    assert list(record) == [
        "timestamp",
        "event_id",
        "event_type",
        "client_id",
        "token_fingerprint",
        "metrics",
        "data",
    ]
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert uuid.UUID(record["event_id"]).version == 4
    assert record["event_type"] == TOKEN_REFRESH_SUCCESS
    assert record["client_id"] == emulator.client_id
    assert record["token_fingerprint"] == token.fingerprint
    assert record["metrics"]["error_rate"] == 0.0
    assert record["metrics"]["latency_ms"]["last"] > 0
    assert record["data"]["reason"] == "forced"
    assert record["data"]["source"] == "network"
    assert token.access_token not in repr(record)


def test_listeners_see_failure_then_success_in_order(
    emulator: GenesysEmulator, make_manager: MakeManager, fake_clock: Any
):
    manager = make_manager(background_refresh=False, max_retries=0, clock=fake_clock.clock())
    records = _recorder(manager)
    emulator.inject(Fault.server_error(503))
    with pytest.raises(TokenRequestError, match="503"):
        manager.get_token()
    fake_clock.advance(1.0)  # past the backoff
    manager.get_token()
    # Listeners run once the waiting callers are released: wait for the second record.
    deadline = time.monotonic() + 5
    while len(records) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _types(records) == [TOKEN_REFRESH_FAILURE, TOKEN_REFRESH_SUCCESS]
    failure = records[0]
    assert failure["token_fingerprint"] is None
    assert failure["data"]["status"] == 503
    assert failure["data"]["token_still_valid"] is False
    assert failure["metrics"]["error_rate"] == 1.0
    assert records[1]["metrics"]["error_rate"] == 0.5


def test_rotation_emits_started_success_drain_complete_then_revoked(make_manager: MakeManager):
    # Make-before-break: the new token is fetched and swapped in, then the old one drains.
    manager = make_manager(background_refresh=False)
    old = manager.refresh(force=True)  # in this thread: its event is delivered on return
    records = _recorder(manager)
    new = manager.rotate(drain_timeout=1, revoke_previous=True)
    assert _types(records) == [
        TOKEN_ROTATION_STARTED,
        TOKEN_REFRESH_SUCCESS,
        TOKEN_DRAIN_COMPLETE,
        TOKEN_REVOKED,
    ]
    assert [r["token_fingerprint"] for r in records] == [
        old.fingerprint,
        new.fingerprint,
        old.fingerprint,
        old.fingerprint,
    ]
    assert records[1]["data"]["reason"] == "rotation"
    assert records[2]["data"]["in_flight"] == 0
    assert records[2]["data"]["drained"] == 0


def test_drain_timeout_emits_started_success_then_timeout(make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    # In this thread: its event is delivered on return. A get_token() here let a loaded
    # machine deliver the first success after the recorder subscribed (seen in CI).
    manager.refresh(force=True)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with manager.in_flight():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    records = _recorder(manager)
    try:
        manager.rotate(drain_timeout=0.2)
    finally:
        release.set()
        holder.join(5)
    assert _types(records) == [TOKEN_ROTATION_STARTED, TOKEN_REFRESH_SUCCESS, TOKEN_DRAIN_TIMEOUT]
    assert records[0]["data"] == {"in_flight": 1}
    timeout_data = records[2]["data"]
    assert timeout_data["in_flight"] == 1
    assert timeout_data["left"] == 1
    assert timeout_data["drained"] == 0
    assert timeout_data["timeout"] == 0.2
    assert timeout_data["drain_seconds"] >= 0.2


def test_specific_and_wildcard_listeners_run_in_subscription_order(make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    calls: list[str] = []
    manager.on("*", lambda r: calls.append("all-1"))
    manager.on(TOKEN_REFRESH_SUCCESS, lambda r: calls.append("success"))
    manager.on(TOKEN_REFRESH_FAILURE, lambda r: calls.append("failure"))
    manager.on("*", lambda r: calls.append("all-2"))
    manager.refresh(force=True)  # in this thread: its listeners ran when it returns
    assert calls == ["all-1", "success", "all-2"]


def test_unsubscribe_stops_delivery_and_is_idempotent(make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    records: list[Record] = []
    unsubscribe = manager.on(TOKEN_REFRESH_SUCCESS, records.append)
    manager.refresh(force=True)
    unsubscribe()
    unsubscribe()
    manager.refresh(force=True)
    assert len(records) == 1


def test_unsubscribe_removes_only_its_own_subscription():
    bus = EventBus()
    calls: list[str] = []

    def listener(record: Record) -> None:
        calls.append(record["event_type"])

    first = bus.on("*", listener)
    bus.on("*", listener)
    first()
    bus.emit(_record(TOKEN_EXPIRED))
    assert calls == [TOKEN_EXPIRED]
    assert bus.listener_count == 1


def test_a_bus_without_an_error_hook_still_survives_a_raising_listener():
    bus = EventBus()
    calls: list[str] = []

    def broken(record: Record) -> None:
        raise ValueError("no")

    bus.on("*", broken)
    bus.on("*", lambda r: calls.append("next"))
    bus.emit(_record(TOKEN_EXPIRED))
    assert calls == ["next"]


def test_a_listener_may_unsubscribe_itself_while_events_are_emitted():
    bus = EventBus()
    calls: list[str] = []
    handles: list[Any] = []

    def once(record: Record) -> None:
        calls.append("once")
        handles[0]()

    handles.append(bus.on("*", once))
    bus.on("*", lambda r: calls.append("after"))
    bus.emit(_record(TOKEN_EXPIRED))
    bus.emit(_record(TOKEN_EXPIRED))
    assert calls == ["once", "after", "after"]


def test_a_raising_listener_does_not_stop_the_refresh_or_other_listeners(
    make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    manager = make_manager(background_refresh=False)
    after: list[Record] = []

    def broken(record: Record) -> None:
        raise RuntimeError("listener broke")

    manager.on("*", broken)
    manager.on("*", after.append)
    with caplog.at_level(logging.ERROR, logger="genesys_token"):
        token = manager.refresh(force=True)
    assert token is manager.token
    assert len(after) == 1
    assert manager.metrics()["listener_errors"] == 1
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "broken" in logged.getMessage()
    assert logged.exc_info is not None


def test_listeners_run_outside_the_manager_lock(make_manager: MakeManager):
    """A listener that waits for another thread using the manager must not deadlock it."""
    manager = make_manager(background_refresh=False)
    results: list[str] = []

    def listener(record: Record) -> None:
        # Another thread needs the state lock (refresh takes it even with a valid token).
        other = threading.Thread(target=lambda: results.append(manager.refresh().fingerprint))
        other.start()
        other.join(2)

    manager.on(TOKEN_REFRESH_SUCCESS, listener)
    token = manager.refresh(force=True)
    assert results == [token.fingerprint]


@pytest.mark.parametrize(("event_type", "callback"), [("NOPE", print), ("*", "not callable")])
def test_bad_subscription_raises_configuration_error(
    make_manager: MakeManager, event_type: str, callback: Any
):
    manager = make_manager(background_refresh=False)
    with pytest.raises(ConfigurationError) as excinfo:
        manager.on(event_type, callback)
    assert excinfo.value.field in ("event_type", "callback")


def test_every_documented_event_type_can_be_subscribed():
    bus = EventBus()
    for event_type in (*EVENT_TYPES, "*"):
        bus.on(event_type, lambda r: None)
    assert bus.listener_count == len(EVENT_TYPES) + 1


def test_concurrent_subscribe_and_unsubscribe_lose_nothing():
    """The copy-on-write tuple is rebuilt under a lock; without it, a subscription made
    while another thread rebuilds the tuple to unsubscribe vanishes (or comes back)."""
    bus = EventBus()
    barrier = threading.Barrier(8)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def subscribe() -> None:
            barrier.wait(5)
            for _ in range(150):
                unsubscribe = bus.on("*", lambda r: None)
                bus.on("*", lambda r: None)
                unsubscribe()

        threads = [threading.Thread(target=subscribe) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        sys.setswitchinterval(switch)
    assert bus.listener_count == 1200


def test_record_data_is_redacted_at_any_depth():
    token = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    record = make_record(
        TOKEN_REFRESH_FAILURE,
        client_id="c",
        token_fingerprint=None,
        metrics={},
        data={
            "header": f"Bearer {token}",
            "nested": {"list": [f"access_token={token}", 3, None], "tuple": (token,)},
            "cyclic": cyclic,
            "context": "0b4e2bde-5d1b-4d4c-9b8e-3f2a1c0d9e8f",
        },
    )
    assert token not in repr(record)
    assert record["data"]["nested"]["list"][1:] == [3, None]
    assert record["data"]["context"] == "0b4e2bde-5d1b-4d4c-9b8e-3f2a1c0d9e8f"
    assert "[TRUNCATED]" in repr(record["data"]["cyclic"])
    assert redact_value(1.5) == 1.5


def test_events_are_audit_logged_with_their_fields(
    make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    manager = make_manager(background_refresh=False, max_retries=0, client_secret="wrong")
    with (
        caplog.at_level(logging.INFO, logger="genesys_token.audit"),
        pytest.raises(InvalidClientError),
    ):
        manager.refresh(force=True)  # in this thread: audited when it returns
    [line] = [r for r in caplog.records if r.name == "genesys_token.audit"]
    assert line.levelno == logging.WARNING
    assert line.event_type == TOKEN_REFRESH_FAILURE  # type: ignore[attr-defined]
    assert line.data["error"] == "InvalidClientError"  # type: ignore[attr-defined]
    assert uuid.UUID(line.event_id)  # type: ignore[attr-defined]
    assert line.metrics["error_rate"] == 1.0  # type: ignore[attr-defined]


def test_nothing_is_formatted_when_the_audit_log_is_off(make_manager: MakeManager):
    manager = make_manager(background_refresh=False)
    audit = logging.getLogger("genesys_token.audit")
    seen: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Catch(logging.DEBUG)
    audit.addHandler(handler)
    level = audit.level
    audit.setLevel(logging.ERROR)
    try:
        manager.refresh(force=True)
    finally:
        audit.setLevel(level)
        audit.removeHandler(handler)
    assert seen == []


def _record(event_type: str) -> Record:
    return make_record(event_type, client_id="c", token_fingerprint=None, metrics={})


def test_a_slow_listener_does_not_hold_the_callers_waiting_on_the_flight(
    make_manager: MakeManager,
):
    # Defect listener_holds_waiters: listeners ran before the waiters woke.
    manager = make_manager()
    in_listener, release = threading.Event(), threading.Event()
    waiting, go = threading.Semaphore(0), threading.Event()

    def slow_listener(record: dict[str, Any]) -> None:
        in_listener.set()
        release.wait(5)

    manager.on(TOKEN_REFRESH_SUCCESS, slow_listener)
    acquire, wait = manager._flight._acquire, manager._flight._wait

    def gated_acquire(*args: Any) -> Any:
        assert go.wait(5)
        return acquire(*args)

    def counted_wait(*args: Any) -> None:
        waiting.release()
        wait(*args)

    manager._flight._acquire = gated_acquire  # type: ignore[method-assign]
    manager._flight._wait = counted_wait  # type: ignore[method-assign]
    callers = [in_background(manager.get_token) for _ in range(5)]
    try:
        for _ in callers:
            assert waiting.acquire(timeout=5)  # every caller waits on the one flight
        go.set()
        assert in_listener.wait(5)
        deadline = time.monotonic() + 2
        for thread, _ in callers:
            thread.join(max(0.0, deadline - time.monotonic()))  # the listener still runs
        assert [out for _, out in callers if not out] == []
        assert all(isinstance(out[0], str) for _, out in callers)
    finally:
        release.set()
        for thread, _ in callers:
            thread.join(5)


def test_failure_event_and_log_lines_carry_the_correlation_id(
    emulator: GenesysEmulator,
    make_manager: MakeManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = make_manager(background_refresh=False, max_retries=0)
    records = _recorder(manager, TOKEN_REFRESH_FAILURE)
    emulator.inject(Fault.server_error(503))
    with caplog.at_level(logging.INFO), pytest.raises(TokenRequestError):
        manager.get_token()
    # The event and the refresher's log line come after the caller wakes: wait for both.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        records and any(r.getMessage().startswith("token refresh failed") for r in caplog.records)
    ):
        time.sleep(0.005)
    (sent,) = [r.correlation_id for r in emulator.token_request_log]
    assert sent
    host = f"127.0.0.1:{emulator.port}"
    data = records[0]["data"]
    assert (data["correlation_id"], data["host"], data["status"]) == (sent, host, 503)
    lines = [r.getMessage() for r in caplog.records]
    (failed,) = [line for line in lines if line.startswith("token refresh failed")]
    assert failed.startswith(
        f"token refresh failed (TokenRequestError host={host} status=503 correlation_id={sent})"
    )
    (audit,) = [line for line in lines if line.startswith(TOKEN_REFRESH_FAILURE)]
    assert audit == f"{TOKEN_REFRESH_FAILURE} client_id={emulator.client_id}"  # no "=None"
    assert not [line for line in lines if "=None" in line]
