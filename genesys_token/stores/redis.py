"""RedisStore: one token per client shared by a fleet of machines through Redis.

Keys (``{...}`` is a Redis Cluster hash tag: every key of one entry lives in one slot, so
the scripts that touch them run on a Cluster): ``<prefix>{<key>}:token`` holds the sealed
token and expires with it (``PX``); ``<prefix>{<key>}:lock`` is the refresh lock. API-call
pacing (:meth:`RedisStore.slots`) keeps ``<prefix>{<fingerprint>}:api-slots`` and
``:api-penalty`` per access token (see ``_redis_slots``).

The lock is a lease whose holder shows that it is alive (see
:mod:`~genesys_token.stores._redis_lock`): it writes a new value every second while inside
the block, never past its ``lease``, and a waiter takes over a lock whose value has not
changed for 3 s (a dead holder's, or one planted by hand with any time to live). A lock key
of another type, an oversized value, or a value not shaped ``<32 hex digits>:<number>`` counts
as unchanged however often it is rewritten, so it too is taken over after 3 s. What the
store cannot tell from a live holder: a Redis writer that mimics that shape with a changing
number delays every cold acquisition by the manager's whole lock wait (73 s with default
settings; bounded by ``get_token(timeout=...)``), and one that overwrites or deletes a held
lock lets peers fetch at once. Who can write to the database can do both.

A Redis outage must never become an authentication outage: every call has short socket
timeouts and no retry backoff, every Redis error becomes a
:class:`~genesys_token.errors.StoreError` (which the manager reports before using the
network), and after a connection failure Redis is left alone for ``outage_backoff`` seconds
so that each refresh pays the timeout once at most. The store logs nothing above DEBUG, but
one WARNING per token key that holds what is not ours: a key of another type, or a value
over :data:`MAX_ENTRY_BYTES`, which is counted (``STRLEN``) but never read, and treated as
no entry.

TLS (``rediss://``): the client checks that the server's certificate names the host of the
URL, as redis-py 6 does by default and older versions (down to 4.5) do not, unless the URL
says otherwise (``ssl_check_hostname=false`` or ``ssl_cert_reqs=none``: what the URL says
wins). A Cluster client of redis-py < 6 cannot check host names at all: with ``rediss://``
it is refused (:class:`~genesys_token.errors.ConfigurationError`).

Sentinel and Cluster: pass ``client=Sentinel(...).master_for(name, socket_timeout=1.0)`` or
``client=RedisCluster(...)``, or let :meth:`RedisStore.from_url` build a Cluster client with
``cluster=True``.
"""

from __future__ import annotations

import inspect
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..token import Token
from ._redis_lock import RENEWALS_PER_TTL as RENEWALS_PER_TTL  # kept where it was
from ._redis_lock import RedisLock
from ._redis_slots import RedisSlots
from ._seal import MAX_BLOB_BYTES, Sealer
from .base import DEFAULT_LEASE, decode_token, encode_token, require_sealer, track_fork

log = logging.getLogger("genesys_token.stores")

