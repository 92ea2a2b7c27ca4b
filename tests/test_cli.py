"""The genesys-token command: token, inspect, check, emulator; exit codes; no secrets out."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import TricklingServer

import genesys_token
from genesys_token import Settings, TokenManager, cli
from genesys_token.env_names import OWN_NAMES
from genesys_token.testing import Fault, GenesysEmulator
from genesys_token.testing import _cli as emulator_cli
from genesys_token.token import fingerprint_of

PROCESS_TIMEOUT = 30.0
VENV_SCRIPT = Path(sys.executable).with_name("genesys-token")


def command() -> list[str]:
    """The installed console script when there is one, else ``python -m``."""
    if VENV_SCRIPT.exists():
        return [str(VENV_SCRIPT)]
    return [sys.executable, "-m", "genesys_token.cli"]


def emulator_env(emulator: GenesysEmulator, cache: Path | str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENESYSCLOUD_")}
    env.update(
        GENESYSCLOUD_OAUTHCLIENT_ID=emulator.client_id,
        GENESYSCLOUD_OAUTHCLIENT_SECRET=emulator.client_secret,
        GENESYSCLOUD_TOKEN_URL=emulator.token_url,
        GENESYSCLOUD_API_URL=emulator.api_base_url,
        GENESYSCLOUD_TOKEN_CACHE=str(cache),
    )
    env.update(extra)
    return env


@pytest.fixture
def env(
    emulator: GenesysEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The emulator's settings in this process's environment, with a private cache."""
    for name in [n for n in os.environ if n.startswith("GENESYSCLOUD_")]:
        monkeypatch.delenv(name)
    values = emulator_env(emulator, tmp_path / "cache")
    for name, value in values.items():
        if name.startswith("GENESYSCLOUD_"):
            monkeypatch.setenv(name, value)
    yield values


# -- acceptance, as real processes ---------------------------------------------------------


