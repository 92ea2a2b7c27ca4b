"""Shared fixtures: emulator-backed managers, a controllable clock, thread-leak checks."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from redis_server import redis_server_or_skip

from genesys_token import GenesysAuth, TokenManager
from genesys_token.http.token_endpoint import Clock
from genesys_token.testing import GenesysEmulator

MakeManager = Callable[..., TokenManager]

#: Modules whose tests run processes of their own (the CLI, examples, servers, packaging).
SUBPROCESS_MODULES = frozenset(
    {"test_cli", "test_demo", "test_packaging", "test_bench_smoke", "test_fork"}
)
SUBPROCESS_PREFIXES = ("test_examples_", "test_integration_")
#: Words in a test's name (or parameter id) that say it starts processes or forks.
SUBPROCESS_WORDS = ("process", "fork", "child", "cli_")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start ``redis-server`` processes ``server`` and those that run
    processes of their own ``subprocess``, so each kind can be run apart (or left out:
    ``pytest -m "not server and not subprocess"`` is the in-process suite)."""
    for item in items:
        module = item.module.__name__ if item.module is not None else ""  # type: ignore[attr-defined]
        name = item.name.lower()
        if module.startswith("test_redis_") or "redis" in name:
            item.add_marker(pytest.mark.server)
        if (
            module in SUBPROCESS_MODULES
            or module.startswith(SUBPROCESS_PREFIXES)
            or any(word in name for word in SUBPROCESS_WORDS)
        ):
            item.add_marker(pytest.mark.subprocess)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server shared by a module's tests (each uses its own :func:`prefix`);
    a missing binary fails the test (see tests/redis_server.py)."""
    with redis_server_or_skip() as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in a shared Redis."""
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def closed_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Builds a requests.Session whose auth is a GenesysAuth of the given manager.
MakeSession = Callable[[TokenManager], requests.Session]


@pytest.fixture
def make_session(closed_port: int) -> Iterator[MakeSession]:
    """Sessions with :class:`GenesysAuth` of a manager, closed after the test. The closed
    port's origin gets the token too: a call there is counted, then refused."""
    sessions: list[requests.Session] = []
    refused_origin = f"http://127.0.0.1:{closed_port}"

    def make(manager: TokenManager) -> requests.Session:
        session = requests.Session()
        session.auth = GenesysAuth(manager, allowed_origins=[refused_origin])
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def emulator(genesys_emulator: GenesysEmulator) -> GenesysEmulator:
    """A running emulator (short alias of the plugin's ``genesys_emulator``)."""
    return genesys_emulator


@pytest.fixture
def make_manager(emulator: GenesysEmulator) -> Iterator[MakeManager]:
    """Build managers against the emulator; every one is closed after the test."""
    managers: list[TokenManager] = []

    def make(**options: Any) -> TokenManager:
        options.setdefault("token_url", emulator.token_url)
        options.setdefault("api_base_url", emulator.api_base_url)
        client_id = options.pop("client_id", emulator.client_id)
        client_secret = options.pop("client_secret", emulator.client_secret)
        manager = TokenManager(client_id, client_secret, **options)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


def manager_for(emulator: GenesysEmulator, **options: Any) -> TokenManager:
    """A manager of ``emulator``'s client against its token and API URLs (``options`` may
    override them, and ``client_id`` and ``client_secret``); the caller closes it (``with
    manager_for(...) as manager:``)."""
    options.setdefault("token_url", emulator.token_url)
    options.setdefault("api_base_url", emulator.api_base_url)
    client_id = options.pop("client_id", emulator.client_id)
    client_secret = options.pop("client_secret", emulator.client_secret)
    return TokenManager(client_id, client_secret, **options)


#: The per-token API limit of the :func:`limited` emulator: 10 calls per 1 s.
API_LIMIT = (10, 1.0)


@pytest.fixture
def limited() -> Iterator[GenesysEmulator]:
    """An emulator of this test's own whose API answers 429 past :data:`API_LIMIT`."""
    with GenesysEmulator(api_rate_limit=API_LIMIT) as emulator:
        yield emulator


class Holder:
    """A thread inside ``manager.in_flight()`` (a WebSocket, say) until told to leave: a use
    held across a rotation. It has entered once built; :attr:`token` and :attr:`pending` are
    its use's token and ``rotation_pending``."""

    def __init__(self, manager: TokenManager) -> None:
        self.entered = threading.Event()
        self.leave = threading.Event()
        self.token: str | None = None
        self.pending: threading.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(manager,))
        self._thread.start()
        assert self.entered.wait(5)

    def _run(self, manager: TokenManager) -> None:
        with manager.in_flight() as use:
            self.token = use.token
            self.pending = use.rotation_pending
            self.entered.set()
            self.leave.wait(10)

    def release(self) -> None:
        """End the use and wait for the thread."""
        self.leave.set()
        self._thread.join(5)


#: Starts a :class:`Holder` on a manager.
MakeHolder = Callable[[TokenManager], Holder]


@pytest.fixture
def holders() -> Iterator[MakeHolder]:
    """Start :class:`Holder` s; every one still held is released after the test."""
    made: list[Holder] = []

    def make(manager: TokenManager) -> Holder:
        holder = Holder(manager)
        made.append(holder)
        return holder

    yield make
    for holder in made:
        holder.release()


