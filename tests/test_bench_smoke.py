"""Smoke test of ``make bench``: ``benchmarks/run.py --quick`` runs every scenario and writes
its report. Not a timing test: nothing here looks at the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

# A 30-second subprocess: in the soak leg (`make soak`), without coverage.
pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

for _module in ("authlib", "requests_auth", "matplotlib", "psutil"):
    pytest.importorskip(_module, reason="the [bench] extra is not installed")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``--quick`` run into a temporary directory, shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=ROOT,
    )
    return result, out


def test_quick_bench_exits_zero(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = quick_run
    assert result.returncode == 0, result.stderr[-4000:]


def test_quick_bench_prints_the_table_with_every_peer_and_scenario(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quick_run
    table = result.stdout.split("== Results", 1)[1]
    for column in ("genesys-token", "authlib", "requests-auth", "seed port", "reference"):
        assert column in table
    for scenario in ("1. Hot path", "2. Auth overhead", "3. Cold-start herd",
                     "4. Rotation under load", "5. Fleet", "6. Memory",
                     "7. Many orgs", "8. Throughput"):  # fmt: skip
        assert scenario in table


def test_every_scenario_prints_the_machine(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = quick_run
    assert result.stdout.count("   machine: ") == 8
    assert "cores" in result.stdout


def test_quick_bench_writes_markdown_and_png_to_out_dir(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    markdown = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "| scenario | measure |" in markdown
    assert "--quick" in markdown
    assert "## Reproduce" in markdown
    png = (out / "benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def test_quick_bench_leaves_the_repository_docs_alone(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = quick_run
    assert str(out / "benchmarks.md") in result.stdout
    assert str(ROOT / "docs" / "benchmarks.md") not in result.stdout
