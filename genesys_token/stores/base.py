"""The TokenStore protocol and the in-process MemoryStore."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from ..token import Token


def store_key(client_id: str, token_url: str, scopes: tuple[str, ...]) -> str:
    """The key a token is shared under: a hash of client id, token URL and scopes.

    Never the secret: rotating a secret must not orphan the shared token, and a key must
    reveal nothing.
    """
    material = "\x1f".join((client_id, token_url, " ".join(sorted(scopes))))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens are shared, and the lock that makes one token request serve everyone.

    Implementations must be thread-safe. ``load`` returns ``None`` for a missing, expired or
    unreadable entry (a corrupt entry is never fatal); ``save`` may raise
    :class:`~genesys_token.errors.StoreError`, which the manager logs and survives.
    """

    def load(self, key: str, *, now_monotonic: float, now_wall: float) -> Token | None:
        """Return the stored token for ``key``, or ``None``."""
        ...

    def save(self, key: str, token: Token) -> None:
        """Store ``token`` under ``key`` for the rest of its life."""
        ...

    def lock(self, key: str, timeout: float) -> AbstractContextManager[bool]:
        """Hold the refresh lock of ``key`` across processes/machines.

        Yields True when the lock is held, False when ``timeout`` passed first (the caller
        then goes ahead without it: a stuck peer must not block token acquisition).
        """
        ...

    def close(self) -> None:
        """Release connections and file handles."""
        ...


class MemoryStore:
    """Tokens shared within this process only (the default store).

    The manager's own single-flight already serializes refreshes in-process, so ``lock`` is
    a plain per-key lock for the case of several managers sharing one MemoryStore.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, threading.Lock] = {}

    def load(self, key: str, *, now_monotonic: float, now_wall: float) -> Token | None:
        """Return the token for ``key`` unless it is missing or expired."""
        with self._guard:
            token = self._tokens.get(key)
        if token is None or token.is_expired(now_monotonic):
            return None
        return token

    def save(self, key: str, token: Token) -> None:
        """Keep ``token`` under ``key``."""
        with self._guard:
            self._tokens[key] = token

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[bool]:
        """A per-key thread lock, waited for at most ``timeout`` seconds."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        acquired = lock.acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()

    def close(self) -> None:
        """Nothing to release."""

    def _after_fork(self) -> None:
        """Replace locks a parent thread may have held at fork time."""
        self._guard = threading.Lock()
        self._locks = {}

    def __repr__(self) -> str:
        return f"MemoryStore(keys={len(self._tokens)})"
