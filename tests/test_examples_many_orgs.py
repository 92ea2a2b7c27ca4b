"""examples/many_orgs.py, run as a user would: a subprocess given a JSON file of orgs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from genesys_token.testing import GenesysEmulator

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "many_orgs.py"


def _run(
    emulator: GenesysEmulator, orgs: list[dict[str, str]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "orgs.json"
    path.write_text(json.dumps(orgs), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _orgs(emulator: GenesysEmulator, count: int) -> list[dict[str, str]]:
    orgs = []
    for i in range(count):
        client_id, secret = f"org-{i}", f"org-{i}-secret"
        emulator.add_client(client_id, secret)
        orgs.append(
            {
                "client_id": client_id,
                "client_secret": secret,
                "token_url": emulator.token_url,
                "api_base_url": emulator.api_base_url,
            }
        )
    return orgs


def test_example_serves_every_org_with_one_token_request_each(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    result = _run(emulator, _orgs(emulator, 4), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == [f"org-{i}: Emulated Org" for i in range(4)]
    assert lines[-1] == "4 managers, 4 token requests"
    assert emulator.token_requests == 4
    assert {r.client_id for r in emulator.token_request_log} == {f"org-{i}" for i in range(4)}


def test_example_reports_an_org_with_a_wrong_secret_without_the_secret(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    orgs = _orgs(emulator, 2)
    orgs[1]["client_secret"] = "wrong-secret-value-1234"
    result = _run(emulator, orgs, tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "org-0: Emulated Org"
    assert "error: org-1: " in result.stderr
    assert "wrong-secret-value-1234" not in result.stderr + result.stdout
