"""The Token value object and the expiry maths."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .core.clock import elapsed
from .settings import MAX_TOKEN_LIFETIME

#: Share of a token's lifetime kept in reserve however large ``refresh_buffer`` is: a
#: 5-minute buffer on a 5-minute token would otherwise refresh continuously.
MAX_BUFFER_SHARE = 0.25
#: Share of a lifetime that jitter may take, for the same reason.
MAX_JITTER_SHARE = 0.10


#: Wall clocks of machines sharing a store differ; this much is tolerated on a lifetime.
STORE_CLOCK_SKEW = 300.0
#: A stored token issued further in the future than this was written by a clock that has
#: since stepped back (or by a liar): its wall-clock expiry cannot be trusted.
FUTURE_ISSUE_SKEW = 120.0


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fingerprint_of(access_token: str) -> str:
    """A short, stable, non-reversible name for a token, safe to log and compare."""
    return hashlib.sha256(access_token.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, eq=False, repr=False)
class Token:
    """An access token and what we know about it.

    ``repr()`` and ``str()`` show the fingerprint, never the token.

    Attributes:
        access_token: The bearer token itself.
        token_type: As the service sent it (Genesys sends ``"bearer"``).
        expires_in: Lifetime in seconds, as granted.
        expires_at: Wall-clock expiry (epoch seconds), for display and shared stores.
        scopes: Scopes the token carries (from a JWT ``scope`` claim), else those granted.
        claims: Decoded JWT claims, or ``None`` for an opaque token.
        obtained_at: Wall-clock time the token request was sent.
        source: ``"network"`` or the store it came from (``"store"``).
    """

    access_token: str
    token_type: str
    expires_in: float
    expires_at: float
    scopes: tuple[str, ...] = ()
    claims: dict[str, Any] | None = None
    obtained_at: float = 0.0
    source: str = "network"
    #: Expiry on the manager's clock (:data:`genesys_token.core.clock.elapsed`, which counts
    #: suspend); this, not ``expires_at``, decides validity in-process, so a wall-clock jump
    #: cannot make a dead token look alive or a live one dead.
    monotonic_expiry: float = field(default=0.0)
    fingerprint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint_of(self.access_token))

    @classmethod
    def issued(
        cls,
        access_token: str,
        *,
        token_type: str,
        lifetime: float,
        sent_monotonic: float,
        sent_wall: float,
        scopes: tuple[str, ...] = (),
        claims: dict[str, Any] | None = None,
        source: str = "network",
    ) -> Token:
        """Build a token whose lifetime is counted from when its request was sent.

        Counting from the send (not the answer) errs on the safe side by the round trip.
        """
        return cls(
            access_token=access_token,
            token_type=token_type,
            expires_in=lifetime,
            expires_at=sent_wall + lifetime,
            scopes=scopes,
            claims=claims,
            obtained_at=sent_wall,
            source=source,
            monotonic_expiry=sent_monotonic + lifetime,
        )

    @property
    def is_jwt(self) -> bool:
        """Whether the token is a JWT (its claims were decoded)."""
        return self.claims is not None

    def remaining(self, now: float | None = None) -> float:
        """Seconds until expiry on the SDK's clock (negative once expired)."""
        return self.monotonic_expiry - (elapsed() if now is None else now)

    def is_expired(self, now: float | None = None) -> bool:
        """Whether the token has expired (the SDK's clock)."""
        return self.remaining(now) <= 0

    def expires_at_iso(self) -> str:
        """Wall-clock expiry as ISO 8601 UTC, for display."""
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc).isoformat()

    def to_dict(self) -> dict[str, Any]:
        """The token as JSON-ready data for a shared store (wall-clock times only)."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "expires_at": self.expires_at,
            "obtained_at": self.obtained_at,
            "scopes": list(self.scopes),
            "claims": self.claims,
        }

    @classmethod
    def from_dict(
        cls, data: Any, *, now_monotonic: float, now_wall: float, source: str = "store"
    ) -> Token:
        """Rebuild a token saved by :meth:`to_dict`, possibly by another process.

        The in-process expiry is derived from the wall-clock expiry *now* (monotonic clocks
        are not comparable between processes or machines), and never trusted further than
        the entry itself allows: the remaining life is capped by ``expires_in``, and an entry
        issued in the future (beyond :data:`FUTURE_ISSUE_SKEW`) is refused, so a wall clock
        that steps back cannot revive an expired token.

        Raises:
            ValueError: The data is not a token saved by :meth:`to_dict`.
        """
        if not isinstance(data, dict):
            raise ValueError("stored token is not an object")
        access_token = data.get("access_token")
        token_type = data.get("token_type")
        scopes = data.get("scopes", [])
        claims = data.get("claims")
        numbers = [data.get(key) for key in ("expires_in", "expires_at", "obtained_at")]
        if (
            not isinstance(access_token, str)
            or not access_token
            or not isinstance(token_type, str)
            or not all(_is_real(n) for n in numbers)
            or not isinstance(scopes, list)
            or not all(isinstance(item, str) for item in scopes)
            or not (claims is None or isinstance(claims, dict))
        ):
            raise ValueError("stored token has missing or mistyped fields")
        expires_in, expires_at, obtained_at = (float(n) for n in numbers)  # type: ignore[arg-type]
        # Beyond Genesys' 48 h (plus clock skew between machines): not a genuine token.
        if expires_at - now_wall > MAX_TOKEN_LIFETIME + STORE_CLOCK_SKEW:
            raise ValueError("stored token claims an impossible lifetime")
        if obtained_at - now_wall > FUTURE_ISSUE_SKEW:
            raise ValueError("stored token was issued in the future (a clock stepped back)")
        remaining = min(expires_at - now_wall, expires_in)
        return cls(
            access_token=access_token,
            token_type=token_type,
            expires_in=expires_in,
            expires_at=expires_at,
            scopes=tuple(scopes),
            claims=claims,
            obtained_at=obtained_at,
            source=source,
            monotonic_expiry=now_monotonic + remaining,
        )

    def __repr__(self) -> str:
        return (
            f"Token(fingerprint={self.fingerprint!r}, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at_iso()!r}, is_jwt={self.is_jwt}, source={self.source!r})"
        )

    __str__ = __repr__


def refresh_lead(lifetime: float, buffer: float, jitter: float, draw: float) -> float:
    """Seconds before expiry at which to refresh (the timing rule of ARCHITECTURE.md).

    ``lead = min(buffer, 25% of lifetime) + draw * min(jitter, 10% of lifetime)``.

    Args:
        lifetime: The token's granted lifetime in seconds.
        buffer: ``refresh_buffer``.
        jitter: ``refresh_jitter``.
        draw: A uniform random number in [0, 1).

    Returns:
        The lead in seconds, always less than ``lifetime``.
    """
    lifetime = max(lifetime, 0.0)
    return min(buffer, MAX_BUFFER_SHARE * lifetime) + draw * min(
        jitter, MAX_JITTER_SHARE * lifetime
    )
