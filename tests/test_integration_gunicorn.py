"""examples/gunicorn_preload.py under a real gunicorn: 3 pre-forked workers, one token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from genesys_token.testing import GenesysEmulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
READY_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited early: {log.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    pytest.fail("gunicorn did not answer /healthz in time")


def _stop(process: subprocess.Popen[bytes], log: Path) -> str:
    """Stop gunicorn (SIGTERM, then SIGKILL) and return what it wrote to stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    return log.read_text(errors="replace")


def test_preforked_workers_share_one_token(emulator: GenesysEmulator, tmp_path: Path):
    emulator.api_delay = 0.05  # each call holds its worker, so requests spread over workers
    port = _free_port()
    env = {
        **os.environ,
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
        "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
        "GENESYSCLOUD_API_URL": emulator.api_base_url,
        "GENESYSCLOUD_TOKEN_CACHE": str(tmp_path / "cache"),
    }
    command = [
        sys.executable, "-m", "gunicorn", "--preload", "-w", "3",
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "2",
        "--chdir", str(EXAMPLES), "gunicorn_preload:app",
    ]  # fmt: skip
    # A file, not a pipe: nobody reads stderr while gunicorn runs, and a full pipe would
    # block its logging (and so the workers).
    log = tmp_path / "gunicorn.stderr"
    with log.open("wb") as stderr_file:
        process = subprocess.Popen(command, env=env, stderr=stderr_file)
    base = f"http://127.0.0.1:{port}"
    results: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()
    try:
        _wait_ready(base, process, log)
        assert emulator.token_requests == 0  # nothing fetched at import, before the fork

        def client() -> None:
            for _ in range(3):
                response = requests.get(f"{base}/whoami", timeout=10)
                with lock:
                    results.append((response.status_code, response.json()))

        threads = [threading.Thread(target=client) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        stderr = _stop(process, log)
    assert len(results) == 30, stderr[-2000:]
    assert {status for status, _ in results} == {200}
    pids = {body["pid"] for _, body in results}
    assert len(pids) >= 2, f"only worker(s) {pids} served"
    assert os.getpid() not in pids
    orgs = {body["org"] for _, body in results}
    assert len(orgs) == 1 and all(orgs)
    assert emulator.token_requests == 1
    assert len(emulator.api_request_log) == 30
