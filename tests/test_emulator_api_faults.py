"""The emulator's API faults: Genesys' 429 on any API path, and an API that rejects all tokens."""

from __future__ import annotations

import requests
from conftest import MakeManager

from genesys_token.testing import GenesysEmulator

USERS_PATH = "/api/v2/users"
ORG_PATH = "/api/v2/organizations/me"


def _get(emulator: GenesysEmulator, path: str, token: str | None) -> requests.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return requests.get(emulator.api_base_url + path, headers=headers, timeout=5)


def test_throttle_api_answers_genesys_429_the_given_number_of_times(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    token = make_manager().get_token()
    emulator.throttle_api(times=2, retry_after=7, path=USERS_PATH)

    answers = [_get(emulator, USERS_PATH, token) for _ in range(3)]

    assert [r.status_code for r in answers] == [429, 429, 404]  # then the normal answer
    first = answers[0]
    assert first.headers["Retry-After"] == "7"
    body = first.json()
    assert body["code"] == "too.many.requests.retry.after"
    assert body["status"] == 429
    assert "Retry the request in [7] seconds" in body["message"]
    assert {"contextId", "details", "errors"} <= set(body)


def test_throttle_api_only_touches_its_path(emulator: GenesysEmulator, make_manager: MakeManager):
    token = make_manager().get_token()
    emulator.throttle_api(times=None, path=USERS_PATH)

    assert _get(emulator, ORG_PATH, token).status_code == 200
    assert _get(emulator, USERS_PATH, token).status_code == 429
    assert _get(emulator, USERS_PATH, token).status_code == 429
    emulator.clear_faults()
    assert _get(emulator, USERS_PATH, token).status_code == 404


def test_throttle_api_defaults_to_every_api_path_once(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    token = make_manager().get_token()
    emulator.throttle_api()

    assert _get(emulator, ORG_PATH, token).status_code == 429
    assert _get(emulator, ORG_PATH, token).status_code == 200


def test_reject_all_tokens_answers_bad_credentials_to_fresh_tokens(
    emulator: GenesysEmulator, make_manager: MakeManager
):
    token = make_manager().get_token()
    emulator.reject_all_tokens = True
    assert emulator.reject_all_tokens is True

    rejected = _get(emulator, ORG_PATH, token)

    assert rejected.status_code == 401
    assert rejected.json()["code"] == "bad.credentials"
    assert emulator.is_token_valid(token)  # issued and valid: the API refuses it anyway
    assert _get(emulator, ORG_PATH, None).json()["code"] == "authentication.required"
    emulator.reject_all_tokens = False
    assert _get(emulator, ORG_PATH, token).status_code == 200
