"""The main job, on the embedded emulator: short-lived tokens under real API traffic.

Worker threads call ``GET /api/v2/organizations/me`` through a ``GenesysAuth`` session while
tokens expire every few seconds. Midway the token endpoint has an outage. Later a 3-second
report download starts, and while it runs ``rotate(revoke_previous=True)`` retires the token
it carries, make-before-break: the new token is in place at once, so calls started during the
rotation are not held; the rotation waits for the download (the old token's last use), then
revokes the old token. A live line shows what happens, the rotation's events print their
data (how many uses of the old token were drained, in how long); the summary at the end must
show no failed call and no call made with a dead token.

Run it with ``make demo`` (or ``python examples/demo.py --duration 20``). Exit status 0 when
every call succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

import requests

from genesys_token import GenesysAuth, GenesysTokenError, TokenManager
from genesys_token.observability.events import (
    TOKEN_DRAIN_COMPLETE,
    TOKEN_DRAIN_TIMEOUT,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
    TOKEN_REVOKED,
)
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.token import fingerprint_of

#: The report download in flight during the rotation (a 20 s demo; shorter runs scale it
#: down to 15% of their length so that it ends before they do).
LONG_CALL_SECONDS = 3.0
LONG_CALL_PATH = "/api/v2/echo/report-download"


class Tally:
    """Thread-safe counters of the demo, and call latencies (seconds) by when calls began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.during_rotation: list[float] = []
        self.outside_rotation: list[float] = []

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self.counts[name]

    def took(self, seconds: float, during_rotation: bool) -> None:
        with self._lock:
            (self.during_rotation if during_rotation else self.outside_rotation).append(seconds)


