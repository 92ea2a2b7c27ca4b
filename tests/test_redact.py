"""Redaction: what looks like a credential and what is known to be one never survives."""

from __future__ import annotations

import base64

import pytest

from genesys_token.observability.redaction import REDACTED, excerpt, redact

pytestmark = pytest.mark.legacy

OPAQUE = "Zm9vYmFyYmF6cXV4" * 8  # 128 base64url characters, like a Genesys token
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("authorization: basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ('{"access_token": "short-tok"}', "short-tok"),
        ("client_secret=hunter2&grant_type=client_credentials", "hunter2"),
        ('{"token":"tok-9"}', "tok-9"),
        ("password = s3cr3t", "s3cr3t"),
        (f"the token {JWT} was rejected", JWT),
        (f"opaque {OPAQUE} here", OPAQUE),
    ],
)
def test_credential_shapes_are_redacted(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out
    assert REDACTED in out


def test_known_values_are_redacted_however_short_or_plain() -> None:
    out = redact("bad secret: pw1 (expected pw12)", known=["pw1", "pw12"])
    assert "pw1" not in out
    assert out == f"bad secret: {REDACTED} (expected {REDACTED})"


def test_empty_known_values_are_ignored() -> None:
    assert redact("plain words", known=["", "zzz"]) == "plain words"


def test_uuids_and_ordinary_text_are_kept() -> None:
    text = 'contextId "0f8fad5b-d9cb-469f-a165-70867728950e": token_type bearer, expires_in 3600'
    assert redact(text) == text


def test_base64_run_glued_to_uuid_is_still_redacted() -> None:
    glued = "0f8fad5b-d9cb-469f-a165-70867728950e" + "A" * 40
    assert redact(glued) == REDACTED


def test_excerpt_is_short_printable_and_marks_the_cut() -> None:
    out = excerpt("a\x00b\nc" + "x " * 300, limit=20)
    assert out.startswith("a b c")
    assert out.endswith("...")
    assert len(out) == 23


def test_excerpt_of_bytes_survives_invalid_utf8() -> None:
    assert excerpt(b"\xff\xfeok") == "\ufffd\ufffdok"


@pytest.mark.parametrize("secret", ["Sekr1t-Sekr1t-Sekr1t", "Qopen sesame; now ok"])
def test_excerpt_never_shows_half_of_a_known_secret_at_the_cut(secret: str) -> None:
    tokens = " ".join([OPAQUE] * 6)  # 774 characters that redact to 65
    for pad in range(20, 50):  # moves the secret across the redaction margin (limit * 4 + 21)
        body = tokens + " " * pad + secret + " tail" * 300
        out = excerpt(body, limit=200, known=[secret])
        assert secret[:4] not in out
        assert out.startswith(REDACTED)


def test_excerpt_drops_the_unfinished_word_at_the_cut() -> None:
    body = "x " * 398 + "ab" + OPAQUE  # the token starts right before the margin
    out = excerpt(body, limit=200)
    assert "ab" not in out
    assert OPAQUE[:8] not in out


def test_excerpt_redacts_a_basic_header_echo() -> None:
    encoded = base64.b64encode(b"client:pw").decode()
    out = excerpt(f'{{"echo": "{encoded}"}}', known=[encoded])
    assert encoded not in out


# -- values, not prose ---------------------------------------------------------------------

CACHE = "/home/ana/.cache/genesys-token"


@pytest.mark.parametrize(
    "text",
    [
        f"cannot lock the token cache in {CACHE}: Permission denied",
        f"cannot open the token cache lock in {CACHE}: Not a directory",
        f"[Errno 20] Not a directory: '{CACHE}/entry'",
        f"genesys-token: Read-only file system: '{CACHE}'",
        "could not save the token: No space left on device",
        "token: [Errno 13] Permission denied",
        "genesys-token: error: InvalidClientError: authentication failed",
    ],
)
def test_os_errors_and_prose_survive(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("token=abc123def", "abc123def"),
        ("https://x.test/cb?token=abc&next=1", "abc"),
        ('{"access_token": "opaque-value-1"}', "opaque-value-1"),
        ('{"access_token":"v"}', '"v"'),
        ("Authorization: Bearer x", "Bearer x"),
        ("client_secret=s3&grant_type=client_credentials", "s3"),
        ("GENESYSCLOUD_OAUTHCLIENT_SECRET=plainword", "plainword"),
        ("token: abc", "abc"),
        ("the token: hunter2 was refused", "hunter2"),
        ("secret: Sesame", "Sesame"),
        (f"genesys-token: token={OPAQUE}", OPAQUE),
    ],
)
def test_credential_values_next_to_prose_are_redacted(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out, out
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "{'access_token': 'short-tok'}",  # a Python repr
        '{"accessToken":"opaque-short-123"}',  # camelCase
        '{"clientSecret":"hunter2-pass"}',
        "apiKey=k1-value",
    ],
)
def test_short_values_under_repr_or_camelcase_keys_are_redacted(text: str):
    value = text.split(":")[-1].split("=")[-1].strip(" '\"{}")
    assert value not in redact(text)
