"""The refresh lock of RedisStore: a lease whose holder shows that it is alive.

The lock key holds ``<owner>:<beat>``: a random owner and a counter. Its holder takes it with
``SET NX PX`` and, from the process-wide lease keeper thread (see ``_leases``), writes a new
beat (and a fresh time to live) every :data:`RENEW_EVERY` seconds for as long as it is inside
the block, but never past its ``lease``. Every script compares the owner part, so only the
owner renews or releases the lock, and a retried call whose first answer was lost is harmless.

A waiter remembers the value it saw and since when. A value that has not changed for
:data:`STALE_AFTER` seconds belongs to a holder that died, ran out of lease, or never renewed
(a key planted by hand, with any time to live): the waiter takes the lock over with one
compare-and-set script, which succeeds only if the value is still the one it judged stale. A
live holder changes its value well within that time, so it is never taken over; a planted or
abandoned lock costs each cold acquisition about :data:`STALE_AFTER`, not its time to live.
A key of another type (a hash written by hand), an oversized value, or one that is not shaped
like ours is seen as a fixed marker, so it too is judged stale and taken over (never an error
that would leave the fleet without its lock), however often a writer changes it. A writer
that mimics our shape with a changing beat does pass for a live holder: waiters wait for it
until their own timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import StoreError
from . import _leases
from .base import poll_until

log = logging.getLogger("genesys_token.stores")

#: The holder writes a new beat this often (more often when ``lock_ttl`` is shorter than
#: :data:`RENEWALS_PER_TTL` of these): waiters see that it is alive.
RENEW_EVERY = 1.0
#: The lock is renewed at least this many times per ``lock_ttl``: two renewals may fail (a
#: slow Redis) before the lock could lapse under a live holder.
RENEWALS_PER_TTL = 3
#: A lock whose value has not changed for this long is taken over by a waiter: three beats,
#: so two late or failed renewals of a live holder are not mistaken for its death.
STALE_AFTER = 3.0

#: A lock value is an owner and a beat, under 60 bytes; a longer one was not written by us.
MAX_LOCK_VALUE_BYTES = 256
#: Random bytes of an owner, written as twice as many hex digits.
OWNER_BYTES = 16
#: What the scripts see at a lock key holding another type than a string (``~type:hash``),
#: a string longer than :data:`MAX_LOCK_VALUE_BYTES` (``~size``) or one that is not
#: ``<owner>:<beat>`` (``~foreign``): a fixed marker (no owner starts with ``~``), so a
#: waiter sees it unchanged, judges it stale and takes the key over (SET overwrites a key of
#: any type); no huge value is sent on every poll, and a writer that keeps changing a value
#: of another shape does not pass for a live holder.
_READ_LOCK = f"""
local function read_lock(key)
    local kind = redis.call("type", key)["ok"]
    if kind == "none" then
        return false
    end
    if kind ~= "string" then
        return "~type:" .. kind
    end
    if redis.call("strlen", key) > {MAX_LOCK_VALUE_BYTES} then
        return "~size"
    end
    local value = redis.call("get", key)
    if not string.match(value, "^" .. string.rep("%x", {OWNER_BYTES * 2}) .. ":%d+$") then
        return "~foreign"
    end
    return value
end
"""
#: Take the lock: free, ours already (a SET whose answer was lost, then retried), or still
#: holding the value (or marker) a waiter judged stale (ARGV[4], when given). Otherwise the
#: value (or marker) seen.
_TAKE_SCRIPT = (
    _READ_LOCK
    + """
