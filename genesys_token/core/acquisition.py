"""One acquisition, on ONE frozen snapshot of credentials and store key.

store lock -> load -> token request -> validate -> save. The snapshot (config, the secret
its source gives now, the store key derived from that client id) is taken once at the start,
so ``set_credentials()`` during a long wait for the store lock cannot make one client's token
land under another client's key. Every store call goes through one error policy: a store that
raises (``unlock`` included) costs neither the token nor a foreign exception; it is counted
and logged once per outage.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..credentials import SecretValue, SourceReads, digest, read_secret
from ..errors import (
    InvalidClientError,
    ManagerClosedError,
    TokenRequestError,
    TokenValidationError,
)
from ..http import connections as _http
from ..http.token_endpoint import Clock, TokenEndpoint
from ..observability.metrics import Metrics
from ..observability.redaction import excerpt
from ..settings import Config, Credentials
from ..stores._seal import Sealer
from ..stores.base import TokenStore, store_key
from ..token import Token
from .rejections import RejectedCredentials
from .schedule import Cell, plan
from .single_flight import Flight, Spec
from .validation import TokenValidator

log = logging.getLogger(__name__)

#: The store lock is waited for in slices this long, re-checking for close() between them.
STORE_LOCK_SLICE = 1.0


@dataclass(frozen=True)
class Snapshot:
    """Everything one acquisition uses, fixed at its start."""

    config: Config
    credentials: Credentials  # resolved: the secret is a SecretValue, never a plain str
    key: str
    #: Seals and opens shared-store entries with a key derived from THIS secret.
    sealer: Sealer


def lock_bound(config: Config) -> float:
    """How long one acquisition may take: a peer waits this long for the store lock.

    Giving up sooner would add token requests exactly when the endpoint is throttling.
    """
    return config.retry_deadline + sum(config.timeout)


def flight_bound(config: Config) -> float:
    """How long one acquisition may run before it is abandoned: the store lock's wait, the
    request's retries, and one more request (a JWKS fetch during validation)."""
    return 2 * lock_bound(config) + _http.attempt_bound(config.timeout)


def lease(config: Config) -> float:
    """How long a holder may keep the store lock: its own acquisition (the request's
    retries, the validation, the save), with room to spare. A lease shorter than that would
    let a peer take the lock and send its own request during throttling."""
    return lock_bound(config) + sum(config.timeout) + 30.0


