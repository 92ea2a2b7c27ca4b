"""FileStore trusts nothing it opens (issue 22): planted entries, directories and lock files
that are not this user's or that others can write, lock holders that do not renew.

Everything is real: FIFOs (``os.mkfifo``), modes (``chmod``), owners (``chown`` to uid 65534,
so these tests need root), ``flock`` held by another process or by a thread with its own
descriptor. Token requests are counted by the emulator.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import eventually
from store_helpers import KEY, load, make_token, save

from genesys_token import ConfigurationError, StoreError, TokenManager
from genesys_token.stores import FileStore, store_key
from genesys_token.stores import _flock as flock_module
from genesys_token.stores import _leases as leases
from genesys_token.testing import GenesysEmulator

MakeManager = Callable[..., TokenManager]

#: A user that is not us: ``nobody``.
OTHER_UID = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def manager_key(emulator: GenesysEmulator) -> str:
    """The store key a manager of the emulator's client uses."""
    return store_key(emulator.client_id, emulator.token_url, ())


def library_threads(before: set[threading.Thread]) -> list[str]:
    """The names of library threads alive now that were not alive in ``before``."""
    return [
        t.name
        for t in threading.enumerate()
        if t not in before and t.name.startswith("genesys-token-") and t.is_alive()
    ]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@contextlib.contextmanager
