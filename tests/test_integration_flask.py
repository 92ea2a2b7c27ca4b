"""The Flask extension and examples/flask_app.py, against the emulator."""

from __future__ import annotations

import gc
import runpy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from genesys_token import ConfigurationError, GenesysAuth, TokenManager
from genesys_token.integrations import _common
from genesys_token.integrations.flask import EXTENSION_KEY, GenesysToken
from genesys_token.stores import MemoryStore
from genesys_token.testing import GenesysEmulator

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app.py"


def _config(emulator: GenesysEmulator, **extra: Any) -> dict[str, Any]:
    return {
        "TESTING": True,
        "GENESYS_CLIENT_ID": emulator.client_id,
        "GENESYS_CLIENT_SECRET": emulator.client_secret,
        "GENESYS_TOKEN_URL": emulator.token_url,
        "GENESYS_API_URL": emulator.api_base_url,
        **extra,
    }


@pytest.fixture
def example() -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLE), run_name="flask_app")


@pytest.fixture
def app(example: dict[str, Any], emulator: GenesysEmulator) -> Iterator[Flask]:
    app: Flask = example["create_app"](_config(emulator))
    yield app
    example["genesys"].close(app)


def test_org_route_returns_the_organization(app: Flask, emulator: GenesysEmulator):
    assert emulator.token_requests == 0  # building the app makes no token request
    response = app.test_client().get("/org")
    assert response.status_code == 200
    assert response.get_json() == {"id": emulator.org_id, "name": response.get_json()["name"]}
    assert [r.status for r in emulator.api_request_log] == [200]


def test_threaded_server_makes_one_token_request_for_concurrent_requests(
    app: Flask, emulator: GenesysEmulator
):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/org"
    barrier = threading.Barrier(12)
    statuses: list[int] = []

    def hit() -> None:
        barrier.wait(5)
        statuses.append(requests.get(url, timeout=10).status_code)

    try:
        clients = [threading.Thread(target=hit) for _ in range(12)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(15)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
    assert statuses == [200] * 12
    assert emulator.token_requests == 1
    assert len(emulator.api_request_log) == 12


def test_first_use_from_many_threads_builds_one_manager(emulator: GenesysEmulator):
    app = Flask("race")
    app.config.update(_config(emulator))
    extension = GenesysToken(app)
    barrier = threading.Barrier(16)
    managers: list[TokenManager] = []
    sessions: list[requests.Session] = []

    def first_use() -> None:
        barrier.wait(5)
        with app.app_context():
            managers.append(extension.manager)
            sessions.append(extension.session)

    threads = [threading.Thread(target=first_use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    try:
        assert len(managers) == 16 and len({id(m) for m in managers}) == 1
        assert len({id(s) for s in sessions}) == 1
        assert isinstance(sessions[0].auth, GenesysAuth)
    finally:
        extension.close(app)


def test_extension_bound_to_one_app_works_without_an_app_context(emulator: GenesysEmulator):
    app = Flask("direct")
    app.config.update(_config(emulator, GENESYS_TOKEN_OPTIONS={"store": MemoryStore()}))
    extension = GenesysToken(app)
    manager = extension.manager
    assert manager.api_base_url == emulator.api_base_url
    extension.close()
    assert manager.closed
    assert extension.manager is not manager  # the next use builds a new one
    extension.close()
    extension.close()  # idempotent


def test_close_ends_manager_and_session(app: Flask, example: dict[str, Any]):
    genesys = example["genesys"]
    with app.app_context():
        manager, session = genesys.manager, genesys.session
        genesys.close()
    assert manager.closed
    assert app.extensions[EXTENSION_KEY].session is None
    with app.app_context():
        assert genesys.session is not session  # rebuilt on the next use
        genesys.close()


def test_settings_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, emulator: GenesysEmulator
):
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", emulator.client_id)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", emulator.client_secret)
    app = Flask("env")
    app.config.update(GENESYS_TOKEN_URL=emulator.token_url, GENESYS_API_URL=emulator.api_base_url)
    extension = GenesysToken(app)
    try:
        assert extension.manager.get_token() == emulator.issued_tokens[0]
    finally:
        extension.close()


def test_missing_client_id_names_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_ID", raising=False)
    app = Flask("missing")
    app.config.update(GENESYS_CLIENT_SECRET="s")
    with pytest.raises(ConfigurationError, match=r"GENESYS_CLIENT_ID in app\.config") as excinfo:
        GenesysToken(app).manager  # noqa: B018
    assert excinfo.value.field == "GENESYS_CLIENT_ID"


def test_bad_settings_raise_configuration_errors():
    app = Flask("bad")
    app.config.update(
        GENESYS_CLIENT_ID="id", GENESYS_CLIENT_SECRET="s", GENESYS_TOKEN_OPTIONS=["x"]
    )
    with pytest.raises(ConfigurationError, match="GENESYS_TOKEN_OPTIONS"):
        GenesysToken(app).manager  # noqa: B018
    app.config.update(GENESYS_TOKEN_OPTIONS=None, GENESYS_REGION="mars-north-9")
    with pytest.raises(ConfigurationError) as excinfo:
        GenesysToken(app).manager  # noqa: B018
    assert excinfo.value.field == "region"


def test_use_without_an_app_is_a_clear_error():
    extension = GenesysToken()
    with pytest.raises(RuntimeError, match="outside an application context"):
        extension.manager  # noqa: B018
    with Flask("unbound").app_context(), pytest.raises(RuntimeError, match="init_app"):
        extension.session  # noqa: B018


def test_manager_is_closed_at_interpreter_exit(
    emulator: GenesysEmulator, monkeypatch: pytest.MonkeyPatch
):
    closers: list[Any] = []
    monkeypatch.setattr(_common.atexit, "register", lambda *call: closers.append(call))
    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    )
    _common.close_at_exit(manager)
    func, ref = closers[0]
    assert ref() is manager  # a weak reference: registering does not keep the manager alive
    func(ref)
    assert manager.closed
    del manager
    gc.collect()
    assert ref() is None
    func(ref)  # the manager is gone: nothing to close, no error


def test_the_session_sends_the_token_only_to_the_api_and_allowed_origins(
    emulator: GenesysEmulator,
):
    with GenesysEmulator(host="localhost") as partner, GenesysEmulator() as gateway:
        app = Flask("origins")
        app.config.update(_config(emulator, GENESYS_ALLOWED_ORIGINS=[gateway.url]))
        genesys = GenesysToken(app)
        try:
            session = genesys.session
            session.get(partner.api_base_url + "/api/v2/organizations/me", timeout=5)
            session.get(gateway.api_base_url + "/api/v2/organizations/me", timeout=5)
            session.get(emulator.api_base_url + "/api/v2/organizations/me", timeout=5)
        finally:
            genesys.close(app)
        assert [r.token_used for r in partner.api_request_log] == [None]
        assert gateway.api_request_log[0].token_used is not None
        assert emulator.api_request_log[0].token_used is not None


def test_allowed_origins_that_are_not_origins_name_the_setting(emulator: GenesysEmulator):
    app = Flask("bad-origins")
    app.config.update(_config(emulator, GENESYS_ALLOWED_ORIGINS="https://one.example.com"))
    genesys = GenesysToken(app)
    try:
        with pytest.raises(ConfigurationError) as caught:
            genesys.session  # noqa: B018 - the property builds the session
    finally:
        genesys.close(app)
    assert caught.value.field == "GENESYS_ALLOWED_ORIGINS"
    assert "app.config" in str(caught.value)
