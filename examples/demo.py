"""The main job, on the embedded emulator: short-lived tokens under real API traffic.

Worker threads call ``GET /api/v2/organizations/me`` through a ``GenesysAuth`` session while
tokens expire every few seconds. Midway the token endpoint has an outage, and later a forced
``rotate(revoke_previous=True)`` retires the token in use. A live line shows what happens;
the summary at the end must show no failed call and no call made with a dead token.

Run it with ``make demo`` (or ``python examples/demo.py --duration 20``). Exit status 0 when
every call succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

import requests

from genesys_token import GenesysAuth, GenesysTokenError, TokenManager
from genesys_token.events import TOKEN_REFRESH_FAILURE, TOKEN_REFRESH_SUCCESS
from genesys_token.testing import Fault, GenesysEmulator


class Tally:
    """Thread-safe counters of the demo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self.counts[name]


def worker(manager: TokenManager, url: str, stop: threading.Event, tally: Tally) -> None:
    """Call the API until told to stop, counting outcomes."""
    with requests.Session() as session:
        session.auth = GenesysAuth(manager)
        while not stop.is_set():
            try:
                response = session.get(url, timeout=(3.05, 10))
            except (requests.RequestException, OSError):
                tally.add("errors")
                continue
            tally.add("calls")
            if response.history and response.history[0].status_code == 401:
                tally.add("replays")
            tally.add("ok" if response.ok else f"status_{response.status_code}")
            stop.wait(0.01)


def run(duration: float = 20.0, workers: int = 8, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the process exit status."""
    ttl = 6.0
    with (
        GenesysEmulator(token_ttl=ttl) as emulator,
        TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            backoff_base=0.1,
        ) as manager,
    ):
        tally = Tally()
        manager.on(TOKEN_REFRESH_SUCCESS, lambda record: tally.add("refreshes"))
        manager.on(TOKEN_REFRESH_FAILURE, lambda record: tally.add("failed_refreshes"))
        url = f"{emulator.api_base_url}/api/v2/organizations/me"
        stop = threading.Event()
        threads = [
            threading.Thread(target=worker, args=(manager, url, stop, tally), daemon=True)
            for _ in range(workers)
        ]
        print(
            f"genesys-token demo: {workers} workers, {ttl:g}s tokens, {duration:g}s, "
            f"emulator on {emulator.url}",
            file=out,
        )
        started = time.monotonic()
        for thread in threads:
            thread.start()
        script = _Script(duration, emulator, manager, out)
        live = out.isatty()
        next_line = 0.0
        while (elapsed := time.monotonic() - started) < duration:
            script.step(elapsed)
            if elapsed >= next_line:
                line = _status(elapsed, tally, emulator, manager)
                print(f"\r{line}" if live else line, end="" if live else "\n", file=out)
                next_line = elapsed + (0.25 if live else 2.0)
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(15)
        if live:
            print(file=out)
        return _summary(tally, emulator, manager, script, out)


class _Script:
    """The scripted incidents: an outage after 30% of the run, then a rotation (after 65% of
    the run, once the outage is over)."""

    def __init__(
        self, duration: float, emulator: GenesysEmulator, manager: TokenManager, out: TextIO
    ) -> None:
        self.duration = duration
        self.emulator = emulator
        self.manager = manager
        self.out = out
        self.outage_started = False
        self.outage_ended = False
        self.outage_at = 0.0
        self.rotation: threading.Thread | None = None
        self.revoked = ""
        self.rotation_error = ""

    def step(self, elapsed: float) -> None:
        token = self.manager.token
        # Begin the outage just before the token's refresh point, so the refresh meets it.
        near_refresh = token is not None and token.remaining() <= 2.2
        if not self.outage_started and elapsed >= 0.3 * self.duration and near_refresh:
            self.outage_started = True
            self.outage_at = elapsed
            self.emulator.inject(Fault.server_error(503), times=10_000)
            print("\n-- token endpoint outage begins (503s)", file=self.out)
        if self.outage_started and not self.outage_ended and elapsed >= self.outage_at + 1.2:
            self.outage_ended = True
            self.emulator.clear_faults()
            print("\n-- token endpoint recovers", file=self.out)
        after_outage = self.outage_ended and elapsed >= self.outage_at + 1.7
        if self.rotation is None and elapsed >= 0.65 * self.duration and after_outage:
            old = self.manager.token
            self.revoked = old.fingerprint if old else ""
            print(f"\n-- rotate(revoke_previous=True) retires {self.revoked}", file=self.out)
            self.rotation = threading.Thread(target=self._rotate)
            self.rotation.start()

    def _rotate(self) -> None:
        try:
            self.manager.rotate(drain_timeout=5, revoke_previous=True)
        except GenesysTokenError as exc:
            self.rotation_error = f"{type(exc).__name__}: {exc}"


def _status(elapsed: float, tally: Tally, emulator: GenesysEmulator, manager: TokenManager) -> str:
    metrics = manager.metrics()
    return (
        f"t={elapsed:5.1f}s calls={tally.get('calls')} ok={tally.get('ok')} "
        f"401s={_api_401s(emulator)} replays={tally.get('replays')} "
        f"token_requests={emulator.token_requests} refreshes={tally.get('refreshes')} "
        f"failed_refreshes={tally.get('failed_refreshes')} rotations={metrics['rotations']} "
        f"in_flight={metrics['in_flight']}"
    )


def _api_401s(emulator: GenesysEmulator) -> int:
    return sum(1 for record in emulator.api_request_log if record.status == 401)


def _summary(
    tally: Tally, emulator: GenesysEmulator, manager: TokenManager, script: _Script, out: TextIO
) -> int:
    if script.rotation is not None:
        script.rotation.join(15)
    failed = tally.get("calls") - tally.get("ok") + tally.get("errors")
    dead_token_calls = _api_401s(emulator)
    metrics: dict[str, Any] = manager.metrics()
    print("summary:", file=out)
    for name, value in (
        ("API calls", tally.get("calls")),
        ("successful calls", tally.get("ok")),
        ("failed calls", failed),
        ("calls made with an expired or revoked token (401)", dead_token_calls),
        ("tokens issued", len(emulator.issued_tokens)),
        ("token requests (all outcomes)", emulator.token_requests),
        ("refreshes", tally.get("refreshes")),
        ("failed refreshes (during the outage)", tally.get("failed_refreshes")),
        ("rotations", metrics["rotations"]),
        ("tokens revoked", len(emulator.revoked_tokens)),
        ("token request latency p95 (ms)", metrics["latency_ms"]["p95"]),
    ):
        print(f"  {name:<52} {value}", file=out)
    if script.rotation_error:
        print(f"  rotation failed: {script.rotation_error}", file=out)
    ok = (
        failed == 0
        and dead_token_calls == 0
        and tally.get("calls") > 0
        and not script.rotation_error
    )
    print("result: OK" if ok else "result: FAILED", file=out)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run (20)")
    parser.add_argument("--workers", type=int, default=8, help="worker threads (8)")
    args = parser.parse_args(argv)
    return run(args.duration, args.workers)


if __name__ == "__main__":
    sys.exit(main())
