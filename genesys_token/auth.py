"""GenesysAuth: the ``requests`` auth plugin (bearer header, in-flight count, 401 replay)."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

import requests
from requests.cookies import extract_cookies_to_jar

from .errors import GenesysTokenError

if TYPE_CHECKING:
    from .manager import InFlight, TokenManager

log = logging.getLogger("genesys_token")

_USE_ATTR = "_genesys_token_use"
_POS_ATTR = "_genesys_token_body_pos"
_REPLAYED_ATTR = "_genesys_token_replayed"


class GenesysAuth(requests.auth.AuthBase):
    """Authenticate ``requests`` calls to Genesys Cloud with the manager's token.

    ::

        session = requests.Session()
        session.auth = GenesysAuth(manager)
        session.get(f"{manager.api_base_url}/api/v2/organizations/me", timeout=10)

    Each call is counted in flight from the moment it gets its token until its response
    arrives, so :meth:`TokenManager.rotate` can wait for it. A call that raises (connection
    refused, timeout, TLS error) gets no response hook from ``requests``; its count ends when
    the prepared request is released or when the same thread makes its next call, whichever
    comes first (``requests`` is synchronous: a thread's next call means its last one ended).

    On a 401 the token is replaced once (shared with every other thread that saw the same
    token rejected) and the request replayed once, as ``HTTPDigestAuth`` does; a body that
    cannot be rewound is not replayed. A 403 is never replayed. ``requests`` itself drops
    the ``Authorization`` header on a redirect to another host.

    Args:
        manager: The token manager.
        replay_401: Set False to return 401 answers untouched.
    """

    def __init__(self, manager: TokenManager, *, replay_401: bool = True) -> None:
        self._manager = manager
        self._replay_401 = replay_401
        self._local = threading.local()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self._end_previous_uses()
        use = self._manager.begin_use()
        r.headers["Authorization"] = f"Bearer {use.token}"
        setattr(r, _USE_ATTR, use)
        self._uses().append(weakref.ref(use))
        weakref.finalize(r, use.end)
        body: Any = r.body
        if body is not None and not isinstance(body, bytes | str) and hasattr(body, "tell"):
            try:
                setattr(r, _POS_ATTR, body.tell())
            except OSError:
                setattr(r, _POS_ATTR, None)
        r.register_hook("response", self._on_response)  # type: ignore[no-untyped-call]
        return r

    def _uses(self) -> list[weakref.ref[InFlight]]:
        uses: list[weakref.ref[InFlight]] | None = getattr(self._local, "uses", None)
        if uses is None:
            uses = self._local.uses = []
        return uses

    def _end_previous_uses(self) -> None:
        uses = self._uses()
        for ref in uses:
            use = ref()
            if use is not None:
                use.end()
        uses.clear()

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        use: InFlight | None = getattr(request, _USE_ATTR, None)
        if use is not None:
            use.end()
        if response.status_code == 401 and self._replay_401:
            return self._replay(response, **kwargs)
        return response

    def _replay(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        sent = request.headers.get("Authorization", "")
        if not sent.startswith("Bearer ") or getattr(request, _REPLAYED_ATTR, False):
            return response
        if not _rewind(request):
            log.info("401 not replayed: the request body cannot be replayed")
            return response
        try:
            self._manager.replace_rejected(sent[len("Bearer ") :])
        except GenesysTokenError as exc:
            log.warning("401 not replayed: could not get a new token (%s)", type(exc).__name__)
            return response
        response.content  # noqa: B018 - consume the body so the connection can be reused
        response.close()
        prep = request.copy()
        setattr(prep, _REPLAYED_ATTR, True)
        extract_cookies_to_jar(prep._cookies, request, response.raw)  # type: ignore[attr-defined,no-untyped-call]
        prep.prepare_cookies(prep._cookies)  # type: ignore[attr-defined]
        use = self._manager.begin_use()
        try:
            prep.headers["Authorization"] = f"Bearer {use.token}"
            self._manager._metrics.incr("replays_401")
            replayed: requests.Response = response.connection.send(prep, **kwargs)
        finally:
            use.end()
        replayed.history.append(response)
        replayed.request = prep
        return replayed

    def __repr__(self) -> str:
        return f"GenesysAuth({self._manager!r})"


def _rewind(request: requests.PreparedRequest) -> bool:
    """Put a file-like body back where it started; False when the body cannot be replayed."""
    body: Any = request.body
    if body is None or isinstance(body, bytes | str):
        return True
    position = getattr(request, _POS_ATTR, None)
    seek = getattr(body, "seek", None)
    if position is None or seek is None:
        return False  # a generator or an unseekable stream: already consumed
    try:
        seek(position)
    except OSError:
        return False
    return True
