"""GenesysAuth: the ``requests`` auth plugin (bearer header, in-flight count, 401 replay)."""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.cookies import extract_cookies_to_jar

from .errors import GenesysTokenError

if TYPE_CHECKING:
    from ._gate import InFlight
    from .manager import TokenManager

    _Finalizer = weakref.finalize[[InFlight], requests.PreparedRequest]

log = logging.getLogger(__name__)

_POS_ATTR = "_genesys_token_body_pos"
_REPLAYED_ATTR = "_genesys_token_replayed"
_BEARER = "Bearer "

#: How long the reaper thread waits for work before it checks whether it may end; it stays
#: while any counted request could still be collected, and costs nothing while it waits.
REAPER_IDLE_SECONDS = 1.0


class _Watch:
    """The counted use of one prepared request and the finalizer that ends it if dropped."""

    __slots__ = ("finalizer", "pid", "reaper", "use")

    def __init__(self, use: InFlight, finalizer: _Finalizer, reaper: _Reaper) -> None:
        self.use = use
        self.finalizer = finalizer
        self.reaper = reaper
        self.pid = os.getpid()

    def end(self) -> None:
        """End the use (idempotent); a no-op in a forked child, whose manager reset its count."""
        if self.pid != os.getpid():
            return
        self.use.end()
        self.reaper.unwatch(self.finalizer)


class _Reaper:
    """Ends the uses of prepared requests that were garbage-collected without a response.

    A request that raised lives in a reference cycle (exception, traceback, frames), so the
    cyclic collector frees it, at any allocation of any thread, including one made while that
    thread holds the manager's lock. Ending the use right there would take the lock again and
    deadlock. So the finalizer only puts the use on a ``SimpleQueue`` (documented as safe to
    call from weakref callbacks) and this thread ends it, outside the collector.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[InFlight] = queue.SimpleQueue()
        self._watched = 0
        self._thread: threading.Thread | None = None

    def watch(self, request: requests.PreparedRequest, use: InFlight) -> _Finalizer:
        """End ``use`` once ``request`` is collected (unless :meth:`unwatch` comes first)."""
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="genesys-token-reaper")
                thread.daemon = True
                thread.start()
                self._thread = thread
            self._watched += 1
        finalizer = weakref.finalize(request, self._queue.put, use)
        finalizer.atexit = False
        return finalizer

    def unwatch(self, finalizer: _Finalizer) -> None:
        """The use ended normally: the finalizer is not needed any more."""
        if finalizer.detach() is not None:
            with self._lock:
                self._watched -= 1

    @property
    def watched(self) -> int:
        """Finalizers alive or fired but not yet handled."""
        return self._watched

    def _run(self) -> None:
        while True:
            try:
                use = self._queue.get(timeout=REAPER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._watched == 0:
                        self._thread = None
                        return
                continue
            try:
                use.end()
            except Exception:  # the reaper must survive anything
                log.exception("could not end the use of a collected request")
            with self._lock:
                self._watched -= 1


_reaper = _Reaper()


def _new_reaper_in_child() -> None:
    """A forked child has no reaper thread and a manager that forgot the parent's uses."""
    global _reaper
    _reaper = _Reaper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_reaper_in_child)


