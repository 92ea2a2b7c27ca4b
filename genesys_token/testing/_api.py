"""The sliver of the Platform API the emulator serves, once rate limits and faults passed."""

from __future__ import annotations

import hashlib

from genesys_token.testing._handler import Reply, Request
from genesys_token.testing._ledger import Ledger
from genesys_token.testing._wire import (
    API_PREFIX,
    MISSING_TOKEN_MESSAGE,
    api_error,
    json_reply,
    not_found,
    organization_body,
    redirect_reply,
    token_info_body,
)


def api_reply(
    request: Request, bearer: str | None, ledger: Ledger, *, org_id: str, reject_all: bool
) -> Reply:
    """The answer to an API call: ``/redirect`` and ``/headers`` for tests of the clients,
    then under ``/api/v2``: 401 without a valid token, ``echo``, ``tokens/me`` (GET, DELETE)
    and ``organizations/me``; 404 for anything else."""
    path, method = request.path, request.method
    if path == "/redirect":
        return redirect_reply(request)
    if path == "/headers":
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return json_reply(200, headers)
    if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
        return not_found(request)
    if bearer is None:
        return api_error(401, "authentication.required", MISSING_TOKEN_MESSAGE)
    info = None if reject_all else ledger.valid(bearer)
    if info is None:
        return api_error(401, "bad.credentials", "Invalid login credentials.")
    if path == API_PREFIX + "/echo" or path.startswith(API_PREFIX + "/echo/"):
        digest = hashlib.sha256(request.body).hexdigest()
        echo = {"method": method, "path": path, "length": len(request.body), "sha256": digest}
        return json_reply(200, echo)
    if path == API_PREFIX + "/tokens/me" and method in ("GET", "HEAD"):
        return json_reply(200, token_info_body(org_id, info.client_id, info.scopes))
    if path == API_PREFIX + "/tokens/me" and method == "DELETE":
        ledger.revoke(bearer)
        return Reply(204)
    if path == API_PREFIX + "/organizations/me" and method in ("GET", "HEAD"):
        return json_reply(200, organization_body(org_id))
    return not_found(request)
