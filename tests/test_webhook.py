"""Webhooks: background delivery that never delays a refresh, signatures, bounds, close."""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from conftest import HeldLookups, MakeManager, TricklingServer, eventually, join_fetch_threads

from genesys_token import InvalidClientError, TokenManager, TokenRequestError
from genesys_token.errors import ConfigurationError
from genesys_token.observability import webhook
from genesys_token.observability.events import (
    TOKEN_REFRESH_SUCCESS,
    WEBHOOK_DELIVERY_FAILED,
    make_record,
)
from genesys_token.observability.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    sign,
    verified_event_id,
    verify_signature,
    webhook_body,
)
from genesys_token.testing import Fault, GenesysEmulator

HOOK_SECRET = "hook-secret-0123456789"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers as scripted."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.hang = threading.Event()  # set: requests wait on `release` (at most 5 s)
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.cond:
                    receiver.requests.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.cond.notify_all()
                if receiver.hang.is_set():
                    receiver.release.wait(5)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} of {count} webhook requests arrived"
            )
            return list(self.requests)

    def bodies(self) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(body) for _, body in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def _record(n: int = 0, **data: Any) -> dict[str, Any]:
    return make_record(
        TOKEN_REFRESH_SUCCESS,
        client_id="client-id",
        token_fingerprint=f"fp{n}",
        metrics={"error_rate": 0.0},
        data={"n": n, **data},
    )


@pytest.fixture
def senders() -> Iterator[list[WebhookSender]]:
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        sender.close()


def _sender(senders: list[WebhookSender], url: str, **kwargs: Any) -> WebhookSender:
    failures: list[dict[str, Any]] = kwargs.pop("failures", [])
    sender = WebhookSender(url, on_failure=failures.append, **kwargs)
    senders.append(sender)
    return sender


def _workers(before: set[threading.Thread]) -> list[threading.Thread]:
    """Webhook worker threads started since ``before`` (earlier tests may leave some).

    Thread objects, not idents: a new worker may reuse the ident of one that has ended.
    """
    return [
        t
        for t in threading.enumerate()
        if t.name == "genesys-token-webhook" and t not in before and t.is_alive()
    ]


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


# -- the token path is never delayed --------------------------------------------------------


def test_hanging_receiver_does_not_delay_a_forced_refresh(
    receiver: Receiver, make_manager: MakeManager
):
    receiver.hang.set()
    manager = make_manager(
        webhook_url=receiver.url, webhook_secret=HOOK_SECRET, background_refresh=False
    )
    manager.get_token()
    receiver.wait_for(1)  # the worker is now stuck inside the 5-second request
    started = time.monotonic()
    for _ in range(3):
        manager.refresh(force=True)
    assert time.monotonic() - started < 4.0  # not one 5-second webhook wait, let alone 3
    receiver.release.set()
    requests = receiver.wait_for(4)
    for headers, body in requests:
        assert verify_signature(
            HOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER]
        )
        assert headers[EVENT_ID_HEADER] == json.loads(body)["event_id"]


def test_hanging_receiver_does_not_delay_the_background_refresh(
    emulator: GenesysEmulator, receiver: Receiver, make_manager: MakeManager
):
    emulator.token_ttl = 2  # refreshed in the background about every 1.4 s
    receiver.hang.set()
    manager = make_manager(webhook_url=receiver.url, webhook_secret=HOOK_SECRET)
    cond = threading.Condition()
    successes: list[float] = []

    def count(record: dict[str, Any]) -> None:
        with cond:
            successes.append(time.monotonic())
            cond.notify_all()

    manager.on(TOKEN_REFRESH_SUCCESS, count)
    started = time.monotonic()
    manager.get_token()
    receiver.wait_for(1)  # the worker is now stuck inside a 5-second request
    with cond:
        assert cond.wait_for(lambda: len(successes) >= 2, 3.0), "no background refresh"
    assert successes[1] - started < 3.0
    with receiver.cond:
        assert len(receiver.requests) == 1  # all the while the receiver was still hung
    assert emulator.is_token_valid(manager.get_token())
    receiver.release.set()


def test_records_arrive_in_order_as_json_with_event_id_and_no_signature_without_secret(
    receiver: Receiver, senders: list[WebhookSender]
):
    sender = _sender(senders, receiver.url)
    records = [_record(n) for n in range(5)]
    for record in records:
        sender.submit(record)
    requests = receiver.wait_for(5)
    assert [json.loads(body) for _, body in requests] == records
    for (headers, _), record in zip(requests, records, strict=True):
        assert headers[EVENT_ID_HEADER] == record["event_id"]
        assert headers["Content-Type"] == "application/json"
        assert SIGNATURE_HEADER not in headers
        assert TIMESTAMP_HEADER not in headers
    eventually(lambda: sender.delivered == 5)
    assert (sender.failed, sender.dropped, sender.pending) == (0, 0, 0)


