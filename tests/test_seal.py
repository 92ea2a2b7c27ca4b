"""The Sealer: what a shared store keeps opens only with the secret and key it was sealed for."""

from __future__ import annotations

import base64

import pytest

from genesys_token.stores._seal import MAGIC, NONCE_BYTES, TAG_BYTES, Sealer

SECRET = "secret-of-client-a"
KEY = "b8054e661d2af588a3863720a092443f"
PLAINTEXT = b'{"format":"genesys-token/2","token":{"access_token":"tok-secret-value"}}'


def test_sealed_entry_opens_with_the_same_secret_and_key() -> None:
    blob = Sealer(SECRET, KEY).seal(PLAINTEXT)
    assert Sealer(SECRET, KEY).open(blob) == PLAINTEXT
    assert Sealer(SECRET, KEY).open(blob.decode("ascii")) == PLAINTEXT  # text clients


def test_sealed_entry_reveals_nothing_of_its_plaintext() -> None:
    blob = Sealer(SECRET, KEY).seal(PLAINTEXT)
    assert blob.startswith(MAGIC)
    assert blob.isascii()
    for form in (b"tok-secret-value", base64.b64encode(b"tok-secret-value")):
        assert form not in blob
    assert b"tok-secret-value".hex().encode() not in blob
    assert SECRET.encode() not in blob


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(SECRET, KEY)
    assert sealer.seal(PLAINTEXT) != sealer.seal(PLAINTEXT)


@pytest.mark.parametrize(
    ("secret", "key"),
    [("another-secret", KEY), (SECRET, "0" * 32)],
    ids=["other-secret", "other-key"],
)
def test_entry_does_not_open_with_another_secret_or_for_another_key(secret: str, key: str) -> None:
    blob = Sealer(SECRET, KEY).seal(PLAINTEXT)
    assert Sealer(secret, key).open(blob) is None


def test_every_flipped_byte_makes_the_entry_unopenable() -> None:
    sealer = Sealer(SECRET, KEY)
    blob = sealer.seal(PLAINTEXT)
    for index in range(len(blob)):
        for flip in (0x01, 0x20, 0x80):
            altered = bytearray(blob)
            altered[index] ^= flip
            assert sealer.open(bytes(altered)) is None, (index, flip)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        MAGIC,
        MAGIC + b"!!!not base64!!!",
        MAGIC + base64.urlsafe_b64encode(b"\x00" * (NONCE_BYTES + TAG_BYTES - 1)),
        b'{"format": "genesys-token/1", "token": {"access_token": "tok"}}',
        "caf\u00e9",
        b"x" * 300_000,
        42,
        None,
    ],
    ids=["empty", "magic", "bad-base64", "short", "old-clear", "non-ascii", "huge", "int", "none"],
)
def test_foreign_old_or_broken_entries_open_as_none(blob: object) -> None:
    assert Sealer(SECRET, KEY).open(blob) is None  # type: ignore[arg-type]


def test_truncated_entry_opens_as_none() -> None:
    sealer = Sealer(SECRET, KEY)
    blob = sealer.seal(PLAINTEXT)
    for length in range(len(blob)):
        assert sealer.open(blob[:length]) is None


def test_repr_names_no_secret_and_bad_inputs_are_value_errors() -> None:
    sealer = Sealer(SECRET, KEY)
    assert SECRET not in repr(sealer)
    assert not hasattr(sealer, "__dict__")  # nothing else kept on it either
    with pytest.raises(ValueError, match="secret"):
        Sealer("", KEY)
    with pytest.raises(ValueError, match="store key"):
        Sealer(SECRET, "")
