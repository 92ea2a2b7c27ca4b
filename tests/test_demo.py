"""`make demo` runs examples/demo.py: keep it passing (a shortened run)."""

from __future__ import annotations

import io
import runpy
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_survives_outage_and_rotation_with_no_failed_call():
    namespace = runpy.run_path(str(DEMO), run_name="demo")
    out = io.StringIO()
    status = namespace["run"](duration=8.0, workers=4, out=out)
    text = out.getvalue()
    assert status == 0, text
    assert "result: OK" in text
    assert "failed calls                                         0" in text
    assert "outage begins" in text and "rotate(revoke_previous=True)" in text


def test_demo_command_line_parses_its_options(monkeypatch):
    namespace = runpy.run_path(str(DEMO), run_name="demo")
    seen = {}
    fake_run = lambda d, w: seen.update(d=d, w=w) or 0  # noqa: E731
    monkeypatch.setitem(namespace["main"].__globals__, "run", fake_run)
    assert namespace["main"](["--duration", "3", "--workers", "2"]) == 0
    assert seen == {"d": 3.0, "w": 2}
