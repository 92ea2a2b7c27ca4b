"""Secrets and tokens never reach a log record, an exception, a repr, an event or the metrics.

One run of the whole fault matrix with every logger at DEBUG (``urllib3`` and ``requests``
included), hostile answers that echo the secret and tokens back, then a search of everything
the SDK produced for any credential in any form.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import http.client
import logging
import re
import socket
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
import requests.adapters

from genesys_token import (
    ConfigurationError,
    GenesysAuth,
    GenesysTokenError,
    SecretFile,
    TokenManager,
    TokenManagerPool,
    TokenRequestError,
)
from genesys_token.http.token_endpoint import Clock, TokenEndpoint
from genesys_token.settings import Config
from genesys_token.testing import Fault, GenesysEmulator

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
            repr(manager._config),
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


# -- no secret in any frame of any traceback raised or logged -------------------------------
#
# An error tracker (Sentry's SDK at its default settings) sends, with every exception it
# captures and every record logged with ``exc_info``, the local variables of each frame of the
# traceback, its causes' and its contexts'. So: make the acquisition fail in every way we know,
# then walk every traceback the SDK raised or logged and search each frame's locals, through
# containers and objects, and the repr of every object met (what the tracker shows of it).

#: Bounds of the search from one frame: deep enough to reach a header of the request of a
#: response held in a local, small enough to stay fast.
_MAX_DEPTH = 8
_MAX_NODES = 200_000
#: Frames of the test's own (they hold the emulator, which knows the secret) and pytest's.
_NOT_SDK_FRAMES = ("/tests/", "/_pytest/", "/pluggy/", "/xdist/", "/execnet/")
_OPAQUE = (type, types.ModuleType, types.CodeType, types.FrameType, types.FunctionType)


def _needles(secret: str) -> dict[str, str]:
    return {
        "secret": secret,
        "quoted secret": quote(secret, safe=""),
        "form-quoted secret": quote_plus(secret),
        "basic value": _basic(secret),
    }


class _Search:
    """Finds the needles in everything reachable from frames' locals (bounded).

    ``slots``: also look into ``__slots__`` (the SDK's value objects, dataclasses with
    ``slots=True``); an error tracker sends only the repr of such an object.
    """

    def __init__(self, needles: dict[str, str], *, slots: bool) -> None:
        self._needles = needles
        self._slots = slots
        self._seen: set[int] = set()
        self.found: set[str] = set()

    def frame(self, frame: Any, where: str) -> None:
        code = frame.f_code
        name = f"{where}:{code.co_name}@{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
        for key, value in list(frame.f_locals.items()):
            self.value(value, f"{name}[{key}]", 0)

    def value(self, value: Any, path: str, depth: int) -> None:
        if isinstance(value, str | bytes | bytearray | memoryview):
            self._text(value, path)
            return
        if value is None or isinstance(value, int | float | complex):
            return
        if id(value) in self._seen or depth > _MAX_DEPTH or len(self._seen) > _MAX_NODES:
            return
        self._seen.add(id(value))
        if isinstance(value, _OPAQUE):
            return
        if not isinstance(value, dict | list | tuple | set | frozenset):
            with contextlib.suppress(Exception):  # a repr that fails shows nothing
                self._text(repr(value), f"repr({path})")
        for child_path, child in self._children(value, path):
            self.value(child, child_path, depth + 1)

    def _children(self, value: Any, path: str) -> list[tuple[str, Any]]:
        children: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            for key, item in list(value.items()):
                children += [(f"{path}{{key}}", key), (f"{path}[{key!r:.30}]", item)]
        elif isinstance(value, list | tuple | set | frozenset | collections.deque):
            children += [(f"{path}[{i}]", item) for i, item in enumerate(list(value))]
        elif isinstance(value, types.MethodType):
            children.append((f"{path}.__self__", value.__self__))
        if isinstance(value, BaseException):
            children.append((f"{path}.args", value.args))
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            children += [(f"{path}.{key}", item) for key, item in list(attributes.items())]
        if self._slots:
            for cls in type(value).__mro__:
                slots = cls.__dict__.get("__slots__", ())
                for slot in (slots,) if isinstance(slots, str) else slots:
                    if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                        children.append((f"{path}.{slot}", getattr(value, slot)))
        return children

    def _text(self, text: str | bytes | bytearray | memoryview, path: str) -> None:
        data = text if isinstance(text, str) else bytes(text).decode("utf-8", "replace")
        for what, needle in self._needles.items():
            if needle in data:
                self.found.add(f"{what} in {path}")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts (suppressed ones too: the objects are still there)."""
    todo, seen = [error], set()
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def _frames(error: BaseException) -> Iterator[tuple[str, Any]]:
    """Every frame of every traceback in ``error``'s chain and the frames that called them (a
    thread's own frames included), but the test's and pytest's."""
    for link in _chain(error):
        frames = []
        tb = link.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        outer = frames[0].f_back if frames else None
        while outer is not None:
            frames.append(outer)
            outer = outer.f_back
        for frame in frames:
            if not any(part in frame.f_code.co_filename for part in _NOT_SDK_FRAMES):
                yield type(link).__name__, frame


