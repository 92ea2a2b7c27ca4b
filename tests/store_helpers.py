"""Shared bits of the store tests: a key, tokens on the real clocks, and a loader."""

from __future__ import annotations

import time

from genesys_token import Token
from genesys_token.stores import TokenStore, store_key

KEY = store_key("client-a", "https://login.example/oauth/token", ())


def make_token(value: str = "tok-one", lifetime: float = 3600.0) -> Token:
    """A token issued now on the real clocks."""
    return Token.issued(
        value,
        token_type="bearer",
        lifetime=lifetime,
        sent_monotonic=time.monotonic(),
        sent_wall=time.time(),
    )


def load(store: TokenStore, key: str = KEY) -> Token | None:
    """Load ``key`` now."""
    return store.load(key, now_monotonic=time.monotonic(), now_wall=time.time())
