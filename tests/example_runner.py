"""Running an example as a user would: a subprocess configured by ``GENESYSCLOUD_*`` variables
pointing at the emulator (none of the test process's own ``GENESYSCLOUD_*`` leak in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genesys_token.testing import GenesysEmulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(
    name: str,
    emulator: GenesysEmulator,
    *args: str,
    secret: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` with ``args`` against ``emulator`` (its client and ``secret``,
    by default its own), plus the variables in ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENESYSCLOUD_")}
    environ.update(
        GENESYSCLOUD_OAUTHCLIENT_ID=emulator.client_id,
        GENESYSCLOUD_OAUTHCLIENT_SECRET=emulator.client_secret if secret is None else secret,
        GENESYSCLOUD_TOKEN_URL=emulator.token_url,
        GENESYSCLOUD_API_URL=emulator.api_base_url,
        **(env or {}),
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
