"""Shared pieces of the benchmarks: machine facts, rows of the table, small statistics."""

from __future__ import annotations

import os
import platform
import statistics
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

#: The peers, in table order. "reference" is each scenario's yardstick (floor, fixed header).
PEERS = ("genesys-token", "authlib", "requests-auth", "seed port")
COLUMNS = (*PEERS, "reference")


@dataclass
class Row:
    """One line of the final table: a measure and its value per column."""

    scenario: str
    measure: str
    values: dict[str, str]


@dataclass
class Chart:
    """One panel of the PNG: a bar per label."""

    title: str
    labels: list[str]
    values: list[float]
    log: bool = False
    ylabel: str = ""


@dataclass
class Section:
    """What one scenario produced: its table rows, chart panel, parameters and notes."""

    title: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the packages compared."""
    found = {}
    for name in ("genesys-token", "authlib", "requests-auth", "requests", "urllib3"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, str]:
    """Cores, CPU, Python and OS of this run."""
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
    }


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every timing."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine_line() -> str:
    """The machine in one line, for each scenario's header."""
    m = machine()
    return f"{m['cores']} cores, {m['cpu']}, {m['python']}, {m['os']}"


def print_header(title: str, params: dict[str, Any]) -> None:
    """Print a scenario's title, the machine and its parameters."""
    print(f"\n== {title}", flush=True)
    print(f"   machine: {machine_line()}; load average now {load_average()}")
    for key, value in params.items():
        print(f"   {key}: {value}")


def median(values: Iterable[float]) -> float:
    """The median (0.0 for no values)."""
    data = list(values)
    return statistics.median(data) if data else 0.0


def ratio(value: float, reference: float) -> float:
    """``value / reference``, or NaN when the reference is 0."""
    return value / reference if reference else float("nan")


def fmt_num(value: float, digits: int = 0) -> str:
    """A number with thousands separators."""
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def run_threads(count: int, target: Any, args: Sequence[Any] = ()) -> list[threading.Thread]:
    """Start ``count`` daemon threads running ``target(index, *args)``."""
    threads = [
        threading.Thread(target=target, args=(i, *args), daemon=True, name=f"bench-{i}")
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: Sequence[threading.Thread], timeout: float) -> int:
    """Join threads within one shared bound; returns how many are still alive."""
    import time

    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in threads)


class ThreadErrors:
    """Counts exceptions that escape threads (a peer's timer dying, for instance)."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: dict[str, int] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        """Route uncaught thread exceptions here instead of stderr tracebacks."""
        threading.excepthook = self._hook

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        name = args.exc_type.__name__
        with self._lock:
            self.count += 1
            self.kinds[name] = self.kinds.get(name, 0) + 1

    def take(self) -> int:
        """The count since the last call, then reset."""
        with self._lock:
            count, self.count = self.count, 0
            self.kinds = {}
            return count


THREAD_ERRORS = ThreadErrors()
