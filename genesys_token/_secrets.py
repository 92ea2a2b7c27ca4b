"""Secret sources: a plain string, a zero-argument callable (Vault, a secrets manager), or a
mounted file (:class:`SecretFile`). A source is read for each token request and again right
after Genesys rejects the secret it gave, so a rotated secret reaches a running process with
no code. What a source returns is checked; its value never reaches a message.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigurationError, SecretSourceError

__all__ = ["SecretFile", "SourceReads", "check_secret", "digest", "read_secret"]

Secret = str | Callable[[], str]

#: A mounted secret is a few hundred bytes; anything far larger is not a secret file.
MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretFile:
    """A secret read from a file on each call, surrounding whitespace stripped (Kubernetes and
    most secret managers mount secrets as files and update them in place).

    Args:
        path: The file.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigurationError(
                f"secret file path must be a str or path, not {type(path).__name__}",
                field="client_secret",
            )
        self.path = Path(path)

    def __call__(self) -> str:
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SecretSourceError(
                f"cannot read the secret file {str(self.path)!r}: {reason}", field="client_secret"
            ) from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise SecretSourceError(
                f"the secret file {str(self.path)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes",
                field="client_secret",
            )
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretSourceError(
                f"the secret file {str(self.path)!r} is not UTF-8 text", field="client_secret"
            ) from None

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"


def check_secret(value: object) -> Secret:
    """Accept a secret string or a zero-argument callable.

    Raises:
        ConfigurationError: Anything else, or an unusable string.
    """
    if isinstance(value, str):
        _check_value(value, "client_secret")
        return value
    if callable(value):
        return value
    raise ConfigurationError(
        f"client_secret must be a string or a zero-argument callable, not {type(value).__name__}",
        field="client_secret",
    )


def read_secret(source: Secret) -> str:
    """The secret a source gives now.

    Raises:
        SecretSourceError: The callable raised, or gave something other than a usable string.
    """
    if isinstance(source, str):
        return source
    try:
        value = source()
    except SecretSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a user's source raises
        raise SecretSourceError(
            f"the client_secret source raised {type(exc).__name__}", field="client_secret"
        ) from None
    if not isinstance(value, str):
        raise SecretSourceError(
            f"the client_secret source returned {type(value).__name__}, not str",
            field="client_secret",
        )
    try:
        _check_value(value, "client_secret")
    except ConfigurationError as exc:
        raise SecretSourceError(f"the client_secret source gave a bad value: {exc}") from None
    return value


def digest(client_id: str, secret: str) -> bytes:
    """A one-way name of a credential pair, to compare without keeping a second copy."""
    return hashlib.sha256(f"{client_id}\x1f{secret}".encode()).digest()


def _check_value(value: str, name: str) -> None:
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty", field=name)
    if any(ch in value for ch in "\r\n\x00"):
        raise ConfigurationError(f"{name} must not contain control characters", field=name)


class _Read:
    """One call of a secret source, awaited by later acquisitions while it runs."""

    __slots__ = ("done", "error", "source", "value")

    def __init__(self, source: Callable[[], str]) -> None:
        self.source = source
        self.done = threading.Event()
        self.value: str | None = None
        self.error: SecretSourceError | None = None


class SourceReads:
    """Reads a manager's secret source one call at a time.

    A source that hangs (a vault client with no timeout during an outage) holds the one
    thread that called it; later acquisitions wait for that call, up to their own deadline,
    instead of calling again: one hanging source costs one thread, not one per retry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: _Read | None = None

    def read(self, source: Secret, until: float) -> str:
        """The secret ``source`` gives now; a call already running is waited for until
        ``until`` (``time.monotonic()``).

        Raises:
            SecretSourceError: The source failed, or the call running did not end in time.
        """
        if isinstance(source, str):
            return source
        with self._lock:
            running = self._read
            mine = running is None or running.source is not source
            if mine:
                running = self._read = _Read(source)
        assert running is not None
        if mine:
            try:
                running.value = read_secret(source)
            except SecretSourceError as exc:
                running.error = exc
            finally:
                with self._lock:
                    if self._read is running:
                        self._read = None
                running.done.set()
        elif not running.done.wait(max(0.0, until - time.monotonic())):
            raise SecretSourceError(
                "the client_secret source has not answered its previous call yet",
                field="client_secret",
            )
        if running.error is not None:
            if mine:
                raise running.error
            # A new object: one exception raised in two threads would share a traceback.
            raise SecretSourceError(str(running.error), field="client_secret")
        assert running.value is not None
        return running.value

    def after_fork(self) -> None:
        """In a forked child: the parent's call runs in a thread the child does not have."""
        self.__init__()  # type: ignore[misc]
