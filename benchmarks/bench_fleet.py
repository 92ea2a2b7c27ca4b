"""Token requests made by a fleet of processes, with and without a shared token store.

Runs ``processes`` worker processes for ``lifetimes`` token lifetimes against the emulator
(short-lived tokens, background refresh on, ``get_token()`` every 50 ms), once per store:
none (each process keeps its own token), a FileStore, and a RedisStore when a
``redis-server`` binary is available or ``redis_url`` is given. Prints a small table::

    python benchmarks/bench_fleet.py [processes] [lifetimes]

Counts, not timings: the point is how many tokens Genesys is asked to create.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from genesys_token.testing import GenesysEmulator

#: Short tokens keep the run short; the refresh maths scale with the lifetime.
TOKEN_TTL = 2.0
PROCESS_TIMEOUT = 120.0

_WORKER = """
import os, sys, time
from genesys_token import TokenManager
from genesys_token.stores import FileStore, RedisStore
kind, location, token_url, api_url, duration = sys.argv[1:6]
store = {"file": lambda: FileStore(location), "redis": lambda: RedisStore.from_url(location),
         "none": lambda: None}[kind]()
manager = TokenManager(os.environ["BENCH_CLIENT_ID"], os.environ["BENCH_CLIENT_SECRET"],
                       token_url=token_url, api_base_url=api_url, store=store)
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + float(duration)
while time.monotonic() < end:
    manager.get_token()
    time.sleep(0.05)
manager.close()
"""


def _fleet(
    emulator: GenesysEmulator, kind: str, location: str, processes: int, duration: float
) -> int:
    """Run one fleet to completion; return the token requests it made."""
    env = dict(
        os.environ, BENCH_CLIENT_ID=emulator.client_id, BENCH_CLIENT_SECRET=emulator.client_secret
    )
    argv = [sys.executable, "-c", _WORKER, kind, location, emulator.token_url,
            emulator.api_base_url, str(duration)]  # fmt: skip
    before = emulator.token_requests
    run_together(argv, env, processes, PROCESS_TIMEOUT)
    return emulator.token_requests - before


def run_together(argv: list[str], env: dict[str, str], processes: int, timeout: float) -> list[str]:
    """Start ``processes`` copies of ``argv``; once each has printed a line (ready), tell
    them all to go (a line on stdin), wait for them and return what each printed after.
    Stragglers are killed."""
    workers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    outputs = []
    try:
        for worker in workers:
            assert worker.stdout is not None
            worker.stdout.readline()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            outputs.append(worker.communicate(timeout=timeout)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(5.0)
    return outputs


@contextmanager
def local_redis() -> Iterator[str | None]:
    """A throwaway redis-server on a free port, or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(5.0)


def run(
    processes: int = 4, lifetimes: int = 3, *, redis_url: str | None = None
) -> dict[str, object]:
    """Measure token requests per store kind and print them as a table.

    Args:
        processes: Worker processes per fleet.
        lifetimes: How many token lifetimes each fleet runs for.
        redis_url: A Redis to use; default: start a local redis-server if installed.

    Returns:
        ``{"processes", "lifetimes", "token_ttl", "requests": {kind: count or None}}``.
    """
    duration = lifetimes * TOKEN_TTL
    requests: dict[str, int | None] = {}
    with GenesysEmulator(token_ttl=TOKEN_TTL) as emulator, tempfile.TemporaryDirectory() as tmp:
        requests["none"] = _fleet(emulator, "none", "", processes, duration)
        requests["file"] = _fleet(emulator, "file", tmp, processes, duration)
        with local_redis() if redis_url is None else _given(redis_url) as url:
            requests["redis"] = (
                None if url is None else _fleet(emulator, "redis", url, processes, duration)
            )
    _print_table(requests, processes, lifetimes)
    return {"processes": processes, "lifetimes": lifetimes, "token_ttl": TOKEN_TTL,
            "requests": requests}  # fmt: skip


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def _print_table(requests: dict[str, int | None], processes: int, lifetimes: int) -> None:
    print(f"{processes} processes, {lifetimes} token lifetimes of {TOKEN_TTL:g}s each")
    print(f"{'store':<8}{'token requests':>16}{'per lifetime':>14}")
    for kind, count in requests.items():
        if count is None:
            print(f"{kind:<8}{'skipped (no redis-server)':>30}")
        else:
            print(f"{kind:<8}{count:>16}{count / lifetimes:>14.1f}")


if __name__ == "__main__":
    arguments = [int(value) for value in sys.argv[1:3]]
    run(*arguments)
