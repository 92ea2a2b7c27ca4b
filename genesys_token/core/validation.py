"""Turn a token answer into a :class:`Token`, checking JWT claims when the token is a JWT.

Real Genesys client-credentials tokens are opaque; they pass with their expiry taken from
``expires_in``. A JWT has its ``exp``, ``client_id`` and ``scope`` claims checked, and with a
``jwks_url`` its signature verified (keys cached by PyJWT's ``PyJWKClient``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jwt
import requests

from ..errors import TokenValidationError
from ..http.connections import json_of, shared_session
from ..http.token_endpoint import TokenResponse
from ..settings import Config
from ..token import Token

#: Asymmetric algorithms only: accepting HS256 with a public key as the secret is the
#: classic JWT key-confusion attack.
SIGNATURE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")

#: Seconds of clock skew tolerated on ``exp`` between us and the issuer.
EXP_LEEWAY = 5.0


def looks_like_jwt(access_token: str) -> bool:
    """Whether the string has the shape of a JWS compact token with a JSON header."""
    if access_token.count(".") != 2:
        return False
    try:
        header = jwt.get_unverified_header(access_token)
    except jwt.PyJWTError:
        return False
    return isinstance(header.get("alg"), str)


#: 9999-12-31T23:59:59Z: the largest ``exp`` taken for a time.
_MAX_EPOCH = 253_402_300_799


class TokenValidator:
    """Builds validated :class:`Token` objects for one manager."""

    def __init__(self, settings: Config) -> None:
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwks_url:
            self._jwks = _JWKClient(settings)

    def after_fork(self) -> None:
        """In a forked child: a new key client (PyJWT >= 2.10 holds a lock for the whole of a
        fetch; one copied held from a parent thread would hold every validation forever)."""
        if self._jwks is not None:
            self._jwks = _JWKClient(self._settings)

    def build(self, response: TokenResponse, client_id: str, *, now_wall: float) -> Token:
        """Validate a token answer and build the :class:`Token`.

        Args:
            response: The parsed answer of the token endpoint.
            client_id: The client id the token must belong to.
            now_wall: The current wall-clock time.

        Returns:
            The token; its lifetime is the smaller of ``expires_in`` and the JWT ``exp``.

        Raises:
            TokenValidationError: A JWT check failed.
        """
        lifetime = response.expires_in
        claims: dict[str, Any] | None = None
        scopes = tuple(response.scope.split()) if response.scope else ()
        if looks_like_jwt(response.access_token):
            claims = self._decode(response.access_token)
            self._check_claims(claims, client_id, now_wall)
            scopes = _claim_scopes(claims)
            if "exp" in claims:
                lifetime = min(lifetime, float(claims["exp"]) - response.sent_wall)
            if lifetime <= 0:
                raise TokenValidationError("JWT has expired (exp is not after the request)")
        elif self._jwks is not None:
            raise TokenValidationError(
                "jwks_url is set but the token is not a JWT, so its signature cannot be verified"
            )
        return Token.issued(
            response.access_token,
            token_type=response.token_type,
            lifetime=lifetime,
            sent_monotonic=response.sent_monotonic,
            sent_wall=response.sent_wall,
            scopes=scopes,
            claims=claims,
        )

    def check_claims(self, token: Token, client_id: str, *, now_wall: float) -> None:
        """Re-check a token loaded from a store against this manager's settings.

        Raises:
            TokenValidationError: A JWT check failed.
        """
        if token.claims is not None:
            self._check_claims(token.claims, client_id, now_wall)

    def _decode(self, access_token: str) -> dict[str, Any]:
        options: Any = {"verify_aud": False, "verify_exp": False, "require": []}
        try:
            if self._jwks is None:
                options["verify_signature"] = False
                return dict(jwt.decode(access_token, options=options))
            key = self._jwks.get_signing_key_from_jwt(access_token)
            return dict(
                jwt.decode(
                    access_token,
                    key.key,
                    algorithms=list(SIGNATURE_ALGORITHMS),
                    options=options,
                )
            )
        except jwt.PyJWKClientError as exc:
            raise TokenValidationError(
                f"could not get the signing key from jwks_url: {type(exc).__name__}"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenValidationError("JWT signature does not verify against jwks_url") from None
        except jwt.PyJWTError as exc:
            raise TokenValidationError(f"JWT could not be decoded: {type(exc).__name__}") from None

    def _check_claims(self, claims: dict[str, Any], client_id: str, now_wall: float) -> None:
        exp = claims.get("exp")
        if exp is not None:
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                raise TokenValidationError("JWT exp claim is not a number")
            # A 400-digit exp overflowed float() below (an untyped OverflowError); a year
            # past 9999 is no expiry a token endpoint means.
            if not (isinstance(exp, int) or math.isfinite(exp)) or abs(exp) > _MAX_EPOCH:
                raise TokenValidationError("JWT exp claim is out of range")
            if exp <= now_wall - EXP_LEEWAY:
                raise TokenValidationError("JWT has expired (exp is in the past)")
        claimed_client = claims.get("client_id")
        if claimed_client is not None and claimed_client != client_id:
            raise TokenValidationError(
                "JWT client_id claim does not match the configured client id"
            )
        granted = set(_claim_scopes(claims))
        missing = [scope for scope in self._settings.scopes if scope not in granted]
        if missing:
            raise TokenValidationError(f"JWT lacks configured scope(s): {', '.join(missing)}")


def _claim_scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    """The scopes of a JWT, exactly as listed: a space-separated string or a list."""
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


#: The largest JWK set read (Genesys publishes a few keys: a few KiB).
JWKS_LIMIT = 1 << 20


class _JWKClient(jwt.PyJWKClient):
    """PyJWT's key client, fetching through the shared pool under the per-attempt watchdog:
    urllib's read timeout bounds each read, not a key set trickled a byte at a time, and a
    JWKS fetch holds the acquisition that waits for it."""

    def __init__(self, settings: Config) -> None:
        assert settings.jwks_url is not None
        super().__init__(settings.jwks_url, cache_keys=True)
        self._settings = settings

    def fetch_data(self) -> Any:
        settings = self._settings
        try:
            jwk_set = json_of(
                shared_session(),
                self.uri,
                timeout=settings.timeout,
                verify=settings.verify,
                limit=JWKS_LIMIT,
                proxies=settings.proxies,
                cert=settings.cert,
            )
        except (requests.RequestException, ValueError) as exc:
            # The type only: messages of connection errors repeat the URL.
            raise jwt.PyJWKClientConnectionError(
                f"could not fetch the JWK set ({type(exc).__name__})"
            ) from None
        if not isinstance(jwk_set, dict):
            raise jwt.PyJWKClientError("the JWKS endpoint did not answer a JSON object")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(jwk_set)
        if hasattr(self, "_last_successful_fetch"):  # PyJWT >= 2.10: its refetch cool-down
            self._last_successful_fetch = time.monotonic()
        return jwk_set
