"""Connections to token endpoints: one shared pool per process, requests that close() can cut.

Every manager of a process talks through :func:`shared_session` (unless given its own
``session=``): one ``requests.Session`` whose pools are keyed by host and TLS settings and
hold at most :data:`POOL_MAXSIZE` connections per host, so a thousand managers of one login
host do not own a thousand sockets. It keeps no cookies (managers of different orgs share
it). :class:`Cancel` lets ``close()`` abandon a token request in progress: the connections
that request uses are registered with it, and cancelling shuts their sockets down, which
wakes the blocked read at once.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

__all__ = [
    "ATTEMPT_SLACK",
    "MAX_REQUESTS_PER_HOST",
    "POOL_MAXSIZE",
    "Cancel",
    "HostLimiter",
    "abortable_session",
    "attached",
    "json_of",
    "renew_adapters",
    "shared_session",
    "status_of",
    "within",
]

#: Connections kept per host in the shared pool; more concurrent requests still run, on
#: connections that are closed afterwards.
POOL_MAXSIZE = 8
#: Hosts whose pools are kept (login hosts of every region, plus tests' loopback ports).
POOL_HOSTS = 32
#: Concurrent token requests per login host from this process: a cold start of thousands
#: of orgs queues here instead of becoming a burst at the token endpoint.
MAX_REQUESTS_PER_HOST = 8

#: Added to connect + 2 x read timeout for one attempt's watchdog (headers, then body).
ATTEMPT_SLACK = 1.0

_local = threading.local()
_attach_lock = threading.Lock()


class Cancel:
    """Abandons one acquisition: interrupts its waits and cuts its connections.

    Each attempt (one HTTP request) runs under a child made by :meth:`attempt`, whose
    connections a watchdog can cut (:meth:`cut`) without abandoning the acquisition.
    """

    __slots__ = ("__weakref__", "_child", "_conns", "_cut", "_event", "_settled", "was_cut")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._conns: list[weakref.ref[Any]] = []
        self._child: Cancel | None = None
        #: Whether :meth:`cut` ran before :meth:`settle`: an answer read from a cut socket
        #: may look whole (headers cut short end at the EOF), so it must not be trusted.
        self.was_cut = False
        self._settled = False
        #: cut() ran: a connection of this scope still connecting then (no socket to shut
        #: yet: TCP connect, name lookup) is shut as soon as it has one.
        self._cut = False

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` ran."""
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when cancelled meanwhile (stop waiting)."""
        return self._event.wait(max(0.0, seconds))

    def attempt(self) -> Cancel:
        """A child for one attempt: cancelling this cancels it too."""
        child = Cancel()
        self._child = child
        if self.cancelled:
            child.cancel()
        return child

    def cancel(self) -> None:
        """Cancel: wake the waits and shut down the sockets of requests in progress."""
        self._event.set()
        self.cut()
        child = self._child
        if child is not None:
            child.cancel()

    def cut(self) -> None:
        """Shut down the sockets of this scope's requests in progress (and only theirs)."""
        with _attach_lock:
            if self._settled:
                return  # the answer is in hand: nothing left to cut
            self._cut = True
            conns = [ref() for ref in self._conns]
            self._conns.clear()
            for conn in conns:
                if conn is not None and getattr(conn, "_genesys_cancel", None) is self:
                    # Only a socket still in use counts: one whose answer was read whole is
                    # back in the pool, untagged (see _put_conn).
                    self.was_cut = _shut(getattr(conn, "sock", None)) or self.was_cut

    def settle(self) -> bool:
        """The attempt's answer is in hand: later cuts do nothing. Returns whether a cut
        came first (then the answer may be truncated)."""
        with _attach_lock:
            self._settled = True
            return self.was_cut

    def release(self) -> None:
        """The attempt is over: its connections, back in the pool, are nobody's to cut."""
        with _attach_lock:
            for ref in self._conns:
                conn = ref()
                if conn is not None and getattr(conn, "_genesys_cancel", None) is self:
                    conn._genesys_cancel = None
            self._conns.clear()

    def _connected(self, conn: Any) -> None:
        """``conn`` of this scope has just connected: if a cut came while it had no socket,
        shut it now (else the cut would be lost and the request run unbounded)."""
        with _attach_lock:
            if not self._cut or getattr(conn, "_genesys_cancel", None) is not self:
                return
            self.was_cut = _shut(getattr(conn, "sock", None)) or self.was_cut
        raise ConnectionAbortedError("request cut while it was connecting")

    def _attach(self, conn: Any) -> None:
        with _attach_lock:
            conn._genesys_cancel = self
            self._conns.append(weakref.ref(conn))
        if self.cancelled:
            raise ConnectionAbortedError("token request abandoned")


