"""Background webhook delivery of event records, signed when a secret is set.

:class:`WebhookSender` is an event listener: ``manager.on("*", WebhookSender(url, secret))``
(the ``webhook_url``/``webhook_secret`` settings are the shorthand: the manager then makes
and closes one of its own). Calling it only queues the record: one daemon worker thread
POSTs the records, so a slow or broken receiver never delays a token refresh. The queue is
bounded (the oldest record is dropped when it is full); each record is tried a few times
with capped backoff; ``close()`` flushes for at most ~2 seconds.

What is sent
    ``POST <url>`` with ``Content-Type: application/json``, the body being the event
    record (``timestamp``, ``event_id``, ``event_type``, ``client_id``,
    ``token_fingerprint``, ``metrics``, ``data``) as compact JSON with sorted keys. Records
    carry a token's fingerprint, never the token; strings in ``data`` are redacted.
    ``X-Event-Id`` repeats the record's ``event_id``: the same id may arrive twice (a
    retry after a lost answer), so receivers should deduplicate, on the body's
    ``event_id`` as :func:`verified_event_id` returns it, never on the header alone: the
    signature covers the body, not the header, so a replay within the tolerance with a
    new ``X-Event-Id`` would pass as a new event.

What is signed (only when a secret is set: ``secret`` or ``webhook_secret``)
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
import math
import os
import random
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import requests

from ..core.fork import register_fork_handler
from ..core.threads import DaemonStarter
from ..credentials import SecretValue, checked_value, hide_text
from ..errors import ConfigurationError
from ..http.connections import attempt_bound, deadline, deadline_session
from ..http.retry_policy import EQUAL_JITTER, Backoff
from ..regions import check_url
from ..settings import DEFAULT_TIMEOUT, Settings
from .events import RECORD_FIELDS, WEBHOOK_DELIVERY_FAILED, Record, redact_value

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
#: The worker ends once the queue has been empty this long (the next record starts another):
#: a sender no one uses holds no thread, and one dropped without close() can be collected.
IDLE_WAIT = 1.0
#: Statuses worth another attempt; other 4xx answers mean the receiver refuses the record.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Default receiver-side tolerance for the signature timestamp (seconds, either way).
DEFAULT_TOLERANCE = 300


class UnsignedWebhookWarning(UserWarning):
    """A webhook sender has no secret (``webhook_url`` without ``webhook_secret``, or
    ``WebhookSender(url)`` alone): deliveries go out unsigned.

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
    made the TokenManager or the WebhookSender), however deep the package's own frames are."""
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
        "a webhook has no secret (webhook_url without webhook_secret, or WebhookSender "
        "without secret): deliveries are not signed, so the receiver cannot tell them from "
        "forged ones; set webhook_secret or pass a secret",
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


def _checked_secret(value: object) -> SecretValue | None:
    """``value`` (already hidden) if it is a usable secret or None; the message names the
    ``secret`` argument, never the value."""
    if value is None:
        return None
    if not isinstance(value, SecretValue):
        raise ConfigurationError(
            f"secret must be a string, not {type(value).__name__}", field="secret"
        )
    return checked_value(value, "secret")


def _checked_count(name: str, value: object) -> int:
    """``value`` if it is an ``int`` >= 1 (not a bool), else ConfigurationError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{name} must be an integer, not {type(value).__name__}", field=name
        )
    if value < 1:
        raise ConfigurationError(f"{name} must be >= 1, got {value!r}", field=name)
    return value


def _checked_backoff_base(value: object) -> float:
    """``value`` if it is a finite number > 0: a negative or NaN base would only fail (or
    spin) at the first retry, on the worker, long after the mistake was made."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"backoff_base must be a number, not {type(value).__name__}", field="backoff_base"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"backoff_base must be a finite number > 0, got {value!r}", field="backoff_base"
        )
    return float(value)