def fifo_released(path: Path) -> Iterator[None]:
    """On the way out, let any reader stuck opening the FIFO at ``path`` go (it reads EOF)."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # ENXIO: nobody is waiting on it
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


# -- entries: only a regular file of this user's is read ------------------------------------


def test_fifo_at_the_entry_costs_one_token_request_and_leaves_no_thread(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fifo = tmp_path / f"{manager_key(emulator)}.json"
    os.mkfifo(fifo, 0o600)
    before = set(threading.enumerate())
    manager = make_manager(store=FileStore(tmp_path), background_refresh=False)
    with fifo_released(fifo):
        started = time.monotonic()
        token = manager.get_token(timeout=5.0)
        elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert token == emulator.issued_tokens[0]
    assert emulator.token_requests == 1
    assert any(str(fifo) in line and "a FIFO" in line for line in warnings_of(caplog))
    assert stat.S_ISREG(fifo.lstat().st_mode)  # the save replaced what was planted
    manager.close()
    eventually(lambda: not library_threads(before), 2.0)
    # The next process reads the saved entry: still one request in all.
    make_manager(store=FileStore(tmp_path), background_refresh=False).get_token()
    assert emulator.token_requests == 1


def test_fifo_fed_a_valid_entry_by_a_writer_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A FIFO whose writer feeds it a real sealed entry (copied from another store): only a
    # regular file is an entry, so nothing planted can hand the manager a token.
    source = FileStore(tmp_path / "elsewhere")
    save(source, make_token("tok-planted"))
    blob = (tmp_path / "elsewhere" / f"{KEY}.json").read_bytes()
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    fifo = directory / f"{KEY}.json"
    os.mkfifo(fifo, 0o600)
    feeder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that stays
    try:
        os.write(feeder, blob)
        started = time.monotonic()
        assert load(FileStore(directory)) is None
        assert time.monotonic() - started < 1.0
    finally:
        os.close(feeder)
    assert "is not a regular file (a FIFO)" in caplog.text


def test_planted_entry_is_warned_about_once_per_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / f"{KEY}.json", 0o600)
    store = FileStore(tmp_path)
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    for _ in range(3):
        assert load(store) is None
    assert len(warnings_of(caplog)) == 1


def test_symlink_at_the_entry_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The link points at a valid entry of the same key: followed, it would load.
    elsewhere = FileStore(tmp_path / "elsewhere")
    save(elsewhere, make_token("tok-elsewhere"))
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    (directory / f"{KEY}.json").symlink_to(tmp_path / "elsewhere" / f"{KEY}.json")
    assert load(FileStore(directory)) is None
    assert "is a symbolic link" in caplog.text


@needs_root
def test_entry_owned_by_another_user_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    save(store, make_token())
    entry = tmp_path / f"{KEY}.json"
    os.chown(entry, OTHER_UID, OTHER_UID)
    assert load(store) is None
    assert f"owned by uid {OTHER_UID}" in caplog.text


# -- the directory: this user's, and writable by nobody else ---------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o720])
def test_directory_writable_by_others_is_refused_at_construction(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable by its group or others") as caught:
        FileStore(directory)
    assert caught.value.field == "path"
    assert str(directory) in str(caught.value)


@needs_root
def test_directory_of_another_user_is_refused_even_when_private(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigurationError, match=f"owned by uid {OTHER_UID}") as caught:
        FileStore(directory)
    assert caught.value.field == "path" and str(directory) in str(caught.value)


def test_symlink_to_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    link = tmp_path / "cache"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match="writable"):
        FileStore(link)
    target.chmod(0o700)
    save(FileStore(link), make_token("tok-through-link"))  # a private target is fine
    loaded = load(FileStore(link))
    assert loaded is not None and loaded.access_token == "tok-through-link"


def test_directory_loosened_after_construction_is_refused_at_each_use(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = tmp_path / "cache"
    store = FileStore(directory)  # missing now: checked when used
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(ConfigurationError, match="writable"):
        load(store)
    with pytest.raises(ConfigurationError, match="writable"):
        save(store, make_token())
    with pytest.raises(ConfigurationError, match="writable"), store.lock(KEY, 1.0):
        pytest.fail("the block must not run")
    assert list(directory.iterdir()) == []  # nothing was written into it

    manager = make_manager(store=store, background_refresh=False)
    assert manager.get_token(timeout=5.0) == emulator.issued_tokens[0]
    assert emulator.token_requests == 1
    assert manager.metrics()["store_errors"] >= 1
    unavailable = [line for line in warnings_of(caplog) if "token store unavailable" in line]
    # The manager's line redacts long runs such as this path; the store's error names it.
    assert len(unavailable) == 1 and "token cache directory" in unavailable[0]
    assert "writable by its group or others (mode 0777)" in unavailable[0]
    assert list(directory.iterdir()) == []


def test_directory_and_missing_parents_are_created_0700_whatever_the_umask(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "a" / "b" / "cache"
    previous = os.umask(0)
    try:
        save(FileStore(directory), make_token())
    finally:
        os.umask(previous)
    for path in (tmp_path / "a", tmp_path / "a" / "b", directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


# -- lock files: a regular file of this user's, writable by nobody else ---------------------


def _plant_open_lock(path: Path) -> None:
    path.touch()
    path.chmod(0o666)


def _plant_foreign_lock(path: Path) -> None:
    path.touch()
    path.chmod(0o600)
    os.chown(path, OTHER_UID, OTHER_UID)


def _plant_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def _plant_symlink(path: Path) -> None:
    target = path.parent.parent / "target"
    target.write_text("precious")
    path.symlink_to(target)


def _plant_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (_plant_open_lock, "writable by its group or others"),
        pytest.param(_plant_foreign_lock, f"owned by uid {OTHER_UID}", marks=needs_root),
        (_plant_fifo, r"not a regular file \(a FIFO\)"),
        (_plant_symlink, "is a symbolic link"),
        (_plant_directory, r"not a regular file \(a directory\)"),
    ],
)
def test_planted_lock_file_is_refused_at_once(
    tmp_path: Path, plant: Callable[[Path], None], reason: str
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    lock_file = directory / f"{KEY}.lock"
    plant(lock_file)
    store = FileStore(directory)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=reason) as caught, store.lock(KEY, 5.0):
        pytest.fail("the block must not run")
    assert time.monotonic() - started < 1.0
    assert str(lock_file) in str(caught.value) and caught.value.field == "path"
    target = tmp_path / "target"
    if target.exists():
        assert target.read_text() == "precious"


def test_refused_lock_file_costs_one_token_request_and_the_token_is_still_shared(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock_file = tmp_path / f"{manager_key(emulator)}.lock"
    _plant_open_lock(lock_file)
    manager = make_manager(store=FileStore(tmp_path), background_refresh=False)
    assert manager.get_token(timeout=5.0) == emulator.issued_tokens[0]
    assert emulator.token_requests == 1
    assert any("token cache lock file" in line for line in warnings_of(caplog))
    make_manager(store=FileStore(tmp_path), background_refresh=False).get_token()
    assert emulator.token_requests == 1  # the entry was saved all the same


# -- the lock: waited for while its holder renews it, a few seconds otherwise ----------------

_SILENT_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
if len(sys.argv) > 2:  # planted long ago
    os.utime(fd, (time.time() - 3600, time.time() - 3600))
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def silent_holder(lock_file: Path, *, old: bool = False) -> Iterator[None]:
    """Another process holds the ``flock`` of ``lock_file`` and never renews it."""
    argv = [sys.executable, "-c", _SILENT_HOLDER, str(lock_file)] + (["old"] if old else [])
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait(5.0)


def test_lock_held_by_a_process_that_does_not_renew_it_delays_a_cold_start_a_few_seconds(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Measures the cap itself, so it waits it: about SILENT_AFTER + CONFIRM (3.25 s).
    lock_file = tmp_path / f"{manager_key(emulator)}.lock"
    manager = make_manager(store=FileStore(tmp_path), background_refresh=False)
    with silent_holder(lock_file):
        started = time.monotonic()
        assert manager.get_token(timeout=10.0) == emulator.issued_tokens[0]
        elapsed = time.monotonic() - started
    assert elapsed < flock_module.SILENT_AFTER + flock_module.CONFIRM + 1.5
    assert emulator.token_requests == 1
    assert any("has not renewed it" in line for line in warnings_of(caplog))


def test_lock_planted_long_ago_is_given_up_on_at_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    lock_file = tmp_path / f"{KEY}.lock"
    with silent_holder(lock_file, old=True):
        started = time.monotonic()
        with pytest.raises(StoreError, match="has not renewed it") as caught, store.lock(KEY, 10.0):
            pytest.fail("the block must not run")
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert str(lock_file) in str(caught.value)


@pytest.fixture
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 0.05 s, silence after 0.4 s: the same rules, faster."""
    monkeypatch.setattr(flock_module, "HEARTBEAT", 0.05)
    monkeypatch.setattr(flock_module, "SILENT_AFTER", 0.4)
    monkeypatch.setattr(flock_module, "CONFIRM", 0.1)


