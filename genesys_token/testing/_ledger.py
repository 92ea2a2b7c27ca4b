"""The emulated org's OAuth clients and the tokens issued to them.

One lock guards both; the emulator's request handlers and its public methods (add a client,
revoke a token) go through it from any thread.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from genesys_token.testing._handler import Reply
from genesys_token.testing._jwt import SigningKey
from genesys_token.testing._wire import (
    RATE_LIMIT_DESCRIPTION,
    TokenCall,
    TokenFormat,
    granted_scopes,
    json_reply,
    oauth_error,
)


@dataclass
class _Client:
    secrets: list[str]
    token_ttl: float | None
    grant_allowed: bool
    scopes: tuple[str, ...]
    creations: deque[float] = field(default_factory=deque)

    def accepts(self, secret: str) -> bool:
        given = secret.encode("utf-8")
        return any(hmac.compare_digest(s.encode("utf-8"), given) for s in self.secrets)


@dataclass
class IssuedToken:
    """What the ledger knows of a token it issued."""

    client_id: str
    expires: float
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class GrantRules:
    """How the token endpoint answers, as the emulator is configured at the request."""

    token_ttl: float
    token_format: TokenFormat
    invalid_client_status: int
    rate_limit: int | None
    rate_window: float


class Ledger:
    """Clients (with their secrets) and issued tokens (with expiry and revocation).

    Args:
        default_client_id: The client whose newest secret :attr:`default_secret` tells.
        key: Signs JWT tokens.
        org_id: The org's id, a claim of every JWT.
        issuer: Returns the ``iss`` claim (the emulator's URL, known once it serves).
    """

    def __init__(
        self, default_client_id: str, key: SigningKey, org_id: str, issuer: Callable[[], str]
    ) -> None:
        self.lock = threading.Lock()
        self._default_client_id = default_client_id
        self._default_secret = ""
        self._key = key
        self._org_id = org_id
        self._issuer = issuer
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._revoked: set[str] = set()
        self._issued: list[str] = []

    # -- clients ---------------------------------------------------------------------------

    @property
    def default_secret(self) -> str:
        """The newest secret of the default client."""
        with self.lock:
            return self._default_secret

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_ttl: float | None,
        grant_allowed: bool,
        scopes: Sequence[str],
    ) -> None:
        """Register (or replace) a client (see :meth:`GenesysEmulator.add_client`)."""
        if token_ttl is not None and token_ttl < 0:
            raise ValueError("token_ttl must be >= 0")
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of scope names, not a string")
        client = _Client([client_secret], token_ttl, grant_allowed, tuple(scopes))
        with self.lock:
            self._clients[client_id] = client
            if client_id == self._default_client_id:
                self._default_secret = client_secret

    def remove_client(self, client_id: str) -> None:
        """Delete a client and revoke its tokens."""
        with self.lock:
            del self._clients[client_id]
            self._revoked.update(
                t for t, info in self._tokens.items() if info.client_id == client_id
            )

    def set_secret(self, client_id: str, new_secret: str, *, keep_old: bool) -> None:
        """Regenerate a client's secret; ``keep_old`` leaves the previous ones valid too."""
        with self.lock:
            client = self._clients[client_id]
            client.secrets = [*client.secrets, new_secret] if keep_old else [new_secret]
            if client_id == self._default_client_id:
                self._default_secret = new_secret

    def warm_key(self) -> None:
        """Generate the signing key now (JWT mode): not inside a timed token request."""
        self._key.warm()

    def jwks(self) -> dict[str, Any]:
        """The public key set that verifies the JWTs issued here."""
        return self._key.jwks()

    # -- tokens ----------------------------------------------------------------------------

    def revoke(self, token: str) -> None:
        """Revoke a token (issued here or not)."""
        with self.lock:
            self._revoked.add(token)

    def expire(self, token: str) -> None:
        """Make an issued token expired now (KeyError if it was not issued here)."""
        with self.lock:
            self._tokens[token].expires = time.monotonic()

    def expiry(self, token: str) -> float | None:
        """When an issued token expires (``time.monotonic()``); None if not issued here."""
        with self.lock:
            info = self._tokens.get(token)
            return None if info is None else info.expires

    def valid(self, token: str) -> IssuedToken | None:
        """The token's record if it was issued here, is not revoked and has not expired."""
        with self.lock:
            info = self._tokens.get(token)
            if info is None or token in self._revoked or time.monotonic() >= info.expires:
                return None
            return info

    @property
    def revoked(self) -> set[str]:
        """A copy of the revoked tokens."""
        with self.lock:
            return set(self._revoked)

    @property
    def issued(self) -> list[str]:
        """A copy of the tokens issued since the start or the last :meth:`forget_issued`."""
        with self.lock:
            return list(self._issued)

    def forget_issued(self) -> None:
        """Clear the list of issued tokens (they stay valid)."""
        with self.lock:
            self._issued.clear()

    # -- the grant -------------------------------------------------------------------------

    def grant(self, call: TokenCall, rules: GrantRules) -> Reply:
        """Answer a ``client_credentials`` request as Genesys does: a token, or the error."""
        now = time.monotonic()
        client_id = call.client_id
        with self.lock:
            client = None if client_id is None else self._clients.get(client_id)
            refused = self._refusal(call, client, rules, now)
            if refused is not None:
                return refused
            assert client is not None and client_id is not None  # _refusal refused both
            ttl = rules.token_ttl if client.token_ttl is None else client.token_ttl
            scopes = granted_scopes(client.scopes, call.scope)
        token = self._mint(rules.token_format, client_id, ttl, scopes)
        with self.lock:
            self._tokens[token] = IssuedToken(client_id, now + ttl, scopes)
            self._issued.append(token)
        body = {"access_token": token, "token_type": "bearer", "expires_in": int(ttl)}
        return json_reply(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    @staticmethod
    def _refusal(
        call: TokenCall, client: _Client | None, rules: GrantRules, now: float
    ) -> Reply | None:
        """The error answer for this request, or None (then its creation is counted)."""
        status = rules.invalid_client_status
        if call.client_id is None or client is None:
            description = "authentication failed" if call.client_id is None else "client not found"
            return oauth_error(status, "invalid_client", description)
        if call.secret is None or not client.accepts(call.secret):
            return oauth_error(status, "invalid_client", "authentication failed")
        if not call.grant_type:
            return oauth_error(400, "invalid_request", "grant_type is required")
        if call.grant_type != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "unsupported grant type")
        if not client.grant_allowed:
            description = "client is not authorized to use this grant type"
            return oauth_error(400, "unauthorized_client", description)
        if rules.rate_limit is not None:
            window = client.creations
            while window and window[0] <= now - rules.rate_window:
                window.popleft()
            if len(window) >= rules.rate_limit:
                return oauth_error(400, "invalid_request", RATE_LIMIT_DESCRIPTION)
            window.append(now)
        return None

    def _mint(
        self, token_format: TokenFormat, client_id: str, ttl: float, scopes: tuple[str, ...]
    ) -> str:
        if token_format == "opaque":
            return secrets.token_urlsafe(96)
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self._issuer(),
            "sub": client_id,
            "client_id": client_id,
            "iat": int(now),
            "exp": int(now + ttl),
            "jti": str(uuid.uuid4()),
            "org_id": self._org_id,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return self._key.sign(claims)
