"""examples/websocket_notifications.py against a local token-checking WebSocket server."""

from __future__ import annotations

import json
import logging
import runpy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import MakeManager
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from genesys_token.observability.events import TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT
from genesys_token.testing import GenesysEmulator

EXAMPLE = runpy.run_path(
    str(Path(__file__).resolve().parent.parent / "examples" / "websocket_notifications.py"),
    run_name="websocket_notifications",
)
NotificationListener = EXAMPLE["NotificationListener"]
INTERVAL = 0.05


class NotificationServer:
    """Like a Genesys notification channel: the bearer token is checked on connect (HEAD
    /api/v2/tokens/me against the emulator), then a message is published every 50 ms.
    ``?since=N`` resumes after message N, so a listener can prove it lost nothing."""

    def __init__(self, emulator: GenesysEmulator) -> None:
        self._check_url = f"{emulator.api_base_url}/api/v2/tokens/me"
        self._cond = threading.Condition()
        self._published = 0
        self._stop = threading.Event()
        self._kick = threading.Event()
        self.accepted: list[str] = []
        self.rejected: list[tuple[str, int]] = []
        self.refuse_with: int | None = None
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._authorize,
            logger=EXAMPLE["redacted_logger"]("websockets.server.test"),
        )
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._publish, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/notifications"

    def kick(self) -> None:
        """Drop the open connection with an error, as a load balancer might."""
        self._kick.set()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        for thread in self._threads:
            thread.join(5)

    def _publish(self) -> None:
        while not self._stop.wait(INTERVAL):
            with self._cond:
                self._published += 1
                self._cond.notify_all()

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        status = requests.head(self._check_url, headers={"Authorization": header}, timeout=5)
        code = self.refuse_with or status.status_code
        if code != 200:
            self.rejected.append((token, code))
            return connection.respond(code, "token refused\n")
        self.accepted.append(token)
        return None

    def _handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        query = parse_qs(urlsplit(connection.request.path).query)
        cursor = int(query.get("since", ["0"])[0])
        try:
            while not self._stop.is_set():
                with self._cond:
                    self._cond.wait_for(lambda c=cursor: self._published > c, timeout=0.2)
                    latest = self._published
                if self._kick.is_set():
                    self._kick.clear()
                    connection.close(1011, "dropped")
                    return
                while cursor < latest:
                    cursor += 1
                    connection.send(json.dumps({"seq": cursor}))
        except ConnectionClosed:
            pass


