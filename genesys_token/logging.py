"""``genesys_token.logging``: kept for the import path the README shows; the code lives in
:mod:`genesys_token.observability.logging`."""

from .observability.logging import RedactingFilter, configure_json_logging, json_formatter

__all__ = ["RedactingFilter", "configure_json_logging", "json_formatter"]
