"""Secrets and tokens never reach a log record, an exception, a repr, an event or the metrics.

One run of the whole fault matrix with every logger at DEBUG (``urllib3`` and ``requests``
included), hostile answers that echo the secret and tokens back, then a search of everything
the SDK produced for any credential in any form.
"""

from __future__ import annotations

import base64
import http.client
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests

from genesys_token import GenesysAuth, GenesysTokenError, TokenManager
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.transport import Clock

pytestmark = pytest.mark.legacy

#: Short and plain on purpose: no credential *pattern* matches it, only knowing it does.
SECRET = "hunter2+Plain/x"
WRONG_SECRET = "wrong-Secret-7"
ROGUE_TOKEN = "rogue-token-42"
CLIENT_ID = "hygiene-client"


def _basic(secret: str) -> str:
    return base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()


def _fault_matrix(previous_token: str) -> list[Fault]:
    """Every fault class the transport knows, plus answers echoing credentials back."""
    echo = f"secret {SECRET} basic {_basic(SECRET)} token {previous_token}"
    return [
        # retryable, each followed by a success
        Fault.too_many_requests(1),
        Fault.server_error(500),
        Fault.server_error(502),
        Fault.server_error(503),
        Fault.server_error(504),
        Fault.html(503),
        Fault.rate_limited_token(1),
        Fault(drop=True),
        Fault(delay=0.5, passthrough=True),
        Fault(status=200, body='{"access_token":', headers={"Content-Length": "300"}),
        # non-retryable and hostile
        Fault.json({"error": "invalid_client", "description": echo}, status=401),
        Fault.json({"error": "unauthorized_client", "error_description": echo}, status=400),
        Fault.json({"error": "invalid_request", "description": echo}, status=400),
        Fault(status=403, body=echo),
        Fault(status=200, body=f"<html>{echo}</html>"),
        Fault.json({"access_token": ROGUE_TOKEN, "token_type": "mac", "expires_in": 60}),
        Fault.json({"access_token": ROGUE_TOKEN, "token_type": "bearer", "expires_in": -1}),
        Fault.json({"access_token": f"{ROGUE_TOKEN} x", "token_type": "bearer"}),
        Fault.json({"note": echo, "token_type": "bearer", "expires_in": 60}),
        Fault(status=200, body=f'{{"access_token":"{ROGUE_TOKEN}"', headers={"X-Echo": echo}),
        Fault(status=200, body_size=300_000),
        Fault(status=503, body=echo * 50, headers={"Retry-After": "1"}),
        Fault(status=200, body=echo.encode() * 10, drip=0.01),
        Fault(status=429, body={"message": f"{echo} Retry the request in [1] seconds"}),
    ]


@pytest.fixture
def emulator() -> Iterator[GenesysEmulator]:
    with GenesysEmulator(client_id=CLIENT_ID, client_secret=SECRET) as emu:
        yield emu


def _everything_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        texts.append(formatter.format(record))  # message, args and exc_text
        texts.append(repr(record.args))
        texts.append(repr(vars(record)))  # extras too
    return texts


def _everything_raised(errors: list[BaseException]) -> list[str]:
    texts = []
    for error in errors:
        seen: BaseException | None = error
        while seen is not None:  # chained causes and contexts too
            texts += [str(seen), repr(seen), repr(vars(seen))]
            seen = seen.__cause__ or seen.__context__
    return texts


def _run_matrix(emulator: GenesysEmulator, manager: TokenManager) -> list[BaseException]:
    errors: list[BaseException] = []
    for fault in _fault_matrix(manager.get_token()):
        emulator.inject(fault)
        try:
            manager.refresh(force=True)
        except GenesysTokenError as exc:
            errors.append(exc)
        emulator.clear_faults()
        # Ends a cool-down a rejection fault started (the same secret again would keep it).
        manager.set_credentials(WRONG_SECRET)
        manager.set_credentials(SECRET)
    manager.set_credentials(WRONG_SECRET)
    with pytest.raises(GenesysTokenError) as caught:
        manager.refresh(force=True)
    errors.append(caught.value)
    manager.set_credentials(SECRET)
    manager.refresh(force=True)
    return errors


def test_no_credential_in_logs_errors_reprs_events_or_metrics(
    emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (None, "urllib3", "requests", "genesys_token"):
        caplog.set_level(logging.DEBUG, logger=name)
    events: list[dict[str, Any]] = []
    manager = TokenManager(
        CLIENT_ID,
        SECRET,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        background_refresh=False,
        max_retries=1,
        max_retry_after=0.01,
        timeout=(2.0, 0.3),
        clock=Clock(random=lambda: 0.0),
    )
    manager.on("*", events.append)
    with manager:
        errors = _run_matrix(emulator, manager)
        with requests.Session() as session:
            session.auth = GenesysAuth(manager)
            assert session.get(f"{emulator.api_base_url}/api/v2/tokens/me", timeout=5).ok
        produced = [
            *_everything_logged(caplog),
            *_everything_raised(errors),
            repr(manager),
            repr(manager.token),
            repr(manager.settings),
            repr(events),
            repr(manager.metrics()),
        ]
    # The matrix really failed where it should: 11 hostile answers, the dripped echo (read
    # whole within its deadline: not JSON) and the wrong secret at the end.
    assert len(errors) == 13, "\n".join(repr(e)[:90] for e in errors)
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # DEBUG was captured
    assert http.client.HTTPConnection.debuglevel == 0
    forbidden = {
        SECRET,
        quote_plus(SECRET),
        quote(SECRET, safe=""),
        _basic(SECRET),
        WRONG_SECRET,
        _basic(WRONG_SECRET),
        ROGUE_TOKEN,
        *emulator.issued_tokens,
    }
    assert len(emulator.issued_tokens) >= 10
    leaks = sorted({value for value in forbidden for text in produced if value in text})
    assert leaks == []
