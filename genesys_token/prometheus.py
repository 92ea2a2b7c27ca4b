"""``genesys_token.prometheus``: kept for the import path the README shows; the code lives in
:mod:`genesys_token.observability.prometheus`."""

from .observability.prometheus import GenesysTokenCollector

__all__ = ["GenesysTokenCollector"]
