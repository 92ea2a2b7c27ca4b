"""BASELINE, NOT FOR USE: a straight Python port of the original TypeScript design.

This is the ``GenesysTokenManager`` of the tutorial this project started from
(``shared/seed/000_eb1fe5f97d17123e.txt``, its "Complete Working Example"), ported
line by line so the benchmarks can show what the SDK's design changes are worth. Its defects
are kept on purpose; do not copy this code anywhere. What was kept:

* The secret goes in the form body (``client_id``/``client_secret``), not a Basic header.
* The token URL defaults to the *API* host (``https://api.mypurecloud.com/oauth/token``);
  Genesys serves tokens on the login host. The benchmarks pass the emulator's URL instead
  (``token_endpoint``), because the API-host URL cannot work at all.
* No HTTP timeouts anywhere (``requests.post`` without ``timeout``), like axios' default.
* No single-flight between threads: the ``refreshPromise`` check-then-set relied on
  JavaScript's single thread; ported to threads it is unguarded, so callers that arrive
  together can each start a token request.
* ``get_token`` refreshes in the caller once the token is inside the refresh buffer, so
  callers block on the network although a still-valid token exists.
* Expiry comes from the JWT ``exp`` claim on the wall clock (whole seconds); an opaque
  token (what Genesys really issues) fails validation, so no token is ever accepted.
* Scopes are matched by substring (``analytics:report:read-extra`` passes for
  ``analytics:report:read``).
* One failed background refresh stops the timer for good (the exception ends the timer
  thread; nothing reschedules).
* The latency list grows by one entry per refresh, without bound.
* While draining, ``get_token`` sleeps a fixed 500 ms; ``drain_connections`` waits for the
  in-flight count to reach zero with no bound, while new requests keep starting.
* The in-flight counter is a plain ``+= 1`` / ``- 1`` without a lock (lost updates under
  threads; a lost decrement makes a drain wait forever).
* The webhook is called on the refresh path, unsigned, without a timeout.
* "Handles transient 401s by triggering an immediate refresh" is claimed by the tutorial
  but not implemented: a 401 is the caller's problem.
* Decoded claims (and the client id) are logged.

Harness-only additions, which the original does not have: the ``token_endpoint`` setting and
:meth:`GenesysTokenManager.close` (cancels the timer, so a benchmark can end).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import jwt
import requests

logger = logging.getLogger("seed_port")

GENESYS_TOKEN_ENDPOINT = "https://api.mypurecloud.com/oauth/token"


def _now_ms() -> float:
    return time.time() * 1000  # Date.now(): wall clock


def acquire_initial_token(
    client_id: str, client_secret: str, scopes: list[str], endpoint: str
) -> dict[str, Any]:
    """POST the client-credentials grant with the secret in the body (no timeout)."""
    payload = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": " ".join(scopes),
    }
    response = requests.post(  # noqa: S113 - the original sets no timeout
        endpoint,
        data=payload,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    if response.status_code >= 400:  # axios throws on any non-2xx answer
        logger.error("Token acquisition failed: %s", response.text)
        response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def acquire_token_with_retry(
    client_id: str, client_secret: str, scopes: list[str], endpoint: str, max_retries: int = 3
) -> dict[str, Any]:
    """Retry 429 and 5xx with ``2**attempt`` s plus up to 1 s of jitter; nothing else."""
    attempt = 0
    while attempt <= max_retries:
        try:
            return acquire_initial_token(client_id, client_secret, scopes, endpoint)
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 429 or (status and status >= 500):
                delay = math.pow(2, attempt) * 1000 + random.random() * 1000
                logger.warning("Retrying token acquisition attempt=%s status=%s", attempt, status)
                time.sleep(delay / 1000)
                attempt += 1
                continue
            logger.error("Token acquisition failed status=%s", status)
            raise
    raise RuntimeError("Maximum retry attempts exceeded")


def _decode_jwt(raw_token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(raw_token, options={"verify_signature": False})
    return claims


def validate_token_structure(raw_token: str, expected_client_id: str, scopes: list[str]) -> bool:
    """Structural JWT checks: claims present, substring scope match, client id, ``exp``."""
    try:
        decoded = _decode_jwt(raw_token)
        if not decoded or not decoded.get("exp") or not decoded.get("scope"):
            return False
        scope_match = all(scope in decoded["scope"] for scope in scopes)
        client_id_match = decoded.get("client_id") == expected_client_id
        not_expired = decoded["exp"] > math.floor(_now_ms() / 1000)
        return scope_match and client_id_match and not_expired
    except Exception as error:  # noqa: BLE001 - the original catches everything
        logger.error("JWT decoding failed: %s", error)
        return False


@dataclass
class TokenState:
    """The manager's state, replaced by a copy on success (``{...this.state}``)."""

    token: str | None = None
    expires_at: float | None = None
    last_refreshed: float | None = None
    refresh_promise: Future[str] | None = None
    is_draining: bool = False
    active_requests: int = 0


@dataclass
class _Metrics:
    acquisition_latency: list[float] = field(default_factory=list)
    errors: int = 0
    successes: int = 0
    last_error: str = ""


