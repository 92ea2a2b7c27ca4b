"""The token managers compared, behind one small interface.

Each peer is set up the way its documentation suggests, with its early-refresh window set
to the same share of the token's life where the scenario uses short tokens, so that no peer
is handicapped by a default meant for day-long tokens (authlib's ``leeway=60`` or
requests-auth's ``early_expiry=30`` would refresh on every call with 2-second tokens).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter

#: Every session gets a pool big enough for the benchmark's threads: the default 10 would
#: make all peers open and drop connections, which measures urllib3, not token managers.
POOL_SIZE = 64
#: Seconds per API call; the local server answers in about a millisecond.
CALL_TIMEOUT = 10.0
#: The tutorial's scopes; the seed port rejects a token without a ``scope`` claim.
SEED_SCOPES = ["analytics:report:read", "user:loginname:view", "presence:user:view"]

# authlib refuses plain http unless told; every server here is on loopback.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")


@dataclass(frozen=True)
class Target:
    """Where the peers get tokens and what they call."""

    token_url: str
    api_url: str
    client_id: str
    client_secret: str
    #: Seconds before expiry a peer should refresh; None keeps each library's default.
    early: float | None = None


class Peer(Protocol):
    """What a scenario needs from a token manager."""

    name: str

    def get_token(self) -> str: ...

    def call(self, url: str) -> int: ...

    def rotate(self) -> None: ...

    def close(self) -> None: ...


def pooled_session() -> requests.Session:
    """A session whose pool fits every benchmark thread."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    return session


class _PerThread:
    """One ``requests.Session`` per thread (sessions are not documented as thread-safe)."""

    def __init__(self, setup: Callable[[requests.Session], None]) -> None:
        self._local = threading.local()
        self._setup = setup
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = pooled_session()
            self._setup(session)
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


class GenesysTokenPeer:
    """genesys-token: a TokenManager and GenesysAuth on each thread's session."""

    name = "genesys-token"

    def __init__(self, target: Target, **options: Any) -> None:
        from genesys_token import GenesysAuth, TokenManager

        self.manager = TokenManager(
            target.client_id,
            target.client_secret,
            token_url=target.token_url,
            api_base_url=target.api_url,
            **options,
        )
        auth = GenesysAuth(self.manager)
        self._sessions = _PerThread(lambda s: setattr(s, "auth", auth))

    def get_token(self) -> str:
        return self.manager.get_token()

    def call(self, url: str) -> int:
        return self._sessions.get().get(url, timeout=CALL_TIMEOUT).status_code

    def rotate(self) -> None:
        self.manager.rotate()

    def close(self) -> None:
        self.manager.close()
        self._sessions.close()


class AuthlibPeer:
    """authlib: one shared OAuth2Session; ``fetch_token`` when missing or expired."""

    name = "authlib"

    def __init__(self, target: Target) -> None:
        from authlib.integrations.requests_client import OAuth2Session

        self.leeway = 60.0 if target.early is None else target.early
        self.token_url = target.token_url
        # token_endpoint + grant_type also let authlib itself re-fetch an expired token
        # inside a request: the most forgiving set-up it offers.
        self.session = OAuth2Session(
            target.client_id,
            target.client_secret,
            token_endpoint=target.token_url,
            grant_type="client_credentials",
            leeway=self.leeway,
        )
        self.session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE))

    def get_token(self) -> str:
        token = self.session.token
        if not token or token.is_expired(leeway=self.leeway):
            self.session.fetch_token(self.token_url, grant_type="client_credentials")
        return str(self.session.token["access_token"])

    def call(self, url: str) -> int:
        self.get_token()
        return int(self.session.get(url, timeout=CALL_TIMEOUT).status_code)

    def rotate(self) -> None:
        """No rotation: its normal refresh as the token expires is all it does."""

    def close(self) -> None:
        self.session.close()


class RequestsAuthPeer:
    """requests-auth: one shared OAuth2ClientCredentials on each thread's session."""

    name = "requests-auth"

    def __init__(self, target: Target) -> None:
        from requests_auth import OAuth2, OAuth2ClientCredentials

        OAuth2.token_cache.clear()  # type: ignore[no-untyped-call]  # a process-wide cache: start each run empty
        self._cache = OAuth2.token_cache
        kwargs = {} if target.early is None else {"early_expiry": target.early}
        self.auth = OAuth2ClientCredentials(
            target.token_url, target.client_id, target.client_secret, **kwargs
        )
        self._sessions = _PerThread(lambda s: setattr(s, "auth", self.auth))

    def get_token(self) -> str:
        auth = self.auth
        return str(
            self._cache.get_token(
                key=auth.state,
                early_expiry=auth.early_expiry,
                on_missing_token=auth.request_new_token,
            )
        )

    def call(self, url: str) -> int:
        return self._sessions.get().get(url, timeout=CALL_TIMEOUT).status_code

    def rotate(self) -> None:
        """No rotation: its normal refresh as the token expires is all it does."""

    def close(self) -> None:
        self._sessions.close()
        self.auth.session.close()
        self._cache.clear()  # type: ignore[no-untyped-call]


class SeedPortPeer:
    """The tutorial's design (benchmarks/seed_port.py), used as the tutorial shows."""

    name = "seed port"

    def __init__(self, target: Target) -> None:
        from seed_port import GenesysTokenManager

        early_ms = 300_000.0 if target.early is None else target.early * 1000
        self.manager = GenesysTokenManager(
            {
                "client_id": target.client_id,
                "client_secret": target.client_secret,
                "scopes": SEED_SCOPES,
                "webhook_url": "",
                "refresh_buffer_ms": early_ms,
                "jitter_max_ms": early_ms * 0.4,
                "token_endpoint": target.token_url,
            }
        )
        self._sessions = _PerThread(lambda s: None)

    def get_token(self) -> str:
        return self.manager.get_token()

    def call(self, url: str) -> int:
        token = self.manager.get_token()
        self.manager.track_request_start()
        try:
            headers = {"Authorization": f"Bearer {token}"}
            return self._sessions.get().get(url, headers=headers, timeout=CALL_TIMEOUT).status_code
        finally:
            self.manager.track_request_end()

    def rotate(self) -> None:
        self.manager.drain_connections()

    def close(self) -> None:
        self.manager.close()
        self._sessions.close()


def make_peer(name: str, target: Target) -> Peer:
    """A fresh, token-less client of the named peer."""
    factories: dict[str, Callable[[Target], Peer]] = {
        "genesys-token": GenesysTokenPeer,
        "authlib": AuthlibPeer,
        "requests-auth": RequestsAuthPeer,
        "seed port": SeedPortPeer,
    }
    return factories[name](target)
