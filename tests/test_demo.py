"""`make demo` runs examples/demo.py: keep it passing (a shortened run)."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo_run() -> tuple[int, str]:
    """One shortened run of the demo (8 s), shared by the tests that read its output."""
    namespace = runpy.run_path(str(DEMO), run_name="demo")
    out = io.StringIO()
    status = namespace["run"](duration=8.0, workers=4, out=out)
    return status, out.getvalue()


def test_demo_survives_outage_and_rotation_with_no_failed_call(demo_run: tuple[int, str]):
    status, text = demo_run
    assert status == 0, text
    assert "result: OK" in text
    assert "failed calls                                         0" in text
    assert "outage begins" in text and "rotate(revoke_previous=True)" in text


def _summary_value(text: str, name: str) -> str:
    line = next(line for line in text.splitlines() if line.strip().startswith(name))
    return line.strip()[len(name) :].strip()


def test_demo_shows_a_make_before_break_rotation_with_its_drain_figures(
    demo_run: tuple[int, str],
):
    status, text = demo_run
    assert status == 0, text
    # The order issue 12 promises: the new token in place, then the drain, then the revoke.
    started = text.index("report download starts")
    in_place = text.index("in place: new calls use it at once")
    drained = text.index("-- TOKEN_DRAIN_COMPLETE: drained ")
    revoked = text.index("-- TOKEN_REVOKED ")
    assert started < in_place < drained < revoked, text
    # The download carried the old token, answered 200, and was waited for: the emulator
    # checks a token when it answers, so the revocation came after the answer.
    download = _summary_value(text, "report download during the rotation")
    assert download.startswith("200 after ") and download.endswith(text.split("retires ")[1][:12])
    assert _summary_value(text, "old token revoked after the download's answer") == "yes"
    drain = _summary_value(text, "rotation's drain")
    assert drain.startswith("drained ") and "still in flight" not in drain
    assert int(_summary_value(text, "calls started during the rotation")) > 0


def test_demo_command_line_parses_its_options(monkeypatch):
    namespace = runpy.run_path(str(DEMO), run_name="demo")
    seen = {}
    fake_run = lambda d, w: seen.update(d=d, w=w) or 0  # noqa: E731
    monkeypatch.setitem(namespace["main"].__globals__, "run", fake_run)
    assert namespace["main"](["--duration", "3", "--workers", "2"]) == 0
    assert seen == {"d": 3.0, "w": 2}
