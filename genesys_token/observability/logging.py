"""Opt-in JSON audit logging, and a filter that redacts credentials from log records.

The library configures no logging on import: it logs to the ``genesys_token`` logger tree
(``genesys_token.audit`` carries one line per event, with the record's fields as ``extra``
attributes). For JSON lines out of the box::

    from genesys_token.observability.logging import configure_json_logging

    configure_json_logging()                    # INFO and up, JSON lines on stderr

Each line is one JSON object: ``timestamp`` (ISO 8601 UTC, ``2024-05-01T12:00:00.125000+00:00``),
``level``, ``logger``, ``message`` and the extra fields. Audit lines carry the event record's
fields under its own names (``event_id``, ``event_type``, ``client_id``,
``token_fingerprint``, ``metrics``, ``data``) and its ``timestamp`` as ``event_timestamp``
(see :mod:`genesys_token.observability.events`).

The library never puts a token or a secret in a log record; :class:`RedactingFilter` is a
second line of defence against anything that slips through (a listener's exception, a
third-party message). ``configure_json_logging`` installs it; add it to your own handlers
(a handler, not a logger: filters on a logger do not see records of its child loggers)::

    from genesys_token.observability.logging import RedactingFilter

    handler.addFilter(RedactingFilter())

or, with ``logging.config.dictConfig``::

    "filters": {"redact": {"()": "genesys_token.observability.logging.RedactingFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"]}},
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import IO, Any

from .redaction import redact

__all__ = ["RedactingFilter", "configure_json_logging", "json_formatter"]

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
#: Marks the handler configure_json_logging installed, so a second call finds it.
_MARKER = "_genesys_token_json_handler"
#: Redaction of nested extra values stops here (cyclic or very deep structures).
_MAX_DEPTH = 6


class RedactingFilter(logging.Filter):
    """Redact bearer tokens, Basic credentials, JWTs and token-like strings from records.

    Rewrites the record in place: the message is formatted with its arguments and the
    result redacted (redacting the template alone could remove a ``%s`` and break the
    formatting), string values of ``extra`` fields are redacted (nested in dicts and lists
    too), and so are the exception and stack texts. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place and let it through.

        Args:
            record: The log record.

        Returns:
            Always True.
        """
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad template: the handler reports it later
            message = None
        if message is not None:
            record.msg = redact(message)
            record.args = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_extra(value, 0))
        if record.exc_info:
            # Formatted once here, redacted, and the raw exception dropped: formatters
            # (python-json-logger among them) would otherwise format it again, unredacted.
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redact_extra(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: _redact_extra(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_extra(v, depth + 1) for v in value)
    return value


def json_formatter() -> logging.Formatter:
    """A python-json-logger ``JsonFormatter`` (2.x, 3.x or 4.x) for one-object-per-line logs.

    Returns:
        A formatter writing ``timestamp`` (ISO 8601 UTC), ``level``, ``logger``,
        ``message`` and every ``extra`` field.

    Raises:
        ImportError: python-json-logger is not installed.
    """
    try:  # 3.x and later; 3.x still has the old module but warns on importing it
        from pythonjsonlogger.json import JsonFormatter
    except ImportError:  # pragma: no cover - exercised with python-json-logger 2.x only
        from pythonjsonlogger.jsonlogger import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            JsonFormatter,
        )
    formatter: logging.Formatter = JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
        json_default=_json_default,
    )
    return formatter


def _json_default(value: Any) -> Any:
    """ISO 8601 for times (``T``, not ``str()``'s space), ``str()`` for anything else."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def configure_json_logging(
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    logger_name: str = "genesys_token",
) -> logging.Handler:
    """Send the library's logs, as JSON lines, to ``stream``. Idempotent.

    Installs one ``StreamHandler`` with :func:`json_formatter` and a
    :class:`RedactingFilter` on ``logger_name`` and sets that logger's level. A second
    call for the same logger updates the level and stream of the handler the first call
    installed instead of adding another one. Propagation is left as it is: if the root
    logger has handlers too, the lines also appear there.

    Args:
        level: Lowest level written (and the logger's level).
        stream: Where to write (default ``sys.stderr``).
        logger_name: The logger to configure.

    Returns:
        The handler (remove it with ``logging.getLogger(logger_name).removeHandler``).
    """
    logger = logging.getLogger(logger_name)
    handler = next((h for h in logger.handlers if getattr(h, _MARKER, False)), None)
    target = stream if stream is not None else sys.stderr
    if isinstance(handler, logging.StreamHandler):
        if handler.stream is not target:
            handler.setStream(target)
    else:
        handler = logging.StreamHandler(target)
        handler.setFormatter(json_formatter())
        handler.addFilter(RedactingFilter())
        setattr(handler, _MARKER, True)
        logger.addHandler(handler)
    handler.setLevel(level)
    logger.setLevel(level)
    return handler
