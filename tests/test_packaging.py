"""The sdist: a test tree that runs (conftest, helpers, the examples and benchmarks it needs)."""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
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


_CORE_IMPORTS = """
import json, sys
import genesys_token, genesys_token.cli, genesys_token.stores
genesys_token.stores.FileStore
print(json.dumps(sorted(
    (name, module.__file__) for name, module in sys.modules.items()
    if name.split(".")[0] == "genesys_token" and getattr(module, "__file__", None)
)))
"""


def _top_level_imports(path: str) -> set[str]:
    """Modules a source file imports unconditionally (module level, outside ``try``)."""
    tree = ast.parse(Path(path).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _declared() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = config["options"]["install_requires"].split("\n")
    found = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in requirements)
    return {match[0].lower().replace("_", "-") for match in found if match}


def _packages_distributions() -> dict[str, list[str]]:
    """Top-level import name -> distributions. Python 3.10's
    ``metadata.packages_distributions`` reads only ``top_level.txt``, which wheels built by
    hatchling or maturin (urllib3 2, cryptography) lack: the names are inferred from each
    distribution's files as well, as 3.11 does."""
    providers: dict[str, list[str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        declared = (dist.read_text("top_level.txt") or "").split()
        inferred = {
            file.parts[0] if len(file.parts) > 1 else file.stem
            for file in dist.files or ()
            if file.suffix == ".py" or len(file.parts) > 1
        }
        for top in {*declared, *inferred}:
            if top and not top.endswith((".dist-info", ".egg-info", ".data")):
                providers.setdefault(top, []).append(name)
    return providers


def test_every_distribution_the_core_imports_is_declared() -> None:
    # Issue 22: stores/_seal.py imported cryptography, which only PyJWT[crypto] pulled in.
    result = subprocess.run(
        [sys.executable, "-c", _CORE_IMPORTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = json.loads(result.stdout)
    assert any(name == "genesys_token.stores._seal" for name, _ in modules)
    imported = set().union(*(_top_level_imports(path) for _, path in modules))
    third_party = imported - set(sys.stdlib_module_names) - {"genesys_token", "__future__"}
    providers = _packages_distributions()
    undeclared = {
        name: providers.get(name)
        for name in third_party
        if not {d.lower().replace("_", "-") for d in providers.get(name, [])} & _declared()
    }
    assert undeclared == {}
    assert "cryptography" in third_party
