"""The emulator's command line: one parser for ``python -m genesys_token.testing`` and for
``genesys-token emulator``, and one runner that turns bad input into a one-line error."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genesys_token.testing.emulator import GenesysEmulator

__all__ = ["EXIT_USAGE", "add_arguments", "build_parser", "run", "run_parsed"]

#: Exit code for a bad option or a port that cannot be bound (as argparse uses for usage).
EXIT_USAGE = 2
_MAX_PORT = 65535


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= _MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to {_MAX_PORT})")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text} must be a number >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the emulator's options to ``parser`` (both command lines share them).

    Returns:
        ``parser``, for chaining.
    """
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port (default 0: a free one)")
    parser.add_argument(
        "--token-ttl", type=_non_negative, default=86399.0, help="token lifetime in seconds"
    )
    parser.add_argument("--format", choices=("opaque", "jwt"), default="opaque")
    parser.add_argument("--client-id", default="emulator-client")
    parser.add_argument("--client-secret", default="emulator-secret")
    parser.add_argument(
        "--token-rate-limit",
        type=_positive_int,
        default=None,
        help="token creations per minute per client (default: unlimited)",
    )
    parser.add_argument(
        "--invalid-client-status",
        type=int,
        choices=(400, 401),
        default=401,
        help="HTTP status of an invalid_client answer (default 401)",
    )
    return parser


def build_parser(prog: str = "python -m genesys_token.testing") -> argparse.ArgumentParser:
    """The parser of ``python -m genesys_token.testing``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a local Genesys Cloud OAuth emulator until Ctrl-C."
    )
    return add_arguments(parser)


def run(
    argv: list[str] | None = None,
    *,
    ready: Callable[[GenesysEmulator], None] | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """``python -m genesys_token.testing``: parse ``argv`` and serve (see :func:`run_parsed`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_parsed(args, prog=parser.prog, ready=ready, stop_event=stop_event)


def run_parsed(
    args: argparse.Namespace,
    *,
    prog: str,
    ready: Callable[[GenesysEmulator], None] | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Start an emulator, print how to use it, serve until Ctrl-C or ``stop_event``.

    Args:
        args: Options parsed by a parser that :func:`add_arguments` built.
        prog: The command's name, which starts the error line.
        ready: Called with the running emulator (tests use it).
        stop_event: Stops the emulator when set (default: runs until Ctrl-C).

    Returns:
        0 after a clean stop; 2 with one line on stderr when the emulator cannot start.
    """
    # Imported here: `genesys-token` builds this parser on every run, and only `emulator`
    # needs the server (and its RSA key code).
    from genesys_token.testing.emulator import GenesysEmulator

    try:
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
        emulator.start()
    except (ValueError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{prog}: error: cannot start on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_USAGE
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
