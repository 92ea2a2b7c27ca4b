"""examples/aiohttp_client.py, run as a user would: a subprocess configured by env vars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genesys_token.testing import GenesysEmulator

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "aiohttp_client.py"
ORG_NAME = "Emulated Org"


def _run(emulator: GenesysEmulator, secret: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENESYSCLOUD_")}
    env.update(
        GENESYSCLOUD_OAUTHCLIENT_ID=emulator.client_id,
        GENESYSCLOUD_OAUTHCLIENT_SECRET=secret,
        GENESYSCLOUD_TOKEN_URL=emulator.token_url,
        GENESYSCLOUD_API_URL=emulator.api_base_url,
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_example_makes_ten_calls_on_one_token(emulator: GenesysEmulator):
    result = _run(emulator, emulator.client_secret)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ORG_NAME} (10 calls)\n"
    assert emulator.token_requests == 1
    assert [(r.path, r.status) for r in emulator.api_request_log] == [
        ("/api/v2/organizations/me", 200)
    ] * 10


def test_example_reports_rejected_credentials_without_the_secret(emulator: GenesysEmulator):
    secret = "wrong-secret-value-1234"
    result = _run(emulator, secret)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert secret not in result.stderr
    assert emulator.token_requests == 1  # ten callers, one token request, one error each
    assert emulator.api_requests == 0
