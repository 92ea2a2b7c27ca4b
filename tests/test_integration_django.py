"""examples/django_project and genesys_token.integrations.django, against the emulator.

Django can be set up once per process: the module fixture sets up the demo project with
placeholder credentials (the app's ready() builds a manager, which must make no request),
and each test points the settings at its own emulator with ``override_settings``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import Client, override_settings

from genesys_token import ConfigurationError, TokenManager
from genesys_token.integrations import django as integration
from genesys_token.testing import Fault, GenesysEmulator

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "django_project"
PLACEHOLDER_ENV = {
    "DJANGO_SETTINGS_MODULE": "demo_site.settings",
    "GENESYSCLOUD_OAUTHCLIENT_ID": "placeholder-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "placeholder-secret",
    # A closed port: a request at start-up would fail the first test loudly.
    "GENESYSCLOUD_TOKEN_URL": "http://127.0.0.1:9/oauth/token",
    "GENESYSCLOUD_API_URL": "http://127.0.0.1:9",
}


@pytest.fixture(scope="module")
def started_manager() -> Iterator[TokenManager]:
    """Set up the demo project once; yields the manager its AppConfig.ready() built."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in PLACEHOLDER_ENV.items():
            patch.setenv(name, value)
        patch.syspath_prepend(str(PROJECT))
        django.setup()
        manager = integration._manager
        assert manager is not None
        yield manager
        integration.close()


def _settings(emulator: GenesysEmulator) -> dict[str, Any]:
    return {
        "GENESYS_CLIENT_ID": emulator.client_id,
        "GENESYS_CLIENT_SECRET": emulator.client_secret,
        "GENESYS_TOKEN_URL": emulator.token_url,
        "GENESYS_API_URL": emulator.api_base_url,
    }


@pytest.fixture
def on_emulator(started_manager: TokenManager, emulator: GenesysEmulator) -> Iterator[None]:
    with override_settings(**_settings(emulator)):
        yield


def test_ready_builds_the_manager_at_startup_without_a_request(started_manager: TokenManager):
    assert started_manager.client_id == "placeholder-client"
    assert started_manager.token is None
    assert started_manager.token_url == PLACEHOLDER_ENV["GENESYSCLOUD_TOKEN_URL"]


@pytest.mark.usefixtures("on_emulator")
def test_view_returns_the_organization(emulator: GenesysEmulator):
    response = Client().get("/org/")
    assert response.status_code == 200
    assert response.json()["id"] == emulator.org_id
    assert [r.status for r in emulator.api_request_log] == [200]
    assert integration.get_manager().token_url == emulator.token_url


@pytest.mark.usefixtures("on_emulator")
def test_concurrent_requests_make_one_token_request(emulator: GenesysEmulator):
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def hit() -> None:
        client = Client()
        barrier.wait(5)
        statuses.append(client.get("/org/").status_code)

    threads = [threading.Thread(target=hit) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert statuses == [200] * 12
    assert emulator.token_requests == 1


@pytest.mark.usefixtures("started_manager")
def test_first_use_from_many_threads_builds_one_manager(emulator: GenesysEmulator):
    with override_settings(**_settings(emulator)):
        barrier = threading.Barrier(16)
        seen: list[tuple[int, int]] = []

        def first_use() -> None:
            barrier.wait(5)
            seen.append((id(integration.get_manager()), id(integration.get_session())))

        threads = [threading.Thread(target=first_use) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert len(seen) == 16 and len(set(seen)) == 1


@pytest.mark.usefixtures("on_emulator")
def test_api_failure_becomes_a_502(emulator: GenesysEmulator):
    emulator.inject(Fault(status=503), path="/api/v2/organizations/me")
    response = Client().get("/org/")
    assert response.status_code == 502
    assert response.json() == {"error": "Genesys Cloud call failed", "status": 503}


@pytest.mark.usefixtures("on_emulator")
def test_changing_a_genesys_setting_replaces_the_manager(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GENESYSCLOUD_API_URL")
    before = integration.get_manager()
    with override_settings(GENESYS_REGION="eu-west-1", GENESYS_API_URL=None):
        assert before.closed
        after = integration.get_manager()
        assert after.api_base_url == "https://api.mypurecloud.ie"
    assert after.closed
    with override_settings(DEBUG=True):  # an unrelated setting leaves the manager alone
        kept = integration.get_manager()
    assert not kept.closed and integration.get_manager() is kept


@pytest.mark.usefixtures("on_emulator")
def test_missing_client_id_names_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_ID", raising=False)
    with (
        override_settings(GENESYS_CLIENT_ID=None),
        pytest.raises(ConfigurationError, match="GENESYS_CLIENT_ID in settings"),
    ):
        integration.get_manager()


def test_manage_py_check_passes_with_the_environment(emulator: GenesysEmulator):
    env = {**os.environ, **PLACEHOLDER_ENV, "GENESYSCLOUD_TOKEN_URL": emulator.token_url}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
    assert emulator.token_requests == 0


@pytest.mark.usefixtures("on_emulator")
def test_the_session_sends_the_token_only_to_the_api_and_allowed_origins(
    emulator: GenesysEmulator,
):
    with GenesysEmulator(host="localhost") as partner, GenesysEmulator() as gateway:
        with override_settings(GENESYS_ALLOWED_ORIGINS=[gateway.url]):
            session = integration.get_session()
            session.get(partner.api_base_url + "/api/v2/organizations/me", timeout=5)
            session.get(gateway.api_base_url + "/api/v2/organizations/me", timeout=5)
            session.get(emulator.api_base_url + "/api/v2/organizations/me", timeout=5)
        assert [r.token_used for r in partner.api_request_log] == [None]
        assert gateway.api_request_log[0].token_used is not None
        assert emulator.api_request_log[0].token_used is not None
