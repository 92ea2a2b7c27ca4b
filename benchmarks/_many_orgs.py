"""Scenario 7: many orgs in one process, one TokenManagerPool.

Every measurement runs in a fresh spawned process (its threads, sockets and RSS are its
own) against the emulator in another process, which has one OAuth client per org:

* N managers (1,000 and 10,000): extra threads and sockets to the login host at the peak
  of a cold start and once every org has its token, RSS per manager, time until every org
  has its first token (16 caller threads, as an application's request handlers would be);
* short tokens: 300 orgs on 3-second tokens for 8 s, 8 caller threads calling
  ``get_token()`` on every org in turn: the share of hand-outs that were valid (checked
  against the emulator's own expiry of each token), the worst ``get_token()`` latency, the
  refreshes by reason (``background``: the scheduler; anything else: a caller waited), and
  how late the refreshes started after their planned point;
* the same with 50 healthy orgs next to 16 hanging ones: 8 whose login host answers their
  token requests only after 20 s (never within the run) and 8 whose secret source (a
  callable ``client_secret``, as a vault client with no timeout) gives the first token's
  secret, then blocks until the run ends. For the healthy orgs: refreshes done by callers
  (must be 0) and how late their refreshes were, against 50 orgs without the hanging ones.
  Halfway through, the 16 hanging managers are closed (their threads still blocked): the
  healthy orgs must go on being refreshed by the scheduler. At the end the blocked sources
  are released and their threads must end.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from _common import Chart, Row, Section, fmt_num, print_header
from _servers import EmulatorProcess

#: Application threads asking for first tokens in the cold start.
COLD_CALLERS = 16
#: Application threads calling get_token() in the short-token runs.
READERS = 8
#: A get_token() slower than this counts as blocked (a loopback token request takes
#: ~1 ms; the GIL alone can hold a call for a switch interval, 5 ms).
BLOCKED_SECONDS = 0.050
CHILD_TIMEOUT = 240.0
#: Readers pause this long after each round of get_token() over every org. Without any
#: pause, 8 threads spinning on pure-Python calls starve the scheduler's threads of the
#: GIL (each of a token request's ~20 GIL hand-overs then waits a switch interval per
#: spinning thread), which measures the GIL, not the library; no application spins so.
PAUSE = 0.001
TITLE = "7. Many orgs: one pool, one scheduler, shared connections"


@dataclass(frozen=True)
class Plan:
    """How big the scenario is."""

    counts: tuple[int, ...]
    short_orgs: int
    short_seconds: float
    short_ttl: float
    #: Healthy orgs of the hanging run (and of the calm run it is compared with).
    hang_orgs: int
    #: How long the login host of each hanging-host org takes to answer.
    hang_delay: float
    #: Length of the hanging run and of the calm run. The hanging managers are closed
    #: halfway: after every healthy org's first refresh (65-75% of short_ttl) came due
    #: while they hung, with another one of each still to come.
    hang_seconds: float
    #: Orgs whose login host hangs, and orgs whose secret source hangs.
    hang_hosts: int = 8
    hang_sources: int = 8


FULL = Plan(counts=(1_000, 10_000), short_orgs=300, short_seconds=8.0, short_ttl=3.0,
            hang_orgs=50, hang_delay=20.0, hang_seconds=8.0)  # fmt: skip
QUICK = Plan(counts=(50,), short_orgs=20, short_seconds=2.5, short_ttl=2.0,
             hang_orgs=5, hang_delay=5.0, hang_seconds=4.0)  # fmt: skip
#: The hanging orgs get their first tokens this share of short_ttl before the healthy ones:
#: their refreshes (at 65-75% of the lifetime) all hang before the first healthy one is due.
HANG_LEAD = 0.25
#: Prefixes of the hanging orgs' client ids (fetch threads are named after the client id).
HANG_HOST = "hanghost-"
HANG_SOURCE = "hangsrc-"
#: How long the child waits for the released sources' threads to end.
RELEASE_JOIN = 2.0


# -- in the measuring child -------------------------------------------------------------


def _login_sockets(process: Any, port: int) -> int:
    return sum(
        1
        for c in process.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
    )


class _Peaks:
    """Samples threads and sockets every 10 ms in a thread of its own (not counted)."""

    def __init__(self, process: Any, port: int) -> None:
        self.threads = 0
        self.sockets = 0
        self._process, self._port = process, port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.threads = max(self.threads, threading.active_count() - 1)
            self.sockets = max(self.sockets, _login_sockets(self._process, self._port))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def _cold_start(count: int, urls: tuple[str, str], prefix: str) -> dict[str, Any]:
    import psutil

    from genesys_token import TokenManagerPool

    token_url, api_url = urls
    port = int(token_url.split(":")[2].split("/")[0])
    process = psutil.Process()
    threads_before = threading.active_count()
    pool = TokenManagerPool(token_url=token_url, api_base_url=api_url)
    pool.get(f"{prefix}warm0", f"{prefix}warm0-secret").get_token()  # imports, pools, caches
    gc.collect()
    rss_before = process.memory_info().rss
    managers = [pool.get(f"{prefix}{i}", f"{prefix}{i}-secret") for i in range(count)]
    peaks = _Peaks(process, port)
    began = time.perf_counter()

    def first_tokens(k: int) -> None:
        for manager in managers[k::COLD_CALLERS]:
            manager.get_token()

    callers = [threading.Thread(target=first_tokens, args=(k,)) for k in range(COLD_CALLERS)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    seconds = time.perf_counter() - began
    time.sleep(0.2)  # fetch threads of the last waiters end
    peaks.stop()
    gc.collect()
    result = {
        "count": count,
        "seconds": seconds,
        "rss_per_manager": (process.memory_info().rss - rss_before) / count,
        "threads_after": threading.active_count() - threads_before,
        "threads_peak": peaks.threads - threads_before - COLD_CALLERS,
        "sockets_after": _login_sockets(process, port),
        "sockets_peak": peaks.sockets,
        "token_requests": pool.metrics()["totals"]["token_requests"],
    }
    pool.close()
    return result


class _HangingSource:
    """A secret source that gives its secret until ``hang`` is set, then blocks until
    ``release`` is (a vault client with no timeout during an outage)."""

    def __init__(self, secret: str, hang: threading.Event, release: threading.Event) -> None:
        self.secret = secret
        self.hang, self.release = hang, release
        self.blocked = 0

    def __call__(self) -> str:
        if self.hang.is_set():
            self.blocked += 1
            self.release.wait()
        return self.secret


def _fetch_threads(prefix: str) -> list[threading.Thread]:
    """The live flight threads of the orgs whose client id starts with ``prefix``."""
    name = f"genesys-token-fetch-{prefix}"
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def _short_tokens(
    ready: Callable[[], None],
    orgs: int,
    seconds: float,
    urls: tuple[str, str],
    prefix: str,
    hang: tuple[int, int, float] | None,
) -> dict[str, Any]:
    """``orgs`` healthy orgs read by :data:`READERS` threads for ``seconds``; with ``hang``
    (hanging-host orgs, hanging-source orgs, lead), those too, closed halfway. The hanging
    orgs get their first tokens ``lead`` seconds before the healthy ones: all of them hang
    before the first healthy refresh is due."""
    import psutil

    from genesys_token import TokenManagerPool
    from genesys_token.core.clock import elapsed
    from genesys_token.observability.events import TOKEN_REFRESH_SUCCESS

    token_url, api_url = urls
    port = int(token_url.split(":")[2].split("/")[0])
    pool = TokenManagerPool(token_url=token_url, api_base_url=api_url)
    managers = [pool.get(f"{prefix}{i}", f"{prefix}{i}-secret") for i in range(orgs)]
    # Healthy orgs' refreshes: (planned point, reason, how late after it or None).
    refreshes: list[tuple[float, str, float | None]] = []
    lock = threading.Lock()

    measuring = threading.Event()

    def watch(manager: Any) -> Callable[[dict[str, Any]], None]:
        planned = [0.0]  # the measurement reads the plan; no API for it

        def on_success(record: dict[str, Any]) -> None:
            now = elapsed()
            if measuring.is_set():
                reason = record["data"]["reason"]
                late = now - planned[0] if reason == "background" else None
                with lock:
                    refreshes.append((planned[0], reason, late))
            planned[0] = manager._flight.cell.refresh_at

        return on_success

    hosts, sources, lead = hang if hang is not None else (0, 0, 0.0)
    hanging_now, release = threading.Event(), threading.Event()
    hung_hosts = [pool.get(f"{HANG_HOST}{i}", f"{HANG_HOST}{i}-secret") for i in range(hosts)]
    secrets = [_HangingSource(f"{HANG_SOURCE}{i}-secret", hanging_now, release)
               for i in range(sources)]  # fmt: skip
    hung_sources = [pool.get(f"{HANG_SOURCE}{i}", s) for i, s in enumerate(secrets)]
    hung = hung_hosts + hung_sources
    for manager in hung:
        manager.get_token()  # its first token; its first refresh hangs
    for thread in _fetch_threads(HANG_HOST) + _fetch_threads(HANG_SOURCE):
        thread.join(5)
    hanging_now.set()  # every later read of a hanging source blocks until the end
    ready()  # the parent puts the hanging hosts in place before their first refresh
    time.sleep(lead)
    for manager in managers:
        # Subscribed first: a first token's event is delivered once its callers are released,
        # which may be after get_token() returned; it is not counted (measuring is not set).
        manager.on(TOKEN_REFRESH_SUCCESS, watch(manager))
        manager.get_token()
    for thread in _fetch_threads(prefix):  # the first tokens' events are delivered
        thread.join(5)
    measuring.set()
    handouts: list[dict[str, list[float]]] = [{} for _ in range(READERS)]
    worst = [0.0] * READERS
    blocked = [0] * READERS
    calls = [0] * READERS
    stop = threading.Event()
    started = threading.Barrier(READERS + 1)

    def read(k: int) -> None:
        seen = handouts[k]
        started.wait()
        order = managers[k:] + managers[:k]
        while not stop.is_set():
            for manager in order:
                t0 = time.monotonic()
                token = manager.get_token()
                t1 = time.monotonic()
                spent = t1 - t0
                if spent > worst[k]:
                    worst[k] = spent
                if spent > BLOCKED_SECONDS:
                    blocked[k] += 1
                times = seen.get(token)
                if times is None:
                    seen[token] = [1, t1]
                else:
                    times[0] += 1
                    times[1] = t1
            calls[k] += len(order)
            time.sleep(PAUSE)  # what an application does between rounds: its API calls

    readers = [threading.Thread(target=read, args=(k,)) for k in range(READERS)]
    for reader in readers:
        reader.start()
    started.wait()
    began = time.perf_counter()
    process = psutil.Process()
    peaks = _Peaks(process, port)
    closed_at: float | None = None
    close_seconds = 0.0
    at_close: dict[str, int] = {}
    if hung:
        time.sleep(seconds / 2)
        at_close = {
            "host_threads": len(_fetch_threads(HANG_HOST)),
            "source_threads": len(_fetch_threads(HANG_SOURCE)),
            "source_blocked": sum(s.blocked for s in secrets),
            # successes + errors since the first token: a hanging refresh that ended
            "host_finished": sum(m.metrics()["successes"] + m.metrics()["errors"] - 1
                                 for m in hung_hosts),
            "source_finished": sum(m.metrics()["successes"] + m.metrics()["errors"] - 1
                                   for m in hung_sources),
        }  # fmt: skip
        closed_at = elapsed()
        t0 = time.perf_counter()
        for manager in hung:
            manager.close()
        close_seconds = time.perf_counter() - t0
        time.sleep(seconds - seconds / 2)
    else:
        time.sleep(seconds)
    stop.set()
    for reader in readers:
        reader.join()  # a reader blocked in get_token() ends its call first
    ran = time.perf_counter() - began
    peaks.stop()
    # A refresh not done by now counts with its lateness so far (else a refresh that never
    # ends would not count at all).
    with lock:
        done = list(refreshes)
    now = elapsed()
    pending = [cell.refresh_at for manager in managers
               if (cell := manager._flight.cell) is not None and now > cell.refresh_at]  # fmt: skip
    overdue = [now - at for at in pending]
    # Every token's last hand-out against its expiry at the emulator: a token handed out
    # after it expired counts all its hand-outs as invalid (a bound, not an estimate).
    merged: dict[str, list[float]] = {}
    for seen in handouts:
        for token, (count, last) in seen.items():
            entry = merged.setdefault(token, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], last)
    reasons: dict[str, int] = {}
    for _, reason, _ in done:
        reasons[reason] = reasons.get(reason, 0) + 1
    lateness = sorted([*(late for _, _, late in done if late is not None), *overdue])
    # Refreshes due after the close (one held up by the hanging orgs is not one of them).
    after = [(reason, late) for due, reason, late in done
             if closed_at is not None and due >= closed_at]  # fmt: skip
    held = sum(1 for due, _, late in done if closed_at is not None and due < closed_at
               and late is not None and due + late >= closed_at)  # fmt: skip
    end = {
        "host_threads": len(_fetch_threads(HANG_HOST)),
        "source_threads": len(_fetch_threads(HANG_SOURCE)),
    }
    pool.close()
    release.set()  # the blocked sources return: their threads must end now
    for thread in _fetch_threads(HANG_SOURCE):
        thread.join(RELEASE_JOIN)
    end["source_threads_after_release"] = len(_fetch_threads(HANG_SOURCE))
    return {
        "orgs": orgs,
        "ran": ran,
        "overdue": len(overdue),
        "calls": sum(calls),
        "tokens": list(merged),
        "last": [merged[t][1] for t in merged],
        "counts": [merged[t][0] for t in merged],
        "worst": max(worst),
        "blocked": sum(blocked),
        "reasons": reasons,
        "lateness_max": lateness[-1] if lateness else 0.0,
        "lateness_p50": lateness[len(lateness) // 2] if lateness else 0.0,
        "threads_peak": peaks.threads - READERS - 1,
        "sockets_peak": peaks.sockets,
        "closed_after": None if closed_at is None else seconds / 2,
        "close_seconds": close_seconds,
        "after_background": sum(1 for reason, _ in after if reason == "background"),
        "after_callers": sum(1 for reason, _ in after if reason != "background"),
        "held_past_close": held,
        "after_lateness_max": max(
            [
                *(late for _, late in after if late is not None),
                *(now - at for at in pending if closed_at is not None and at >= closed_at),
            ],
            default=0.0,
        ),
        "at_close": at_close,
        "end": end,
    }


def _child(conn: Connection, kind: str, args: tuple[Any, ...]) -> None:
    import sys

    sys.setswitchinterval(0.005)

    def ready() -> None:
        conn.send({"ready": True})
        conn.recv()

    try:
        if kind == "cold":
            conn.send(_cold_start(*args))
        else:
            conn.send(_short_tokens(ready, *args))
    except BaseException as exc:  # noqa: BLE001 - report it to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def _in_child(kind: str, *args: Any, on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child, kind, args), daemon=True)
    process.start()
    try:
        while True:
            if not parent.poll(CHILD_TIMEOUT):
                raise RuntimeError(f"many-orgs run {kind} did not finish in time")
            result: dict[str, Any] = parent.recv()
            if "ready" not in result:
                break
            if on_ready is not None:
                on_ready()
            parent.send(None)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    if "error" in result:
        raise RuntimeError(f"many-orgs run {kind} failed: {result['error']}")
    return result


# -- in the benchmark process -------------------------------------------------------------


def _validity(emulator: EmulatorProcess, run: dict[str, Any]) -> tuple[int, int]:
    """(hand-outs, of which invalid) for a short-token run."""
    expiries = emulator.call("token_expiries", run["tokens"])
    invalid = sum(
        count
        for count, last, expiry in zip(run["counts"], run["last"], expiries, strict=True)
        if expiry is None or last >= expiry
    )
    return sum(run["counts"]), invalid


def run(plan: Plan) -> Section:
    """Run every part of the scenario and report it."""
    hanging = plan.hang_hosts + plan.hang_sources
    params = {
        "orgs": " and ".join(fmt_num(n) for n in plan.counts) + " managers in one "
        f"TokenManagerPool; first tokens asked by {COLD_CALLERS} application threads",
        "short tokens": f"{plan.short_orgs} orgs on {plan.short_ttl:g} s tokens for "
        f"{plan.short_seconds:g} s, {READERS} threads calling get_token() on each in turn",
        "hanging orgs": f"{plan.hang_orgs} healthy orgs on {plan.short_ttl:g} s tokens read "
        f"as above for {plan.hang_seconds:g} s, in one pool with {plan.hang_hosts} orgs whose "
        f"login host answers their token requests after {plan.hang_delay:g} s and "
        f"{plan.hang_sources} whose secret source (a callable client_secret) blocks after "
        f"their first token (taken {HANG_LEAD * plan.short_ttl:g} s before the healthy "
        f"orgs': all hang before the first healthy refresh is due); the {hanging} are "
        f"closed after {plan.hang_seconds / 2:g} s of reading, "
        "their sources released at the end; compared with "
        f"{plan.hang_orgs} orgs alone for {plan.hang_seconds:g} s",
        "server": "the emulator in its own process, one OAuth client per org (loopback)",
        "isolation": "each run in a fresh spawned process: its threads, sockets, RSS only",
        "blocked": f"a get_token() over {BLOCKED_SECONDS * 1000:g} ms",
    }
    section = Section(TITLE, params)
    print_header(section.title, params)
    with EmulatorProcess(token_ttl=86399) as emulator:
        urls = (emulator.token_url, emulator.url)
        colds = []
        for count in plan.counts:
            prefix = f"org{count}-"
            emulator.call("add_clients", prefix, count, None)
            emulator.call("add_clients", f"{prefix}warm", 1, None)
            colds.append(_in_child("cold", count, urls, prefix))
        short_ttl = plan.short_ttl
        emulator.call("add_clients", "short-", plan.short_orgs, short_ttl)
        short = _in_child("short", plan.short_orgs, plan.short_seconds, urls, "short-", None)
        emulator.call("add_clients", "calm-", plan.hang_orgs, short_ttl)
        calm = _in_child("short", plan.hang_orgs, plan.hang_seconds, urls, "calm-", None)
        emulator.call("add_clients", "hang-", plan.hang_orgs, short_ttl)
        emulator.call("add_clients", HANG_HOST, plan.hang_hosts, short_ttl)
        emulator.call("add_clients", HANG_SOURCE, plan.hang_sources, short_ttl)
        hang = _in_child(
            "short", plan.hang_orgs, plan.hang_seconds, urls, "hang-",
            (plan.hang_hosts, plan.hang_sources, HANG_LEAD * short_ttl),
            on_ready=lambda: emulator.call(
                "hang_clients", HANG_HOST, plan.hang_hosts, plan.hang_delay),
        )  # fmt: skip
        short_valid = _validity(emulator, short)
        hang_valid = _validity(emulator, hang)
    label = f"{plan.hang_orgs} orgs + {hanging} hanging"
    _report(section, plan, colds, short, short_valid, (label, hang, hang_valid))
    _report_hanging(section, plan, hang, calm)
    return section


def _report_hanging(
    section: Section, plan: Plan, hang: dict[str, Any], calm: dict[str, Any]
) -> None:
    """The headline of the hanging run: the healthy orgs against the calm run, and after
    the hanging managers were closed."""
    n, hanging = plan.hang_orgs, plan.hang_hosts + plan.hang_sources
    callers = sum(v for k, v in hang["reasons"].items() if k != "background")
    ratio = hang["lateness_max"] / calm["lateness_max"] if calm["lateness_max"] else 0.0
    at_close, end = hang["at_close"], hang["end"]
    line = (
        f"hanging orgs: the {n} healthy orgs had {hang['reasons'].get('background', 0)} "
        f"refreshes by the scheduler and {callers} by callers next to {plan.hang_hosts} "
        f"orgs with a hanging login host and {plan.hang_sources} with a hanging secret "
        f"source; their worst refresh was done {_ms(hang['lateness_max'])} after its planned "
        f"point (median {_ms(hang['lateness_p50'])}; {hang['overdue']} still not done at the "
        f"end, counted so far) vs {_ms(calm['lateness_max'])} (median "
        f"{_ms(calm['lateness_p50'])}) for {n} orgs alone (x{ratio:.2f}); worst get_token() "
        f"{_ms(hang['worst'])} vs {_ms(calm['worst'])}; the {plan.hang_seconds:g} s of "
        f"reading took {hang['ran']:.1f} s (a reader ends the call it is in). At "
        f"{hang['closed_after']:g} s the hanging orgs held {at_close['host_threads']} + "
        f"{at_close['source_threads']} flight threads ({at_close['source_blocked']} source "
        f"calls blocked; refreshes ended: {at_close['host_finished']} + "
        f"{at_close['source_finished']}); closing the {hanging} took "
        f"{_ms(hang['close_seconds'])}; {hang['held_past_close']} healthy refresh(es) due "
        f"before the close ended after it; of those due after it, "
        f"{hang['after_background']} were done by the scheduler (worst "
        f"{_ms(hang['after_lateness_max'])} late) and {hang['after_callers']} by callers. "
        f"At the end {end['host_threads']} + {end['source_threads']} of those threads were "
        f"still running; once the sources were released, {end['source_threads_after_release']} "
        f"source thread(s) were left after {RELEASE_JOIN:g} s (the host ones end when the "
        "endpoint answers or their request's deadline passes)"
    )
    print(f"   {line}")
    section.notes.append(line)
    rows = [
        (f"{n} orgs: worst refresh lateness with {hanging} hanging orgs / without",
         f"{_ms(hang['lateness_max'])} / {_ms(calm['lateness_max'])}",
         "no delay from the hanging orgs"),
        (f"{n} orgs: refreshes due after closing the {hanging} hanging at "
         f"{hang['closed_after']:g} s, by the scheduler / by callers; worst lateness",
         f"{hang['after_background']} / {hang['after_callers']}; "
         f"{_ms(hang['after_lateness_max'])}", "scheduler > 0, callers: 0; as without them"),
        (f"close() of the {hanging} hanging managers, their threads still blocked",
         _ms(hang["close_seconds"]), "at once: nothing waits for their threads"),
        (f"{plan.hang_sources} hanging sources: threads left {RELEASE_JOIN:g} s after release",
         str(end["source_threads_after_release"]), "0"),
    ]  # fmt: skip
    for measure, value, reference in rows:
        section.rows.append(
            Row(section.title, measure, {"genesys-token": value, "reference": reference})
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _report(
    section: Section,
    plan: Plan,
    colds: list[dict[str, Any]],
    short: dict[str, Any],
    short_valid: tuple[int, int],
    hanging: tuple[str, dict[str, Any], tuple[int, int]],
) -> None:
    print(
        f"   {'managers':>9}{'first tokens':>14}{'tokens/s':>10}{'threads':>9}{'peak':>6}"
        f"{'sockets':>9}{'peak':>6}{'RSS/manager':>13}{'requests':>10}"
    )
    for r in colds:
        print(
            f"   {r['count']:>9,}{r['seconds']:>12.2f} s{r['count'] / r['seconds']:>10,.0f}"
            f"{r['threads_after']:>9}{r['threads_peak']:>6}{r['sockets_after']:>9}"
            f"{r['sockets_peak']:>6}{r['rss_per_manager'] / 1024:>10.1f} KiB"
            f"{r['token_requests']:>10,}"
        )
        n = f"{r['count']:,}"
        rows = [
            (f"{n} orgs: extra threads after / peak of cold start",
             f"{r['threads_after']} / {r['threads_peak']}",
             "issue 14: <= 8 (1 scheduler + workers); before: 1 per manager"),
            (f"{n} orgs: sockets to the login host after / peak",
             f"{r['sockets_after']} / {r['sockets_peak']}", "issue 14: <= 8"),
            (f"{n} orgs: RSS per manager", f"{r['rss_per_manager'] / 1024:.1f} KiB",
             "issue 14: <= 16 KiB; before: ~74 KiB"),
            (f"{n} orgs: time to first token for all", f"{r['seconds']:.2f} s "
             f"({r['count'] / r['seconds']:,.0f} tokens/s)", "8 requests at once per host"),
        ]  # fmt: skip
        for measure, value, reference in rows:
            section.rows.append(
                Row(section.title, measure, {"genesys-token": value, "reference": reference})
            )
    for label, run, (total, invalid) in (
        (f"{plan.short_orgs} orgs, {plan.short_ttl:g} s tokens", short, short_valid),
        hanging,
    ):
        valid = 100.0 * (total - invalid) / total if total else float("nan")
        others = sum(v for k, v in run["reasons"].items() if k != "background")
        print(
            f"   {label}: {total:,} hand-outs, {valid:.4f}% valid, worst get_token() "
            f"{_ms(run['worst'])}, {run['blocked']} over {_ms(BLOCKED_SECONDS)}; refreshes "
            f"{run['reasons']}; refresh done after its plan: median "
            f"{_ms(run['lateness_p50'])}, worst {_ms(run['lateness_max'])}; "
            f"threads peak {run['threads_peak']}, sockets peak {run['sockets_peak']}"
        )
        cells = [
            (f"{label}: valid hand-outs", f"{valid:.4f}% of {total:,}", "must be 100%"),
            (f"{label}: worst get_token() / blocked calls",
             f"{_ms(run['worst'])} / {run['blocked']}", "no call waits for the network"),
            (f"{label}: refreshes by the scheduler / by callers",
             f"{run['reasons'].get('background', 0):,} / {others}", "callers: 0"),
            (f"{label}: refresh done after its planned point, worst",
             _ms(run["lateness_max"]), "within the token's 25% refresh margin"),
        ]  # fmt: skip
        for measure, value, reference in cells:
            section.rows.append(
                Row(section.title, measure, {"genesys-token": value, "reference": reference})
            )
    section.notes.append(
        "peak threads of a cold start include one fetch thread per application thread "
        "waiting for a first token (they end with the fetch); the steady state has only "
        "the scheduler's one thread"
    )
    section.charts.append(
        Chart(
            "Many orgs: RSS per manager (KiB, lower is better)",
            [f"{r['count']:,} orgs" for r in colds],
            [r["rss_per_manager"] / 1024 for r in colds],
            ylabel="KiB",
        )
    )
