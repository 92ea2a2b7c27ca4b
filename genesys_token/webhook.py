"""Background webhook delivery (placeholder until the observability work lands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import Settings


class WebhookSender:
    """Delivers event records to ``webhook_url`` from a background worker."""

    def __init__(self, settings: Settings, *, on_failure: Callable[[dict[str, Any]], None]) -> None:
        self._settings = settings
        self._on_failure = on_failure

    def submit(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for delivery."""

    def close(self) -> None:
        """Flush for at most a couple of seconds and stop."""

    def after_fork(self) -> None:
        """Start afresh in a forked child."""
