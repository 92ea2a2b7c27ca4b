"""GenesysAuth: the ``requests`` auth plugin (bearer header, in-flight count, 401 replay)."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests
from requests.cookies import extract_cookies_to_jar

from ..core.fork import on_fork_in_child
from ..core.uses import set_reaper
from ..errors import ApiRateLimitedError, GenesysTokenError
from ..http.origins import Origin, OriginCache, checked_origins, origin_of, show
from ..manager import adapter_port
from ..token import fingerprint_of

if TYPE_CHECKING:
    from ..core.uses import InFlight
    from ..manager import TokenManager

    _Finalizer = weakref.finalize[["_Watch"], requests.PreparedRequest]

log = logging.getLogger(__name__)

_POS_ATTR = "_genesys_token_body_pos"
_REPLAYED_ATTR = "_genesys_token_replayed"
_BEARER = "Bearer "

#: How many refused origins :class:`GenesysAuth` warns about (once each); a session that
#: calls thousands of hosts does not fill the log or memory.
MAX_WARNED_ORIGINS = 16

#: How often a rotation's drain looks whether the calls it waits for still run (see
#: :class:`_Reaper`); every reading of the in-flight count looks too.
CALL_CHECK_SECONDS = 0.25
#: How many watched calls make a new call reap first (then twice what the reap left).
_REAP_AT_LEAST = 256
#: How long a reap waits for a lock it needs before leaving the use to the next reading: a
#: reap inside the collector on the thread that holds that lock would wait for itself.
REAP_LOCK_WAIT = 0.05
#: How far up the stack ``__call__`` looks for the ``requests`` call that prepares it (auth
#: wrappers and ``Session`` subclasses add a frame or two to the usual four).
_CALL_SEARCH_DEPTH = 12


def _code_ids(*functions: object) -> frozenset[int]:
    """The ids of the code objects of ``functions`` and of what they wrap (an instrumented
    ``Session.send`` still runs the original inside its wrapper)."""
    ids = set()
    for function in functions:
        seen: object | None = function
        for _ in range(8):
            if seen is None:
                break
            code = getattr(seen, "__code__", None)
            if isinstance(code, CodeType):
                _KEPT_CODES.append(code)  # kept alive: an id is only unique while it lives
                ids.add(id(code))
            seen = getattr(seen, "__wrapped__", None)
    return frozenset(ids)


_KEPT_CODES: list[CodeType] = []
#: The frames that send what they prepare: ``Session.request`` (or a ``Session.send`` that
#: prepares a request inside, from a hook).
_CALL_CODES = _code_ids(requests.Session.request, requests.Session.send)
#: ``Session.send``, which dispatches the response hooks.
_SEND_CODES = _code_ids(requests.Session.send)
#: The original ``Session.send``: ``allow_redirects`` is one of its locals.
_SEND_CODE: CodeType | None = getattr(inspect.unwrap(requests.Session.send), "__code__", None)
#: The loop that follows redirects (each leg goes out through its own ``send``).
_FOLLOW_CODES = _code_ids(requests.Session.resolve_redirects)
_UNKNOWN = object()
#: Whether this Python shows frames (CPython and PyPy do); without them calls are watched
#: as requests prepared apart are.
_HAS_FRAMES = hasattr(sys, "_getframe") and hasattr(sys, "_current_frames")
#: CPython tells a finished frame from a running one by frame.clear(); others walk stacks.
_CPYTHON = sys.implementation.name == "cpython"


class _Watch:
    """The counted use of one call, and what ends it if no final response does: the call's
    frame leaving its thread's stack, or the prepared request being collected."""

    __slots__ = ("apart", "collected", "finalizer", "frame", "reaper", "use")

    def __init__(self, use: InFlight, reaper: _Reaper) -> None:
        self.use = use
        self.reaper = reaper
        self.finalizer: _Finalizer | None = None
        #: The ``requests`` frame the call runs in, while the reaper watches it.
        self.frame: FrameType | None = None
        #: Prepared apart: watched by its finalizer and its thread's life.
        self.apart = False
        #: Set by the finalizer (which may run inside the collector: it takes no lock).
        self.collected = False

    def end(self) -> None:
        """End the use (idempotent); a no-op in a forked child, whose manager reset its
        count (the child has a new reaper)."""
        if self.reaper is not _reaper:
            return
        self.use.end()
        self.reaper.unwatch(self)

    def end_unless_busy(self) -> bool:
        """:meth:`end` for the reaper: gives up (and the next reap tries again) when a lock
        it needs stays taken for :data:`REAP_LOCK_WAIT`, as it does forever when the reap
        runs inside the collector on the thread that holds it."""
        if self.reaper is not _reaper:
            return True
        if not self.use.end_unless_busy(REAP_LOCK_WAIT):
            return False
        return self.reaper.unwatch(self, wait=REAP_LOCK_WAIT)