class GenesysTokenManager:
    """The tutorial's token manager (see the module docstring for its defects).

    Args:
        config: ``client_id``, ``client_secret``, ``scopes``, ``webhook_url``,
            ``refresh_buffer_ms``, ``jitter_max_ms``, and (harness only) ``token_endpoint``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.state = TokenState()
        self.refresh_timer: threading.Timer | None = None
        self.metrics = _Metrics()

    def _endpoint(self) -> str:
        return str(self.config.get("token_endpoint") or GENESYS_TOKEN_ENDPOINT)

    def execute_refresh(self) -> str:
        """Fetch, validate and install a token; concurrent callers *may* share one fetch."""
        if self.state.refresh_promise is not None:
            return self.state.refresh_promise.result()  # no bound, like awaiting a promise
        promise: Future[str] = Future()
        self.state.refresh_promise = promise
        start = _now_ms()
        try:
            response = acquire_token_with_retry(
                self.config["client_id"],
                self.config["client_secret"],
                self.config["scopes"],
                self._endpoint(),
            )
            if not validate_token_structure(
                response["access_token"], self.config["client_id"], self.config["scopes"]
            ):
                raise RuntimeError("Token validation failed")
            self.metrics.successes += 1
            self.metrics.acquisition_latency.append(_now_ms() - start)
            decoded = _decode_jwt(response["access_token"])
            self.state = replace(
                self.state,
                token=response["access_token"],
                expires_at=decoded["exp"] * 1000 if decoded.get("exp") else None,
                last_refreshed=_now_ms(),
                refresh_promise=None,
                is_draining=False,
            )
            self.emit_audit_log("TOKEN_REFRESH_SUCCESS", {"latency": _now_ms() - start})
            self.notify_webhook(
                {
                    "event": "token_refreshed",
                    "token_id": decoded.get("jti"),
                    "expires_at": decoded.get("exp"),
                }
            )
            self.schedule_refresh()
            promise.set_result(response["access_token"])
            return str(response["access_token"])
        except Exception as error:
            self.metrics.errors += 1
            self.metrics.last_error = str(error)
            self.state.refresh_promise = None
            self.emit_audit_log("TOKEN_REFRESH_FAILURE", {"error": str(error)})
            promise.set_exception(error)
            raise

    def schedule_refresh(self) -> None:
        """Arm the timer: ``expiresAt - now - buffer - jitter``, at least 1 s."""
        if self.refresh_timer is not None:
            self.refresh_timer.cancel()
        if not self.state.expires_at:
            return
        refresh_delay = max(
            1000,
            self.state.expires_at
            - _now_ms()
            - self.config["refresh_buffer_ms"]
            - random.random() * self.config["jitter_max_ms"],
        )
        self.refresh_timer = threading.Timer(refresh_delay / 1000, self.execute_refresh)
        self.refresh_timer.daemon = True
        self.refresh_timer.start()

    def get_token(self) -> str:
        """The token; refreshes in the caller when missing or inside the buffer."""
        if self.state.is_draining:
            time.sleep(0.5)
        state = self.state
        if (
            not state.token
            or not state.expires_at
            or state.expires_at - _now_ms() < self.config["refresh_buffer_ms"]
        ):
            self.execute_refresh()
        return self.state.token  # type: ignore[return-value]  # `this.state.token!`

    def drain_connections(self) -> None:
        """Wait (without bound) for in-flight requests to reach zero, then refresh."""
        self.state.is_draining = True
        while self.state.active_requests > 0:
            time.sleep(0.1)
        self.execute_refresh()
        self.state.is_draining = False

    def track_request_start(self) -> None:
        """Count a request in flight (unlocked, as in the original)."""
        self.state.active_requests += 1

    def track_request_end(self) -> None:
        """Count a request done (unlocked, as in the original)."""
        self.state.active_requests = max(0, self.state.active_requests - 1)

    def emit_audit_log(self, event: str, data: dict[str, Any]) -> None:
        """Log an audit record (the average is over the unbounded latency list)."""
        total = self.metrics.successes + self.metrics.errors
        latencies = self.metrics.acquisition_latency
        record = {
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "event_id": str(uuid.uuid4()),
            "event_type": event,
            "client_id": self.config["client_id"],
            "metrics": {
                "error_rate": f"{self.metrics.errors / (total or 1):.4f}",
                "avg_latency_ms": round(sum(latencies) / len(latencies)) if latencies else 0,
            },
            "data": data,
        }
        logger.info("OAuth Audit Log %s", record)

    def notify_webhook(self, payload: dict[str, Any]) -> None:
        """POST the payload, unsigned, without a timeout, on the refresh path."""
        if not self.config.get("webhook_url"):
            return
        try:
            requests.post(  # noqa: S113 - the original sets no timeout
                self.config["webhook_url"],
                json=payload,
                headers={"Content-Type": "application/json", "X-Event-Id": str(uuid.uuid4())},
            )
        except Exception as error:  # noqa: BLE001 - the original catches everything
            logger.error("Webhook notification failed: %s", error)

    def get_metrics(self) -> dict[str, Any]:
        """A shallow copy of the metrics (the latency list is shared, as in the original)."""
        return dict(vars(self.metrics))

    def close(self) -> None:
        """Harness only: cancel the refresh timer so a benchmark can finish."""
        if self.refresh_timer is not None:
            self.refresh_timer.cancel()
