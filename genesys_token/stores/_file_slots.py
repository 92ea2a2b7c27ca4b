"""API-call slots in a FileStore's cache directory: one file per token, under its ``flock``.

``<fingerprint>.slots`` (mode 0600) holds a token's counted slots as JSON, each with the time
until which it counts (``h<id>`` held: ``start + hold + window``; ``e<id>`` answered:
``answer + window``), and the time before which no slot starts (a 429). Every operation
opens the file (never following a symlink, never blocking on a FIFO; refused unless it is a
regular file of this user's that others cannot write: see ``_cachedir``), takes its
``flock``, reads, updates and rewrites it in place, and closes it: a process that dies
mid-way lets go of the lock at once.

Time is ``time.monotonic()``: **a FileStore shares slots among the processes of one machine
that share that clock** (as it shares tokens), never across machines (use a RedisStore). On
Linux the clock is not boot-wide: a process in another time namespace (``unshare --time``, a
container restored by CRIU or ``podman container restore``) has its own ``CLOCK_MONOTONIC``
offset, under the same boot. So the file records the clock it was written on: the boot
(Linux's ``boot_id``) and the time namespace (the inode of ``/proc/self/ns/time``, where
there is one). A file written on another clock (an earlier boot, another time namespace) is
garbage (below); processes of two time namespaces sharing a cache directory pace as if each
rewrote the other's file: at worst a whole window each time the writer changes.

A release or a cancel that cannot take the lock (held past :data:`LOCK_WAIT` by a stuck
process) or write the file is kept in this process (see ``_pending_slots``) and applied by
its next operation on that token's file that succeeds: its slot does not count
``hold + window`` meanwhile, only until then (later: it only over-counts).

Garbage (not our JSON, a file over :data:`MAX_BYTES`, a time past anything we write, a crash
mid-write): one WARNING naming the file, then **the conservative reading: the token's whole
window is taken from now** (``calls`` slots answered just now), so at worst the fleet on
this machine waits one window; the file is then rewritten clean.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import ConfigurationError, StoreError
from . import _flock
from ._cachedir import open_lock_file
from ._pending_slots import Pending, PendingSlots
from .slots import Answer

log = logging.getLogger("genesys_token.stores")

#: A slot file holds one entry per counted slot (~40 bytes): a larger one is not ours.
MAX_BYTES = 1024 * 1024
#: Longest wait for another process's lock on a slot file (held for microseconds).
LOCK_WAIT = 1.0
#: A slot counts at most ``hold + window`` after its start, and starts at most a penalty or
#: a window ahead (minutes): a time further ahead than this is garbage.
MAX_AHEAD = 86400.0
FORMAT = 1

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read(64).strip()
    except OSError:  # not Linux: monotonic time alone
        return ""


def _time_namespace() -> str:
    """This process's time namespace (Linux >= 5.6), "" where there is none to tell."""
    try:
        return str(os.stat("/proc/self/ns/time").st_ino)
    except OSError:
        return ""


def _clock_identity() -> str:
    """What tells two processes' ``time.monotonic()`` apart on this machine: the boot and
    the time namespace (one offset of ``CLOCK_MONOTONIC`` each)."""
    return f"{_boot_id()}/{_time_namespace()}"


class _Garbage(Exception):
    """The slot file holds what we did not write."""


class _State:
    """A token's slots as read from its file."""

    __slots__ = ("penalty", "slots")

    def __init__(self, slots: dict[str, float], penalty: float) -> None:
        self.slots = slots
        self.penalty = penalty