def test_five_runs_of_token_make_one_token_request(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    outputs = []
    for _ in range(5):
        result = subprocess.run(
            [*command(), "token"],
            env=emulator_env(emulator, tmp_path / "cache"),
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        outputs.append(result.stdout)
    assert emulator.token_requests == 1
    assert len(set(outputs)) == 1
    assert outputs[0] == emulator.issued_tokens[0] + "\n"  # the token and a newline, only


def test_bad_credentials_exit_3_without_showing_the_secret(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    secret = "wrong-secret-7f3a9c"
    result = subprocess.run(
        [*command(), "token"],
        env=emulator_env(emulator, tmp_path / "cache", GENESYSCLOUD_OAUTHCLIENT_SECRET=secret),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 3
    assert result.stdout == ""
    assert secret not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "InvalidClientError" in result.stderr


def test_module_entry_point_runs_the_command(emulator: GenesysEmulator, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genesys_token.cli", "token"],
        env=emulator_env(emulator, "off"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0
    assert result.stdout == emulator.issued_tokens[0] + "\n"


def test_python_m_genesys_token_runs_the_command(emulator: GenesysEmulator) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genesys_token", "token"],
        env=emulator_env(emulator, "off"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == emulator.issued_tokens[0] + "\n"


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"genesys-token {genesys_token.__version__}\n"


def test_inspect_into_a_closed_pipe_ends_without_a_traceback(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    # `genesys-token inspect | head -1`, with the reader gone before the first write: a real
    # pipe whose read end is closed, so every write fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*command(), "inspect"],
            env=emulator_env(emulator, tmp_path / "cache"),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 0


def test_inspect_piped_into_head_prints_one_line_and_no_traceback(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    script = " ".join(shlex.quote(part) for part in command()) + " inspect | head -1"
    result = subprocess.run(
        ["sh", "-c", script],
        env=emulator_env(emulator, tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.stdout == f"client_id:   {emulator.client_id}\n"
    assert result.stderr == ""


def test_cache_off_works_where_fcntl_is_missing(emulator: GenesysEmulator) -> None:
    # Windows has no fcntl: the file store cannot load there, and must not be imported when
    # GENESYSCLOUD_TOKEN_CACHE=off.
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "from genesys_token.cli import main\n"
        "raise SystemExit(main(['token']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=emulator_env(emulator, "off"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == emulator.issued_tokens[0] + "\n"


# -- token ---------------------------------------------------------------------------------


def test_token_with_the_cache_off_requests_a_token_every_run(
    env: dict[str, str],
    emulator: GenesysEmulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", "off")
    assert cli.main(["token"]) == 0
    assert cli.main(["token"]) == 0
    assert emulator.token_requests == 2
    assert capsys.readouterr().out.splitlines() == emulator.issued_tokens


def test_missing_client_id_is_a_configuration_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_ID")
    assert cli.main(["token"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "GENESYSCLOUD_OAUTHCLIENT_ID" in captured.err


def test_cache_path_naming_a_file_is_a_configuration_error(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "file"
    file.write_text("")
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", str(file))
    assert cli.main(["token"]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_cache_directory_others_can_write_exits_2_with_the_reason(
    env: dict[str, str],
    emulator: GenesysEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: int,
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", str(directory))
    assert cli.main(["token"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ConfigurationError: token cache directory" in captured.err
    assert f"is writable by its group or others (mode {mode:04o}): refused" in captured.err
    assert emulator.token_requests == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_cache_directory_of_another_user_exits_2_with_the_reason(
    env: dict[str, str],
    emulator: GenesysEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", str(directory))
    assert cli.main(["token"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "is owned by uid 65534, not by this user (uid 0): refused" in captured.err
    assert emulator.token_requests == 0


def test_fifo_planted_at_the_cache_entry_costs_one_request_not_a_hang(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    from genesys_token.stores import store_key

    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    fifo = cache / f"{store_key(emulator.client_id, emulator.token_url, ())}.json"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [*command(), "token"],
            env=emulator_env(emulator, cache),
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
    finally:
        with contextlib.suppress(OSError):  # let a reader stuck opening the FIFO go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert time.monotonic() - started < 5.0
    assert result.returncode == 0, result.stderr
    assert result.stdout == emulator.issued_tokens[0] + "\n"
    assert emulator.token_requests == 1
    assert f"ignoring token cache entry {fifo}: it is not a regular file (a FIFO)" in (
        result.stderr
    )


def test_rejected_credentials_exit_3_in_process(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "not-the-secret-91b2")
    assert cli.main(["token"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    for text in (captured.err, caplog.text):
        assert "not-the-secret-91b2" not in text


def test_client_without_the_grant_exits_3(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.inject(
        Fault(status=400, body={"error": "unauthorized_client", "description": "no grant"})
    )
    assert cli.main(["token"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("genesys-token: error: ")
    assert emulator.client_secret not in captured.err


def test_error_lines_redact_the_secret_and_tokens(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = env["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    assert cli._fail(f"oops {secret}\nBearer abc.def.ghi", 4) == 4
    err = capsys.readouterr().err
    assert secret not in err and "abc.def.ghi" not in err
    assert err.count("\n") == 1


def test_error_lines_redact_the_secret_stripped_as_it_was_sent(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The library strips the environment's secret before use, so a server echoing what it
    # was sent echoes the stripped value, which the raw one (with its space) does not match.
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", " an-env-secret\t")
    assert cli._fail("correlation id an-env-secret", 4) == 4
    err = capsys.readouterr().err
    assert "an-env-secret" not in err
    assert err == "genesys-token: error: correlation id [REDACTED]\n"


def test_error_lines_redact_the_secret_file_and_leave_prose_of_a_short_secret(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("a-file-secret-value\n", encoding="utf-8")
    secret_file.chmod(0o600)
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_SECRET")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE", str(secret_file))
    assert cli._fail("echoed a-file-secret-value back", 4) == 4
    assert capsys.readouterr().err == "genesys-token: error: echoed [REDACTED] back\n"
    # A one-letter secret is never searched in text: the line stays readable.
    monkeypatch.delenv("GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "e")
    assert cli._fail("credentials rejected by Genesys", 3) == 3
    assert capsys.readouterr().err == "genesys-token: error: credentials rejected by Genesys\n"


# -- inspect and check ---------------------------------------------------------------------


def test_inspect_shows_the_source_and_never_the_token(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["inspect"]) == 0
    second = capsys.readouterr().out
    token = emulator.issued_tokens[0]
    assert token not in first and token not in second
    assert "type:        opaque" in first
    assert "source:      network" in first
    assert "source:      cache" in second
    assert "claims" not in first
    assert emulator.token_requests == 1


@pytest.mark.genesys_emulator(token_format="jwt")
def test_inspect_shows_jwt_claims(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "type:        jwt" in out
    assert "claims:" in out and emulator.client_id in out
    assert emulator.issued_tokens[0] not in out


def test_check_exits_0_when_the_token_works(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "ok: the credentials work and the API accepts their token"
    assert emulator.token_requests == 1  # nothing was cached: one request, not two
    assert emulator.api_requests == 1
    assert emulator.issued_tokens[0] not in out


def test_check_with_a_wrong_secret_fails_although_a_token_is_cached(
    env: dict[str, str],
    emulator: GenesysEmulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["token"]) == 0  # the right secret caches a token
    capsys.readouterr()
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "the-new-secret-is-wrong")
    assert cli.main(["check"]) == 3
    captured = capsys.readouterr()
    assert "InvalidClientError" in captured.err
    assert captured.out == ""  # nothing claims the credentials work
    assert emulator.token_requests == 2
    assert emulator.api_requests == 0


def test_check_with_a_cached_token_asks_for_a_new_one_and_says_so(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token"]) == 0
    capsys.readouterr()
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert emulator.token_requests == 2
    assert f"credentials: accepted by {emulator.token_url} (token request made just now)" in out
    assert "the cached token was not used" in out
    assert f"fingerprint {fingerprint_of(emulator.issued_tokens[1])}" in out
    assert f"HEAD {emulator.api_base_url}/api/v2/tokens/me answered 200" in out
    assert "cache:       file " in out
    assert cli.main(["token"]) == 0  # the cache now holds the token `check` obtained
    assert capsys.readouterr().out == emulator.issued_tokens[1] + "\n"


def test_check_replaces_a_revoked_cached_token(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token"]) == 0
    emulator.revoke(emulator.issued_tokens[0])
    assert cli.main(["check"]) == 0
    assert emulator.token_requests == 2
    capsys.readouterr()
    assert cli.main(["token"]) == 0  # the repaired cache serves the new token
    assert capsys.readouterr().out == emulator.issued_tokens[1] + "\n"


@pytest.mark.parametrize(("status", "code"), [(401, 3), (503, 4)])
def test_check_exit_code_follows_the_api_answer(
    env: dict[str, str],
    emulator: GenesysEmulator,
    capsys: pytest.CaptureFixture[str],
    status: int,
    code: int,
) -> None:
    emulator.inject(Fault(status=status), times=None, path="/api/v2/tokens/me")
    assert cli.main(["check"]) == code
    assert f"answered {status}" in capsys.readouterr().err


def test_check_without_an_api_answer_exits_4(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.inject(Fault(drop=True), times=None, path="/api/v2/tokens/me")
    assert cli.main(["check"]) == 4
    err = capsys.readouterr().err
    assert "no answer" in err
    # The cause in words, as token request errors give it, not only the type.
    assert "no answer from the API: connection dropped (ConnectionError)" in err


def test_checks_head_on_an_api_host_that_trickles_its_answer_is_cut_not_ok(
    emulator: GenesysEmulator,
) -> None:
    # Headers a byte every 50 ms: no read timeout fires; cut at 0.2 + 2 x 0.3 + 1 = 1.8 s,
    # and the 200 that cut headers read as must not make `check` say "ok".
    api = TricklingServer(gap=0.05)
    try:
        with TokenManager(
            emulator.client_id, emulator.client_secret, token_url=emulator.token_url
        ) as manager:
            token = manager.refresh()
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            url = f"http://127.0.0.1:{api.port}/api/v2/tokens/me"
            cli._head(url, token, Settings(timeout=(0.2, 0.3)))
        assert time.monotonic() - started < 4.0
    finally:
        api.stop()


# -- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["token", "--help"], ["inspect", "--help"],
                                  ["check", "--help"], ["emulator", "--help"]])  # fmt: skip
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: genesys-token")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_command_exits_2_with_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bogus"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert errors[0].startswith("genesys-token: error: ")
    assert "bogus" in errors[0]
    assert "Traceback" not in err


def test_verbose_logs_to_stderr_and_restores_the_logger(
    env: dict[str, str], emulator: GenesysEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("genesys_token")
    handlers, level = list(logger.handlers), logger.level
    assert cli.main(["-v", "token"]) == 0
    captured = capsys.readouterr()
    assert captured.out == emulator.issued_tokens[0] + "\n"
    # -v shows the records below WARNING that a plain run keeps quiet.
    verbose_lines = [
        line
        for line in captured.err.splitlines()
        if line.startswith(("genesys-token: DEBUG: ", "genesys-token: INFO: "))
    ]
    assert verbose_lines, f"-v logged nothing: {captured.err!r}"
    assert emulator.issued_tokens[0] not in captured.err
    assert logger.handlers == handlers and logger.level == level


# -- emulator ------------------------------------------------------------------------------


def test_emulator_command_serves_tokens_until_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cli.build_parser().parse_args(["emulator", "--token-ttl", "600", "--format", "jwt"])
    started, stop = threading.Event(), threading.Event()
    running: list[GenesysEmulator] = []

    def ready(emulator: GenesysEmulator) -> None:
        running.append(emulator)
        started.set()

    thread = threading.Thread(
        target=cli.run_emulator, args=(args,), kwargs={"ready": ready, "stop_event": stop}
    )
    thread.start()
    try:
        assert started.wait(10.0)
        emulator = running[0]
        with TokenManager(
            emulator.client_id,
            emulator.client_secret,
            token_url=emulator.token_url,
            api_base_url=emulator.api_base_url,
            background_refresh=False,
        ) as manager:
            token = manager.refresh()
        assert token.is_jwt
        assert 590 < token.expires_in <= 600
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    assert "export GENESYSCLOUD_TOKEN_URL=" in capsys.readouterr().out


def test_emulator_on_a_busy_port_prints_one_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["emulator", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"genesys-token emulator: error: cannot start on 127.0.0.1:{port}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["--token-ttl", "-5"], ["--token-ttl", "nan"], ["--port", "70000"],
     ["--token-rate-limit", "0"]],
)  # fmt: skip
def test_emulator_with_bad_options_prints_usage_and_one_error_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["emulator", *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("genesys-token: error: "), err
    assert "Traceback" not in err


def test_emulator_command_as_a_process_with_a_negative_ttl_prints_no_traceback() -> None:
    for argv in ([*command(), "emulator"], [sys.executable, "-m", "genesys_token.testing"]):
        result = subprocess.run(
            [*argv, "--token-ttl", "-5"],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "--token-ttl: expected a number of seconds >= 0, got '-5'" in result.stderr


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_both_emulator_command_lines_share_one_parser() -> None:
    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    standalone = emulator_cli.build_parser()
    assert _options(commands["emulator"]) == _options(standalone)
    assert "--token-rate-limit" in _options(standalone)


# -- timeouts, signals and messages (issue 24) ------------------------------------------------


def _wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _run_with_timeout(
    emulator: GenesysEmulator, name: str, timeout: str
) -> subprocess.CompletedProcess[str]:
    """``genesys-token NAME --timeout TIMEOUT`` against ``emulator``, the cache off."""
    return subprocess.run(
        [*command(), name, "--timeout", timeout],
        env=emulator_env(emulator, "off"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


@pytest.mark.parametrize("name", ["token", "check"])
def test_timeout_bounds_a_run_against_a_login_host_that_never_answers(
    emulator: GenesysEmulator, tmp_path: Path, name: str
) -> None:
    emulator.inject(Fault(delay=20.0), times=None)
    started = time.monotonic()
    result = _run_with_timeout(emulator, name, "0.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert elapsed < 5.0  # without --timeout: the ~55 s retry deadline
    host = emulator.token_url.split("/")[2]
    assert result.stderr.splitlines() == [
        f"genesys-token: error: timed out: no answer from {host} within --timeout 0.5s"
    ]


def test_timeout_names_the_last_failure_and_announces_no_retry_past_it(
    emulator: GenesysEmulator,
) -> None:
    # A 503 asking for 1 s, then a host that hangs: the run ends at --timeout during the
    # second attempt. The first retry fits in 2 s and is announced; none past it would be.
    emulator.inject(Fault(status=503, headers={"Retry-After": "1"}), times=1)
    emulator.inject(Fault(delay=20.0), times=None)
    result = _run_with_timeout(emulator, "token", "2")
    assert result.returncode == 4, result.stderr
    host = emulator.token_url.split("/")[2]
    lines = result.stderr.splitlines()
    assert lines[-1] == (
        f"genesys-token: error: timed out: no answer from {host} within --timeout 2s"
        " (last failure: HTTP 503 service.unavailable)"
    ), result.stderr
    retries = [line for line in lines if "retry" in line]
    assert len(retries) == 1 and retries[0].endswith("; retry 1 of 4 in 1.00s"), retries


def test_timeout_during_checks_api_call_blames_no_token_failure(
    emulator: GenesysEmulator,
) -> None:
    # The token came after a 503; the API call then hangs: that 503 is not its cause.
    emulator.inject(Fault(status=503, headers={"Retry-After": "0"}), times=1)
    emulator.inject(Fault(delay=20.0), times=None, path="/api/v2/tokens/me")
    result = _run_with_timeout(emulator, "check", "2")
    assert result.returncode == 4, result.stderr
    assert emulator.token_requests == 2
    host = emulator.api_base_url.split("/")[2]
    assert result.stderr.splitlines()[-1] == (
        f"genesys-token: error: timed out: no answer from {host} within --timeout 2s"
    )


def test_a_retry_that_would_end_past_the_timeout_is_not_announced(
    emulator: GenesysEmulator,
) -> None:
    emulator.inject(Fault(status=503, headers={"Retry-After": "5"}), times=None)
    result = _run_with_timeout(emulator, "token", "3")
    assert result.returncode == 4, result.stderr
    assert "retry" not in result.stderr
    assert emulator.token_requests == 1


def test_timeout_must_be_a_positive_number() -> None:
    result = subprocess.run(
        [*command(), "token", "--timeout", "soon"],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 2
    assert "expected a number of seconds > 0 and <= 86400, got 'soon'" in result.stderr


@pytest.mark.parametrize("value", ["1e10", "86400.5", "inf", "nan", "0"])
def test_timeout_beyond_a_day_is_a_usage_error_not_a_traceback(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1e10 passed the parser and overflowed setitimer: a traceback and exit 1.
    handler = signal.getsignal(signal.SIGALRM)
    assert cli.main(["token", "--timeout", value]) == 2
    err = capsys.readouterr().err
    assert (
        f"genesys-token: error: argument --timeout: expected a number of seconds > 0 and"
        f" <= 86400, got '{value}'"
    ) in err
    assert "Traceback" not in err
    assert signal.getsignal(signal.SIGALRM) is handler


def test_timeout_of_a_day_is_accepted() -> None:
    args = cli.build_parser().parse_args(["token", "--timeout", "86400"])
    assert args.timeout == 86400.0


def test_a_timer_that_cannot_be_set_still_restores_the_alarm_handler() -> None:
    handler = signal.getsignal(signal.SIGALRM)
    with pytest.raises(OverflowError), cli._bounded(1e10):
        pass  # pragma: no cover - setitimer refuses the value first
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.usefixtures("sigint_delivered")
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGINT, 130, "genesys-token: error: interrupted"),
        (signal.SIGTERM, 143, "genesys-token: error: terminated (SIGTERM)"),
    ],
)
def test_a_signal_ends_a_blocked_run_with_one_line_and_the_shell_code(
    emulator: GenesysEmulator, signum: int, code: int, line: str
) -> None:
    emulator.inject(Fault(delay=20.0), times=None)
    process = subprocess.Popen(
        [*command(), "token"],
        env=emulator_env(emulator, "off"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: emulator.token_requests >= 1)  # blocked in the token request
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code
    assert stdout == ""
    assert stderr.splitlines() == [line]


def test_a_failed_run_does_not_promise_a_next_try(
    emulator: GenesysEmulator, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The manager the command builds: no timer, so no next try will come.
    emulator.inject(Fault(status=400, body={"error": "invalid_request"}), times=None)
    caplog.set_level(logging.WARNING, logger="genesys_token")
    with (
        TokenManager.from_env(background_refresh=False) as manager,
        pytest.raises(genesys_token.GenesysTokenError),
    ):
        manager.get_token()
    # Logged by the flight after its waiters woke: wait for it.
    _wait_for(lambda: any("token refresh failed" in r.getMessage() for r in caplog.records))
    failed = [r.getMessage() for r in caplog.records if "token refresh failed" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].startswith("token refresh failed (TokenRequestError host=")
    assert failed[0].endswith(")")  # the fields, and no "; next try in ..."
    assert "next try" not in failed[0]


def test_help_lists_every_environment_variable_read() -> None:
    result = subprocess.run(
        [*command(), "token", "--help"], capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert result.returncode == 0
    for name in sorted(OWN_NAMES):
        assert name in result.stdout, name


def test_a_secret_with_a_trailing_space_works_and_is_said_stripped(
    emulator: GenesysEmulator,
) -> None:
    secret = emulator.client_secret
    env = emulator_env(emulator, "off", GENESYSCLOUD_OAUTHCLIENT_SECRET=secret + " ")
    result = subprocess.run(
        [*command(), "token"], env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "genesys-token: WARNING: GENESYSCLOUD_OAUTHCLIENT_SECRET had surrounding whitespace;"
        " it was stripped"
    ]
    assert secret not in result.stderr


def test_a_misspelt_region_variable_is_reported_by_the_command(
    emulator: GenesysEmulator,
) -> None:
    env = emulator_env(emulator, "off", GENESYSCLOUD_REGOIN="eu-west-1")
    result = subprocess.run(
        [*command(), "token"], env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "genesys-token: WARNING: environment variable GENESYSCLOUD_REGOIN is not read by"
        " genesys_token; did you mean GENESYSCLOUD_REGION? It is not set, so region us-east-1"
        " applies unless a region or URLs are given otherwise"
    ]