class WebhookSender:
    """A listener that delivers event records to a URL from one background worker.

    Attach it to one manager or several; calling it (or :meth:`submit`) only queues the
    record, so a slow or broken receiver never delays a token refresh::

        with WebhookSender("https://hooks.example.com/genesys", secret) as sender:
            unsubscribe = manager.on("*", sender)
            ...

    The worker starts with the first record and ends once the queue has stayed empty for
    ``IDLE_WAIT`` seconds (the next record starts another). ``close()`` (or leaving the
    ``with`` block) flushes what is queued for at most ~2 seconds. The ``webhook_url`` and
    ``webhook_secret`` settings of a manager are the shorthand for a sender of its own.

    Args:
        url: Where records are POSTed: an absolute ``https`` URL (plain ``http`` only to a
            loopback host), as the ``webhook_url`` setting. Never shown in a repr, log line
            or error: its path often is a credential itself.
        secret: Signs each body (see the module documentation), a ``str`` or a
            :class:`~genesys_token.credentials.SecretValue`; kept hidden. Without one the
            deliveries go out unsigned (an :class:`UnsignedWebhookWarning`, once per process).
        timeout: ``(connect, read)`` seconds, or one number for both, as the manager's.
        verify: TLS verification: True, False or a CA bundle path, as the manager's.
        on_failure: Called from the worker with ``{"event_id", "event_type", "attempts",
            "status", "error"}`` when a record could not be delivered (a manager's own
            sender emits ``WEBHOOK_DELIVERY_FAILED`` with it). Without one, failures are
            logged and counted in :attr:`failed`.
        queue_size: Records kept waiting at most (the oldest is dropped beyond it), >= 1.
        max_attempts: Tries per record, >= 1.
        backoff_base: First backoff in seconds, > 0 (doubles per retry, capped at
            ``BACKOFF_MAX``, jittered).

    Raises:
        ConfigurationError: An argument is invalid; ``field`` names it (the message never
            holds the secret or the URL's path).
    """

    def __init__(
        self,
        url: str,
        secret: str | SecretValue | None = None,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        on_failure: Callable[[dict[str, Any]], None] | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
    ) -> None:
        # Hidden first: whatever error follows, no frame of ours holds it in clear.
        secret = hide_text(secret)  # type: ignore[assignment]
        # State first: the repr of a sender whose arguments are refused (an error tracker
        # shows the frame's ``self``) must work.
        self._closed = False
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._new_state()
        self._url = check_url(url, field="url")
        self._secret = _checked_secret(secret)
        # The manager's own checks (Settings validates them): one rule, not two.
        checked = Settings(timeout=timeout, verify=verify)
        self._timeout = checked.timeout
        self._verify = checked.verify
        if on_failure is not None and not callable(on_failure):
            raise ConfigurationError(
                f"on_failure must be callable, not {type(on_failure).__name__}",
                field="on_failure",
            )
        self._on_failure = on_failure
        self._queue_size = _checked_count("queue_size", queue_size)
        self._max_attempts = _checked_count("max_attempts", max_attempts)
        self._backoff_policy = Backoff(
            _checked_backoff_base(backoff_base), BACKOFF_MAX, EQUAL_JITTER
        )
        if self._secret is None:
            _warn_unsigned_once()
        # A forked child renews this sender's lock, queue and worker (held weakly), whoever
        # attached it: a parent's worker may have held the lock at the fork.
        register_fork_handler(self)

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
        self._starter = DaemonStarter(
            log, "the webhook worker thread", "records stay queued until a thread can start"
        )
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

    # -- the listener's side ----------------------------------------------------------------

    def __call__(self, record: Record) -> None:
        """Queue ``record`` (the listener form of :meth:`submit`: ``manager.on("*", sender)``).

        Args:
            record: An event record.
        """
        self.submit(record)

    def submit(self, record: Record) -> None:
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
                # None when it cannot start (a pids limit): the record stays queued and the
                # next submit tries again; submit() never raises.
                self._worker = self._starter.start(self._run, "genesys-token-webhook")

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
            if self._worker is None and self._queue:
                # Its start failed before (a pids limit): one more try, to flush the queue.
                self._worker = self._starter.start(self._run, "genesys-token-webhook")
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

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's worker, queue and connections.

        The parent delivers what it queued; the child starts its own worker on its next
        event. A sender closed before the fork stays closed. Called for every sender by the
        library's fork handler; calling it again is harmless.
        """
        self._new_state()

    def _after_fork_in_child(self) -> None:
        self.after_fork()

    # -- the worker -------------------------------------------------------------------------

    def _next(self) -> tuple[str, str, bytes] | None:
        """The next record to send, or None when the worker should end: closed, or idle for
        ``IDLE_WAIT`` (then it forgets itself, under the lock, so the next submit starts a
        new worker)."""
        with self._cond:
            if not self._queue and not (self._closed or self._stop.is_set()):
                self._cond.wait(IDLE_WAIT)
            if self._stop.is_set():
                return None
            if not self._queue:
                if not self._closed and self._worker is threading.current_thread():
                    self._worker = None
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._deliver(*item)
            except Exception:  # one bad record must not end deliveries for good
                log.exception("webhook worker error")
        with self._cond:
            # Not a worker that ended idle (it forgot itself): another may use the session.
            if (
                self._closed
                and self._session is not None
                and self._worker is threading.current_thread()
            ):
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
        return self._backoff_policy.delay(attempt - 1, random.random)

    def _report_failure(self, data: dict[str, Any]) -> None:
        if self._on_failure is None:
            return  # logged and counted already
        try:
            self._on_failure(data)
        except Exception:  # the worker must outlive a broken failure hook
            log.exception("webhook failure handler raised")

    def __repr__(self) -> str:
        return (
            f"WebhookSender(delivered={self._delivered}, failed={self._failed}, "
            f"dropped={self._dropped}, pending={len(self._queue)}, closed={self._closed})"
        )
