"""Background webhook delivery of event records, signed when a secret is set.

The manager hands every event to :meth:`WebhookSender.submit`, which only queues it: one
daemon worker thread POSTs the records, so a slow or broken receiver never delays a token
refresh. The queue is bounded (the oldest record is dropped when it is full); each record
is tried a few times with capped backoff; ``close()`` flushes for at most ~2 seconds.

What is sent
    ``POST webhook_url`` with ``Content-Type: application/json``, the body being the event
    record (``timestamp``, ``event_id``, ``event_type``, ``client_id``,
    ``token_fingerprint``, ``metrics``, ``data``) as compact JSON with sorted keys. Records
    carry a token's fingerprint, never the token; strings in ``data`` are redacted.
    ``X-Event-Id`` repeats the record's ``event_id``: the same id may arrive twice (a
    retry after a lost answer), so receivers should deduplicate, on the body's
    ``event_id`` as :func:`verified_event_id` returns it, never on the header alone: the
    signature covers the body, not the header, so a replay within the tolerance with a
    new ``X-Event-Id`` would pass as a new event.

What is signed (only when ``webhook_secret`` is set)
    ``X-Genesys-Token-Timestamp: <unix seconds>`` (an integer, the time of this attempt)
    and ``X-Genesys-Token-Signature: sha256=<hex>`` where ``<hex>`` is the lower-case hex
    HMAC-SHA256, keyed with the UTF-8 bytes of the secret, over the bytes::

        <timestamp> + b"." + <raw request body>

    i.e. ``hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)``. Verify
    against the raw body bytes as received (not re-serialized JSON), and reject stale
    timestamps so a captured request cannot be replayed later. :func:`verified_event_id`
    does both and gives the signed ``event_id`` to deduplicate on (within the tolerance,
    a captured request can still be sent again: the id tells it from a new event)::

        from genesys_token.observability.webhook import verified_event_id

        def handle(request):
            event_id = verified_event_id(
                SECRET,
                request.headers.get("X-Genesys-Token-Timestamp"),
                request.body,  # raw bytes
                request.headers.get("X-Genesys-Token-Signature"),
                request.headers.get("X-Event-Id"),
            )
            if event_id is None:
                return 401
            if seen_before(event_id):  # keep ids for at least the tolerance (300 s)
                return 200

    :func:`verify_signature` checks the signature and the timestamp only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import requests

from ..errors import ConfigurationError
from ..http.connections import attempt_bound, deadline, deadline_session
from ..http.retry_policy import EQUAL_JITTER, Backoff
from ..settings import Config
from .events import RECORD_FIELDS, WEBHOOK_DELIVERY_FAILED, redact_value

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Genesys-Token-Signature"
TIMESTAMP_HEADER = "X-Genesys-Token-Timestamp"
EVENT_ID_HEADER = "X-Event-Id"

#: Records waiting for delivery; beyond this the oldest is dropped (and counted): a dead
#: receiver must not grow memory without bound.
DEFAULT_QUEUE_SIZE = 1000
#: Attempts per record (the first try plus retries).
DEFAULT_MAX_ATTEMPTS = 3
#: Backoff between attempts: base * 2**n with jitter, capped; bounded so a dead receiver
#: costs a record at most a few seconds of the worker's time.
DEFAULT_BACKOFF_BASE = 0.5
BACKOFF_MAX = 5.0
#: close() lets the worker flush the queue this long before stopping it.
CLOSE_FLUSH_TIMEOUT = 2.0
#: How long close() waits for the stopped worker (it may be inside one HTTP call).
CLOSE_JOIN_GRACE = 0.5
#: The idle worker re-checks its stop flag at least this often.
IDLE_WAIT = 1.0
#: Statuses worth another attempt; other 4xx answers mean the receiver refuses the record.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Default receiver-side tolerance for the signature timestamp (seconds, either way).
DEFAULT_TOLERANCE = 300


class UnsignedWebhookWarning(UserWarning):
    """A webhook URL is set without ``webhook_secret``: deliveries go out unsigned.

    Issued once per process (like urllib3's ``InsecureRequestWarning``, a warning and not a
    log line, so that it shows while logging is unconfigured). Silence it with
    ``warnings.simplefilter("ignore", UnsignedWebhookWarning)``.
    """


#: Set once the unsigned-webhook warning was issued: once per process, not per manager (a
#: pool of a hundred managers must not print it a hundred times).
_unsigned_warned = threading.Event()
_unsigned_lock = threading.Lock()
#: The package's directory (genesys_token/): the warning points at the first frame outside it.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel of the first caller outside this package (the line that
    made the TokenManager), however deep the package's own frames are."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _warn_unsigned_once() -> None:
    with _unsigned_lock:
        if _unsigned_warned.is_set():
            return
        _unsigned_warned.set()
    # Never the URL: its path is often a credential.
    warnings.warn(
        "webhook_url is set without webhook_secret: webhook deliveries are not signed, so "
        "the receiver cannot tell them from forged ones; set webhook_secret",
        UnsignedWebhookWarning,
        stacklevel=_user_stacklevel(),
    )


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``.

    Args:
        secret: The shared webhook secret.
        timestamp: Unix seconds, as sent in ``X-Genesys-Token-Timestamp``.
        body: The raw request body.

    Returns:
        ``"sha256=<hex HMAC-SHA256 of f'{timestamp}.' + body>"``.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify_signature(
    secret: str | bytes,
    timestamp: str | bytes | int | None,
    body: bytes | str,
    signature: str | bytes | None,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """Check a webhook request's signature and freshness (for receivers).

    Args:
        secret: The shared webhook secret.
        timestamp: The ``X-Genesys-Token-Timestamp`` header value.
        body: The raw request body, exactly as received.
        signature: The ``X-Genesys-Token-Signature`` header value (``sha256=<hex>``).
        tolerance: Largest accepted difference, in seconds, between ``timestamp`` and now.
        now: The current Unix time (default: ``time.time()``).

    Returns:
        True only if the signature matches and the timestamp is within ``tolerance``;
        False for a missing or malformed header, never an exception.
    """
    if timestamp is None or signature is None:
        return False
    try:
        # Everything here comes from an unauthenticated sender: a 400-digit timestamp
        # (OverflowError against a float), a lone surrogate (UnicodeEncodeError) and the
        # like are a refusal, not an exception (a 500) in the receiver.
        text = timestamp.decode("ascii") if isinstance(timestamp, bytes) else str(timestamp)
        text = text.strip()
        if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= 20):
            return False
        stamp = int(text)
        current = time.time() if now is None else now
        if abs(current - stamp) > tolerance:
            return False
        raw = body.encode("utf-8") if isinstance(body, str) else body
        expected = sign(secret, stamp, raw)
        # Raw header bytes (ASGI) are taken as they are; anything else not text is refused.
        given = signature.strip() if isinstance(signature, bytes) else signature.strip().encode()
    except (ValueError, OverflowError, TypeError, AttributeError):  # UnicodeError: ValueError
        return False
    return hmac.compare_digest(expected.encode("ascii"), given)


def verified_event_id(
    secret: str | bytes,
    timestamp: str | bytes | int | None,
    body: bytes | str,
    signature: str | bytes | None,
    event_id: str | None,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> str | None:
    """The signed ``event_id`` of a webhook request, for receivers to deduplicate on.

    ``X-Event-Id`` is not signed; the body, which holds the same ``event_id``, is. A
    receiver that deduplicates on the header accepts a replay (within the tolerance) that
    changed only the header: deduplicate on what this returns instead.

    Args:
        secret: The shared webhook secret.
        timestamp: The ``X-Genesys-Token-Timestamp`` header value.
        body: The raw request body, exactly as received.
        signature: The ``X-Genesys-Token-Signature`` header value (``sha256=<hex>``).
        event_id: The ``X-Event-Id`` header value.
        tolerance: Largest accepted difference, in seconds, between ``timestamp`` and now.
        now: The current Unix time (default: ``time.time()``).

    Returns:
        The body's ``event_id`` when :func:`verify_signature` accepts the request and the
        ``X-Event-Id`` header equals it; None otherwise (a missing or different header, a
        body that is not an event record), never an exception.
    """
    if not verify_signature(secret, timestamp, body, signature, tolerance, now=now):
        return None
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        return None
    signed = record.get("event_id") if isinstance(record, dict) else None
    if not isinstance(signed, str) or not signed or not isinstance(event_id, str):
        return None
    return signed if event_id.strip() == signed else None


def webhook_body(record: Mapping[str, Any]) -> bytes:
    """The JSON body for ``record``: its known fields only, strings in ``data`` redacted.

    Args:
        record: An event record.

    Returns:
        Compact UTF-8 JSON with sorted keys.
    """
    payload = {name: record.get(name) for name in RECORD_FIELDS}
    payload["data"] = redact_value(payload["data"] or {})
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


class WebhookSender:
    """Delivers event records to ``settings.webhook_url`` from one background worker.

    Args:
        settings: ``webhook_url``, ``webhook_secret``, ``timeout`` and ``verify`` are used.
        on_failure: Called from the worker with ``{"event_id", "event_type", "attempts",
            "status", "error"}`` when a record could not be delivered; the manager emits
            ``WEBHOOK_DELIVERY_FAILED`` with it.
        queue_size: Records kept waiting at most (the oldest is dropped beyond it).
        max_attempts: Tries per record.
        backoff_base: First backoff in seconds (doubles per retry, capped, jittered).

    Raises:
        ConfigurationError: ``settings`` has no ``webhook_url``.
    """

    def __init__(
        self,
        settings: Config,
        *,
        on_failure: Callable[[dict[str, Any]], None],
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
    ) -> None:
        if not settings.webhook_url:
            raise ConfigurationError("WebhookSender needs a webhook_url", field="webhook_url")
        self._url = settings.webhook_url
        self._secret = settings.webhook_secret
        if self._secret is None:
            _warn_unsigned_once()
        self._timeout = settings.timeout
        self._verify = settings.verify
        self._on_failure = on_failure
        self._queue_size = max(1, queue_size)
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base
        self._closed = False
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._new_state()

    def _new_state(self) -> None:
        """Locks, queue and worker of this process (fresh again in a forked child)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[tuple[str, str, bytes]] = deque()
        # Closing ends retries (backoff waits on it) but not the flush of what is queued;
        # stop, set once the flush budget is spent, ends the worker.
        self._closing = threading.Event()
        self._stop = threading.Event()
        self._flush_deadline: float | None = None
        # Set by close() once its flush budget is spent: the delivery in progress then lets
        # its connection go (its own thread sees this between reads).
        self._cut = threading.Event()
        self._worker: threading.Thread | None = None
        self._session: requests.Session | None = None

    # -- counters -------------------------------------------------------------------------

    @property
    def delivered(self) -> int:
        """Records the receiver accepted (2xx)."""
        return self._delivered

    @property
    def failed(self) -> int:
        """Records given up on after every attempt (or that could not be serialized)."""
        return self._failed

    @property
    def dropped(self) -> int:
        """Records discarded unsent: the queue was full, or the sender was closed."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Records waiting in the queue."""
        return len(self._queue)

    # -- the manager's side -----------------------------------------------------------------

    def submit(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for delivery; returns at once and never raises.

        ``WEBHOOK_DELIVERY_FAILED`` records are not sent: a failing receiver would
        otherwise be sent news of its own failure, forever.

        Args:
            record: An event record.
        """
        event_type = str(record.get("event_type"))
        if event_type == WEBHOOK_DELIVERY_FAILED:
            return
        try:
            body = webhook_body(record)
        except (TypeError, ValueError) as exc:
            with self._lock:
                self._failed += 1
            log.warning("webhook record %s not serializable: %s", event_type, type(exc).__name__)
            return
        item = (str(record.get("event_id")), event_type, body)
        with self._cond:
            if self._closed:
                self._dropped += 1
                return
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(item)
            self._cond.notify()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="genesys-token-webhook", daemon=True
                )
                self._worker.start()

    def close(self) -> None:
        """Deliver what is queued for at most ~2 seconds, then stop the worker. Idempotent.

        Queued records get one more attempt each, without retries or backoff; what is left
        after ~2 seconds is dropped (and counted), and a request still in progress then lets
        its connection go within a quarter of a second (its record counts as dropped too):
        the worker ends with close().
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._flush_deadline = time.monotonic() + CLOSE_FLUSH_TIMEOUT
            worker = self._worker
            self._closing.set()
            self._cond.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(CLOSE_FLUSH_TIMEOUT)
        self._stop.set()
        self._cut.set()
        with self._cond:
            self._dropped += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(CLOSE_JOIN_GRACE)
        session = self._session
        if session is not None and (worker is None or not worker.is_alive()):
            session.close()

    def abandon(self) -> None:
        """Stop without flushing, taking no lock and joining nothing.

        For a finalizer of a manager that was dropped without ``close()``: the collector may
        run in any thread, this worker included, at any moment, even while it holds a lock.
        The worker ends at its next idle wake-up, or once the delivery in progress ends: its
        attempt ends by its deadline (connect + 2 x read timeout + 1 s) and no retry follows
        (a backoff already under way is slept out: ``BACKOFF_MAX`` at most).
        """
        self._closed = True
        self._stop.set()
        # Wake the idle worker now if the lock is free; never wait for it (see above): when
        # it is taken, the worker sees the flags at its next wake-up (IDLE_WAIT at most).
        lock = self._lock
        if lock.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                lock.release()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's worker, queue and connections.

        The parent delivers what it queued; the child starts its own worker on its next
        event. A sender closed before the fork stays closed.
        """
        self._new_state()

    # -- the worker -------------------------------------------------------------------------

    def _next(self) -> tuple[str, str, bytes] | None:
        """The next record to send, or None when the worker should end."""
        with self._cond:
            while not self._queue:
                if self._closed or self._stop.is_set():
                    return None
                self._cond.wait(IDLE_WAIT)
            if self._stop.is_set():
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._deliver(*item)
            except Exception:  # one bad record must not end deliveries for good
                log.exception("webhook worker error")
        with self._cond:
            if self._closed and self._session is not None:
                self._session.close()

    def _deliver(self, event_id: str, event_type: str, body: bytes) -> None:
        status: int | None = None
        error: str | None = None
        attempt = 0
        while attempt < self._max_attempts:
            if attempt > 0 and (
                self._closing.wait(self._backoff(attempt + 1)) or self._stop.is_set()
            ):
                break  # closing: flush the rest of the queue instead of retrying this one
            attempt += 1
            status, error = self._post(event_id, body)
            if status is not None and 200 <= status < 300:
                with self._lock:
                    self._delivered += 1
                return
            if status is not None and status not in RETRY_STATUSES:
                break
        flush = self._flush_deadline
        # An attempt started during close() is bounded by what is left of its flush budget;
        # ended by that bound (before close() sets _stop) it is given up too, not failed.
        cut_by_close = flush is not None and time.monotonic() >= flush - 0.05
        with self._lock:
            if status is None and (self._stop.is_set() or cut_by_close):
                self._dropped += 1  # ended by close(): given up, not refused by the receiver
                return
            self._failed += 1
        log.warning(
            "webhook delivery of %s failed after %d attempt(s): %s",
            event_type,
            attempt,
            error or f"HTTP {status}",
            extra={"event_id": event_id, "status": status, "attempts": attempt},
        )
        self._report_failure(
            {
                "event_id": event_id,
                "event_type": event_type,
                "attempts": attempt,
                "status": status,
                "error": error,
            }
        )

    def _post(self, event_id: str, body: bytes) -> tuple[int | None, str | None]:
        """One attempt; returns (status, None) for an answer, (None, error name) otherwise."""
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event_id}
        if self._secret is not None:
            stamp = int(time.time())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign(self._secret.reveal(), stamp, body)
        timeout, bound = self._timeout_now()
        try:
            # A total deadline kept by this thread as it reads: the read timeout bounds each
            # socket read, not an answer trickled a byte at a time.
            with deadline(bound, self._cut):  # close() ends it once its budget is spent
                # stream=True: the status is all we need; a receiver answering with an
                # endless body is never read (it was read whole into memory).
                response = self._get_session().post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
                response.close()
        except requests.RequestException as exc:
            # The type only: messages of connection errors repeat the URL, and webhook URLs
            # often carry a secret in their path.
            return None, type(exc).__name__
        return response.status_code, None

    def _timeout_now(self) -> tuple[tuple[float, float], float]:
        """The configured timeout and the attempt's total deadline, both shortened to what
        is left of close()'s flush budget."""
        bound = attempt_bound(self._timeout)
        flush = self._flush_deadline
        if flush is None:
            return self._timeout, bound
        left = max(0.05, flush - time.monotonic())
        return (min(self._timeout[0], left), min(self._timeout[1], left)), min(bound, left)

    def _get_session(self) -> requests.Session:
        if self._session is None:
            session = deadline_session()
            session.verify = self._verify
            self._session = session
        return self._session

    def _backoff(self, attempt: int) -> float:
        """The wait before ``attempt`` (2 for the first retry): equal jitter, capped."""
        backoff = Backoff(self._backoff_base, BACKOFF_MAX, EQUAL_JITTER)
        return backoff.delay(attempt - 1, random.random)

    def _report_failure(self, data: dict[str, Any]) -> None:
        try:
            self._on_failure(data)
        except Exception:  # the worker must outlive a broken failure hook
            log.exception("webhook failure handler raised")

    def __repr__(self) -> str:
        return (
            f"WebhookSender(delivered={self._delivered}, failed={self._failed}, "
            f"dropped={self._dropped}, pending={len(self._queue)}, closed={self._closed})"
        )
