"""Secret sources, and the type secrets live in once read.

A source is a plain string, a zero-argument callable (Vault, a secrets manager), or a mounted
file (:class:`SecretFile`). A source is read for each token request and again right after
Genesys rejects the secret it gave, so a rotated secret reaches a running process with no
code. What a source returns is checked, then kept as a :class:`SecretValue` on the whole
acquisition path; its value never reaches a message, a repr or a frame's locals in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

from .errors import ConfigurationError, SecretSourceError
from .observability.redaction import excerpt

__all__ = [
    "KnownSecrets",
    "SecretFile",
    "SecretValue",
    "SourceReads",
    "check_secret",
    "digest",
    "hidden",
    "is_known",
    "read_secret",
    "warn_if_padded",
]

log = logging.getLogger(__name__)

#: A mounted secret is a few hundred bytes; anything far larger is not a secret file.
MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretValue:
    """A secret that never shows itself.

    ``repr()``, ``str()`` and ``format()`` give ``SecretValue('***')``. The value is kept
    XOR-masked with a random pad of its own length, so no generic walk of objects (an error
    tracker serialising a frame's locals, a debugger, ``vars()`` or ``__slots__`` followed
    down) meets it in clear. This is no protection against code that reads process memory:
    it keeps the secret out of what gets *shown*. :meth:`reveal` gives it back, for the few
    places that must hand it on (the ``Authorization`` header, the store's key derivation).

    Equality is constant-time (``hmac.compare_digest``) and only with another
    :class:`SecretValue` (never with a ``str``: comparing with a plain copy would invite one
    to be kept). The hash is a constant: it is derived from nothing secret, so no hash of
    the value can be logged, timed or compared; equal values still hash alike, and nothing
    keeps sets of secrets. A :class:`SecretValue` is not pickled (a pickle would hold the
    value in clear); copies are the object itself (it is immutable).

    Args:
        value: The secret.

    Raises:
        TypeError: ``value`` is not a ``str``.
    """

    __slots__ = ("_masked", "_pad")

    _masked: bytes
    _pad: bytes

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a SecretValue holds a str, not {type(value).__name__}")
        # surrogatepass: never an error holding the value (a lone surrogate from a
        # non-UTF-8 environment); the checks refuse such a secret, naming no value.
        size = len(value.encode("utf-8", "surrogatepass"))
        pad = os.urandom(size)
        masked = _xor(value.encode("utf-8", "surrogatepass"), pad)
        object.__setattr__(self, "_pad", pad)
        object.__setattr__(self, "_masked", masked)

    def reveal(self) -> str:
        """The secret in clear: hand it on at once, keep it in no variable that outlives
        the call."""
        return _xor(self._masked, self._pad).decode("utf-8", "surrogatepass")

    def map(self, transform: Callable[[str], str]) -> SecretValue:
        """Another secret made from this one (an encoding of it), without a plain copy in
        the caller's frame."""
        return SecretValue(transform(self.reveal()))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a SecretValue is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(_xor(self._masked, self._pad), _xor(other._masked, other._pad))

    def matches(self, plain: str | SecretValue) -> bool:
        """Whether ``plain`` (a string the caller holds anyway) is this secret; in constant
        time, with no second :class:`SecretValue` made."""
        if isinstance(plain, SecretValue):
            return self == plain
        return hmac.compare_digest(
            _xor(self._masked, self._pad), plain.encode("utf-8", "surrogatepass")
        )

    def __hash__(self) -> int:
        return hash(SecretValue)

    def __repr__(self) -> str:
        return "SecretValue('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a SecretValue is not pickled: the pickle would hold it in clear")


def _xor(data: bytes, pad: bytes) -> bytes:
    size = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(size, "big")


#: A client secret as configured: the value (plain or hidden), or a source giving it.
Secret = str | SecretValue | Callable[[], str]


class KnownSecrets:
    """The secrets an answer must not show, in every form it could echo them back in, kept
    hidden: revealed only for the moment a redaction needs them (see ``_redact``).

    Args:
        values: The secrets.
    """

    __slots__ = ("_values",)

    def __init__(self, *values: SecretValue) -> None:
        self._values = values

    def plus(self, value: str) -> KnownSecrets:
        """These and ``value`` (a token just received)."""
        return KnownSecrets(*self._values, SecretValue(value))

    def excerpt(self, value: bytes | str, limit: int = 200) -> str:
        """:func:`~genesys_token.observability.redaction.excerpt` of ``value``, every known
        secret redacted."""
        return excerpt(value, limit, [secret.reveal() for secret in self._values])

    def found_in(self, text: str) -> bool:
        """Whether any known secret, however short, occurs in ``text`` (for values that are
        dropped whole rather than redacted, such as a correlation id)."""
        return any((value := secret.reveal()) and value in text for secret in self._values)

    def __repr__(self) -> str:
        return f"KnownSecrets({len(self._values)} hidden)"


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
        text, problem = _read_text(self.path)
        if problem is not None:
            # Raised here, out of any handler: no chained error holds the bytes read.
            raise SecretSourceError(problem, field="client_secret")
        return text

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"


def _read_text(path: Path) -> tuple[str, str | None]:
    """The file's text, stripped, or why it cannot be read (the problem is returned, not
    raised: an exception raised here would carry the bytes read in its frame)."""
    name = repr(str(path))
    try:
        # Non-blocking open, then only a regular file is read: a FIFO (or a device) put in the
        # secret's place would otherwise hold the token request, and its lock, for good.
        # Symbolic links are followed: Kubernetes mounts secrets through them.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return "", f"the secret file {name} is not a regular file"
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        return "", f"cannot read the secret file {name}: {exc.strerror or type(exc).__name__}"
    if len(raw) > MAX_SECRET_FILE_BYTES:
        return "", f"the secret file {name} is larger than {MAX_SECRET_FILE_BYTES} bytes"
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return "", f"the secret file {name} is not UTF-8 text"


