"""Test your own application against a local Genesys Cloud OAuth emulator.

:class:`GenesysEmulator` is a real HTTP(S) server on 127.0.0.1 that behaves like the Genesys
Cloud login host (``POST /oauth/token``, client-credentials grant, Basic authentication,
lower-case ``bearer``, ``description`` + ``error_description`` on errors, the token
rate-limit answer being an HTTP 400) and like a sliver of the API host
(``/api/v2/tokens/me``, ``/api/v2/organizations/me``, Genesys-style 401/404/429 bodies).
Point your code at ``emulator.token_url`` / ``emulator.api_base_url`` and assert on what it
did::

    from genesys_token.testing import Fault, GenesysEmulator

    def test_my_app_reuses_its_token():
        with GenesysEmulator(token_ttl=3600) as emulator:
            app = MyApp(
                client_id=emulator.client_id,
                client_secret=emulator.client_secret,
                token_url=emulator.token_url,
                api_url=emulator.api_base_url,
            )
            emulator.inject(Fault.rate_limited_token())  # the next token request fails
            app.call_api()
            app.call_api()
            assert emulator.token_requests == 2  # one rate-limited, one granted
            assert emulator.api_requests == 2

API faults: ``emulator.throttle_api(times=2, retry_after=1)`` answers the next two API calls
with Genesys' 429 (``Retry-After: 1``, code ``too.many.requests.retry.after``);
``emulator.inject(Fault.server_error(503), path="/api/v2/users")`` any other fault on one
path; ``emulator.reject_all_tokens = True`` makes the API answer every token with 401
``bad.credentials`` (a storm of 401s, as from a wrong region).
``GenesysEmulator(api_rate_limit=(300, 60.0))`` enforces Genesys' per-token API limit over
a sliding window (429, ``Retry-After``, Genesys' body; ``emulator.api_429s`` counts them per
token), so you can test your own pacing.

With pytest, the ``genesys_emulator`` fixture (installed with the package) gives a started
emulator per test and stops it afterwards; configure it with a marker::

    @pytest.mark.genesys_emulator(token_format="jwt", token_ttl=300)
    def test_with_jwts(genesys_emulator):
        ...

Without pytest, ``python -m genesys_token.testing`` runs a standalone emulator and prints
the environment variables to export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genesys_token.testing.emulator import (
        ApiRequestRecord,
        Fault,
        GenesysEmulator,
        TokenRequestRecord,
    )

__all__ = ["ApiRequestRecord", "Fault", "GenesysEmulator", "TokenRequestRecord"]


def __getattr__(name: str) -> Any:
    # Lazy, so that loading the pytest plugin (a submodule) does not import the emulator.
    if name in __all__:
        from genesys_token.testing import emulator

        return getattr(emulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
