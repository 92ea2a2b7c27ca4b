"""The public Settings: checked when made, frozen, shared; keywords override its fields."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genesys_token import ConfigurationError, Settings, TokenManager, TokenManagerPool
from genesys_token.credentials import SecretValue
from genesys_token.integrations._common import manager_from_settings
from genesys_token.settings import UNSET
from genesys_token.testing import GenesysEmulator

#: Distinctive: found by a plain substring search anywhere it leaks.
HOOK_SECRET = "hook-Secret-q8Zt4wXv"
HOOK_URL = "https://hooks.example.com/services/T0/B0/PATHSECRET-9f3k"

_NUMBERS = [
    "refresh_buffer",
    "refresh_jitter",
    "retry_deadline",
    "max_retry_after",
    "backoff_base",
    "backoff_max",
    "drain_timeout",
]


def _bad_values() -> Iterator[Any]:
    for name in _NUMBERS:
        yield pytest.param(name, "30", id=f"{name}-str")
        yield pytest.param(name, -1, id=f"{name}-negative")
        yield pytest.param(name, math.nan, id=f"{name}-nan")
        yield pytest.param(name, math.inf, id=f"{name}-inf")
        yield pytest.param(name, True, id=f"{name}-bool")
    for name in ("retry_deadline", "backoff_max", "drain_timeout"):
        yield pytest.param(name, 0, id=f"{name}-zero")
    for value, label in [
        ("5", "str"),
        (0, "zero"),
        (-1, "negative"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (True, "bool"),
        ((1, 2, 3), "triple"),
        ((1, -2), "negative-read"),
        ((1, math.inf), "inf-read"),
    ]:
        yield pytest.param("timeout", value, id=f"timeout-{label}")
    for name, minimum in (("max_retries", 0), ("max_response_bytes", 1024)):
        yield pytest.param(name, 1.5, id=f"{name}-float")
        yield pytest.param(name, True, id=f"{name}-bool")
        yield pytest.param(name, minimum - 1, id=f"{name}-below")
        yield pytest.param(name, "5000", id=f"{name}-str")
    yield pytest.param("scopes", 5, id="scopes-int")
    yield pytest.param("scopes", ["ok", ""], id="scopes-empty-item")
    yield pytest.param("scopes", ["two words"], id="scopes-space")
    yield pytest.param("scopes", [7], id="scopes-not-str")
    yield pytest.param("verify", 1, id="verify-int")
    yield pytest.param("verify", "/no/such/ca.pem", id="verify-missing-file")
    yield pytest.param("background_refresh", "yes", id="background_refresh-str")
    yield pytest.param("background_refresh", 1, id="background_refresh-int")
    yield pytest.param("region", 7, id="region-int")
    yield pytest.param("region", "mars-north-1", id="region-unknown")
    for name in ("token_url", "api_base_url", "jwks_url", "webhook_url"):
        yield pytest.param(name, 7, id=f"{name}-int")
        yield pytest.param(name, "login.example.com/x", id=f"{name}-relative")
        yield pytest.param(name, "http://example.com/x", id=f"{name}-plain-http")
        yield pytest.param(name, "https://u:p@example.com/x", id=f"{name}-credentials")
    yield pytest.param("webhook_secret", "", id="webhook_secret-empty")
    yield pytest.param("webhook_secret", "a\nb", id="webhook_secret-newline")
    yield pytest.param("webhook_secret", 5, id="webhook_secret-int")
    yield pytest.param("proxies", "http://proxy:3128", id="proxies-str")
    yield pytest.param("proxies", {"https": "ftp://proxy:21"}, id="proxies-scheme")
    yield pytest.param("proxies", {"https": "proxy:3128"}, id="proxies-no-scheme")
    yield pytest.param("proxies", {"https": 3128}, id="proxies-not-str")
    yield pytest.param("proxies", {"ftp": "http://proxy:3128"}, id="proxies-key")
    yield pytest.param("proxies", {"https": "http://proxy:port"}, id="proxies-port")
    yield pytest.param("cert", 5, id="cert-int")
    yield pytest.param("cert", "/no/such/client.pem", id="cert-missing-file")
    yield pytest.param("cert", ("/no/such/c.pem", "/no/such/k.pem"), id="cert-missing-pair")
    yield pytest.param("api_rate_limit", (0, 1.0), id="api-rate-limit-zero")
    yield pytest.param("api_rate_wait", -1, id="api-rate-wait-negative")
    yield pytest.param("tokens", 0, id="tokens-zero")


@pytest.mark.parametrize(("name", "value"), list(_bad_values()))
def test_a_bad_value_is_refused_naming_its_field(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**{name: value})
    assert caught.value.field == name
    assert name in str(caught.value)


def test_every_field_has_a_bad_value_tested() -> None:
    tested = {p.values[0] for p in _bad_values()}
    assert tested == {f.name for f in dataclasses.fields(Settings)}


def test_defaults_are_the_managers_defaults() -> None:
    s = Settings()
    assert (s.region, s.token_url, s.api_base_url, s.scopes) == (None, None, None, ())
    assert (s.refresh_buffer, s.refresh_jitter, s.timeout) == (300.0, 60.0, (3.05, 10.0))
    assert (s.max_retries, s.retry_deadline, s.max_retry_after) == (4, 60.0, 60.0)
    assert (s.backoff_base, s.backoff_max, s.max_response_bytes) == (0.5, 30.0, 64 * 1024)
    assert (s.verify, s.jwks_url, s.webhook_url, s.webhook_secret) == (True, None, None, None)
    assert (s.background_refresh, s.drain_timeout) == (True, 30.0)


def test_values_are_normalised(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = Settings(
        timeout=5,
        scopes="a:b c:d a:b",
        verify=str(ca),
        refresh_buffer=0,
        webhook_secret=HOOK_SECRET,
        token_url="http://127.0.0.1:9/oauth/token/",
        region="EU_WEST_1",
    )
    assert s.timeout == (5.0, 5.0)
    assert Settings(timeout=[1, 2]).timeout == (1.0, 2.0)
    assert s.scopes == ("a:b", "c:d")
    assert s.verify == str(ca)
    assert s.refresh_buffer == 0.0 and isinstance(s.refresh_buffer, float)
    assert isinstance(s.webhook_secret, SecretValue) and s.webhook_secret.matches(HOOK_SECRET)
    assert s.token_url == "http://127.0.0.1:9/oauth/token"
    assert s.region == "EU_WEST_1"  # kept as given (checked): resolved by the manager


def test_settings_are_frozen_and_keyword_only() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timeout = (1.0, 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(5)  # type: ignore[misc]
    with pytest.raises(TypeError, match="no_such"):
        Settings(no_such=1)  # type: ignore[call-arg]


def test_replace_checks_again_and_leaves_the_original_alone() -> None:
    s = Settings(timeout=5)
    with pytest.raises(ConfigurationError) as caught:
        s.replace(timeout=-1)
    assert caught.value.field == "timeout"
    with pytest.raises(ConfigurationError) as caught:
        s.replace(no_such_setting=1)
    assert caught.value.field == "no_such_setting"
    derived = s.replace(region="eu-west-1", scopes="x:y")
    assert (derived.region, derived.scopes, derived.timeout) == ("eu-west-1", ("x:y",), (5.0, 5.0))
    assert (s.region, s.scopes) == (None, ())
    assert s.replace() == s


def test_replace_region_does_what_it_says() -> None:
    # region is kept as given, not resolved into the URLs: replacing it moves the manager.
    base = Settings(region="us-east-1")
    with TokenManager("id", "secret", settings=base.replace(region="eu-central-1")) as manager:
        assert manager.token_url == "https://login.mypurecloud.de/oauth/token"
        assert manager.api_base_url == "https://api.mypurecloud.de"
        assert manager.settings.region == "eu-central-1"


def test_from_env_reads_the_location_and_no_credential() -> None:
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "env-id",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "env-secret-value",
        "GENESYSCLOUD_REGION": "mypurecloud.ie",
        "GENESYSCLOUD_TOKEN_URL": "http://127.0.0.1:1/oauth/token",
        "GENESYSCLOUD_API_URL": "",  # empty: unset
    }
    s = Settings.from_env(env)
    assert (s.region, s.token_url, s.api_base_url) == (
        "mypurecloud.ie",
        "http://127.0.0.1:1/oauth/token",
        None,
    )
    assert "env-secret-value" not in repr(s) and "env-id" not in repr(s)
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"GENESYSCLOUD_REGION": "us-east-9"})
    assert caught.value.field == "region"


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYSCLOUD_REGION", "eu_central_1")
    assert Settings.from_env().region == "eu_central_1"


# -- keywords over fields --------------------------------------------------------------


def test_an_explicit_keyword_overrides_the_field_and_the_rest_stay() -> None:
    base = Settings(timeout=5, refresh_buffer=10, max_retries=1, background_refresh=False)
    with TokenManager("id", "secret", settings=base, timeout=7) as manager:
        assert manager.settings.timeout == (7.0, 7.0)
        assert manager.settings.refresh_buffer == 10.0
        assert manager.settings.max_retries == 1
        assert manager.settings.background_refresh is False
    assert base.timeout == (5.0, 5.0)  # shared: never changed by a manager


def test_a_keyword_given_its_default_value_still_overrides_the_field() -> None:
    base = Settings(refresh_buffer=10, scopes="a", background_refresh=False, jwks_url=None)
    with TokenManager(
        "id", "secret", settings=base, refresh_buffer=300.0, scopes=(), background_refresh=True
    ) as manager:
        assert manager.settings.refresh_buffer == 300.0
        assert manager.settings.scopes == ()
        assert manager.settings.background_refresh is True


def test_none_given_explicitly_overrides_a_location_field() -> None:
    base = Settings(region="eu-west-1")
    with TokenManager(
        "id",
        "secret",
        settings=base,
        region=None,
        token_url="http://127.0.0.1:9/oauth/token",
        api_base_url="http://127.0.0.1:9",
    ) as manager:
        assert manager.settings.region is None
        assert manager.token_url == "http://127.0.0.1:9/oauth/token"


def test_the_settings_come_back_as_given_without_keywords() -> None:
    base = Settings(timeout=5)
    with TokenManager("id", "secret", settings=base) as manager:
        assert manager.settings is base
    with TokenManager("id", "secret") as manager:
        assert manager.settings == Settings()
        assert manager.token_url == "https://login.mypurecloud.com/oauth/token"


def test_settings_must_be_a_settings() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenManager("id", "secret", settings={"timeout": 5})  # type: ignore[arg-type]
    assert caught.value.field == "settings"


def test_a_bad_keyword_names_its_field_over_good_settings() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenManager("id", "secret", settings=Settings(timeout=5), refresh_jitter=math.nan)
    assert caught.value.field == "refresh_jitter"


def test_one_settings_shared_by_managers_of_several_clients(emulator: GenesysEmulator) -> None:
    emulator.add_client("second", "second-secret")
    shared = Settings(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        background_refresh=False,
        timeout=5,
    )
    with (
        TokenManager(emulator.client_id, emulator.client_secret, settings=shared) as one,
        TokenManager("second", "second-secret", settings=shared) as two,
    ):
        assert one.get_token() != two.get_token()
        assert one.settings is two.settings is shared
    assert emulator.token_requests == 2


def test_from_env_precedence_keyword_then_settings_then_environment() -> None:
    env = {
        "GENESYSCLOUD_OAUTHCLIENT_ID": "env-id",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "env-secret",
        "GENESYSCLOUD_REGION": "eu-west-1",
    }
    with TokenManager.from_env(env) as manager:
        assert manager.token_url == "https://login.mypurecloud.ie/oauth/token"
        assert manager.client_id == "env-id"
    # A field the settings set wins over the environment...
    with TokenManager.from_env(env, settings=Settings(region="eu-central-1")) as manager:
        assert manager.token_url == "https://login.mypurecloud.de/oauth/token"
    # ... the environment fills a field they leave unset ...
    with TokenManager.from_env(env, settings=Settings(timeout=5)) as manager:
        assert manager.token_url == "https://login.mypurecloud.ie/oauth/token"
        assert manager.settings.timeout == (5.0, 5.0)
    # ... and an explicit keyword wins over both.
    with TokenManager.from_env(
        env, settings=Settings(region="eu-central-1", timeout=5), region="ap-south-1", timeout=9
    ) as manager:
        assert manager.token_url == "https://login.aps1.pure.cloud/oauth/token"
        assert manager.settings.timeout == (9.0, 9.0)
    with TokenManager.from_env(env, client_id="given-id", client_secret="given") as manager:
        assert manager.client_id == "given-id"


def test_from_env_keeps_its_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the README and the cron example call.
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "env-id")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "env-secret")
    from genesys_token.stores import MemoryStore

    store = MemoryStore()
    with TokenManager.from_env(store=store, background_refresh=False) as manager:
        assert manager.store is store
        assert manager.settings.background_refresh is False


# -- the pool ----------------------------------------------------------------------------


def test_a_pool_gives_its_settings_to_every_manager(emulator: GenesysEmulator) -> None:
    shared = Settings(
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        refresh_buffer=42,
        background_refresh=False,
    )
    with TokenManagerPool(settings=shared, max_retries=1, max_idle=60) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret, scopes="a:b")
        assert manager.settings.refresh_buffer == 42.0
        assert manager.settings.max_retries == 1  # the pool's keyword over the field
        assert manager.settings.scopes == ("a:b",)  # per client
        assert manager.token_url == emulator.token_url
        manager.get_token()
        # get()'s location replaces the pool's as one unit.
        other = pool.get(emulator.client_id, emulator.client_secret, region="eu-west-1")
        assert other.token_url == "https://login.mypurecloud.ie/oauth/token"
        assert other.settings.api_base_url is None
    assert shared.max_retries == 4


def test_a_pool_keeps_the_keyword_calls_it_had(emulator: GenesysEmulator) -> None:
    from genesys_token.stores import MemoryStore

    store = MemoryStore()
    with TokenManagerPool(
        store=store,
        timeout=5,
        max_idle=60,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
    ) as pool:
        manager = pool.get(emulator.client_id, emulator.client_secret)
        assert manager.store is store
        assert manager.settings.timeout == (5.0, 5.0)


def test_a_pool_checks_its_settings_when_made() -> None:
    for bad in ({"timeout": -1}, {"region": "us-east-9"}, {"settings": 5}):
        with pytest.raises(ConfigurationError) as caught:
            TokenManagerPool(**bad)  # type: ignore[arg-type]
        assert caught.value.field in bad


# -- the signatures ----------------------------------------------------------------------

_CONSTRUCTORS = {
    "TokenManager": TokenManager.__init__,
    "TokenManager.from_env": TokenManager.from_env,
    "TokenManagerPool": TokenManagerPool.__init__,
    "Settings": Settings.__init__,
}


@pytest.mark.parametrize("name", list(_CONSTRUCTORS))
def test_no_constructor_takes_arbitrary_keywords(name: str) -> None:
    kinds = {p.kind for p in inspect.signature(_CONSTRUCTORS[name]).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert inspect.Parameter.VAR_POSITIONAL not in kinds


@pytest.mark.parametrize("name", ["TokenManager", "TokenManager.from_env", "TokenManagerPool"])
def test_every_setting_is_a_named_keyword_defaulting_to_the_settings_value(name: str) -> None:
    parameters = inspect.signature(_CONSTRUCTORS[name]).parameters
    expected = {f.name for f in dataclasses.fields(Settings)}
    if name == "TokenManagerPool":
        expected -= {"scopes"}  # per client: get() takes it
    for field in expected:
        assert parameters[field].kind is inspect.Parameter.KEYWORD_ONLY, field
        assert parameters[field].default is UNSET, field
    assert parameters["settings"].default is None
    assert repr(UNSET) == "<the settings' value>"


# -- secrets ---------------------------------------------------------------------------


def _hooked(**changes: Any) -> dict[str, Any]:
    return {"webhook_url": HOOK_URL, "webhook_secret": HOOK_SECRET, **changes}


def _error_texts(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), repr(error.args), repr(vars(error))]
    if error.__cause__ is not None or error.__context__ is not None:
        texts.append("chained")  # a chained error would carry frames: there must be none
    return texts


def _plain_in_frames(error: BaseException, needle: str) -> list[str]:
    """The library frames of ``error``'s traceback holding ``needle`` in a local."""
    found = []
    tb: types.TracebackType | None = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if "/tests/" not in frame.f_code.co_filename:
            for name, value in frame.f_locals.items():
                if isinstance(value, str | dict | list | tuple) and needle in repr(value):
                    found.append(f"{frame.f_code.co_name}:{name}")
        tb = tb.tb_next
    return found


