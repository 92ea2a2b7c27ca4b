"""The requests floor: no netrc credentials for another host on a redirect (CVE-2024-47081).

requests < 2.32.4 looked a URL's host up in ``~/.netrc`` by splitting the netloc on ``:``,
so ``http://localhost:@127.0.0.1:<port>/`` got the credentials of machine ``localhost``
and sent them to ``127.0.0.1``. An API redirect followed by :func:`api_session` reached it.
``make test-minimum`` runs this on requests 2.32.4, the declared floor.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from genesys_token import TokenManager, api_session
from genesys_token.testing import Fault, GenesysEmulator

MakeManager = Callable[..., TokenManager]
NETRC_PASSWORD = "netrc-password-for-localhost"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def elsewhere() -> Iterator[tuple[int, list[str | None]]]:
    """Another host (``127.0.0.1``; the API is ``localhost``): the Authorization it gets."""
    seen: list[str | None] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_redirect_gets_no_netrc_credentials_of_the_api_host(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    elsewhere: tuple[int, list[str | None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, seen = elsewhere
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine localhost login api-user password {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    location = f"http://localhost:@127.0.0.1:{port}/collect"
    emulator.inject(Fault(status=302, headers={"Location": location}), path="/api/v2/users")
    # The API by the name localhost; the token endpoint (127.0.0.1) has no netrc entry.
    api_url = emulator.api_base_url.replace("127.0.0.1", "localhost")
    session = api_session(make_manager(api_base_url=api_url, background_refresh=False))
    try:
        response = session.get("/api/v2/users")
    finally:
        session.close()
    assert response.status_code == 200 and len(seen) == 1  # the redirect was followed
    assert seen == [None]  # neither the token nor the netrc login went to the other host