def worker(
    manager: TokenManager,
    url: str,
    stop: threading.Event,
    tally: Tally,
    rotating: threading.Event,
) -> None:
    """Call the API until told to stop, counting outcomes and timing each call."""
    with requests.Session() as session:
        session.auth = GenesysAuth(manager)
        while not stop.is_set():
            during = rotating.is_set()
            started = time.monotonic()
            try:
                response = session.get(url, timeout=(3.05, 10))
            except (requests.RequestException, OSError):
                tally.add("errors")
                continue
            tally.took(time.monotonic() - started, during)
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
        script = _Script(duration, emulator, manager, tally, out)
        threads = [
            threading.Thread(
                target=worker, args=(manager, url, stop, tally, script.rotating), daemon=True
            )
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
    """The scripted incidents: an outage after 30% of the run; after 65% of the run (once the
    outage is over) a report download starts, and while it runs a revoking rotation."""

    def __init__(
        self,
        duration: float,
        emulator: GenesysEmulator,
        manager: TokenManager,
        tally: Tally,
        out: TextIO,
    ) -> None:
        self.duration = duration
        self.emulator = emulator
        self.manager = manager
        self.tally = tally
        self.out = out
        self.outage_started = False
        self.outage_ended = False
        self.outage_at = 0.0
        self.long_seconds = min(LONG_CALL_SECONDS, 0.15 * duration)
        self.long_call: threading.Thread | None = None
        self.long_started_at = 0.0
        self.long_outcome = ""
        self.long_token = ""
        #: Set while rotate() runs: the workers time the calls they start meanwhile.
        self.rotating = threading.Event()
        self.rotation: threading.Thread | None = None
        self.revoked = ""
        self.rotation_error = ""
        self.drain: dict[str, Any] = {}
        for event in (TOKEN_REFRESH_SUCCESS, TOKEN_DRAIN_COMPLETE, TOKEN_DRAIN_TIMEOUT):
            manager.on(event, self._on_rotation_event)
        manager.on(TOKEN_REVOKED, self._on_revoked)

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
        # The emulator checks a token when it answers: start the download on a token that
        # outlives it, so only a revocation could make it fail.
        fresh = token is not None and token.remaining() > self.long_seconds + 1.0
        if self.long_call is None and elapsed >= 0.65 * self.duration and after_outage and fresh:
            self._start_long_call(elapsed)
        under_way = self.long_call is not None and elapsed >= self.long_started_at + 0.2
        if self.rotation is None and under_way:
            self._start_rotation()

    def _start_long_call(self, elapsed: float) -> None:
        self.long_started_at = elapsed
        self.emulator.inject(Fault(delay=self.long_seconds, passthrough=True), path=LONG_CALL_PATH)
        print(f"\n-- a {self.long_seconds:g}s report download starts", file=self.out)
        self.long_call = threading.Thread(target=self._download)
        self.long_call.start()

    def _download(self) -> None:
        url = self.emulator.api_base_url + LONG_CALL_PATH
        started = time.monotonic()
        with requests.Session() as session:
            session.auth = GenesysAuth(self.manager)
            try:
                response = session.get(url, timeout=(3.05, self.long_seconds + 10))
            except (requests.RequestException, OSError) as exc:
                self.tally.add("errors")
                self.long_outcome = f"failed: {type(exc).__name__}"
                return
        took = time.monotonic() - started
        self.tally.add("calls")
        self.tally.add("ok" if response.ok else f"status_{response.status_code}")
        sent = response.request.headers["Authorization"].removeprefix("Bearer ")
        if response.ok:
            self.long_token = fingerprint_of(sent)
        self.long_outcome = (
            f"{response.status_code} after {took:.1f}s, with token {fingerprint_of(sent)}"
        )

    def _start_rotation(self) -> None:
        old = self.manager.token
        self.revoked = old.fingerprint if old else ""
        print(f"\n-- rotate(revoke_previous=True) retires {self.revoked}", file=self.out)
        self.rotating.set()
        self.rotation = threading.Thread(target=self._rotate)
        self.rotation.start()

    def _rotate(self) -> None:
        try:
            self.manager.rotate(drain_timeout=self.long_seconds + 5, revoke_previous=True)
        except GenesysTokenError as exc:
            self.rotation_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.rotating.clear()

    def _on_rotation_event(self, record: dict[str, Any]) -> None:
        data = record["data"]
        if record["event_type"] == TOKEN_REFRESH_SUCCESS:
            if data.get("reason") == "rotation":
                print(
                    f"\n-- {record['token_fingerprint']} in place: new calls use it at once, "
                    "none is held",
                    file=self.out,
                )
            return
        self.drain = {"event": record["event_type"], **data}
        print(f"\n-- {record['event_type']}: {_drained(self.drain)}", file=self.out)

    def _on_revoked(self, record: dict[str, Any]) -> None:
        print(f"\n-- TOKEN_REVOKED {record['token_fingerprint']}", file=self.out)


def _drained(drain: dict[str, Any]) -> str:
    """The rotation's drain figures (TOKEN_DRAIN_* data) in a sentence."""
    if not drain:
        return "no drain"
    text = (
        f"drained {drain['drained']} of {drain['in_flight']} use(s) of the old token in "
        f"{drain['drain_seconds']:g}s (timeout {drain['timeout']:g}s)"
    )
    if drain.get("left"):
        text += f", {drain['left']} still in flight"
    return text


def _slowest_ms(values: list[float]) -> str:
    return f"{max(values) * 1000:.1f}" if values else "n/a"


def _p99_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1000:.1f}"


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
        script.rotation.join(script.long_seconds + 15)
    if script.long_call is not None:
        script.long_call.join(script.long_seconds + 15)
    failed = tally.get("calls") - tally.get("ok") + tally.get("errors")
    dead_token_calls = _api_401s(emulator)
    metrics: dict[str, Any] = manager.metrics()
    # The emulator checks a token when it answers: a 200 with the token the rotation
    # revoked means the revocation came after the download's answer.
    revoked = {fingerprint_of(token) for token in emulator.revoked_tokens}
    revoked_after_download = bool(script.long_token) and script.long_token in revoked
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
        ("rotation's drain", _drained(script.drain)),
        ("report download during the rotation", script.long_outcome or "not run"),
        (
            "old token revoked after the download's answer",
            "yes" if revoked_after_download else "no",
        ),
        ("calls started during the rotation", len(tally.during_rotation)),
        ("  slowest of them (ms)", _slowest_ms(tally.during_rotation)),
        (
            "  the other calls: p99 / slowest (ms)",
            f"{_p99_ms(tally.outside_rotation)} / {_slowest_ms(tally.outside_rotation)}",
        ),
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