class FileSlots:
    """The :class:`~genesys_token.stores.slots.SlotBackend` of a FileStore.

    Args:
        open_dir: Opens the store's checked cache directory (creating it), returning its
            descriptor; raises StoreError or ConfigurationError as the store does.
        directory: The cache directory, for messages.
        clock: Seconds on a clock shared by the machine's processes (``time.monotonic``).
    """

    def __init__(
        self,
        open_dir: Callable[[], int],
        directory: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_dir = open_dir
        self._dir = directory
        self._now = clock
        self._clock_id = _clock_identity()
        self._guard = threading.Lock()
        self._warned: set[str] = set()
        self._pending = PendingSlots(f"slot files in {directory}")
        self._keep = 0.0  # how long a pending entry matters (see _pending_slots)

    def _name(self, key: str) -> str:
        safe = key if _SAFE.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{safe}.slots"

    # -- the protocol ----------------------------------------------------------------------

    def acquire(
        self, key: str, slot_id: str, *, calls: int, window: float, hold: float, max_wait: float
    ) -> Answer:
        """Take (or reserve) a slot for ``key`` under the file's lock.

        Raises:
            StoreError: The file cannot be used (see the module).
        """
        keep = hold + window + max(0.0, max_wait)
        self._keep = max(self._keep, keep)
        try:
            return self._acquire(key, slot_id, calls, window, hold, max_wait)
        except StoreError:
            # The call goes out all the same, under this process's own count: a write cut
            # short may have left its slot behind, and either way the call counts a window
            # from when the release is applied (never dropped: that would under-count).
            self._pending.release(key, slot_id, window, keep)
            raise

    def _acquire(
        self, key: str, slot_id: str, calls: int, window: float, hold: float, max_wait: float
    ) -> Answer:
        with self._locked(key, (calls, window)) as (state, now):
            start = earliest = max(now, state.penalty)
            later = sorted((s for s in state.slots.items() if s[1] > start), key=lambda s: -s[1])
            known = True
            if len(later) >= calls:
                name, start = later[calls - 1]
                known = name.startswith("e")
            if not known:
                # A held slot ends a window after its answer, so no sooner than a window
                # after its start: room comes no sooner than the calls-th latest bound.
                bounds = sorted(
                    (until - hold if name.startswith("h") else until for name, until in later),
                    reverse=True,
                )
                return Answer(False, max(0.0, bounds[calls - 1] - now, earliest - now))
            if start - now > max_wait:
                return Answer(False, start - now)
            state.slots["h" + slot_id] = start + hold + window
            return Answer(True, start - now)

    def release(self, key: str, slot_id: str, *, window: float) -> None:
        """The slot's call was answered: it counts ``window`` seconds from now (from the next
        operation that succeeds, if the file cannot be used now)."""
        try:
            with self._locked(key) as (state, now):
                _apply(state, [Pending(slot_id, float(window), math.inf)], now)
        except StoreError as exc:
            log.debug("could not release a paced slot (%s); the next lock will", exc)
            self._pending.release(key, slot_id, window, max(self._keep, window))

    def cancel(self, key: str, slot_id: str) -> None:
        """Remove the slot: nothing was sent (by the next operation that succeeds, if the
        file cannot be used now)."""
        try:
            with self._locked(key) as (state, now):
                _apply(state, [Pending(slot_id, None, math.inf)], now)
        except StoreError as exc:
            log.debug("could not cancel a paced slot (%s); the next lock will", exc)
            self._pending.drop(key, slot_id, self._keep)

    def penalize(self, key: str, seconds: float) -> None:
        """No slot of ``key`` starts within ``seconds``, in any process of this machine.

        Raises:
            StoreError: The file cannot be used.
        """
        with self._locked(key) as (state, now):
            state.penalty = max(state.penalty, now + max(0.0, seconds))

    def in_use(self, key: str) -> int:
        """Slots of ``key`` counted now.

        Raises:
            StoreError: The file cannot be used.
        """
        with self._locked(key) as (state, _):
            return len(state.slots)

    def after_fork(self) -> None:
        """Nothing is kept between operations; the guard and the clock's identity are
        renewed (a parent that called ``unshare(CLONE_NEWTIME)`` forks its children into
        the new time namespace)."""
        self._guard = threading.Lock()
        self._clock_id = _clock_identity()
        self._pending.after_fork()

    def __repr__(self) -> str:
        return f"FileSlots(path={str(self._dir)!r})"

    # -- the file --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(
        self, key: str, limit: tuple[int, float] | None = None
    ) -> Iterator[tuple[_State, float]]:
        """The token's state under the file's lock, written back after the block.

        Garbage in the file: with the ``limit`` (an acquisition) it reads as a whole window
        taken from now and is rewritten; without one (a release, a cancel, a penalty) the
        block sees no slot and nothing is written: the next acquisition decides.
        """
        name = self._name(key)
        path = self._dir / name
        fd = self._open(name, path)
        try:
            try:
                if not _flock.wait_for_lock(fd, LOCK_WAIT, path):
                    raise StoreError(f"slot file {path} stayed locked for {LOCK_WAIT:g}s")
            except OSError as exc:
                raise StoreError(f"cannot lock slot file {path}: {exc.strerror}") from None
            now = self._now()
            state = self._read(fd, path, now, limit)
            carried = [] if state is None else self._pending.take(key)
            try:
                if state is not None:
                    _apply(state, carried, now)
                yield (_State({}, 0.0) if state is None else state), now
                if state is not None:
                    self._write(fd, path, state, now)
            except BaseException:
                self._pending.put_back(key, carried)
                raise
        finally:
            with contextlib.suppress(OSError):
                _flock.unlock(fd)
            os.close(fd)

    def _open(self, name: str, path: Path) -> int:
        try:
            dir_fd = self._open_dir()
        except ConfigurationError as exc:
            raise StoreError(f"cannot use the slot directory: {exc}") from None
        try:
            return open_lock_file(dir_fd, name, path)
        except ConfigurationError as exc:
            self._warn_once(str(path), "not using slot file %s: %s", path, exc)
            raise StoreError(f"slot file {path} is refused") from None
        except OSError as exc:
            raise StoreError(f"cannot open slot file {path}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)

    def _read(
        self, fd: int, path: Path, now: float, limit: tuple[int, float] | None
    ) -> _State | None:
        try:
            size = os.fstat(fd).st_size
            if size > MAX_BYTES:
                raise _Garbage(f"holds {size} bytes (over {MAX_BYTES})")
            raw = os.pread(fd, MAX_BYTES + 1, 0) if size else b""
            state = self._parse(raw, now)
        except _Garbage as exc:
            self._warn_once(
                str(path) + ":garbage",
                "slot file %s %s: taking its token's whole window from now (no API call "
                "for one window) and rewriting it",
                path,
                exc,
            )
            if limit is None:
                return None
            calls, window = limit
            return _State({f"e-garbage-{i}": now + window for i in range(calls)}, 0.0)
        except OSError as exc:
            raise StoreError(f"cannot read slot file {path}: {exc.strerror}") from None
        return state

    def _parse(self, raw: bytes, now: float) -> _State:
        if not raw:
            return _State({}, 0.0)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # "[[[[..." under the size cap nests too deep
            raise _Garbage("is not JSON") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _Garbage("is not a slot file of this version")
        slots, penalty, clock = data.get("slots"), data.get("penalty"), data.get("clock")
        if not isinstance(slots, dict) or not _number(penalty) or not isinstance(clock, str):
            raise _Garbage("is not shaped as a slot file")
        if clock != self._clock_id:
            raise _Garbage("was written on another clock (another boot or time namespace)")
        if penalty > now + MAX_AHEAD:
            raise _Garbage("holds a time that no process of ours wrote")
        kept: dict[str, float] = {}
        for name, until in slots.items():
            if not _number(until) or until > now + MAX_AHEAD:
                raise _Garbage("holds a time that no process of ours wrote")
            if until > now:
                kept[name] = float(until)
        return _State(kept, float(penalty) if penalty > now else 0.0)

    def _write(self, fd: int, path: Path, state: _State, now: float) -> None:
        data = {"format": FORMAT, "clock": self._clock_id, "penalty": state.penalty}
        data["slots"] = {name: until for name, until in state.slots.items() if until > now}
        blob = json.dumps(data, separators=(",", ":")).encode("ascii")
        try:
            # Written over the old state first, cut to length after: a write torn by a
            # crash or a full disk leaves bytes that do not parse (read conservatively),
            # never an empty file (which would read as "no slot taken").
            written = os.pwrite(fd, blob, 0)
            if written != len(blob):
                raise OSError(errno.ENOSPC, "short write")
            os.ftruncate(fd, len(blob))
        except OSError as exc:
            raise StoreError(f"cannot write slot file {path}: {exc.strerror}") from None

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        with self._guard:
            if what in self._warned:
                log.debug(message, *args)
                return
            self._warned.add(what)
        log.warning(message, *args)


def _apply(state: _State, entries: list[Pending], now: float) -> None:
    """Releases (answered now: a window from now) and drops of held slots."""
    for entry in entries:
        state.slots.pop("h" + entry.slot_id, None)
        if entry.window is not None:
            state.slots["e" + entry.slot_id] = now + entry.window


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
