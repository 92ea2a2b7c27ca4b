"""examples/requests_session.py, run as a user would: a subprocess configured by env vars."""

from __future__ import annotations

from example_runner import run_example

from genesys_token.testing import GenesysEmulator

ORG_NAME = "Emulated Org"


def test_example_prints_the_org_name(emulator: GenesysEmulator):
    result = run_example("requests_session.py", emulator)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ORG_NAME + "\n"
    assert emulator.token_requests == 1
    assert [(r.path, r.status) for r in emulator.api_request_log] == [
        ("/api/v2/organizations/me", 200)
    ]


def test_example_reports_rejected_credentials_without_the_secret(emulator: GenesysEmulator):
    secret = "wrong-secret-value-1234"
    result = run_example("requests_session.py", emulator, secret=secret)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert secret not in result.stderr
    assert emulator.api_requests == 0
