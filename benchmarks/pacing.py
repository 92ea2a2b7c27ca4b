"""What pacing adds to a counted call when the token has room, in one process.

The baseline loop is what every counted call already costs (a use begun and ended on a
``UseGate``); the paced loop is the same plus a pacer slot taken and released. The window is
short (0.5 ms for 1000 calls) so the loop runs at full speed with room nearly always, and
the pruning of expired answer times is paid as it would be in use.

Run: ``PYTHONPATH=. python benchmarks/pacing.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from genesys_token.core.pacing import Pacer
from genesys_token.core.uses import UseGate

CALLS = 200_000
ROUNDS = 7
KEY = "3fa2c1d9e0b4"
TOKEN = "t" * 86  # a Genesys token's length


def _baseline(gate: UseGate) -> Callable[[], None]:
    def loop() -> None:
        current = TOKEN.__eq__
        for _ in range(CALLS):
            use = gate.begin(TOKEN, current)
            assert use is not None
            use.end()

    return loop


def _paced(gate: UseGate, pacer: Pacer) -> Callable[[], None]:
    def loop() -> None:
        current = TOKEN.__eq__
        acquire = pacer.acquire
        for _ in range(CALLS):
            slot = acquire(KEY)
            use = gate.begin(TOKEN, current)
            assert use is not None
            use.end()
            slot.release()

    return loop


def _per_call_us(loop: Callable[[], None]) -> float:
    start = time.perf_counter()
    loop()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    """Print the per-call cost with and without pacing, rounds interleaved."""
    gate = UseGate()
    pacer = Pacer(1000, 0.0005)
    base, paced = _baseline(gate), _paced(gate, pacer)
    base_us, paced_us = [], []
    for _ in range(ROUNDS):
        base_us.append(_per_call_us(base))
        paced_us.append(_per_call_us(paced))
    b, p = statistics.median(base_us), statistics.median(paced_us)
    figures = pacer.metrics()
    print(f"counted call without pacing: {b:.3f} us")
    print(f"counted call with pacing:    {p:.3f} us")
    print(f"pacing adds {p - b:.3f} us per call (ratio {p / b:.2f}x; target <= 5 us)")
    print(f"calls paced {figures['calls_paced']}, of which waited {figures['calls_waited']}")


if __name__ == "__main__":
    main()