def hold_in_thread(
    directory: Path, seconds: float, lease: float | None = None
) -> tuple[threading.Thread, threading.Event]:
    """A thread holding the lock through a FileStore of its own (its own descriptor)."""
    taken = threading.Event()

    def hold() -> None:
        with FileStore(directory).lock(KEY, 1.0, lease=lease) as held:
            assert held
            taken.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5.0)
    return thread, taken


@pytest.mark.usefixtures("quick_heartbeat")
def test_live_holder_is_waited_for_past_the_silence_cap(tmp_path: Path) -> None:
    thread, _ = hold_in_thread(tmp_path, 1.0)  # 2.5 silences long
    try:
        started = time.monotonic()
        with FileStore(tmp_path).lock(KEY, 5.0) as held:
            waited = time.monotonic() - started
            assert held is True
    finally:
        thread.join(5.0)
    assert waited > 0.8  # it waited for the holder to finish, not for a silence


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_new_holder_of_a_lock_file_untouched_for_long_is_waited_for(tmp_path: Path) -> None:
    # Real timings: the holder's first heartbeat is due in 1 s, the waiter gives up on a
    # stale file after 0.25 s; only the touch made with the flock keeps it waiting.
    lock_file = tmp_path / f"{KEY}.lock"
    lock_file.touch(mode=0o600)
    _age(lock_file, 3600)
    thread, _ = hold_in_thread(tmp_path, 0.6)
    try:
        with FileStore(tmp_path).lock(KEY, 3.0) as held:
            assert held is True
    finally:
        thread.join(5.0)


