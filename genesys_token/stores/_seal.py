"""Sealed entries: what a shared store keeps is encrypted and authenticated.

Anyone who can read a cache directory or a Redis database must learn no token from it, and
anyone who can write there must not be able to plant one. Each entry is sealed with
AES-256-GCM under a key derived (HKDF-SHA256) from the client secret and bound to the store
key, so an entry copied from one key to another, sealed with another secret, altered by one
bit, or written in the old clear format simply does not open: the store reads it as missing.

Layout of a sealed entry (ASCII, so text-mode Redis clients can carry it)::

    gt2:<base64url(nonce(12) | ciphertext | tag(16))>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Marks a sealed entry and its version; anything else is not opened at all.
MAGIC = b"gt2:"
#: 96-bit random nonces: the size GCM is designed for. A store key sees a few entries a day,
#: far below the 2**32 messages after which random nonces would risk a repeat.
NONCE_BYTES = 12
TAG_BYTES = 16
#: Fixed salt: it separates this use of the secret from any other (HKDF's "extract" step).
_SALT = b"genesys-token/sealed-entry/v2"
#: Labels the fingerprint: an HMAC under the derived key, so it names the secret and key
#: without revealing either, or the key that seals.
_FINGERPRINT_LABEL = b"genesys-token/entry-fingerprint/v1"
#: A sealed entry is a few kilobytes; anything larger is not ours and is not decoded.
MAX_BLOB_BYTES = 256 * 1024


class Sealer:
    """Seals shared-store entries for one client secret and one store key.

    AES-GCM (from ``cryptography``); the 256-bit key is HKDF-SHA256 of the client secret,
    with the store key as ``info``; the store key is also the associated data; a random
    96-bit nonce per entry. The secret is used once, here, and not kept.

    Args:
        secret: The client secret whose holders may read and write the entry.
        key: The store key the entry lives under (binds the entry to its place).
    """

    __slots__ = ("_aad", "_aead", "_fingerprint")

    def __init__(self, secret: str, key: str) -> None:
        if not isinstance(secret, str) or not secret:
            raise ValueError("Sealer needs a non-empty secret")
        if not isinstance(key, str) or not key:
            raise ValueError("Sealer needs a non-empty store key")
        self._aad = b"genesys-token entry\x00" + key.encode("utf-8")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=self._aad).derive(
            secret.encode("utf-8")
        )
        self._aead = AESGCM(derived)
        self._fingerprint = hmac.new(derived, _FINGERPRINT_LABEL, hashlib.sha256).digest()

    @property
    def fingerprint(self) -> bytes:
        """A one-way digest naming this sealer's secret and store key (equal for equal
        pairs, different otherwise). An in-process store binds its entries to it: a reader
        with another secret sees no entry. It reveals neither the secret nor the sealing key.
        """
        return self._fingerprint

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``; a fresh nonce each call."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, self._aad)
        return MAGIC + base64.urlsafe_b64encode(sealed)

    def open(self, blob: bytes | str) -> bytes | None:
        """The plaintext of a sealed entry, or ``None``.

        ``None`` when the entry was sealed with another secret or for another key, was
        altered, is truncated, is in another (older) format or is not an entry at all:
        never an exception, so a bad entry costs a token request and nothing else.
        """
        if isinstance(blob, str):
            try:
                blob = blob.encode("ascii")
            except UnicodeEncodeError:
                return None
        if not isinstance(blob, bytes) or len(blob) > MAX_BLOB_BYTES:
            return None
        if not blob.startswith(MAGIC):
            return None
        text = blob[len(MAGIC) :]
        try:
            sealed = base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            return None
        if base64.urlsafe_b64encode(sealed) != text:
            return None  # not canonical: the decoder skips stray bytes and spare bits
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            return None
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, self._aad)
        except InvalidTag:
            return None

    def __repr__(self) -> str:
        return "Sealer(<AES-GCM>)"
