"""Views of the demo app."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from genesys_token.integrations.django import get_manager, get_session

#: (connect, read) seconds: every network call has a timeout.
API_TIMEOUT = (3.05, 10.0)


def organization(request: HttpRequest) -> JsonResponse:
    """``GET /org/``: the Genesys Cloud organization of the OAuth client."""
    url = f"{get_manager().api_base_url}/api/v2/organizations/me"
    response = get_session().get(url, timeout=API_TIMEOUT)
    if not response.ok:
        return JsonResponse(
            {"error": "Genesys Cloud call failed", "status": response.status_code}, status=502
        )
    body = response.json()
    return JsonResponse({"id": body["id"], "name": body["name"]})
