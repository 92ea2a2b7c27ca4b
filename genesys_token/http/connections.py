"""Outbound HTTP: one shared pool per process, and a total deadline on every request.

Every manager of a process talks through :func:`shared_session` (unless given its own
``session=``): one ``requests.Session`` whose pools are keyed by host and TLS settings and
hold at most :data:`POOL_MAXSIZE` connections per host, so a thousand managers of one login
host do not own a thousand sockets. It keeps no cookies (managers of different orgs share it).

**Deadlines are kept by the thread that does the I/O.** ``requests``' read timeout bounds one
socket read, not an answer: a server trickling its headers a byte at a time would never trip
it. Inside :func:`deadline`, a request made by this thread through one of our sessions ends by
the deadline: the connect (and TLS handshake) waits at most the time left, and each socket
read of the answer (status line, headers, body) waits at most the time left, in slices of
:data:`READ_SLICE` between which it also looks at its abandonment flag. No other thread
touches the socket; a request that is abandoned (``close()`` sets the flag) lets its
connection go within a slice. Name lookups are the system resolver's and are not bounded
here.

**Loopback is never reached through a proxy.** ``requests`` sends a request for 127.0.0.1,
::1 or localhost through ``HTTP_PROXY`` (or ``ALL_PROXY``, or the session's ``proxies``)
unless ``NO_PROXY`` exempts it, which would carry a plain-http secret meant for this machine
(the emulator, a local sidecar) off it. Our adapter drops the proxy for such a request,
whoever chose it: every session made here (tokens, JWKS, revoke, status checks, webhooks)
goes straight to loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import http.cookiejar
import io
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from ..core.fork import on_fork_in_child
from ..proxies import Proxies
from ..regions import is_loopback_host

__all__ = [
    "ATTEMPT_SLACK",
    "MAX_REQUESTS_PER_HOST",
    "POOL_MAXSIZE",
    "HostLimiter",
    "LoopbackDirectAdapter",
    "attempt_bound",
    "deadline",
    "deadline_session",
    "is_loopback_url",
    "json_of",
    "proxies_for",
    "renew_adapters",
    "shared_session",
    "status_of",
]

#: Connections kept per host in the shared pool; more concurrent requests still run, on
#: connections that are closed afterwards.
POOL_MAXSIZE = 8
#: Hosts whose pools are kept (login hosts of every region, plus tests' loopback ports).
POOL_HOSTS = 32
#: Concurrent token requests per login host from this process: a cold start of thousands
#: of orgs queues here instead of becoming a burst at the token endpoint.
MAX_REQUESTS_PER_HOST = 8

#: A token request stops counting against its host's limit after this long (see HostLimiter).
SLOT_LEASE = 0.5
#: Added to connect + 2 x read timeout for one request's total deadline (headers, then body).
ATTEMPT_SLACK = 1.0

#: A read waits at most this long before it looks at its deadline and abandonment again: an
#: abandoned request (``close()``) lets its connection go within this, however long its
#: timeouts.
READ_SLICE = 0.25

_local = threading.local()


class _Deadline:
    """When this thread's requests must end, and the flag that abandons them sooner."""

    __slots__ = ("at", "cancel")

    def __init__(self, at: float, cancel: threading.Event | None) -> None:
        self.at = at
        self.cancel = cancel

    def left(self) -> float:
        """Seconds left.

        Raises:
            socket.timeout: The deadline has passed, or the request was abandoned.
        """
        cancel = self.cancel
        if cancel is not None and cancel.is_set():
            raise TimeoutError("request abandoned")
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        return left


def attempt_bound(timeout: tuple[float, float]) -> float:
    """The total deadline of one request: connect, the headers, then the body."""
    connect, read = timeout
    return connect + 2 * read + ATTEMPT_SLACK


@contextlib.contextmanager
def deadline(seconds: float, cancel: threading.Event | None = None) -> Iterator[float]:
    """Requests this thread makes meanwhile through our sessions end within ``seconds``, or
    within :data:`READ_SLICE` of ``cancel`` being set (by any thread).

    Nested deadlines keep the earlier one. Yields the deadline (``time.monotonic()``).
    """
    previous: _Deadline | None = getattr(_local, "deadline", None)
    at = time.monotonic() + max(0.0, seconds)
    if previous is not None:
        at = min(at, previous.at)
        cancel = cancel or previous.cancel
    _local.deadline = _Deadline(at, cancel)
    try:
        yield at
    finally:
        _local.deadline = previous


def _time_left() -> float | None:
    """Seconds left to this thread's deadline (None: no deadline).

    Raises:
        socket.timeout: The deadline has passed, or the request was abandoned.
    """
    limit: _Deadline | None = getattr(_local, "deadline", None)
    return None if limit is None else limit.left()