def run_threads(target: Callable[[], Any], count: int, timeout: float = 10.0) -> None:
    """Run ``target`` in ``count`` threads started together; wait for each up to ``timeout``
    seconds: one still running then fails the test."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not end in time"


def read_child(pid: int, read_end: int, timeout: float = 15.0) -> bytes:
    """Collect what a forked child wrote to ``read_end`` and reap it, within ``timeout``.

    The pipe is read with ``select`` and the child reaped by polling ``waitpid(WNOHANG)``, so
    a child that hangs (a lock copied held across the fork, say) fails the test instead of
    hanging it: it is killed and reaped first. ``read_end`` is closed.

    Returns:
        Everything the child wrote before closing its end or exiting with status 0.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([read_end], [], [], left)
            if not ready:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {timeout:g}s")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child exited with status {status}"
    return b"".join(chunks)


@pytest.fixture
def sigint_delivered() -> Iterator[None]:
    """Children started meanwhile get SIGINT's default action. A test run started as a
    background job of a shell without job control (``cmd &`` in a script) has SIGINT ignored,
    children inherit that, and Python then never raises KeyboardInterrupt: a test sending
    them SIGINT would wait out its timeout. A handler of ours is reset to the default in a
    child at exec; an ignored signal is not."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def in_child(body: Callable[[], Any], timeout: float = 15.0) -> dict[str, Any]:
    """Run ``body()`` in a forked child; return the JSON-able dict it produced (an
    ``{"error": ...}`` dict when it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            result = body()
        except BaseException as exc:  # noqa: BLE001
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    produced: dict[str, Any] = json.loads(read_child(pid, read_end, timeout) or b"{}")
    return produced


def poll(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` (polled every 5 ms): for state a
    test cannot wait on (another thread's or process's progress, a counter, a socket)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Assert that ``predicate()`` becomes true within ``timeout`` (see :func:`poll`)."""
    assert poll(predicate, timeout), f"condition not met within {timeout:g}s"


def in_background(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; the list receives its result or its exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def join_fetch_threads(timeout: float = 5.0) -> None:
    """Wait for token acquisitions' threads to end (they hold their manager while they run)."""
    for thread in threading.enumerate():
        if thread.name.startswith("genesys-token-fetch"):
            thread.join(timeout)


def run_scheduled(manager: Any, timeout: float = 5.0) -> None:
    """Run what the scheduler runs at the manager's refresh point, and wait for the flight it
    starts (the scheduler only dispatches; the flight runs on a thread of its own)."""
    manager._scheduled_refresh()
    join_fetch_threads(timeout)


class FakeClock:
    """Monotonic and wall clocks that move only when told, and a fixed random draw."""

    def __init__(self, draw: float = 0.5) -> None:
        self.monotonic = 1000.0
        self.wall = 1_800_000_000.0
        self.draw = draw
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.monotonic += seconds
            self.wall += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.monotonic, time=lambda: self.wall, random=self._draw)

    def _draw(self) -> float:
        return self.draw


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


#: Threads that end by themselves a while after their last work, each with its own test
#: (tests/test_store_leases.py): waiting for them after every test would cost ~1 s each.
SELF_ENDING_THREADS = frozenset({"genesys-token-lease-keeper"})


@pytest.fixture(autouse=True)
def _no_leaked_library_threads() -> Iterator[None]:
    """Every ``genesys-token-*`` thread a test started must be gone once the test ends.

    Thread objects, not idents, are compared: a new thread may reuse an ended one's ident.
    """
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before
        and t.name.startswith("genesys-token-")
        and t.name not in SELF_ENDING_THREADS
        and t.is_alive()
    ]
    for thread in leaked:
        thread.join(2.5)
    frames = sys._current_frames()
    still = {
        t.name: "".join(traceback.format_stack(frames[t.ident]))[-600:]
        for t in leaked
        if t.is_alive() and t.ident in frames
    }
    assert not still, f"library threads still running after the test: {still}"


class TricklingServer:
    """An HTTP server on 127.0.0.1 that answers every request with its status line and
    headers a byte at a time, each byte well within the read timeout, forever (until
    stopped): no per-read timeout ever fires. With ``head`` (a status line and the start of
    a header, say), that goes out at once and ``a`` bytes trickle after it."""

    def __init__(self, gap: float, head: bytes = b"") -> None:
        self._gap = gap
        self._head = head
        self._stop = threading.Event()
        #: Set once a connection was accepted.
        self.accepted = threading.Event()
        #: Set once a client let its connection go (a send failed, or it read EOF).
        self.peer_gone = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.05)  # close() does not wake a blocked accept()
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.set()
            thread = threading.Thread(target=self._trickle, args=(conn,))
            self._threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(self._head)
            rest = b"a" * 10_000 if self._head else b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
            for byte in rest:
                if self._stop.wait(self._gap):
                    break
                conn.sendall(bytes([byte]))
                if _peer_closed(conn):
                    self.peer_gone.set()
                    break
        except OSError:
            self.peer_gone.set()  # the client let it go: what the test wants
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()
        assert not any(thread.is_alive() for thread in self._threads)


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the peer closed ``conn`` (an EOF is waiting), without blocking."""
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    finally:
        conn.setblocking(True)


class HeldLookups:
    """Name lookups (``socket.getaddrinfo``) for one port wait until :attr:`release` is set:
    a request stuck in its connect with no socket yet (a slow resolver, a SYN not answered)."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.waiting = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def held_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldLookups]:
    held = HeldLookups()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if held.port is not None and port == held.port:
            held.waiting.set()
            held.release.wait(10)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield held
    held.release.set()
