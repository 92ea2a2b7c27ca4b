"""rotate(): make-before-break, draining, timeouts, revocation, secret rotation, in_flight()."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import MakeHolder, MakeManager, TricklingServer, eventually, in_background, poll

from genesys_token import (
    ConfigurationError,
    DrainTimeoutError,
    GenesysAuth,
    InvalidClientError,
    ManagerClosedError,
    TokenManager,
)
from genesys_token.manager import adapter_port
from genesys_token.observability.events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
)
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.token import fingerprint_of

ORG_PATH = "/api/v2/organizations/me"
ROTATION_EVENTS = (TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT)


class Events:
    """Every event of a manager, with a condition to wait for one."""

    def __init__(self, manager: TokenManager) -> None:
        self.records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        manager.on("*", self._add)

    def _add(self, record: dict[str, Any]) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def types(self, wanted: tuple[str, ...] = ROTATION_EVENTS) -> list[str]:
        with self._cond:
            return [r["event_type"] for r in self.records if r["event_type"] in wanted]

    def wait_for(self, event_type: str, timeout: float = 5.0) -> dict[str, Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: self._find(event_type), timeout), event_type
            found = self._find(event_type)
            assert found is not None
            return found

    def _find(self, event_type: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["event_type"] == event_type), None)


def _session(manager: TokenManager) -> requests.Session:
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    return session


def _token_sent_to(emulator: GenesysEmulator, path: str) -> list[str | None]:
    return [r.token_used for r in emulator.api_request_log if r.path == path]


# -- make-before-break and draining ---------------------------------------------------------


def test_rotation_holds_no_caller_and_revokes_only_after_the_long_call(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Issue 12's acceptance: 8 threads calling the API plus one 3 s call in flight. During
    # rotate() no call waits beyond its normal latency; every call answers 200; the long
    # call succeeds with the old token; calls started after the swap carry the new token
    # while the long call still runs; the old token is revoked only after it ended.
    manager = make_manager()
    old = manager.get_token()
    session = _session(manager)
    emulator.inject(Fault(delay=3.0, passthrough=True), path="/api/v2/echo/long")
    long_call, long_answer = in_background(
        lambda: session.get(emulator.api_base_url + "/api/v2/echo/long", timeout=10)
    )
    deadline = time.monotonic() + 5
    while manager.in_flight_count < 1:
        assert time.monotonic() < deadline, "the long call never started"
        time.sleep(0.005)
    stop = threading.Event()
    rotating = threading.Event()
    samples: list[tuple[bool, float, int, str | None]] = []
    lock = threading.Lock()

    def caller() -> None:
        with requests.Session() as mine:
            mine.auth = GenesysAuth(manager)
            while not stop.is_set():
                during = rotating.is_set()
                started = time.monotonic()
                answer = mine.get(emulator.api_base_url + "/api/v2/echo/short", timeout=10)
                took = time.monotonic() - started
                sent = answer.request.headers["Authorization"][len("Bearer ") :]
                with lock:
                    samples.append((during, took, answer.status_code, sent))

    callers = [threading.Thread(target=caller) for _ in range(8)]
    for thread in callers:
        thread.start()
    time.sleep(0.3)  # calls before the rotation: the baseline latency
    rotating.set()
    swapped_while_long_call_ran: list[bool] = []
    rotation, rotated = in_background(
        lambda: manager.rotate(drain_timeout=10, revoke_previous=True)
    )
    deadline = time.monotonic() + 5
    while manager.token is None or manager.token.access_token == old:
        assert time.monotonic() < deadline, "the new token never came"
        time.sleep(0.005)
    swapped_while_long_call_ran.append(long_call.is_alive())
    time.sleep(0.3)  # calls after the swap, the long call still running
    new_seen_while_long_ran = long_call.is_alive() and any(
        sent != old for during, _, _, sent in list(samples) if during
    )
    rotation.join(10)
    stop.set()
    for thread in callers:
        thread.join(10)
    long_call.join(10)
    assert not isinstance(rotated[0], BaseException), rotated
    new = rotated[0].access_token
    assert new != old
    assert long_answer[0].status_code == 200
    assert long_answer[0].request.headers["Authorization"] == f"Bearer {old}"
    assert all(status == 200 for _, _, status, _ in samples)
    before = sorted(took for during, took, _, _ in samples if not during)
    during_rotation = [took for during, took, _, _ in samples if during]
    assert before and during_rotation
    p99_before = before[min(len(before) - 1, int(0.99 * len(before)))]
    # A generous factor: nobody is held (the gate design held calls for the whole 3 s).
    assert max(during_rotation) < max(10 * p99_before, 0.5)
    assert swapped_while_long_call_ran == [True]
    assert new_seen_while_long_ran
    # Revoked exactly the old token, and only after the long call's answer.
    assert emulator.revoked_tokens == {old}
    session.close()


def test_a_drain_waits_for_the_old_tokens_uses_only(
    emulator: GenesysEmulator, make_manager: MakeManager, holders: MakeHolder
):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    holder = holders(manager)
    rotation, rotated = in_background(lambda: manager.rotate(drain_timeout=5))
    assert holder.pending is not None and holder.pending.wait(5)  # swapped: told to leave
    # A caller arriving during the drain is not held: it gets the new token at once.
    session = _session(manager)
    answer = session.get(emulator.api_base_url + "/api/v2/echo/b", timeout=5)
    assert answer.status_code == 200
    assert _token_sent_to(emulator, "/api/v2/echo/b") != [old]
    assert rotation.is_alive(), "the drain did not wait for the old token's holder"
    holder.release()
    rotation.join(5)
    assert _token_sent_to(emulator, "/api/v2/echo/b") == [rotated[0].access_token]
    assert holder.token == old
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE]
    assert events.wait_for(TOKEN_DRAIN_COMPLETE)["data"]["drained"] == 1
    session.close()


def test_call_that_never_ends_times_the_drain_out(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    emulator.inject(Fault(delay=30, passthrough=True), path=ORG_PATH)
    session = _session(manager)
    # The read timeout outlasts the 3 s this test may take; emulator.stop() ends the call.
    stuck, _ = in_background(lambda: session.get(emulator.api_base_url + ORG_PATH, timeout=5))
    deadline = time.monotonic() + 5
    while manager.in_flight_count != 1:
        assert time.monotonic() < deadline, "the stuck call never started"
        time.sleep(0.005)
    started = time.monotonic()
    new = manager.rotate(drain_timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3
    assert new.access_token != old
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_TIMEOUT]
    data = events.wait_for(TOKEN_DRAIN_TIMEOUT)["data"]
    assert (data["in_flight"], data["left"], data["timeout"]) == (1, 1, 0.5)
    assert manager.metrics()["rotations"] == 1
    emulator.stop()  # ends the stuck call
    stuck.join(5)
    session.close()


def test_strict_rotation_raises_after_the_swap_and_does_not_revoke(
    emulator: GenesysEmulator, make_manager: MakeManager, holders: MakeHolder
):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    holder = holders(manager)  # a use that does not end in time
    started = time.monotonic()
    with pytest.raises(DrainTimeoutError) as excinfo:
        manager.rotate(drain_timeout=0.3, revoke_previous=True, strict=True)
    assert 0.3 <= time.monotonic() - started < 1.3
    assert excinfo.value.in_flight == 1
    # The swap has happened (make-before-break); the old token is not revoked.
    assert manager.token is not None and manager.token.access_token != old
    assert emulator.revoked_tokens == set()
    assert emulator.is_token_valid(old)
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_TIMEOUT]
    holder.release()
    assert manager.in_flight_count == 0


def test_concurrent_rotations_run_one_after_the_other(
    make_manager: MakeManager, holders: MakeHolder
):
    manager = make_manager()
    events = Events(manager)
    manager.get_token()
    holder = holders(manager)
    first, first_out = in_background(lambda: manager.rotate(drain_timeout=5))
    events.wait_for(TOKEN_ROTATION_STARTED)
    second, second_out = in_background(lambda: manager.rotate(drain_timeout=5))
    second.join(0.3)
    assert events.types() == [TOKEN_ROTATION_STARTED]  # the second waits its turn
    holder.release()
    first.join(5)
    second.join(5)
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE] * 2
    assert first_out[0].access_token != second_out[0].access_token


# -- revocation -------------------------------------------------------------------------------


def test_rotate_revokes_exactly_the_old_token(emulator: GenesysEmulator, make_manager: MakeManager):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    new = manager.rotate(drain_timeout=1, revoke_previous=True)
    assert emulator.revoked_tokens == {old}
    assert events.wait_for(TOKEN_REVOKED)["token_fingerprint"] == fingerprint_of(old)
    assert fingerprint_of(old) != new.fingerprint
    with _session(manager) as session:
        assert session.get(emulator.api_base_url + ORG_PATH, timeout=5).status_code == 200
    assert emulator.token_requests == 2


def test_refused_revocation_is_logged_not_raised(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    emulator.inject(Fault(status=403), path="/api/v2/tokens/me")
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        new = manager.rotate(drain_timeout=1, revoke_previous=True)
    assert new.access_token != old
    assert "token revocation was not accepted (status 403)" in caplog.text
    assert emulator.revoked_tokens == set()
    assert TOKEN_REVOKED not in events.types((TOKEN_REVOKED,))


def test_revocation_on_an_api_host_that_trickles_its_answer_is_cut_and_not_counted(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    # A byte every 50 ms: no read timeout fires; the watchdog ends the call at
    # 0.2 + 2 x 0.3 + 1 = 1.8 s, and the 200 its cut headers look like is not a revocation.
    api = TricklingServer(gap=0.05)
    try:
        manager = make_manager(api_base_url=f"http://127.0.0.1:{api.port}", timeout=(0.2, 0.3))
        events = Events(manager)
        old = manager.get_token()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="genesys_token"):
            new = manager.rotate(drain_timeout=1, revoke_previous=True)
        assert time.monotonic() - started < 4.0
        assert new.access_token != old
        assert "DELETE /api/v2/tokens/me failed: read timed out (ReadTimeout) on" in caplog.text
        assert TOKEN_REVOKED not in events.types((TOKEN_REVOKED,))
    finally:
        api.stop()


# -- rotating from inside a counted use ---------------------------------------------------


def test_rotate_inside_in_flight_block_does_not_wait_for_itself(make_manager: MakeManager):
    manager = make_manager()
    events = Events(manager)
    manager.get_token()
    started = time.monotonic()
    with manager.in_flight():
        manager.rotate(drain_timeout=5)
    assert time.monotonic() - started < 3
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE]


def test_rotate_from_a_response_hook_does_not_deadlock(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    old = manager.get_token()
    session = _session(manager)
    rotated: list[str] = []
    session.hooks["response"].append(
        lambda r, **kw: rotated.append(manager.rotate(drain_timeout=5).access_token)
    )
    started = time.monotonic()
    assert session.get(emulator.api_base_url + ORG_PATH, timeout=5).status_code == 200
    assert time.monotonic() - started < 3
    assert rotated and rotated[0] != old
    session.close()


def test_rotate_while_the_call_is_being_sent_does_not_wait_for_it(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    session = _session(manager)

    def body() -> Iterator[bytes]:
        yield b"first"
        manager.rotate(drain_timeout=5)  # this very call is counted: it must not be waited for
        yield b"second"

    started = time.monotonic()
    response = session.post(emulator.api_base_url + "/api/v2/echo", data=body(), timeout=5)
    assert time.monotonic() - started < 3
    assert response.status_code == 200
    assert response.json()["length"] == len(b"firstsecond")
    assert _token_sent_to(emulator, "/api/v2/echo") == [old]
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE]
    assert manager.in_flight_count == 0
    session.close()


def _get_token(manager: TokenManager) -> None:
    manager.get_token()


def _count_a_use(manager: TokenManager) -> None:
    with manager.in_flight():  # what a GenesysAuth call from the listener does
        pass


@pytest.mark.parametrize("use_manager", [_get_token, _count_a_use])
def test_listener_of_rotation_started_can_use_the_manager(
    make_manager: MakeManager, use_manager: Callable[[TokenManager], None]
):
    manager = make_manager(drain_timeout=1.0, retry_deadline=1.0)
    manager.get_token()
    manager.on(TOKEN_ROTATION_STARTED, lambda record: use_manager(manager))
    rotation, _ = in_background(lambda: manager.rotate(drain_timeout=5))
    rotation.join(1.5)
    finished = not rotation.is_alive()
    manager.close()  # frees a rotation stuck on itself (with _count_a_use: for ever)
    rotation.join(5)
    assert finished


# -- proactive refresh, in_flight() -----------------------------------------------------------


def test_proactive_refresh_does_not_drain(make_manager: MakeManager, holders: MakeHolder):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    holder = holders(manager)
    started = time.monotonic()
    new = manager.refresh(force=True)
    assert time.monotonic() - started < 5
    assert new.access_token != old
    assert events.types() == []
    assert holder.pending is not None and not holder.pending.is_set()


def test_rotation_pending_tells_a_long_lived_holder_to_reconnect(make_manager: MakeManager):
    manager = make_manager()
    events = Events(manager)
    old = manager.get_token()
    tokens: list[str] = []
    connected = threading.Event()

    def websocket_loop() -> None:
        with manager.in_flight() as use:
            tokens.append(use.token)
            connected.set()
            use.rotation_pending.wait(5)
        with manager.in_flight() as use:  # reconnect: waits for the rotation to finish
            tokens.append(use.token)

    loop = threading.Thread(target=websocket_loop)
    loop.start()
    assert connected.wait(5)
    started = time.monotonic()
    new = manager.rotate(drain_timeout=10)
    assert time.monotonic() - started < 5  # the holder left when asked, long before 10 s
    loop.join(5)
    assert tokens == [old, new.access_token]
    assert events.types() == [TOKEN_ROTATION_STARTED, TOKEN_DRAIN_COMPLETE]


def test_in_flight_block_that_raises_still_ends(make_manager: MakeManager):
    manager = make_manager()
    with pytest.raises(RuntimeError), manager.in_flight():
        assert manager.in_flight_count == 1
        raise RuntimeError("boom")
    assert manager.in_flight_count == 0


# -- secret rotation -----------------------------------------------------------------------


def test_new_secret_with_rotate_keeps_every_call_working(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager()
    manager.get_token()
    stop = threading.Event()
    statuses: list[int] = []
    errors: list[BaseException] = []
    calls = threading.Semaphore(0)

    def worker() -> None:
        with _session(manager) as session:
            while not stop.is_set():
                try:
                    answer = session.get(emulator.api_base_url + ORG_PATH, timeout=5)
                    statuses.append(answer.status_code)
                except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                    errors.append(exc)
                    return
                calls.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(50):
        assert calls.acquire(timeout=5)
    emulator.set_secret(emulator.client_id, "the-new-secret")  # the old one stops working
    manager.set_credentials("the-new-secret")
    new = manager.rotate(drain_timeout=5, revoke_previous=True)
    for _ in range(50):
        assert calls.acquire(timeout=5)
    stop.set()
    for thread in threads:
        thread.join(5)
    assert not errors
    assert set(statuses) == {200}
    assert emulator.token_request_log[-1].status == 200
    assert manager.get_token() == new.access_token


def test_rotate_without_the_new_secret_fails_and_keeps_the_token(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(max_retries=0)
    old = manager.get_token()
    emulator.set_secret(emulator.client_id, "the-new-secret")
    with pytest.raises(InvalidClientError):
        manager.rotate(drain_timeout=1)
    assert manager.get_token() == old


def test_set_credentials_can_switch_the_client(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.add_client("other-client", "other-secret")
    manager = make_manager()
    manager.get_token()
    manager.set_credentials("other-secret", client_id="other-client")
    assert manager.client_id == "other-client"
    manager.rotate(drain_timeout=1)
    assert emulator.token_request_log[-1].client_id == "other-client"
    assert emulator.token_request_log[-1].status == 200


@pytest.mark.parametrize("secret", ["", "  ", "a\nb", None])
def test_set_credentials_rejects_bad_values(make_manager: MakeManager, secret: Any):
    manager = make_manager()
    with pytest.raises(ConfigurationError) as excinfo:
        manager.set_credentials(secret)
    assert excinfo.value.field == "client_secret"
    manager.get_token()  # the old credentials still work


def test_a_redirected_call_stays_counted_through_its_second_leg(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Issue 12: a same-origin redirect to a slow endpoint is counted in flight while its
    # second leg runs, and rotate(revoke_previous=True) waits for it.
    manager = make_manager()
    old = manager.get_token()
    emulator.inject(Fault(delay=1.0, passthrough=True), path="/api/v2/echo/slow")
    session = _session(manager)
    target = f"{emulator.api_base_url}/api/v2/echo/slow"
    call, answer = in_background(
        lambda: session.get(f"{emulator.api_base_url}/redirect?to={target}", timeout=10)
    )
    deadline = time.monotonic() + 5
    while emulator.api_requests < 2:  # counted on arrival: the second leg is being served
        assert time.monotonic() < deadline, "the second leg never started"
        time.sleep(0.005)
    assert manager.in_flight_count == 1  # the redirect leg is still counted
    started = time.monotonic()
    manager.rotate(drain_timeout=5, revoke_previous=True)
    assert time.monotonic() - started >= 0.5  # waited for the leg's slow answer
    call.join(5)
    assert answer[0].status_code == 200
    assert answer[0].request.headers["Authorization"] == f"Bearer {old}"
    assert emulator.revoked_tokens == {old}
    assert manager.in_flight_count == 0
    session.close()


def test_rotation_retires_what_its_token_replaced_despite_a_forced_refresh_meanwhile(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # A forced refresh lands while the rotation's slow listener runs (the README allows slow
    # listeners): the rotation must still revoke the token IT replaced and return its own,
    # not revoke its own new token and leave the old one valid.
    manager = make_manager()
    old = manager.get_token()
    forced: list[str] = []

    def slow_listener(record: dict[str, Any]) -> None:
        if record["data"]["reason"] == "rotation" and not forced:
            thread, got = in_background(lambda: manager.refresh(force=True).access_token)
            thread.join(5)
            forced.append(got[0])

    manager.on(TOKEN_REFRESH_SUCCESS, slow_listener)
    mine = manager.rotate(drain_timeout=1, revoke_previous=True).access_token
    assert forced and forced[0] not in (old, mine)
    assert emulator.revoked_tokens == {old}
    assert emulator.is_token_valid(mine)
    assert manager.get_token() == forced[0]


@pytest.mark.parametrize("drain_timeout", [float("inf"), 1e300, 10**400])
def test_rotate_with_no_drain_bound_of_its_own_works(
    make_manager: MakeManager, drain_timeout: float
) -> None:
    # A call in flight on another thread ends 0.2 s into the drain: the rotation waits for
    # it with no bound of its own, then returns.
    manager = make_manager()
    old = manager.get_token()
    holding, done = threading.Event(), threading.Event()

    def call() -> None:
        with manager.in_flight():
            holding.set()
            done.wait(5)

    caller = threading.Thread(target=call)
    caller.start()
    assert holding.wait(2)
    threading.Timer(0.2, done.set).start()
    started = time.monotonic()
    assert manager.rotate(drain_timeout=drain_timeout).access_token != old
    assert 0.15 < time.monotonic() - started < 2
    caller.join(2)


def test_rotate_with_a_nan_drain_timeout_is_a_configuration_error(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    manager.get_token()
    with pytest.raises(ConfigurationError) as caught:
        manager.rotate(drain_timeout=float("nan"))
    assert caught.value.field == "drain_timeout"


def test_rotation_started_during_a_forced_refresh_retires_both_older_tokens(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> None:
    # The forced refresh is in flight when the rotation starts: the rotation's own token
    # replaces the forced one, which replaced the token the rotation was asked to retire.
    # Both are older than the rotation's token: both are drained and revoked.
    manager = make_manager()
    old = manager.get_token()
    emulator.inject(Fault(delay=0.5, passthrough=True))
    forcing, forced = in_background(lambda: manager.refresh(force=True).access_token)
    assert poll(lambda: emulator.token_requests == 2)  # the forced request is on the wire
    mine = manager.rotate(drain_timeout=1, revoke_previous=True).access_token
    forcing.join(5)
    assert forced[0] not in (old, mine)
    assert emulator.revoked_tokens == {old, forced[0]}
    assert emulator.is_token_valid(mine)
    assert manager.get_token() == mine


# -- what a rotation retires and whom it tells; close() during its drain -------------------


def test_rotate_retires_the_token_its_new_token_replaced(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # Defect rotate_retires_wrong_token: a refresh landing as rotate() began left its token
    # (T2) undrained and unrevoked while T1, replaced already, was revoked. Both are older
    # than the rotation's token: both are retired.
    manager = make_manager()
    t1 = manager.get_token()
    seen: dict[str, Any] = {}
    in_use = threading.Event()

    def use_t2() -> None:
        with manager.in_flight() as use:
            seen["use"] = use
            in_use.set()
            seen["pending"] = use.rotation_pending.wait(3)

    def on_started(record: dict[str, Any]) -> None:
        if "t2" not in seen:
            seen["t2"] = manager.refresh(force=True).access_token  # a refresh lands now
            seen["user"] = threading.Thread(target=use_t2)
            seen["user"].start()
            assert in_use.wait(5)

    manager.on(TOKEN_ROTATION_STARTED, on_started)
    t3 = manager.rotate(drain_timeout=5, revoke_previous=True).access_token
    seen["user"].join(5)
    t2 = seen["t2"]
    assert seen["use"].token == t2
    assert seen["pending"] is True  # the use of T2 was told, and waited for
    assert t3 not in (t1, t2)
    assert emulator.revoked_tokens == {t1, t2}
    assert not emulator.is_token_valid(t2)


def test_close_during_a_rotations_drain_ends_the_rotation_and_holds_nobody(
    make_manager: MakeManager,
):
    manager = make_manager()
    old = manager.get_token()
    use = adapter_port(manager).begin_use()  # a call that never ends
    outcomes: dict[str, BaseException | str] = {}

    def run(name: str, call: Any) -> None:
        try:
            outcomes[name] = call()
        except BaseException as exc:  # noqa: BLE001
            outcomes[name] = exc

    rotation = threading.Thread(target=run, args=("rotate", lambda: manager.rotate(10)))
    rotation.start()
    eventually(lambda: use.rotation_pending.is_set())  # swapped: the drain is waiting for `use`
    assert manager.get_token() != old  # nobody is held by the rotation
    started = time.monotonic()
    manager.close()
    rotation.join(3)
    assert time.monotonic() - started < 2.5
    assert isinstance(outcomes["rotate"], ManagerClosedError)
    with pytest.raises(ManagerClosedError):
        manager.get_token()
    use.end()


def test_rotation_pending_reaches_holders_that_look_before_or_after_it_starts(
    make_manager: MakeManager,
):
    manager = make_manager()
    with manager.in_flight() as early, manager.in_flight() as late:
        early_event = early.rotation_pending  # read before the rotation
        assert not early_event.is_set()
        rotation = threading.Thread(target=lambda: manager.rotate(drain_timeout=0.2))
        rotation.start()
        assert early_event.wait(5), "a holder that was already watching was not told"
        assert late.rotation_pending.is_set(), "a holder looking later was not told"
        rotation.join(5)
    assert "rotation_pending=True" in repr(late)
    with manager.in_flight() as fresh:
        assert not fresh.rotation_pending.is_set()