def _shut(sock: socket.socket | None) -> bool:
    """Shut ``sock`` down; returns whether there was one."""
    if sock is None:
        return False
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    return True


@contextlib.contextmanager
def within(cancel: Cancel) -> Iterator[None]:
    """Requests made meanwhile in this thread through :func:`attached` without a ``cancel``
    of their own (a JWKS fetch during a token's validation) belong to ``cancel``: close()
    cuts them too."""
    previous = getattr(_local, "within", None)
    _local.within = cancel
    try:
        yield
    finally:
        _local.within = previous


@contextlib.contextmanager
def attached(cancel: Cancel | None, bound: float) -> Iterator[Cancel]:
    """Run one attempt: its connections join a child of ``cancel``, and a watchdog cuts
    them after ``bound`` seconds. requests' read timeout bounds each socket read, not the
    whole answer: a server trickling its status line and headers a byte at a time would
    otherwise hold the acquisition (and every caller waiting on it) forever.

    Yields:
        The attempt's scope: its ``was_cut`` tells whether the answer may be truncated.
    """
    if cancel is None:
        cancel = getattr(_local, "within", None)
    scope = cancel.attempt() if cancel is not None else Cancel()
    ticket = WATCHDOG.arm(scope, bound)
    previous = getattr(_local, "cancel", None)
    _local.cancel = scope
    try:
        yield scope
    finally:
        _local.cancel = previous
        WATCHDOG.disarm(ticket)
        scope.release()


def status_of(
    session: requests.Session,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout: tuple[float, float],
    verify: bool | str,
) -> int:
    """The status of ``method url`` (the body is never read; no redirect is followed), the
    whole call under the watchdog: connect + 2 x read + :data:`ATTEMPT_SLACK` at most.

    Raises:
        requests.RequestException: No whole answer came (one cut short: ``ReadTimeout``;
            headers cut at the EOF would read as a 200).
    """
    connect, read = timeout
    bound = connect + 2 * read + ATTEMPT_SLACK
    with attached(None, bound) as scope:
        with session.request(
            method,
            url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            allow_redirects=False,
            stream=True,
        ) as response:
            status = response.status_code
        if scope.settle():
            raise requests.exceptions.ReadTimeout(f"no whole answer within {bound:.1f}s")
    return status


