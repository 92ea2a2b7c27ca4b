"""examples/aiohttp_client.py and examples/httpx_async.py, run as a user would: ten concurrent
calls from an event loop on one token."""

from __future__ import annotations

import pytest
from example_runner import run_example

from genesys_token.testing import GenesysEmulator

ORG_NAME = "Emulated Org"
EXAMPLES = pytest.mark.parametrize("example", ["aiohttp_client.py", "httpx_async.py"])


@EXAMPLES
def test_example_makes_ten_calls_on_one_token(example: str, emulator: GenesysEmulator):
    result = run_example(example, emulator)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ORG_NAME} (10 calls)\n"
    assert emulator.token_requests == 1
    assert [(r.path, r.status) for r in emulator.api_request_log] == [
        ("/api/v2/organizations/me", 200)
    ] * 10


@EXAMPLES
def test_example_reports_rejected_credentials_without_the_secret(
    example: str, emulator: GenesysEmulator
):
    secret = "wrong-secret-value-1234"
    result = run_example(example, emulator, secret=secret)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert secret not in result.stderr
    assert emulator.token_requests == 1  # ten callers, one token request, one error each
    assert emulator.api_requests == 0
