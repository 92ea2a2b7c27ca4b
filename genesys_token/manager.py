"""TokenManager: the facade over one manager's parts.

The hot path, :meth:`TokenManager.get_token` with a valid token, reads the current cell (one
immutable value, replaced whole) and the clock, and takes no lock. The token state has one
owner, the refresher (:mod:`.core.refresher`), whose single flight (:mod:`.core.single_flight`)
holds the current cell, the credentials and the acquisition in progress; the manager
delegates to it. The other parts live in :mod:`genesys_token.core` under names that say what
they do: the schedule, one acquisition, the process-wide scheduler, counted uses, rotation,
rejections; events and metrics in :mod:`genesys_token.observability`. What adapters need
beyond the public API (counted uses, a 401's replacement) is :func:`adapter_port`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import requests

from .core.clock import SYSTEM_CLOCK, Clock
from .core.fork import register_fork_handler
from .core.lanes import build_lanes
from .core.port import AdapterPort
from .core.rotation import Rotator
from .core.scheduler import Job, weak_job
from .core.shared_pacing import make_pacer
from .core.uses import InFlight, UseGate
from .credentials import Secret, hide_text, warn_if_padded
from .errors import ManagerClosedError
from .http import connections as _http
from .http.token_endpoint import RetryNotice, TokenEndpoint
from .observability import otel
from .observability.events import Listener
from .observability.reporter import Reporter
from .profiles import DEFAULT_PROFILE, read_profile, with_profile_location
from .proxies import Proxies
from .regions import warn_region_mismatch
from .settings import (
    UNSET,
    Config,
    Credentials,
    Settings,
    credentials_from_env,
    given_settings,
    with_env_location,
)
from .stores.base import MemoryStore, TokenStore
from .token import Token


class TokenManager:
    """Keeps one Genesys Cloud client-credentials token valid for every thread.

    Every setting is a field of :class:`~genesys_token.Settings` (see it for what each
    means) and a keyword here: pass ``settings=``, keywords, or both; a keyword given
    explicitly overrides the field (default: the settings' value, or the field's default
    without ``settings``).

    Args:
        client_id: The OAuth client id.
        client_secret: The secret, or a zero-argument callable returning it (read for each
            token request and again after a rejection; see :class:`~genesys_token.SecretFile`).
        settings: A :class:`~genesys_token.Settings` (default: ``Settings()``).
        region: ``"us-east-1"`` (the default), ``"us_east_1"``, ``"mypurecloud.ie"`` or a host.
        token_url: Full token URL, overriding the region's (plain http: loopback only).
        api_base_url: API base URL, overriding the region's.
        scopes: Sent as ``scope`` only when non-empty; checked against JWT claims.
        refresh_buffer: Refresh this many seconds before expiry (at most 25% of the life)...
        refresh_jitter: ...minus a uniform random 0..jitter (at most 10% of the life).
        timeout: ``(connect, read)`` seconds, or one number for both.
        max_retries: Token request retries (429, 5xx, network, Genesys rate-limit 400).
        retry_deadline: Overall bound of one acquisition's retries (seconds).
        max_retry_after: Cap on a ``Retry-After`` the service asks for.
        backoff_base: First retry backoff ceiling (doubling, full jitter).
        backoff_max: Largest retry backoff ceiling.
        max_response_bytes: Largest token answer read.
        verify: TLS verification: True, False or a CA bundle path.
        jwks_url: When set, JWT signatures are verified against it.
        webhook_url: Events are POSTed there as JSON by a background worker.
        webhook_secret: Signs webhook bodies (``X-Genesys-Token-Signature``).
        background_refresh: Refresh ahead of expiry on the process-wide scheduler; False
            refreshes on demand only (cron scripts).
        drain_timeout: Default bound of :meth:`rotate`'s wait for the old token's uses.
        proxies: ``requests``-style proxies for the token requests and revokes of
            the manager and :func:`~genesys_token.api_session`'s; a password never shows.
        cert: Client certificate (a PEM path, or a ``(cert, key)`` pair) for an mTLS gateway.
        api_rate_limit: ``(calls, seconds)``: every counted API call (GenesysAuth, the httpx
            and aiohttp adapters, ``api_session``, the SDK bridge) takes a slot of its token,
            at most ``calls`` in any window of ``seconds``; None (default) paces nothing.
        api_rate_wait: Longest a call waits for a slot; then
            :class:`~genesys_token.errors.ApiRateLimitedError`, nothing sent.
        tokens: How many tokens of this client to hold (default 1): calls go round-robin
            over them, each token with its own refresh, 401 replacement and pacing slots
            (Genesys limits each token on its own); a rejected secret cools all of them down.
            Shared through ``store``: a fleet makes ``tokens`` requests per lifetime in all.
        store: Where tokens are shared (default: a :class:`MemoryStore` of this process).
        clock: Clocks and randomness, for deterministic tests.
        session: A ``requests.Session`` for the token endpoint (default: the process-wide
            pool). Its adapters are its own: only its timeouts (per read) bound its requests,
            not the total deadline each request has on the default pool.

    Raises:
        ConfigurationError: A setting is invalid; the message names it.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: Secret,
        *,
        settings: Settings | None = None,
        region: str | None = UNSET,
        token_url: str | None = UNSET,
        api_base_url: str | None = UNSET,
        scopes: str | Iterable[str] = UNSET,
        refresh_buffer: float = UNSET,
        refresh_jitter: float = UNSET,
        timeout: float | tuple[float, float] = UNSET,
        max_retries: int = UNSET,
        retry_deadline: float = UNSET,
        max_retry_after: float = UNSET,
        backoff_base: float = UNSET,
        backoff_max: float = UNSET,
        max_response_bytes: int = UNSET,
        verify: bool | str = UNSET,
        jwks_url: str | None = UNSET,
        webhook_url: str | None = UNSET,
        webhook_secret: str | None = UNSET,
        background_refresh: bool = UNSET,
        drain_timeout: float = UNSET,
        proxies: Mapping[str, str] | Proxies | None = UNSET,
        cert: str | tuple[str, str] | None = UNSET,
        api_rate_limit: tuple[int, float] | None = UNSET,
        api_rate_wait: float = UNSET,
        tokens: int = UNSET,
        store: TokenStore | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> None:
        # Hidden first: no frame of ours holds a secret in clear, whatever error follows.
        client_secret = hide_text(client_secret)  # type: ignore[assignment]
        webhook_secret = hide_text(webhook_secret)  # type: ignore[assignment]
        credentials = Credentials(client_id, client_secret)
        merged = given_settings(settings).merged(locals())
        self._init(credentials, merged, store, clock, session)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        client_id: str | None = None,
        client_secret: Secret | None = None,
        settings: Settings | None = None,
        region: str | None = UNSET,
        token_url: str | None = UNSET,
        api_base_url: str | None = UNSET,
        scopes: str | Iterable[str] = UNSET,
        refresh_buffer: float = UNSET,
        refresh_jitter: float = UNSET,
        timeout: float | tuple[float, float] = UNSET,
        max_retries: int = UNSET,
        retry_deadline: float = UNSET,
        max_retry_after: float = UNSET,
        backoff_base: float = UNSET,
        backoff_max: float = UNSET,
        max_response_bytes: int = UNSET,
        verify: bool | str = UNSET,
        jwks_url: str | None = UNSET,
        webhook_url: str | None = UNSET,
        webhook_secret: str | None = UNSET,
        background_refresh: bool = UNSET,
        drain_timeout: float = UNSET,
        proxies: Mapping[str, str] | Proxies | None = UNSET,
        cert: str | tuple[str, str] | None = UNSET,
        api_rate_limit: tuple[int, float] | None = UNSET,
        api_rate_wait: float = UNSET,
        tokens: int = UNSET,
        store: TokenStore | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> TokenManager:
        """Build a manager from ``GENESYSCLOUD_OAUTHCLIENT_ID``, ``_SECRET`` (or
        ``_SECRET_FILE``), ``GENESYSCLOUD_REGION``, ``_TOKEN_URL`` and ``_API_URL``, the
        gateway ``GENESYSCLOUD_GATEWAY_HOST``, ``_PORT``, ``_PROTOCOL``, ``_PATH_NAME``,
        ``_PATH_VALUE`` and the proxy ``GENESYSCLOUD_PROXY_HOST``, ``_PORT``, ``_PROTOCOL``,
        ``_AUTH_USERNAME``, ``_AUTH_PASSWORD`` (the names of Genesys' Terraform provider),
        the pacing ``GENESYSCLOUD_API_RATE_LIMIT`` (``"300/60"``) and ``_API_RATE_WAIT``,
        and ``GENESYSCLOUD_TOKENS``.

        What wins: a keyword given explicitly, then a field ``settings`` sets, then the
        environment (it fills the location fields ``settings`` leaves None), then the
        defaults. The other arguments are the constructor's.

        Args:
            environ: The environment to read (default ``os.environ``).
            client_id: Wins over ``GENESYSCLOUD_OAUTHCLIENT_ID``.
            client_secret: Wins over ``GENESYSCLOUD_OAUTHCLIENT_SECRET`` and ``_SECRET_FILE``.

        Raises:
            ConfigurationError: A variable is missing or invalid.
        """
        # Hidden first, as in the constructor.
        client_secret = hide_text(client_secret)  # type: ignore[assignment]
        webhook_secret = hide_text(webhook_secret)  # type: ignore[assignment]
        credentials = credentials_from_env(
            environ, client_id=client_id, client_secret=client_secret
        )
        merged = with_env_location(given_settings(settings), environ).merged(locals())
        manager = cls.__new__(cls)
        manager._init(credentials, merged, store, clock, session)
        return manager

    @classmethod
    def from_profile(
        cls,
        name: str = DEFAULT_PROFILE,
        path: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        region: str | None = UNSET,
        token_url: str | None = UNSET,
        api_base_url: str | None = UNSET,
        scopes: str | Iterable[str] = UNSET,
        refresh_buffer: float = UNSET,
        refresh_jitter: float = UNSET,
        timeout: float | tuple[float, float] = UNSET,
        max_retries: int = UNSET,
        retry_deadline: float = UNSET,
        max_retry_after: float = UNSET,
        backoff_base: float = UNSET,
        backoff_max: float = UNSET,
        max_response_bytes: int = UNSET,
        verify: bool | str = UNSET,
        jwks_url: str | None = UNSET,
        webhook_url: str | None = UNSET,
        webhook_secret: str | None = UNSET,
        background_refresh: bool = UNSET,
        drain_timeout: float = UNSET,
        proxies: Mapping[str, str] | Proxies | None = UNSET,
        cert: str | tuple[str, str] | None = UNSET,
        api_rate_limit: tuple[int, float] | None = UNSET,
        api_rate_wait: float = UNSET,
        tokens: int = UNSET,
        store: TokenStore | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> TokenManager:
        """Build a manager from a profile of the Genesys Cloud CLI (``gc``): its
        ``client_credentials`` (the client id), ``client_secret`` and ``environment`` (see
        :mod:`genesys_token.profiles`).

        What wins: a keyword given explicitly, then a field ``settings`` sets, then the
        profile's ``environment``, then the defaults. The other arguments are the
        constructor's.

        Args:
            name: The profile, case-insensitive as in the CLI (its default is ``DEFAULT``).
            path: The CLI's file (default ``~/.gc/config.toml``).

        Raises:
            ProfileError: The file or the profile cannot be used (a
                :class:`~genesys_token.ConfigurationError` naming file, profile and key).
            ConfigurationError: Another setting is invalid.
        """
        webhook_secret = hide_text(webhook_secret)  # type: ignore[assignment]
        profile = read_profile(name, path)
        credentials = Credentials(profile.client_id, profile.client_secret)
        merged = with_profile_location(given_settings(settings).merged(locals()), profile)
        manager = cls.__new__(cls)
        manager._init(credentials, merged, store, clock, session)
        return manager

    def _init(
        self,
        credentials: Credentials,
        settings: Settings,
        store: TokenStore | None,
        clock: Clock | None,
        session: requests.Session | None,
    ) -> None:
        config = Config.of(credentials, settings)
        warn_if_padded(credentials.client_id, credentials.client_secret)
        #: The settings as given (keywords merged); ``config`` holds them resolved.
        self._settings = settings
        clock = clock or SYSTEM_CLOCK
        self._now = clock.monotonic
        self._session = session
        self._reporter = reporter = Reporter(config)
        self._gate = UseGate()
        self._transport = TokenEndpoint(
            config, clock=clock, on_retry=_counter(reporter, "retries"), session=session
        )
        self._store: TokenStore = store if store is not None else MemoryStore()
        #: The tokens (``tokens``), each owned by its lane's refresher; the manager delegates.
        self._lanes = build_lanes(
            count=settings.tokens,
            config=config,
            store=self._store,
            transport=self._transport,
            reporter=reporter,
            clock=clock,
            job_for=lambda lane: _job_for(self, lane, config.client_id),
        )
        # Lane 0's refresher and token state (current cell, credentials, acquisition, closed).
        self._refresher = self._lanes.first.refresher
        self._flight = self._lanes.first.flight
        if self._lanes.count > 1:  # round-robin; the class's get_token serves one token as is
            self.get_token = self._lanes.get_token  # type: ignore[method-assign]
        refreshers = [lane.refresher for lane in self._lanes.all]
        self._rotator = Rotator(refreshers, self._gate, reporter, self._transport.revoke)
        #: Paces every counted API call per token (``api_rate_limit``); None: not paced.
        self._pacer = make_pacer(settings.api_rate_limit, settings.api_rate_wait, store, clock)
        self._port = AdapterPort(
            self._lanes,
            self._gate,
            reporter.metrics,
            self._now,
            pacer=self._pacer,
            emit=reporter.emit_for,
        )
        warn_region_mismatch(config.token_url, config.api_base_url)
        register_fork_handler(self)
        otel.instrument(self)  # spans and instruments, when opentelemetry is importable

    # -- public properties -------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings this manager was made with, explicit keywords merged in (the
        webhook secret and URL kept out of their repr). ``region``, ``token_url`` and
        ``api_base_url`` are as given (None: the default); :attr:`token_url` and
        :attr:`api_base_url` give the resolved ones."""
        return self._settings

    @property
    def _config(self) -> Config:
        """The config in use: credentials and settings, the login host resolved."""
        return self._flight.config

    @property
    def client_id(self) -> str:
        """The client id the next token request uses."""
        return self._config.client_id

    @property
    def token_url(self) -> str:
        """The resolved token endpoint."""
        return self._config.token_url

    @property
    def api_base_url(self) -> str:
        """The resolved Platform API base URL."""
        return self._config.api_base_url

    @property
    def store(self) -> TokenStore:
        """The store this manager shares its token through (a private ``MemoryStore``
        unless one was given)."""
        return self._store

    @property
    def token(self) -> Token | None:
        """The current token (lane 0's with ``tokens`` > 1), without any network call
        (``None`` before the first one)."""
        cell = self._flight.cell
        return cell.token if cell is not None else None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._flight.closed

    @property
    def in_flight_count(self) -> int:
        """Counted uses in progress, every token together."""
        return self._gate.count

    # -- getting a token ---------------------------------------------------------------

    def get_token(self, timeout: float | None = None) -> str:
        """Return a valid access token, fetching one only when none is valid.

        With a valid token this takes no lock and does no I/O. Near expiry the still-valid
        token is returned while a refresh runs on the scheduler (or in this call, with
        ``background_refresh=False``). Callers block only when no valid token exists; then
        they all share one acquisition, each for at most ``timeout`` seconds. With
        ``tokens`` > 1 each call returns the next token in turn (round-robin, no lock).

        Args:
            timeout: Seconds this caller waits at most when no valid token exists (default:
                the longest one acquisition may take; ``inf``: no bound of its own, it waits
                for acquisitions, each of which ends by its own deadline). Giving up does
                not stop the token request: later callers get its token.

        Raises:
            ManagerClosedError: The manager was closed.
            TokenTimeoutError: ``timeout`` passed first.
            InvalidClientError: The credentials are rejected (at once during a cool-down).
            GenesysTokenError: No valid token exists and acquiring one failed.
        """
        cell = self._flight.cell
        if cell is not None and self._now() < cell.refresh_at:
            return cell.access_token
        return self._refresher.slow(timeout).access_token

    def refresh(self, force: bool = False) -> Token:
        """Return the current token, refreshing it when due (or always, with ``force``).

        A forced refresh makes a token request (it never takes the shared store's token),
        with the credentials in place when it is called; it raises when that fails, and
        the current token stays. With ``tokens`` > 1 every token is refreshed when due (all
        of them with ``force``, one request each) and lane 0's is returned.

        Raises:
            ManagerClosedError: The manager was closed.
            GenesysTokenError: Acquiring a token failed.
        """
        if force and self._flight.closed:
            raise ManagerClosedError("the token manager is closed")
        cells = [
            lane.refresher.fetch_new("forced") if force else lane.refresher.slow(None)
            for lane in self._lanes.all
        ]
        return cells[0].token

    # -- rotation and counted uses -------------------------------------------------------

    def rotate(
        self,
        drain_timeout: float | None = None,
        revoke_previous: bool = False,
        *,
        strict: bool = False,
    ) -> Token:
        """Replace the token make-before-break, then retire the old one. With ``tokens`` >
        1 every token in turn; their old ones drain within one ``drain_timeout``; lane 0's
        new token is returned.

        Fetches a new token while calls go on with the old one, swaps it in (every new call
        gets it at once: no caller is held), sets ``rotation_pending`` on the old token's
        counted uses, waits up to ``drain_timeout`` for them to end, then revokes the old
        token if asked. Returns after the drain and the revoke. A use held by the calling
        thread is not waited for.

        Args:
            drain_timeout: Seconds to wait for the old token's uses (default: the setting;
                ``inf``: until they end).
            revoke_previous: Revoke the old token (``DELETE /api/v2/tokens/me``); a refusal
                is logged, not raised.
            strict: A drain that times out raises :class:`DrainTimeoutError`, and the old
                token is then not revoked (the new one is in place already).

        Raises:
            ConfigurationError: ``drain_timeout`` is negative or NaN.
            DrainTimeoutError: ``strict`` and the drain timed out.
            GenesysTokenError: Fetching the new token failed (the old token stays).
        """
        return self._rotator.run(drain_timeout, revoke_previous, strict)

    @contextmanager
    def in_flight(self) -> Iterator[InFlight]:
        """Count a long-lived use of the token, such as a WebSocket, for rotations. It takes
        no pacing slot (``api_rate_limit``): it is not one API call.

        :meth:`rotate` swaps the token, sets ``rotation_pending`` on the yielded handle and
        waits (up to its ``drain_timeout``) for the block to end::

            with manager.in_flight() as use:
                ws = connect(url, token=use.token)
                while not use.rotation_pending.is_set():
                    handle(ws.recv(timeout=1))
        """
        use = self._port.begin_use(paced=False)  # not one API call: it holds no pacing slot
        try:
            yield use
        finally:
            use.end()

    # -- credentials, events, metrics --------------------------------------------------

    def set_credentials(self, client_secret: Secret, client_id: str | None = None) -> None:
        """Use new credentials for the next token request (the current token stays), and
        end a cool-down of rejected credentials. Follow with :meth:`rotate` to switch now.
        Applying the credentials already in use changes nothing (a cool-down stays).

        Raises:
            ConfigurationError: An empty or mistyped value.
        """
        new = Credentials(client_id or self._config.client_id, client_secret)
        warn_if_padded(new.client_id, new.client_secret)
        self._lanes.use_credentials(new)

    def on(self, event_type: str, callback: Listener) -> Callable[[], None]:
        """Call ``callback(record)`` for each event of ``event_type`` (``"*"``: all).

        Listeners run with no lock of the manager held; one that raises is logged and skipped.

        Returns:
            A callable that unsubscribes.
        """
        return self._reporter.on(event_type, callback)

    def metrics(self) -> dict[str, Any]:
        """A snapshot of the counters (bounded memory however long the process runs);
        ``tokens`` is the setting, ``tokens_in_use`` how many hold a usable token now."""
        snap = self._reporter.snapshot(
            in_flight=self._gate.count, cell=self._flight.cell, now=self._now()
        )
        snap["tokens"], snap["tokens_in_use"] = self._lanes.count, self._lanes.in_use()
        snap["credentials_cooldown"] = round(self._refresher.rejected.remaining, 3)
        if self._pacer is not None:
            snap["pacing"] = self._pacer.metrics()
        return snap

    def _scheduled_refresh(self, lane: int = 0) -> None:
        """Run by a scheduler worker at token ``lane``'s planned refresh point."""
        self._lanes.scheduled(lane)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop this manager's refresh at once and release its callers. Idempotent.

        A token request in progress is abandoned: it ends by its own deadline and nothing it
        brings back is installed or saved. Later calls raise :class:`ManagerClosedError`; so
        do callers waiting for a token, at once.
        """
        if not self._lanes.close():  # parks the cells: the hot path takes the slow path
            return
        self._gate.wake_all()
        self._reporter.close()
        self._transport.close()

    def __enter__(self) -> TokenManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Fresh locks and no counted uses; each token's refresh comes back on first use."""
        self._gate.reset_after_fork()
        if self._pacer is not None:
            self._pacer.after_fork()  # the parent's slots are its own calls
        self._reporter.after_fork()
        self._rotator.after_fork()
        if self._session is not None:
            _http.renew_adapters(self._session)  # the parent's keep-alive sockets stay its own
        self._lanes.after_fork(lambda lane: _job_for(self, lane, self.client_id))

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a TokenManager cannot be pickled or sent to a spawned process (multiprocessing "
            "'spawn'/'forkserver'): create one in the child process instead. Servers that "
            "fork (gunicorn --preload) may create it before the fork."
        )

    def __repr__(self) -> str:
        if "_flight" not in vars(self):  # still being built (a traceback's locals, a debugger)
            return "TokenManager(state='initializing')"
        state = "closed" if self._flight.closed else "open"
        token = self.token
        return (
            f"TokenManager(client_id={self._config.client_id!r}, "
            f"token_url={self._config.token_url!r}, state={state!r}, "
            f"token={token.fingerprint if token else None!r}, tokens={self._lanes.count})"
        )


def _job_for(manager: TokenManager, lane: int, client_id: str) -> Job:
    """Token ``lane``'s scheduler job; it holds the manager weakly, so a manager dropped
    without close() is collected and its refresh stops."""

    def run(alive: TokenManager) -> None:
        alive._scheduled_refresh(lane)

    suffix = f"-{lane}" if lane else ""
    return weak_job(manager, run, client_id[:16] + suffix)


def adapter_port(manager: TokenManager) -> AdapterPort:
    """What the adapters (GenesysAuth, the httpx auths, the SDK bridge) need of
    ``manager`` beyond its public API: counted uses and a 401's replacement (internal)."""
    return manager._port


def _counter(reporter: Reporter, name: str) -> Callable[[RetryNotice], None]:
    """A retry callback that counts; it holds the reporter, never the manager (the parts
    must not keep a manager dropped without close() alive: see :func:`adapter_port`)."""

    def count(notice: RetryNotice) -> None:
        reporter.metrics.incr(name)

    return count
