"""The type secrets live in, and secret sources that fail without chaining what they held."""

from __future__ import annotations

import copy
import os
import pickle
import threading
from pathlib import Path

import pytest

from genesys_token import SecretFile, SecretSourceError
from genesys_token.credentials import KnownSecrets, SecretValue, digest, read_secret

SECRET = "hunter2+Plain/x"


def test_a_secret_value_never_shows_itself() -> None:
    secret = SecretValue(SECRET)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r:>40}", repr([secret])]
    assert all(SECRET not in text for text in shown)
    assert repr(secret) == "SecretValue('***')"
    assert secret.reveal() == SECRET


def test_a_secret_value_holds_no_plain_copy_in_its_slots() -> None:
    secret = SecretValue(SECRET)
    held = [getattr(secret, slot) for slot in SecretValue.__slots__]
    assert all(SECRET.encode() not in value for value in held)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret._pad = b""  # type: ignore[misc]


def test_secret_values_compare_by_value_only_with_each_other() -> None:
    assert SecretValue(SECRET) == SecretValue(SECRET)
    assert SecretValue(SECRET) != SecretValue(SECRET + "x")
    assert SecretValue(SECRET) != SECRET  # never equal to a plain copy
    # The hash is derived from nothing secret: the same for every value.
    assert hash(SecretValue(SECRET)) == hash(SecretValue("other"))


def test_a_secret_value_is_not_pickled_and_copies_are_itself() -> None:
    secret = SecretValue(SECRET)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(secret)
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret


def test_a_secret_value_holds_only_text() -> None:
    with pytest.raises(TypeError, match="holds a str"):
        SecretValue(b"bytes")  # type: ignore[arg-type]


def test_map_and_digest_work_on_the_hidden_value() -> None:
    secret = SecretValue(SECRET)
    assert secret.map(str.upper).reveal() == SECRET.upper()
    assert digest("client", secret) == digest("client", SECRET)


def test_known_secrets_redact_every_form_and_show_none() -> None:
    # Known values of 8 characters or more (shorter ones are words as often as secrets: see
    # observability/redaction.py); a token is far longer.
    known = KnownSecrets(SecretValue(SECRET)).plus("tok-12345678")
    text = known.excerpt(f"echo {SECRET} and tok-12345678")
    assert SECRET not in text
    assert "tok-12345678" not in text
    assert SECRET not in repr(known)


def test_read_secret_hides_what_a_source_gives() -> None:
    assert read_secret(lambda: SECRET) == SecretValue(SECRET)
    assert read_secret(SECRET) == SecretValue(SECRET)
    hidden = SecretValue(SECRET)
    assert read_secret(hidden) is hidden


def _raises_holding(secret: str) -> object:
    def source() -> str:
        fetched = secret  # what a vault client holds when it fails
        raise RuntimeError(f"vault down ({len(fetched)})")

    return source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (_raises_holding(SECRET), "raised RuntimeError"),
        (lambda: SECRET + "\n", "control characters"),
        (lambda: 42, "returned int"),
    ],
    ids=["raises", "bad-value", "not-text"],
)
def test_a_failing_source_chains_nothing(source: object, message: str) -> None:
    """The error is raised out of the handler: no context holds the source's frames (a
    tracker sends each frame's locals)."""
    with pytest.raises(SecretSourceError, match=message) as caught:
        read_secret(source)  # type: ignore[arg-type]
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    assert SECRET not in str(caught.value)


def test_an_unreadable_secret_file_chains_nothing(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET.encode() + b"\xff")
    with pytest.raises(SecretSourceError, match="not UTF-8") as caught:
        SecretFile(path)()
    assert caught.value.__context__ is None
    with pytest.raises(SecretSourceError, match="cannot read the secret file") as caught:
        SecretFile(tmp_path / "missing")()
    assert caught.value.__context__ is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_the_secret_files_place_is_refused_at_once(tmp_path: Path) -> None:
    # Opened in blocking mode, a FIFO nobody writes holds the token request for good.
    path = tmp_path / "secret"
    os.mkfifo(path)
    result: list[BaseException] = []

    def read() -> None:
        try:
            SecretFile(path)()
        except BaseException as exc:  # noqa: BLE001 - looked at below
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2.0)
    if reader.is_alive():  # let the stuck reader go before failing
        with open(path, "wb"):
            pass
    assert not reader.is_alive(), "reading a FIFO secret file blocked"
    assert isinstance(result[0], SecretSourceError)
    assert "not a regular file" in str(result[0])


def test_a_symlinked_secret_file_is_read_as_kubernetes_mounts_it(tmp_path: Path) -> None:
    target = tmp_path / "..data" / "secret"
    target.parent.mkdir()
    target.write_text(SECRET + "\n", encoding="utf-8")
    link = tmp_path / "secret"
    link.symlink_to(target)
    assert SecretFile(link)() == SECRET