DEFAULT_URL = "redis://localhost:6379/0"
#: Socket timeouts for clients built from a URL: Redis answers in microseconds, so a
#: second means it is down or unreachable, and the manager should use the network instead.
SOCKET_TIMEOUT = 1.0
#: The lock key's time to live, renewed while its holder lives: a holder that died delays a
#: peer that arrives later by at most this much (a peer already waiting takes over sooner).
LOCK_TTL = 30.0
#: After a connection failure, Redis is not tried again for this long.
OUTAGE_BACKOFF = 5.0
#: The pacing scripts' own connections (when the store builds a plain client): a paced call
#: on an event loop asks Redis inline, so a Redis that stops answering must cost it this much
#: at most (connect or read, no retry), not the token path's timeout twice.
SLOTS_SOCKET_TIMEOUT = 0.25
#: After such a timeout the pacing scripts rest this long (pacing goes per process), as
#: the pacer itself retries a failed store (``RETRY_BACKEND``).
SLOTS_OUTAGE_BACKOFF = 1.0
#: A sealed entry is a few kilobytes; a larger value at the token key is not ours and is
#: never sent to the client (the same cap as the sealer's and FileStore's).
MAX_ENTRY_BYTES = MAX_BLOB_BYTES
#: Read the token entry: the value, nil when there is none, or instead of a value that is not
#: ours, -1 (a key of another type than a string) or its size (longer than ARGV[1]).
_LOAD_SCRIPT = """
local kind = redis.call("type", KEYS[1])["ok"]
if kind == "none" then
    return false
end
if kind ~= "string" then
    return -1
end
local size = redis.call("strlen", KEYS[1])
if size > tonumber(ARGV[1]) then
    return size
end
return redis.call("get", KEYS[1])
"""


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "RedisStore needs the redis package: pip install 'genesys-token[redis]'"
        ) from None
    return redis


