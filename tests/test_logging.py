"""Audit logging: JSON lines that parse and carry the event fields, and never a credential."""

from __future__ import annotations

import base64
import io
import json
import logging
import logging.config
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import MakeManager

from genesys_token import GenesysAuth, GenesysTokenError
from genesys_token.observability.events import RECORD_FIELDS
from genesys_token.observability.logging import (
    RedactingFilter,
    configure_json_logging,
    json_formatter,
)
from genesys_token.testing import Fault, GenesysEmulator

TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"
ISO_8601_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")
HOOK_SECRET = "hook-secret-0123456789"


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """configure_json_logging() at DEBUG into a buffer; the handler is removed afterwards."""
    stream = io.StringIO()
    logger = logging.getLogger("genesys_token")
    level = logger.level
    handler = configure_json_logging(logging.DEBUG, stream=stream)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_audit_lines_parse_carry_the_fields_and_no_credential(
    emulator: GenesysEmulator,
    make_manager: MakeManager,
    json_stream: io.StringIO,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)  # the root logger too: capture everything
    for name in ("urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)  # restored after the test
    manager = make_manager(
        max_retries=0, webhook_url="http://127.0.0.1:9/hook", webhook_secret=HOOK_SECRET
    )
    session = requests.Session()
    session.auth = GenesysAuth(manager)
    url = f"{emulator.api_base_url}/api/v2/organizations/me"
    assert session.get(url, timeout=5).status_code == 200
    emulator.revoke(manager.get_token())
    assert session.get(url, timeout=5).status_code == 200  # replayed after a 401
    manager.rotate(drain_timeout=1, revoke_previous=True)
    emulator.inject(Fault.server_error(503))
    with pytest.raises(GenesysTokenError):
        manager.refresh(force=True)
    manager.set_credentials("a-wrong-secret-value")
    with pytest.raises(GenesysTokenError):
        manager.refresh(force=True)
    manager.close()  # the webhook's failures are logged too
    session.close()

    lines = _lines(json_stream)
    audit = [line for line in lines if line["logger"] == "genesys_token.audit"]
    types = [a["event_type"] for a in audit][:5]
    # The 401's replacement reports from its flight thread once its waiter woke (a slow
    # listener holds no caller), so it may come after the rotation started; a rotation's
    # own events come in order.
    assert types[0] == "TOKEN_REFRESH_SUCCESS"
    assert sorted(types[1:3]) == ["TOKEN_REFRESH_SUCCESS", "TOKEN_ROTATION_STARTED"]
    assert types[3:] == ["TOKEN_REFRESH_SUCCESS", "TOKEN_DRAIN_COMPLETE"]
    for line in audit:
        for field in ("timestamp", "level", "message", "event_id", "event_timestamp"):
            assert line[field]
        assert line["client_id"] == emulator.client_id
        assert isinstance(line["data"], dict)
        assert "error_rate" in line["metrics"]
        for stamp in (line["timestamp"], line["event_timestamp"]):  # ISO 8601, UTC
            assert ISO_8601_UTC.fullmatch(stamp), stamp
        # The event record's own vocabulary (its timestamp as event_timestamp).
        assert set(RECORD_FIELDS) - {"timestamp"} <= set(line)
    failures = [a for a in audit if a["event_type"] == "TOKEN_REFRESH_FAILURE"]
    assert [f["level"] for f in failures] == ["WARNING", "WARNING"]
    assert failures[0]["data"]["status"] == 503

    basic = f"{emulator.client_id}:{emulator.client_secret}".encode()
    secrets = [
        emulator.client_secret,
        "a-wrong-secret-value",
        HOOK_SECRET,
        base64.b64encode(basic).decode(),
        *emulator.issued_tokens,
    ]
    texts = [json_stream.getvalue()]
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(r.__dict__) for r in caplog.records]
    joined = "\n".join(texts)
    assert len(emulator.issued_tokens) >= 3
    for secret in secrets:
        assert secret not in joined


def test_configure_twice_keeps_one_handler_and_applies_the_new_settings(
    json_stream: io.StringIO,
):
    logger = logging.getLogger("genesys_token")
    other = io.StringIO()
    first = [h for h in logger.handlers if h.formatter is not None]
    handler = configure_json_logging(logging.WARNING, stream=other)
    assert [h for h in logger.handlers if h.formatter is not None] == first == [handler]
    assert handler.level == logger.level == logging.WARNING
    logging.getLogger("genesys_token.audit").info("dropped")
    logging.getLogger("genesys_token.audit").warning("kept")
    assert [line["message"] for line in _lines(other)] == ["kept"]
    assert json_stream.getvalue() == ""
    assert configure_json_logging(logging.WARNING, stream=other) is handler


def test_json_timestamps_are_iso_8601_with_a_t(json_stream: io.StringIO) -> None:
    logging.getLogger("genesys_token.x").warning("when %s", "now")
    (line,) = _lines(json_stream)
    assert ISO_8601_UTC.fullmatch(line["timestamp"]), line["timestamp"]


