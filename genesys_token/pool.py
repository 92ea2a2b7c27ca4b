"""TokenManagerPool: one manager per OAuth client, for processes that serve many orgs.

A pool makes each :class:`~genesys_token.TokenManager` on first use, with the settings it
was given, and hands the same one to every later caller for that client. Managers of a
pool cost what any manager costs, no more: they share the process-wide refresh scheduler,
the process-wide connection pool of their login host, and the pool's store.

Last use is what :meth:`TokenManagerPool.get` records, under the pool's lock: the
manager's own ``get_token()`` stays the lock-free read it is, with no bookkeeping added. A
manager with counted uses in flight (``GenesysAuth`` calls, ``in_flight()`` blocks) is
never evicted.

A caller is trusted with a pooled manager only by the secret it holds: one asking with
another secret than the manager's has that secret proven first by a token request of its
own (``_proofs``), and is refused with the endpoint's
:class:`~genesys_token.InvalidClientError` if it fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from .core.clock import SYSTEM_CLOCK, Clock
from .core.fork import register_fork_handler
from .core.held_reads import HeldReads
from .core.scheduler import scheduler, weak_job
from .core.secret_proofs import SecretProofs, same_name, same_value, secret_name
from .credentials import (
    Secret,
    SecretValue,
    check_secret,
    digest,
    hidden,
    hide_text,
    is_known,
)
from .errors import ConfigurationError, ManagerClosedError, SecretSourceError
from .manager import TokenManager
from .observability.metrics import COUNTERS
from .proxies import Proxies
from .settings import UNSET, Config, Credentials, Settings, given_settings
from .stores.base import MemoryStore, TokenStore

__all__ = ["TokenManagerPool"]

log = logging.getLogger(__name__)

#: An idle-eviction sweep runs every max_idle / this (and never more often than the floor):
#: a manager goes between max_idle and 1.25 x max_idle after its last use.
_SWEEPS_PER_MAX_IDLE = 4
_SWEEP_FLOOR = 0.05
#: A proof whose probe another caller settled is looked at again: at most this many times
#: (each look is a lock and a dict lookup; the proof itself is shared).
_PROOF_ROUNDS = 3

_Key = tuple[str, str, tuple[str, ...]]
_Alias = tuple[str, str | None, str | None, str | None, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Spec:
    """How the managers of one client are made (all but the secret)."""

    client_id: str
    #: The pool's settings with this client's scopes and location.
    settings: Settings


@dataclass(frozen=True, slots=True)
class _Objects:
    """What every manager of the pool is given as it is (not settings)."""

    store: TokenStore
    clock: Clock | None
    session: requests.Session | None


@dataclass(eq=False, slots=True)
class _Entry:
    key: _Key
    spec: _Spec
    manager: TokenManager
    secret: Secret
    last_used: float
    #: The get() spellings that lead here (usually one: a list is smaller than a set).
    aliases: list[_Alias] = field(default_factory=list)
    #: Reads of the entry's secret source by get() callers comparing theirs (bounded).
    reads: HeldReads = field(default_factory=HeldReads)


class TokenManagerPool:
    """One :class:`~genesys_token.TokenManager` per OAuth client, made on first use.

    ::

        with TokenManagerPool(store=RedisStore.from_url(url), max_idle=3600) as pool:
            manager = pool.get(org.client_id, org.client_secret, region=org.region)
            session.auth = GenesysAuth(manager)

    The settings are shared by every manager of the pool: ``settings=``, and keywords
    (each a :class:`~genesys_token.Settings` field; one given explicitly overrides the
    field). ``scopes`` is per client: pass it to :meth:`get`. ``region``, ``token_url`` and
    ``api_base_url`` here are defaults for :meth:`get` calls that give none of the three.

    Args:
        settings: A :class:`~genesys_token.Settings` for every manager (default:
            ``Settings()``); its ``scopes`` must be empty.
        max_idle: Close and drop a manager this many seconds after its last
            :meth:`get` (None, the default: never). A manager with counted uses in flight
            is kept. Whoever still holds an evicted manager gets
            :class:`~genesys_token.ManagerClosedError` from it; a later :meth:`get` makes
            a new one (its first token may come from the store).
        store: Shared by every manager (default: one
            :class:`~genesys_token.stores.MemoryStore` for the pool).
        clock: Given to every manager (tests).
        session: Given to every manager (see :class:`~genesys_token.TokenManager`).
        region: Default for :meth:`get` (default: the settings' value); as are
            ``token_url`` and ``api_base_url``. Every other keyword: the
            :class:`~genesys_token.Settings` field of that name.

    Raises:
        ConfigurationError: An invalid setting (checked now, not at first use).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        max_idle: float | None = None,
        store: TokenStore | None = None,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        region: str | None = UNSET,
        token_url: str | None = UNSET,
        api_base_url: str | None = UNSET,
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
    ) -> None:
        # Hidden first: no frame of ours holds a secret in clear, whatever error follows.
        webhook_secret = hide_text(webhook_secret)  # type: ignore[assignment]
        self._settings = given_settings(settings).merged(locals())
        if self._settings.scopes:
            raise ConfigurationError(
                "scopes is not a setting a pool can share (per client: pass it to get())",
                field="scopes",
            )
        if self._settings.region is not None:
            # Checked now, as the rest: a region resolved nowhere else until the first get().
            Config.of(Credentials("pool-settings-check", "unused"), self._settings)
        self._max_idle = _max_idle(max_idle)
        self._objects = _Objects(store if store is not None else MemoryStore(), clock, session)
        self._now = (clock or SYSTEM_CLOCK).monotonic
        self._lock = threading.Lock()
        self._entries: dict[_Key, _Entry] = {}
        self._aliases: dict[_Alias, _Entry] = {}
        self._closed = False
        self._created = 0
        self._evicted = 0
        self._sweep_armed = False
        self._sweep = weak_job(self, TokenManagerPool._swept, "pool-sweep")
        self._proofs = SecretProofs(self._now)
        #: How long get() awaits a read of a manager's secret source (see ``_held``).
        self._read_bound = float(sum(self._settings.timeout))
        register_fork_handler(self)

    # -- getting a manager -------------------------------------------------------------

    def get(
        self,
        client_id: str,
        client_secret: Secret,
        *,
        region: str | None = None,
        token_url: str | None = None,
        api_base_url: str | None = None,
        scopes: str | Iterable[str] = (),
    ) -> TokenManager:
        """Return the manager of this client, making it on first use (thread-safe: callers
        asking at once all get the one manager).

        A client is its client id, resolved token URL and scopes (in any order). Asking
        with another secret than the manager has proves that secret first, with a token
        request of its own (no shared store, nothing of the manager's used): a rejected
        secret gets :class:`~genesys_token.InvalidClientError` and changes nothing (callers
        with that secret share one request, then its cool-down). An accepted one is secret
        rotation: the manager gets it for its next token request, the current token stays
        (:meth:`TokenManager.set_credentials`); a manager that never had a token is
        replaced instead (closed), so whoever asked with the unproven secret it was made
        with learns nothing. A secret accepted within the last minute gets the manager
        again with no request and no switch (two valid secrets alternating during a
        rollout do not flap it), unless the manager's own secret is being rejected.
        Give one secret per client.
        A secret source (callable) is read once here, locally, and counts as the value
        it gives: a new ``lambda`` per call giving the manager's value costs no token
        request; one giving another value is proven like a string. After a rejection,
        proofs of other secrets of the client pause (1 s doubling to 60 s).

        Args:
            client_id: The OAuth client id of the org.
            client_secret: Its secret, or a zero-argument callable returning it.
            region: The org's region (see :class:`~genesys_token.TokenManager`).
            token_url: Its token URL, overriding the region's.
            api_base_url: Its API base URL, overriding the region's.
            scopes: Scopes to ask for.

        Raises:
            ManagerClosedError: The pool was closed.
            ConfigurationError: An invalid value, or this client is in the pool already
                with another ``api_base_url``.
            InvalidClientError: Another secret than the manager's, rejected by the token
                endpoint (now, or moments ago: then no request is made).
            RateLimitedError: Another secret than the manager's, while proofs of other
                secrets of this client are paused after a rejection (``retry_after``
                says how long); no request is made.
            SecretSourceError: ``client_secret`` is a source that failed when read.
            GenesysTokenError: Another secret than the manager's could not be proven (no
                answer from the token endpoint); the manager is unchanged.
        """
        # Unchecked: only a key made of checked values is in the dict, and nothing else can
        # equal one. Checking every value on every call would cost more than the lookup.
        quick = (client_id, region, token_url, api_base_url, _quick_scopes(scopes))
        with self._lock:
            if self._closed:
                raise ManagerClosedError("the token manager pool is closed")
            try:
                entry = self._aliases.get(quick)  # type: ignore[arg-type]
            except TypeError:  # unhashable: a wrong type, refused by _alias() below
                entry = None
            if entry is None or entry.manager.closed:
                alias = _alias(client_id, region, token_url, api_base_url, scopes)
                entry = self._find_or_make(alias, client_secret)
            if same_value(entry.secret, client_secret):
                return self._used(entry)
            key, spec = entry.key, entry.spec
        # Hidden and checked before anything is done with it: a clear ConfigurationError.
        client_secret = check_secret(client_secret)
        # A source is read once here, locally (no token request): it is what it gives.
        name = secret_name(spec.client_id, client_secret)
        return self._with_other_secret(key, spec, client_secret, name)

    def _used(self, entry: _Entry) -> TokenManager:
        """Note a use of ``entry`` and hand out its manager (the lock is held)."""
        entry.last_used = self._now()
        if not self._sweep_armed and self._max_idle is not None:
            self._arm_sweep()
        return entry.manager

    def _with_other_secret(
        self, key: _Key, spec: _Spec, secret: Secret, name: bytes
    ) -> TokenManager:
        """Prove ``secret``, named ``name``, unless it is the manager's value (no lock held
        while a source is read or the probe runs), then make it current."""
        for _ in range(_PROOF_ROUNDS):
            with self._lock:
                if self._closed:
                    raise ManagerClosedError("the token manager pool is closed")
                entry = self._entries.get(key)
                if entry is not None and entry.manager.closed:
                    entry = None
                if entry is not None and (
                    same_value(entry.secret, secret) or self._trusted_again(entry, name)
                ):
                    return self._used(entry)
            if entry is not None and self._holds(entry, name):
                with self._lock:
                    if self._entries.get(key) is entry and not entry.manager.closed:
                        return self._used(entry)
            proven = self._proofs.prove(
                key, name, secret, lambda s: _build(self._objects, spec, s, probe=True)
            )
            if proven is not None:
                # The secret the probe was made with: a source asked with meanwhile is not it.
                return self._make_current(key, spec, name, proven)
        raise ManagerClosedError("the secret's proof was settled and replaced meanwhile")

    def _holds(self, entry: _Entry, name: bytes) -> bool:
        """Whether ``entry``'s secret now has the value named ``name``; a source that fails
        or hangs (awaited at most the pool's timeout) holds nothing: the other is proven."""
        held = entry.secret
        if isinstance(held, str | SecretValue):
            return same_name(digest(entry.spec.client_id, held), name)
        try:
            return same_name(entry.reads.name(entry.spec.client_id, held, self._read_bound), name)
        except SecretSourceError:
            return False

    def _trusted_again(self, entry: _Entry, name: Any) -> bool:
        """A secret accepted moments ago gets the manager with no request and no switch
        (two valid secrets alternating must not flap it), unless the manager's own secret
        is being rejected now: then the other secret is proven and made current."""
        if not self._proofs.recently_accepted(entry.key, name):
            return False
        return not entry.manager.metrics().get("credentials_cooldown")

    def _make_current(self, key: _Key, spec: _Spec, name: bytes, secret: Secret) -> TokenManager:
        """The token endpoint accepted ``secret``: the client's manager uses it from now."""
        retired: TokenManager | None = None
        with self._lock:
            if self._closed:
                raise ManagerClosedError("the token manager pool is closed")
            entry = self._entries.get(key)
            if entry is None or entry.manager.closed:
                if entry is not None:
                    self._drop(key, entry)
                entry = self._add(key, spec, secret)
            elif not same_value(entry.secret, secret) and not (
                is_known(entry.secret) and same_name(digest(spec.client_id, entry.secret), name)
            ):
                if entry.manager.token is None:
                    # Never worked: it may have been made with a wrong secret, and whoever
                    # holds it must not be handed this one.
                    retired, entry.manager = (
                        entry.manager,
                        _build(self._objects, spec, secret),
                    )
                    self._created += 1
                else:
                    entry.manager.set_credentials(secret)
                entry.secret = _kept(secret)
            manager = self._used(entry)
        self._proofs.settle(key, name)
        if retired is not None:
            retired.close()
        return manager

    def _add(self, key: _Key, spec: _Spec, secret: Secret) -> _Entry:
        """A new entry for ``key`` (the lock is held)."""
        entry = self._entries[key] = _Entry(
            key, spec, _build(self._objects, spec, secret), _kept(secret), self._now()
        )
        self._created += 1
        return entry

    def _find_or_make(self, alias: _Alias, client_secret: Secret) -> _Entry:
        client_id, region, token_url, api_base_url, scopes = alias
        # get()'s location replaces the pool's as one unit, when it gives any of it.
        if region is not None or token_url is not None or api_base_url is not None:
            settings = self._settings.replace(
                region=region,
                token_url=token_url,
                api_base_url=api_base_url,
                scopes=scopes,
            )
        else:
            settings = self._settings.replace(scopes=scopes)
        config = Config.of(Credentials(client_id, client_secret), settings)
        key: _Key = (config.client_id, config.token_url, tuple(sorted(config.scopes)))
        entry = self._entries.get(key)
        if entry is not None and entry.manager.closed:
            self._drop(key, entry)  # closed by its holder: make a new one
            entry = None
        if entry is None:
            entry = self._add(key, _Spec(client_id, settings), client_secret)
        elif entry.manager.api_base_url != config.api_base_url:
            raise ConfigurationError(
                f"client {client_id!r} is in the pool already, with api_base_url "
                f"{entry.manager.api_base_url!r}",
                field="api_base_url",
            )
        if alias not in entry.aliases:
            entry.aliases.append(alias)
        self._aliases[alias] = entry
        return entry

    def _drop(self, key: _Key, entry: _Entry) -> None:
        """Forget ``entry`` (the lock is held)."""
        del self._entries[key]
        self._proofs.forget(key)
        for alias in entry.aliases:
            if self._aliases.get(alias) is entry:
                del self._aliases[alias]

    def __len__(self) -> int:
        """How many managers the pool holds."""
        return len(self._entries)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- idle eviction -----------------------------------------------------------------

    def evict_idle(self) -> int:
        """Close and drop every manager unused for ``max_idle`` seconds now (the pool also
        does this by itself, on the process-wide scheduler). Managers their holders closed
        are dropped too (not counted as evicted).

        Returns:
            How many managers were evicted (0 without ``max_idle``).
        """
        max_idle = self._max_idle
        if max_idle is None:
            return 0
        with self._lock:
            now = self._now()
            idle = [
                (key, entry)
                for key, entry in self._entries.items()
                if now - entry.last_used >= max_idle and entry.manager.in_flight_count == 0
            ]
            gone = [(k, e) for k, e in self._entries.items() if e.manager.closed]
            for key, entry in {id(e): (k, e) for k, e in (*idle, *gone)}.values():
                self._drop(key, entry)
            idle = [(k, e) for k, e in idle if not e.manager.closed]
            self._evicted += len(idle)
        for _, entry in idle:
            entry.manager.close()
        if idle:
            log.debug("evicted %d idle token manager(s)", len(idle))
        return len(idle)

    def _swept(self) -> None:
        """The scheduler's turn: evict, then come back while any manager is left."""
        self.evict_idle()
        with self._lock:
            self._sweep_armed = False
            self._arm_sweep()

    def _arm_sweep(self) -> None:
        """Plan the next sweep (the lock is held). None is planned for an empty pool, so
        an idle pool keeps no scheduler thread alive."""
        if self._max_idle is None or self._sweep_armed or self._closed or not self._entries:
            return
        self._sweep_armed = True
        delay = max(_SWEEP_FLOOR, self._max_idle / _SWEEPS_PER_MAX_IDLE)
        scheduler().schedule(self._sweep, delay)

    # -- figures -----------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Per-client figures and totals.

        Returns:
            ``managers`` (held now), ``created`` and ``evicted`` (since the pool was made),
            ``totals`` (every counter of :meth:`TokenManager.metrics` summed, plus
            ``in_flight`` and ``without_valid_token``: managers with no token or an
            expired one), ``clients``: one dict per manager with ``client_id``,
            ``token_url``, ``scopes``, ``idle_seconds`` and its ``metrics``, and
            ``secret_checks``: proofs of other secrets than a manager's (``accepted``,
            ``rejected`` callers, and the ``token_requests`` the proofs made).
        """
        with self._lock:
            entries = list(self._entries.values())
            created, evicted = self._created, self._evicted
        totals, clients = _client_figures(entries, self._now())
        return {
            "managers": len(entries),
            "created": created,
            "evicted": evicted,
            "totals": totals,
            "clients": clients,
            "secret_checks": self._proofs.figures(),
        }

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close every manager and refuse later :meth:`get` calls. Idempotent.

        The pool's store is left open: it may be shared with other pools or processes.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            entries = list(self._entries.values())
            self._entries.clear()
            self._aliases.clear()
        scheduler().cancel(self._sweep)
        self._proofs.close()
        for entry in entries:
            entry.manager.close()

    def __enter__(self) -> TokenManagerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """A fresh lock (a parent thread may have held it); the sweep comes back on the
        next get(), on the child's own scheduler."""
        self._lock = threading.Lock()
        self._sweep = weak_job(self, TokenManagerPool._swept, "pool-sweep")
        self._sweep_armed = False
        self._proofs.after_fork()
        for entry in self._entries.values():
            entry.reads.after_fork()

    def __reduce__(self) -> Any:
        raise TypeError("a TokenManagerPool cannot be pickled: create one in each process")

    def __repr__(self) -> str:
        if "_closed" not in vars(self):  # still being built (a traceback's locals, a debugger)
            return "TokenManagerPool(state='initializing')"
        state = "closed" if self._closed else "open"
        return f"TokenManagerPool(managers={len(self._entries)}, state={state!r})"