class Inbox:
    """What the listener received; waits for a count with a bound."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, message: Any) -> None:
        with self._cond:
            self.seqs.append(json.loads(message)["seq"])
            self._cond.notify_all()

    def url(self, base: str) -> str:
        with self._cond:
            return f"{base}?since={self.seqs[-1] if self.seqs else 0}"

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.seqs) >= count, timeout)


@pytest.fixture
def server(emulator: GenesysEmulator) -> Iterator[NotificationServer]:
    notification_server = NotificationServer(emulator)
    yield notification_server
    notification_server.close()


def _start(listener: Any) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def _listener(manager: Any, server: NotificationServer, inbox: Inbox) -> Any:
    return NotificationListener(
        manager,
        lambda: inbox.url(server.url),
        inbox,
        poll_interval=0.02,
        reconnect_delay=0.02,
    )


def test_rotation_waits_for_the_socket_then_it_reconnects_with_the_new_token(
    make_manager: MakeManager, server: NotificationServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")  # restored after the test
    manager = make_manager()
    inbox = Inbox()
    listener = _listener(manager, server, inbox)
    drain: list[tuple[str, bool]] = []
    for event in (TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT):
        manager.on(event, lambda record: drain.append((record["event_type"], listener.connected)))
    thread, stop = _start(listener)
    try:
        assert inbox.wait_for(5)
        old = manager.get_token()
        assert manager.in_flight_count == 1
        started = time.monotonic()
        new = manager.rotate(drain_timeout=5).access_token
        took = time.monotonic() - started
        after = len(inbox.seqs)
        assert inbox.wait_for(after + 5)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert drain == [(TOKEN_DRAIN_COMPLETE, False)]  # drained after the socket closed
    assert took < 2, f"rotate() took {took:.2f}s: it waited for the drain timeout"
    assert server.accepted == [old, new] and new != old
    assert listener.connections == 2
    assert inbox.seqs == list(range(1, len(inbox.seqs) + 1))  # no gap, no duplicate
    assert manager.in_flight_count == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Authorization" in logged  # websockets did log the handshake headers...
    assert old not in logged and new not in logged  # ...with the token masked


def test_socket_reconnects_with_the_new_token_before_rotate_returns(
    emulator: GenesysEmulator, make_manager: MakeManager, server: NotificationServer
):
    # Make-before-break: rotation_pending is set once the new token is in place, so the
    # reconnect gets it at once; the rotation is still running (inside its drain event)
    # when the new socket is accepted, and revokes the old token only after the old socket
    # closed.
    manager = make_manager()
    inbox = Inbox()
    listener = _listener(manager, server, inbox)
    reconnected_while_rotating: list[bool] = []

    def on_drained(record: dict[str, Any]) -> None:
        deadline = time.monotonic() + 5
        while len(server.accepted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        reconnected_while_rotating.append(len(server.accepted) == 2)

    manager.on(TOKEN_DRAIN_COMPLETE, on_drained)
    thread, stop = _start(listener)
    try:
        assert inbox.wait_for(3)
        old = manager.get_token()
        new = manager.rotate(drain_timeout=5, revoke_previous=True).access_token
        assert inbox.wait_for(len(inbox.seqs) + 3)
    finally:
        stop.set()
        thread.join(5)
    assert reconnected_while_rotating == [True]
    assert server.accepted == [old, new]
    assert emulator.revoked_tokens == {old}
    assert inbox.seqs == list(range(1, len(inbox.seqs) + 1))


def test_rejected_token_is_replaced_once_at_connect(
    emulator: GenesysEmulator, make_manager: MakeManager, server: NotificationServer
):
    manager = make_manager()
    revoked = manager.get_token()
    emulator.revoke(revoked)
    inbox = Inbox()
    thread, stop = _start(_listener(manager, server, inbox))
    try:
        assert inbox.wait_for(3)
    finally:
        stop.set()
        thread.join(5)
    assert server.rejected == [(revoked, 401)]
    assert server.accepted == [emulator.issued_tokens[1]]
    assert emulator.token_requests == 2


def test_dropped_connection_reconnects_and_resumes(
    make_manager: MakeManager, server: NotificationServer
):
    manager = make_manager()
    inbox = Inbox()
    listener = _listener(manager, server, inbox)
    thread, stop = _start(listener)
    try:
        assert inbox.wait_for(3)
        server.kick()
        assert inbox.wait_for(len(inbox.seqs) + 5)
    finally:
        stop.set()
        thread.join(5)
    assert listener.connections == 2
    assert server.accepted == [manager.get_token()] * 2
    assert inbox.seqs == list(range(1, len(inbox.seqs) + 1))


def test_refusals_back_off_and_stop_ends_the_listener(
    make_manager: MakeManager, server: NotificationServer
):
    server.refuse_with = 403  # not a token problem: no token replacement, just backoff
    manager = make_manager()
    inbox = Inbox()
    listener = _listener(manager, server, inbox)
    thread, stop = _start(listener)
    deadline = time.monotonic() + 5
    while len(server.rejected) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len(server.rejected) >= 3 and not server.accepted
    assert manager.in_flight_count == 0
    assert listener._failures >= 3


def test_closing_the_manager_ends_the_listener(
    make_manager: MakeManager, server: NotificationServer
):
    manager = make_manager()
    inbox = Inbox()
    thread, _stop = _start(_listener(manager, server, inbox))
    assert inbox.wait_for(2)
    manager.close()
    thread.join(5)
    assert not thread.is_alive()


def test_a_dead_url_ends_the_example_at_once_with_its_cause(
    emulator: GenesysEmulator,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 24: it used to retry in silence (no handler showed its warnings).
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", emulator.client_id)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", emulator.client_secret)
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_URL", emulator.token_url)
    monkeypatch.setenv("GENESYSCLOUD_API_URL", emulator.api_base_url)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="genesys_token.examples.websocket"):
        status = EXAMPLE["main"]([f"ws://127.0.0.1:{closed_port}/channels/abc?key=k"])
    assert status == 1
    assert time.monotonic() - started < 5.0
    err = capsys.readouterr().err
    assert f"cannot connect to ws://127.0.0.1:{closed_port} (1 attempt(s))" in err
    assert "ConnectionRefusedError" in err
    assert "channels/abc" not in err and "key=k" not in err
    assert f"connecting to ws://127.0.0.1:{closed_port}" in caplog.text
    assert emulator.token_requests == 1  # the token came; the URL was the problem
