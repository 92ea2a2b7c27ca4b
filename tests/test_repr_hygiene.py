"""No secret or token in any repr, str, exception, event or log line of a normal lifecycle."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
import requests
from conftest import MakeManager

from genesys_token import GenesysAuth, GenesysTokenError, Token
from genesys_token.core.schedule import plan
from genesys_token.testing import Fault, GenesysEmulator


def test_lifecycle_leaks_no_secret_or_token(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "genesys_token"):
        caplog.set_level(logging.DEBUG, logger=name)
    records: list[dict[str, Any]] = []
    manager = make_manager(max_retries=1, backoff_base=0.001)
    manager.on("*", records.append)
    texts: list[str] = []

    session = requests.Session()
    session.auth = GenesysAuth(manager)
    url = f"{emulator.api_base_url}/api/v2/organizations/me"
    assert session.get(url, timeout=5).status_code == 200
    emulator.revoke(manager.get_token())
    assert session.get(url, timeout=5).status_code == 200  # replayed after a refresh
    manager.rotate(drain_timeout=1, revoke_previous=True)
    emulator.inject(Fault.server_error(503), times=5)
    with pytest.raises(GenesysTokenError) as excinfo:
        manager.refresh(force=True)
    texts += [repr(excinfo.value), str(excinfo.value)]
    manager.set_credentials("a-wrong-secret-value")
    emulator.clear_faults()
    with pytest.raises(GenesysTokenError) as excinfo:
        manager.refresh(force=True)
    texts += [repr(excinfo.value), str(excinfo.value)]

    texts += [repr(manager), str(manager), repr(manager.token), repr(manager.settings)]
    texts += [repr(session.auth), repr(manager.metrics()), repr(records)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(r.__dict__) for r in caplog.records]
    secrets = [emulator.client_secret, "a-wrong-secret-value", *emulator.issued_tokens]
    secrets.append(
        base64.b64encode(f"{emulator.client_id}:{emulator.client_secret}".encode()).decode()
    )
    joined = "\n".join(texts)
    assert len(emulator.issued_tokens) >= 3
    for secret in secrets:
        assert secret not in joined
    session.close()


def test_cell_and_token_reprs_show_the_fingerprint_never_the_token() -> None:
    token = Token.issued(
        "tok-" + "z" * 40, token_type="bearer", lifetime=60, sent_monotonic=0, sent_wall=0
    )
    cell = plan(token, refresh_buffer=10, refresh_jitter=0, draw=0, generation=1, now=0)
    cell = cell.replacing(cell)  # a cell that also holds the token it replaced
    for shown in (repr(token), str(token), repr(cell), str(cell), repr([cell])):
        assert token.access_token not in shown
        assert token.fingerprint in shown
