"""TLS against a real HTTPS emulator with a trustme CA: trusted bundles pass, the rest fail fast."""

from __future__ import annotations

import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from genesys_token import TokenEndpointTLSError, TokenManager
from genesys_token.http.token_endpoint import Clock, TokenEndpoint
from genesys_token.settings import Config
from genesys_token.testing import GenesysEmulator

pytestmark = pytest.mark.legacy

#: Failing "fast" means one handshake, no retry waits: far below one backoff step.
FAST = 1.5


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_path(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def https_emulator(ca: trustme.CA) -> Iterator[GenesysEmulator]:
    with GenesysEmulator(ssl_context=_server_context(ca, "127.0.0.1", "localhost")) as emu:
        yield emu


def _endpoint(emulator: GenesysEmulator, waits: list[float], **options: object) -> TokenEndpoint:
    """A TokenEndpoint that records its retry waits instead of sleeping."""
    options.setdefault("token_url", emulator.token_url)
    settings = Config.build(
        emulator.client_id,
        emulator.client_secret,
        api_base_url=emulator.api_base_url,
        **options,
    )

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    return TokenEndpoint(settings, wait=wait)


def test_https_with_the_ca_bundle_path_gets_a_token(
    https_emulator: GenesysEmulator, ca_path: str
) -> None:
    assert https_emulator.token_url.startswith("https://")
    waits: list[float] = []
    endpoint = _endpoint(https_emulator, waits, verify=ca_path)
    response = endpoint.fetch(endpoint._settings.credentials)
    assert response.access_token in https_emulator.issued_tokens
    assert endpoint.check(response.access_token) == 200
    endpoint.close()


def test_untrusted_certificate_fails_fast_without_retries(
    https_emulator: GenesysEmulator,
) -> None:
    waits: list[float] = []
    endpoint = _endpoint(https_emulator, waits, max_retries=4)  # verify=True: system CAs
    started = time.monotonic()
    with pytest.raises(TokenEndpointTLSError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        endpoint.fetch(endpoint._settings.credentials)
    endpoint.close()
    assert time.monotonic() - started < FAST
    assert waits == []
    assert caught.value.attempts == 1
    assert not caught.value.retryable
    assert https_emulator.token_requests == 0  # the secret never crossed the wire


def test_certificate_for_another_host_fails_fast(ca: trustme.CA, ca_path: str) -> None:
    context = _server_context(ca, "login.other.example")
    with GenesysEmulator(ssl_context=context) as emulator:
        waits: list[float] = []
        endpoint = _endpoint(emulator, waits, verify=ca_path)
        with pytest.raises(TokenEndpointTLSError) as caught:
            endpoint.fetch(endpoint._settings.credentials)
        endpoint.close()
        assert waits == []
        assert emulator.token_requests == 0
        host = f"127.0.0.1:{emulator.port}"
    assert str(caught.value).startswith("TLS handshake with the token endpoint failed: ")
    # Where and why: the host asked and the cause in words.
    assert (caught.value.host, caught.value.cause) == (host, "TLS verification failed")
    assert f"TLS verification failed for {host}" in str(caught.value)


def test_https_url_to_a_plain_http_server_is_a_tls_error(emulator: GenesysEmulator) -> None:
    waits: list[float] = []
    endpoint = _endpoint(emulator, waits, token_url=emulator.token_url.replace("http:", "https:"))
    with pytest.raises(TokenEndpointTLSError):
        endpoint.fetch(endpoint._settings.credentials)
    endpoint.close()
    assert waits == []


def test_verify_false_skips_verification(https_emulator: GenesysEmulator) -> None:
    endpoint = _endpoint(https_emulator, [], verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning, as intended
        response = endpoint.fetch(endpoint._settings.credentials)
    endpoint.close()
    assert response.access_token in https_emulator.issued_tokens


def test_manager_over_https_with_a_ca_bundle(https_emulator: GenesysEmulator, ca_path: str) -> None:
    with TokenManager(
        https_emulator.client_id,
        https_emulator.client_secret,
        token_url=https_emulator.token_url,
        api_base_url=https_emulator.api_base_url,
        verify=Path(ca_path),
        background_refresh=False,
    ) as manager:
        assert manager.get_token() == https_emulator.issued_tokens[-1]


def test_manager_tls_failure_is_not_retried(https_emulator: GenesysEmulator) -> None:
    with TokenManager(
        https_emulator.client_id,
        https_emulator.client_secret,
        token_url=https_emulator.token_url,
        api_base_url=https_emulator.api_base_url,
        background_refresh=False,
        clock=Clock(random=lambda: 1.0),
    ) as manager:
        started = time.monotonic()
        with pytest.raises(TokenEndpointTLSError):
            manager.get_token()
        assert time.monotonic() - started < FAST
        snapshot = manager.metrics()
    assert (snapshot["retries"], snapshot["errors"]) == (0, 1)
    assert snapshot["last_error"].startswith("TokenEndpointTLSError: TLS handshake")


def test_a_connection_opened_without_verification_is_never_reused_by_a_verifying_manager(
    https_emulator: GenesysEmulator,
) -> None:
    # requests < 2.32 keyed its pools by host only (CVE-2024-35195): on the shared pool, a
    # manager that verifies would reuse the kept-alive connection of one that does not, and
    # send its secret over it unverified. Hence requests >= 2.32.2.
    options: dict[str, Any] = {
        "token_url": https_emulator.token_url,
        "api_base_url": https_emulator.api_base_url,
        "background_refresh": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning, as intended
        with TokenManager(
            https_emulator.client_id, https_emulator.client_secret, verify=False, **options
        ) as trusting:
            trusting.get_token()
            with (
                TokenManager(
                    https_emulator.client_id, https_emulator.client_secret, **options
                ) as verifying,
                pytest.raises(TokenEndpointTLSError),
            ):
                verifying.get_token()
    assert https_emulator.token_requests == 1
