"""examples/paced_bulk_calls.py, run as a user would, against the emulator's per-token limit."""

from __future__ import annotations

import pytest
from example_runner import run_example

from genesys_token.testing import GenesysEmulator


@pytest.mark.genesys_emulator(api_rate_limit=(5, 1.0))
def test_the_paced_example_draws_no_429_at_the_emulators_limit(emulator: GenesysEmulator):
    result = run_example(
        "paced_bulk_calls.py", emulator, "12", env={"GENESYSCLOUD_API_RATE_LIMIT": "5/1"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("12 of 12 calls answered 200 in ")
    assert result.stdout.endswith("; 0 429s\n")
    assert sum(emulator.api_429s.values()) == 0
    assert emulator.api_requests == 12


def test_the_paced_example_asks_for_the_limit(emulator: GenesysEmulator):
    result = run_example("paced_bulk_calls.py", emulator, "3")
    assert result.returncode == 1
    assert "GENESYSCLOUD_API_RATE_LIMIT" in result.stderr
    assert emulator.api_requests == 0