def check_secret(value: object) -> SecretValue | Callable[[], str]:
    """Accept a secret string (plain or a :class:`SecretValue`) or a zero-argument callable;
    a plain string comes back hidden in a :class:`SecretValue`.

    Raises:
        ConfigurationError: Anything else, or an unusable string.
    """
    if isinstance(value, str):
        value = SecretValue(value)  # rebound at once: no frame below holds it in clear
    if isinstance(value, SecretValue):
        return checked_value(value, "client_secret")
    if callable(value):
        return value
    raise ConfigurationError(
        f"client_secret must be a string or a zero-argument callable, not {type(value).__name__}",
        field="client_secret",
    )


def warn_if_padded(client_id: str, secret: object) -> None:
    """Log one WARNING when the id or the secret a caller gave has surrounding whitespace.

    Both are kept as given (they are what was asked for), but Genesys ids and secrets never
    have any: a pasted ``"secret "`` would be refused with no hint. The variables and the
    secret file are stripped instead (see ``settings``); a source is not read here. The
    warning names the fields, never a value.

    Args:
        client_id: The client id as given.
        secret: The secret as given (plain or hidden), or a source (then not checked).
    """
    fields = [
        name
        for name, padded in (
            ("client_id", isinstance(client_id, str) and _padded(client_id)),
            ("client_secret", isinstance(secret, SecretValue) and _padded(secret.reveal())),
        )
        if padded
    ]
    if fields:
        log.warning(
            "%s %s surrounding whitespace, which Genesys %s never have; sent as given",
            " and ".join(fields),
            "have" if len(fields) > 1 else "has",
            "client ids and secrets" if len(fields) > 1 else fields[0].replace("_", " ") + "s",
        )


def _padded(value: str) -> bool:
    return value != value.strip()


def hidden(secret: str | SecretValue) -> SecretValue:
    """``secret`` as a :class:`SecretValue` (itself when it is one already)."""
    return secret if isinstance(secret, SecretValue) else SecretValue(secret)


def is_known(secret: Secret) -> TypeGuard[str | SecretValue]:
    """Whether ``secret`` is a value (plain or hidden), not a source read for each request."""
    return isinstance(secret, str | SecretValue)


def read_secret(source: Secret) -> SecretValue:
    """The secret a source gives now, hidden.

    Every failure is raised out of any ``except`` block, so no chained exception carries the
    frames of the source (a vault client's locals may hold what it fetched).

    Raises:
        SecretSourceError: The callable raised, or gave something other than a usable string.
    """
    if isinstance(source, SecretValue):
        return source
    if isinstance(source, str):
        return SecretValue(source)
    try:
        value = _hidden(source())
    except SecretSourceError as exc:
        failure = SecretSourceError(str(exc), field="client_secret")
    except Exception as exc:  # noqa: BLE001 - whatever a user's source raises
        failure = SecretSourceError(
            f"the client_secret source raised {type(exc).__name__}", field="client_secret"
        )
    else:
        return value
    raise failure


def _hidden(value: object) -> SecretValue:
    """What a source returned, checked and hidden at once (no plain copy in a caller)."""
    if isinstance(value, SecretValue):
        return value
    if not isinstance(value, str):
        raise SecretSourceError(
            f"the client_secret source returned {type(value).__name__}, not str",
            field="client_secret",
        )
    problem = _problem(value)
    if problem is not None:
        raise SecretSourceError(
            f"the client_secret source gave a bad value: client_secret {problem}",
            field="client_secret",
        )
    return SecretValue(value)


def digest(client_id: str, secret: str | SecretValue) -> bytes:
    """A one-way name of a credential pair, to compare without keeping a second copy."""
    plain = secret.reveal() if isinstance(secret, SecretValue) else secret
    return hashlib.sha256(f"{client_id}\x1f{plain}".encode()).digest()


def hide_text(value: object) -> object:
    """``value`` hidden in a :class:`SecretValue` when it is a string, else as it is (for
    the checks to refuse): the first thing done with a secret a caller hands in, so no frame
    of ours holds it in clear, whatever error follows."""
    return SecretValue(value) if isinstance(value, str) else value


def checked_value(value: SecretValue, name: str) -> SecretValue:
    """``value`` if it is a usable secret.

    Raises:
        ConfigurationError: It is empty, holds control characters or is not UTF-8 text
            (the message names the field, never the value).
    """
    problem = _problem(value.reveal())
    if problem is not None:
        raise ConfigurationError(f"{name} {problem}", field=name)
    return value


def _problem(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if any(ch in value for ch in "\r\n\x00"):
        return "must not contain control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be UTF-8 text (it holds a byte the environment could not decode)"
    return None


class _Read:
    """One call of a secret source, awaited by later acquisitions while it runs."""

    __slots__ = ("done", "error", "source", "value")

    def __init__(self, source: Callable[[], str]) -> None:
        self.source = source
        self.done = threading.Event()
        self.value: SecretValue | None = None
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

    def read(self, source: Secret, until: float) -> SecretValue:
        """The secret ``source`` gives now, hidden; a call already running is waited for
        until ``until`` (``time.monotonic()``).

        Raises:
            SecretSourceError: The source failed, or the call running did not end in time.
        """
        if isinstance(source, str | SecretValue):
            return read_secret(source)
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
