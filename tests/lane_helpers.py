"""Shared bits of the tokens=N tests: every lane's token fetched, and which tokens paced
callers with no room gave up on."""

from __future__ import annotations

import pytest

from genesys_token import TokenManager
from genesys_token.core.port import AdapterPort
from genesys_token.errors import ApiRateLimitedError


def fetch_every_token(manager: TokenManager) -> list[str]:
    """Each lane's token, lane 0 first, fetched now if need be (a turn whose lane has no
    token yet is served by another lane's while its own is fetched in the background)."""
    return [lane.refresher.slow(None).access_token for lane in manager._lanes.all]


def given_up_on(port: AdapterPort, callers: int) -> list[str]:
    """The token fingerprint each of ``callers`` paced callers, one after another, waited on
    and gave up on (every call must raise :class:`ApiRateLimitedError`: no room anywhere)."""
    fingerprints: list[str] = []
    for _ in range(callers):
        with pytest.raises(ApiRateLimitedError) as caught:
            port.begin_use()
        fingerprints.append(caught.value.token_fingerprint)
    return fingerprints
