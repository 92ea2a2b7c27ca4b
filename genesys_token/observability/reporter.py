"""What a manager tells the world: events (listeners, audit log, webhook) and metrics.

Everything here runs with no manager lock held. A listener that raises anything is logged
and skipped (see :class:`~genesys_token.observability.events.EventBus`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.schedule import Cell
from ..errors import GenesysTokenError, TokenRequestError
from ..settings import Config
from ..token import Token
from .events import (
    TOKEN_EXPIRED,
    TOKEN_REFRESH_FAILURE,
    TOKEN_REFRESH_SUCCESS,
    WEBHOOK_DELIVERY_FAILED,
    EventBus,
    Listener,
    make_record,
)
from .metrics import Metrics
from .redaction import excerpt

if TYPE_CHECKING:
    from .webhook import WebhookSender


class Reporter:
    """Events and metrics of one manager.

    Args:
        settings: The manager's settings (webhook configuration, the client id).
    """

    def __init__(self, settings: Config) -> None:
        #: The client id events name (set again when the credentials change).
        self.client_id = settings.client_id
        self.metrics = Metrics()
        self.events = EventBus(on_listener_error=lambda: self.metrics.incr("listener_errors"))
        self._expired_reported: str | None = None
        self.webhook: WebhookSender | None = None
        if settings.webhook_url:
            from .webhook import WebhookSender

            # Weakly: a strong reference from the worker thread would keep this reporter
            # (and through listeners, its manager) alive forever.
            failed = weakref.WeakMethod(self._webhook_failed)

            def on_failure(data: dict[str, Any]) -> None:
                method = failed()
                if method is not None:
                    method(data)

            # The settings are the shorthand for a listener of the manager's own (checked
            # already: the sender's checks are the settings' rules).
            self.webhook = WebhookSender(
                settings.webhook_url,
                settings.webhook_secret,
                timeout=settings.timeout,
                verify=settings.verify,
                on_failure=on_failure,
            )
            # Not close(): a finalizer must take no lock and join nothing (see abandon()).
            self._finalizer = weakref.finalize(self, self.webhook.abandon)
            self._finalizer.atexit = False
            self.events.on("*", self.webhook)

    def on(self, event_type: str, callback: Listener) -> Callable[[], None]:
        """Subscribe (see :meth:`TokenManager.on`)."""
        return self.events.on(event_type, callback)

    def emit(self, event_type: str, token: Token | None, data: dict[str, Any]) -> None:
        """Emit one event record."""
        record = make_record(
            event_type,
            client_id=self.client_id,
            token_fingerprint=token.fingerprint if token is not None else None,
            metrics=self._summary(),
            data=data,
        )
        self.events.emit(record)

    def emit_for(self, event_type: str, fingerprint: str, data: dict[str, Any]) -> None:
        """Emit one event record about the token of ``fingerprint`` (never the token)."""
        record = make_record(
            event_type,
            client_id=self.client_id,
            token_fingerprint=fingerprint,
            metrics=self._summary(),
            data=data,
        )
        self.events.emit(record)

    def succeeded(self, cell: Cell, reason: str, requests: int, latency: float) -> None:
        """An acquisition installed ``cell``."""
        if requests:
            self.metrics.record_success(latency, requests)
        else:
            self.metrics.incr("store_hits")
        token = cell.token
        self.emit(
            TOKEN_REFRESH_SUCCESS,
            token,
            {
                "reason": reason,
                # Not token.source: a MemoryStore hands back the object saved, "network".
                "source": "network" if requests else "store",
                "expires_in": round(token.expires_in, 3),
                "attempts": requests,  # token requests made (0: taken from the store)
                "duration_ms": _ms(latency),
            },
        )

    def failed(
        self,
        error: GenesysTokenError,
        reason: str,
        requests: int,
        current: Cell | None,
        now: float,
        latency: float = 0.0,
    ) -> None:
        """An acquisition failed after ``latency`` seconds; ``current`` is the cell still in
        use."""
        attempts = error.attempts if isinstance(error, TokenRequestError) else requests
        self.metrics.record_error(error, requests)
        self.emit(
            TOKEN_REFRESH_FAILURE,
            current.token if current is not None else None,
            {
                "reason": reason,
                "error": type(error).__name__,
                "message": excerpt(str(error), 160),
                "status": getattr(error, "status", None),
                "attempts": attempts,
                "source": "network",  # the store gave no token (its failures are not raised)
                "duration_ms": _ms(latency),
                "token_still_valid": current is not None and current.usable(now),
                # Where and why; quote correlation_id to Genesys support.
                "host": getattr(error, "host", None) or None,
                "cause": getattr(error, "cause", None),
                "correlation_id": getattr(error, "correlation_id", None),
            },
        )

    def expired(self, cell: Cell | None) -> None:
        """The token in use expired with no replacement (reported once per token)."""
        if cell is None or self._expired_reported == cell.token.fingerprint:
            return
        self._expired_reported = cell.token.fingerprint
        self.emit(TOKEN_EXPIRED, cell.token, {})

    def snapshot(self, *, in_flight: int, cell: Cell | None, now: float) -> dict[str, Any]:
        """The metrics of ``TokenManager.metrics()``."""
        expires_in = None if cell is None else round(cell.token.monotonic_expiry - now, 3)
        snap = self.metrics.snapshot(in_flight=in_flight, expires_in=expires_in)
        if self.webhook is not None:
            snap["webhook_deliveries"] = self.webhook.delivered
            snap["webhook_dropped"] = self.webhook.dropped
        return snap

    def _summary(self) -> dict[str, Any]:
        snap = self.metrics.snapshot(in_flight=0, expires_in=None)
        return {
            "error_rate": snap["error_rate"],
            "latency_ms": snap["latency_ms"],
            "token_requests": snap["token_requests"],
        }

    def _webhook_failed(self, data: dict[str, Any]) -> None:
        self.metrics.incr("webhook_failures")
        self.emit(WEBHOOK_DELIVERY_FAILED, None, data)

    def close(self) -> None:
        """Flush and stop the webhook worker (bounded)."""
        if self.webhook is not None:
            self._finalizer.detach()
            self.webhook.close()

    def after_fork(self) -> None:
        """Fresh locks (a forked child); the webhook sender renews itself (it registers
        with the fork handler, as every sender does)."""
        self.metrics.after_fork()
        self.events.after_fork()


def _ms(seconds: float) -> float:
    """An acquisition's duration in milliseconds, as its event gives it."""
    return round(seconds * 1000.0, 3)
