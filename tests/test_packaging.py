"""The sdist: a test tree that runs (conftest, helpers, the examples and benchmarks it needs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the tests read or run besides the package itself.
TEST_TREE = ("tests", "examples", "benchmarks")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}
BUILD_LEFTOVERS = (".git", ".venv*", "*.egg-info", "build", "dist", "*_cache", "__pycache__",
                   ".coverage*")  # fmt: skip


def _tree_files() -> set[str]:
    files = set()
    for top in TEST_TREE:
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT)
            skipped = SKIPPED_PARTS & set(relative.parts) or path.suffix in (".pyc", ".pyo")
            if path.is_file() and not skipped:
                files.add(relative.as_posix())
    return files


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from a clean copy of this tree, unpacked; returns its top directory."""
    out = tmp_path_factory.mktemp("sdist")
    # A clean copy: setuptools also ships whatever an old *.egg-info/SOURCES.txt lists.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(out)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out / "unpacked", filter="data")
    (top,) = (out / "unpacked").iterdir()
    return top


def test_sdist_ships_the_whole_test_tree(sdist: Path) -> None:
    shipped = {
        path.relative_to(sdist).as_posix()
        for top in TEST_TREE
        for path in (sdist / top).rglob("*")
        if path.is_file()
    }
    assert _tree_files() - shipped == set()
    assert "tests/conftest.py" in shipped
    assert not any("docs/_pending" in name for name in shipped)


SDIST_TESTS = (
    "tests/test_redact.py",
    "tests/test_examples_requests.py",
    "tests/test_store_compliance.py::test_saved_token_loads_back_with_its_fields",
)


def test_tests_run_from_the_unpacked_sdist(sdist: Path) -> None:
    # Tests that need conftest's fixtures, a helper module, and an example next to them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENESYSCLOUD_", "COV"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDIST_TESTS],
        cwd=sdist,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
