"""API-call slots in Redis: one sorted set per token, one Lua script per acquisition.

Keys (one Cluster hash tag per token, so a script touches one slot of the cluster):
``<prefix>{<fingerprint>}:api-slots`` is a sorted set of the token's counted slots, each
scored by the time until which it counts (``h<id>`` held: ``start + hold + window``;
``e<id>`` answered: ``answer + window``); ``<prefix>{<fingerprint>}:api-penalty`` holds the
time before which no slot starts (a 429's ``Retry-After``). Both expire on their own once
nothing in them counts.

Time is the server's (``TIME``), never a client's: a client whose clock steps changes
nothing, and every client counts on the same clock. Releases are deferred: one pending is
carried by this process's next acquisition of that token (one round trip for both), and a
keeper thread (``_leases``) pushes those still pending every :data:`FLUSH_EVERY` seconds when
no acquisition comes. A deferred release is stamped when it reaches Redis, later than the
answer: it only over-counts.

A hiccup of Redis loses no slot for ``hold + window`` (see ``_pending_slots``): releases
carried by a script that failed, or by a flush that failed, wait for the next script or
flush; so does a cancel that failed; and an acquisition that failed on the client (a
timeout: the script may still run on the server, leaving its ``h<id>`` behind) is released
by the next script that succeeds: its call went out under the process's own count, so it
counts a window from then (removing it would under-count).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from ..errors import StoreError
from . import _leases
from ._pending_slots import Pending, PendingSlots
from .slots import Answer

log = logging.getLogger("genesys_token.stores")

#: Releases not carried by an acquisition reach Redis within about this many seconds.
FLUSH_EVERY = 0.1

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: KEYS: slots, penalty. ARGV: calls, window, hold, max_wait, slot id ("" only releases),
#: the number n of slots answered, their n ids, then the ids of held slots to drop.
#: Returns {granted (0/1), seconds (a string: a float)}.
_ACQUIRE = """
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local calls, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local hold, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local answered = tonumber(ARGV[6])
for i = 7, 6 + answered do
    redis.call("ZREM", KEYS[1], "h" .. ARGV[i])
    redis.call("ZADD", KEYS[1], string.format("%.6f", now + window), "e" .. ARGV[i])
