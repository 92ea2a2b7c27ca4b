"""Regions, settings validation and from_env."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MakeManager, join_fetch_threads

from genesys_token import ConfigurationError, InvalidClientError, TokenManager
from genesys_token import settings as settings_module
from genesys_token.regions import REGION_DOMAINS, check_url, is_loopback_host, resolve_region
from genesys_token.settings import Config, Settings, credentials_from_env, with_env_location
from genesys_token.testing import GenesysEmulator


@pytest.mark.parametrize(
    ("spelling", "name", "domain"),
    [
        ("us-east-1", "us-east-1", "mypurecloud.com"),
        ("us_east_1", "us-east-1", "mypurecloud.com"),
        ("US_EAST_1", "us-east-1", "mypurecloud.com"),
        ("mypurecloud.ie", "eu-west-1", "mypurecloud.ie"),
        ("login.mypurecloud.ie", "eu-west-1", "mypurecloud.ie"),
        ("api.mypurecloud.de", "eu-central-1", "mypurecloud.de"),
        ("https://api.mypurecloud.com.au/", "ap-southeast-2", "mypurecloud.com.au"),
        ("eusc_de_east_1", "eusc-de-east-1", "edee1.eusc-pure.cloud"),
        (" usw2.pure.cloud ", "us-west-2", "usw2.pure.cloud"),
    ],
)
def test_every_spelling_resolves(spelling: str, name: str, domain: str):
    region = resolve_region(spelling)
    assert (region.name, region.domain) == (name, domain)
    assert region.token_url == f"https://login.{domain}/oauth/token"
    assert region.api_base_url == f"https://api.{domain}"


def test_all_eighteen_regions_are_known():
    assert len(REGION_DOMAINS) == 18
    for name, domain in REGION_DOMAINS.items():
        assert resolve_region(name).domain == domain
        assert resolve_region(domain).name == name


def test_unknown_region_lists_the_valid_names():
    with pytest.raises(ConfigurationError) as excinfo:
        TokenManager("id", "secret", region="mars-north-1")
    assert excinfo.value.field == "region"
    assert "mars-north-1" in str(excinfo.value)
    assert "eu-west-1" in str(excinfo.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool):
    assert is_loopback_host(host) is loopback


def test_plain_http_only_for_loopback():
    assert check_url("http://127.0.0.1:8080/oauth/token/", field="token_url").endswith("/token")
    assert check_url("http://localhost:1/x", field="token_url")
    with pytest.raises(ConfigurationError, match="plain http"):
        check_url("http://login.mypurecloud.com/oauth/token", field="token_url")
    with pytest.raises(ConfigurationError, match="absolute"):
        check_url("login.mypurecloud.com/oauth/token", field="token_url")
    with pytest.raises(ConfigurationError, match="credentials"):
        check_url("https://user:pw@login.mypurecloud.com/oauth/token", field="token_url")
    with pytest.raises(ConfigurationError, match="string"):
        check_url(42, field="token_url")  # type: ignore[arg-type]


def test_overrides_win_over_the_region():
    settings = Config.build(
        "id", "secret", token_url="http://127.0.0.1:9/oauth/token", api_base_url="http://[::1]:9"
    )
    assert settings.token_url == "http://127.0.0.1:9/oauth/token"
    assert settings.api_base_url == "http://[::1]:9"
    assert settings.region is None
    default = Config.build("id", "secret")
    assert default.token_url == "https://login.mypurecloud.com/oauth/token"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"client_id": ""}, "client_id"),
        ({"client_id": "   "}, "client_id"),
        ({"client_id": 5}, "client_id"),
        ({"client_secret": None}, "client_secret"),
        ({"client_secret": "a\nb"}, "client_secret"),
        ({"refresh_buffer": -1}, "refresh_buffer"),
        ({"refresh_buffer": "300"}, "refresh_buffer"),
        ({"refresh_jitter": float("nan")}, "refresh_jitter"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": (1, 2, 3)}, "timeout"),
        ({"timeout": (1, -2)}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"scopes": 5}, "scopes"),
        ({"scopes": ["ok", ""]}, "scopes"),
        ({"scopes": ["two words"]}, "scopes"),
        ({"verify": 1}, "verify"),
        ({"verify": "/no/such/ca.pem"}, "verify"),
        ({"jwks_url": "http://example.com/jwks"}, "jwks_url"),
        ({"webhook_url": "ftp://example.com"}, "webhook_url"),
        ({"webhook_secret": ""}, "webhook_secret"),
        ({"background_refresh": "yes"}, "background_refresh"),
        ({"retry_deadline": 0}, "retry_deadline"),
        ({"max_response_bytes": 10}, "max_response_bytes"),
        ({"region": 7}, "region"),
    ],
)
def test_bad_values_name_their_field(options: dict[str, Any], field: str):
    args: dict[str, Any] = {"client_id": "id", "client_secret": "secret", **options}
    client_id = args.pop("client_id")
    client_secret = args.pop("client_secret")
    with pytest.raises(ConfigurationError) as excinfo:
        TokenManager(client_id, client_secret, **args)
    assert excinfo.value.field == field
    assert field in str(excinfo.value)


def test_good_values_are_normalised(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = Config.build(
        "id",
        "secret",
        scopes="a:b c:d a:b",
        timeout=5,
        verify=ca,
        refresh_buffer=0,
        webhook_secret="s",
    )
    assert settings.scopes == ("a:b", "c:d")
    assert settings.timeout == (5.0, 5.0)
    assert settings.verify == str(ca)
    assert settings.refresh_buffer == 0.0


def test_from_env_reads_the_genesys_variables():
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "env-id",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "env-secret",
        "GENESYSCLOUD_REGION": "mypurecloud.ie",
    }
    settings = Config.of(credentials_from_env(env), Settings.from_env(env))
    assert settings.client_id == "env-id"
    assert settings.token_url == "https://login.mypurecloud.ie/oauth/token"
    env["GENESYSCLOUD_TOKEN_URL"] = "http://127.0.0.1:1/oauth/token"
    env["GENESYSCLOUD_API_URL"] = "http://127.0.0.1:1"
    settings = Config.of(credentials_from_env(env), with_env_location(Settings(scopes="x:y"), env))
    assert settings.token_url == "http://127.0.0.1:1/oauth/token"
    assert settings.scopes == ("x:y",)


def test_from_env_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_ID", raising=False)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "s")
    with pytest.raises(ConfigurationError, match="GENESYSCLOUD_OAUTHCLIENT_ID"):
        TokenManager.from_env()


def test_from_env_builds_a_manager(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "env-id")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "env-secret")
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu_central_1")
    with TokenManager.from_env(refresh_buffer=10) as manager:
        assert manager.token_url == "https://login.mypurecloud.de/oauth/token"
        assert manager.api_base_url == "https://api.mypurecloud.de"
        assert manager.settings.refresh_buffer == 10.0
        assert manager.client_id == "env-id"


def test_settings_repr_hides_the_secrets():
    settings = Config.build("id", "very-secret-value", webhook_secret="hook-secret-value")
    assert "very-secret-value" not in repr(settings)
    assert "hook-secret-value" not in repr(settings)
    assert "very-secret-value" not in repr(settings.credentials)


def test_unknown_settings_are_rejected_by_the_signature():
    # Named keyword-only parameters: IDEs, mypy and help() see them; a typo fails at once.
    with pytest.raises(TypeError, match="no_such_option"):
        TokenManager("id", "secret", no_such_option=1)  # type: ignore[call-arg]


def test_a_bad_url_is_not_echoed_in_the_error():
    with pytest.raises(ConfigurationError) as excinfo:
        Config.build("c", "s", webhook_url="hooks.example.com/services/T0/B0/SECRETPATH")
    assert "SECRETPATH" not in str(excinfo.value)


# -- near-miss names and surrounding whitespace (issue 24) ---------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


PADDED_SECRET = (
    "client_secret has surrounding whitespace, which Genesys client secrets never have;"
    " sent as given"
)


def test_a_given_secret_with_surrounding_whitespace_is_kept_and_said_once(
    emulator: GenesysEmulator, make_manager: MakeManager, caplog: pytest.LogCaptureFixture
):
    padded = emulator.client_secret + " "
    with caplog.at_level("WARNING", logger="genesys_token"):
        manager = make_manager(client_secret=padded)
    assert _warnings(caplog) == [PADDED_SECRET]
    with pytest.raises(InvalidClientError):
        manager.get_token()  # sent as given: the emulator, like Genesys, refuses it
    join_fetch_threads()  # its failure line is written from the fetch thread, after we woke
    caplog.clear()
    with caplog.at_level("WARNING", logger="genesys_token"):
        manager.set_credentials(emulator.client_secret)
        assert _warnings(caplog) == []
        manager.set_credentials("\tpw-y", client_id=" the-id")
        make_manager(client_secret=lambda: padded)  # a source is not read at construction
    assert _warnings(caplog) == [
        "client_id and client_secret have surrounding whitespace, which Genesys client ids"
        " and secrets never have; sent as given"
    ]
    assert "pw-y" not in caplog.text and emulator.client_secret not in caplog.text


def test_a_misspelt_region_variable_is_pointed_out(caplog: pytest.LogCaptureFixture):
    env = {"GENESYSCLOUD_REGOIN": "eu-west-1", "GENESYSCLOUD_API_URI": "x"}
    with caplog.at_level("WARNING", logger="genesys_token"):
        Settings.from_env(env)
        Settings.from_env(env)  # once per name, not once per read
    assert _warnings(caplog) == [
        "environment variable GENESYSCLOUD_API_URI is not read by genesys_token;"
        " did you mean GENESYSCLOUD_API_URL? GENESYSCLOUD_API_URL is not set",
        "environment variable GENESYSCLOUD_REGOIN is not read by genesys_token;"
        " did you mean GENESYSCLOUD_REGION? It is not set, so region us-east-1 applies"
        " unless a region or URLs are given otherwise",
    ]
    assert "eu-west-1" not in caplog.text


def test_a_near_miss_beside_the_name_it_meant_does_not_say_a_default_applies(
    caplog: pytest.LogCaptureFixture,
):
    env = {"GENESYSCLOUD_REGIOn": "eu-west-1", "GENESYSCLOUD_REGION": "eu-west-1"}
    with caplog.at_level("WARNING", logger="genesys_token"):
        Settings.from_env(env)
    assert _warnings(caplog) == [
        "environment variable GENESYSCLOUD_REGIOn is not read by genesys_token;"
        " did you mean GENESYSCLOUD_REGION?"
    ]


def test_a_misspelt_credential_variable_is_pointed_out(caplog: pytest.LogCaptureFixture):
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "id",
        "GENESYSCLOUD_OATHCLIENT_SECRET": "s3cret-value",
    }
    with caplog.at_level("WARNING", logger="genesys_token"), pytest.raises(ConfigurationError):
        credentials_from_env(env)
    assert _warnings(caplog) == [
        "environment variable GENESYSCLOUD_OATHCLIENT_SECRET is not read by genesys_token;"
        " did you mean GENESYSCLOUD_OAUTHCLIENT_SECRET?"
        " GENESYSCLOUD_OAUTHCLIENT_SECRET is not set"
    ]
    assert "s3cret-value" not in caplog.text


def test_names_of_other_genesys_tools_and_far_names_are_left_alone(
    caplog: pytest.LogCaptureFixture,
):
    env = {
        "GENESYSCLOUD_ACCESS_TOKEN": "t",
        "GENESYSCLOUD_SDK_DEBUG": "true",
        "GENESYSCLOUD_PROXY_HOST": "p",
        "GENESYSCLOUD_TOKEN_POOL_SIZE": "3",
        "GENESYSCLOUD_SOMETHING_ELSE": "x",
        "GENESYS_REGION": "eu-west-1",
    }
    with caplog.at_level("WARNING", logger="genesys_token"):
        Settings.from_env(env)
    assert _warnings(caplog) == []


def test_surrounding_whitespace_of_id_and_secret_is_stripped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(settings_module, "WARNED_STRIPPED", set())
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": " the-id\t", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "pw-x "}
    with caplog.at_level("WARNING", logger="genesys_token"):
        credentials = credentials_from_env(env)
        # Read again (another manager from the environment): said once per process.
        credentials_from_env(env)
        credentials_from_env(env)
    assert credentials.client_id == "the-id"
    assert credentials.resolve().client_secret.reveal() == "pw-x"  # type: ignore[union-attr]
    assert _warnings(caplog) == [
        "GENESYSCLOUD_OAUTHCLIENT_ID had surrounding whitespace; it was stripped",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET had surrounding whitespace; it was stripped",
    ]
    assert "pw-x" not in caplog.text
