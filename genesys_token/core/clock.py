"""The SDK's clocks: token expiry on a clock that counts suspend, wall time for stores.

``time.monotonic()`` (CLOCK_MONOTONIC) stops while a machine is suspended or a VM is paused:
after an hour of suspend a token that expired half an hour ago would still look valid.
Linux's ``CLOCK_BOOTTIME`` keeps counting through suspend, so it decides expiry where the
platform has it; elsewhere ``time.monotonic()`` is the best there is.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SYSTEM_CLOCK", "Clock", "elapsed"]


def _suspend_counting_clock() -> Callable[[], float]:
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:  # pragma: no cover - not Linux
        return time.monotonic
    try:
        time.clock_gettime(clock_id)
    except OSError:  # pragma: no cover - a kernel without it
        return time.monotonic
    # A partial of a builtin: no Python frame on the hot path.
    return functools.partial(time.clock_gettime, clock_id)


#: Seconds on a clock that never goes back and counts suspend where the OS can.
elapsed: Callable[[], float] = _suspend_counting_clock()


@dataclass(frozen=True)
class Clock:
    """The clocks and the randomness the SDK uses; tests pass their own to be deterministic.

    Attributes:
        monotonic: Decides expiry and refresh points (default: :data:`elapsed`, which counts
            suspend where the OS can).
        time: Wall-clock epoch seconds, for shared stores and ``Retry-After`` dates.
        random: A uniform draw in [0, 1), for jitter.
    """

    monotonic: Callable[[], float] = elapsed
    time: Callable[[], float] = time.time
    random: Callable[[], float] = random.random


SYSTEM_CLOCK = Clock()