class StoreHealth:
    """Counts store failures and logs them once per outage, not once per call."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._down = False

    def failed(self, what: str, exc: BaseException) -> None:
        self._metrics.incr("store_errors")
        detail = f"{type(exc).__name__}: {excerpt(str(exc), 160)}"
        if self._down:
            log.debug("token store still unavailable (%s: %s)", what, detail)
            return
        self._down = True
        log.warning(
            "token store unavailable (%s: %s); using the network until it answers again",
            what,
            detail,
        )

    def ok(self) -> None:
        if self._down:
            self._down = False
            log.info("token store answers again")


class Acquirer:
    """Runs acquisitions for one token of a manager (see the module docstring)."""

    def __init__(
        self,
        *,
        store: TokenStore,
        transport: TokenEndpoint,
        validator: TokenValidator,
        clock: Clock,
        rejections: RejectedCredentials,
        metrics: Metrics,
        lane: int = 0,
    ) -> None:
        self._store = store
        #: Which of the manager's tokens (``tokens=N``) this acquires: 0 keeps the plain
        #: store key (stores and fleets of before lanes unaffected), k > 0 adds ``-k``.
        self._lane = lane
        self._transport = transport
        self._validator = validator
        self._clock = clock
        self._rejections = rejections
        self._metrics = metrics
        self._health = StoreHealth(metrics)
        self._reads = SourceReads()

    def after_fork(self) -> None:
        """In a forked child: nothing of a parent's acquisition in progress is kept."""
        self._validator.after_fork()
        self._reads.after_fork()

    def snapshot(self, flight: Flight) -> Snapshot:
        """Freeze the config and read the secret source once.

        Raises:
            SecretSourceError: The source gave no usable secret.
        """
        config = flight.config
        credentials = self._resolve(config.credentials, flight)
        key = lane_key(
            store_key(credentials.client_id, config.token_url, config.scopes), self._lane
        )
        return Snapshot(config, credentials, key, Sealer(_secret(credentials).reveal(), key))

    def _resolve(self, credentials: Credentials, flight: Flight) -> Credentials:
        """``credentials`` with the secret their source gives now (hidden), read under the
        flight's deadline (a source that hangs is the flight's to abandon; see ``_flight``)."""
        source = credentials.client_secret
        if isinstance(source, str | SecretValue):
            return Credentials(credentials.client_id, read_secret(source))
        flight.reading_secret = True
        try:
            secret = self._reads.read(source, flight.deadline)
        finally:
            flight.reading_secret = False
        return Credentials(credentials.client_id, secret)

    def acquire(self, flight: Flight, held: Cell | None) -> Cell:
        """One acquisition for ``flight``; ``held`` is the cell in use when it began.

        Raises:
            GenesysTokenError: No token (the typed error of the request, or of the source).
        """
        snap = self.snapshot(flight)
        rejected = self._rejections.check(_digest(snap.credentials))
        if rejected is not None:
            raise rejected  # the cool-down of these very credentials: no request
        spec = flight.spec
        if spec.use_store and (cell := self._load(snap, spec, held, flight)) is not None:
            return cell
        with self._store_lock(snap, flight):
            if spec.use_store and (cell := self._load(snap, spec, held, flight)) is not None:
                return cell  # another process refreshed while we waited for the lock
            token, credentials = self._request(snap, flight)
            cell = self._plan(token, flight)
            if not cell.usable(self._clock.monotonic()):
                # Slow answer, short token: handing it out would send calls that fail.
                raise TokenRequestError(
                    f"the token arrived too late to be used ({token.expires_in:g}s lifetime)",
                    attempts=flight.requests,
                )
            if flight.cancel.is_set():
                # Abandoned (close(), its deadline) while it ran: nothing it brings back is
                # saved either.
                raise ManagerClosedError("the token acquisition was abandoned")
            self._save(snap, token, credentials)
            return cell

    # -- the network ---------------------------------------------------------------------

    def _request(self, snap: Snapshot, flight: Flight) -> tuple[Token, Credentials]:
        """The token, and the credentials it was fetched with."""
        try:
            token, used = self._fetch(snap, snap.credentials, flight), snap.credentials
        except InvalidClientError as exc:
            # The source may have been rotated since the snapshot: read it again at once.
            fresh = self._resolve(flight.config.credentials, flight)
            self._rejections.record(_digest(snap.credentials), exc)
            same_client = fresh.client_id == snap.credentials.client_id
            # Only a new secret, and only if this streak of rejections has not tried one
            # already (a source giving a new wrong one per read must wait): the same one
            # is in its cool-down.
            if not same_client or self._rejections.check(_digest(fresh)) is not None:
                raise
            log.info("the secret source gives a new secret; retrying the token request")
            try:
                token, used = self._fetch(snap, fresh, flight), fresh
            except InvalidClientError as again:
                self._rejections.record(_digest(fresh), again)
                raise
        self._rejections.clear()  # accepted: the streak of rejections ends
        return token, used

    def _fetch(self, snap: Snapshot, credentials: Credentials, flight: Flight) -> Token:
        config = snap.config
        host = urlsplit(config.token_url).netloc
        with _http.LIMITER.slot(host, flight.cancel, config.retry_deadline):
            try:
                response = self._transport.fetch(
                    credentials,
                    cancel=flight.cancel,
                    on_retry=flight.attempt_failed,
                    may_retry=flight.retry_check,
                )
            except TokenRequestError as exc:
                flight.requests += exc.attempts
                raise
        flight.requests += response.attempts
        # A JWKS fetch of the validation is abandoned with the flight too.
        with _http.deadline(flight.deadline - time.monotonic(), flight.cancel):
            return self._validator.build(
                response, credentials.client_id, now_wall=self._clock.time()
            )

    # -- the store: one error policy for every call ------------------------------------

    def _load(self, snap: Snapshot, spec: Spec, held: Cell | None, flight: Flight) -> Cell | None:
        clock = self._clock
        try:
            token = self._store.load(
                snap.key, now_monotonic=clock.monotonic(), now_wall=clock.time(), sealer=snap.sealer
            )
            if token is not None:
                self._validator.check_claims(
                    token, snap.credentials.client_id, now_wall=clock.time()
                )
        except TokenValidationError as exc:
            log.debug("ignoring a stored token that fails validation: %s", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
            self._health.failed("read", exc)
            return None
        self._health.ok()
        if token is None or token.access_token in spec.reject:
            return None
        if held is not None and token.access_token == held.access_token:
            token = held.token  # ours already: our own clock knows its expiry best
        cell = self._plan(token, flight)
        if not cell.fresh(clock.monotonic()):
            return None  # due already: using it would refresh again at once
        return cell.from_store()

    def _plan(self, token: Token, flight: Flight) -> Cell:
        config = flight.config
        return plan(
            token,
            refresh_buffer=config.refresh_buffer,
            refresh_jitter=config.refresh_jitter,
            draw=self._clock.random(),
            generation=flight.generation,
            now=self._clock.monotonic(),
        )

    def _save(self, snap: Snapshot, token: Token, credentials: Credentials) -> None:
        # Sealed with the secret the token was fetched with (a rotated source's, maybe).
        sealer = (
            snap.sealer
            if credentials is snap.credentials
            else Sealer(_secret(credentials).reveal(), snap.key)
        )
        try:
            self._store.save(snap.key, token, sealer=sealer)
        except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
            self._health.failed("write", exc)
        else:
            self._health.ok()

    @contextlib.contextmanager
    def _store_lock(self, snap: Snapshot, flight: Flight) -> Iterator[bool]:
        """The store's cross-process lock, waited for in slices so close() is prompt.

        Yields whether it is held; any store failure (lock or unlock) is logged and the
        acquisition goes on without it.
        """
        context: Any = None
        held = False
        deadline = time.monotonic() + lock_bound(snap.config)
        while True:
            started = time.monotonic()
            remaining = deadline - started
            try:
                wait = max(0.0, min(STORE_LOCK_SLICE, remaining))
                context = self._store.lock(snap.key, wait, lease=lease(snap.config))
                held = bool(context.__enter__())
            except Exception as exc:  # noqa: BLE001 - a broken store must not cost the token
                self._health.failed("lock", exc)
                context, held = None, False
                break
            if flight.cancel.is_set():
                self._unlock(context)
                raise ManagerClosedError("closed while waiting for the token store lock")
            # A refusal well before the slice ran out means the store cannot lock (down).
            refused = time.monotonic() - started < STORE_LOCK_SLICE / 2
            if held or refused or remaining <= STORE_LOCK_SLICE:
                break
            self._unlock(context)
            context = None
        if not held and context is not None:
            log.debug("token store lock not acquired in time; fetching without it")
        try:
            yield held
        finally:
            if context is not None:
                self._unlock(context)

    def _unlock(self, context: Any) -> None:
        try:
            context.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - the token is already saved; keep it
            self._health.failed("unlock", exc)


def lane_key(key: str, lane: int) -> str:
    """The store key of token ``lane`` of a client whose key is ``key``: lane 0's is ``key``
    itself; lane k's is ``key-k`` (a safe file name; no store key ends so otherwise)."""
    return key if lane == 0 else f"{key}-{lane}"


def _secret(credentials: Credentials) -> SecretValue:
    secret = credentials.client_secret
    assert isinstance(secret, SecretValue)  # resolved
    return secret


def _digest(credentials: Credentials) -> bytes:
    return digest(credentials.client_id, _secret(credentials))
