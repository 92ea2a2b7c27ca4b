"""Ready-made glue between a :class:`~genesys_token.TokenManager` and frameworks.

Each integration lives in its own module and imports its framework only there, so this
package (and ``genesys_token`` itself) imports without Flask, Django, httpx, aiohttp or the
official SDK:

* :mod:`genesys_token.integrations.flask`: the ``GenesysToken`` Flask extension.
* :mod:`genesys_token.integrations.django`: ``get_manager()`` / ``get_session()`` from
  ``django.conf.settings``.
* :mod:`genesys_token.integrations.platform_client`: ``bind_api_client()`` for the official
  ``PureCloudPlatformClientV2`` SDK.
* :mod:`genesys_token.integrations.httpx`: ``GenesysHTTPXAuth``, an ``httpx.Auth`` for sync
  and async clients (the ``[httpx]`` extra).
* :mod:`genesys_token.integrations.aiohttp`: ``genesys_middleware()``, an aiohttp (>= 3.12)
  client middleware (the ``[aiohttp]`` extra).

The Flask extension and the Django helpers read the same settings: ``GENESYS_CLIENT_ID``,
``GENESYS_CLIENT_SECRET``, ``GENESYS_REGION``, ``GENESYS_TOKEN_URL``, ``GENESYS_API_URL``
(each falling back to its ``GENESYSCLOUD_*`` environment variable) and
``GENESYS_TOKEN_OPTIONS``, a dict of further :class:`~genesys_token.TokenManager` arguments
(``settings``, ``store``, ``refresh_buffer``, ...).

Writing an adapter of your own (a WebSocket client, another HTTP library)? Count each call
with ``adapter_port(manager).begin_use()`` (so a rotation waits for it) and, on a
401, call ``replace_rejected(use.token)``: it replaces the token once for every caller, and
never turns an API that rejects every token into a stream of token requests.
"""

from ..core.port import AdapterPort
from ..manager import adapter_port

__all__ = ["AdapterPort", "adapter_port"]
