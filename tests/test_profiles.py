"""TokenManager.from_profile: the Genesys Cloud CLI's ``~/.gc/config.toml``, read as the CLI
reads it, against the emulator and real files."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import traceback
from pathlib import Path

import pytest

from genesys_token import ConfigurationError, Settings, TokenManager
from genesys_token.profiles import ProfileError, read_profile
from genesys_token.settings import UNSET
from genesys_token.testing import GenesysEmulator

SECRET = "profile-secret-value-0123456789"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _cli_file(tmp_path: Path, emulator: GenesysEmulator, mode: int = 0o600) -> Path:
    # As `gc profiles new` writes it (viper: single quotes, every key), plus a hand-made one.
    return _write(
        tmp_path / "config.toml",
        f"""
[DEFAULT]
access_token = ''
client_credentials = '{emulator.client_id}'
client_secret = '{emulator.client_secret}'
environment = 'mypurecloud.ie'
grant_type = '1'
redirect_uri = ''
secure_login_enabled = false

[Staging]
environment = "usw2.pure.cloud"
client_credentials = "staging-id"
client_secret = "{SECRET}"
""",
        mode,
    )


def test_a_cli_profile_gets_a_token_from_the_emulator(
    tmp_path: Path, emulator: GenesysEmulator
) -> None:
    path = _cli_file(tmp_path, emulator)
    with TokenManager.from_profile(
        path=path, token_url=emulator.token_url, api_base_url=emulator.api_base_url
    ) as manager:
        assert emulator.is_token_valid(manager.get_token())
        assert manager.client_id == emulator.client_id
    assert emulator.token_request_log[-1].client_id == emulator.client_id


def test_profile_names_and_keys_ignore_case_as_in_the_cli(
    tmp_path: Path, emulator: GenesysEmulator
) -> None:
    path = _write(
        tmp_path / "config.toml",
        f"[Prod]\nClient_Credentials = '{emulator.client_id}'\n"
        f"CLIENT_SECRET = '{emulator.client_secret}'\n",
    )
    with TokenManager.from_profile(
        "prod", path, token_url=emulator.token_url, api_base_url=emulator.api_base_url
    ) as manager:
        assert emulator.is_token_valid(manager.get_token())


@pytest.mark.parametrize(
    ("environment", "token_url"),
    [
        ("mypurecloud.com", "https://login.mypurecloud.com/oauth/token"),
        ("mypurecloud.ie", "https://login.mypurecloud.ie/oauth/token"),
        ("usw2.pure.cloud", "https://login.usw2.pure.cloud/oauth/token"),
        ("eu-central-1", "https://login.mypurecloud.de/oauth/token"),
        ("me_central_1", "https://login.mec1.pure.cloud/oauth/token"),  # the CLI's spelling
        ("ap_northeast_3", "https://login.apne3.pure.cloud/oauth/token"),
    ],
)
def test_the_cli_environment_maps_to_a_region(
    tmp_path: Path, environment: str, token_url: str
) -> None:
    path = _write(
        tmp_path / "c.toml",
        f"[DEFAULT]\nenvironment = '{environment}'\nclient_credentials = 'id'\n"
        f"client_secret = '{SECRET}'\n",
    )
    with TokenManager.from_profile(path=path, background_refresh=False) as manager:
        assert manager.token_url == token_url


def test_keyword_then_settings_then_profile(tmp_path: Path, emulator: GenesysEmulator) -> None:
    path = _cli_file(tmp_path, emulator)
    with TokenManager.from_profile("staging", path) as manager:
        assert manager.token_url == "https://login.usw2.pure.cloud/oauth/token"
    with TokenManager.from_profile(
        "staging", path, settings=Settings(region="eu-central-1")
    ) as manager:
        assert manager.token_url == "https://login.mypurecloud.de/oauth/token"
    with TokenManager.from_profile(
        "staging", path, settings=Settings(region="eu-central-1"), region="ap-south-1"
    ) as manager:
        assert manager.token_url == "https://login.aps1.pure.cloud/oauth/token"


def test_the_cli_local_mode_needs_both_urls(tmp_path: Path, emulator: GenesysEmulator) -> None:
    path = _write(
        tmp_path / "c.toml",
        f"[DEFAULT]\nenvironment = 'localhost:{emulator.port}'\n"
        f"client_credentials = '{emulator.client_id}'\n"
        f"client_secret = '{emulator.client_secret}'\n",
    )
    with pytest.raises(ProfileError, match=r"localhost.*token_url= and api_base_url="):
        TokenManager.from_profile(path=path, token_url=emulator.token_url)
    with TokenManager.from_profile(
        path=path, token_url=emulator.token_url, api_base_url=emulator.api_base_url
    ) as manager:
        assert emulator.is_token_valid(manager.get_token())


# -- what cannot be used, said clearly and never with a value ----------------------------


def _refusal(path: Path, name: str = "default") -> ProfileError:
    with pytest.raises(ProfileError) as caught:
        read_profile(name, path)
    error = caught.value
    assert isinstance(error, ConfigurationError)
    text = "".join(traceback.format_exception(error)) + repr(vars(error))
    assert SECRET not in text
    # No frame the traceback keeps (an error tracker would show their locals) holds it.
    for frame, _ in traceback.walk_tb(error.__traceback__):
        assert SECRET not in repr(frame.f_locals), frame.f_code.co_name
    assert error.path == str(path)
    assert error.profile == name
    assert str(path) in str(error)
    return error


def test_a_missing_file_names_the_path_and_the_cli_command(tmp_path: Path) -> None:
    error = _refusal(tmp_path / "nowhere.toml")
    assert "does not exist" in str(error)
    assert "gc profiles new" in str(error)


def test_the_default_path_is_the_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".gc").mkdir()
    _write(
        tmp_path / ".gc" / "config.toml", f"[x]\nclient_credentials='i'\nclient_secret='{SECRET}'"
    )
    assert read_profile("x").path == str(tmp_path / ".gc" / "config.toml")


def test_a_missing_profile_names_those_there_and_no_value(
    tmp_path: Path, emulator: GenesysEmulator
) -> None:
    error = _refusal(_cli_file(tmp_path, emulator), "prod")
    assert "no profile 'prod'" in str(error)
    assert "profiles there: DEFAULT, Staging" in str(error)
    assert emulator.client_secret not in str(error)


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (f"client_secret = '{SECRET}'", "client_credentials", "is missing"),
        ("client_credentials = 'i'", "client_secret", "is missing"),
        ("client_credentials = 'i'\nclient_secret = 42", "client_secret", "must be a string"),
        (f"client_credentials = 7\nclient_secret = '{SECRET}'", "client_credentials", "not int"),
        ("client_credentials = 'i'\nclient_secret = ' '", "client_secret", "is empty"),
        (
            f"client_credentials = 'i'\nclient_secret = '{SECRET}'\nenvironment = 'mars.cloud'",
            "environment",
            "unknown Genesys Cloud region",
        ),
        (
            f"client_credentials = 'i'\nclient_secret = '{SECRET}'\nenvironment = ['x']",
            "environment",
            "must be a string",
        ),
        (
            f"client_credentials = 'i'\nclient_secret = '{SECRET}'\nCLIENT_SECRET = 'b'",
            "client_secret",
            "set twice",
        ),
        (f"grant_type = '3'\nclient_secret = '{SECRET}'", "grant_type", "PKCE"),
        (f"grant_type = 2\nclient_secret = '{SECRET}'", "grant_type", "implicit"),
        ("access_token = 'abc'\nenvironment = 'mypurecloud.com'", "client_credentials", "access"),
    ],
)
def test_a_bad_key_is_named_never_its_value(
    tmp_path: Path, body: str, key: str, words: str
) -> None:
    error = _refusal(_write(tmp_path / "c.toml", f"[DEFAULT]\n{body}\n"))
    assert error.key == error.field == key
    assert f"'{key}'" in str(error) or key in str(error)
    assert words in str(error)
    assert "profile 'DEFAULT'" in str(error)


def test_a_file_that_is_not_toml_shows_the_place_not_the_text(tmp_path: Path) -> None:
    error = _refusal(_write(tmp_path / "c.toml", f"[DEFAULT]\nclient_secret = {SECRET}\n"))
    assert "is not valid TOML (at line 2" in str(error)


def test_a_fifo_does_not_hang_the_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert "not a regular file" in str(_refusal(fifo))


def test_a_file_others_may_write_is_refused(tmp_path: Path, emulator: GenesysEmulator) -> None:
    error = _refusal(_cli_file(tmp_path, emulator, mode=0o622))
    assert "writable by its group or others (mode 0622)" in str(error)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root"
)
def test_a_file_another_user_owns_is_refused(tmp_path: Path, emulator: GenesysEmulator) -> None:
    # Review: mode 0644 but owned by nobody: its owner can put their credentials in it.
    path = _cli_file(tmp_path, emulator, mode=0o600)
    os.chown(path, 65534, -1)
    error = _refusal(path)
    assert "belongs to another user (uid 65534)" in str(error)


def test_a_secret_that_is_not_a_string_is_held_by_no_frame(tmp_path: Path) -> None:
    # Review: client_secret = ["..."] was named by type in the error, but the list stayed in
    # clear in the frames of read_profile (what error trackers send).
    path = tmp_path / "config.toml"
    path.write_text(
        '[default]\nclient_credentials = "some-id"\nclient_secret = ["TopSecretXyZ123"]\n'
    )
    path.chmod(0o600)
    with pytest.raises(ConfigurationError) as caught:
        read_profile("default", path)
    assert "must be a string, not list" in str(caught.value)
    seen = []
    tb = caught.value.__traceback__
    while tb is not None:
        seen.append(repr(tb.tb_frame.f_locals))
        tb = tb.tb_next
    assert "TopSecretXyZ123" not in "".join(seen)


def test_a_file_others_may_read_is_used_with_one_warning(
    tmp_path: Path, emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # The CLI writes its file 0644 (viper's default): refusing it would refuse every user.
    path = _cli_file(tmp_path, emulator, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        read_profile("default", path)
        read_profile("staging", path)
    warnings = [r for r in caplog.records if "readable by other users" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "0644" in warnings[0].getMessage()
    assert SECRET not in caplog.text


def test_a_private_file_is_read_without_a_warning(
    tmp_path: Path, emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="genesys_token"):
        read_profile("staging", _cli_file(tmp_path, emulator))
    assert caplog.records == []


def test_the_profile_never_shows_its_secret(tmp_path: Path, emulator: GenesysEmulator) -> None:
    profile = read_profile("staging", _cli_file(tmp_path, emulator))
    assert SECRET not in repr(profile)
    assert profile.client_secret.reveal() == SECRET
    with TokenManager.from_profile("staging", profile.path) as manager:
        assert SECRET not in repr(manager)


def test_every_setting_is_a_named_keyword_of_from_profile() -> None:
    # Like from_env's (tests/test_settings.py): a new Settings field must reach it too.
    parameters = inspect.signature(TokenManager.from_profile).parameters
    kinds = {p.kind for p in parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    for field in (f.name for f in dataclasses.fields(Settings)):
        assert parameters[field].kind is inspect.Parameter.KEYWORD_ONLY, field
        assert parameters[field].default is UNSET, field
    assert parameters["name"].default == "default"
