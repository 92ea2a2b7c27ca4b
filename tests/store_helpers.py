"""Shared bits of the store tests: a key, a secret, tokens on the real clocks, a loader."""

from __future__ import annotations

import time

from genesys_token import Token
from genesys_token.stores import TokenStore, store_key
from genesys_token.stores._seal import Sealer

KEY = store_key("client-a", "https://login.example/oauth/token", ())
#: The client secret entries are sealed with in these tests.
SECRET = "secret-of-client-a"


def sealer(key: str = KEY, secret: str = SECRET) -> Sealer:
    """The sealer a manager holding ``secret`` would pass for ``key``."""
    return Sealer(secret, key)


def make_token(value: str = "tok-one", lifetime: float = 3600.0) -> Token:
    """A token issued now on the real clocks."""
    return Token.issued(
        value,
        token_type="bearer",
        lifetime=lifetime,
        sent_monotonic=time.monotonic(),
        sent_wall=time.time(),
    )


def load(store: TokenStore, key: str = KEY, *, secret: str = SECRET) -> Token | None:
    """Load ``key`` now, as a holder of ``secret``."""
    return store.load(
        key, now_monotonic=time.monotonic(), now_wall=time.time(), sealer=sealer(key, secret)
    )


def save(store: TokenStore, token: Token, key: str = KEY, *, secret: str = SECRET) -> None:
    """Save ``token`` under ``key``, as a holder of ``secret``."""
    store.save(key, token, sealer=sealer(key, secret))