def _build(objects: _Objects, spec: _Spec, secret: Secret, *, probe: bool = False) -> TokenManager:
    """A manager of ``spec``'s client with the pool's shared ``objects``; a probe shares
    nothing (its own MemoryStore: an entry planted in a shared store is no proof) and has
    no background refresh and no webhook."""
    settings, store = spec.settings, objects.store
    if probe:
        store = MemoryStore()
        settings = settings.replace(background_refresh=False, webhook_url=None, webhook_secret=None)
    return TokenManager(
        spec.client_id,
        secret,
        settings=settings,
        store=store,
        clock=objects.clock,
        session=objects.session,
    )


def _client_figures(
    entries: list[_Entry], now: float
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The totals and the per-client figures of :meth:`TokenManagerPool.metrics`."""
    totals: dict[str, int] = dict.fromkeys((*COUNTERS, "in_flight", "without_valid_token"), 0)
    clients = []
    for entry in entries:
        client_id, token_url, scopes = entry.key
        snap = entry.manager.metrics()
        for name in (*COUNTERS, "in_flight"):
            totals[name] += int(snap.get(name) or 0)
        expires_in = snap.get("expires_in")
        if expires_in is None or expires_in <= 0:
            totals["without_valid_token"] += 1
        clients.append(
            {
                "client_id": client_id,
                "token_url": token_url,
                "scopes": list(scopes),
                "idle_seconds": round(max(0.0, now - entry.last_used), 3),
                "metrics": snap,
            }
        )
    return totals, clients


def _quick_scopes(scopes: Any) -> tuple[Any, ...] | None:
    kind = type(scopes)
    if kind is tuple:
        return scopes  # type: ignore[no-any-return]
    if kind is str:
        return tuple(scopes.split())
    if kind is list:
        return tuple(scopes)
    return None


def _alias(client_id: Any, region: Any, token_url: Any, api_base_url: Any, scopes: Any) -> _Alias:
    """The arguments of a get() as a dict key; a value of the wrong type (which could not
    be a key) is refused here, with the field named, as the manager would refuse it."""
    for name, value in (("region", region), ("token_url", token_url)):
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a string", field=name)
    if api_base_url is not None and not isinstance(api_base_url, str):
        raise ConfigurationError("api_base_url must be a string", field="api_base_url")
    if not isinstance(client_id, str):
        raise ConfigurationError("client_id must be a string", field="client_id")
    scope_tuple: tuple[Any, ...] = ()
    if isinstance(scopes, str):
        scope_tuple = tuple(scopes.split())
    elif isinstance(scopes, Iterable):
        scope_tuple = tuple(scopes)
    if not isinstance(scopes, Iterable) or not all(isinstance(s, str) for s in scope_tuple):
        raise ConfigurationError("scopes must be a string or a list of strings", field="scopes")
    return (client_id, region, token_url, api_base_url, scope_tuple)


def _max_idle(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            "max_idle must be a number of seconds > 0, or None", field="max_idle"
        )
    return float(value)


def _kept(secret: Secret) -> Secret:
    """What an entry keeps of a secret: a value hidden in a ``SecretValue`` (no plain copy
    in the pool's dicts), a source as it is."""
    return hidden(secret) if is_known(secret) else secret
