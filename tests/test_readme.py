"""The README's snippets: every Python block compiles, and the first-token and API snippets run
as written against the emulator (configured the way a user would: GENESYSCLOUD_* variables)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from genesys_token.testing import GenesysEmulator

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _python_blocks() -> list[str]:
    return _BLOCK.findall(README.read_text(encoding="utf-8"))


def test_every_python_block_of_the_readme_compiles():
    blocks = _python_blocks()
    assert len(blocks) > 15
    for number, block in enumerate(blocks):
        # Top-level await/async with, as in an asyncio REPL or a notebook, is allowed.
        compile(
            block, f"README.md python block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )


def _block_containing(text: str) -> str:
    return next(block for block in _python_blocks() if text in block)


@pytest.mark.parametrize(
    "marker",
    [
        "with TokenManager.from_env() as manager:        # reads the variables above",
        "with TokenManager.from_env() as manager, api_session(manager) as session:",
    ],
)
def test_readme_snippet_runs_as_written(emulator: GenesysEmulator, marker: str, tmp_path: Path):
    code = _block_containing(marker)
    env = {
        **os.environ,
        "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
        "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
        "GENESYSCLOUD_API_URL": emulator.api_base_url,
    }
    script = tmp_path / "snippet.py"
    script.write_text(code + "\nprint('snippet-ok', org['id'])\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("snippet-ok ")
    assert emulator.token_requests == 1