_ENV = {"GENESYSCLOUD_OAUTHCLIENT_ID": "id", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret"}
_BAD = [
    {"timeout": -1},
    {"region": "nowhere"},
    {"max_retries": math.nan},
    {"verify": 1},
    {"webhook_url": "http://example.com/PATHSECRET-9f3k"},
]


@pytest.mark.parametrize("bad", _BAD, ids=[next(iter(b)) for b in _BAD])
def test_no_webhook_secret_or_url_path_in_any_error_or_frame(bad: dict[str, Any]) -> None:
    makers = [
        lambda: Settings(**_hooked(**bad)),
        lambda: Settings(**_hooked()).replace(**bad),
        lambda: Settings().replace(**_hooked(**bad)),
        lambda: TokenManager("id", "secret", **_hooked(**bad)),
        lambda: TokenManager("id", "secret", settings=Settings(**_hooked()), **bad),
        lambda: TokenManager.from_env(_ENV, **_hooked(**bad)),
        lambda: TokenManagerPool(**_hooked(**bad)),
    ]
    for make in makers:
        with pytest.raises(ConfigurationError) as caught:
            make()
        text = "\n".join(_error_texts(caught.value))
        assert "chained" not in text
        assert HOOK_SECRET not in text
        assert "PATHSECRET" not in text
        assert _plain_in_frames(caught.value, HOOK_SECRET) == []


def test_no_webhook_secret_or_url_path_in_any_repr(emulator: GenesysEmulator) -> None:
    settings = Settings(**_hooked(token_url=emulator.token_url, api_base_url=emulator.api_base_url))
    with (
        TokenManager(emulator.client_id, emulator.client_secret, settings=settings) as manager,
        TokenManagerPool(settings=settings) as pool,
    ):
        pooled = pool.get(emulator.client_id, emulator.client_secret)
        texts = [
            repr(settings),
            str(settings),
            repr(settings.replace(timeout=5)),
            repr(manager),
            repr(manager.settings),
            repr(manager._config),
            repr(pool),
            repr(pooled.settings),
        ]
    text = "\n".join(texts)
    assert HOOK_SECRET not in text
    assert "PATHSECRET" not in text
    assert "hooks.example.com" not in text


def test_integrations_build_a_manager_from_a_settings_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GENESYSCLOUD_REGION", raising=False)
    config = {
        "GENESYS_CLIENT_ID": "fw-id",
        "GENESYS_CLIENT_SECRET": "fw-secret",
        "GENESYS_REGION": "eu-west-1",
        "GENESYS_TOKEN_OPTIONS": {"settings": Settings(timeout=5), "refresh_buffer": 10},
    }
    with manager_from_settings(config.get, "app.config") as manager:
        assert manager.client_id == "fw-id"
        assert manager.settings.timeout == (5.0, 5.0)
        assert manager.settings.refresh_buffer == 10.0
        assert manager.token_url == "https://login.mypurecloud.ie/oauth/token"
    config["GENESYS_TOKEN_OPTIONS"] = {"no_such_setting": 1}
    with pytest.raises(ConfigurationError) as caught:
        manager_from_settings(config.get, "app.config")
    assert caught.value.field == "no_such_setting"