class GenesysAuth(requests.auth.AuthBase):
    """Authenticate ``requests`` calls to Genesys Cloud with the manager's token.

    ::

        session = requests.Session()
        session.auth = GenesysAuth(manager)
        session.get(f"{manager.api_base_url}/api/v2/organizations/me", timeout=10)

    Each call is counted in flight from the moment it gets its token until its final
    response arrives (same-origin redirect legs included), so :meth:`TokenManager.rotate`
    can wait for it before revoking the old token. A call that raises (connection
    refused, timeout, TLS error) gets no response hook from ``requests``; its count ends when
    the prepared request is garbage-collected or when the same thread makes its next call
    through this auth, whichever comes first (``requests`` is synchronous: a thread's next
    call means its last one ended).

    On a 401 the token is replaced once (shared with every other thread that saw the same
    token rejected) and the request replayed once, as ``HTTPDigestAuth`` does; a body that
    cannot be rewound (a generator) is not replayed. A 403 is never replayed. ``requests``
    drops the ``Authorization`` header on a redirect to another host, and a 401 from any
    origin other than the one the token was sent to is returned untouched.

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
        try:
            watch = _Watch(use, _reaper.watch(r, use), _reaper)
        except BaseException:
            use.end()  # no thread for the reaper: do not leave the use counted
            raise
        r.headers["Authorization"] = _BEARER + use.token
        self._watches().append(watch)
        _remember_body_position(r)
        # The URL the token goes to; parsed into an origin only if a 401 comes back.
        # The watch rides on the hook, which requests copies onto every redirect leg (the
        # prepared request itself is copied without our attributes).
        on_response = functools.partial(self._on_response, sent_to=r.url, watch=watch)
        r.register_hook("response", on_response)  # type: ignore[no-untyped-call]
        return r

    def _watches(self) -> list[_Watch]:
        watches: list[_Watch] | None = getattr(self._local, "watches", None)
        if watches is None:
            watches = self._local.watches = []
        return watches

    def _end_previous_uses(self) -> None:
        watches = self._watches()
        for watch in watches:
            watch.end()
        watches.clear()

    def _on_response(
        self,
        response: requests.Response,
        *,
        sent_to: str | None,
        watch: _Watch | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        request = response.request
        if watch is not None and not response.is_redirect:
            # Counted until the FINAL response: a redirect leg still carries the token. (With
            # allow_redirects=False the count ends at the thread's next call or at GC.)
            watch.end()
        if response.status_code != 401 or not self._replay_401:
            return response
        sent = request.headers.get("Authorization", "")
        if not sent.startswith(_BEARER) or getattr(request, _REPLAYED_ATTR, False):
            return response
        if _origin(request.url) != _origin(sent_to):
            # A redirect took the call elsewhere; our token is not that host's business.
            return response
        return self._replay(response, sent[len(_BEARER) :], kwargs)

    def _replay(
        self, response: requests.Response, rejected: str, kwargs: dict[str, Any]
    ) -> requests.Response:
        request = response.request
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            self._manager.replace_rejected(rejected)
        except GenesysTokenError as exc:
            # The manager logged why (once); a line per call would flood the log.
            log.debug("401 not replayed: no new token (%s)", type(exc).__name__)
            return response
        if not _rewind(request):
            log.info("401 not replayed: the request body cannot be sent again")
            return response
        response.content  # noqa: B018 - consume the body so the connection can be reused
        response.close()
        prep = request.copy()
        setattr(prep, _REPLAYED_ATTR, True)
        extract_cookies_to_jar(prep._cookies, request, response.raw)  # type: ignore[attr-defined,no-untyped-call]
        prep.prepare_cookies(prep._cookies)  # type: ignore[attr-defined]
        use = self._manager.begin_use()
        try:
            prep.headers["Authorization"] = _BEARER + use.token
            self._manager.note_replay()
            replayed: requests.Response = response.connection.send(prep, **kwargs)
        finally:
            use.end()
        replayed.history.append(response)
        replayed.request = prep
        return replayed

    def __repr__(self) -> str:
        return f"GenesysAuth({self._manager!r})"


def _origin(url: str | None) -> str:
    """Scheme, host and port: where a request goes, as far as credentials are concerned."""
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{parts.hostname}:{port}"


def _remember_body_position(request: requests.PreparedRequest) -> None:
    body: Any = request.body
    if body is None or isinstance(body, bytes | str) or not hasattr(body, "tell"):
        return
    try:
        setattr(request, _POS_ATTR, body.tell())
    except OSError:
        setattr(request, _POS_ATTR, None)


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
