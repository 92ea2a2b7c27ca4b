"""The TokenStore protocol, the in-process MemoryStore and helpers shared by the stores."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from ..token import Token

#: Marks an entry as ours, and its layout version: anything else in a shared location is
#: foreign data and is ignored rather than trusted.
ENTRY_FORMAT = "genesys-token/1"
#: Lock polling starts fast (a peer usually finishes within one token request) and backs
#: off to this ceiling, so a dozen waiting processes do not hammer a file or Redis.
POLL_FIRST = 0.005
POLL_MAX = 0.1


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
        ``timeout`` is fractional and must be waited out while another holder has the lock:
        the manager asks in slices of about a second, and reads a False that comes back much
        sooner as "this store cannot lock right now" (down), not as contention.
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


def encode_token(token: Token) -> bytes:
    """Serialize ``token`` for a store shared between processes (JSON, wall-clock times)."""
    entry = {"format": ENTRY_FORMAT, "token": token.to_dict()}
    return json.dumps(entry, separators=(",", ":")).encode("utf-8")


def decode_token(raw: bytes | str, *, now_monotonic: float, now_wall: float) -> Token | None:
    """Rebuild a token written by :func:`encode_token`.

    Returns:
        The token, or ``None`` when ``raw`` is corrupt, foreign or expired: a bad entry in
        a shared store must cost a token request, never an outage.
    """
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        return None
    try:
        token = Token.from_dict(entry.get("token"), now_monotonic=now_monotonic, now_wall=now_wall)
    except ValueError:
        return None
    return None if token.is_expired(now_monotonic) else token


def poll_until(attempt: Callable[[], bool], timeout: float) -> bool:
    """Call ``attempt`` until it returns True or ``timeout`` seconds have passed.

    The pause between attempts doubles from :data:`POLL_FIRST` up to :data:`POLL_MAX`, with
    jitter so that waiters started together do not retry in lockstep. ``attempt`` is always
    called at least once, even with a zero timeout.

    Returns:
        Whether an attempt succeeded in time.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = POLL_FIRST
    while not attempt():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(remaining, delay * (0.5 + random.random())))
        delay = min(POLL_MAX, delay * 2)
    return True
