"""GenesysHTTPXAuth with httpx.Client over the emulator: bearer, in-flight count, 401 replay."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import MakeManager, poll

from genesys_token import InvalidClientError, TokenManager
from genesys_token.integrations.httpx import GenesysHTTPXAuth
from genesys_token.testing import Fault, GenesysEmulator

ORG_PATH = "/api/v2/organizations/me"
ECHO_PATH = "/api/v2/echo"
SLOW = 0.4


@pytest.fixture
def manager(make_manager: MakeManager) -> TokenManager:
    return make_manager()


@pytest.fixture
def client(manager: TokenManager) -> Iterator[httpx.Client]:
    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, timeout=5) as c:
        yield c


@pytest.fixture
def other_host() -> Iterator[GenesysEmulator]:
    with GenesysEmulator() as other:
        yield other


def _statuses(emulator: GenesysEmulator) -> list[int]:
    return [r.status for r in emulator.api_request_log]


def _in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except httpx.HTTPError as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


# -- bearer and count ---------------------------------------------------------------------


def test_call_carries_the_managers_token(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client
):
    response = client.get(ORG_PATH)

    assert response.status_code == 200
    assert emulator.api_request_log[0].token_used == manager.token.access_token
    assert emulator.token_requests == 1
    assert manager.in_flight_count == 0


def test_call_is_counted_until_its_response(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client
):
    emulator.inject(Fault(delay=SLOW, passthrough=True), path=ORG_PATH)
    thread, result = _in_background(lambda: client.get(ORG_PATH))

    assert poll(lambda: emulator.api_requests == 1)
    assert manager.in_flight_count == 1
    thread.join(5)
    assert isinstance(result[0], httpx.Response)
    assert result[0].status_code == 200
    assert manager.in_flight_count == 0


def test_redirect_legs_are_counted_until_the_final_response(
    emulator: GenesysEmulator, manager: TokenManager
):
    emulator.inject(Fault(delay=SLOW, passthrough=True), path=ORG_PATH)
    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, follow_redirects=True) as c:
        target = manager.api_base_url + ORG_PATH
        thread, result = _in_background(lambda: c.get("/redirect", params={"to": target}))

        assert poll(lambda: emulator.api_requests == 2)  # the second leg is being served
        assert manager.in_flight_count == 1
        thread.join(5)
    assert isinstance(result[0], httpx.Response)
    assert result[0].status_code == 200
    assert [r.token_used for r in emulator.api_request_log] == [manager.token.access_token] * 2
    assert manager.in_flight_count == 0


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(drop=True), httpx.RemoteProtocolError),
        (Fault(delay=1.0, passthrough=True), httpx.ReadTimeout),
    ],
)
def test_count_ends_at_once_when_the_call_raises(
    emulator: GenesysEmulator, manager: TokenManager, fault: Fault, error: type[Exception]
):
    emulator.inject(fault, path=ORG_PATH)
    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, timeout=0.2) as c:
        with pytest.raises(error):
            c.get(ORG_PATH)
        assert manager.in_flight_count == 0  # no garbage collection needed


def test_streamed_response_is_counted_until_its_headers(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client
):
    with client.stream("GET", ORG_PATH) as response:
        assert response.status_code == 200
        assert manager.in_flight_count == 0
        response.read()


def test_token_errors_reach_the_caller_before_anything_is_sent(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    manager = make_manager(client_secret="wrong-secret")
    auth = GenesysHTTPXAuth(manager)
    with (
        httpx.Client(base_url=manager.api_base_url, auth=auth) as c,
        pytest.raises(InvalidClientError),
    ):
        c.get(ORG_PATH)
    assert emulator.api_requests == 0
    assert manager.in_flight_count == 0


# -- 401 --------------------------------------------------------------------------------------


def test_401_replaces_the_token_and_replays_once(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client
):
    first = manager.get_token()
    emulator.revoke(first)

    response = client.post(ECHO_PATH, content=b"x" * 100)

    assert response.status_code == 200
    assert response.json()["length"] == 100  # the body was sent again
    assert _statuses(emulator) == [401, 200]
    second = manager.get_token()
    assert second != first
    assert [r.token_used for r in emulator.api_request_log] == [first, second]
    assert emulator.token_requests == 2
    assert manager.in_flight_count == 0
    assert manager.metrics()["token_requests"] == 2
    assert manager.metrics()["replays_401"] == 1  # as GenesysAuth and aiohttp count it


def test_a_second_401_is_returned(emulator: GenesysEmulator, manager, client: httpx.Client):
    manager.get_token()
    emulator.reject_all_tokens = True

    response = client.get(ORG_PATH)

    assert response.status_code == 401
    assert response.json()["code"] == "bad.credentials"
    assert _statuses(emulator) == [401, 401]
    assert emulator.token_requests == 2
    assert manager.in_flight_count == 0


def test_401_is_returned_untouched_when_no_new_token_can_be_had(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client, caplog
):
    emulator.revoke(manager.get_token())
    emulator.set_secret(emulator.client_id, "rotated-elsewhere")  # our secret is now wrong

    with caplog.at_level("DEBUG", logger="genesys_token"):
        response = client.get(ORG_PATH)

    assert response.status_code == 401
    assert _statuses(emulator) == [401]
    # Only the failed call's own line (with its correlation id), nothing about the token.
    shown = [r for r in caplog.records if r.name.endswith("httpx") and r.levelname != "DEBUG"]
    assert [r.getMessage().split(" (correlation id ")[0] for r in shown] == [
        f"API call GET 127.0.0.1:{emulator.port}{ORG_PATH} failed: HTTP 401"
    ]


def test_unreplayable_body_gets_the_token_replaced_but_no_replay(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client
):
    first = manager.get_token()
    emulator.revoke(first)

    response = client.post(ECHO_PATH, content=iter([b"a", b"b"]))

    assert response.status_code == 401
    assert _statuses(emulator) == [401]
    assert manager.get_token() != first  # the next call works
    assert client.get(ORG_PATH).status_code == 200


def test_replay_401_false_returns_the_401(emulator: GenesysEmulator, manager: TokenManager):
    emulator.revoke(manager.get_token())
    auth = GenesysHTTPXAuth(manager, replay_401=False)
    with httpx.Client(base_url=manager.api_base_url, auth=auth) as c:
        assert c.get(ORG_PATH).status_code == 401
    assert emulator.token_requests == 1


def test_no_replay_after_a_redirect_turned_a_post_into_a_get(
    emulator: GenesysEmulator, manager: TokenManager
):
    first = manager.get_token()
    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, follow_redirects=True) as c:
        emulator.revoke(first)  # /redirect needs no token; the GET it leads to is refused
        target = manager.api_base_url + ORG_PATH
        response = c.post("/redirect", params={"to": target, "status": "303"}, content=b"{}")

    assert response.status_code == 401
    assert [(r.method, r.status) for r in emulator.api_request_log] == [
        ("POST", 303),
        ("GET", 401),
    ]
    assert manager.get_token() != first  # replaced all the same


def test_401_from_a_host_a_redirect_led_to_is_not_ours(
    emulator: GenesysEmulator, manager: TokenManager, other_host: GenesysEmulator
):
    auth = GenesysHTTPXAuth(manager)
    with httpx.Client(base_url=manager.api_base_url, auth=auth, follow_redirects=True) as c:
        response = c.get("/redirect", params={"to": other_host.url + ORG_PATH})

    assert response.status_code == 401
    assert other_host.api_request_log[0].token_used is None  # httpx dropped the header
    assert emulator.token_requests == 1  # and the 401 did not cost a token request


# -- origins ----------------------------------------------------------------------------------


def test_no_token_to_another_origin(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client, other_host
):
    seen = client.get(other_host.url + "/headers").json()

    assert "Authorization" not in seen
    assert emulator.token_requests == 0
    assert manager.in_flight_count == 0


def test_no_token_on_a_redirect_sent_by_hand(
    emulator: GenesysEmulator, manager: TokenManager, client: httpx.Client, other_host
):
    first = client.get("/redirect", params={"to": other_host.url + "/headers"})
    assert first.status_code == 302
    assert first.next_request is not None

    seen = client.send(first.next_request).json()

    assert "Authorization" not in seen
    assert emulator.api_request_log[0].token_used == manager.token.access_token


def test_origins_widen_where_the_token_goes(
    emulator: GenesysEmulator, manager: TokenManager, other_host: GenesysEmulator
):
    auth = GenesysHTTPXAuth(manager, origins=[manager.api_base_url, other_host.url + "/x"])
    with httpx.Client(auth=auth) as c:
        c.get(other_host.url + "/headers")
    assert other_host.api_request_log[0].token_used == manager.token.access_token


# -- rotation ---------------------------------------------------------------------------------


def test_rotation_waits_for_a_call_in_flight(emulator: GenesysEmulator, manager: TokenManager):
    old = manager.get_token()
    emulator.inject(Fault(delay=SLOW, passthrough=True), path=ORG_PATH)
    auth = GenesysHTTPXAuth(manager, replay_401=False)  # a revoked token would show as 401
    with httpx.Client(base_url=manager.api_base_url, auth=auth, timeout=5) as c:
        call, result = _in_background(lambda: c.get(ORG_PATH))
        assert poll(lambda: emulator.api_requests == 1)
        rotated = threading.Event()
        rotation = threading.Thread(
            target=lambda: (manager.rotate(revoke_previous=True), rotated.set())
        )
        rotation.start()
        call.join(5)
        rotation.join(5)
        assert isinstance(result[0], httpx.Response)
        assert result[0].status_code == 200  # the old token lived until its call ended
        assert rotated.is_set()
        assert old in emulator.revoked_tokens
        assert c.get(ORG_PATH).status_code == 200
    assert emulator.api_request_log[-1].token_used == manager.get_token() != old
    assert manager.in_flight_count == 0


# -- packaging --------------------------------------------------------------------------------

_WITHOUT_HTTPX = """
import sys
sys.modules["httpx"] = None  # as if not installed
import genesys_token
assert "httpx" not in [m for m in sys.modules if sys.modules[m] is not None]
try:
    import genesys_token.integrations.httpx
