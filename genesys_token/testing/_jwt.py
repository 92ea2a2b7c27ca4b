"""RS256 signing key of one emulator, generated lazily (only JWT mode and /jwks need it)."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["SigningKey"]


class SigningKey:
    """A 2048-bit RSA key with a random ``kid``."""

    def __init__(self) -> None:
        self.kid = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None

    def _private_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    def warm(self) -> None:
        """Generate the key now (tens to hundreds of milliseconds), not in the first token
        request, whose client may have a short read timeout."""
        self._private_key()

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(
            dict(claims), self._private_key(), algorithm="RS256", headers={"kid": self.kid}
        )

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._private_key().public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}
