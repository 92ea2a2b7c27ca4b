"""A Flask app calling Genesys Cloud through the ``GenesysToken`` extension.

Run it against the emulator::

    python -m genesys_token.testing &          # prints the GENESYSCLOUD_* exports
    export GENESYSCLOUD_OAUTHCLIENT_ID=... GENESYSCLOUD_OAUTHCLIENT_SECRET=... \\
           GENESYSCLOUD_TOKEN_URL=... GENESYSCLOUD_API_URL=...
    python examples/flask_app.py               # then: curl http://127.0.0.1:5000/org

Settings come from ``app.config`` (``GENESYS_CLIENT_ID``, ``GENESYS_CLIENT_SECRET``,
``GENESYS_REGION``, ``GENESYS_TOKEN_URL``, ``GENESYS_API_URL``, ``GENESYS_TOKEN_OPTIONS``),
else from the ``GENESYSCLOUD_*`` environment variables. Every request thread shares one
token manager: one token request however many requests arrive at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from genesys_token.integrations.flask import GenesysToken

#: API calls get a timeout like every other network call: (connect, read) seconds.
API_TIMEOUT = (3.05, 10.0)

genesys = GenesysToken()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    Args:
        config: Values for ``app.config`` (the ``GENESYS_*`` settings, ``TESTING``, ...).
    """
    app = Flask(__name__)
    app.config.update(config or {})
    genesys.init_app(app)

    @app.get("/org")
    def org() -> ResponseReturnValue:
        url = f"{genesys.manager.api_base_url}/api/v2/organizations/me"
        response = genesys.session.get(url, timeout=API_TIMEOUT)
        if not response.ok:
            return jsonify(error="Genesys Cloud call failed", status=response.status_code), 502
        body = response.json()
        return jsonify(id=body["id"], name=body["name"])

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
