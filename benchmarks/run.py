"""``make bench``: genesys-token measured side by side with its peers, in one run.

Scenarios (each prints its parameters, the machine, medians and ratios):

1. Hot path: ``get_token()`` with a valid token vs a floor, 1 and 8 threads.
2. Auth overhead: requests/s through each peer's auth vs a fixed Authorization header.
3. Cold-start herd: 500 threads need a token at once; token requests per peer.
4. Rotation under load: 32 threads, 2-second tokens; failed calls and 401s per peer.
5. Fleet: processes sharing a FileStore / RedisStore vs none (``bench_fleet.py``).
6. Memory: RSS after many refreshes vs after the first thousand.
7. Many orgs: 1,000 and 10,000 managers in one pool (threads, sockets, RSS per manager,
   first tokens), short tokens for 300 orgs, 16 orgs whose login host or secret source hangs
   (``_many_orgs.py``; genesys-token only: no peer has a many-org design).
8. Throughput: API calls under Genesys' per-token limit (time-scaled), paced and not, one
   process and fleets on FileStore / RedisStore, the cost of pacing (``_throughput.py``).

Peers: genesys-token, authlib (OAuth2Session), requests-auth (OAuth2ClientCredentials) and
the seed port (``seed_port.py``, the original design, defects included). Nothing asserts a
time: the exit status is non-zero only when a scenario crashes.

Usage::

    python benchmarks/run.py [--quick] [--out DIR] [--rotation-seconds S]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: The whole of ``make bench`` must fit in 5 minutes on 2 cores; this leaves ~30 s for
#: pip and interpreter start-up.
TOTAL_BUDGET = 270.0
#: Scenario 4's intended length per peer; the full plan runs less to fit the budget.
ASKED_ROTATION_SECONDS = 20.0
#: Scenario 7's length with the full plan (10,000 first tokens are most of it).
MANY_ORGS_SECONDS = 55.0
#: Scenario 8's seconds per case with the full plan (four cases, plus start-ups: ~35 s).
THROUGHPUT_SECONDS = 4.0
THROUGHPUT_TOTAL = 35.0
#: Quiet loggers: their warnings (a peer's failed refresh) are counted, not printed.
QUIET_LOGGERS = ("genesys_token", "seed_port", "urllib3", "authlib", "requests_auth")


@dataclass(frozen=True)
class Plan:
    """How big each scenario is."""

    hot_calls: int
    hot_repeats: int
    overhead_calls: int
    overhead_repeats: int
    herd_threads: int
    herd_repeats: int
    token_latency: float
    rotation_threads: int
    rotation_seconds: float
    rotation_ttl: float
    rotation_early: float
    fleet_processes: int
    fleet_lifetimes: int
    memory_warm: int
    memory_goal: int
    memory_budget: float


FULL = Plan(
    hot_calls=100_000, hot_repeats=5, overhead_calls=1_000, overhead_repeats=5,
    herd_threads=500, herd_repeats=3, token_latency=0.02,
    rotation_threads=32, rotation_seconds=15.0, rotation_ttl=2.0, rotation_early=0.5,
    fleet_processes=4, fleet_lifetimes=3,
    memory_warm=1_000, memory_goal=100_000, memory_budget=6.0,
)  # fmt: skip
QUICK = Plan(
    hot_calls=2_000, hot_repeats=1, overhead_calls=20, overhead_repeats=1,
    herd_threads=20, herd_repeats=1, token_latency=0.005,
    rotation_threads=4, rotation_seconds=1.0, rotation_ttl=2.0, rotation_early=0.5,
    fleet_processes=2, fleet_lifetimes=1,
    memory_warm=20, memory_goal=60, memory_budget=0.2,
)  # fmt: skip


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (smoke)")
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "docs", help="where benchmarks.md/.png go"
    )
    parser.add_argument(
        "--rotation-seconds", type=float, default=None, help="scenario 4 duration per peer"
    )
    return parser.parse_args(argv)


def _rotation_seconds(plan: Plan, elapsed: float, override: float | None) -> tuple[float, str]:
    """Scenario 4's duration per peer: the plan's, or shorter to fit the total budget."""
    if override is not None:
        return override, " (set by --rotation-seconds)"
    # What is left after scenarios 5, 6 and 7 (measured: ~25 s, ~45 s and ~55 s on 2 cores).
    later = 3 * (plan.fleet_lifetimes * 2.0 + 2.0) + 4 * (plan.memory_budget + 3.0)
    later += MANY_ORGS_SECONDS + THROUGHPUT_TOTAL if plan is FULL else 0.0
    from _rotation_latency import COST_SECONDS  # scenario 4's latency-during-rotation part

    available = (TOTAL_BUDGET - elapsed - later - COST_SECONDS) / 4 - 2.0  # 4 peers, ~2 s each
    seconds = plan.rotation_seconds
    if available < seconds and plan is not QUICK:
        seconds = max(5.0, round(available))
    if plan is QUICK or seconds >= ASKED_ROTATION_SECONDS:
        return seconds, ""
    return seconds, (
        f" (shortened from {ASKED_ROTATION_SECONDS:g} s per peer to keep make bench, "
        "venv set-up included, under 5 minutes on 2 cores)"
    )


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table, write the Markdown and the chart."""
    args = _parse(argv)
    plan = QUICK if args.quick else FULL
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False

    import _fleet
    import _herd
    import _hotpath
    import _many_orgs
    import _memory
    import _overhead
    import _report
    import _rotation
    import _throughput
    from _common import THREAD_ERRORS, Section, load_average, machine_line
    from _peers import Target
    from _servers import EmulatorProcess

    THREAD_ERRORS.install()
    started, clock = datetime.now(timezone.utc), time.monotonic()
    load_at_start = load_average()
    print(f"genesys-token benchmarks{' (--quick)' if args.quick else ''}")
    print(f"machine: {machine_line()}; load average {load_average()}")
    sections: list[Section] = []
    crashed: list[str] = []

    def attempt(label: str, fn: object) -> None:
        began = time.monotonic()
        try:
            sections.append(fn())  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - report it, keep going, fail at the end
            crashed.append(label)
            print(f"\n!! scenario {label} crashed:\n{traceback.format_exc()}", file=sys.stderr)
        print(f"   (scenario {label} took {time.monotonic() - began:.0f} s)", flush=True)

    with EmulatorProcess(token_format="jwt") as emulator:
        target = Target(emulator.token_url, emulator.url, emulator.client_id,
                        emulator.client_secret)  # fmt: skip
        short = replace(target, early=plan.rotation_early)
        attempt("1", lambda: _hotpath.run(target, calls=plan.hot_calls, repeats=plan.hot_repeats))
        attempt("2", lambda: _overhead.run(
            target, calls=plan.overhead_calls, repeats=plan.overhead_repeats))  # fmt: skip
        attempt("3", lambda: _herd.run(
            emulator, target, threads=plan.herd_threads, repeats=plan.herd_repeats,
            latency=plan.token_latency))  # fmt: skip
        seconds, why = _rotation_seconds(plan, time.monotonic() - clock, args.rotation_seconds)
        attempt("4", lambda: _rotation.run(
            emulator, short, threads=plan.rotation_threads, seconds=seconds,
            ttl=plan.rotation_ttl, latency=plan.token_latency, shortened=why))  # fmt: skip
    attempt("5", lambda: _fleet.run(
        processes=plan.fleet_processes, lifetimes=plan.fleet_lifetimes))  # fmt: skip
    attempt("6", lambda: _memory.run(
        warm=plan.memory_warm, goal=plan.memory_goal, budget=plan.memory_budget))  # fmt: skip
    attempt("7", lambda: _many_orgs.run(_many_orgs.QUICK if args.quick else _many_orgs.FULL))
    attempt("8", lambda: _throughput.run(
        seconds=1.0 if args.quick else THROUGHPUT_SECONDS, quick=args.quick))  # fmt: skip

    elapsed = time.monotonic() - clock
    print(f"\n== Results ({elapsed:.0f} s)\n")
    print(_report.text_table(sections))
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    md = _report.markdown(sections, started=started, elapsed=elapsed, quick=args.quick,
                          argv=command, load=f"{load_at_start} / {load_average()}")  # fmt: skip
    (args.out / "benchmarks.md").write_text(md, encoding="utf-8")
    _report.chart(sections, args.out / "benchmarks.png", subtitle=machine_line())
    print(f"\nwrote {args.out / 'benchmarks.md'} and {args.out / 'benchmarks.png'}")
    if crashed:
        print(f"scenario(s) crashed: {', '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
