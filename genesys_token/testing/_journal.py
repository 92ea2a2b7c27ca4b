"""What the emulator was asked and what it answered: counters and logs, for tests."""

from __future__ import annotations

import threading
from collections import Counter
from typing import NamedTuple

from genesys_token.testing._wire import AuthMethod


class TokenRequestRecord(NamedTuple):
    """One request to ``/oauth/token``; ``status`` 0 means no answer was sent."""

    time: float
    client_id: str | None
    status: int
    scope: str | None
    grant_type: str | None
    auth_method: AuthMethod | None
    correlation_id: str | None = None
    """The ``ININ-Correlation-Id`` sent back (``None`` when no answer was sent)."""


class ApiRequestRecord(NamedTuple):
    """One request to any other path but ``/jwks``; ``status`` 0 means no answer was sent."""

    method: str
    path: str
    status: int
    token_used: str | None
    correlation_id: str | None = None
    """The ``ININ-Correlation-Id`` sent back (``None`` when no answer was sent)."""


class Journal:
    """Counts requests as they arrive and logs them once answered; one lock, any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token_requests = 0
        self._api_requests = 0
        self._token_log: list[TokenRequestRecord] = []
        self._api_log: list[ApiRequestRecord] = []
        self._api_429s: Counter[str] = Counter()

    def arrived(self, *, token_request: bool) -> None:
        """A token request (or an API call) arrived."""
        with self._lock:
            if token_request:
                self._token_requests += 1
            else:
                self._api_requests += 1

    def answered_token_request(self, record: TokenRequestRecord) -> None:
        """A token request was answered (status 0: it was not)."""
        with self._lock:
            self._token_log.append(record)

    def answered_api_call(self, record: ApiRequestRecord) -> None:
        """An API call was answered (status 0: it was not); a 429 is counted per token."""
        with self._lock:
            self._api_log.append(record)
            if record.status == 429 and record.token_used is not None:
                self._api_429s[record.token_used] += 1

    @property
    def token_requests(self) -> int:
        """Token requests arrived."""
        with self._lock:
            return self._token_requests

    @property
    def api_requests(self) -> int:
        """API calls arrived."""
        with self._lock:
            return self._api_requests

    @property
    def token_log(self) -> list[TokenRequestRecord]:
        """A copy of the answered token requests, oldest first."""
        with self._lock:
            return list(self._token_log)

    @property
    def api_log(self) -> list[ApiRequestRecord]:
        """A copy of the answered API calls, oldest first."""
        with self._lock:
            return list(self._api_log)

    @property
    def api_429s(self) -> dict[str, int]:
        """429 answers per bearer token."""
        with self._lock:
            return dict(self._api_429s)

    def reset(self) -> None:
        """Zero the counters and clear the logs."""
        with self._lock:
            self._token_requests = self._api_requests = 0
            self._api_429s.clear()
            self._token_log.clear()
            self._api_log.clear()
