"""FileStore: one token per client shared by every process of a host, through files.

Layout: one directory (mode 0700) holding ``<key>.json`` (a sealed entry, mode 0600,
replaced atomically) and ``<key>.lock`` (an ``flock`` target, never deleted: deleting a lock
file while someone waits on it would let two processes hold "the" lock at once).

The lock and its lease: an ``flock`` lives exactly as long as the open file description it
was taken on. A holder that dies (crash, SIGKILL) has its descriptors closed by the kernel,
so the lock frees at once; a live holder keeps it for as long as it needs, so a ``lease``
never runs out under it (there is nothing to renew). The one way to outlive the holder is a
forked child still holding a copy of the descriptor: the store closes, in every forked
child, the lock descriptors open at fork time (without unlocking: the parent still holds
the lock), and a lock block inherited mid-way by a child leaves them alone.

``GENESYSCLOUD_TOKEN_CACHE`` (read by ``FileStore()`` without a path, as by the command
line): a directory, or ``off`` (also ``none``, ``no``, ``false``, ``0``) for a store that
keeps nothing: every process then requests its own token.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, StoreError
from ..token import Token
from ._seal import Sealer
from .base import decode_token, encode_token, poll_until, require_sealer, track_fork

try:  # POSIX only; importing this module must still work elsewhere (issue 16, #9).
    _fcntl: Any = importlib.import_module("fcntl")
except ImportError:  # pragma: no cover - Windows
    _fcntl = None

log = logging.getLogger("genesys_token.stores")

#: The variable naming the cache directory (or ``off``), shared with the command line.
ENV_TOKEN_CACHE = "GENESYSCLOUD_TOKEN_CACHE"
#: Values of ``GENESYSCLOUD_TOKEN_CACHE`` that turn the file cache off.
CACHE_OFF = frozenset({"off", "none", "no", "false", "0"})

#: Directory and file modes: a token is a credential, readable by its owner only.
DIR_MODE = 0o700
FILE_MODE = 0o600
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
    Reads need no lock: entries are replaced atomically (temp file, fsync, ``os.replace``),
    so a reader sees the old token or the new one, never half of one. The refresh lock is an
    ``flock`` on a per-key lock file, taken through a descriptor opened for each ``lock`` call
    (``flock`` belongs to an open file description: a shared descriptor would let every
    thread of the process in at once). A per-key thread lock is taken first, so the threads
    of one process queue on it instead of polling the file.

    A corrupt, foreign or unopenable entry reads as missing and is overwritten by the next
    save. A directory that cannot be used (read-only, full disk, a file in the way) makes
    ``save``, ``load`` and ``lock`` raise :class:`~genesys_token.errors.StoreError`, which
    the manager reports once and survives by using the network. The store itself logs
    nothing above DEBUG, except one warning for a directory open to other users.

    Args:
        path: The cache directory (created with mode 0700 when missing). Default:
            ``GENESYSCLOUD_TOKEN_CACHE`` when set (``off`` gives a store that keeps
            nothing, said in one INFO line), else :func:`default_cache_dir`.

    Raises:
        ConfigurationError: ``path`` is not a string or path, or names an existing file;
            or this platform has no ``fcntl`` (Windows): use ``GENESYSCLOUD_TOKEN_CACHE=off``,
            a :class:`~genesys_token.stores.MemoryStore` or a RedisStore there.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigurationError(
                f"FileStore path must be a str or path, not {type(path).__name__}", field="path"
            )
        directory = _directory_from(path)
        if directory is not None and _fcntl is None:
            raise ConfigurationError(
                "FileStore needs fcntl (POSIX file locks), which this platform lacks; "
                f"set {ENV_TOKEN_CACHE}=off or use MemoryStore or RedisStore",
                field="path",
            )
        if directory is not None and directory.exists() and not directory.is_dir():
            raise ConfigurationError(
                f"FileStore path {str(directory)!r} exists and is not a directory", field="path"
            )
        if directory is None:
            log.info("%s is off: this FileStore keeps no token", ENV_TOKEN_CACHE)
        self._dir = directory
        self._dir_checked = False
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        #: Lock-file descriptors open now: a forked child closes its copies of them.
        self._open_fds: set[int] = set()
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

    def _file(self, directory: Path, key: str, suffix: str) -> Path:
        # Keys from store_key() are hex; anything else is hashed so it cannot escape the
        # directory or collide with our temp files.
        name = key if _SAFE_KEY.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return directory / f"{name}{suffix}"

    def _ensure_dir(self, directory: Path) -> None:
        """Create the directory (0700), or warn once if an existing one is open to others."""
        if self._dir_checked:
            return
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            mode = stat.S_IMODE(directory.stat().st_mode)
            if mode & 0o077:
                # Once per store, and about configuration rather than an outage.
                log.warning(
                    "token cache directory %s is accessible to other users (mode %o); "
                    "run: chmod 700 %s",
                    directory,
                    mode,
                    directory,
                )
        self._dir_checked = True

    # -- the protocol ----------------------------------------------------------------

    def load(
        self, key: str, *, now_monotonic: float, now_wall: float, sealer: Sealer | None = None
    ) -> Token | None:
        """Return the token for ``key``, or ``None`` if missing, expired or unusable.

        Unusable: sealed with another secret, altered, in the old clear format, corrupt.

        Raises:
            StoreError: No ``sealer``, or the entry exists but cannot be read.
        """
        if self._dir is None:
            return None
        sealer = require_sealer(sealer, "FileStore")
        try:
            fd = os.open(
                self._file(self._dir, key, ".json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None  # a symlink where our file should be: not ours, ignore it
            raise self._error("read", exc) from None
        try:
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read(MAX_ENTRY_BYTES + 1)
        except OSError as exc:
            raise self._error("read", exc) from None
        if len(raw) > MAX_ENTRY_BYTES:
            return None
        token = decode_token(raw, sealer, now_monotonic=now_monotonic, now_wall=now_wall)
        if token is None:
            log.debug("ignoring an unusable token cache entry (unsealed, foreign or expired)")
        return token

    def save(self, key: str, token: Token, *, sealer: Sealer | None = None) -> None:
        """Write ``token`` sealed and atomically: temp file, fsync, ``os.replace``.

        Raises:
            StoreError: No ``sealer``, or the directory cannot be created or written
                (read-only, full disk).
        """
        if self._dir is None:
            return
        blob = encode_token(token, require_sealer(sealer, "FileStore"))
        temp: str | None = None
        try:
            self._ensure_dir(self._dir)
            fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self._dir)
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self._file(self._dir, key, ".json"))
            temp = None
        except OSError as exc:
            raise self._error("write", exc) from None
        finally:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float, *, lease: float | None = None) -> Iterator[bool]:
        """Hold the refresh lock of ``key`` across threads and processes of this host.

        ``lease`` needs no enforcing here: an ``flock`` is held while its holder lives and
        freed by the kernel when it dies (see the module's notes).

        Yields:
            True when held; False when ``timeout`` passed while another holder had it.

        Raises:
            StoreError: The lock file cannot be created, opened or locked.
        """
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
            try:
                held = self._flock(fd, deadline - time.monotonic())
                yield held
            finally:
                # In a child forked inside this block, the fork hook already closed the
                # descriptor (its number may now be someone else's) and the parent still
                # holds the lock: touch nothing.
                if os.getpid() == pid:
                    self._close_lock_file(fd)
        finally:
            if os.getpid() == pid:
                thread_lock.release()

    def _flock(self, fd: int, timeout: float) -> bool:
        try:
            return poll_until(lambda: _try_flock(fd), timeout)
        except OSError as exc:  # e.g. ENOLCK: a file system without flock support
            raise self._error("lock", exc) from None

    def _open_lock_file(self, directory: Path, key: str) -> int:
        # Under the guard, which the fork hook also takes: a descriptor is never open
        # without being in _open_fds, so no child can keep one it does not know of.
        with self._guard:
            try:
                self._ensure_dir(directory)
                fd = os.open(
                    self._file(directory, key, ".lock"),
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    FILE_MODE,
                )
            except OSError as exc:
                raise self._error("lock", exc) from None
            self._open_fds.add(fd)
            return fd

    def _close_lock_file(self, fd: int) -> None:
        with self._guard:
            self._open_fds.discard(fd)
            # Unlock first: a forked child might still hold a copy of the descriptor.
            with contextlib.suppress(OSError):
                _fcntl.flock(fd, _fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _error(self, action: str, exc: OSError) -> StoreError:
        return StoreError(f"cannot {action} the token cache in {self._dir}: {exc.strerror}")

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


def _try_flock(fd: int) -> bool:
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