def _collected(watch: _Watch) -> None:
    """The finalizer of a prepared request: it may run inside the collector, at any
    allocation of any thread, one that holds a gate's lock included. Ending the use there
    would take that lock again and deadlock, so it only marks the watch; the next reap ends
    the use."""
    watch.collected = True


class _Reaper:
    """Ends the uses of calls that ended without a response that ended them.

    ``requests`` calls no hook when a call raises. A call prepared inside
    ``Session.request`` (what ``session.get(...)`` does) is watched by its frame: once that
    frame has finished, the call is over and its use ends, whatever still holds the
    exception (a kept future, a log record). A request prepared apart and sent later
    (``session.send(prepared)``) cannot be tied to a frame when it is prepared: its use ends
    when the prepared request is collected, at the thread's next call, or once its thread
    has ended.

    No thread looks for those: a use is only ever seen through the gate's counts, so the
    gate runs :meth:`reap` before each reading of them (and every
    :data:`CALL_CHECK_SECONDS` of a rotation's drain), on the reading thread, outside the
    gate's lock. Watches that pile up unread (threads whose raised calls nobody counts,
    then end) are reaped when their number has doubled since the last reap.
    """

    def __init__(self) -> None:
        #: Guards ``_watches``; held for set updates only (never while ending a use).
        self._lock = threading.Lock()
        #: Held by the thread reaping; another that finds it held skips its reap.
        self._reaping = threading.Lock()
        self._watches: set[_Watch] = set()
        #: How many watches make ``watch`` reap (doubled from what the last reap left).
        self._reap_at = _REAP_AT_LEAST

    def watch(self, request: requests.PreparedRequest, watch: _Watch) -> None:
        """End ``watch`` once ``request`` is collected or its thread has ended (unless
        :meth:`unwatch` comes first)."""
        finalizer = weakref.finalize(request, _collected, watch)
        finalizer.atexit = False
        watch.finalizer = finalizer
        watch.apart = True
        self._add(watch)

    def watch_call(self, watch: _Watch, frame: FrameType) -> None:
        """End ``watch`` once ``frame`` has finished running."""
        watch.frame = frame
        self._add(watch)

    def _add(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.add(watch)
            piled_up = len(self._watches) >= self._reap_at
        if piled_up:  # rare: the watched calls doubled since the last reap
            self.reap()

    def unwatch(self, watch: _Watch, wait: float = -1) -> bool:
        """The use ended: neither its finalizer nor its frame is needed any more. False
        when the lock stayed taken for ``wait`` seconds (-1: wait) and the watch is kept."""
        finalizer = watch.finalizer
        if finalizer is not None:
            finalizer.detach()
        if not self._lock.acquire(timeout=wait):
            return False
        try:
            watch.frame = None
            self._watches.discard(watch)
        finally:
            self._lock.release()
        return True

    @property
    def watched(self) -> int:
        """Calls watched (by their frame, or their finalizer and thread)."""
        return len(self._watches)

    def forget(self) -> None:
        """Let go of the frames (a forked child's copy of them: their threads are gone).
        Without the lock: a thread that no longer exists may have held it at the fork."""
        for watch in list(self._watches):
            watch.frame = None
        self._watches.clear()

    def reap(self) -> None:
        """End the uses of the watched calls that are over. Run by the gate before it reads
        a count, never with a gate's lock held nor from the collector. Costs one attribute
        check when nothing is watched; skipped while another thread reaps."""
        if not self._watches:
            return
        if not self._reaping.acquire(blocking=False):
            return  # that thread ends what is over; this reader does not wait for it
        try:
            for watch in self._finished_calls():
                try:
                    watch.end_unless_busy()
                except Exception:  # a reader of a count must not fail for it
                    log.exception("could not end the use of a finished call")
            self._reap_at = max(_REAP_AT_LEAST, 2 * len(self._watches))
        finally:
            self._reaping.release()

    def _finished_calls(self) -> list[_Watch]:
        # The frames (and the snapshot of every thread's stack) are let go on return.
        if not self._lock.acquire(timeout=REAP_LOCK_WAIT):
            return []  # taken by this very thread (a reap inside the collector): next time
        try:
            watches = [(watch, watch.frame) for watch in self._watches]
        finally:
            self._lock.release()
        stacks: dict[int, FrameType] | None = None
        finished = []
        for watch, frame in watches:
            if watch.collected:
                finished.append(watch)
                continue
            if watch.apart:
                # A request prepared apart whose thread has ended: that thread makes no next
                # call, and whatever keeps its exception may keep the request for good.
                if stacks is None:
                    stacks = sys._current_frames()
                if watch.use.owner not in stacks:
                    finished.append(watch)
                    continue
            if frame is None:
                continue  # prepared apart, not (yet) sent on by a Session.send
            if _CPYTHON:
                if _has_ended(frame):
                    finished.append(watch)
                continue
            if stacks is None:
                stacks = sys._current_frames()
            top = stacks.get(watch.use.owner)
            while top is not None and top is not frame:
                top = top.f_back
            if top is None:  # not on its thread's stack (or the thread is gone)
                finished.append(watch)
        return finished


def _has_ended(frame: FrameType) -> bool:
    """Whether ``frame`` has finished running, without walking any other thread's stack:
    CPython 3.11 can crash following ``f_back`` from a frame another thread is running
    (python/cpython#111363; seen here once as a segfault, once as an ``f_back`` lookup on an
    ``HTTPConnection``). CPython refuses to clear an executing frame; a finished one is
    cleared, which also lets go of its locals (the prepared request, the session) that a
    kept exception's traceback would otherwise hold."""
    try:
        frame.clear()
    except RuntimeError:  # "cannot clear an executing frame"
        return False
    return True


_reaper = _Reaper()
set_reaper(_reaper.reap, every=CALL_CHECK_SECONDS)


def _new_reaper_in_child() -> None:
    """A forked child has a manager that forgot the parent's uses: the parent's watches are
    let go (ending them is a no-op there), and the child's calls get a reaper of their own."""
    global _reaper
    _reaper.forget()
    _reaper = _Reaper()
    set_reaper(_reaper.reap, every=CALL_CHECK_SECONDS)


on_fork_in_child(_new_reaper_in_child)


def _in_greenlet() -> bool:
    """Whether this runs in a greenlet other than its thread's main one (gevent, eventlet):
    its frames leave the thread's stack whenever it switches out, so they tell nothing."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return False
    try:
        return greenlet.getcurrent().parent is not None
    except Exception:  # noqa: BLE001 - an odd greenlet: do not rely on frames
        return True


def _find_frame(frame: FrameType | None, code_ids: frozenset[int], depth: int) -> FrameType | None:
    """The first of ``depth`` frames from ``frame`` outwards that runs one of ``code_ids``."""
    for _ in range(depth):
        if frame is None:
            return None
        if id(frame.f_code) in code_ids:
            return frame
        frame = frame.f_back
    return None


def _calling_frame() -> FrameType | None:
    """The frame of the ``requests`` call that prepares (and then sends) the request in the
    caller's caller, if close above it; None when it is prepared to be sent later, apart."""
    if not _HAS_FRAMES or _in_greenlet():
        return None
    return _find_frame(sys._getframe(2), _CALL_CODES, _CALL_SEARCH_DEPTH)


def _after_redirect(watch: _Watch, response: requests.Response) -> None:
    """A leg answered with a redirect: end the use unless ``requests`` follows it with the
    token (``allow_redirects=False`` does not follow; a leg to another origin goes without
    the token). Called by the response hook, in the ``Session.send`` that got the answer."""
    if not _HAS_FRAMES or watch.reaper is not _reaper:
        return
    send = _find_frame(sys._getframe(2), _SEND_CODES, 4)
    if send is None:
        return  # not from a Session.send we know: counted to the final answer, as before
    follows: object = _UNKNOWN
    session: object = None
    if send.f_code is _SEND_CODE:
        local = send.f_locals
        follows = local.get("allow_redirects", _UNKNOWN)
        session = local.get("self")
        if follows is not _UNKNOWN and _find_frame(send.f_back, _FOLLOW_CODES, 3) is not None:
            follows = True  # a leg sent by the redirect loop: the loop follows the next one
    if follows is not _UNKNOWN and not follows:
        watch.end()
        return
    if follows is not _UNKNOWN and _strips_token(session, response):
        watch.end()
        return
    if watch.frame is None and not _in_greenlet():
        # A request prepared apart: from here on its redirect legs run inside this send.
        watch.reaper.watch_call(watch, send)


def _strips_token(session: object, response: requests.Response) -> bool:
    """Whether ``session`` drops the Authorization header on the redirect ``response`` asks
    for (its own rule: another host, port or scheme)."""
    if not isinstance(session, requests.Session):
        return False
    try:
        target = session.get_redirect_target(response)
        if not target:
            return False
        new_url = urljoin(response.url, target)
        return bool(session.should_strip_auth(response.request.url, new_url))  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - keep counting: the conservative answer
        return False


class GenesysAuth(requests.auth.AuthBase):
    """Authenticate ``requests`` calls to Genesys Cloud with the manager's token.

    ::

        session = requests.Session()
        session.auth = GenesysAuth(manager)
        session.get(f"{manager.api_base_url}/api/v2/organizations/me", timeout=10)

    Each call is counted in flight from the moment it gets its token until the token is off
    the wire, so :meth:`TokenManager.rotate` can wait for it before revoking the old token:
    until its final response, or a redirect it does not follow (``allow_redirects=False``,
    or a redirect to another origin, where ``requests`` drops the token); a same-origin
    redirect leg stays counted. A call that raises (connection refused, timeout, TLS error)
    gets no response hook from ``requests``: a call made through ``Session.request``
    (``session.get(...)`` and the like) is seen ended by any reading of the count after its
    raise (:attr:`TokenManager.in_flight_count`, ``metrics()``, a pool's idle check), and a
    rotation waiting for it sees it end within :data:`CALL_CHECK_SECONDS`, whatever keeps
    its exception (a kept future, say). A request prepared apart and then given to
    ``session.send`` (and, in a greenlet, every call: gevent, eventlet) that raises before
    any response is seen ended once the prepared request is garbage-collected, its thread
    has ended, or the same thread makes its next call through this auth, whichever comes
    first (``requests`` is synchronous: a thread's next call means its last one ended). No
    thread of the library watches for this: the count is brought up to date when it is
    read.

    On a 401 the token is replaced once (shared with every other thread that saw the same
    token rejected) and the request replayed once, as ``HTTPDigestAuth`` does; a body that
    cannot be rewound (a generator) is not replayed. A 403 is never replayed. ``requests``
    drops the ``Authorization`` header on a redirect to another host, and a 401 from any
    origin other than the one the token was sent to is returned untouched.

    The token goes only to ``manager.api_base_url``'s origin (scheme, host and port) and to
    the ``allowed_origins`` given: a call to any other URL (a recording download, a partner
    API) goes out without it, uncounted, and the first such call to each origin logs a
    warning naming the origin.

    With ``api_rate_limit`` set on the manager, each call takes a pacing slot of its token
    before it is sent (waiting in line, up to ``api_rate_wait``, else
    :class:`~genesys_token.errors.ApiRateLimitedError` with nothing sent), and so do the 401
    replay and each same-origin redirect leg; the answer gives the slot back. A 429 answer
    makes every caller of that token wait out its ``Retry-After``. Status retries of the
    session's own ``HTTPAdapter`` (a urllib3 ``Retry`` with a ``status_forcelist``, or
    ``genesys_retry()``) resend inside one send, under one slot, unpaced: each such attempt
    is charged a slot afterwards (as far as the window has room), a 429 among them pauses
    the token's callers as one answered here does, and one WARNING per auth says so;
    :func:`~genesys_token.api_session` moves those retries here, paced.

    Args:
        manager: The token manager.
        replay_401: Set False to return 401 answers untouched.
        allowed_origins: Further origins that get the token, as ``"https://host[:port]"``
            strings (a gateway in front of the API, say).
        retry_wait: Retries an answer here, each attempt with its own use and slot:
            ``retry_wait(response, retries made)`` gives the seconds to wait before sending
            again, or None to return the answer (what :func:`~genesys_token.api_session`
            passes when the manager is paced, instead of urllib3's in-send retries).

    Raises:
        ConfigurationError: ``allowed_origins`` is a single string or holds something that
            is not an http(s) origin (``field="allowed_origins"``).
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        replay_401: bool = True,
        allowed_origins: Iterable[str] = (),
        retry_wait: Callable[[requests.Response, int], float | None] | None = None,
    ) -> None:
        self._manager = manager
        self._port = adapter_port(manager)
        self._retry_wait = retry_wait
        self._replay_401 = replay_401
        self._origins = checked_origins(allowed_origins) | {origin_of(manager.api_base_url)}
        self._warned: set[Origin] = set()
        self._warned_retries = False
        self._local = threading.local()
        #: origin_of for every call, remembered by the URL's scheme://authority.
        self._origin_of = OriginCache()

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Every origin that gets the token, the API's included (``"https://host"`` form)."""
        return frozenset(show(origin) for origin in self._origins)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self._end_previous_uses()
        origin = self._origin_of(r.url)
        if origin not in self._origins:
            self._refused(origin)
            return r
        use = self._port.begin_use()
        try:
            watch = _Watch(use, _reaper)
            call = _calling_frame()
            if call is None:
                _reaper.watch(r, watch)
            else:
                _reaper.watch_call(watch, call)
        except BaseException:
            use.end()  # not watched: do not leave the use counted
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

    def _refused(self, origin: Origin) -> None:
        warned = self._warned
        if origin in warned or len(warned) >= MAX_WARNED_ORIGINS:
            return
        warned.add(origin)  # two threads may both warn once: harmless, and no lock to hold
        log.warning(
            "GenesysAuth: calls to %s go out without the token (not the API origin; "
            "pass allowed_origins=[...] to send it there)",
            show(origin) if origin[0] else "a URL with no http(s) origin",
        )

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
        if watch is not None:
            if request.headers.get("Authorization") == _BEARER + watch.use.token:
                # A 429 from where the token went (a redirect elsewhere went without it).
                self._port.answered(
                    watch.use.token, response.status_code, response.headers.get("Retry-After")
                )
                self._charge_adapter_retries(response, watch.use.token)
            if not response.is_redirect:
                watch.end()
            else:  # ended unless requests follows it with the token
                _after_redirect(watch, response)
                self._next_leg(watch)
        if self._retry_wait is not None and not response.is_redirect:
            response = self._retried(response, kwargs)
        if response.status_code != 401 or not self._replay_401:
            return response
        sent = request.headers.get("Authorization", "")
        if not sent.startswith(_BEARER) or getattr(request, _REPLAYED_ATTR, False):
            return response
        if origin_of(request.url) != origin_of(sent_to):
            # A redirect took the call elsewhere; our token is not that host's business.
            return response
        return self._replay(response, sent[len(_BEARER) :], kwargs)

    def _charge_adapter_retries(self, response: requests.Response, access_token: str) -> None:
        """The adapter's urllib3 retried statuses inside one send: those attempts reached
        the API under this call's one slot. Each takes a slot now, given back at once (it
        counts a window from now: late, so it only over-counts), while the window has room,
        so the fleet's count is right afterwards; and the user is told once. Its 429s are
        counted in ``api_429s`` without pausing the token: the adapter waited them out."""
        pacer = self._port.pacer
        history = getattr(getattr(response.raw, "retries", None), "history", None)
        if pacer is None or not history:
            return
        answered = sum(1 for attempt in history if getattr(attempt, "status", None) is not None)
        if not answered:  # connect errors only: nothing reached the API
            return
        for attempt in history:
            if getattr(attempt, "status", None) == 429:
                # A 429 the adapter already waited out and sent again: counted, but no pause
                # (a final 429 was told to the port with its own Retry-After by the caller).
                self._port.throttled_unseen()
        key = fingerprint_of(access_token)
        for _ in range(answered):
            slot = pacer.try_acquire(key)
            if slot is None:
                break  # the window is full already: the next calls wait anyway
            slot.release()
        if not self._warned_retries:
            self._warned_retries = True  # two threads may both warn once: harmless
            log.warning(
                "GenesysAuth: the session's HTTPAdapter retried a paced call's status %d "
                "time(s) inside one send, under one pacing slot: status retries in the "
                "adapter bypass api_rate_limit; use api_session(manager), or an adapter "
                "without status retries (status_forcelist)",
                answered,
            )

    def _next_leg(self, watch: _Watch) -> None:
        """A redirect requests follows with the token: the next leg takes its own slot."""
        if watch.use.ended or watch.use.slot is None:
            return
        try:
            self._port.next_slot(watch.use)
        except BaseException:
            watch.end()  # nothing more goes out with this use
            raise

    def _retried(self, response: requests.Response, kwargs: dict[str, Any]) -> requests.Response:
        """Send again while ``retry_wait`` says so, each attempt a use (and slot) of its
        own; the last answer comes back (also when no slot is left within the wait)."""
        assert self._retry_wait is not None
        retries = 0
        while (wait := self._retry_wait(response, retries)) is not None:
            request = response.request
            if not _rewind(request):
                log.info("not retried: the request body cannot be sent again")
                break
            time.sleep(wait)
            try:
                use = self._port.begin_use()
            except ApiRateLimitedError:
                break  # the caller gets the last answer, nothing more was sent
            response.content  # noqa: B018 - consume the body so the connection can be reused
            response.close()
            prep = request.copy()
            try:
                prep.headers["Authorization"] = _BEARER + use.token
                again: requests.Response = response.connection.send(prep, **kwargs)
            finally:
                use.end()
            self._port.answered(use.token, again.status_code, again.headers.get("Retry-After"))
            again.request = prep
            response, retries = again, retries + 1
        return response

    def _replay(
        self, response: requests.Response, rejected: str, kwargs: dict[str, Any]
    ) -> requests.Response:
        request = response.request
        try:
            # Replaced even when the call cannot be replayed, so the next call works.
            self._port.replace_rejected(rejected)
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
        use = self._port.begin_use()
        try:
            prep.headers["Authorization"] = _BEARER + use.token
            self._port.note_replay()
            replayed: requests.Response = response.connection.send(prep, **kwargs)
        finally:
            use.end()
        self._port.answered(use.token, replayed.status_code, replayed.headers.get("Retry-After"))
        replayed.history.append(response)
        replayed.request = prep
        return replayed

    def __repr__(self) -> str:
        return f"GenesysAuth({self._manager!r})"


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
