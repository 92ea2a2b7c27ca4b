"""TokenManager: token state, single-flight refresh, the refresh timer, rotation and forks.

Locks, from outermost to innermost (never taken in the other order):

* ``_rotate_lock`` serializes rotations.
* ``_lock`` (an RLock, with ``_cond``) guards the refresh flight: who is fetching and what
  came of it. It is never held during network I/O.
* ``_gate.lock`` (see ``_gate.py``) guards the in-flight count and the rotation gate.

The hot path, :meth:`TokenManager.get_token` with a valid token, reads ``_current`` (one
immutable object, replaced atomically) and a flag, and takes none of them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from ._gate import InFlight, UseGate
from ._lifecycle import register_fork_handler, run_timer
from ._redact import excerpt
from .config import Credentials, Settings, settings_from_env
from .errors import (
    DrainTimeoutError,
    GenesysTokenError,
    ManagerClosedError,
    RateLimitedError,
    TokenRequestError,
    TokenValidationError,
)
from .events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_EXPIRED,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REVOKED,
    TOKEN_ROTATION_STARTED,
    WEBHOOK_DELIVERY_FAILED,
    EventBus,
    Listener,
    make_record,
)
from .metrics import Metrics
from .stores._seal import Sealer
from .stores.base import MemoryStore, TokenStore, store_key
from .token import Token, refresh_lead
from .transport import SYSTEM_CLOCK, Clock, RetryNotice, TokenEndpoint
from .validation import TokenValidator

if TYPE_CHECKING:
    from .webhook import WebhookSender

log = logging.getLogger("genesys_token")

#: A token is not handed out in its last moments: a call made with it must still arrive in
#: time. 5% of the lifetime, at most 10 s (2-second test tokens keep 0.1 s).
HANDOUT_MARGIN_SHARE = 0.05
HANDOUT_MARGIN_MAX = 10.0
#: Backoff after a failed background refresh: capped exponential with full jitter, and never
#: longer than a quarter of what is left of the current token, so retries come before expiry.
FAILURE_BACKOFF_BASE = 1.0
FAILURE_BACKOFF_MAX = 60.0
FAILURE_BACKOFF_MIN = 0.05
#: The timer re-reads its deadline at least this often (clock injections, missed wakes).
TIMER_MAX_SLEEP = 30.0
#: How long close() waits for the timer thread.
CLOSE_JOIN_TIMEOUT = 2.0
#: The store lock is waited for in slices this long, re-checking for close() between them.
STORE_LOCK_SLICE = 1.0


@dataclass(frozen=True)
class _Current:
    """The token in use and when to refresh it; replaced whole, never mutated."""

    token: Token
    refresh_at: float
    usable_until: float


@dataclass
class _Flight:
    """One token acquisition that any number of callers wait on."""

    done: bool = False
    error: BaseException | None = None


class TokenManager:
    """Keeps one Genesys Cloud client-credentials token valid for every thread.

    Args:
        client_id: The OAuth client id.
        client_secret: The OAuth client secret (never logged or shown in a repr).
        region: ``"us-east-1"``, ``"us_east_1"``, ``"mypurecloud.ie"`` or a login/API host.
        token_url: Full token URL, overriding the region's (plain http: loopback only).
        api_base_url: API base URL, overriding the region's.
        scopes: Sent as ``scope`` only when non-empty; checked against JWT claims.
        refresh_buffer: Refresh this many seconds before expiry (at most 25% of the life)...
        refresh_jitter: ...minus a uniform random 0..jitter (at most 10% of the life).
        timeout: ``(connect, read)`` seconds, or one number for both.
        max_retries: Token request retries (429, 5xx, network, Genesys rate-limit 400).
        verify: TLS verification: True, False or a CA bundle path.
        jwks_url: When set, JWT signatures are verified against it.
        store: Where tokens are shared (default: a :class:`MemoryStore` of this process).
        webhook_url: Events are POSTed there as JSON by a background worker.
        webhook_secret: Signs webhook bodies (``X-Genesys-Token-Signature``).
        background_refresh: Refresh ahead of expiry from a daemon thread; False refreshes
            on demand only.
        clock: Clocks and randomness, for deterministic tests.
        session: A ``requests.Session`` for the token endpoint (default: a new one).
        **options: Further :class:`~genesys_token.config.Settings` fields
            (``retry_deadline``, ``max_retry_after``, ``backoff_base``, ``backoff_max``,
            ``max_response_bytes``, ``drain_timeout``).

    Raises:
        ConfigurationError: A setting is invalid; the message names it.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        store: TokenStore | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        **options: Any,
    ) -> None:
        self._init(Settings.build(client_id, client_secret, **options), store, clock, session)

    @classmethod
    def from_env(cls, **overrides: Any) -> TokenManager:
        """Build a manager from ``GENESYSCLOUD_OAUTHCLIENT_ID``/``_SECRET``,
        ``GENESYSCLOUD_REGION``, ``GENESYSCLOUD_TOKEN_URL`` and ``GENESYSCLOUD_API_URL``.

        Args:
            **overrides: Any constructor argument; wins over the environment.

        Raises:
            ConfigurationError: A variable is missing or invalid.
        """
        store = overrides.pop("store", None)
        clock = overrides.pop("clock", None)
        session = overrides.pop("session", None)
        manager = cls.__new__(cls)
        manager._init(settings_from_env(**overrides), store, clock, session)
        return manager

    def _init(
        self,
        settings: Settings,
        store: TokenStore | None,
        clock: Clock | None,
        session: requests.Session | None,
    ) -> None:
        self._settings = settings
        self._credentials: Credentials = settings.credentials
        self._clock = clock or SYSTEM_CLOCK
        self._store: TokenStore = store if store is not None else MemoryStore()
        self._metrics = Metrics()
        self._events = EventBus(on_listener_error=lambda: self._metrics.incr("listener_errors"))
        self._validator = TokenValidator(settings)
        self._session = session
        self._current: _Current | None = None
        self._closed = False
        self._failures = 0
        self._retry_at: float | None = None
        self._expired_reported: str | None = None
        self._timer: threading.Thread | None = None
        self._webhook: WebhookSender | None = None
        self._gate = UseGate()
        self._new_sync_objects()
        self._transport = self._new_transport()
        if settings.webhook_url:
            from .webhook import WebhookSender

            # Weakly: a strong reference from the worker thread would keep a manager that
            # was dropped without close() (and its timer) alive forever.
            failed = weakref.WeakMethod(self._webhook_failed)

            def on_failure(data: dict[str, Any]) -> None:
                method = failed()
                if method is not None:
                    method(data)

            self._webhook = WebhookSender(settings, on_failure=on_failure)
            # Not close(): a finalizer must take no lock and join nothing (see abandon()).
            self._webhook_finalizer = weakref.finalize(self, self._webhook.abandon)
            self._webhook_finalizer.atexit = False
            self._events.on("*", self._webhook.submit)
        self._timer_wanted = settings.background_refresh
        register_fork_handler(self)

    def _new_sync_objects(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._flight: _Flight | None = None
        self._rotate_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()

    def _new_transport(self) -> TokenEndpoint:
        return TokenEndpoint(
            self._settings,
            clock=self._clock,
            wait=self._stop.wait,
            on_retry=self._on_retry,
            session=self._session,
        )

    # -- public properties -------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The validated settings (the secret is kept out of their repr)."""
        return self._settings

    @property
    def client_id(self) -> str:
        """The client id the next token request uses."""
        return self._credentials.client_id

    @property
    def token_url(self) -> str:
        """The resolved token endpoint."""
        return self._settings.token_url

    @property
    def api_base_url(self) -> str:
        """The resolved Platform API base URL."""
        return self._settings.api_base_url

    @property
    def token(self) -> Token | None:
        """The current token, without any network call (``None`` before the first one)."""
        current = self._current
        return current.token if current is not None else None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def in_flight_count(self) -> int:
        """Counted uses of the token in progress (requests and :meth:`in_flight` blocks)."""
        return self._gate.count

    # -- getting a token ---------------------------------------------------------------

    def get_token(self) -> str:
        """Return a valid access token, fetching one only when none is valid.

        The common case reads the current token without a lock or I/O. Near expiry the
        still-valid token is returned while one refresh runs in the background (or in this
        call, with ``background_refresh=False``); callers block only when no valid token
        exists, and then all of them share one token request.

        Returns:
            The access token.

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        current = self._current
        if current is not None and not self._gate.rotating and not self._closed:
            now = self._clock.monotonic()
            if now < current.refresh_at:
                return current.token.access_token
            if now < current.usable_until:
                self._refresh_soon()
                return (self._current or current).token.access_token
        return self._current_slow().token.access_token

    def _refresh_soon(self) -> None:
        """A valid token is past its refresh point: get the refresh going, do not wait."""
        if self._timer_wanted:
            self._ensure_timer()
            if self._retry_at is None and not self._wake.is_set():
                self._wake.set()  # the timer may be asleep on a stale deadline
            return
        retry_at = self._retry_at
        if self._flight is None and (retry_at is None or self._clock.monotonic() >= retry_at):
            try:
                self._obtain(reason="on-demand", join=False)
            except ManagerClosedError:
                return
            except GenesysTokenError as exc:
                # Back off like the timer would: an outage must not turn every call into a
                # token request.
                self._schedule_retry(exc)

    def _current_slow(self) -> _Current:
        if self._closed:
            raise ManagerClosedError("the token manager is closed")
        self._wait_for_rotation()
        if self._closed:
            raise ManagerClosedError("the token manager is closed")
        if self._timer_wanted:
            self._ensure_timer()
        current = self._current
        now = self._clock.monotonic()
        if current is not None and now < current.usable_until:
            if now >= current.refresh_at:
                self._refresh_soon()
            return self._current or current
        self._report_expired(current)
        return self._obtain(reason="no valid token")

    def refresh(self, force: bool = False) -> Token:
        """Refresh now if needed (or always, with ``force``) and return the current token.

        A forced refresh that fails raises, and the current token stays in place.

        Args:
            force: Fetch a new token even if the current one is valid.

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: Acquiring a token failed.
        """
        if self._closed:
            raise ManagerClosedError("the token manager is closed")
        if not force:
            return self._current_slow().token
        return self._obtain(reason="forced", force=True).token

    def replace_rejected(self, access_token: str) -> Token:
        """Replace a token the API rejected (a 401), unless that already happened.

        If another thread already replaced ``access_token``, the newer token is returned
        without a token request; otherwise one forced refresh runs, shared by every caller.

        Args:
            access_token: The token that was rejected.

        Raises:
            GenesysTokenError: Acquiring a token failed.
        """
        if self._closed:
            raise ManagerClosedError("the token manager is closed")
        return self._obtain(reason="rejected by the API", force=True, stale=access_token).token

    def _obtain(
        self,
        *,
        reason: str,
        force: bool = False,
        stale: str | None = None,
        join: bool = True,
        fresh: bool = False,
    ) -> _Current:
        """Single-flight acquisition: one caller fetches, every other caller waits for it.

        Args:
            reason: Why, for events and logs.
            force: Fetch even if the current token is fresh.
            stale: A token the API rejected: done if the current token is another one.
            join: False returns the current token at once, if valid, instead of waiting
                for a flight in progress.
            fresh: Never take the result of a flight that was already running (a rotation
                wants a token fetched after its drain, with the latest credentials).
        """
        with self._lock:
            while True:
                if self._closed:
                    raise ManagerClosedError("the token manager is closed")
                current = self._current
                now = self._clock.monotonic()
                if current is not None and now < current.usable_until:
                    fresh_enough = now < current.refresh_at
                    if stale is not None and current.token.access_token != stale:
                        return current
                    if not force and stale is None and fresh_enough:
                        return current
                flight = self._flight
                if flight is None:
                    break
                if not join and current is not None and now < current.usable_until:
                    return current
                while not flight.done and not self._closed:
                    self._cond.wait(self._settings.retry_deadline)
                if self._closed:
                    raise ManagerClosedError("the token manager is closed")
                if fresh:
                    continue
                current = self._current
                valid = current is not None and self._clock.monotonic() < current.usable_until
                if flight.error is not None:
                    # Everyone who waited on a failed flight shares its error, unless they
                    # only needed any valid token and one still exists.
                    if valid and not force and stale is None:
                        return current  # type: ignore[return-value]
                    raise flight.error
                if force and stale is None and current is not None:
                    return current  # a forced refresh that joined a flight takes its result
            flight = self._flight = _Flight()
        started = self._clock.monotonic()
        try:
            fetched, requests_made = self._fetch(force=force or stale is not None, reason=reason)
        except BaseException as exc:
            self._finish_flight(flight, error=exc)
            if isinstance(exc, GenesysTokenError) and not isinstance(exc, ManagerClosedError):
                self._on_failure(exc, reason)
            raise
        latency = self._clock.monotonic() - started
        current = self._install(fetched)
        token = current.token
        self._finish_flight(flight)
        if requests_made:
            self._metrics.record_success(latency, requests_made)
        else:
            self._metrics.incr("store_hits")
        self._emit(
            TOKEN_REFRESH_SUCCESS,
            token,
            {"reason": reason, "source": token.source, "expires_in": round(token.remaining(), 3)},
        )
        return current

    def _finish_flight(self, flight: _Flight, error: BaseException | None = None) -> None:
        with self._lock:
            flight.done = True
            flight.error = error
            if self._flight is flight:
                self._flight = None
            self._cond.notify_all()

    def _fetch(self, *, force: bool, reason: str) -> tuple[_Current, int]:
        """Get a token from the store or the network; returns it and the requests made."""
        key = self._store_key()
        credentials = self._credentials
        sealer = Sealer(credentials.client_secret, key)
        replaced = self.token
        if not force:
            stored = self._load(key, sealer)
            if stored is not None:
                return stored, 0
        with self._store_lock(key) as held:
            if not held:
                log.warning("token store lock not acquired in time; fetching without it")
            stored = self._load(key, sealer)
            newer = stored is not None and (
                replaced is None or stored.token.fingerprint != replaced.fingerprint
            )
            if stored is not None and newer and reason != "rotation":
                return stored, 0  # another process refreshed while we waited for the lock
            response = self._transport.fetch(credentials)
            token = self._validator.build(
                response, credentials.client_id, now_wall=self._clock.time()
            )
            try:
                self._store.save(key, token, sealer=sealer)
            except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
                self._metrics.incr("store_errors")
                log.warning("could not save the token to the store: %s", _describe(exc))
            return self._schedule(token), response.attempts

    @contextmanager
    def _store_lock(self, key: str) -> Iterator[bool]:
        """The store's cross-process lock, waited for in short slices so close() is prompt.

        The bound covers one whole acquisition by a peer (its retries and timeouts): giving
        up sooner would add token requests exactly when the endpoint is throttling.
        """
        settings = self._settings
        bound = settings.retry_deadline + sum(settings.timeout)
        lease = bound + 60.0
        deadline = time.monotonic() + bound
        while True:
            started = time.monotonic()
            remaining = deadline - started
            with ExitStack() as stack:
                try:
                    lock = self._store.lock(
                        key, max(0.0, min(STORE_LOCK_SLICE, remaining)), lease=lease
                    )
                    held: bool | None = stack.enter_context(lock)
                except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
                    self._metrics.incr("store_errors")
                    log.warning("token store lock failed, going without it: %s", _describe(exc))
                    held = None
                if held is None:
                    yield False
                    return
                if self._stop.is_set():
                    raise ManagerClosedError("closed while waiting for the token store lock")
                # A refusal well before the slice ran out means the store cannot lock (down):
                # go ahead without it rather than spin.
                refused = time.monotonic() - started < STORE_LOCK_SLICE / 2
                if held or refused or remaining <= STORE_LOCK_SLICE:
                    try:
                        yield held
                    finally:
                        try:
                            stack.close()
                        except Exception as exc:  # noqa: BLE001 - the token is what matters
                            self._metrics.incr("store_errors")
                            log.warning("token store unlock failed: %s", _describe(exc))
                    return

    def _load(self, key: str, sealer: Sealer) -> _Current | None:
        """A usable token from the store, scheduled, or None (missing, bad, or due)."""
        now_wall = self._clock.time()
        try:
            token = self._store.load(
                key, now_monotonic=self._clock.monotonic(), now_wall=now_wall, sealer=sealer
            )
            if token is not None:
                self._validator.check_claims(token, self._credentials.client_id, now_wall=now_wall)
        except TokenValidationError as exc:
            log.warning("ignoring a stored token that fails validation: %s", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
            self._metrics.incr("store_errors")
            log.warning("token store unavailable, using the network: %s", _describe(exc))
            return None
        if token is None:
            return None
        current = self._schedule(token)
        if current.refresh_at <= self._clock.monotonic():
            return None  # due for refresh already: using it would refresh again at once
        return current

    def _schedule(self, token: Token) -> _Current:
        lifetime = token.expires_in
        lead = refresh_lead(
            lifetime,
            self._settings.refresh_buffer,
            self._settings.refresh_jitter,
            self._clock.random(),
        )
        margin = min(HANDOUT_MARGIN_MAX, HANDOUT_MARGIN_SHARE * lifetime)
        usable_until = token.monotonic_expiry - margin
        return _Current(
            token=token,
            # A buffer smaller than the margin must not leave a token no one refreshes.
            refresh_at=min(token.monotonic_expiry - lead, usable_until),
            usable_until=usable_until,
        )

    def _install(self, current: _Current) -> _Current:
        with self._lock:
            self._current = current
            self._failures = 0
            self._retry_at = None
        self._wake.set()
        return current

    def _store_key(self) -> str:
        return store_key(
            self._credentials.client_id, self._settings.token_url, self._settings.scopes
        )

    # -- background refresh ------------------------------------------------------------

    def _ensure_timer(self) -> None:
        if self._timer is not None:
            return
        with self._lock:
            if self._closed or self._timer is not None:
                return
            self._timer = threading.Thread(
                target=run_timer,
                args=(weakref.ref(self),),
                name=f"genesys-token-refresh-{self._credentials.client_id[:16]}",
                daemon=True,
            )
            self._timer.start()

    def _timer_plan(self) -> float | None:
        """Seconds the timer should sleep before its next turn, or None to refresh now."""
        current = self._current
        if current is None:
            return TIMER_MAX_SLEEP
        due = self._retry_at if self._retry_at is not None else current.refresh_at
        wait = due - self._clock.monotonic()
        return min(wait, TIMER_MAX_SLEEP) if wait > 0 else None

    def _background_refresh(self) -> bool:
        """One background refresh; returns False when the timer should end."""
        try:
            self._obtain(reason="background", force=True)
        except ManagerClosedError:
            return False
        except Exception as exc:  # noqa: BLE001 - the timer must survive anything
            self._schedule_retry(exc)
        return not self._stop.is_set()

    def _schedule_retry(self, exc: BaseException) -> None:
        self._failures += 1
        ceiling = min(FAILURE_BACKOFF_MAX, FAILURE_BACKOFF_BASE * 2.0 ** (self._failures - 1))
        current = self._current
        now = self._clock.monotonic()
        if current is not None and current.usable_until > now:
            ceiling = min(ceiling, max(FAILURE_BACKOFF_MIN, (current.usable_until - now) / 4))
        delay = max(FAILURE_BACKOFF_MIN, ceiling * self._clock.random())
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self._retry_at = now + delay
        log.warning(
            "token refresh failed (%s); the current token is still used; next try in %.2fs",
            type(exc).__name__,
            delay,
            extra={"failures": self._failures, "delay": round(delay, 3)},
        )

    # -- rotation and in-flight accounting ---------------------------------------------

    def rotate(
        self,
        drain_timeout: float | None = None,
        revoke_previous: bool = False,
        *,
        strict: bool = False,
    ) -> Token:
        """Replace the token, waiting first for the calls that use it to finish.

        New callers wait until the new token is in place; counted uses (requests through
        :class:`~genesys_token.GenesysAuth`, :meth:`in_flight` blocks) are waited for up to
        ``drain_timeout``. A rotate called from inside a counted use does not wait for that
        use. Use it after :meth:`set_credentials`, or to retire a token you suspect leaked.

        Args:
            drain_timeout: Seconds to wait for uses in flight (default: the setting, 30).
            revoke_previous: Revoke the old token (``DELETE /api/v2/tokens/me``) after the
                swap; a refusal is logged, not raised.
            strict: Raise :class:`DrainTimeoutError` instead of swapping when the drain
                times out.

        Returns:
            The new token.

        Raises:
            DrainTimeoutError: ``strict`` and the drain timed out (the old token stays).
            GenesysTokenError: Fetching the new token failed (the old token stays).
        """
        if self._closed:
            raise ManagerClosedError("the token manager is closed")
        timeout = self._settings.drain_timeout if drain_timeout is None else float(drain_timeout)
        if not self._rotate_lock.acquire(timeout=timeout + self._settings.retry_deadline):
            raise DrainTimeoutError("another rotation is still running")
        try:
            return self._rotate(timeout, revoke_previous, strict)
        finally:
            self._rotate_lock.release()

    def _rotate(self, timeout: float, revoke_previous: bool, strict: bool) -> Token:
        old = self.token
        gate = self._gate
        own = gate.own_count()
        gate.close_gate()
        try:
            self._emit(TOKEN_ROTATION_STARTED, old, {"in_flight": gate.count - own})
            left = gate.drain(own, timeout, lambda: self._closed)
            if self._closed:
                raise ManagerClosedError("closed during the rotation")
            if left:
                self._metrics.incr("drain_timeouts")
                self._emit(TOKEN_DRAIN_TIMEOUT, old, {"in_flight": left, "timeout": timeout})
                if strict:
                    raise DrainTimeoutError(
                        f"{left} use(s) of the token still in flight after {timeout:g}s",
                        in_flight=left,
                    )
            else:
                self._emit(TOKEN_DRAIN_COMPLETE, old, {})
            new = self._obtain(reason="rotation", force=True, fresh=True).token
            self._metrics.incr("rotations")
        finally:
            gate.open_gate()
        if revoke_previous and old is not None and old.access_token != new.access_token:
            self._revoke(old)
        return new

    def _revoke(self, token: Token) -> None:
        if self._transport.revoke(token.access_token):
            self._metrics.incr("revocations")
            self._emit(TOKEN_REVOKED, token, {})

    def _wait_for_rotation(self) -> None:
        if not self._gate.rotating:  # the common case: no closure, no sums, per call
            return
        bound = self._settings.drain_timeout + self._settings.retry_deadline
        if not self._gate.wait_while_rotating(bound, lambda: self._closed):
            log.warning("gave up waiting for a rotation after %.1fs", bound)

    def begin_use(self) -> InFlight:
        """Count one use of the current token and return it.

        The count and the token are taken together, so a rotation never swaps the token
        between them. End it with :meth:`InFlight.end` (any thread, idempotent).
        :class:`~genesys_token.GenesysAuth` and :meth:`in_flight` do this for you.

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        while True:
            self._wait_for_rotation()
            self.get_token()
            use = self._gate.try_begin(self._current_access_token)
            if use is not None:
                return use

    def _current_access_token(self) -> str | None:
        current = self._current
        return current.token.access_token if current is not None else None

    @contextmanager
    def in_flight(self) -> Iterator[InFlight]:
        """Count a long-lived use of the token, such as a WebSocket, for draining.

        A :meth:`rotate` waits (up to its ``drain_timeout``) for the block to end, and sets
        ``rotation_pending`` on the yielded handle so the holder can reconnect::

            with manager.in_flight() as use:
                ws = connect(url, token=use.token)
                while not use.rotation_pending.is_set():
                    handle(ws.recv(timeout=1))

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        use = self.begin_use()
        try:
            yield use
        finally:
            use.end()

    # -- credentials, events, metrics --------------------------------------------------

    def set_credentials(self, client_secret: str, client_id: str | None = None) -> None:
        """Use new credentials for the next token request (the current token stays).

        Follow with :meth:`rotate` to switch a running application to the new secret.

        Raises:
            ConfigurationError: An empty or mistyped value.
        """
        new = Credentials(client_id or self._credentials.client_id, client_secret)
        with self._lock:
            self._credentials = new
            self._settings = self._settings.with_credentials(new)

    def on(self, event_type: str, callback: Listener) -> Callable[[], None]:
        """Call ``callback(record)`` for each event of ``event_type`` (``"*"``: all).

        Listeners run outside the manager's locks; one that raises is logged and skipped.

        Returns:
            A callable that unsubscribes.
        """
        return self._events.on(event_type, callback)

    def metrics(self) -> dict[str, Any]:
        """A snapshot of the counters (bounded memory however long the process runs)."""
        current = self._current
        expires_in = None if current is None else round(current.token.remaining(), 3)
        snap = self._metrics.snapshot(in_flight=self._gate.count, expires_in=expires_in)
        if self._webhook is not None:
            snap["webhook_deliveries"] = self._webhook.delivered
            snap["webhook_dropped"] = self._webhook.dropped
        return snap

    def _emit(self, event_type: str, token: Token | None, data: dict[str, Any]) -> None:
        record = make_record(
            event_type,
            client_id=self._credentials.client_id,
            token_fingerprint=token.fingerprint if token is not None else None,
            metrics=self._metrics_summary(),
            data=data,
        )
        self._events.emit(record)

    def _metrics_summary(self) -> dict[str, Any]:
        snap = self.metrics()
        return {
            "error_rate": snap["error_rate"],
            "latency_ms": snap["latency_ms"],
            "token_requests": snap["token_requests"],
        }

    def _on_retry(self, notice: RetryNotice) -> None:
        self._metrics.incr("retries")

    def _on_failure(self, exc: GenesysTokenError, reason: str) -> None:
        attempts = exc.attempts if isinstance(exc, TokenRequestError) else 1
        self._metrics.record_error(exc, attempts)
        current = self._current
        self._emit(
            TOKEN_REFRESH_FAILURE,
            current.token if current is not None else None,
            {
                "reason": reason,
                "error": type(exc).__name__,
                "message": excerpt(str(exc), 160),
                "status": getattr(exc, "status", None),
                "attempts": attempts,
                "token_still_valid": current is not None
                and self._clock.monotonic() < current.usable_until,
            },
        )

    def _report_expired(self, current: _Current | None) -> None:
        if current is None or self._expired_reported == current.token.fingerprint:
            return
        self._expired_reported = current.token.fingerprint
        self._emit(TOKEN_EXPIRED, current.token, {})

    def _webhook_failed(self, data: dict[str, Any]) -> None:
        """Called by the webhook worker when a delivery failed for good."""
        self._metrics.incr("webhook_failures")
        self._emit(WEBHOOK_DELIVERY_FAILED, self.token, data)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop the refresh thread and release connections. Idempotent.

        Later :meth:`get_token` calls raise :class:`ManagerClosedError`; callers blocked
        waiting for a token are woken and raise it too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._wake.set()
            self._cond.notify_all()
        self._gate.wake_all()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(CLOSE_JOIN_TIMEOUT)
        if self._webhook is not None:
            self._webhook_finalizer.detach()
            self._webhook.close()
        self._transport.close()

    def __enter__(self) -> TokenManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Fresh locks, no counted uses, a new connection pool; the timer restarts on use."""
        self._new_sync_objects()
        # Reset in place: an InFlight begun in the parent still points at this gate, and
        # must find itself unknown (ignored) rather than take a lock copied mid-use.
        self._gate.reset_after_fork()
        self._metrics.after_fork()
        self._events.after_fork()
        self._timer = None
        # Always: its retry backoff must wait on this process's stop event (close()).
        self._transport = self._new_transport()
        # The stores reset themselves in a child (their own os.register_at_fork hook).
        if self._webhook is not None:
            self._webhook.after_fork()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        token = self.token
        return (
            f"TokenManager(client_id={self._credentials.client_id!r}, "
            f"token_url={self._settings.token_url!r}, state={state!r}, "
            f"token={token.fingerprint if token else None!r})"
        )


def _describe(exc: BaseException) -> str:
    """A one-line, redacted description of an exception for a log line."""
    return f"{type(exc).__name__}: {excerpt(str(exc), 160)}"
