"""Redaction: what looks like a credential and what is known to be one never survives."""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
import tempfile

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


def test_known_values_are_redacted_whole_longest_first() -> None:
    out = redact("bad: pw1pw1pw1 (expected pw1pw1pw12)", known=["pw1pw1pw1", "pw1pw1pw12"])
    assert out == f"bad: {REDACTED} (expected {REDACTED})"


def test_short_known_values_are_left_to_the_structural_patterns() -> None:
    out = redact("bad secret: pw1 (expected pw12)", known=["pw1", "pw12"])
    assert out == f"bad secret: {REDACTED} (expected pw12)"


def test_empty_known_values_are_ignored() -> None:
    assert redact("plain words", known=["", "zzz"]) == "plain words"


def test_uuids_and_ordinary_text_are_kept() -> None:
    text = 'contextId "0f8fad5b-d9cb-469f-a165-70867728950e": token_type bearer, expires_in 3600'
    assert redact(text) == text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21",
        "/api/v2/conversations/calls/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21"
        "/participants/c0ffee00-1234-4abc-8def-0123456789ab",
        "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21/presences/purecloud",
    ],
)
def test_uuids_inside_a_path_are_kept(path: str) -> None:
    assert redact(f"GET {path} failed") == f"GET {path} failed"


@pytest.mark.parametrize(
    "glued",
    [
        "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21" + "Zx9Qw8Er7Ty6Ui5Op4As3",
        "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21/" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1",
        "/api/v2/users/Zx9Qw8Er7Ty6Ui5Op4As3-3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21",
        # Not a UUID piece: no UUID is cut out of a longer run (what is left is short).
        "/api/v2/users/3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21f00d1",
        "/api/v2/users/f00d1-3f1c2b7e-8a4d-4c1e-9b2f-0e6d5a4c3b21",
    ],
)
def test_a_uuid_in_a_path_spares_no_random_run_next_to_it(glued: str) -> None:
    assert redact(glued) == REDACTED


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


# -- known secrets wherever they occur, long runs only when not made of words -------------

PROSE = "credentials rejected by Genesys: authentication failed"


@pytest.mark.parametrize("secret", ["e", "y", "Gen", "ent"])
def test_a_short_known_secret_never_mangles_prose(secret: str) -> None:
    assert redact(PROSE, known=[secret]) == PROSE
    assert excerpt(PROSE, known=[secret]) == PROSE


@pytest.mark.parametrize("text", ["id abcdefgh12345678", "id 12345678abcdefgh"])
def test_a_known_secret_inside_a_longer_run_is_still_redacted(text: str) -> None:
    # The safe side: a run holding the secret may be the secret glued to anything.
    out = redact(text, known=["abcdefgh"])
    assert "abcdefgh" not in out and REDACTED in out


WORDLIKE = "Correct-Horse-Battery-Staple-Genesys-Secret"  # 43 characters, made of words


@pytest.mark.parametrize(
    ("secret", "around"),
    [
        ("emulator-secret", "https://login.example/x?cs={}&a=1"),
        ("emulator-secret", "credentials={}"),
        ("emulator-secret", "secret_{}"),
        ("emulator-secret", "{}=="),
        (WORDLIKE, "see /oauth/clients/{}"),
        (WORDLIKE, "?cs={}"),
    ],
)
def test_a_known_secret_glued_to_token_characters_is_redacted(secret: str, around: str) -> None:
    assert secret not in redact(around.format(secret), known=[secret])
    assert secret not in excerpt(around.format(secret), known=[secret])


def test_a_known_secret_is_redacted_in_its_json_escaped_form() -> None:
    secret = "Ab3dEfGh1jKlMnOpQrSt/UvWxYz0123456789abcdEF="
    body = json.dumps({"message": f"bad secret {secret}"}).replace("/", "\\/")
    escaped = secret.replace("/", "\\/")
    assert escaped in body
    assert escaped not in redact(body, known=[secret])
    assert escaped not in excerpt(body, known=[secret])


def test_a_known_secret_ending_in_punctuation_is_redacted_before_any_character() -> None:
    assert redact("got hunter2hunter2!abc", known=["hunter2hunter2!"]) == f"got {REDACTED}abc"


@pytest.mark.parametrize("around", ["{}", "'{}'", "secret was {}.", '"x": "{}",', "({})"])
def test_a_known_secret_is_redacted_between_non_token_characters(around: str) -> None:
    secret = "s3cr3t-Val_ue"
    assert secret not in redact(around.format(secret), known=[secret])


