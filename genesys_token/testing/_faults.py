"""Faults injected into the emulator's answers: which requests get which, how many times."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

from genesys_token.testing._wire import Fault


@dataclass
class _FaultSlot:
    path: str
    fault: Fault
    remaining: int | None
    client_id: str | None = None


class FaultBook:
    """Faults waiting for the requests they answer, matched in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: list[_FaultSlot] = []

    def add(
        self,
        fault: Fault | None,
        *,
        times: int | None,
        path: str,
        client_id: str | None,
        fault_kwargs: dict[str, Any],
    ) -> Fault:
        """Add a fault (see :meth:`GenesysEmulator.inject`); the fault added."""
        if fault is None:
            fault = Fault(**fault_kwargs)
        elif fault_kwargs:
            fault = dataclasses.replace(fault, **fault_kwargs)
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        with self._lock:
            self._slots.append(_FaultSlot(path, fault, times, client_id))
        return fault

    def clear(self) -> None:
        """Drop every fault."""
        with self._lock:
            self._slots.clear()

    def take(self, path: str, client_id: str | None) -> Fault | None:
        """The first fault for a request to ``path`` (of ``client_id``, for token requests),
        counted as used; None when no fault matches."""
        with self._lock:
            for slot in self._slots:
                if slot.client_id is not None and slot.client_id != client_id:
                    continue
                if path.startswith(slot.path):
                    if slot.remaining is not None:
                        slot.remaining -= 1
                        if slot.remaining == 0:
                            self._slots.remove(slot)
                    return slot.fault
            return None
