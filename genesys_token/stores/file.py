"""FileStore: one token per client shared by every process of a host, through files.

Layout: one directory (mode 0700) holding ``<key>.json`` (a sealed entry, mode 0600,
replaced atomically) and ``<key>.lock`` (an ``flock`` target, never deleted: deleting a lock
file while someone waits on it would let two processes hold "the" lock at once). API-call
pacing (:meth:`FileStore.slots`) adds ``<fingerprint>.slots`` per access token, shared by
the processes of this machine (see ``_file_slots``).

Trust: the directory and its files are checked before they are used (see ``_cachedir``). A
directory or lock file that is not this user's own, or that its group or others can write,
is refused with a :class:`~genesys_token.errors.ConfigurationError`: at construction when
the directory exists, and again at each use (the directory on its descriptor, each time).
Anything but a regular file of this user's at an entry (a FIFO, a device, a symlink, a
directory, another user's file) reads as no entry, with one warning naming it: nothing
planted there can block or feed the manager.

The lock and its lease: an ``flock`` lives exactly as long as the open file description it
was taken on. A holder that dies (crash, SIGKILL) has its descriptors closed by the kernel,
so the lock frees at once; a live holder renews a heartbeat on the lock file up to its
``lease``, and a holder that does not (stopped, or no genesys-token holder at all) is waited
for about 3.5 s at most (see ``_flock``). The one way to outlive the holder is a forked
child still holding a copy of the descriptor: the store closes, in every forked child, the
lock descriptors open at fork time (without unlocking: the parent still holds the lock),
and a lock block inherited mid-way by a child leaves them alone.

``GENESYSCLOUD_TOKEN_CACHE`` (read by ``FileStore()`` without a path, as by the command
line): a directory, or ``off`` (also ``none``, ``no``, ``false``, ``0``) for a store that
keeps nothing: every process then requests its own token.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigurationError, StoreError
from ..token import Token
from . import _flock
from ._cachedir import (
    OPEN_TO_OTHERS,
    Untrusted,
    check_existing_directory,
    make_directory,
    open_directory,
    open_lock_file,
    read_entry,
    write_entry,
)
from ._file_slots import FileSlots
from ._seal import Sealer
from .base import DEFAULT_LEASE, decode_token, encode_token, require_sealer, track_fork

log = logging.getLogger("genesys_token.stores")

#: The variable naming the cache directory (or ``off``), shared with the command line.
ENV_TOKEN_CACHE = "GENESYSCLOUD_TOKEN_CACHE"
#: Values of ``GENESYSCLOUD_TOKEN_CACHE`` that turn the file cache off.
CACHE_OFF = frozenset({"off", "none", "no", "false", "0"})

#: A token entry is a few kilobytes; anything far larger is not ours and is not read whole.
MAX_ENTRY_BYTES = 256 * 1024
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/genesys-token`` when that is an absolute path, else
    ``~/.cache/genesys-token`` (the XDG base directory rules)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "genesys-token"


class FileStore:
    """Tokens shared by the processes of one host through a cache directory.

    Entries are sealed (see :class:`~genesys_token.stores._seal.Sealer`): reading the
    directory yields no token, and an entry written without the client secret is ignored.
    Reads need no lock: entries are replaced atomically (temp file, fsync, ``rename``), so a
    reader sees the old token or the new one, never half of one. The refresh lock is an
    ``flock`` on a per-key lock file, taken through a descriptor opened for each ``lock`` call
    (``flock`` belongs to an open file description: a shared descriptor would let every
    thread of the process in at once). A per-key thread lock is taken first, so the threads
    of one process queue on it instead of polling the file.

    A corrupt, foreign or unopenable entry reads as missing and is overwritten by the next
    save; so does anything that is not a regular file of this user's (one warning names it).
    A directory that cannot be used (read-only, full disk, a file in the way) makes ``save``,
    ``load`` and ``lock`` raise :class:`~genesys_token.errors.StoreError`; one that is not
    this user's or that others can write makes them raise ConfigurationError. The manager
    reports either once and survives by using the network. The store itself logs nothing
    above DEBUG, except one warning for a directory other users can list and one per thing
    planted at an entry.

    Args:
        path: The cache directory (created with mode 0700, missing parents too, when
            missing). Default: ``GENESYSCLOUD_TOKEN_CACHE`` when set (``off`` gives a store
            that keeps nothing, said in one INFO line), else :func:`default_cache_dir`.

    Raises:
        ConfigurationError: ``path`` is not a string or path, or names an existing file, or
            an existing directory not owned by this user (``os.geteuid()``) or writable by
            its group or others (``field="path"``); or this platform has no ``fcntl``
            (Windows): use ``GENESYSCLOUD_TOKEN_CACHE=off``, a
            :class:`~genesys_token.stores.MemoryStore` or a RedisStore there.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigurationError(
                f"FileStore path must be a str or path, not {type(path).__name__}", field="path"
            )
        directory = _directory_from(path)
        if directory is not None and not _flock.AVAILABLE:
            raise ConfigurationError(
                "FileStore needs fcntl (POSIX file locks), which this platform lacks; "
                f"set {ENV_TOKEN_CACHE}=off or use MemoryStore or RedisStore",
                field="path",
            )
        if directory is None:
            log.info("%s is off: this FileStore keeps no token", ENV_TOKEN_CACHE)
        else:
            check_existing_directory(directory)
        self._dir = directory
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        #: What was warned about already (the directory's mode, planted entries): once each.
        self._warned: set[str] = set()
        #: Lock-file descriptors open now: a forked child closes its copies of them.
        self._open_fds: set[int] = set()
        self._slots: FileSlots | None = None
        self._pid = os.getpid()
        track_fork(self)

    @property
    def path(self) -> Path | None:
        """The cache directory, or ``None`` when the cache is off."""
        return self._dir

    @property
    def enabled(self) -> bool:
        """Whether this store keeps tokens (False when ``GENESYSCLOUD_TOKEN_CACHE=off``)."""
        return self._dir is not None

    # -- paths and the directory -----------------------------------------------------

    def _name(self, key: str, suffix: str) -> str:
        # Keys from store_key() are hex; anything else is hashed so it cannot escape the
        # directory or collide with our temp files.
        name = key if _SAFE_KEY.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{name}{suffix}"

    def _open_dir(self, directory: Path, action: str, *, create: bool) -> int | None:
        """A descriptor of the checked directory (the caller closes it); None when it is
        missing and ``create`` is false.

        Raises:
            ConfigurationError: Not this user's, or writable by its group or others.
            StoreError: It cannot be created or opened.
        """
        try:
            if create:
                make_directory(directory)
            fd, mode = open_directory(directory)
        except FileNotFoundError as exc:
            if create:
                raise self._error(action, exc) from None
            return None
        except OSError as exc:
            raise self._error(action, exc) from None
        if mode & OPEN_TO_OTHERS:
            self._warn_once(
                "directory",
                "token cache directory %s is accessible to other users (mode %o); "
                "run: chmod 700 %s",
                directory,
                mode,
                directory,
            )
        return fd

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        with self._guard:
            if what in self._warned:
                log.debug(message, *args)
                return
            self._warned.add(what)
        log.warning(message, *args)

    # -- the protocol ----------------------------------------------------------------

    def load(
        self, key: str, *, now_monotonic: float, now_wall: float, sealer: Sealer | None = None
    ) -> Token | None:
        """Return the token for ``key``, or ``None`` if missing, expired or unusable.

        Unusable: sealed with another secret, altered, in the old clear format, corrupt; or
        not a regular file of this user's (a FIFO, a device, a symlink, a directory, another
        user's file: never waited on, warned about once).

        Raises:
            StoreError: No ``sealer``, or the entry exists but cannot be read.
            ConfigurationError: The directory is not this user's, or others can write it.
        """
        if self._dir is None:
            return None
        sealer = require_sealer(sealer, "FileStore")
        dir_fd = self._open_dir(self._dir, "read", create=False)
        if dir_fd is None:
            return None
        name = self._name(key, ".json")
        try:
            raw = read_entry(dir_fd, name, MAX_ENTRY_BYTES)
        except Untrusted as exc:
            path = self._dir / name
            self._warn_once(str(path), "ignoring token cache entry %s: it %s", path, exc.reason)
            return None
        except OSError as exc:
            raise self._error("read", exc) from None
        finally:
            os.close(dir_fd)
        if raw is None or len(raw) > MAX_ENTRY_BYTES:
            return None
        token = decode_token(raw, sealer, now_monotonic=now_monotonic, now_wall=now_wall)
        if token is None:
            log.debug("ignoring an unusable token cache entry (unsealed, foreign or expired)")
        return token

    def save(self, key: str, token: Token, *, sealer: Sealer | None = None) -> None:
        """Write ``token`` sealed and atomically: temp file, fsync, ``rename``.

        Raises:
            StoreError: No ``sealer``, or the directory cannot be created or written
                (read-only, full disk).
            ConfigurationError: The directory is not this user's, or others can write it.
        """
        if self._dir is None:
            return
        blob = encode_token(token, require_sealer(sealer, "FileStore"))
        dir_fd = self._open_dir(self._dir, "write", create=True)
        assert dir_fd is not None  # created
        try:
            write_entry(dir_fd, self._name(key, ".json"), blob)
        except OSError as exc:
            raise self._error("write", exc) from None
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float, *, lease: float | None = None) -> Iterator[bool]:
        """Hold the refresh lock of ``key`` across threads and processes of this host.

        While held, the lock file's heartbeat is renewed for up to ``lease`` seconds (default
        :data:`~genesys_token.stores.base.DEFAULT_LEASE`); a holder elsewhere that does not
        renew its own is waited for about 3.5 s at most (see the module's notes).

        Yields:
            True when held; False when ``timeout`` passed while a live holder had it.

        Raises:
            StoreError: The lock file cannot be created, opened or locked, or its holder has
                not renewed it for a few seconds.
            ConfigurationError: The directory or the lock file is not this user's, or others
                can write it, or the lock file is not a regular file; or ``lease`` is not a
                positive number.
        """
        lease = DEFAULT_LEASE if lease is None else lease
        if isinstance(lease, bool) or not isinstance(lease, int | float) or not lease > 0:
            raise ConfigurationError("lease must be a positive number", field="lease")
        if self._dir is None:
            yield True  # nothing is shared, so there is nothing to serialize
            return
        with self._guard:
            thread_lock = self._locks.setdefault(key, threading.Lock())
        deadline = time.monotonic() + max(timeout, 0.0)
        if not thread_lock.acquire(timeout=max(timeout, 0.0)):
            yield False
            return
        pid = os.getpid()
        try:
            fd = self._open_lock_file(self._dir, key)
            heartbeat: _flock.Heartbeat | None = None
            try:
                held = self._wait(fd, deadline - time.monotonic(), key)
                if held:
                    heartbeat = _flock.Heartbeat(fd, float(lease))
                yield held
            finally:
                # In a child forked inside this block, the fork hook already closed the
                # descriptor (its number may now be someone else's), the parent still holds
                # the lock and the heartbeat is the parent's: touch nothing.
                if os.getpid() == pid:
                    if heartbeat is not None:
                        heartbeat.stop()  # before the close: the keeper uses the descriptor
                    self._close_lock_file(fd)
        finally:
            if os.getpid() == pid:
                thread_lock.release()

    def _wait(self, fd: int, timeout: float, key: str) -> bool:
        assert self._dir is not None
        try:
            return _flock.wait_for_lock(fd, timeout, self._dir / self._name(key, ".lock"))
        except OSError as exc:  # e.g. ENOLCK: a file system without flock support
            raise self._error("lock", exc) from None

    def _open_lock_file(self, directory: Path, key: str) -> int:
        dir_fd = self._open_dir(directory, "lock", create=True)
        assert dir_fd is not None  # created
        name = self._name(key, ".lock")
        try:
            # Under the guard, which the fork hook also takes: a lock descriptor is never
            # open without being in _open_fds, so no child can keep one it does not know of.
            with self._guard:
                try:
                    fd = open_lock_file(dir_fd, name, directory / name)
                except OSError as exc:
                    raise self._error("lock", exc) from None
                self._open_fds.add(fd)
                return fd
        finally:
            os.close(dir_fd)

    def _close_lock_file(self, fd: int) -> None:
        with self._guard:
            self._open_fds.discard(fd)
            # Unlock first: a forked child might still hold a copy of the descriptor.
            with contextlib.suppress(OSError):
                _flock.unlock(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _error(self, action: str, exc: OSError) -> StoreError:
        return StoreError(f"cannot {action} the token cache in {self._dir}: {exc.strerror}")

    def slots(self) -> FileSlots | None:
        """The API-call slots of each token, shared by the processes of this machine (one
        file per token in the cache directory; see :mod:`~genesys_token.stores.slots`), or
        ``None`` when the cache is off."""
        directory = self._dir
        if directory is None:
            return None
        with self._guard:
            if self._slots is None:
                self._slots = FileSlots(lambda: self._open_slot_dir(directory), directory)
            return self._slots

    def _open_slot_dir(self, directory: Path) -> int:
        fd = self._open_dir(directory, "pace calls in", create=True)
        assert fd is not None  # created
        return fd

    def close(self) -> None:
        """Nothing stays open between calls."""

    def _before_fork(self) -> None:
        self._guard.acquire()

    def _after_fork_in_parent(self) -> None:
        self._guard.release()

    def _after_fork(self) -> None:
        """In a forked child: fresh thread locks; close (never unlock) inherited lock files.

        Unlocking would release the parent's lock (one open file description); keeping them
        would keep the parent's lock alive for as long as this child lives.
        """
        if self._pid == os.getpid():
            return  # already done for this child (the hook may be called twice)
        self._pid = os.getpid()
        for fd in self._open_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open_fds = set()
        self._guard = threading.Lock()
        self._locks = {}

    def __repr__(self) -> str:
        return f"FileStore(path={str(self._dir) if self._dir else 'off'!r})"


def _directory_from(path: str | os.PathLike[str] | None) -> Path | None:
    """The cache directory: ``path``, else the environment, else the default; None: off."""
    if path is not None:
        return Path(path).expanduser()
    value = os.environ.get(ENV_TOKEN_CACHE, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    return Path(value).expanduser() if value else default_cache_dir()