def _os_error_texts() -> list[str]:
    directory = tempfile.mkdtemp()
    texts = []
    try:
        with open(os.path.join(directory, "genesys-token", "cache", "entry.json")):
            pass
    except OSError as exc:
        texts.append(str(exc))
    locked = os.path.join(directory, "locked")
    os.mkdir(locked, 0)
    try:
        os.listdir(locked)
        texts.append(str(PermissionError(errno.EACCES, "Permission denied", locked)))
    except PermissionError as exc:  # not root
        texts.append(str(exc))
    finally:
        os.chmod(locked, 0o700)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError as exc:
        texts.append(str(exc))
    try:
        socket.getaddrinfo("nosuch.invalid", 443)  # .invalid never resolves (RFC 6761)
    except socket.gaierror as exc:
        texts.append(f"cannot reach https://login.nosuch.invalid/oauth/token: {exc}")
    return texts


@pytest.mark.parametrize(
    "text", _os_error_texts(), ids=["missing file", "permission denied", "refused", "no such name"]
)
def test_real_os_error_texts_survive(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "export GENESYSCLOUD_OAUTHCLIENT_SECRET or pass --secret-file",
        "set GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE_PATH to a file",
        "cannot read the secret file '/tmp/tmpk3j_9x2a/genesys-token/client-secret.txt'",
        "cache in /var/folders/xy/tmp.abc123xy/genesys-token/cache/entries",
        "genesys_token.observability.logging.RedactingFilter rejected a record",
        "see /usr/lib/python3.12/site-packages/genesys_token/http/token_endpoint.py",
        "use getClientCredentialsTokenWithRetries_and_CachedResult here",
        "token acquired for client 0f8fad5b-d9cb-469f-a165-70867728950e, expires_in 86399",
    ],
)
def test_identifiers_and_paths_made_of_words_survive(text: str) -> None:
    assert redact(text) == text


HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
B64URL_SECRET = "q3Zx_8RtYp2LmN-vWk9sJd4HfGc7BaE1oUiT6yXz0Q"  # 42, like a client secret


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"sha256 {HEX} seen", HEX),
        (f"secret {B64URL_SECRET}", B64URL_SECRET),
        ("Zm9v/YmFy+YmF6cXV4Zm9vYmFyYmF6cXV4ab==", "YmF6cXV4Zm9v"),
        ("TbpKo+AqdrNCn+PD/wvoXybivlbrRxji", "wvoXybivlbrRxji"),  # word-like but base64
        (f"Authorization: Bearer {OPAQUE}", OPAQUE),
        (f"token {JWT}", JWT),
        ("Authorization: Basic Y2xpZW50OnB3", "Y2xpZW50OnB3"),
        ("client_secret=pw&grant_type=client_credentials", "pw"),
        ('{"access_token": "t0k", "token_type": "bearer"}', "t0k"),
    ],
)
def test_every_credential_kind_is_still_redacted(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out, out
    assert REDACTED in out


def test_random_runs_are_never_taken_for_words() -> None:
    import random

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(24)
    for _ in range(2000):
        run = "".join(rng.choice(alphabet) for _ in range(32))
        assert redact(f"x {run} y") == f"x {REDACTED} y", run


@pytest.mark.parametrize(
    "text",
    [
        "basic authentication failed",
        "Bearer token expired",
        "HTTP Basic Auth is not supported for this grant",
        "the bearer token was rejected: use a Bearer Token from login.mypurecloud.com",
        "401 Unauthorized: bearer realm missing",
    ],
)
def test_prose_after_bearer_or_basic_is_kept(text: str) -> None:
    # Issue 24: the old pattern turned these into "basic [redacted] failed".
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("sent Bearer abc123def456 to the API", "abc123def456"),
        ("basic dXNlcjpwYXNz failed", "dXNlcjpwYXNz"),
        ("Bearer eu-west-1.Kx9_q", "eu-west-1.Kx9_q"),
        ("Authorization: Bearer plainword", "plainword"),  # a header: always a credential
        ('{"Authorization": "Basic token"}', "token"),
    ],
)
def test_credentials_after_bearer_or_basic_are_still_redacted(text: str, leak: str) -> None:
    out = redact(text)
    assert leak not in out, out
    assert REDACTED in out