def _leaks(errors: list[BaseException], needles: dict[str, str], *, slots: bool) -> set[str]:
    search = _Search(needles, slots=slots)
    for error in errors:
        for link in _chain(error):
            search.value(link, type(link).__name__, 0)
        for where, frame in _frames(error):
            search.frame(frame, where)
    return search.found


class _InjectedError(ValueError):
    """A fault nobody planned for, raised where the request is sent."""


class _FailingAdapter(requests.adapters.HTTPAdapter):
    """Raises where the prepared request (``Authorization`` set) is sent."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        raise _InjectedError(f"injected while sending to {request.url}")


def _failing_session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", _FailingAdapter())
    return session


class _SourceDown(RuntimeError):
    """What a vault client raises."""


def _raising_source(secret: str) -> Callable[[], str]:
    def source() -> str:
        fetched = secret  # a vault client's frame may hold what it fetched before failing
        raise _SourceDown(f"vault unavailable ({len(fetched)} bytes cached)")

    return source


_VALID = {"access_token": "a-token", "token_type": "bearer"}
_INFINITE = '{"access_token": "a", "token_type": "bearer", "expires_in": Infinity}'
_NAN = '{"access_token": "a", "token_type": "bearer", "expires_in": NaN}'
#: The one hostile answer that is not a failure: a Content-Length that is not ASCII digits
#: is as good as none, and the token is read whole.
_READ_WHOLE = "superscript Content-Length"

#: (name, fault injected at the token endpoint, how else the acquisition is set up).
_FAILURES: list[tuple[str, Fault | None, dict[str, Any]]] = [
    ("malformed JSON", Fault(status=200, body='{"access_token":'), {}),
    ("not JSON", Fault.html(200), {}),
    (_READ_WHOLE, Fault.json({**_VALID, "expires_in": 60}), {"length": "\u00b2"}),
    ("5000-digit Content-Length", Fault.json({**_VALID, "expires_in": 60}), {"length": "9" * 5000}),
    ("400-digit expires_in", Fault.json({**_VALID, "expires_in": 10**400}), {}),
    ("infinite expires_in", Fault(status=200, body=_INFINITE), {}),
    ("NaN expires_in", Fault(status=200, body=_NAN), {}),
    ("negative expires_in", Fault.json({**_VALID, "expires_in": -5}), {}),
    ("401 invalid_client", Fault.json({"error": "invalid_client"}, status=401), {}),
    ("400 invalid_client", Fault.json({"error": "invalid_client"}, status=400), {}),
    ("429", Fault.too_many_requests(1), {}),
    ("500", Fault.server_error(500), {}),
    ("dropped connection", Fault(drop=True), {}),
    ("answer cut short", Fault(status=200, body="{}", headers={"Content-Length": "300"}), {}),
    ("timeout", Fault(delay=1.0, passthrough=True), {}),
    ("connection refused", None, {"refused": True}),
    ("secret source raises", None, {"source": "raises"}),
    ("exception injected where the request is sent", None, {"session": "failing"}),
]


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/token"


def _acquire_once(
    emulator: GenesysEmulator, fault: Fault | None, setup: dict[str, Any], secret: Any
) -> BaseException | None:
    """One manager, one acquisition: the error ``get_token`` raised, if any."""
    if fault is not None:
        if "length" in setup:
            fault = dataclasses.replace(fault, headers={"Content-Length": setup["length"]})
        emulator.inject(fault, times=None, path="/oauth/token")
    options: dict[str, Any] = {
        "token_url": _refused_url() if setup.get("refused") else emulator.token_url,
        "api_base_url": emulator.api_base_url,
        "background_refresh": False,
        "max_retries": 0,
        "timeout": (2.0, 0.3),
    }
    if setup.get("session") == "failing":
        options["session"] = _failing_session()
    if setup.get("source") == "raises":
        secret = _raising_source(SECRET)
    try:
        with TokenManager(CLIENT_ID, secret, **options) as manager:
            manager.get_token(timeout=10)
    except Exception as exc:  # noqa: BLE001 - the test looks at whatever came
        return exc
    finally:
        emulator.clear_faults()
    return None


@pytest.mark.parametrize("secret_kind", ["str", "file"])
def test_no_secret_in_any_frame_of_any_traceback_raised_or_logged(
    emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture, tmp_path: Path, secret_kind: str
) -> None:
    """With a ``str`` secret the settings keep it (in a slot their repr never shows), so the
    search is what an error tracker sends: containers, ``__dict__``s, reprs. With a secret
    file nothing keeps the secret in clear: the search goes through ``__slots__`` too."""
    caplog.set_level(logging.DEBUG)
    secret: Any = SECRET
    if secret_kind == "file":
        (tmp_path / "secret").write_text(SECRET + "\n")
        secret = SecretFile(tmp_path / "secret")
    raised: dict[str, BaseException] = {}
    for name, fault, setup in _FAILURES:
        error = _acquire_once(emulator, fault, setup, secret)
        if error is not None:
            raised[name] = error
    assert set(raised) == {name for name, _, _ in _FAILURES} - {_READ_WHOLE}
    untyped = {name: repr(e) for name, e in raised.items() if not isinstance(e, GenesysTokenError)}
    assert untyped == {}
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and r.exc_info[1]]
    needles = _needles(SECRET)
    slots = secret_kind == "file"
    found = {name: _leaks([error], needles, slots=slots) for name, error in raised.items()}
    found["logged"] = _leaks(logged, needles, slots=slots)
    leaks = sorted(f"{name}: {place}" for name, places in found.items() for place in places)
    assert leaks == [], "\n".join(leaks)


def test_the_frame_search_finds_the_basic_value_in_the_frames_of_a_failed_request() -> None:
    """The search itself: a Basic value where requests holds it is found (so a clean result
    above means something), by the tracker's view alone and by its own."""
    with requests.Session() as session, pytest.raises(requests.ConnectionError) as caught:
        session.post(_refused_url(), auth=(CLIENT_ID, SECRET), timeout=2)
    found = _leaks([caught.value], _needles(SECRET), slots=False)
    assert any(place.startswith("basic value in repr(") for place in found)
    assert any(".headers._store['authorization']" in place for place in found)