def json_of(
    session: requests.Session,
    url: str,
    *,
    timeout: tuple[float, float],
    verify: bool | str,
    limit: int,
) -> Any:
    """``GET url``'s JSON body (no redirect followed), the whole call under the watchdog.

    The body is asked for and read as is (``identity``): a compressed answer could inflate
    past ``limit`` in one read on urllib3 1.26.

    Raises:
        requests.RequestException: No whole 2xx answer came.
        ValueError: The body is encoded, not JSON (a body cut short is not), nested too
            deep, or longer than ``limit`` bytes.
    """
    connect, read = timeout
    chunks: list[bytes] = []
    size = 0
    with (
        attached(None, connect + 2 * read + ATTEMPT_SLACK),
        session.get(
            url,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            timeout=timeout,
            verify=verify,
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


class Watchdog:
    """One thread for the whole process that cuts attempts running past their bound (a
    thread per attempt would be a thread per token request: thousands at a many-org cold
    start). It ends when nothing is armed and starts again with the next attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._armed: dict[int, tuple[float, Cancel]] = {}
        self._tickets = 0
        self._thread: threading.Thread | None = None

    def arm(self, scope: Cancel, bound: float) -> int:
        """Cut ``scope`` in ``bound`` seconds unless disarmed first; returns a ticket."""
        with self._cond:
            self._tickets += 1
            self._armed[self._tickets] = (time.monotonic() + bound, scope)
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._run, name="genesys-token-watchdog", daemon=True
                )
                self._thread = thread
                thread.start()
            self._cond.notify()
            return self._tickets

    def disarm(self, ticket: int) -> None:
        """The attempt ended in time."""
        with self._cond:
            self._armed.pop(ticket, None)
            if not self._armed:
                self._cond.notify()  # nothing left to watch: the idle countdown starts now

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                if not self._armed:
                    # Linger a moment: attempts come in bursts (retries, cold starts).
                    self._cond.wait(WATCHDOG_IDLE)
                    if not self._armed:
                        self._thread = None
                        return
                    continue
                now = time.monotonic()
                due = [t for t, (deadline, _) in self._armed.items() if deadline <= now]
                for ticket in due:
                    _, scope = self._armed.pop(ticket)
                    scope.cut()
                if self._armed:
                    earliest = min(deadline for deadline, _ in self._armed.values())
                    self._cond.wait(max(0.0, earliest - now))


#: How long the idle watchdog thread waits for another attempt before it ends.
WATCHDOG_IDLE = 0.5
WATCHDOG = Watchdog()


class _Attaching:
    """Mixed into urllib3's connection classes: a connection in use joins the caller's
    :class:`Cancel` (connect and request: a handshake can hang too)."""

    def connect(self) -> None:
        self._join()
        super().connect()  # type: ignore[misc]
        scope: Cancel | None = getattr(self, "_genesys_cancel", None)
        if scope is not None:
            scope._connected(self)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._join()
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def _join(self) -> None:
        cancel: Cancel | None = getattr(_local, "cancel", None)
        if cancel is not None:
            cancel._attach(self)
        else:
            self._genesys_cancel = None


class _HTTPConnection(_Attaching, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Attaching, urllib3.connection.HTTPSConnection):
    pass


def _untagged(conn: Any) -> Any:
    """A connection taken from the pool, or put back once its answer is read, belongs to no
    scope: a close() elsewhere, or a late cut of its last attempt, must not shut it."""
    with _attach_lock:
        if conn is not None:
            conn._genesys_cancel = None
    return conn


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _untagged(super()._get_conn(timeout))

    def _put_conn(self, conn: Any) -> None:
        super()._put_conn(_untagged(conn))


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _untagged(super()._get_conn(timeout))

    def _put_conn(self, conn: Any) -> None:
        super()._put_conn(_untagged(conn))


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections can be cut by a :class:`Cancel`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


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
            _session = abortable_session()
        return _session


def abortable_session() -> requests.Session:
    """A new session whose requests :func:`attached` can cut, keeping no cookies."""
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
    """At most :data:`MAX_REQUESTS_PER_HOST` token requests at once per host, process-wide."""

    def __init__(self, limit: int = MAX_REQUESTS_PER_HOST) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def slot(self, host: str, cancel: Cancel | None, bound: float) -> Iterator[bool]:
        """Hold a slot for ``host``; waits at most ``bound`` seconds (then goes ahead: the
        bound protects the endpoint, it must not stop a refresh), and stops on ``cancel``.

        Yields:
            Whether a slot is held.
        """
        with self._lock:
            semaphore = self._slots.get(host)
            if semaphore is None:
                semaphore = self._slots[host] = threading.BoundedSemaphore(self._limit)
        deadline = time.monotonic() + bound
        held = semaphore.acquire(blocking=False)
        while not held and (left := deadline - time.monotonic()) > 0:
            if cancel is not None and cancel.cancelled:
                break
            held = semaphore.acquire(timeout=min(left, 0.25))
        try:
            yield held
        finally:
            if held:
                semaphore.release()


LIMITER = HostLimiter()


def _after_fork_in_child() -> None:
    global _session, _session_lock, _attach_lock, LIMITER, WATCHDOG
    # Abandoned, not closed: closing takes locks a parent thread may have held at the fork.
    _session = None
    _session_lock = threading.Lock()
    _attach_lock = threading.Lock()
    LIMITER = HostLimiter()
    WATCHDOG = Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