except ImportError as exc:
    print(exc)
"""


def test_genesys_token_imports_without_httpx_and_the_adapter_names_the_extra():
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_HTTPX],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'genesys-token[httpx]'" in result.stdout


def test_repr_shows_no_token(manager: TokenManager):
    token = manager.get_token()
    assert token not in repr(GenesysHTTPXAuth(manager))


def test_failed_call_logs_its_correlation_id_once_without_query_or_token(
    emulator: GenesysEmulator,
    manager: TokenManager,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert client.get(ORG_PATH).status_code == 200  # not logged
        response = client.get("/api/v2/nowhere", params={"userId": "private-id-7"})
    assert response.status_code == 404
    sent = response.headers["ININ-Correlation-Id"]
    assert emulator.api_request_log[-1].correlation_id == sent
    warnings = [r for r in caplog.records if r.name.startswith("genesys_token.integrations")]
    assert [(r.levelno, r.getMessage()) for r in warnings] == [
        (
            logging.WARNING,
            f"API call GET 127.0.0.1:{emulator.port}/api/v2/nowhere failed: HTTP 404"
            f" (correlation id {sent})",
        )
    ]
    assert "private-id-7" not in caplog.text
    assert manager.token.access_token not in caplog.text


def test_replayed_401_logs_only_the_replays_answer(
    emulator: GenesysEmulator,
    manager: TokenManager,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client.get(ORG_PATH)
    emulator.inject(Fault(status=401, body={"code": "bad.credentials"}), path="/api/v2/", times=1)
    with caplog.at_level(logging.INFO, logger="genesys_token.integrations"):
        assert client.get(ORG_PATH).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