#: Failures of one request, for the endpoint itself: (name, fault, how the endpoint is set up).
_ENDPOINT_FAILURES: list[tuple[str, Fault | None, str]] = [
    ("connection refused", None, "refused"),
    ("exception where the request is sent", None, "failing"),
    ("dropped connection", Fault(drop=True), ""),
    ("answer cut short", Fault(status=200, body="{}", headers={"Content-Length": "300"}), ""),
    ("stalled answer", Fault(status=200, body="{}" * 40, drip=1.0), ""),
    ("401 invalid_client", Fault.json({"error": "invalid_client"}, status=401), ""),
    ("400-digit expires_in", Fault.json({**_VALID, "expires_in": 10**400}), ""),
    ("too large", Fault(status=200, body_size=300_000), ""),
]


@pytest.mark.parametrize(
    ("fault", "setup"),
    [pytest.param(fault, setup, id=name) for name, fault, setup in _ENDPOINT_FAILURES],
)
def test_no_secret_in_any_frame_of_an_error_the_token_endpoint_raises(
    emulator: GenesysEmulator, tmp_path: Path, fault: Fault | None, setup: str
) -> None:
    """The error as the endpoint raises it (before a flight copies it for its waiters): its
    own frames, and no chained error carrying the frames of requests."""
    (tmp_path / "secret").write_text(SECRET)
    settings = Config.build(
        CLIENT_ID,
        SecretFile(tmp_path / "secret"),
        token_url=_refused_url() if setup == "refused" else emulator.token_url,
        api_base_url=emulator.api_base_url,
        max_retries=0,
        timeout=(2.0, 0.3),
    )
    session = _failing_session() if setup == "failing" else None
    if fault is not None:
        emulator.inject(fault)
    endpoint = TokenEndpoint(settings, session=session)
    with pytest.raises(TokenRequestError) as caught:
        endpoint.fetch(settings.credentials)
    assert caught.value.__context__ is None
    assert _leaks([caught.value], _needles(SECRET), slots=True) == set()


