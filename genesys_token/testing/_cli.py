"""``python -m genesys_token.testing``: a standalone emulator for manual and non-Python tests."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import threading
from collections.abc import Callable

from genesys_token.testing.emulator import GenesysEmulator

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "python -m genesys_token.testing") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a local Genesys Cloud OAuth emulator until Ctrl-C."
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    parser.add_argument("--token-ttl", type=float, default=86399, help="token lifetime (s)")
    parser.add_argument("--format", choices=("opaque", "jwt"), default="opaque")
    parser.add_argument("--client-id", default="emulator-client")
    parser.add_argument("--client-secret", default="emulator-secret")
    parser.add_argument(
        "--token-rate-limit", type=int, default=None, help="token creations per minute per client"
    )
    parser.add_argument("--invalid-client-status", type=int, choices=(400, 401), default=401)
    return parser


def run(
    argv: list[str] | None = None,
    *,
    ready: Callable[[GenesysEmulator], None] | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Start an emulator, print how to use it, serve until Ctrl-C or ``stop_event``."""
    args = build_parser().parse_args(argv)
    emulator = GenesysEmulator(
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        token_format=args.format,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_rate_limit=args.token_rate_limit,
        invalid_client_status=args.invalid_client_status,
    )
    event = stop_event if stop_event is not None else threading.Event()
    with emulator, contextlib.suppress(KeyboardInterrupt):
        exports = {
            "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
            "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
            "GENESYSCLOUD_API_URL": emulator.api_base_url,
        }
        lines = [f"Genesys emulator on {emulator.url} (client id: {emulator.client_id})"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
        print("\n".join(lines), flush=True)
        if ready is not None:
            ready(emulator)
        while not event.is_set():
            event.wait(0.2)  # short waits so Ctrl-C is handled promptly everywhere
    return 0
