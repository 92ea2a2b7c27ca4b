"""The TokenStore protocol, the in-process MemoryStore and helpers shared by the stores."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from ..core.fork import on_fork_in_child
from ..errors import StoreError
from ..token import Token
from ._seal import Sealer

#: The layout of an entry's plaintext. Shared stores keep it sealed (``_seal.MAGIC`` marks
#: and versions the sealed form), so the clear entries of older releases do not open.
ENTRY_FORMAT = "genesys-token/1"
#: How long a lock holder may keep a lock when the caller names no ``lease``: about what the
#: manager needs with default settings (retry deadline, timeouts and a margin).
DEFAULT_LEASE = 120.0
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

    Implementations must be thread-safe and fork-safe by themselves. ``load`` returns
    ``None`` for a missing, expired or unreadable entry (a corrupt, foreign or tampered entry
    is never fatal); every method may raise :class:`~genesys_token.errors.StoreError` when
    the store itself fails (down, unwritable), which the caller logs and survives. Stores
    log nothing above DEBUG for an outage: the caller reports it once.

    Shared stores (between processes or machines) keep entries sealed with a
    :class:`~genesys_token.stores._seal.Sealer` the caller passes; an in-process store may
    keep them in clear but binds each to the sealer's fingerprint. Either way an entry saved
    with one secret is missing to a reader with another.
    """

    def load(
        self, key: str, *, now_monotonic: float, now_wall: float, sealer: Sealer | None = None
    ) -> Token | None:
        """Return the stored token for ``key``, or ``None``."""
        ...

    def save(self, key: str, token: Token, *, sealer: Sealer | None = None) -> None:
        """Store ``token`` under ``key`` for the rest of its life."""
        ...

    def lock(
        self, key: str, timeout: float, *, lease: float | None = None
    ) -> AbstractContextManager[bool]:
        """Hold the refresh lock of ``key`` across processes/machines.

        Yields True when the lock is held, and False only when ``timeout`` (fractional)
        passed while another holder had it. A store that cannot lock at all (down,
        unusable) raises :class:`~genesys_token.errors.StoreError` instead; leaving the
        block may raise it too when the release fails. ``lease`` is how long the holder may
        keep the lock (default :data:`DEFAULT_LEASE`): the lock must not pass to anyone else
        before that while its holder lives.
        """
        ...

    def close(self) -> None:
        """Release connections and file handles."""
        ...


class MemoryStore:
    """Tokens shared within this process only (the default store).

    Nothing leaves the process, so entries are kept unsealed, but each is bound to the
    :attr:`~genesys_token.stores._seal.Sealer.fingerprint` of the sealer it was saved with
    (a digest, never the secret): a load with another secret's sealer, or without one, sees
    no entry, so a caller with a wrong secret makes its own token request and gets its own
    answer, as with the shared stores.

    The manager's own single-flight already serializes refreshes in-process, so ``lock`` is
    a plain per-key lock for the case of several managers sharing one MemoryStore.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._tokens: dict[str, tuple[Token, bytes | None]] = {}
        self._locks: dict[str, threading.Lock] = {}
        track_fork(self)

    def load(
        self, key: str, *, now_monotonic: float, now_wall: float, sealer: Sealer | None = None
    ) -> Token | None:
        """Return the token for ``key`` unless it is missing, expired, or was saved with
        another ``sealer`` (another secret) than this one."""
        with self._guard:
            entry = self._tokens.get(key)
        if entry is None:
            return None
        token, bound = entry
        if not _same_binding(bound, _fingerprint(sealer)) or token.is_expired(now_monotonic):
            return None
        return token

    def save(self, key: str, token: Token, *, sealer: Sealer | None = None) -> None:
        """Keep ``token`` under ``key`` (in memory, unsealed, bound to ``sealer``'s
        fingerprint)."""
        entry = (token, _fingerprint(sealer))
        with self._guard:
            self._tokens[key] = entry

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float, *, lease: float | None = None) -> Iterator[bool]:
        """A per-key thread lock, waited for at most ``timeout`` seconds (no lease: its
        holder is a thread of this process, which cannot die alone)."""
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


def _fingerprint(sealer: Sealer | None) -> bytes | None:
    return None if sealer is None else sealer.fingerprint


def _same_binding(saved: bytes | None, given: bytes | None) -> bool:
    """Whether an entry bound to ``saved`` is for a reader holding ``given``."""
    if saved is None or given is None:
        return saved is given
    return hmac.compare_digest(saved, given)


def require_sealer(sealer: Sealer | None, store: str) -> Sealer:
    """``sealer``, or a StoreError: a shared store never keeps a token in clear."""
    if not isinstance(sealer, Sealer):
        raise StoreError(f"{store} keeps sealed entries only: pass sealer=Sealer(secret, key)")
    return sealer


def encode_token(token: Token, sealer: Sealer | None = None) -> bytes:
    """Serialize ``token`` (JSON, wall-clock times), sealed by ``sealer`` when given.

    Shared stores always pass a sealer (see :func:`require_sealer`); without one this is
    the plaintext layer alone.
    """
    entry = {"format": ENTRY_FORMAT, "token": token.to_dict()}
    plaintext = json.dumps(entry, separators=(",", ":")).encode("utf-8")
    return plaintext if sealer is None else sealer.seal(plaintext)


def decode_token(
    raw: bytes | str, sealer: Sealer | None = None, *, now_monotonic: float, now_wall: float
) -> Token | None:
    """Rebuild a token written by :func:`encode_token` (opened by ``sealer`` when given).

    Returns:
        The token, or ``None`` when ``raw`` does not open (another secret, altered, old
        clear format), is corrupt or foreign, or has expired: a bad entry in a shared store
        must cost a token request, never an outage.
    """
    plaintext = raw if sealer is None else sealer.open(raw)
    if plaintext is None:
        return None
    try:
        entry = json.loads(plaintext)
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


# -- fork ----------------------------------------------------------------------------------

#: Every store alive in this process; each resets itself in a forked child (its thread
#: locks, connections, descriptors), so whoever forks need not know which stores exist.
_FORK_AWARE: weakref.WeakSet[Any] = weakref.WeakSet()


#: The stores whose ``_before_fork`` ran, so that exactly those are resumed.
_PAUSED: list[Any] = []


def track_fork(store: Any) -> None:
    """Call ``store._after_fork()`` in every child forked from now on.

    A store may also define ``_before_fork`` / ``_after_fork_in_parent`` (to hold a guard
    across the fork, so no child copies it mid-update).
    """
    _FORK_AWARE.add(store)


def _before_fork() -> None:
    for store in list(_FORK_AWARE):
        hook = getattr(store, "_before_fork", None)
        if hook is not None:
            hook()
            _PAUSED.append(store)


def _after_fork_in_parent() -> None:
    while _PAUSED:
        _PAUSED.pop()._after_fork_in_parent()


def _after_fork_in_child() -> None:
    _PAUSED.clear()
    for store in list(_FORK_AWARE):
        with contextlib.suppress(Exception):  # one broken store must not break the others
            store._after_fork()


on_fork_in_child(_after_fork_in_child, before=_before_fork, in_parent=_after_fork_in_parent)