# -- signatures -------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", 1700000000, body) == f"sha256={expected}"
    assert sign(b"s3cret", "1700000000", body) == f"sha256={expected}"


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "signature", "ok"),
    [
        ("k", "1000", b"{}", sign("k", 1000, b"{}"), True),
        ("k", 1000, "{}", sign("k", 1000, b"{}"), True),  # str body, int timestamp
        ("k", " 1000 ", b"{}", f" {sign('k', 1000, b'{}')} ", True),  # header whitespace
        ("other", "1000", b"{}", sign("k", 1000, b"{}"), False),  # wrong secret
        ("k", "1000", b"{ }", sign("k", 1000, b"{}"), False),  # body changed
        ("k", "1001", b"{}", sign("k", 1000, b"{}"), False),  # timestamp changed
        ("k", "1000", b"{}", sign("k", 1000, b"{}")[7:], False),  # no sha256= prefix
        ("k", None, b"{}", sign("k", 1000, b"{}"), False),
        ("k", "1000", b"{}", None, False),
        ("k", "soon", b"{}", sign("k", 1000, b"{}"), False),
        ("k", "1000", b"{}", "sha256=\u00e9", False),  # non-ASCII garbage
        # An unauthenticated sender's input is a refusal, never an exception (a 500).
        ("k", "9" * 400, b"{}", sign("k", 1000, b"{}"), False),
        ("k", "-" + "9" * 400, b"{}", sign("k", 1000, b"{}"), False),
        ("k", "\u0661\u0660\u0660\u0660", b"{}", sign("k", 1000, b"{}"), False),
        ("k", "1000", b"{}", "sha256=\udcff", False),
        ("k", "1000", "{\udcff}", sign("k", 1000, b"{}"), False),
        ("k", b"1000", b"{}", sign("k", 1000, b"{}").encode(), True),  # raw ASGI headers
        ("k", "1000", b"{}", 42, False),
        ("k", b"\xff", b"{}", sign("k", 1000, b"{}"), False),
    ],
)
def test_verify_signature(secret: str, timestamp: Any, body: Any, signature: Any, ok: bool):
    assert verify_signature(secret, timestamp, body, signature, now=1100) is ok


def test_verify_signature_rejects_replays_outside_the_tolerance():
    signature = sign("k", 1000, b"{}")
    assert verify_signature("k", "1000", b"{}", signature, now=1300)
    assert not verify_signature("k", "1000", b"{}", signature, now=1301)
    assert not verify_signature("k", "1000", b"{}", signature, now=699)
    assert verify_signature("k", "1000", b"{}", signature, tolerance=1000, now=1900)
    fresh = int(time.time())
    assert verify_signature("k", str(fresh), b"x", sign("k", fresh, b"x"))


