"""Token value object, its stored form, and JWT claim checks."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from conftest import (
    MakeManager,
    TricklingServer,
    in_background,
    in_child,
    join_fetch_threads,
)
from cryptography.hazmat.primitives.asymmetric import rsa

from genesys_token import ManagerClosedError, Token, TokenManager, TokenValidationError
from genesys_token.core.validation import TokenValidator, looks_like_jwt
from genesys_token.http.token_endpoint import TokenResponse
from genesys_token.settings import Config
from genesys_token.stores import MemoryStore
from genesys_token.stores.base import decode_token, encode_token
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.token import fingerprint_of, refresh_lead

NOW = 1_800_000_000.0
GZIP = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwt(claims: dict[str, Any], key: Any = KEY, kid: str = "k1") -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _response(token: str, expires_in: float = 3600, scope: str | None = None) -> TokenResponse:
    return TokenResponse(token, "bearer", expires_in, scope, 500.0, NOW)


def _validator(**options: Any) -> TokenValidator:
    return TokenValidator(Config.build("client-1", "secret", **options))


def test_opaque_tokens_pass_with_expiry_from_expires_in():
    token = _validator(scopes=["a:b"]).build(
        _response("opaque-abc", 3600), "client-1", now_wall=NOW
    )
    assert token.claims is None and not token.is_jwt
    assert token.monotonic_expiry == 500.0 + 3600
    assert token.expires_at == NOW + 3600
    assert token.scopes == ()


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": NOW - 60, "client_id": "client-1"}, "expired"),
        ({"exp": "soon", "client_id": "client-1"}, "not a number"),
        ({"exp": 10**400, "client_id": "client-1"}, "out of range"),  # was OverflowError
        ({"exp": 10**12, "client_id": "client-1"}, "out of range"),
        ({"exp": NOW + 60, "client_id": "someone-else"}, "client_id"),
    ],
)
def test_bad_jwt_claims_are_rejected(claims: dict[str, Any], message: str):
    with pytest.raises(TokenValidationError, match=message):
        _validator().build(_response(_jwt(claims)), "client-1", now_wall=NOW)


def test_jwt_lifetime_is_the_shorter_of_exp_and_expires_in():
    token = _validator().build(
        _response(_jwt({"exp": NOW + 100, "client_id": "client-1"}), expires_in=3600),
        "client-1",
        now_wall=NOW,
    )
    assert token.is_jwt
    assert token.expires_in == pytest.approx(100)
    assert token.claims is not None and token.claims["client_id"] == "client-1"


@pytest.mark.parametrize(
    ("granted", "ok"),
    [
        ("analytics:report:read users:read", True),
        ("analytics:report:read-extra users:read", False),
        ("users:read", False),
        (None, False),
        (["analytics:report:read", "users:read"], True),
    ],
)
def test_scopes_match_exactly(granted: Any, ok: bool):
    claims: dict[str, Any] = {"exp": NOW + 600}
    if granted is not None:
        claims["scope"] = granted
    validator = _validator(scopes=["analytics:report:read", "users:read"])
    if ok:
        token = validator.build(_response(_jwt(claims)), "client-1", now_wall=NOW)
        assert "analytics:report:read" in token.scopes
    else:
        with pytest.raises(TokenValidationError, match="analytics:report:read"):
            validator.build(_response(_jwt(claims)), "client-1", now_wall=NOW)


def test_signature_verified_against_the_emulator_jwks(emulator: GenesysEmulator, make_manager):
    emulator.token_format = "jwt"
    manager = make_manager(jwks_url=emulator.jwks_url)
    token = manager.refresh()
    assert token.is_jwt
    assert token.claims is not None and token.claims["client_id"] == emulator.client_id
    validator = TokenValidator(manager._config)
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = jwt.get_unverified_header(token.access_token)["kid"]
    forged = _jwt({"exp": time.time() + 600, "client_id": emulator.client_id}, forged_key, kid)
    with pytest.raises(TokenValidationError, match="signature"):
        validator.build(
            TokenResponse(forged, "bearer", 600, None, time.monotonic(), time.time()),
            emulator.client_id,
            now_wall=time.time(),
        )


def test_jwks_configured_but_token_opaque_is_rejected(emulator: GenesysEmulator):
    validator = TokenValidator(
        Config.build("c", "s", token_url=emulator.token_url, jwks_url=emulator.jwks_url)
    )
    with pytest.raises(TokenValidationError, match="not a JWT"):
        validator.build(_response("opaque"), "c", now_wall=NOW)


def test_unreachable_jwks_is_a_validation_error():
    validator = _validator(jwks_url="http://127.0.0.1:9/jwks", timeout=1)
    token = _jwt({"exp": NOW + 600})
    with pytest.raises(TokenValidationError, match="signing key"):
        validator.build(_response(token), "client-1", now_wall=NOW)


@pytest.fixture
def trickling_jwks(
    emulator: GenesysEmulator, make_manager: MakeManager
) -> Iterator[tuple[TokenManager, TricklingServer]]:
    """A manager of JWT tokens whose JWKS host sends its answer a byte every 50 ms: no read
    timeout fires; the watchdog cuts each attempt at 0.2 + 2 x 0.3 + 1 = 1.8 s."""
    emulator.token_format = "jwt"
    jwks = TricklingServer(gap=0.05)
    try:
        url = f"http://127.0.0.1:{jwks.port}/jwks"
        yield make_manager(jwks_url=url, timeout=(0.2, 0.3), max_retries=0), jwks
    finally:
        jwks.stop()


def test_a_jwks_host_that_trickles_its_answer_cannot_hold_the_acquisition(
    trickling_jwks: tuple[TokenManager, TricklingServer],
):
    # urllib's read timeout never fired: the fetch held the flight as long as the host trickled.
    manager, _ = trickling_jwks
    started = time.monotonic()
    with pytest.raises(TokenValidationError, match="signing key"):
        manager.refresh()
    assert time.monotonic() - started < 4.0


def test_jwks_answers_that_are_not_a_key_set_are_validation_errors(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    emulator.token_format = "jwt"
    for fault, error in (
        (Fault(status=302, headers={"Location": emulator.jwks_url}), "ConnectionError"),
        (Fault(status=200, body=b"[1, 2]"), "Error"),
        (Fault(status=200, body=b"{not json"), "ConnectionError"),
        (Fault(status=200, body={"keys": [], "pad": "x" * (1 << 20)}), "ConnectionError"),
        # Compressed (identity was asked): 1.26 would inflate a bomb past the cap in one read.
        (Fault(status=200, body=gzip.compress(b'{"keys": []}'), headers=GZIP), "ConnectionError"),
        (Fault(status=200, body=b"[" * 200_000), "ConnectionError"),  # nested too deep
    ):
        emulator.inject(fault, path="/api/v2/not-a-key-set")
        # A manager each: one in its failure backoff would not ask again.
        manager = make_manager(jwks_url=emulator.api_base_url + "/api/v2/not-a-key-set")
        # ConnectionError: not fetched (no redirect followed, not JSON, past the 1 MiB cap).
        with pytest.raises(TokenValidationError, match=f"from jwks_url: PyJWKClient{error}$"):
            manager.refresh()


class _SaveCounter(MemoryStore):
    saves = 0

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.saves += 1
        super().save(*args, **kwargs)


def test_close_abandons_a_jwks_fetch_that_ends_by_its_deadline_and_saves_nothing(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    # close() releases the callers at once; the JWKS fetch of the token's validation ends by
    # its own deadline (0.3 + 2 x 0.3 + 1 = 1.9 s), and the token is never saved.
    emulator.token_format = "jwt"
    jwks = TricklingServer(gap=0.05)
    store = _SaveCounter()
    try:
        manager = make_manager(
            jwks_url=f"http://127.0.0.1:{jwks.port}/jwks", store=store, timeout=(0.3, 0.3)
        )
        caller, got = in_background(manager.get_token)
        assert jwks.accepted.wait(5)
        manager.close()
        caller.join(5)
        assert isinstance(got[0], ManagerClosedError)
        join_fetch_threads(timeout=3.0)  # by its deadline, not the 24 s of default timeouts
        assert not [t for t in threading.enumerate() if t.name.startswith("genesys-token-fetch")]
        assert store.saves == 0
    finally:
        jwks.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_child_forked_during_a_jwks_fetch_validates_with_its_own_key_client(
    trickling_jwks: tuple[TokenManager, TricklingServer],
):
    # PyJWT >= 2.10 holds its client's lock for a whole fetch: copied held into a child, it
    # held every validation of the child's manager forever (TokenTimeoutError at each call).
    manager, jwks = trickling_jwks
    caller, _ = in_background(manager.get_token)
    assert jwks.accepted.wait(5)  # the parent's fetch is in progress

    def child() -> dict[str, Any]:
        try:
            manager.get_token(timeout=6)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            return {"error": type(exc).__name__}
        return {"error": None}

    # Its own fetch, cut by the watchdog at 1.8 s: not stuck on the parent's lock.
    assert in_child(child) == {"error": "TokenValidationError"}
    caller.join(5)


def test_garbage_with_two_dots_is_treated_as_opaque():
    assert not looks_like_jwt("abc.def.ghi")
    assert not looks_like_jwt("opaque")
    assert looks_like_jwt(_jwt({"exp": 1}))


def test_token_repr_and_str_never_show_the_token():
    token = Token.issued(
        "super-secret-token-value",
        token_type="bearer",
        lifetime=60,
        sent_monotonic=10,
        sent_wall=NOW,
    )
    for text in (repr(token), str(token), f"{token}"):
        assert "super-secret-token-value" not in text
        assert token.fingerprint in text
    assert token.fingerprint == fingerprint_of("super-secret-token-value")
    assert len(token.fingerprint) == 12
    assert token.remaining(now=20) == 50
    assert not token.is_expired(now=69.9)
    assert token.is_expired(now=70)
    assert token.expires_at_iso().endswith("+00:00")


def test_token_round_trips_through_a_store_dict():
    token = Token.issued(
        "t", token_type="bearer", lifetime=60, sent_monotonic=10, sent_wall=NOW, scopes=("a",)
    )
    again = Token.from_dict(token.to_dict(), now_monotonic=100, now_wall=NOW + 30)
    assert again.access_token == "t"
    assert again.source == "store"
    assert again.scopes == ("a",)
    assert again.monotonic_expiry == pytest.approx(130)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {
            "access_token": "t",
            "token_type": "bearer",
            "expires_in": "60",
            "expires_at": 1,
            "obtained_at": 1,
        },
        {
            "access_token": "t",
            "token_type": "bearer",
            "expires_in": 60,
            "expires_at": 1,
            "obtained_at": 1,
            "scopes": "a",
        },
        {
            "access_token": "",
            "token_type": "bearer",
            "expires_in": 60,
            "expires_at": 1,
            "obtained_at": 1,
        },
        {
            "access_token": "t",
            "token_type": "bearer",
            "expires_in": True,
            "expires_at": 1,
            "obtained_at": 1,
        },
    ],
)
def test_foreign_store_data_is_rejected(data: Any):
    with pytest.raises(ValueError):
        Token.from_dict(data, now_monotonic=0, now_wall=0)


@pytest.mark.parametrize(
    ("lifetime", "buffer", "jitter", "draw", "lead"),
    [
        (86400, 300, 60, 0.0, 300),
        (86400, 300, 60, 1.0, 360),
        (2, 300, 60, 0.0, 0.5),
        (2, 300, 60, 1.0, 0.7),
        (1000, 0, 0, 0.7, 0),
        (-5, 300, 60, 1.0, 0),
    ],
)
def test_refresh_lead_follows_the_timing_rule(
    lifetime: float, buffer: float, jitter: float, draw: float, lead: float
):
    assert refresh_lead(lifetime, buffer, jitter, draw) == pytest.approx(lead)


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,
        json.dumps({"format": "genesys-token/1", "token": {"access_token": "t"}}),
        '{"format": "genesys-token/1", "token": {"access_token": "t", "token_type": "bearer", '
        '"expires_in": 60, "expires_at": NaN, "obtained_at": 1, "scopes": []}}',
        json.dumps(
            {
                "format": "genesys-token/1",
                "token": {
                    "access_token": "t",
                    "token_type": "bearer",
                    "expires_in": 60,
                    "expires_at": 1e12,
                    "obtained_at": 1,
                    "scopes": [],
                },
            }
        ),
    ],
    ids=["deeply-nested", "missing-fields", "nan-expiry", "absurd-expiry"],
)
def test_a_poisoned_store_entry_reads_as_missing(raw: str):
    assert decode_token(raw, now_monotonic=100.0, now_wall=1_800_000_000.0) is None


def test_a_stored_token_from_a_machine_with_a_faster_clock_is_accepted():
    now = 1_800_000_000.0
    token = Token.issued(
        "t", token_type="bearer", lifetime=172800, sent_monotonic=5, sent_wall=now + 60
    )
    again = decode_token(encode_token(token), now_monotonic=10.0, now_wall=now)
    assert again is not None  # 60 s of skew on a 48 h token is not a forgery


def test_a_genuine_store_entry_round_trips():
    token = Token.issued(
        "t", token_type="bearer", lifetime=60, sent_monotonic=50, sent_wall=1_800_000_000.0
    )
    again = decode_token(encode_token(token), now_monotonic=60.0, now_wall=1_800_000_010.0)
    assert again is not None and again.access_token == "t"


def test_a_jwt_expired_within_the_leeway_is_rejected():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = 1_800_000_000.0
    token = jwt.encode({"exp": now - 2}, key, algorithm="RS256")
    validator = TokenValidator(Config.build("c", "s"))
    with pytest.raises(TokenValidationError, match="expired"):
        validator.build(TokenResponse(token, "bearer", 3600, None, 10.0, now), "c", now_wall=now)
