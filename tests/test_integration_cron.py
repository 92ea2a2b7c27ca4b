"""examples/cron_job.py and examples/cron_job.sh: separate runs share one cached token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genesys_token.testing import GenesysEmulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = Path(sys.executable).parent


def _env(emulator: GenesysEmulator, cache: Path | str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
        "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
        "GENESYSCLOUD_API_URL": emulator.api_base_url,
        "GENESYSCLOUD_TOKEN_CACHE": str(cache),
    }


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def test_three_cron_runs_make_one_token_request(emulator: GenesysEmulator, tmp_path: Path):
    env = _env(emulator, tmp_path / "cache")
    outputs = []
    for _ in range(3):
        result = _run([sys.executable, str(EXAMPLES / "cron_job.py")], env)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert len(set(outputs)) == 1 and outputs[0].strip()
    assert emulator.token_requests == 1
    assert [r.status for r in emulator.api_request_log] == [200, 200, 200]
    token = emulator.issued_tokens[0]
    assert all(token not in out for out in outputs)


def test_cron_job_without_cache_fetches_every_run(emulator: GenesysEmulator):
    env = _env(emulator, "off")
    for _ in range(2):
        assert _run([sys.executable, str(EXAMPLES / "cron_job.py")], env).returncode == 0
    assert emulator.token_requests == 2


def test_cron_job_exit_codes(emulator: GenesysEmulator, tmp_path: Path):
    env = _env(emulator, tmp_path / "cache")
    emulator.inject(status=503, path="/api/v2/organizations/me")
    failed = _run([sys.executable, str(EXAMPLES / "cron_job.py")], env)
    assert failed.returncode == 1 and "503" in failed.stderr
    del env["GENESYSCLOUD_OAUTHCLIENT_ID"]
    misconfigured = _run([sys.executable, str(EXAMPLES / "cron_job.py")], env)
    assert misconfigured.returncode == 2 and "GENESYSCLOUD_OAUTHCLIENT_ID" in misconfigured.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_shell_cron_job_calls_the_api_with_the_cli_token(emulator: GenesysEmulator, tmp_path: Path):
    env = _env(emulator, tmp_path / "cache")
    for _ in range(2):
        result = _run(["bash", str(EXAMPLES / "cron_job.sh")], env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"] == emulator.org_id
    assert emulator.token_requests == 1
    assert [r.status for r in emulator.api_request_log] == [200, 200]
    assert emulator.api_request_log[0].token_used == emulator.issued_tokens[0]
    assert emulator.issued_tokens[0] not in result.stdout + result.stderr


def test_shell_cron_job_fails_when_the_cli_cannot_get_a_token(
    emulator: GenesysEmulator, tmp_path: Path
):
    env = _env(emulator, tmp_path / "cache")
    env["GENESYSCLOUD_OAUTHCLIENT_SECRET"] = "wrong-secret"
    result = _run(["bash", str(EXAMPLES / "cron_job.sh")], env)
    assert result.returncode == 3  # the CLI's "credentials rejected", passed on by set -e
    assert emulator.api_requests == 0