def test_verified_event_id_is_the_signed_one_and_a_replay_with_a_new_id_gets_none(
    receiver: Receiver, senders: list[WebhookSender]
):
    sender = _sender(senders, receiver.url, secret=HOOK_SECRET)
    record = _record()
    sender.submit(record)
    [(headers, body)] = receiver.wait_for(1)

    def event_id_of(headers: dict[str, str], body: bytes) -> str | None:
        return verified_event_id(
            HOOK_SECRET,
            headers.get(TIMESTAMP_HEADER),
            body,
            headers.get(SIGNATURE_HEADER),
            headers.get(EVENT_ID_HEADER),
        )

    assert event_id_of(headers, body) == record["event_id"]
    # A captured request sent again within the tolerance: the signature still holds, but a
    # new X-Event-Id must not make it a new event to a receiver that deduplicates.
    replayed = {name: headers[name] for name in (TIMESTAMP_HEADER, SIGNATURE_HEADER)}
    replayed[EVENT_ID_HEADER] = str(uuid.uuid4())
    requests.post(receiver.url, data=body, headers=replayed, timeout=5).close()
    [_, (headers, body)] = receiver.wait_for(2)
    assert verify_signature(HOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert event_id_of(headers, body) is None


_SIGNED = b'{"event_id":"e-1","event_type":"X"}'


@pytest.mark.parametrize(
    ("body", "signature", "event_id", "expected"),
    [
        (_SIGNED, sign("k", 1000, _SIGNED), "e-1", "e-1"),
        (_SIGNED.decode(), sign("k", 1000, _SIGNED), " e-1 ", "e-1"),  # str body, whitespace
        (_SIGNED, sign("other", 1000, _SIGNED), "e-1", None),  # wrong secret
        (_SIGNED, None, "e-1", None),  # unsigned
        (_SIGNED, sign("k", 1000, _SIGNED), None, None),  # no X-Event-Id
        (_SIGNED, sign("k", 1000, _SIGNED), "e-2", None),  # another X-Event-Id
        (b"not json", sign("k", 1000, b"not json"), "e-1", None),
        (b'["e-1"]', sign("k", 1000, b'["e-1"]'), "e-1", None),  # not a record
        (b'{"event_id":1}', sign("k", 1000, b'{"event_id":1}'), "1", None),
        (b'{"event_id":""}', sign("k", 1000, b'{"event_id":""}'), "", None),
        (b"[" * 100_000, sign("k", 1000, b"[" * 100_000), "e-1", None),  # nested too deep
    ],
)
def test_verified_event_id(body: Any, signature: Any, event_id: Any, expected: Any):
    assert verified_event_id("k", "1000", body, signature, event_id, now=1100) == expected
    assert verified_event_id("k", "1000", body, signature, event_id, now=1401) is None  # stale


# -- retries, failures, no loops --------------------------------------------------------------


def test_5xx_is_retried_with_the_same_event_id_until_delivered(
    receiver: Receiver, senders: list[WebhookSender]
):
    receiver.statuses = [503, 500]
    failures: list[dict[str, Any]] = []
    sender = _sender(senders, receiver.url, backoff_base=0.01, failures=failures)
    record = _record()
    sender.submit(record)
    requests = receiver.wait_for(3)
    assert {headers[EVENT_ID_HEADER] for headers, _ in requests} == {record["event_id"]}
    eventually(lambda: sender.delivered == 1)
    assert sender.failed == 0
    assert failures == []


def test_4xx_is_not_retried_and_is_reported(receiver: Receiver, senders: list[WebhookSender]):
    receiver.statuses = [400]
    failures: list[dict[str, Any]] = []
    sender = _sender(senders, receiver.url, backoff_base=0.01, failures=failures)
    record = _record()
    sender.submit(record)
    eventually(lambda: len(failures) == 1)  # the hook runs just after the count goes up
    assert sender.failed == 1
    assert len(receiver.requests) == 1
    assert failures == [
        {
            "event_id": record["event_id"],
            "event_type": TOKEN_REFRESH_SUCCESS,
            "attempts": 1,
            "status": 400,
            "error": None,
        }
    ]


def test_unreachable_receiver_is_reported_without_its_url(senders: list[WebhookSender]):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook/path-secret-abcdef"
    failures: list[dict[str, Any]] = []
    sender = _sender(senders, url, max_attempts=2, backoff_base=0.01, failures=failures)
    sender.submit(_record())
    eventually(lambda: len(failures) == 1)  # the hook runs just after the count goes up
    assert sender.failed == 1
    assert failures[0]["error"] == "ConnectionError"
    assert failures[0]["status"] is None
    assert failures[0]["attempts"] == 2
    assert "path-secret" not in repr(failures) + repr(sender)


def test_a_failure_hook_that_raises_does_not_stop_the_worker(
    receiver: Receiver, senders: list[WebhookSender]
):
    def broken(data: dict[str, Any]) -> None:
        raise RuntimeError("hook broke")

    receiver.statuses = [400]
    sender = WebhookSender(receiver.url, on_failure=broken)
    senders.append(sender)
    sender.submit(_record(0))
    sender.submit(_record(1))
    eventually(lambda: sender.failed == 1 and sender.delivered == 1)


def test_the_webhook_url_shorthand_emits_delivery_failed_once_and_counts_in_metrics(
    receiver: Receiver, make_manager: MakeManager
):
    receiver.statuses = [400]
    manager = make_manager(webhook_url=receiver.url, background_refresh=False)
    failed = threading.Event()
    seen: list[dict[str, Any]] = []

    def on_failed(record: dict[str, Any]) -> None:
        seen.append(record)
        failed.set()

    manager.on(WEBHOOK_DELIVERY_FAILED, on_failed)
    manager.get_token()
    assert failed.wait(5)
    manager.refresh(force=True)  # a later event is still delivered
    bodies = [json.loads(body) for _, body in receiver.wait_for(2)]
    assert [b["event_type"] for b in bodies] == [TOKEN_REFRESH_SUCCESS] * 2
    assert seen[0]["data"]["status"] == 400
    assert seen[0]["data"]["event_id"] == bodies[0]["event_id"]
    eventually(lambda: manager.metrics()["webhook_deliveries"] == 1)
    metrics = manager.metrics()
    assert (metrics["webhook_failures"], metrics["webhook_dropped"]) == (1, 0)
    assert len(seen) == 1


def test_a_record_that_cannot_be_serialized_counts_as_failed(senders: list[WebhookSender]):
    sender = _sender(senders, "http://127.0.0.1:9/hook")
    record = _record()
    record["metrics"] = {(1, 2): "tuple keys are not JSON"}
    sender.submit(record)
    assert sender.failed == 1
    assert sender.pending == 0


# -- what is sent ------------------------------------------------------------------------------


def test_body_has_only_record_fields_and_redacted_data():
    record = _record(note="Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789")
    record["access_token"] = "not-a-record-field-value"
    body = json.loads(webhook_body(record))
    assert set(body) == {
        "timestamp",
        "event_id",
        "event_type",
        "client_id",
        "token_fingerprint",
        "metrics",
        "data",
    }
    assert "abcdefghijklmnopqrstuvwxyz" not in json.dumps(body)
    assert "not-a-record-field-value" not in json.dumps(body)


def test_no_token_or_secret_reaches_a_webhook(
    emulator: GenesysEmulator, receiver: Receiver, make_manager: MakeManager
):
    manager = make_manager(
        webhook_url=receiver.url,
        webhook_secret=HOOK_SECRET,
        background_refresh=False,
        max_retries=0,
    )
    manager.get_token()
    manager.refresh(force=True)
    manager.rotate(drain_timeout=0.5, revoke_previous=True)
    emulator.inject(Fault.server_error(503))
    with pytest.raises(TokenRequestError, match="503"):
        manager.refresh(force=True)
    manager.set_credentials("a-wrong-secret-value")
    with pytest.raises(InvalidClientError):
        manager.refresh(force=True)
    requests = receiver.wait_for(8)
    texts = [json.dumps(headers) + body.decode() for headers, body in requests]
    joined = "\n".join(texts)
    basic = f"{emulator.client_id}:{emulator.client_secret}".encode()
    secrets = [
        emulator.client_secret,
        "a-wrong-secret-value",
        HOOK_SECRET,
        base64.b64encode(basic).decode(),
        *emulator.issued_tokens,
    ]
    assert len(emulator.issued_tokens) >= 3
    for secret in secrets:
        assert secret not in joined
    types = [b["event_type"] for b in receiver.bodies()]
    assert "TOKEN_REVOKED" in types
    assert types.count("TOKEN_REFRESH_FAILURE") == 2


# -- bounds, worker, close, fork ----------------------------------------------------------------


def test_full_queue_drops_the_oldest_and_counts_it(
    receiver: Receiver, senders: list[WebhookSender]
):
    receiver.hang.set()
    sender = _sender(senders, receiver.url, queue_size=3)
    records = [_record(n) for n in range(10)]
    sender.submit(records[0])
    receiver.wait_for(1)  # the worker holds record 0 inside the hanging request
    for record in records[1:]:
        sender.submit(record)
    assert sender.dropped == 6
    assert sender.pending == 3
    receiver.release.set()
    receiver.wait_for(4)
    eventually(lambda: sender.delivered == 4)
    kept = [b["data"]["n"] for b in receiver.bodies()]
    assert kept == [0, 7, 8, 9]


def test_one_worker_however_many_threads_submit_at_once(
    receiver: Receiver, senders: list[WebhookSender]
):
    before = _threads()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the submitters as much as possible
    try:
        sender = _sender(senders, receiver.url, queue_size=1000)
        barrier = threading.Barrier(40)

        def submit(n: int) -> None:
            barrier.wait(5)
            for i in range(10):
                sender.submit(_record(n * 10 + i))

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        sys.setswitchinterval(switch)
    assert len(_workers(before)) == 1
    eventually(lambda: sender.delivered + sender.dropped == 400, 15.0)  # 400 POSTs, loaded
    assert sender.dropped == 0
    assert sorted(b["data"]["n"] for b in receiver.bodies()) == list(range(400))


def test_no_worker_thread_until_the_first_record(receiver: Receiver, make_manager: MakeManager):
    before = _threads()
    manager = make_manager(webhook_url=receiver.url, background_refresh=False)
    assert _workers(before) == []
    manager.get_token()
    receiver.wait_for(1)
    assert len(_workers(before)) == 1


def test_a_worker_that_cannot_start_leaves_records_queued_for_the_next_submit(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Under a pids limit Thread.start raises: submit() (documented never to raise) must not,
    # the records must wait in the queue, the next submit must start the worker, and
    # close() must not join a thread that never started.
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name == "genesys-token-webhook":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    stuck = WebhookSender(receiver.url, on_failure=lambda data: None)
    with caplog.at_level(logging.WARNING, logger="genesys_token.observability.webhook"):
        sender.submit(_record(0))
        sender.submit(_record(1))
        stuck.submit(_record(9))
    assert sender.pending == 2 and stuck.pending == 1
    assert len([r for r in caplog.records if "cannot start" in r.getMessage()]) == 2
    stuck.close()  # never started: nothing to join, the record is dropped
    assert stuck.dropped == 1 and stuck.pending == 0
    monkeypatch.setattr(threading.Thread, "start", real_start)
    sender.submit(_record(2))
    receiver.wait_for(3)
    sender.close()
    assert sender.delivered == 3 and sender.dropped == 0
    assert [b["data"]["n"] for b in receiver.bodies()] == [0, 1, 2]


def test_close_starts_a_worker_that_could_not_start_before_and_flushes(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name == "genesys-token-webhook":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    sender.submit(_record(0))
    sender.submit(_record(1))
    assert sender.pending == 2
    monkeypatch.setattr(threading.Thread, "start", real_start)  # threads can start again
    sender.close()  # no submit in between: close() itself must start the worker
    assert sender.delivered == 2 and sender.dropped == 0
    assert [b["data"]["n"] for b in receiver.bodies()] == [0, 1]


def test_close_flushes_the_queue(receiver: Receiver):
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    for n in range(20):
        sender.submit(_record(n))
    sender.close()
    assert sender.delivered == 20
    assert sender.pending == 0
    sender.close()  # idempotent
    sender.submit(_record(99))
    assert sender.dropped == 1


def test_close_interrupts_a_retry_backoff_at_once(receiver: Receiver):
    before = _threads()
    receiver.statuses = [503]
    failures: list[dict[str, Any]] = []
    # A backoff of several seconds: close() must not wait it out.
    sender = WebhookSender(receiver.url, on_failure=failures.append, backoff_base=30.0)
    sender.submit(_record())
    receiver.wait_for(1)
    [worker] = _workers(before)
    started = time.monotonic()
    sender.close()
    assert time.monotonic() - started < 1.0
    assert not worker.is_alive()
    assert sender.failed == 1
    assert failures[0]["status"] == 503
    assert failures[0]["attempts"] == 1  # the retry close() interrupted was never made


def test_close_gives_up_on_a_hanging_receiver_after_about_two_seconds(receiver: Receiver):
    before = _threads()
    receiver.hang.set()
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    for n in range(3):
        sender.submit(_record(n))
    receiver.wait_for(1)
    [worker] = _workers(before)
    _close_and_join(sender, worker)  # the request in progress is cut; the receiver still hangs
    assert (sender.dropped, sender.delivered, sender.failed) == (3, 0, 0)


def _close_and_join(sender: WebhookSender, worker: threading.Thread) -> None:
    """close() returns within ~2.5 s (flush budget, then the cut) and its worker ends with it."""
    started = time.monotonic()
    sender.close()
    assert time.monotonic() - started < 3.0
    worker.join(1.0)
    assert not worker.is_alive()


def test_an_answer_read_whole_before_close_cuts_counts_as_delivered(receiver: Receiver):
    # close() cuts the attempt in progress; one whose 200 is already read must stay
    # delivered (not dropped): the worker is held between the answer and its bookkeeping.
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    session = sender._get_session()
    real_post = session.post
    answered = threading.Event()
    cut = threading.Event()

    def post(*args: Any, **kwargs: Any) -> Any:
        response = real_post(*args, **kwargs)
        answered.set()
        cut.wait(5)
        return response

    session.post = post  # type: ignore[method-assign]
    sender.submit(_record())
    assert answered.wait(5)
    closing = threading.Thread(target=sender.close)
    closing.start()
    eventually(lambda: sender._cut.is_set())
    cut.set()
    closing.join(5)
    assert (sender.delivered, sender.failed, sender.dropped) == (1, 0, 0)


def test_abandon_ends_the_worker_without_another_attempt(receiver: Receiver):
    before = _threads()
    receiver.statuses = [503] * 5
    sender = WebhookSender(receiver.url, on_failure=lambda data: None, backoff_base=1.0)
    sender.submit(_record())
    receiver.wait_for(1)
    eventually(lambda: len(_workers(before)) == 1)
    [worker] = _workers(before)
    sender.abandon()  # what the finalizer of a dropped manager does
    worker.join(2.5)  # the backoff under way (1 s at most) is slept out, nothing more
    assert not worker.is_alive()
    assert len(receiver.requests) == 1
    assert sender.failed == 1


def test_close_cuts_a_delivery_still_connecting_as_soon_as_it_has_a_socket(
    receiver: Receiver, held_lookups: HeldLookups
):
    before = _threads()
    held_lookups.port = receiver.server.server_address[1]
    sender = WebhookSender(receiver.url, on_failure=lambda data: None)
    sender.submit(_record())
    assert held_lookups.waiting.wait(5)
    [worker] = _workers(before)
    sender.close()  # the flush budget passes, the cut finds no socket yet
    held_lookups.release.set()
    worker.join(1.0)
    assert not worker.is_alive()
    assert receiver.requests == []  # shut once connected: never sent
    assert (sender.delivered, sender.failed, sender.dropped) == (0, 0, 1)


def test_close_ends_the_worker_of_a_receiver_that_trickles_its_answer() -> None:
    # A byte every 50 ms: the read timeout never fires, only close() (or the watchdog) ends it.
    server = TricklingServer(gap=0.05)
    try:
        before = _threads()
        failures: list[dict[str, Any]] = []
        sender = WebhookSender(f"http://127.0.0.1:{server.port}/hook", on_failure=failures.append)
        sender.submit(_record())
        eventually(lambda: len(_workers(before)) == 1)
        [worker] = _workers(before)
        _close_and_join(sender, worker)
        assert (sender.dropped, sender.failed, failures) == (1, 0, [])
    finally:
        server.stop()


def test_an_attempt_on_a_trickling_receiver_is_cut_and_reported() -> None:
    server = TricklingServer(gap=0.05)
    try:
        failures: list[dict[str, Any]] = []
        sender = WebhookSender(
            f"http://127.0.0.1:{server.port}/hook",
            timeout=(0.2, 0.3),
            on_failure=failures.append,
            max_attempts=1,
        )
        started = time.monotonic()
        sender.submit(_record())
        eventually(lambda: sender.failed == 1, timeout=5.0)
        # Cut by the watchdog at 0.2 + 2 x 0.3 + 1 = 1.8 s, not left to trickle forever.
        assert 1.5 < time.monotonic() - started < 4.0
        assert failures[0]["status"] is None and failures[0]["error"] == "ReadTimeout"
        sender.close()
    finally:
        server.stop()


def test_after_fork_forgets_the_parents_queue_and_starts_its_own_worker(
    receiver: Receiver, senders: list[WebhookSender]
):
    before = _threads()
    receiver.hang.set()
    sender = _sender(senders, receiver.url)
    sender.submit(_record(0))
    receiver.wait_for(1)
    sender.submit(_record(1))
    assert sender.pending == 1
    sender.after_fork()  # what the fork handler calls in a forked child
    assert sender.pending == 0
    receiver.hang.clear()
    sender.submit(_record(2))
    receiver.wait_for(2)
    assert len(_workers(before)) == 2  # the "parent's" (still hanging) and the new one


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_delivers_through_its_own_worker(
    receiver: Receiver, make_manager: MakeManager
):
    manager = make_manager(webhook_url=receiver.url, background_refresh=False)
    manager.get_token()
    receiver.wait_for(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            manager.refresh(force=True)
            manager.close()  # flushes the child's queue before the child exits
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "child did not finish"
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status[1]) == 0
    assert len(receiver.wait_for(2)) == 2


def test_sender_keeps_its_url_out_of_its_repr():
    sender = WebhookSender("http://127.0.0.1:9/hook-secret-path", HOOK_SECRET)
    assert "hook-secret-path" not in repr(sender)
    assert HOOK_SECRET not in repr(sender)
    assert "delivered=0" in repr(sender)
    sender.close()


# -- the listener form ----------------------------------------------------------------------


def test_a_sender_attached_with_on_delivers_signed_records(
    receiver: Receiver, make_manager: MakeManager
):
    manager = make_manager(background_refresh=False)  # no webhook_url: the user's listener
    seen: list[dict[str, Any]] = []
    manager.on("*", seen.append)
    with WebhookSender(receiver.url, HOOK_SECRET, timeout=5) as sender:
        unsubscribe = manager.on("*", sender)
        manager.get_token()
        manager.refresh(force=True)
        requests = receiver.wait_for(2)
        unsubscribe()
        manager.refresh(force=True)  # no longer subscribed: not sent
    assert (sender.delivered, sender.failed, sender.dropped) == (2, 0, 0)
    assert len(receiver.requests) == 2
    ids = [
        verified_event_id(
            HOOK_SECRET,
            headers[TIMESTAMP_HEADER],
            body,
            headers[SIGNATURE_HEADER],
            headers[EVENT_ID_HEADER],
        )
        for headers, body in requests
    ]
    assert ids == [record["event_id"] for record in seen[:2]]
    assert manager.metrics()["webhook_deliveries"] == 0  # counts its own sender only


def test_calling_the_sender_is_submit_and_with_closes_it(receiver: Receiver):
    before = _threads()
    with WebhookSender(receiver.url) as sender:
        for n in range(3):
            sender(_record(n))
        [worker] = _workers(before)
    # Leaving the block flushed the queue and ended the worker.
    assert not worker.is_alive()
    assert [b["data"]["n"] for b in receiver.bodies()] == [0, 1, 2]
    assert (sender.delivered, sender.pending) == (3, 0)
    sender(_record(3))
    assert sender.dropped == 1  # closed


def test_a_failure_without_on_failure_is_counted_and_logged_once(
    receiver: Receiver, senders: list[WebhookSender], caplog: pytest.LogCaptureFixture
):
    receiver.statuses = [400]
    sender = WebhookSender(receiver.url)
    senders.append(sender)
    sender(_record())
    eventually(lambda: sender.failed == 1)
    sender.close()
    messages = [r.getMessage() for r in caplog.records if r.name == webhook.log.name]
    assert any("failed after 1 attempt(s): HTTP 400" in m for m in messages), messages
    assert not any("failure handler raised" in m for m in messages), messages


_BAD_ARGUMENTS = [
    ("url", {"url": "ftp://127.0.0.1/hook"}),
    ("url", {"url": "https:///no-host"}),
    ("url", {"url": "http://example.com/PATHSECRET-9f3k"}),  # plain http off loopback
    ("url", {"url": b"http://127.0.0.1/hook"}),
    ("secret", {"secret": ""}),
    ("secret", {"secret": f"{HOOK_SECRET}\n"}),
    ("secret", {"secret": 5}),
    ("timeout", {"timeout": -1}),
    ("timeout", {"timeout": (3.0,)}),
    ("timeout", {"timeout": "10"}),
    ("verify", {"verify": 1}),
    ("on_failure", {"on_failure": "log"}),
    ("queue_size", {"queue_size": 0}),
    ("queue_size", {"queue_size": 2.5}),
    ("queue_size", {"queue_size": True}),
    ("max_attempts", {"max_attempts": 0}),
    ("max_attempts", {"max_attempts": "3"}),
    ("backoff_base", {"backoff_base": -0.5}),
    ("backoff_base", {"backoff_base": 0}),
    ("backoff_base", {"backoff_base": float("nan")}),
    ("backoff_base", {"backoff_base": float("inf")}),
    ("backoff_base", {"backoff_base": True}),
]


@pytest.mark.parametrize(
    ("field", "bad"),
    _BAD_ARGUMENTS,
    ids=[f"{field}-{n}" for n, (field, _) in enumerate(_BAD_ARGUMENTS)],
)
def test_invalid_arguments_are_refused_naming_the_field_never_the_secret(
    field: str, bad: dict[str, Any]
):
    arguments: dict[str, Any] = {"url": "https://hooks.example.com/PATHSECRET-9f3k"}
    arguments["secret"] = HOOK_SECRET
    arguments.update(bad)
    with pytest.raises(ConfigurationError) as caught:
        WebhookSender(**arguments)
    error = caught.value
    assert error.field == field
    assert error.__cause__ is None and error.__context__ is None
    text = "\n".join([str(error), repr(error), repr(error.args), repr(vars(error))])
    assert HOOK_SECRET not in text
    assert "PATHSECRET" not in text
    # No frame of the library holds the secret in clear for an error tracker to capture.
    tb = error.__traceback__
    while tb is not None:
        half_built = tb.tb_frame.f_locals.get("self")
        if isinstance(half_built, WebhookSender):  # an error tracker shows it: repr must work
            assert repr(half_built).startswith("WebhookSender(delivered=0")
        if "/tests/" not in tb.tb_frame.f_code.co_filename:
            for name, value in tb.tb_frame.f_locals.items():
                if isinstance(value, str | dict | list | tuple):  # as test_settings looks
                    assert HOOK_SECRET not in repr(value), (tb.tb_frame.f_code.co_name, name)
        tb = tb.tb_next


def test_a_negative_backoff_base_is_refused_before_any_thread_or_retry(receiver: Receiver):
    # It used to be accepted, and failed only at the first retry, on the worker.
    before = _threads()
    with pytest.raises(ConfigurationError, match="backoff_base"):
        WebhookSender(receiver.url, backoff_base=-1.0)
    assert _workers(before) == []


def test_an_idle_worker_ends_and_a_dropped_sender_is_collected(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(webhook, "IDLE_WAIT", 0.1)
    before = _threads()
    sender = WebhookSender(receiver.url)
    sender(_record(0))
    receiver.wait_for(1)
    [first] = _workers(before)
    first.join(2.0)
    assert not first.is_alive()  # idle: it ended without close()
    sender(_record(1))  # the next record starts another
    receiver.wait_for(2)
    eventually(lambda s=sender: s.delivered == 2)
    [second] = _workers(before)
    second.join(2.0)
    assert not second.is_alive()
    ref = weakref.ref(sender)
    del sender
    gc.collect()
    assert ref() is None, "an idle sender dropped without close() was kept alive"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_user_attached_sender_delivers_in_a_forked_child(receiver: Receiver):
    receiver.hang.set()
    sender = WebhookSender(receiver.url)
    try:
        sender(_record(0))
        receiver.wait_for(1)  # the parent's worker is inside its request at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                sender(_record(1))
                sender.close()  # flushes the child's queue through the child's own worker
                code = 0 if sender.delivered == 1 else 3
            finally:
                os._exit(code)
        receiver.hang.clear()
        receiver.release.set()
        deadline = time.monotonic() + 10
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "child did not finish"
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status[1]) == 0
        assert sorted(b["data"]["n"] for b in receiver.bodies()) == [0, 1]
    finally:
        sender.close()


def test_webhook_without_a_secret_warns_once_per_process_without_the_url(
    receiver: Receiver, make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "_unsigned_warned", threading.Event())  # a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_manager(webhook_url=receiver.url, webhook_secret="s3cr3t", background_refresh=False)
        assert caught == []  # signed: nothing to warn about
        for _ in range(3):
            make_manager(webhook_url=receiver.url, background_refresh=False)
    unsigned = [w for w in caught if issubclass(w.category, webhook.UnsignedWebhookWarning)]
    assert len(unsigned) == 1, [str(w.message) for w in caught]
    assert "webhook_secret" in str(unsigned[0].message)
    assert receiver.url.split("//")[1] not in str(unsigned[0].message)
    assert unsigned[0].filename.endswith("conftest.py")  # points at the TokenManager(...) call


def test_a_sender_without_a_secret_warns_at_the_users_line(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook, "_unsigned_warned", threading.Event())  # a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        WebhookSender(receiver.url, HOOK_SECRET).close()
        assert caught == []
        WebhookSender(receiver.url).close()
    [warning] = caught
    assert issubclass(warning.category, webhook.UnsignedWebhookWarning)
    assert warning.filename == __file__
    assert receiver.url.split("//")[1] not in str(warning.message)


def test_the_answers_body_is_never_read() -> None:
    # Only the status counts. A receiver answering with an endless body (review of issue
    # 22, A3: 3 GiB read into memory) is let go at once, and the delivery counts.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n"
    server = TricklingServer(gap=0.01, head=head)
    try:
        sender = WebhookSender(
            f"http://127.0.0.1:{server.port}/hook",
            timeout=(1.0, 1.0),
            on_failure=lambda record: None,
            max_attempts=1,
        )
        started = time.monotonic()
        sender.submit(_record())
        eventually(lambda: sender.delivered + sender.failed == 1, timeout=5.0)
        assert (sender.delivered, sender.failed) == (1, 0)
        assert time.monotonic() - started < 1.0  # not read to the attempt's deadline
    finally:
        sender.close()
        server.stop()


def test_a_manager_with_a_webhook_is_collected_when_dropped(emulator: GenesysEmulator):
    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        webhook_url=f"{emulator.url}/hook",
        background_refresh=False,
    )
    manager.get_token()  # an event is queued: the webhook worker is running
    join_fetch_threads()
    ref = weakref.ref(manager)
    del manager
    gc.collect()
    assert ref() is None, "the webhook worker kept the manager alive"


def test_dropping_a_manager_does_not_wait_for_its_hanging_webhook(emulator: GenesysEmulator):
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)
        port = hanging.getsockname()[1]
        manager = TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            webhook_url=f"http://127.0.0.1:{port}/hook",
            background_refresh=False,
            timeout=(1, 5),
        )
        manager.get_token()  # queues an event; the worker's POST now hangs
        join_fetch_threads()
        ref = weakref.ref(manager)
        del manager
        started = time.monotonic()
        gc.collect()
        assert time.monotonic() - started < 1.0, "the collector waited on the webhook"
        assert ref() is None