class RedisStore:
    """Tokens shared by every process of every machine that can reach one Redis.

    Entries are sealed (see :class:`~genesys_token.stores._seal.Sealer`): a reader of the
    database learns no token, and an entry planted without the client secret is ignored. A
    writer to the database can still slow cold starts (see the module documentation): a lock
    value that mimics a live holder holds every manager off for its lock wait, up to 73 s
    with default settings, or ``get_token(timeout=...)``.

    Args:
        url: A ``redis://``, ``rediss://`` or ``unix://`` URL (default
            ``redis://localhost:6379/0``). The client built from it has 1-second socket
            timeouts and no retry backoff.
        client: A ready client instead of ``url``: ``redis.Redis``, a Sentinel's
            ``master_for(...)``, or ``redis.cluster.RedisCluster`` (give it socket timeouts:
            without them a hung Redis hangs token acquisition). Not closed by :meth:`close`.
        prefix: Prepended to every key, to share one Redis between applications.
        lock_ttl: The lock key's time to live, renewed while held: how long a lock of a
            holder that died holds off a peer that arrives later.
        outage_backoff: Seconds Redis is skipped after a connection failure.
        socket_timeout: Connect and read timeout of a client built from ``url``.
        cluster: Build a ``RedisCluster`` client from ``url`` (any node of the cluster).

    Raises:
        ImportError: The ``redis`` package is missing (install the ``[redis]`` extra).
        ConfigurationError: Both ``url`` and ``client`` given, or a bad value.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "genesys-token:",
        lock_ttl: float = LOCK_TTL,
        outage_backoff: float = OUTAGE_BACKOFF,
        socket_timeout: float = SOCKET_TIMEOUT,
        cluster: bool = False,
    ) -> None:
        self._redis = _redis_module()
        if url is not None and client is not None:
            raise ConfigurationError("give RedisStore a url or a client, not both", field="url")
        if url is not None and not isinstance(url, str):
            raise ConfigurationError("RedisStore url must be a string", field="url")
        if not isinstance(prefix, str):
            raise ConfigurationError("RedisStore prefix must be a string", field="prefix")
        if not isinstance(cluster, bool) or (cluster and client is not None):
            raise ConfigurationError("cluster=True builds its own client from url", field="cluster")
        for name, value in (
            ("lock_ttl", lock_ttl),
            ("outage_backoff", outage_backoff),
            ("socket_timeout", socket_timeout),
        ):
            if not _positive(value):
                raise ConfigurationError(f"{name} must be a positive number", field=name)
        self._url = url or DEFAULT_URL
        self._tls = _hostname_check(self._redis, self._url, cluster) if client is None else {}
        self._prefix = prefix
        self._cluster = cluster
        self._lock_ttl = float(lock_ttl)
        self._outage_backoff = float(outage_backoff)
        self._socket_timeout = float(socket_timeout)
        self._owns_client = client is None
        self._down_until = 0.0
        #: The pacing client's own outage: its 0.25 s timeouts must not mark the token store
        #: down (its 1 s client may well answer a Redis busy for half a second).
        self._slots_down_until = 0.0
        self._closed = False
        self._guard = threading.Lock()
        self._client: Any = None
        self._read: Any = None
        #: Token keys already warned about (a value that is not ours): one warning each.
        self._warned: set[str] = set()
        self._lock = RedisLock(self._call, lock_ttl=self._lock_ttl)
        self._slots_client: Any = None
        self._slots = RedisSlots(self._slots_call, prefix)
        if client is not None:
            self._bind(client)
            _warn_without_timeouts(client)
            _warn_without_hostname_check(self._redis, client)
        elif not cluster:
            self._bind(self._build_client())  # a plain client connects lazily by itself
        self._pid = os.getpid()
        track_fork(self)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisStore:
        """Build a store with its own client for ``url`` (1-second socket timeouts).

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL, as redis-py reads it
                (``redis://:password@host:6379/0``, ``rediss://...?ssl_cert_reqs=required``).
            cluster: ``url`` names a node of a Redis Cluster: build a ``RedisCluster``
                client (connected on first use, so a cluster that is down at start-up is
                an outage to survive, not a crash).
            **options: Other keyword arguments of :class:`RedisStore`.
        """
        return cls(url, cluster=cluster, **options)

    def _build_client(self, timeout: float | None = None, retries: int = 1) -> Any:
        redis = self._redis
        # redis-py retries 3-10 times with backoff by default: seconds of waiting while
        # Redis is down. One immediate retry still heals a stale pooled connection after a
        # Redis restart.
        timeout = self._socket_timeout if timeout is None else timeout
        options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), retries),
            **self._tls,
        }
        try:
            if self._cluster:
                return redis.cluster.RedisCluster.from_url(self._url, **options)
            return redis.Redis.from_url(self._url, **options)
        except ValueError:
            # Not the parser's message: it may quote the URL, and a URL may hold a password.
            raise ConfigurationError(
                "invalid Redis URL (expected redis://, rediss:// or unix://)", field="url"
            ) from None

    def _bind(self, client: Any) -> None:
        self._client = client
        self._read = client.register_script(_LOAD_SCRIPT)
        self._lock.bind(client)

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{{{key}}}:{kind}"

    def _call(
        self, what: str, run: Callable[[Any], Any], *, always: bool = False, client: Any = None
    ) -> Any:
        """Run ``run(client)``, turning every Redis failure into a StoreError.

        ``always``: try even during the outage backoff (renewing a held lock: skipping it
        would let the lock lapse under its live holder). ``client``: another client than the
        store's (the pacing scripts').
        """
        slots = client is not None
        if not always and time.monotonic() < (
            self._slots_down_until if slots else self._down_until
        ):
            raise StoreError(f"redis unavailable; not retrying for up to {self._outage_backoff:g}s")
        errors = self._redis.exceptions
        # RedisClusterException ("no reachable node", "slot not covered") is no RedisError.
        unreachable = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.ClusterDownError,
            errors.RedisClusterException,
            OSError,
        )
        try:
            return run(client if client is not None else self._ready_client())
        except unreachable as exc:
            if slots:  # pacing goes per process for a moment; tokens are not concerned
                self._slots_down_until = time.monotonic() + SLOTS_OUTAGE_BACKOFF
            else:
                self._down_until = time.monotonic() + self._outage_backoff
            raise StoreError(f"redis {what} failed: {type(exc).__name__}") from None
        except errors.RedisError as exc:
            raise StoreError(f"redis {what} failed: {type(exc).__name__}") from None

    def _slots_call(self, what: str, run: Callable[[Any], Any], *, always: bool = False) -> Any:
        """:meth:`_call` for the pacing scripts: on a client of their own with
        :data:`SLOTS_SOCKET_TIMEOUT` and no retry when this store built a plain client (a
        given client or a Cluster's keeps its own timeouts)."""
        if self._closed:
            raise StoreError("the store is closed")  # a late release must not reconnect
        if not self._owns_client or self._cluster:
            return self._call(what, run, always=always)
        client = self._slots_client
        if client is None:
            with self._guard:
                if self._slots_client is None:
                    self._slots_client = self._build_client(SLOTS_SOCKET_TIMEOUT, retries=0)
                client = self._slots_client
        return self._call(what, run, always=always, client=client)

    def _ready_client(self) -> Any:
        client = self._client
        if client is None:  # a Cluster client, built (and connected) on first use
            with self._guard:
                if self._client is None:
                    self._bind(self._build_client())
                client = self._client
        return client

    # -- the protocol ----------------------------------------------------------------

    def load(
        self, key: str, *, now_monotonic: float, now_wall: float, sealer: Sealer | None = None
    ) -> Token | None:
        """Return the token for ``key``, or ``None`` if missing, expired or unusable.

        Unusable: sealed with another secret, altered, in the old clear format, corrupt,
        larger than :data:`MAX_ENTRY_BYTES` or not a string (these two are not read, and
        are warned about once per key).

        Raises:
            StoreError: No ``sealer``, or Redis is unreachable, slow or failing.
        """
        sealer = require_sealer(sealer, "RedisStore")
        name = self._key("token", key)
        raw = self._call(
            "read",
            lambda client: self._read(keys=[name], args=[MAX_ENTRY_BYTES], client=client),
        )
        if isinstance(raw, int) and not isinstance(raw, bool):
            self._warn_foreign(name, raw)
            return None
        if raw is None or not isinstance(raw, bytes | str):
            return None
        token = decode_token(raw, sealer, now_monotonic=now_monotonic, now_wall=now_wall)
        if token is None:
            log.debug("ignoring an unusable Redis token entry (unsealed, foreign or expired)")
        return token

    def _warn_foreign(self, name: str, size: int) -> None:
        with self._guard:
            if name in self._warned:
                return
            self._warned.add(name)
        what = "is not a string" if size < 0 else f"holds {size} bytes (over {MAX_ENTRY_BYTES})"
        log.warning("ignoring Redis key %s: it %s, so it is no token entry of ours", name, what)

    def save(self, key: str, token: Token, *, sealer: Sealer | None = None) -> None:
        """Store ``token`` sealed, with a time to live equal to what is left of its life.

        Raises:
            StoreError: No ``sealer``, or Redis is unreachable, slow or failing.
        """
        blob = encode_token(token, require_sealer(sealer, "RedisStore"))
        ttl_ms = int((token.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return  # already dead by the shared (wall) clock: nobody could use it
        name = self._key("token", key)
        self._call("write", lambda client: client.set(name, blob, px=ttl_ms))

    def lock(
        self, key: str, timeout: float, *, lease: float | None = None
    ) -> AbstractContextManager[bool]:
        """Hold the refresh lock of ``key`` across the fleet, renewed for up to ``lease``.

        Waits while the holder is alive (its lock changes every second); a lock unchanged
        for 3 s is taken over.

        Yields:
            True when held; False when ``timeout`` passed while another holder had it.

        Raises:
            StoreError: Redis failed while taking the lock, or while releasing it after a
                block that ended normally (a waiter takes it over within 3 s anyway).
            ConfigurationError: ``lease`` is not a positive number.
        """
        lease = DEFAULT_LEASE if lease is None else lease
        if not _positive(lease):
            raise ConfigurationError("lease must be a positive number", field="lease")
        return self._lock.hold(self._key("lock", key), timeout, float(lease))

    def slots(self) -> RedisSlots:
        """The API-call slots of each token, shared by every process using this Redis (see
        :mod:`~genesys_token.stores.slots`): one script per acquisition, on Redis's clock."""
        return self._slots

    def close(self) -> None:
        """Close the connection pool of a client this store built (not a given one), once
        the paced releases still pending have reached Redis."""
        self._slots.close()
        self._closed = True
        if self._owns_client and self._client is not None:
            self._client.close()
        if self._slots_client is not None:
            self._slots_client.close()

    def _after_fork(self) -> None:
        """In a forked child: its own connections, no outage remembered.

        redis-py notices a fork by pid, but resetting its pool takes a lock that a parent
        thread may have held at fork time, so a client we own is simply rebuilt.
        """
        if self._pid == os.getpid():
            return  # already done for this child
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._lock.after_fork()
        self._slots.after_fork()
        self._slots_client = None  # the parent's connections stay its own
        if self._owns_client:
            self._client = None
            if not self._cluster:
                self._bind(self._build_client())
        self._down_until = self._slots_down_until = 0.0

    def __repr__(self) -> str:
        return (
            f"RedisStore(prefix={self._prefix!r}, cluster={self._cluster}, "
            f"owns_client={self._owns_client})"
        )


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


#: What redis-py's URL parser reads as false (``redis.connection.to_bool``).
_FALSE = ("0", "F", "FALSE", "N", "NO")


def _hostname_check(redis: Any, url: str, cluster: bool) -> dict[str, Any]:
    """Client options that make a ``rediss://`` client check the server's host name.

    redis-py < 6 does not by default: an impostor holding any certificate the CA signed (for
    another host) would receive the password. Options the URL gives win over these (redis-py
    applies the query last), so ``ssl_check_hostname=false`` or ``ssl_cert_reqs=none`` in
    the URL turns the check off.

    Raises:
        ConfigurationError: A Cluster over ``rediss://`` with a redis-py that cannot check
            host names for Cluster nodes (< 6), and the URL does not turn the check off.
    """
    if not url.startswith("rediss://"):
        return {}
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    said = query.get("ssl_check_hostname", [""])[0]
    if (said and said.upper() in _FALSE) or query.get("ssl_cert_reqs", [""])[0] == "none":
        return {}  # the user turned it off, knowingly
    if not cluster:
        return {"ssl_check_hostname": True}
    if "ssl_check_hostname" in getattr(redis.cluster, "REDIS_ALLOWED_KEYS", ()):
        return {"ssl_check_hostname": True}  # redis-py >= 6.1 passes it on to the nodes
    ssl_init = inspect.signature(redis.connection.SSLConnection.__init__)
    if ssl_init.parameters["ssl_check_hostname"].default is True:
        return {}  # redis-py 6.0: its nodes check by default (the option would be dropped)
    raise ConfigurationError(
        f"redis-py {redis.__version__} cannot check the host names of Redis Cluster nodes "
        "over TLS: install redis>=6.1, or add ssl_check_hostname=false to the URL",
        field="url",
    )


def _warn_without_timeouts(client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if isinstance(kwargs, dict) and kwargs.get("socket_timeout") is None:
        log.warning(
            "the Redis client given to RedisStore has no socket_timeout: a hung Redis "
            "would hang token acquisition; set socket_timeout=1.0"
        )


def _warn_without_hostname_check(redis: Any, client: Any) -> None:
    """Warn about a given client that talks TLS but skips the host-name check (redis-py <
    6 by default): an impostor with a certificate for another host would get the password.
    """
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    connection_class = getattr(pool, "connection_class", None)
    ssl_class = redis.connection.SSLConnection
    if not (isinstance(kwargs, dict) and isinstance(connection_class, type)):
        return
    if not issubclass(connection_class, ssl_class):
        return
    default = inspect.signature(ssl_class.__init__).parameters["ssl_check_hostname"].default
    cert_reqs = kwargs.get("ssl_cert_reqs", "required")
    if kwargs.get("ssl_check_hostname", default) or cert_reqs in ("none", None, ssl.CERT_NONE):
        return  # checked, or certificates not verified at all: turned off knowingly
    log.warning(
        "the Redis client given to RedisStore uses TLS without checking the server's host "
        "name: a server with a certificate for another host would get the password; set "
        "ssl_check_hostname=True"
    )