def test_holder_slow_to_touch_after_its_flock_is_not_taken_for_silent(tmp_path: Path) -> None:
    # A holder descheduled between its flock and its first touch: the waiter confirms the
    # silence CONFIRM (0.25 s) later before giving up, and by then the file was touched.
    lock_file = tmp_path / f"{KEY}.lock"
    lock_file.touch(mode=0o600)
    _age(lock_file, 3600)
    taken, done = threading.Event(), threading.Event()

    def slow_holder() -> None:
        fd = os.open(lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            taken.set()
            time.sleep(0.1)
            os.utime(fd)
            done.wait(0.5)
        finally:
            os.close(fd)

    thread = threading.Thread(target=slow_holder)
    thread.start()
    try:
        assert taken.wait(5.0)
        with FileStore(tmp_path).lock(KEY, 3.0) as held:
            assert held is True
    finally:
        done.set()
        thread.join(5.0)


@pytest.mark.usefixtures("quick_heartbeat")
def test_holder_is_not_renewed_past_its_lease(tmp_path: Path) -> None:
    thread, _ = hold_in_thread(tmp_path, 1.5, lease=0.2)
    try:
        started = time.monotonic()
        with (
            pytest.raises(StoreError, match="has not renewed it"),
            FileStore(tmp_path).lock(KEY, 5.0),
        ):
            pytest.fail("the block must not run")
        given_up = time.monotonic() - started
    finally:
        thread.join(5.0)
    assert given_up < 1.2  # lease 0.2 + silence 0.4 + confirm 0.1, with room


def test_heartbeat_is_kept_by_the_lease_keeper_and_ends_with_the_lock_block(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())
    with FileStore(tmp_path).lock(KEY, 1.0) as held:
        assert held
        assert set(library_threads(before)) <= {leases.THREAD_NAME}  # no thread of its own
        assert [t.name for t in threading.enumerate() if t.name == leases.THREAD_NAME] == [
            leases.THREAD_NAME
        ]
        assert leases.held() == 1
    assert leases.held() == 0


def test_lock_with_a_bad_lease_is_a_configuration_error(tmp_path: Path) -> None:
    for lease in (0, -1.0, True, "5"):
        with (
            pytest.raises(ConfigurationError, match="lease"),
            FileStore(tmp_path).lock(
                KEY,
                1.0,
                lease=lease,  # type: ignore[arg-type]
            ),
        ):
            pytest.fail("the block must not run")


def test_symlink_another_user_planted_at_the_directory_name_is_refused(tmp_path: Path) -> None:
    # In a sticky world-writable parent (/tmp), another user can take the cache directory's
    # name first with a symlink to a directory of ours; where fs.protected_symlinks is 0 the
    # kernel follows it. Reviewer's finding D8: entries and locks were written there.
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o1777)
    ours = tmp_path / "private"
    ours.mkdir(mode=0o700)
    link = parent / "genesys-token"
    link.symlink_to(ours)
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigurationError, match=f"symlink owned by uid {OTHER_UID}") as caught:
        FileStore(link)
    assert caught.value.field == "path"
    assert list(ours.iterdir()) == []
    os.lchown(link, os.geteuid(), os.getegid())  # a symlink of our own is followed
    save(FileStore(link), make_token("tok-through-our-link"))
    loaded = load(FileStore(link))
    assert loaded is not None and loaded.access_token == "tok-through-our-link"


def test_symlink_planted_after_construction_is_refused_at_the_next_use(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o1777)
    ours = tmp_path / "private"
    ours.mkdir(mode=0o700)
    cache = parent / "genesys-token"
    cache.mkdir(mode=0o700)
    store = FileStore(cache)
    cache.rmdir()  # gone (a cleaner of /tmp, say); another user takes the name
    cache.symlink_to(ours)
    os.lchown(cache, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigurationError, match=f"symlink owned by uid {OTHER_UID}"):
        save(store, make_token("tok"))
    assert list(ours.iterdir()) == []
