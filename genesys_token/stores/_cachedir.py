"""What a FileStore opens in its cache directory, checked before it is trusted.

The cache directory and what it holds come from outside the process: another local user may
have made the directory, loosened its mode, or planted a FIFO, a device, a symlink or a file
of their own where an entry or a lock file belongs. So every open here cannot block
(``O_NONBLOCK``: a FIFO opens at once instead of waiting for a writer), follows no symlink at
its last step (``O_NOFOLLOW``), and is checked on its descriptor (``fstat``) before anything
is read or locked: what is checked is what is used. Entries and lock files are opened
relative to a descriptor of the checked directory, so swapping the directory between the
check and the open changes nothing.

The directory itself is checked, not its parents. A directory of ours under a sticky
world-writable parent (``/tmp``) can be neither renamed nor removed by another user; the one
thing they can do there is take the name first, which makes the directory theirs and so
refused. Refusing every directory with a writable parent would refuse ``/tmp/...`` and most
container volumes for no gain in that case. A parent writable by others *without* the sticky
bit would let them swap the directory for another one: that one is checked again at the next
open, so at worst it is another directory of this user's own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from ..errors import ConfigurationError

#: Directory and file modes: a token is a credential, readable by its owner only. Missing
#: parents are created 0700 too, as the XDG base directory rules ask.
DIR_MODE = 0o700
FILE_MODE = 0o600
#: Mode bits that let a user other than the owner add, replace or change what is there.
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
#: Mode bits that let other users list the directory (warned about, not refused: entries are
#: sealed and 0600).
OPEN_TO_OTHERS = 0o077

_NOFOLLOW_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK})  # Linux/macOS, FreeBSD
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
)


class Untrusted(Exception):
    """Something that is not a regular file of this user sits where an entry belongs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_directory(path: Path) -> None:
    """Create ``path`` and its missing parents, each with mode 0700; existing ones stay.

    Raises:
        OSError: A parent is a file, the disk is read-only, and the like.
    """
    missing: list[Path] = []
    current = path
    while True:
        try:
            os.mkdir(current, DIR_MODE)
            break
        except FileExistsError:
            break
        except FileNotFoundError:
            if current.parent == current:
                raise
            missing.append(current)
            current = current.parent
    for child in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(child, DIR_MODE)


def check_existing_directory(path: Path) -> None:
    """Refuse ``path`` now if it exists and is not a directory of this user's own.

    A missing (or unreachable) path is left for the first write, which creates it 0700 or
    reports why it cannot.

    Raises:
        ConfigurationError: ``path`` exists and is refused (see :func:`open_directory`).
    """
    try:
        status = os.stat(path)
    except OSError:
        return
    problem = _link_problem(path) or _directory_problem(status)
    if problem is not None:
        raise _refused("directory", path, problem)


def open_directory(path: Path) -> tuple[int, int]:
    """Open the cache directory and check it on its descriptor.

    A symlink of this user's to the directory is followed: the descriptor names what it
    points to, and that is what is checked and used. A symlink another user owns is
    refused, as Linux's ``fs.protected_symlinks`` would in a sticky directory (not every
    system sets it): in a sticky ``/tmp`` it is the one thing another user can plant at
    the directory's name, pointing it at a directory of ours. The name is looked at again
    after the open, so a link swapped in meanwhile is seen.

    Returns:
        The descriptor (the caller closes it) and the directory's permission bits.

    Raises:
        ConfigurationError: Not owned by this user (``os.geteuid()``), or writable by its
            group or others.
        OSError: Missing, not a directory, unreachable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        problem = _directory_problem(status) or _link_problem(path, status)
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise _refused("directory", path, problem)
    return fd, stat.S_IMODE(status.st_mode)


def read_entry(dir_fd: int, name: str, limit: int) -> bytes | None:
    """Read entry ``name`` of the directory ``dir_fd``: at most ``limit + 1`` bytes.

    Returns:
        The bytes, or None when there is no such entry.

    Raises:
        Untrusted: A symlink, or not a regular file owned by this user.
        OSError: The entry exists but cannot be read.
    """
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOFOLLOW_ERRNOS:
            raise Untrusted("is a symbolic link") from None
        raise
    try:
        problem = _file_problem(os.fstat(fd), writable_ok=True)
        if problem is not None:
            raise Untrusted(problem)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 65536))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_entry(dir_fd: int, name: str, blob: bytes) -> None:
    """Replace entry ``name`` atomically: a 0600 temp file, fsync, ``rename``.

    Raises:
        OSError: The directory cannot be written (read-only, full disk); no temp file stays.
    """
    temp = f".tmp-{secrets.token_hex(8)}.json"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def open_lock_file(dir_fd: int, name: str, path: Path) -> int:
    """Open (or create, 0600) lock file ``name`` of the directory ``dir_fd`` for ``flock``.

    Returns:
        Its descriptor; the caller closes it.

    Raises:
        ConfigurationError: A symlink, not a regular file owned by this user, or writable
            by its group or others (``path`` names it).
        OSError: It cannot be created or opened.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NOFOLLOW_ERRNOS:
            raise _refused("lock file", path, "is a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise _refused("lock file", path, "is not a regular file (a directory)") from None
        raise
    try:
        problem = _file_problem(os.fstat(fd), writable_ok=False)
    except BaseException:
        os.close(fd)
        raise
    if problem is not None:
        os.close(fd)
        raise _refused("lock file", path, problem)
    return fd


def _link_problem(path: Path, opened: os.stat_result | None = None) -> str | None:
    """Why the name ``path`` cannot be trusted to lead to our directory: a symlink another
    user owns, or (after an open) a name that no longer leads to what was opened."""
    try:
        link = os.lstat(path)
        if opened is not None:
            now = os.stat(path)
    except OSError:
        return None if opened is None else "changed while it was opened"
    if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():
        return f"is a symlink owned by uid {link.st_uid}, not by this user"
    if opened is not None and (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        return "changed while it was opened"
    return None


def _directory_problem(status: os.stat_result) -> str | None:
    if not stat.S_ISDIR(status.st_mode):
        return "exists and is not a directory"
    return _owner_problem(status, writable_ok=False)


def _file_problem(status: os.stat_result, *, writable_ok: bool) -> str | None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "of another kind")
        return f"is not a regular file ({kind})"
    return _owner_problem(status, writable_ok=writable_ok)


def _owner_problem(status: os.stat_result, *, writable_ok: bool) -> str | None:
    me = os.geteuid()
    if status.st_uid != me:
        return f"is owned by uid {status.st_uid}, not by this user (uid {me})"
    mode = stat.S_IMODE(status.st_mode)
    if not writable_ok and mode & WRITABLE_BY_OTHERS:
        return f"is writable by its group or others (mode {mode:04o})"
    return None


def _refused(what: str, path: Path, problem: str) -> ConfigurationError:
    remedy = "remove it" if what == "lock file" else "use a directory of this user's, mode 0700"
    return ConfigurationError(
        f"token cache {what} {str(path)!r} {problem}: refused ({remedy})", field="path"
    )
