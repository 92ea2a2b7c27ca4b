"""FileStore specifics: modes, atomic writes, bad entries, unwritable disks, forks."""

from __future__ import annotations

import logging
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import read_child
from store_helpers import KEY, load, make_token, save

from genesys_token import ConfigurationError, StoreError, TokenManager
from genesys_token.stores import FileStore
from genesys_token.stores.file import MAX_ENTRY_BYTES, default_cache_dir
from genesys_token.testing import GenesysEmulator

MakeManager = Callable[..., TokenManager]


def entry_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


# -- with a manager over the emulator ------------------------------------------------------


def test_cache_file_is_0600_in_a_0700_directory(
    make_manager: MakeManager, emulator: GenesysEmulator, tmp_path: Path
) -> None:
    directory = tmp_path / "nested" / "cache"
    make_manager(store=FileStore(directory), background_refresh=False).get_token()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (entry,) = entry_files(directory)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    for lock_file in directory.glob("*.lock"):
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600


def test_secret_and_client_id_never_reach_the_cache_directory(
    make_manager: MakeManager, emulator: GenesysEmulator, tmp_path: Path
) -> None:
    make_manager(store=FileStore(tmp_path), background_refresh=False).get_token()
    for path in tmp_path.iterdir():
        assert emulator.client_id not in path.name
        assert emulator.client_secret.encode() not in path.read_bytes()


def test_manager_recovers_from_a_corrupted_cache_file(
    make_manager: MakeManager, emulator: GenesysEmulator, tmp_path: Path
) -> None:
    first = make_manager(store=FileStore(tmp_path), background_refresh=False)
    first.get_token()
    (entry,) = entry_files(tmp_path)
    entry.write_bytes(b'{"format": "genesys-token/1", "token": {"access_tok')

    second = make_manager(store=FileStore(tmp_path), background_refresh=False)
    second.get_token()
    assert emulator.token_requests == 2  # the corrupt entry cost one request, no error
    third = make_manager(store=FileStore(tmp_path), background_refresh=False)
    assert third.get_token() == second.get_token()
    assert emulator.token_requests == 2  # and the entry was rewritten whole


def test_unwritable_cache_degrades_to_the_network_with_a_warning(
    make_manager: MakeManager,
    emulator: GenesysEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A regular file where a parent directory should be: no user (root included) can create
    # the cache, like a read-only or full disk.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    caplog.set_level(logging.DEBUG)
    manager = make_manager(store=FileStore(blocker / "cache"), background_refresh=False)
    token = manager.get_token()
    assert emulator.token_requests == 1
    assert manager.metrics()["store_errors"] >= 1
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "genesys_token.core.acquisition"
    ]
    # One line per outage, not one per store call (read, lock, read again, write).
    assert len(warnings) == 1
    assert "token store unavailable" in warnings[0]
    assert token not in caplog.text
    assert emulator.client_secret not in caplog.text


def test_unusable_cache_raises_store_errors_and_logs_nothing_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One error policy: the store raises, the manager reports once. The store itself must
    # not add warning lines (an unusable cache used to log five per acquisition).
    blocker = tmp_path / "file"
    blocker.write_text("")
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    store = FileStore(blocker / "cache")
    with pytest.raises(StoreError, match="cannot write the token cache"):
        save(store, make_token())
    with pytest.raises(StoreError, match="cannot read"):
        load(store)  # ENOTDIR is not "missing": it is reported, then the network is used
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot lock the token cache"), store.lock(KEY, 5.0):
        pytest.fail("the block must not run without the lock")
    assert time.monotonic() - started < 1.0  # at once, not after the 5 s
    assert not list(tmp_path.glob("**/.tmp-*"))
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


# -- entries -------------------------------------------------------------------------------