class _DeadlineReader(io.RawIOBase):
    """The raw reader of one answer, kept to its deadline by the thread that reads: each
    socket read waits at most the time left, the per-read timeout, and :data:`READ_SLICE`
    (then it looks again, so an abandonment is seen soon)."""

    def __init__(self, sock: socket.socket, limit: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._limit = limit
        self._per_read = sock.gettimeout()
        # Holds a reference that keeps the socket open while the answer is read, even after
        # http.client "closes" a connection it hands over to its response.
        self._ref = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        per_read = self._per_read
        give_up = None if per_read is None else time.monotonic() + per_read
        while True:
            wait = min(self._limit.left(), READ_SLICE)
            if give_up is not None:
                wait = min(wait, give_up - time.monotonic())
                if wait <= 0:
                    raise TimeoutError("timed out")
            self._sock.settimeout(wait)
            try:
                return self._sock.recv_into(buffer)
            except TimeoutError:
                continue  # a slice passed: look at the deadline and the per-read bound again

    def close(self) -> None:
        if not self.closed:
            self._ref.close()
        super().close()


class _Deadlined:
    """What ``http.client.HTTPResponse`` is given instead of the socket: its ``makefile``
    reads through :class:`_DeadlineReader`."""

    __slots__ = ("_limit", "_sock")

    def __init__(self, sock: socket.socket, limit: _Deadline) -> None:
        self._sock = sock
        self._limit = limit

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._limit))


class _DeadlineResponse(http.client.HTTPResponse):
    """An answer read under this thread's deadline, if it has one."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        limit: _Deadline | None = getattr(_local, "deadline", None)
        if limit is not None:
            sock = _Deadlined(sock, limit)
        super().__init__(sock, *args, **kwargs)


def _bounded_connect(conn: Any) -> None:
    """Before a new connection: its connect (and the TLS handshake, which CPython bounds as a
    whole by the socket's timeout) waits at most the time left to this thread's deadline."""
    left = _time_left()
    timeout = conn.timeout
    if left is not None and (not isinstance(timeout, int | float) or timeout > left):
        conn.timeout = left


def _still_wanted(conn: Any) -> None:
    """After a connect (a name lookup can take long, and is not ours to bound): a request
    abandoned or past its deadline meanwhile is not sent."""
    try:
        _time_left()
    except TimeoutError:
        conn.close()
        raise


class _KeepsDeadline(urllib3.connection.HTTPConnection):
    """What both connection classes add: requests keep this thread's :func:`deadline`."""

    response_class = _DeadlineResponse

    def _new_conn(self) -> socket.socket:
        _bounded_connect(self)
        return super()._new_conn()

    def connect(self) -> None:
        super().connect()
        _still_wanted(self)


class _HTTPConnection(_KeepsDeadline):
    """A plain connection that keeps the deadline."""


class _HTTPSConnection(_KeepsDeadline, urllib3.connection.HTTPSConnection):
    """A TLS connection that keeps the deadline (``connect`` does the handshake too)."""


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is this machine (127.0.0.0/8, ::1, localhost); False for a URL
    that does not parse."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and is_loopback_host(host)


def no_proxy_for(url: str) -> dict[str, str] | None:
    """The ``proxies=`` of a request to ``url`` that keeps a loopback host off every proxy
    on a session we did not build (a ``session=`` given to the manager, whose adapters are
    its owner's): every key ``requests`` looks up is set to None, which drops it from the
    merged settings, the environment's included. None (nothing to override) otherwise."""
    if not is_loopback_url(url):
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    keys = ["http", "https", "all", f"all://{host}", f"{parts.scheme}://{host}"]
    # None values are how requests drops a merged setting; its stubs allow only str.
    return cast("dict[str, str]", dict.fromkeys(keys))


def proxies_for(url: str, explicit: Proxies | None) -> dict[str, str] | None:
    """The ``proxies=`` of one of our requests to ``url``: none at all for a loopback host
    (:func:`no_proxy_for`), else the proxy ``explicit`` (the ``proxies`` setting) names for
    it, set so that it wins over the environment's; None leaves the choice to ``requests``
    (``HTTPS_PROXY``, ``NO_PROXY``). The URL is in clear: pass it on at once."""
    if is_loopback_url(url):
        return no_proxy_for(url)
    return None if explicit is None else explicit.requests_proxies(url)


class LoopbackDirectAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` that reaches loopback hosts directly, never through a proxy,
    whatever the environment, the session's ``proxies`` or the call's ``proxies=`` say. Every
    session made here has one; mount it on a session made elsewhere to give it the same."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request``; without proxies when its host is loopback."""
        if proxies and is_loopback_url(request.url or ""):
            proxies = None  # what is meant for this machine stays on it
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )


class _Adapter(LoopbackDirectAdapter):
    """A :class:`LoopbackDirectAdapter` whose requests keep this thread's :func:`deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def status_of(
    session: requests.Session,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout: tuple[float, float],
    verify: bool | str,
    proxies: Proxies | None = None,
    cert: str | tuple[str, str] | None = None,
) -> int:
    """The status of ``method url`` (the body is never read; no redirect is followed), the
    whole call within :func:`attempt_bound`, through the proxy ``proxies`` names for it (see
    :func:`proxies_for`) with the client certificate ``cert``.

    Raises:
        requests.RequestException: No answer came in time.
    """
    with (
        deadline(attempt_bound(timeout)),
        session.request(
            method,
            url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            allow_redirects=False,
            stream=True,
            proxies=proxies_for(url, proxies),
            cert=cert,
        ) as response,
    ):
        return response.status_code


def json_of(
    session: requests.Session,
    url: str,
    *,
    timeout: tuple[float, float],
    verify: bool | str,
    limit: int,
    proxies: Proxies | None = None,
    cert: str | tuple[str, str] | None = None,
) -> Any:
    """``GET url``'s JSON body (no redirect followed), the whole call within
    :func:`attempt_bound`, through ``proxies`` (explicit ones win over the environment's, as
    for token requests) with the client certificate ``cert``.

    The body is asked for and read as is (``identity``): a compressed answer could inflate
    past ``limit`` in one read on urllib3 1.26.

    Raises:
        requests.RequestException: No whole 2xx answer came in time.
        ValueError: The body is encoded, not JSON, nested too deep, or longer than
            ``limit`` bytes.
    """
    chunks: list[bytes] = []
    size = 0
    with (
        deadline(attempt_bound(timeout)),
        session.get(
            url,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            timeout=timeout,
            verify=verify,
            proxies=proxies_for(url, proxies),
            cert=cert,
            allow_redirects=False,
            stream=True,
        ) as response,
    ):
        if not 200 <= response.status_code < 300:
            raise requests.exceptions.HTTPError(f"status {response.status_code}")
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise ValueError(f"answer encoded ({encoding[:20]}) although identity was asked")
        for chunk in response.iter_content(16384):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"answer longer than {limit} bytes")
            chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Managers of different orgs share the session: nobody's cookie reaches another."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


