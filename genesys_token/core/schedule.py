"""The current token and its schedule: when to refresh it, until when to hand it out.

Pure maths on one immutable value. The manager replaces its :class:`Cell` whole (one
reference store), which is what lets ``get_token()`` read it without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..token import Token, refresh_lead

__all__ = ["HANDOUT_MARGIN_MAX", "HANDOUT_MARGIN_SHARE", "Cell", "handout_margin", "plan"]

#: A token is not handed out in its last moments: a call made with it must still arrive in
#: time. 5% of the lifetime, at most 10 s (2-second test tokens keep 0.1 s).
HANDOUT_MARGIN_SHARE = 0.05
HANDOUT_MARGIN_MAX = 10.0

_NEVER = float("-inf")


@dataclass(frozen=True, slots=True, repr=False)
class Cell:
    """The token in use and its schedule; replaced whole, never mutated. Its ``repr`` shows
    the token's fingerprint, never the token.

    Attributes:
        token: The token.
        access_token: ``token.access_token``, one attribute hop less on the hot path.
        refresh_at: From then on (manager clock) a refresh is due.
        usable_until: From then on the token is not handed out.
        generation: The acquisition that installed it (see ``_flight.FetchedAfter``).
        installed_at: When it was installed (manager clock).
        replaced: The token this cell replaced when it was installed (a rotation retires
            exactly that one).
        network: Whether its acquisition got it from the token endpoint (not a store).
    """

    token: Token
    access_token: str
    refresh_at: float
    usable_until: float
    generation: int
    installed_at: float
    replaced: Token | None = None
    network: bool = True

    def __repr__(self) -> str:
        return (
            f"Cell(token={self.token!r}, refresh_at={self.refresh_at!r}, "
            f"usable_until={self.usable_until!r}, generation={self.generation!r}, "
            f"network={self.network!r})"
        )

    def usable(self, now: float) -> bool:
        """Whether the token may be handed out at ``now``."""
        return now < self.usable_until

    def fresh(self, now: float) -> bool:
        """Whether the token is usable and not yet due for refresh at ``now``."""
        return now < self.refresh_at and now < self.usable_until

    def replacing(self, previous: Cell | None) -> Cell:
        """This cell as installed over ``previous``."""
        return replace(self, replaced=previous.token if previous is not None else None)

    def from_store(self) -> Cell:
        """This cell, marked as taken from a store."""
        return replace(self, network=False)

    def parked(self) -> Cell:
        """A copy whose refresh is due at once: the hot path then takes the slow path once
        (after a fork, or once closed) without a check of its own."""
        return replace(self, refresh_at=_NEVER)


def handout_margin(lifetime: float) -> float:
    """Seconds before expiry from which a token is no longer handed out."""
    return min(HANDOUT_MARGIN_MAX, HANDOUT_MARGIN_SHARE * max(lifetime, 0.0))


def plan(
    token: Token,
    *,
    refresh_buffer: float,
    refresh_jitter: float,
    draw: float,
    generation: int,
    now: float,
) -> Cell:
    """Schedule ``token`` (the timing rule of ARCHITECTURE.md).

    Args:
        token: The token; ``monotonic_expiry`` is on the manager's clock.
        refresh_buffer: The ``refresh_buffer`` setting.
        refresh_jitter: The ``refresh_jitter`` setting.
        draw: A uniform random number in [0, 1).
        generation: The acquisition installing it.
        now: The manager clock now.

    Returns:
        The cell; its refresh point is never later than its usable-until, so a buffer
        smaller than the hand-out margin cannot leave a token nobody refreshes.
    """
    expiry = token.monotonic_expiry
    usable_until = expiry - handout_margin(token.expires_in)
    lead = refresh_lead(token.expires_in, refresh_buffer, refresh_jitter, draw)
    return Cell(
        token=token,
        access_token=token.access_token,
        refresh_at=min(expiry - lead, usable_until),
        usable_until=usable_until,
        generation=generation,
        installed_at=now,
    )
