"""examples/paced_bulk_calls.py, run as a user would, against the emulator's per-token limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genesys_token.testing import GenesysEmulator

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "paced_bulk_calls.py"


def _run(
    emulator: GenesysEmulator, *args: str, limit: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENESYSCLOUD_")}
    env.update(
        GENESYSCLOUD_OAUTHCLIENT_ID=emulator.client_id,
        GENESYSCLOUD_OAUTHCLIENT_SECRET=emulator.client_secret,
        GENESYSCLOUD_TOKEN_URL=emulator.token_url,
        GENESYSCLOUD_API_URL=emulator.api_base_url,
    )
    if limit is not None:
        env["GENESYSCLOUD_API_RATE_LIMIT"] = limit
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.genesys_emulator(api_rate_limit=(5, 1.0))
def test_the_paced_example_draws_no_429_at_the_emulators_limit(emulator: GenesysEmulator):
    result = _run(emulator, "12", limit="5/1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("12 of 12 calls answered 200 in ")
    assert result.stdout.endswith("; 0 429s\n")
    assert sum(emulator.api_429s.values()) == 0
    assert emulator.api_requests == 12


def test_the_paced_example_asks_for_the_limit(emulator: GenesysEmulator):
    result = _run(emulator, "3", limit=None)
    assert result.returncode == 1
    assert "GENESYSCLOUD_API_RATE_LIMIT" in result.stderr
    assert emulator.api_requests == 0