def test_an_unexpected_error_in_a_flight_is_logged_by_type_and_place_without_traceback(
    emulator: GenesysEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    draws = iter([ValueError("a draw that fails"), 0.0, 0.0, 0.0])

    def draw() -> float:
        value = next(draws, 0.0)
        if isinstance(value, Exception):
            raise value  # while the token that just arrived is planned
        return value

    caplog.set_level(logging.DEBUG)
    manager = TokenManager(
        CLIENT_ID,
        SECRET,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        background_refresh=False,
        clock=Clock(random=draw),
    )
    with manager, pytest.raises(TokenRequestError) as caught:
        manager.get_token(timeout=10)
    assert re.search(
        r"unexpectedly \(ValueError in draw at test_secret_hygiene\.py:\d+\)", str(caught.value)
    )
    assert "a draw that fails" not in str(caught.value)
    records = [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert [r.levelname for r in records] == ["ERROR"]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no traceback at all
    assert emulator.token_requests == 1  # the token came, then planning it failed


def test_managers_and_pools_keep_no_plain_copy_of_a_string_secret(
    emulator: GenesysEmulator,
) -> None:
    # The settings' credentials and the pool's entries hold the secret hidden, so a search
    # through slots (what a debugger or a heap dump shows) finds it nowhere.
    secret = emulator.client_secret
    with TokenManagerPool(token_url=emulator.token_url, api_base_url=emulator.api_base_url) as pool:
        manager = pool.get(emulator.client_id, secret)
        manager.get_token()
        search = _Search({"secret": secret, "webhook": "hook-secret-0123456789"}, slots=True)
        search.value(pool, "pool", 0)
        search.value(manager.settings, "settings", 0)
        search.value(manager._config, "config", 0)
    hooked = Config.build(
        emulator.client_id,
        secret,
        token_url=emulator.token_url,
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret="hook-secret-0123456789",
    )
    search.value(hooked, "hooked", 0)
    assert search.found == set()


_CONFIG_SECRET = "config-secret-0123456789-abcdef"
_HOOK_SECRET = "hook-config-secret-0123456789"


def _config_error(build: Any) -> BaseException:
    with pytest.raises(GenesysTokenError) as caught:
        build()
    return caught.value


@pytest.mark.parametrize(
    "case",
    [
        "bad region from the environment",
        "bad timeout",
        "bad region with a webhook secret",
        "secret with a byte that is not UTF-8",
        "client id with a byte that is not UTF-8",
    ],
)
def test_no_secret_in_any_frame_of_a_configuration_error(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A start-up crash is what an error tracker captures first (review of issue 22, A1-A2).
    secret = _CONFIG_SECRET
    if case == "bad region from the environment":
        monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "cid")
        monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", secret)
        monkeypatch.setenv("GENESYSCLOUD_REGION", "us-east-9")
        error = _config_error(TokenManager.from_env)
    elif case == "bad timeout":
        error = _config_error(lambda: TokenManager("cid", secret, timeout=-1))
    elif case == "bad region with a webhook secret":
        error = _config_error(
            lambda: TokenManager(
                "cid",
                secret,
                region="nowhere",
                webhook_url="http://127.0.0.1:9/hook",
                webhook_secret=_HOOK_SECRET,
            )
        )
    elif case == "secret with a byte that is not UTF-8":
        secret = _CONFIG_SECRET + "\udcff"
        error = _config_error(lambda: TokenManager("cid", secret))
        assert isinstance(error, ConfigurationError) and error.field == "client_secret"
    else:
        error = _config_error(lambda: TokenManager("cid\udcff", secret))
        assert isinstance(error, ConfigurationError) and error.field == "client_id"
    assert isinstance(error, ConfigurationError)
    needles = {"secret": secret, "webhook": _HOOK_SECRET}
    assert _leaks([error], needles, slots=True) == set()
    assert secret not in str(error) and secret not in repr(error.args)
