"""examples/cron_job.py and examples/cron_job.sh: separate runs share one cached token."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genesys_token.testing import Fault, GenesysEmulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
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


# -- the crontab recipes -------------------------------------------------------------------

#: One crontab time field: numbers, names, ranges, steps, lists, ``*``.
_TIME_FIELD = re.compile(
    r"^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z-]+)(/[0-9]+)?)*$"
)
_SETTING = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*)$")


def _recipe(source: str) -> list[str]:
    """The crontab lines a document shows: an indented block in the examples' comments or
    docstrings, or the README's crontab block."""
    text = (ROOT / source).read_text()
    if source == "README.md":
        (block,) = re.findall(r"```crontab\n(.*?)```", text, re.S)
        return block.splitlines()
    if source.endswith(".sh"):
        text = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
    match = re.search(r"crontab -e.*?\n\n((?: {3,4}\S[^\n]*\n)+)", text, re.S)
    assert match, f"{source} shows no crontab"
    return [line.strip() for line in match.group(1).splitlines()]


def _parse_crontab(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """(settings, commands), failing on anything cron would not read as one job per line."""
    settings: dict[str, str] = {}
    commands: list[str] = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.rstrip().endswith("\\"), f"cron has no line continuation: {line!r}"
        setting = _SETTING.match(line)
        if setting and setting["name"] not in ("*",):
            settings[setting["name"]] = setting["value"]
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not 5 time fields and a command: {line!r}"
        assert all(_TIME_FIELD.match(field) for field in fields[:5]), line
        commands.append(fields[5])
    return settings, commands


RECIPES = ("examples/cron_job.sh", "examples/cron_job.py", "README.md")


@pytest.mark.parametrize("source", RECIPES)
def test_the_crontab_recipe_is_valid_and_keeps_the_secret_off_command_lines(source: str):
    settings, commands = _parse_crontab(_recipe(source))
    assert len(commands) == 1
    assert "GENESYSCLOUD_OAUTHCLIENT_SECRET" not in settings  # a file, not the value
    assert settings["GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE"].startswith("/")
    assert "SECRET" not in commands[0]


def _cmdlines(root: int) -> list[bytes]:
    """The command lines of ``root`` and of every process below it, right now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {root}
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    found = []
    for pid in tree:
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
        except OSError:
            continue
    return found


def _run_as_cron(command: str, env: dict[str, str]) -> tuple[int, list[bytes]]:
    """Run ``command`` as cron does (``/bin/sh -c``); every command line seen meanwhile."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        seen += _cmdlines(process.pid)
        time.sleep(0.01)
    process.communicate(timeout=5)
    return process.returncode, seen


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("source", ["examples/cron_job.sh", "examples/cron_job.py"])
def test_the_recipe_runs_as_cron_runs_it_and_no_process_shows_the_secret(
    emulator: GenesysEmulator, tmp_path: Path, source: str
):
    settings, (command,) = _parse_crontab(_recipe(source))
    secret_file = tmp_path / "secret"
    secret_file.write_text(emulator.client_secret + "\n")
    secret_file.chmod(0o600)
    env = {  # what cron gives a job: a few variables, then the crontab's settings
        "HOME": str(tmp_path),
        "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
        "SHELL": "/bin/sh",
        **settings,
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE": str(secret_file),
        "GENESYSCLOUD_API_URL": emulator.api_base_url,
        "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
        "GENESYSCLOUD_TOKEN_CACHE": str(tmp_path / "cache"),
    }
    command = command.replace("/opt/jobs/venv/bin/python", sys.executable).replace(
        "/opt/jobs/", f"{EXAMPLES}/"
    )
    emulator.inject(Fault(delay=0.5, passthrough=True))  # time to look at every process
    code, seen = _run_as_cron(command, env)
    assert code == 0
    assert emulator.token_requests == 1
    assert any(b"cron_job" in line for line in seen)  # the scan saw the job's processes
    assert not [line for line in seen if emulator.client_secret.encode() in line]


@pytest.mark.parametrize("script", ["cron_job.sh", "cron_job.py"])
def test_a_secret_file_others_can_read_is_refused(
    emulator: GenesysEmulator, tmp_path: Path, script: str
):
    secret_file = tmp_path / "secret"
    secret_file.write_text(emulator.client_secret)
    secret_file.chmod(0o644)
    env = _env(emulator, tmp_path / "cache")
    del env["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    env["GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE"] = str(secret_file)
    runner = "bash" if script.endswith(".sh") else sys.executable
    result = _run([runner, str(EXAMPLES / script)], env)
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and emulator.client_secret not in result.stderr
    assert emulator.token_requests == 0
    secret_file.chmod(0o600)
    assert _run([runner, str(EXAMPLES / script)], env).returncode == 0
    assert emulator.token_requests == 1