def test_readers_never_see_a_half_written_entry(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    save(store, make_token("tok-0"))
    stop = threading.Event()
    misses: list[int] = []

    def writer() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            save(store, make_token(f"tok-{count}" + "x" * 2000))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for attempt in range(400):
            if load(store) is None:
                misses.append(attempt)
    finally:
        stop.set()
        thread.join(5.0)
    assert misses == []
    assert not list(tmp_path.glob(".tmp-*"))  # no temp file left behind


def test_oversized_entry_is_ignored(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / f"{KEY}.json").write_bytes(b" " * (MAX_ENTRY_BYTES + 10))
    assert load(store) is None


def test_symlinked_entry_is_ignored_and_replaced_without_touching_its_target(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    store = FileStore(tmp_path / "cache")
    save(store, make_token())
    entry = tmp_path / "cache" / f"{KEY}.json"
    entry.unlink()
    entry.symlink_to(target)
    assert load(store) is None
    save(store, make_token("tok-new"))
    assert target.read_text() == "precious"
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-new"


def test_directory_at_an_entry_reads_as_missing_and_blocks_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = tmp_path / f"{KEY}.json"
    entry.mkdir()
    store = FileStore(tmp_path)
    assert load(store) is None  # not a regular file: no entry (issue 22), not an outage
    assert f"ignoring token cache entry {entry}: it is not a regular file (a directory)" in (
        caplog.text
    )
    with pytest.raises(StoreError, match="cannot write the token cache"):
        save(store, make_token())  # a directory cannot be replaced by a file


def test_keys_that_are_not_hex_are_hashed_into_safe_file_names(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "cache")
    save(store, make_token("tok-odd"), "../../escape me")
    loaded = load(store, "../../escape me")
    assert loaded is not None and loaded.access_token == "tok-odd"
    assert [p.parent for p in tmp_path.glob("**/*.json")] == [tmp_path / "cache"]


# -- the directory -------------------------------------------------------------------------


def test_directory_open_to_others_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    caplog.set_level(logging.WARNING, logger="genesys_token")
    store = FileStore(directory)
    save(store, make_token())
    save(store, make_token())
    warnings = [r for r in caplog.records if "accessible to other users" in r.getMessage()]
    assert len(warnings) == 1
    assert "chmod 700" in warnings[0].getMessage()


def test_private_existing_directory_is_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    caplog.set_level(logging.WARNING, logger="genesys_token")
    save(FileStore(directory), make_token())
    assert not caplog.records


def test_path_naming_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigurationError, match="not a directory"):
        FileStore(file)
    with pytest.raises(ConfigurationError, match="str or path"):
        FileStore(42)  # type: ignore[arg-type]


def test_default_directory_follows_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENESYSCLOUD_TOKEN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FileStore().path == tmp_path / "xdg" / "genesys-token"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "genesys-token"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert FileStore().path == tmp_path / "home" / ".cache" / "genesys-token"
    assert "genesys-token" in repr(FileStore())


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_while_a_thread_holds_the_lock_can_take_it_later(
    emulator: GenesysEmulator, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    # The manager's fork handler resets the store in the child.
    manager = TokenManager(
        emulator.client_id,
        emulator.client_secret,
        token_url=emulator.token_url,
        api_base_url=emulator.api_base_url,
        store=store,
        background_refresh=False,
    )
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock(KEY, 1.0) as held:
            assert held
            taken.set()
            release.wait(10.0)

    thread = threading.Thread(target=holder)
    thread.start()
    assert taken.wait(5.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            with store.lock(KEY, 5.0) as held:
                os.write(write_end, b"held" if held else b"timeout")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        release.set()  # the parent's thread lets go; the child must get the lock
        thread.join(5.0)
        ready, _, _ = select.select([read_end], [], [], 10.0)
        assert ready, "the child did not answer"
        assert os.read(read_end, 16) == b"held"
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        manager.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_full_disk_makes_save_raise_and_leaves_no_temp_file(tmp_path: Path) -> None:
    import resource

    store = FileStore(tmp_path)
    save(store, make_token("tok-old"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Writes past 64 bytes now fail (EFBIG; Python ignores SIGXFSZ), as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        with pytest.raises(StoreError, match="cannot write the token cache"):
            save(store, make_token("tok-new"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = load(store)
    assert loaded is not None and loaded.access_token == "tok-old"  # the old entry survives


def test_threads_sharing_one_store_queue_on_its_thread_lock(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.lock(KEY, 1.0) as held:
            assert held
            taken.set()
            release.wait(5.0)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(5.0)
        with store.lock(KEY, 0.1) as held:
            assert held is False
    finally:
        release.set()
        thread.join(5.0)


# -- GENESYSCLOUD_TOKEN_CACHE and platforms without fcntl (issue 16) -----------------------


def test_file_store_without_a_path_honours_genesyscloud_token_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", str(tmp_path / "from-env"))
    store = FileStore()
    assert store.path == tmp_path / "from-env" and store.enabled
    save(store, make_token("tok-env"))
    assert list((tmp_path / "from-env").glob("*.json"))
    assert FileStore(tmp_path / "explicit").path == tmp_path / "explicit"  # a path wins
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", "  ")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FileStore().path == tmp_path / "xdg" / "genesys-token"  # blank: the default


@pytest.mark.parametrize("value", ["off", "OFF", " none ", "0", "false", "no"])
def test_genesyscloud_token_cache_off_gives_a_store_that_keeps_nothing(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    caplog.set_level(logging.DEBUG, logger="genesys_token")
    store = FileStore()
    assert store.path is None and not store.enabled
    save(store, make_token())
    assert load(store) is None
    with store.lock(KEY, 0.0) as held:
        assert held is True
    assert not list(tmp_path.rglob("*.json"))
    assert "off" in repr(store)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "keeps no token" in lines[0].getMessage()


def test_off_store_costs_each_manager_its_own_request(
    make_manager: MakeManager, emulator: GenesysEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_TOKEN_CACHE", "off")
    for _ in range(2):
        make_manager(store=FileStore(), background_refresh=False).get_token()
    assert emulator.token_requests == 2


_WITHOUT_FCNTL = """
import os, sys
sys.modules["fcntl"] = None  # as on Windows
import genesys_token, genesys_token.cli
from genesys_token.stores import FileStore
from genesys_token.errors import ConfigurationError
try:
    FileStore(sys.argv[1])
except ConfigurationError as exc:
    print("refused:", exc)
os.environ["GENESYSCLOUD_TOKEN_CACHE"] = "off"
print("off works:", FileStore().enabled is False)
print("cli store:", genesys_token.cli.store_from_env())
"""


def test_without_fcntl_the_package_imports_and_file_store_says_why(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FCNTL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "refused: FileStore needs fcntl" in result.stdout
    assert "GENESYSCLOUD_TOKEN_CACHE=off" in result.stdout
    assert "off works: True" in result.stdout
    assert "cli store: None" in result.stdout
    assert result.stderr == ""


# -- fork and the flock ------------------------------------------------------------------

_FORKING_HOLDER = """
import os, sys, threading, time
from genesys_token.stores import FileStore
directory, key = sys.argv[1:3]
store = FileStore(directory)
taken = threading.Event()
def hold():
    with store.lock(key, 5.0) as held:
        assert held
        taken.set()
        time.sleep(60)
threading.Thread(target=hold, daemon=True).start()
taken.wait(5.0)
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # let the test see the parent's output end
    os.dup2(null, 2)
    time.sleep(60)  # a long-lived worker the parent left behind
    os._exit(0)
print(pid, flush=True)
os._exit(0)  # the parent dies holding the lock
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_lock_frees_when_its_holder_dies_though_a_child_forked_meanwhile_lives(
    tmp_path: Path,
) -> None:
    parent = subprocess.run(
        [sys.executable, "-c", _FORKING_HOLDER, str(tmp_path), KEY],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    child = int(parent.stdout.strip())
    try:
        os.kill(child, 0)  # the child still lives...
        with FileStore(tmp_path).lock(KEY, 1.0) as held:
            assert held is True  # ...yet its copy of the descriptor no longer holds the lock
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_inside_a_lock_block_leaves_the_parents_lock_alone(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    read_end, write_end = os.pipe()
    with store.lock(KEY, 1.0) as held:
        assert held
        (lock_fd,) = store._open_fds
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves the block, then reports
            # The fork hook closed the child's copy; the number now names another file.
            os.dup2(os.open(os.devnull, os.O_RDONLY), lock_fd)
        else:
            os.close(write_end)
            assert read_child(pid, read_end, 10.0) == b"left"
            with FileStore(tmp_path).lock(KEY, 0.0) as stolen:
                assert stolen is False  # the parent still holds its lock
    if pid == 0:  # pragma: no cover
        try:
            untouched = os.fstat(lock_fd).st_rdev == os.stat(os.devnull).st_rdev
        except OSError:
            untouched = False
        os.write(write_end, b"left" if untouched else b"closed another file")
        os._exit(0)
    with FileStore(tmp_path).lock(KEY, 0.0) as free:
        assert free is True