def test_configure_defaults_to_stderr(capsys: pytest.CaptureFixture[str]):
    handler = configure_json_logging(logger_name="genesys_token.test-default")
    try:
        logging.getLogger("genesys_token.test-default").info("to stderr %s", 1)
        line = json.loads(capsys.readouterr().err.splitlines()[-1])
    finally:
        logging.getLogger("genesys_token.test-default").removeHandler(handler)
    assert line["message"] == "to stderr 1"
    assert line["level"] == "INFO"


def _record(msg: str, args: Any = (), **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("genesys_token.x", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        (f"Authorization: Bearer {TOKEN}", ()),
        ("header %s", (f"Bearer {TOKEN}",)),
        ("got %r", ({"access_token": TOKEN},)),
        ("basic %(value)s", ({"value": base64.b64encode(b"id:secret").decode()},)),
        ("token=%s and more", (TOKEN,)),  # the template's own "token=%s" stays formattable
        ("%s", (RuntimeError(f"echoed {TOKEN}"),)),
    ],
)
def test_filter_redacts_the_formatted_message(msg: str, args: Any):
    record = _record(msg, args)
    assert RedactingFilter().filter(record)
    message = record.getMessage()
    assert TOKEN not in message
    assert base64.b64encode(b"id:secret").decode() not in message
    assert "[REDACTED]" in message


def test_filter_redacts_extra_fields_at_any_depth_and_keeps_the_rest():
    record = _record(
        "event",
        event_data={"nested": [f"Bearer {TOKEN}", {"deep": f"secret={TOKEN}"}], "n": 3},
        event_id="0b4e2bde-5d1b-4d4c-9b8e-3f2a1c0d9e8f",
        header=("x", TOKEN),
    )
    deep: Any = "bottom"
    for _ in range(10):
        deep = [deep]
    record.deep = deep
    RedactingFilter().filter(record)
    assert TOKEN not in repr(record.__dict__)
    assert record.deep == deep  # type: ignore[attr-defined]  # nesting past the cut: as is
    assert record.event_data["n"] == 3  # type: ignore[attr-defined]
    assert record.event_id == "0b4e2bde-5d1b-4d4c-9b8e-3f2a1c0d9e8f"  # type: ignore[attr-defined]
    assert isinstance(record.header, tuple)  # type: ignore[attr-defined]


def test_filter_redacts_exceptions_and_stacks_for_the_json_formatter():
    try:
        raise RuntimeError(f"echoed Bearer {TOKEN}")
    except RuntimeError:
        record = logging.LogRecord(
            "genesys_token.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    record.stack_info = f"Stack (most recent call last):\n  token={TOKEN}"
    RedactingFilter().filter(record)
    line = json_formatter().format(record)
    assert TOKEN not in line
    assert "RuntimeError: echoed Bearer [REDACTED]" in json.loads(line)["exc_info"]
    assert TOKEN not in logging.Formatter().format(record)


def test_filter_redacts_preformatted_exception_text():
    record = _record("failed")
    record.exc_text = f"Traceback ...\nValueError: Bearer {TOKEN}"
    RedactingFilter().filter(record)
    assert TOKEN not in (record.exc_text or "")


def test_filter_leaves_a_broken_template_for_the_handler_to_report():
    record = _record("two %s %s", ("only-one",))
    assert RedactingFilter().filter(record)
    assert record.msg == "two %s %s"


def test_filter_works_from_dictconfig():
    stream = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"redact": {"()": "genesys_token.observability.logging.RedactingFilter"}},
            "handlers": {
                "mine": {
                    "class": "logging.StreamHandler",
                    "stream": stream,
                    "filters": ["redact"],
                }
            },
            "loggers": {"genesys_token.dictconfig": {"handlers": ["mine"], "level": "INFO"}},
        }
    )
    logger = logging.getLogger("genesys_token.dictconfig")
    try:
        logger.info("sent Bearer %s", TOKEN)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    assert stream.getvalue() == "sent Bearer [REDACTED]\n"


def test_filter_is_safe_across_threads():
    """One filter instance on a shared handler: concurrent records must not mix up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("genesys_token.threads")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.propagate = False
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait(5)
        for i in range(50):
            logger.info("worker %d line %d Bearer %s", n, i, TOKEN)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 400
    assert all(line.endswith("Bearer [REDACTED]") for line in lines)


def test_importing_the_library_configures_no_logging_but_a_null_handler():
    code = (
        "import logging, genesys_token, genesys_token.observability.logging;"
        "import genesys_token.observability.webhook;"
        "import genesys_token.observability.events, genesys_token.observability.metrics;"
        "names = ['genesys_token', 'genesys_token.audit',"
        " 'genesys_token.observability.webhook', ''];"
        "loggers = [logging.getLogger(n) for n in names];"
        "assert [type(h).__name__ for h in loggers[0].handlers] == ['NullHandler'];"
        "assert all(not l.handlers for l in loggers[1:]), [l.handlers for l in loggers];"
        "assert all(l.level == logging.NOTSET for l in loggers[:3]);"
        "assert logging.getLogger().level == logging.WARNING"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