end
for i = 7 + answered, #ARGV do
    redis.call("ZREM", KEYS[1], "h" .. ARGV[i])
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%.6f", now))
-- No slot of ours counts a day ahead (nor does a penalty): such entries are not ours (a
-- broken or hostile writer) and would hold the token's slots for as long as they say.
local horizon = now + 86400
redis.call("ZREMRANGEBYSCORE", KEYS[1], string.format("(%.6f", horizon), "+inf")
local answer = {0, "0"}
if ARGV[5] ~= "" then
    local start = now
    local penalty = tonumber(redis.call("GET", KEYS[2]) or "0") or (now + window)
    if penalty > horizon then
        redis.call("DEL", KEYS[2])
        penalty = 0
    end
    if penalty > start then start = penalty end
    local counted = redis.call("ZCOUNT", KEYS[1], string.format("(%.6f", start), "+inf")
    local known = true
    local earliest = start
    if counted >= calls then
        local counted_slots = redis.call("ZREVRANGEBYSCORE", KEYS[1], "+inf",
                                         string.format("(%.6f", start), "WITHSCORES")
        known = string.sub(counted_slots[2 * calls - 1], 1, 1) == "e"
        start = tonumber(counted_slots[2 * calls])
        if not known then
            -- A held slot ends a window after its answer, so no sooner than a window after
            -- its start (its score less the hold): room comes no sooner than the calls-th
            -- latest of those bounds. A hint for the caller's sleep, never a grant.
            local bounds = {}
            for i = 1, #counted_slots, 2 do
                local bound = tonumber(counted_slots[i + 1])
                if string.sub(counted_slots[i], 1, 1) == "h" then bound = bound - hold end
                bounds[#bounds + 1] = bound
            end
            table.sort(bounds, function(x, y) return x > y end)
            start = math.max(bounds[calls], earliest)
        end
    end
    if known and start - now <= max_wait then
        redis.call("ZADD", KEYS[1], string.format("%.6f", start + hold + window), "h" .. ARGV[5])
        answer = {1, string.format("%.6f", start - now)}
    else
        answer = {0, string.format("%.6f", start - now)}
    end
end
local top = redis.call("ZREVRANGE", KEYS[1], 0, 0, "WITHSCORES")
if top[2] then
    redis.call("PEXPIRE", KEYS[1], math.ceil((tonumber(top[2]) - now) * 1000) + 1000)
end
return answer
"""

#: KEYS: penalty. ARGV: seconds. Keeps the later of the penalty held and this one.
_PENALIZE = """
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seconds = tonumber(ARGV[1])
local held = tonumber(redis.call("GET", KEYS[1]) or "0") or 0
if now + seconds > held then
    local until_ = string.format("%.6f", now + seconds)
    redis.call("SET", KEYS[1], until_, "PX", math.ceil(seconds * 1000) + 1)
end
return 1
"""

#: KEYS: slots. Slots counted now.
_IN_USE = """
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call("ZCOUNT", KEYS[1], string.format("(%.6f", now), "+inf")
"""

Call = Callable[..., Any]


class RedisSlots:
    """The :class:`~genesys_token.stores.slots.SlotBackend` of a RedisStore.

    Args:
        call: The store's ``_call(what, run)``: runs ``run(client)`` and turns every Redis
            failure into a StoreError (with the store's outage backoff).
        prefix: The store's key prefix.
    """

    def __init__(self, call: Call, prefix: str) -> None:
        self._call = call
        self._prefix = prefix
        self._lock = threading.Lock()
        #: Releases and drops not yet told to Redis, by token key.
        self._pending = PendingSlots(f"redis pacing {prefix!r}")
        self._flusher: _leases.Lease | None = None
        self._closed = False
        #: How long a pending entry matters: the longest a slot of ours counts (see
        #: ``_pending_slots``), from the acquisitions seen.
        self._keep = 0.0
        self._scripts: tuple[Any, dict[str, Any]] | None = None

    def _names(self, key: str) -> tuple[str, str]:
        tag = key if _SAFE.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self._prefix}{{{tag}}}:api-slots", f"{self._prefix}{{{tag}}}:api-penalty"

    def _script(self, client: Any, name: str) -> Any:
        cached = self._scripts
        if cached is None or cached[0] is not client:
            scripts = {
                "acquire": client.register_script(_ACQUIRE),
                "penalize": client.register_script(_PENALIZE),
                "in_use": client.register_script(_IN_USE),
            }
            cached = self._scripts = (client, scripts)
        return cached[1][name]

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = "acquire" if name == "release" else name  # releases only: no slot id
        return self._call(
            f"pacing {name}",
            lambda client: self._script(client, script)(keys=keys, args=args, client=client),
        )

    def acquire(
        self, key: str, slot_id: str, *, calls: int, window: float, hold: float, max_wait: float
    ) -> Answer:
        """Take (or reserve) a slot, carrying this process's pending releases of ``key``.

        Raises:
            StoreError: Redis failed (the carried releases stay pending, and the slot, which
                the script may still have taken on the server, is released by the next one:
                the call goes out under this process's own count).
        """
        window = float(window)
        keep = float(hold) + window + max(0.0, max_wait)
        self._keep = max(self._keep, keep)
        carried: list[Pending] = []
        other_windows: list[Pending] = []
        for entry in self._pending.take(key):
            fits = entry.window is None or entry.window == window
            (carried if fits else other_windows).append(entry)
        self._pending.put_back(key, other_windows)
        args = [calls, repr(window), repr(float(hold)), repr(max(0.0, max_wait)), slot_id]
        try:
            raw = self._run("acquire", list(self._names(key)), [*args, *_carried(carried)])
            return _answer(raw)
        except StoreError:
            self._pending.put_back(key, carried)
            # The script may still run on the server, and the call goes out all the same
            # under this process's own count: counted as answered when the release lands
            # (a window from then), never dropped (that would under-count: 429s).
            self._pending.release(key, slot_id, window, keep)
            self._keep_flushing()
            raise

    def release(self, key: str, slot_id: str, *, window: float) -> None:
        """Defer the release: the next acquisition of ``key`` carries it, or the keeper
        pushes it within about :data:`FLUSH_EVERY` seconds."""
        self._pending.release(key, slot_id, window, max(self._keep, float(window)))
        self._keep_flushing()

    def _keep_flushing(self) -> None:
        with self._lock:
            if self._flusher is None and not self._closed:
                self._flusher = _leases.hold(
                    self._flush, FLUSH_EVERY, math.inf, "pacing releases", self
                )

    def _flush(self) -> bool:
        """Push every pending entry (on the keeper thread); those that fail stay pending.
        False once none is left (or the store is closed)."""
        with self._lock:
            if self._closed or not len(self._pending):
                self._flusher = None
                return False
        for key, entries in self._pending.take_all().items():
            self._pending.put_back(key, self._push(key, entries))
        return True

    def _push(self, key: str, entries: list[Pending]) -> list[Pending]:
        """One release script per window among ``entries`` (the drops ride on the first).

        Returns:
            The entries not pushed (Redis failed).
        """
        windows = sorted({e.window for e in entries if e.window is not None}) or [1.0]
        for n, window in enumerate(windows):
            batch = [e for e in entries if e.window == window or (n == 0 and e.window is None)]
            args = [1, repr(window), "1", "0", "", *_carried(batch)]
            try:
                self._run("release", list(self._names(key)), args)
            except StoreError as exc:
                log.debug("could not push paced releases (%s); they wait for the next try", exc)
                return entries
            entries = [e for e in entries if e not in batch]
        return entries

    def flush(self) -> None:
        """Push pending releases now (tests, and a clean shutdown)."""
        self._flush()

    def close(self) -> None:
        """Push pending releases a last time; then nothing is pushed any more (what could
        not be pushed counts out its lease)."""
        self._flush()
        with self._lock:
            self._closed = True
        self._pending.take_all()

    def cancel(self, key: str, slot_id: str) -> None:
        """Remove the slot: its call was never sent. If Redis fails, the next script or
        flush removes it."""
        name = self._names(key)[0]
        try:
            self._call("pacing cancel", lambda client: client.zrem(name, "h" + slot_id))
        except StoreError as exc:
            log.debug("could not cancel a paced slot (%s); the next script will", exc)
            self._pending.drop(key, slot_id, self._keep)
            self._keep_flushing()

    def penalize(self, key: str, seconds: float) -> None:
        """No slot of ``key`` starts within ``seconds``, in any process.

        Raises:
            StoreError: Redis failed.
        """
        self._run("penalize", [self._names(key)[1]], [repr(max(0.001, float(seconds)))])

    def in_use(self, key: str) -> int:
        """Slots of ``key`` counted now (Redis's clock).

        Raises:
            StoreError: Redis failed.
        """
        return int(self._run("in_use", [self._names(key)[0]], []))

    def after_fork(self) -> None:
        """In a forked child: the parent's pending releases and keeper are not ours."""
        self._lock = threading.Lock()
        self._pending.after_fork()
        self._flusher = None
        self._scripts = None

    def __repr__(self) -> str:
        return f"RedisSlots(prefix={self._prefix!r})"


def _carried(entries: list[Pending]) -> list[str]:
    """The script's tail for ``entries``: how many are answered, their ids, the ids to drop."""
    answered = [e.slot_id for e in entries if e.window is not None]
    return [str(len(answered)), *answered, *(e.slot_id for e in entries if e.window is None)]


def _answer(raw: Any) -> Answer:
    """The script's ``{granted, seconds}``; anything else is a failure of the store."""
    try:
        granted, seconds = raw
        value = float(seconds.decode() if isinstance(seconds, bytes) else seconds)
    except (TypeError, ValueError):
        raise StoreError("redis pacing acquire answered something unexpected") from None
    if not math.isfinite(value):
        raise StoreError("redis pacing acquire answered something unexpected")
    return Answer(bool(granted), max(0.0, value))
