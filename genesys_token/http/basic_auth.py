"""The ``Basic`` credential of a token request, kept hidden until ``requests`` sends it.

Set by an ``AuthBase`` when ``requests`` prepares the request (no headers dict of ours holds
it), and taken off the request by a response hook once the answer's headers arrived: a
response, or a traceback whose frames hold one, then holds no credential.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, quote_plus

import requests
import requests.auth

from ..credentials import KnownSecrets, SecretValue

__all__ = ["BasicAuth", "basic_value"]


def basic_value(client_id: str, secret: SecretValue) -> SecretValue:
    """``Basic base64(id:secret)`` (UTF-8, not form-encoded first, like every official
    Genesys SDK), hidden."""
    return secret.map(
        lambda plain: "Basic " + base64.b64encode(f"{client_id}:{plain}".encode()).decode("ascii")
    )


class BasicAuth(requests.auth.AuthBase):
    """``Authorization: Basic`` on a token request, from a hidden value, as late as
    ``requests`` allows (when it prepares the request), and off the request again once the
    answer's headers arrived: a response kept in a frame or a traceback holds no credential.

    Args:
        client_id: The OAuth client id.
        secret: Its secret.
    """

    def __init__(self, client_id: str, secret: SecretValue) -> None:
        self._value = basic_value(client_id, secret)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value.reveal()
        request.register_hook("response", _forget_authorization)  # type: ignore[no-untyped-call]
        return request

    def known(self, secret: SecretValue, *others: SecretValue) -> KnownSecrets:
        """The secret in every form a hostile answer could echo it back in, and ``others``
        (a proxy's password) as they are."""
        value = self._value
        return KnownSecrets(
            *others,
            secret,
            secret.map(quote_plus),
            secret.map(lambda plain: quote(plain, safe="")),
            value,
            value.map(lambda header: header[len("Basic ") :]),
        )

    def __repr__(self) -> str:
        return "BasicAuth(SecretValue('***'))"


def _forget_authorization(response: requests.Response, **kwargs: Any) -> None:
    """A response hook: the request that was sent keeps no ``Authorization``."""
    request = response.request
    if request is not None:
        request.headers.pop("Authorization", None)