local value = read_lock(KEYS[1])
if (not value) or string.sub(value, 1, #ARGV[1]) == ARGV[1]
        or (ARGV[4] ~= nil and value == ARGV[4]) then
    redis.call("set", KEYS[1], ARGV[2], "PX", ARGV[3])
    return 1
end
return value
"""
)
#: Write a new beat and time to live, only if the lock is still ours.
_RENEW_SCRIPT = (
    _READ_LOCK
    + """
local value = read_lock(KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    redis.call("set", KEYS[1], ARGV[2], "PX", ARGV[3])
    return 1
end
return 0
"""
)
#: Delete the lock only if it is still ours: after a peer took it over, a plain DEL would
#: release the peer's lock.
_RELEASE_SCRIPT = (
    _READ_LOCK
    + """
local value = read_lock(KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""
)

#: ``call(what, run, always=False)``: the store's way to run ``run(client)``, turning Redis
#: failures into StoreError (``always``: even during its outage backoff).
Call = Callable[..., Any]


class RedisLock:
    """The refresh locks of one RedisStore (any number of keys).

    Args:
        call: Runs one Redis operation for the store (see :data:`Call`).
        lock_ttl: The lock key's time to live, renewed while its holder is inside.
    """

    def __init__(self, call: Call, *, lock_ttl: float) -> None:
        self._call = call
        self._lock_ttl = lock_ttl
        self._take: Any = None
        self._renew: Any = None
        self._release: Any = None
        self._guard = threading.Lock()
        #: lock key -> (the value last seen there, monotonic time it was first seen)
        self._seen: dict[str, tuple[object, float]] = {}

    def bind(self, client: Any) -> None:
        """Register the scripts on ``client`` (again after it was rebuilt)."""
        self._take = client.register_script(_TAKE_SCRIPT)
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def ttl_ms(self, limit: float) -> int:
        """The lock's time to live in milliseconds, at most ``limit`` seconds."""
        return max(1, int(min(self._lock_ttl, limit) * 1000))

    @property
    def renew_every(self) -> float:
        """Seconds between two beats of a holder."""
        return min(RENEW_EVERY, self._lock_ttl / RENEWALS_PER_TTL)

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float, lease: float) -> Iterator[bool]:
        """Hold the lock key ``name``, renewed for up to ``lease`` seconds.

        Yields:
            True when held; False when ``timeout`` passed while a live holder had it.

        Raises:
            StoreError: Redis failed while taking the lock, or while releasing it after a
                block that ended normally.
        """
        owner = secrets.token_hex(OWNER_BYTES) + ":"
        ttl_ms = self.ttl_ms(lease)
        started = time.monotonic()

        def attempt() -> bool:
            nonlocal started
            stale = self._stale(name)
            started = time.monotonic()
            args = [owner, owner + "0", ttl_ms, *stale]
            reply = self._call(
                "lock", lambda client: self._take(keys=[name], args=args, client=client)
            )
            if isinstance(reply, int) and reply == 1:
                if stale:
                    log.debug("took over a token store lock whose holder stopped renewing it")
                self._forget(name)
                return True
            self._observe(name, reply)
            return False

        try:
            held = poll_until(attempt, timeout)
        except StoreError:
            # The SET may have landed although its answer was lost: leave no orphan that
            # would hold every peer (and us) off.
            with contextlib.suppress(StoreError):
                self._unlock(name, owner)
            raise
        if not held:
            yield False
            return
        pid = os.getpid()
        renewal = _Renewal(self, name, owner, lease_end=started + lease)
        try:
            yield True
        except BaseException:
            if os.getpid() == pid:
                renewal.stop()
                with contextlib.suppress(StoreError):  # the block's error matters more
                    self._unlock(name, owner)
            raise
        # A child forked inside the block must not release (or renew) its parent's lock.
        if os.getpid() == pid:
            renewal.stop()
            self._unlock(name, owner)

    def _stale(self, name: str) -> list[object]:
        """``[value]`` when the value last seen at ``name`` has been there STALE_AFTER."""
        with self._guard:
            seen = self._seen.get(name)
        if seen is not None and time.monotonic() - seen[1] >= STALE_AFTER:
            return [seen[0]]
        return []

    def _observe(self, name: str, value: object) -> None:
        with self._guard:
            seen = self._seen.get(name)
            if seen is None or seen[0] != value:
                self._seen[name] = (value, time.monotonic())

    def _forget(self, name: str) -> None:
        with self._guard:
            self._seen.pop(name, None)

    def _unlock(self, name: str, owner: str) -> None:
        # Always tried, even during the outage backoff: a lock left behind holds every peer
        # off until a waiter judges it stale.
        self._call(
            "unlock",
            lambda client: self._release(keys=[name], args=[owner], client=client),
            always=True,
        )

    def beat(self, name: str, owner: str, beat: int, ttl_ms: int) -> bool:
        """Write beat number ``beat`` with ``ttl_ms`` to live; False when no longer ours."""
        args = [owner, f"{owner}{beat}", ttl_ms]
        return bool(
            self._call(
                "renew",
                lambda client: self._renew(keys=[name], args=args, client=client),
                always=True,
            )
        )

    def after_fork(self) -> None:
        """In a forked child: a fresh guard (a parent thread may have held it)."""
        self._guard = threading.Lock()
        self._seen = {}


class _Renewal:
    """Keeps one held lock alive: a beat every ``renew_every`` seconds from the process-wide
    keeper thread (see ``_leases``) until stopped, lost, or out of lease."""

    def __init__(self, lock: RedisLock, name: str, owner: str, *, lease_end: float) -> None:
        beats = itertools.count(1)

        def renew() -> bool:
            ttl_ms = lock.ttl_ms(lease_end - time.monotonic())
            try:
                return lock.beat(name, owner, next(beats), ttl_ms)
            except StoreError as exc:  # the next renewal may succeed; the lock is not gone
                log.debug("could not renew the token store lock: %s", exc)
                return True

        self._lease = _leases.hold(renew, lock.renew_every, lease_end, "token store lock", lock)

    def stop(self) -> None:
        """Stop renewing; once this returns, no beat is being written or will be."""
        self._lease.release()
