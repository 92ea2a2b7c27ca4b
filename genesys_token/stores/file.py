"""FileStore: one token per client shared by every process of a host, through files.

Layout: one directory (mode 0700) holding ``<key>.json`` (mode 0600, replaced atomically)
and ``<key>.lock`` (an ``flock`` target, never deleted: deleting a lock file while someone
waits on it would let two processes hold "the" lock at once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigurationError, StoreError
from ..token import Token
from .base import decode_token, encode_token, poll_until

log = logging.getLogger("genesys_token")

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

    Reads need no lock: entries are replaced atomically (temp file, fsync, ``os.replace``),
    so a reader sees the old token or the new one, never half of one. The refresh lock is an
    ``flock`` on a per-key lock file, taken through a descriptor opened for each ``lock`` call
    (``flock`` belongs to an open file description: a shared descriptor would let every
    thread of the process in at once). A per-key thread lock is taken first, so the threads
    of one process queue on it instead of polling the file.

    A corrupt or foreign entry reads as missing and is overwritten by the next save. A
    directory that cannot be written (read-only, full disk) makes ``save`` raise
    :class:`~genesys_token.errors.StoreError` and ``lock`` yield False, so the manager logs a
    warning and uses the network.

    Args:
        path: The cache directory (created with mode 0700 when missing). Default:
            :func:`default_cache_dir`.

    Raises:
        ConfigurationError: ``path`` is not a string or path, or names an existing file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigurationError(
                f"FileStore path must be a str or path, not {type(path).__name__}", field="path"
            )
        directory = default_cache_dir() if path is None else Path(path).expanduser()
        if directory.exists() and not directory.is_dir():
            raise ConfigurationError(
                f"FileStore path {str(directory)!r} exists and is not a directory", field="path"
            )
        self._dir = directory
        self._dir_checked = False
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @property
    def path(self) -> Path:
        """The cache directory."""
        return self._dir

    # -- paths and the directory -----------------------------------------------------

    def _file(self, key: str, suffix: str) -> Path:
        # Keys from store_key() are hex; anything else is hashed so it cannot escape the
        # directory or collide with our temp files.
        name = key if _SAFE_KEY.match(key) else hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._dir / f"{name}{suffix}"

    def _ensure_dir(self) -> None:
        """Create the directory (0700), or warn once if an existing one is open to others."""
        if self._dir_checked:
            return
        self._dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._dir.mkdir(mode=DIR_MODE)
        except FileExistsError:
            mode = stat.S_IMODE(self._dir.stat().st_mode)
            if mode & 0o077:
                log.warning(
                    "token cache directory %s is accessible to other users (mode %o); "
                    "run: chmod 700 %s",
                    self._dir,
                    mode,
                    self._dir,
                )
        self._dir_checked = True

    # -- the protocol ----------------------------------------------------------------

    def load(self, key: str, *, now_monotonic: float, now_wall: float) -> Token | None:
        """Return the token for ``key``, or ``None`` if missing, expired, corrupt or foreign.

        Raises:
            StoreError: The entry exists but cannot be read (permissions, I/O error).
        """
        try:
            fd = os.open(self._file(key, ".json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
        token = decode_token(raw, now_monotonic=now_monotonic, now_wall=now_wall)
        if token is None:
            log.debug("ignoring an unusable token cache entry (corrupt, foreign or expired)")
        return token

    def save(self, key: str, token: Token) -> None:
        """Write ``token`` atomically: temp file in the same directory, fsync, ``os.replace``.

        Raises:
            StoreError: The directory cannot be created or written (read-only, full disk).
        """
        temp: str | None = None
        try:
            self._ensure_dir()
            fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self._dir)
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode_token(token))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self._file(key, ".json"))
            temp = None
        except OSError as exc:
            raise self._error("write", exc) from None
        finally:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[bool]:
        """Hold the refresh lock of ``key`` across threads and processes of this host.

        Yields:
            True when held; False when ``timeout`` passed first or the lock file cannot be
            used (the caller then fetches without it).
        """
        with self._guard:
            thread_lock = self._locks.setdefault(key, threading.Lock())
        deadline = time.monotonic() + max(timeout, 0.0)
        if not thread_lock.acquire(timeout=max(timeout, 0.0)):
            yield False
            return
        try:
            fd = self._open_lock_file(key)
            if fd is None:
                yield False
                return
            try:
                held = self._flock(fd, deadline - time.monotonic())
                try:
                    yield held
                finally:
                    if held:
                        fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            thread_lock.release()

    def _flock(self, fd: int, timeout: float) -> bool:
        try:
            return poll_until(lambda: _try_flock(fd), timeout)
        except OSError as exc:  # e.g. ENOLCK: a file system without flock support
            log.warning("cannot lock the token cache in %s: %s", self._dir, exc.strerror)
            return False

    def _open_lock_file(self, key: str) -> int | None:
        try:
            self._ensure_dir()
            return os.open(
                self._file(key, ".lock"),
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                FILE_MODE,
            )
        except OSError as exc:
            log.warning("cannot open the token cache lock in %s: %s", self._dir, exc.strerror)
            return None

    def _error(self, action: str, exc: OSError) -> StoreError:
        return StoreError(f"cannot {action} the token cache in {self._dir}: {exc.strerror}")

    def close(self) -> None:
        """Nothing stays open between calls."""

    def _after_fork(self) -> None:
        """Replace thread locks a parent thread may have held at fork time."""
        self._guard = threading.Lock()
        self._locks = {}

    def __repr__(self) -> str:
        return f"FileStore(path={str(self._dir)!r})"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