_session_lock = threading.Lock()
_session: requests.Session | None = None


def shared_session() -> requests.Session:
    """The process-wide session for token endpoints (a new one in a forked child)."""
    global _session
    session = _session
    if session is not None:
        return session
    with _session_lock:
        if _session is None:
            _session = deadline_session()
        return _session


def deadline_session() -> requests.Session:
    """A new session whose requests keep this thread's :func:`deadline`, keeping no cookies."""
    session = requests.Session()
    session.cookies.set_policy(_NoCookies())
    adapter = _Adapter(pool_connections=POOL_HOSTS, pool_maxsize=POOL_MAXSIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def renew_adapters(session: requests.Session) -> None:
    """Give ``session`` fresh connection pools with the same settings (in a forked child:
    the inherited pools hold the parent's sockets). Adapters that are not ``HTTPAdapter``s
    are left alone."""
    for prefix, adapter in list(session.adapters.items()):
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            fresh: Any = type(adapter).__new__(type(adapter))
            fresh.__setstate__(adapter.__getstate__())  # type: ignore[attr-defined]
            session.adapters[prefix] = fresh


class HostLimiter:
    """At most :data:`MAX_REQUESTS_PER_HOST` young token requests at once per host,
    process-wide: a cold start of thousands of orgs queues here instead of bursting at the
    endpoint. A request stops counting after :data:`SLOT_LEASE` seconds: a few orgs whose
    requests hang (at the endpoint, or a proxy) cannot hold every slot of a login host that
    all the other orgs share."""

    def __init__(self, limit: int = MAX_REQUESTS_PER_HOST, lease: float = SLOT_LEASE) -> None:
        self._limit = limit
        self._lease = lease
        self._cond = threading.Condition()
        self._held: dict[str, dict[object, float]] = {}

    @contextlib.contextmanager
    def slot(self, host: str, cancel: threading.Event | None, bound: float) -> Iterator[bool]:
        """Hold a slot for ``host``; waits at most ``bound`` seconds (then goes ahead: the
        bound protects the endpoint, it must not stop a refresh), and stops once ``cancel``
        is set.

        Yields:
            Whether a slot is held.
        """
        ticket = object()
        until = time.monotonic() + bound
        with self._cond:
            while True:
                # Looked up each time: the table of a host is dropped when it empties.
                held = self._held.setdefault(host, {})
                now = time.monotonic()
                young = [taken for taken in held.values() if now - taken < self._lease]
                if len(young) < self._limit:
                    held[ticket] = now
                    got = True
                    break
                if (cancel is not None and cancel.is_set()) or now >= until:
                    got = False
                    break
                # Until the oldest young one stops counting, or a slot is given back.
                wait = min(until, min(young) + self._lease, now + 0.25) - now
                self._cond.wait(max(wait, 0.001))
        try:
            yield got
        finally:
            if got:
                with self._cond:
                    held.pop(ticket, None)  # the table holding our ticket is never dropped
                    if not held and self._held.get(host) is held:
                        del self._held[host]
                    self._cond.notify_all()


LIMITER = HostLimiter()


def _after_fork_in_child() -> None:
    global _session, _session_lock, LIMITER
    # Abandoned, not closed: closing takes locks a parent thread may have held at the fork.
    _session = None
    _session_lock = threading.Lock()
    LIMITER = HostLimiter()


on_fork_in_child(_after_fork_in_child)
