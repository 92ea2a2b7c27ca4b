"""Waiting for a pacing slot on an event loop: without blocking it, without a thread."""

from __future__ import annotations

import asyncio

from ..core.port import AdapterPort
from ..core.uses import InFlight

#: Longest sleep between two looks at the line (seconds): a slot held until its answer
#: frees at an unknown time, and a thread behind a sleeping coroutine waits for its look.
ASYNC_SLICE = 0.02


async def paced_use(port: AdapterPort) -> InFlight | None:
    """A use of the current token holding a slot, waited for with ``asyncio.sleep`` in
    line with every other caller (threads included); None when not paced or no token is
    usable now (take the slow path).

    Raises:
        ApiRateLimitedError: No slot within ``api_rate_wait``; nothing counted.
    """
    while True:
        line = port.line_up()
        if line is None:
            return None
        try:
            while True:
                got = port.poll_line(line)
                if got is None:
                    break  # the token was replaced: line up for the new one
                if isinstance(got, InFlight):
                    return got
                await asyncio.sleep(min(got, ASYNC_SLICE))
        finally:
            port.leave_line(line)
