"""RedisStore: one token per client shared by a fleet of machines through Redis.

Keys: ``<prefix>token:<key>`` holds the token as JSON and expires with it (``PX``);
``<prefix>lock:<key>`` is the refresh lock (``SET NX PX`` with a random owner value,
released by a compare-and-delete script, and expiring by itself if its owner dies).

A Redis outage must never become an authentication outage: every call has short socket
timeouts and no retry backoff, every Redis error becomes a
:class:`~genesys_token.errors.StoreError` (which the manager logs before using the network),
``lock`` yields False instead of raising, and after a connection failure Redis is left
alone for ``outage_backoff`` seconds so that each refresh pays the timeout once at most.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..token import Token
from .base import decode_token, encode_token, poll_until

log = logging.getLogger("genesys_token")

DEFAULT_URL = "redis://localhost:6379/0"
#: Socket timeouts for clients built from a URL: Redis answers in microseconds, so a
#: second means it is down or unreachable, and the manager should use the network instead.
SOCKET_TIMEOUT = 1.0
#: A refresh lock expires by itself after this long, so a process that died holding it
#: delays its peers by at most this much (a token request takes well under it).
LOCK_TTL = 30.0
#: After a connection failure, Redis is not tried again for this long.
OUTAGE_BACKOFF = 5.0

#: Delete the lock only if we still own it: after it expired and a peer took it, a plain
#: DEL would release the peer's lock.
_RELEASE_SCRIPT = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
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

    Args:
        url: A ``redis://`` or ``rediss://`` URL (default ``redis://localhost:6379/0``).
            The client built from it has 1-second socket timeouts and no retry backoff.
        client: A ready ``redis.Redis`` instead of ``url`` (give it socket timeouts: without
            them a hung Redis hangs token acquisition). Not closed by :meth:`close`.
        prefix: Prepended to every key, to share one Redis between applications.
        lock_ttl: Seconds after which an abandoned refresh lock expires.
        outage_backoff: Seconds Redis is skipped after a connection failure.
        socket_timeout: Connect and read timeout of a client built from ``url``.

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
    ) -> None:
        self._redis = _redis_module()
        if url is not None and client is not None:
            raise ConfigurationError("give RedisStore a url or a client, not both", field="url")
        if url is not None and not isinstance(url, str):
            raise ConfigurationError("RedisStore url must be a string", field="url")
        if not isinstance(prefix, str):
            raise ConfigurationError("RedisStore prefix must be a string", field="prefix")
        for name, value in (
            ("lock_ttl", lock_ttl),
            ("outage_backoff", outage_backoff),
            ("socket_timeout", socket_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number", field=name)
        self._url = url or DEFAULT_URL
        self._prefix = prefix
        self._lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self._outage_backoff = float(outage_backoff)
        self._socket_timeout = float(socket_timeout)
        self._owns_client = client is None
        self._client: Any = self._build_client() if client is None else client
        self._release: Any = self._client.register_script(_RELEASE_SCRIPT)
        self._down_until = 0.0
        if not self._owns_client:
            _warn_without_timeouts(self._client)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Build a store with its own client for ``url`` (1-second socket timeouts).

        Args:
            url: A ``redis://`` or ``rediss://`` URL.
            **options: Other keyword arguments of :class:`RedisStore`.
        """
        return cls(url, **options)

    def _build_client(self) -> Any:
        redis = self._redis
        try:
            return redis.Redis.from_url(
                self._url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                # redis-py retries 3-10 times with backoff by default: seconds of waiting
                # while Redis is down. One immediate retry still heals a stale pooled
                # connection after a Redis restart.
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1),
            )
        except ValueError:
            # Not the parser's message: it may quote the URL, and a URL may hold a password.
            raise ConfigurationError(
                "invalid Redis URL (expected redis://, rediss:// or unix://)", field="url"
            ) from None

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis command, turning every Redis failure into a StoreError."""
        if time.monotonic() < self._down_until:
            raise StoreError(f"redis unavailable; not retrying for up to {self._outage_backoff:g}s")
        errors = self._redis.exceptions
        try:
            return method(*args, **kwargs)
        except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + self._outage_backoff
            raise StoreError(f"redis {what} failed: {type(exc).__name__}") from None
        except errors.RedisError as exc:
            raise StoreError(f"redis {what} failed: {type(exc).__name__}") from None

    # -- the protocol ----------------------------------------------------------------

    def load(self, key: str, *, now_monotonic: float, now_wall: float) -> Token | None:
        """Return the token for ``key``, or ``None`` if missing, expired, corrupt or foreign.

        Raises:
            StoreError: Redis is unreachable, slow or failing.
        """
        raw = self._call("read", self._client.get, self._key("token", key))
        if raw is None:
            return None
        if not isinstance(raw, bytes | str):
            return None
        token = decode_token(raw, now_monotonic=now_monotonic, now_wall=now_wall)
        if token is None:
            log.debug("ignoring an unusable Redis token entry (corrupt, foreign or expired)")
        return token

    def save(self, key: str, token: Token) -> None:
        """Store ``token`` with a time to live equal to what is left of its life.

        Raises:
            StoreError: Redis is unreachable, slow or failing.
        """
        ttl_ms = int((token.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return  # already dead by the shared (wall) clock: nobody could use it
        self._call(
            "write", self._client.set, self._key("token", key), encode_token(token), px=ttl_ms
        )

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[bool]:
        """Hold the refresh lock of ``key`` across the fleet.

        Yields:
            True when held; False when ``timeout`` passed first or Redis failed (the caller
            then fetches without it: an outage must not block token acquisition).
        """
        name = self._key("lock", key)
        owner = secrets.token_hex(16)

        def attempt() -> bool:
            return bool(
                self._call("lock", self._client.set, name, owner, nx=True, px=self._lock_ttl_ms)
            )

        try:
            held = poll_until(attempt, timeout)
        except StoreError as exc:
            log.warning("token store lock unavailable: %s", exc)
            held = False
        try:
            yield held
        finally:
            if held:
                try:
                    self._call("unlock", self._release, keys=[name], args=[owner])
                except StoreError as exc:  # it expires by itself after lock_ttl
                    log.warning("could not release the token store lock: %s", exc)

    def close(self) -> None:
        """Close the connection pool of a client this store built (not a given one)."""
        if self._owns_client:
            self._client.close()

    def _after_fork(self) -> None:
        """Give the child its own connections.

        redis-py notices a fork by pid, but resetting its pool takes a lock that a parent
        thread may have held at fork time, so a client we own is simply rebuilt.
        """
        if self._owns_client:
            self._client = self._build_client()
            self._release = self._client.register_script(_RELEASE_SCRIPT)
        self._down_until = 0.0

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._prefix!r}, owns_client={self._owns_client})"


def _warn_without_timeouts(client: Any) -> None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    if isinstance(kwargs, dict) and kwargs.get("socket_timeout") is None:
        log.warning(
            "the Redis client given to RedisStore has no socket_timeout: a hung Redis "
            "would hang token acquisition; set socket_timeout=1.0"
        )
