"""The ``genesys-token`` command: a token for shell scripts, and quick diagnostics.

Configuration comes from the environment variables Genesys tooling uses
(``GENESYSCLOUD_OAUTHCLIENT_ID``, ``GENESYSCLOUD_OAUTHCLIENT_SECRET``,
``GENESYSCLOUD_REGION``, ``GENESYSCLOUD_TOKEN_URL``, ``GENESYSCLOUD_API_URL``), plus
``GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE`` (a file holding the secret) and
``GENESYSCLOUD_TOKEN_CACHE``: a cache directory, or ``off``. By default tokens are cached in
a :class:`~genesys_token.stores.FileStore`, so running ``genesys-token token`` from a cron job
every minute makes one token request per token lifetime, not one per run.

Exit codes: 0 ok, 2 configuration error, 3 credentials rejected, 4 service unavailable
(also when ``--timeout`` runs out: a login host that does not answer in time is
unavailable, as when the library's own retry deadline runs out), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM); each failure prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import requests

from . import __version__
from .credentials import SecretFile
from .errors import ConfigurationError, GenesysTokenError, InvalidClientError
from .http.connections import shared_session, status_of
from .http.failures import cause_of, host_of
from .manager import TokenManager
from .observability.redaction import redact
from .settings import ENV_CLIENT_SECRET, ENV_CLIENT_SECRET_FILE, Settings
from .stores.base import TokenStore
from .testing._cli import add_arguments as add_emulator_arguments
from .testing._cli import run_parsed as run_emulator_args
from .token import Token

if TYPE_CHECKING:
    from .testing.emulator import GenesysEmulator

#: Exit codes, for scripts that branch on why the command failed.
EXIT_OK = 0
EXIT_CONFIGURATION = 2
EXIT_CREDENTIALS = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as shells report a Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
ENV_TOKEN_CACHE = "GENESYSCLOUD_TOKEN_CACHE"
AUDIT_LOGGER = "genesys_token.audit"
#: The largest ``--timeout`` (a day): larger values overflow the SIGALRM timer.
MAX_TIMEOUT = 86400.0
#: The library's default retry deadline, which a shorter ``--timeout`` replaces.
RETRY_DEADLINE = Settings().retry_deadline
#: Values of GENESYSCLOUD_TOKEN_CACHE that turn the file cache off.
CACHE_OFF = frozenset({"off", "none", "no", "false", "0"})

#: The library's logger, which ``main()`` sends to stderr while a command runs.
library_log = logging.getLogger("genesys_token")

_ENVIRONMENT_HELP = """\
environment (surrounding whitespace of the id and secret is stripped; a misspelt
GENESYSCLOUD_* name close to one of these is reported on stderr):
  GENESYSCLOUD_OAUTHCLIENT_ID           the OAuth client's id (required)
  GENESYSCLOUD_OAUTHCLIENT_SECRET       its secret (required, or the next one)
  GENESYSCLOUD_OAUTHCLIENT_SECRET_FILE  a file holding the secret, read for each request
  GENESYSCLOUD_REGION      us-east-1, eu-west-1, mypurecloud.ie, ... (default us-east-1)
  GENESYSCLOUD_TOKEN_URL   token endpoint override (default: the region's)
  GENESYSCLOUD_API_URL     API base override (default: the region's)
  GENESYSCLOUD_TOKEN_CACHE cache directory, or "off" (default ~/.cache/genesys-token)
  GENESYSCLOUD_PROXY_HOST           a proxy for the token requests, winning over
  GENESYSCLOUD_PROXY_PORT             HTTPS_PROXY; with GENESYSCLOUD_PROXY_PROTOCOL
  GENESYSCLOUD_PROXY_PROTOCOL         (http, https, socks5; default http) and
  GENESYSCLOUD_PROXY_AUTH_USERNAME    the proxy's credentials (the password is
  GENESYSCLOUD_PROXY_AUTH_PASSWORD    never shown)
  GENESYSCLOUD_GATEWAY_HOST         a gateway in front of the login and API hosts:
  GENESYSCLOUD_GATEWAY_PORT           its port, GENESYSCLOUD_GATEWAY_PROTOCOL (default
  GENESYSCLOUD_GATEWAY_PROTOCOL       https), and a path prefix GENESYSCLOUD_GATEWAY_PATH_VALUE
  GENESYSCLOUD_GATEWAY_PATH_NAME      for the login (PATH_NAME=login) or API (=api) host
  GENESYSCLOUD_GATEWAY_PATH_VALUE
  GENESYSCLOUD_OTEL        "off" turns the OpenTelemetry spans and instruments off
  GENESYSCLOUD_API_RATE_LIMIT  pace API calls: CALLS/SECONDS per token, e.g. 300/60
  GENESYSCLOUD_API_RATE_WAIT   longest a call waits for room, seconds (default 30)
  GENESYSCLOUD_TOKENS          tokens per client, calls round-robin over them (default 1)
  HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE   as for requests

exit codes: 0 ok, 2 configuration error, 3 credentials rejected, 4 service unavailable
(or --timeout ran out), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)
"""


class Stopped(BaseException):
    """A signal or the ``--timeout`` bound ended the command (a BaseException, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Progress(logging.Handler):
    """What a ``--timeout`` line names: the host the command waits on, and why the last
    failed attempt of its token request failed (from the library's retry notices, which
    carry it as their ``failure`` field)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)  # retry notices are warnings
        self.host: str | None = None
        self.failure: str | None = None

    def waiting_on(self, url: str) -> None:
        """The command now waits on ``url``'s host (no failure of its seen yet)."""
        self.host, self.failure = host_of(url), None

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the failure a retry notice names."""
        failure = getattr(record, "failure", None)
        if isinstance(failure, str):
            self.failure = failure

    def timed_out(self, seconds: float) -> str:
        """The line of a run that ``--timeout`` ended."""
        where = f" from {self.host}" if self.host else ""
        last = f" (last failure: {self.failure})" if self.failure else ""
        return f"timed out: no answer{where} within --timeout {seconds:g}s{last}"


class UsageError(Exception):
    """argparse found a bad command line (exit code 2, like any configuration error)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits; main() must return
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``genesys-token`` and its commands."""
    parser = _Parser(
        prog="genesys-token",
        description="Get, inspect and check Genesys Cloud client-credentials tokens.",
        epilog=_ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, handler, summary in (
        ("token", _cmd_token, "print the access token alone (reuses the cached token)"),
        ("inspect", _cmd_inspect, "show type, expiry, claims and source; never the token"),
        (
            "check",
            _cmd_check,
            "request a new token with the configured credentials (even when one is cached),"
            " then check it with HEAD /api/v2/tokens/me",
        ),
    ):
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=_ENVIRONMENT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if name in ("token", "check"):
            sub.add_argument(
                "--timeout",
                type=_seconds,
                default=None,
                metavar="SECONDS",
                help="give up (exit 4) when the whole command takes longer than this, at most"
                f" {MAX_TIMEOUT:g} (default: no bound beyond the library's retry deadline)",
            )
    emulator = commands.add_parser(
        "emulator",
        help="run a local Genesys Cloud OAuth emulator until Ctrl-C",
        description="Run a local Genesys Cloud OAuth emulator until Ctrl-C.",
    )
    add_emulator_arguments(emulator)
    emulator.set_defaults(handler=run_emulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``genesys-token``; returns the exit code.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        0 ok, 2 configuration error, 3 credentials rejected, 4 service unavailable (or
        ``--timeout`` ran out), 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        return _fail(str(exc), EXIT_CONFIGURATION)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIGURATION
    handler, level = _log_to_stderr(args.verbose)
    args.progress = progress = Progress()
    library_log.addHandler(progress)
    try:
        with _on_signals(), _bounded(getattr(args, "timeout", None), progress):
            code = int(args.handler(args))
        sys.stdout.flush()  # here, where a closed pipe can still be handled quietly
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Stopped as exc:
        return _fail(str(exc), exc.code)
    except BrokenPipeError:
        return _stdout_closed()
    except ConfigurationError as exc:
        return _fail(_describe(exc), EXIT_CONFIGURATION)
    except InvalidClientError as exc:
        return _fail(_describe(exc), EXIT_CREDENTIALS)
    except GenesysTokenError as exc:
        return _fail(_describe(exc), EXIT_UNAVAILABLE)
    finally:
        library_log.removeHandler(progress)
        library_log.removeHandler(handler)
        library_log.setLevel(level)


# -- the commands ----------------------------------------------------------------------


def _cmd_token(args: argparse.Namespace) -> int:
    with _manager(store_from_env(), args) as manager:
        token = manager.get_token()
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    store = store_from_env()
    with _manager(store, args) as manager:
        token = manager.refresh()
    lines = [
        f"client_id:   {manager.client_id}",
        f"token_url:   {manager.token_url}",
        f"type:        {'jwt' if token.is_jwt else 'opaque'}",
        f"token_type:  {token.token_type}",
        f"fingerprint: {token.fingerprint}",
        f"expires_at:  {token.expires_at_iso()}",
        f"expires_in:  {max(0, int(token.remaining()))}s",
        f"source:      {'network' if token.source == 'network' else 'cache'}",
        f"cache:       {_describe_store(store)}",
    ]
    if token.claims is not None:
        lines.append("claims:      " + json.dumps(token.claims, sort_keys=True, default=str))
    print("\n".join(lines))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    store = store_from_env()
    with _manager(store, args) as manager:
        token = manager.refresh()
        cached = token.source != "network"
        if cached:
            # A cached token proves nothing about the configured secret, which is what people
            # run `check` to validate: ask the token endpoint again (the cache gets the result).
            token = manager.refresh(force=True)
        settings = manager.settings
    print(f"credentials: accepted by {manager.token_url} (token request made just now)")
    life = max(0, int(token.remaining()))
    origin = "that request; the cached token was not used" if cached else "that request"
    print(f"token:       fingerprint {token.fingerprint}, expires in {life}s (from {origin})")
    print(f"cache:       {_describe_store(store)}")
    url = f"{manager.api_base_url}/api/v2/tokens/me"
    args.progress.waiting_on(url)
    try:
        status = _head(url, token, settings)
    except requests.RequestException as exc:
        message = (
            f"HEAD {url} failed: no answer from the API: {cause_of(exc)} ({type(exc).__name__})"
        )
        return _fail(message, EXIT_UNAVAILABLE)
    print(f"api:         HEAD {url} answered {status}")
    if 200 <= status < 300:
        print("ok: the credentials work and the API accepts their token")
        return EXIT_OK
    code = EXIT_CREDENTIALS if status in (401, 403) else EXIT_UNAVAILABLE
    return _fail(f"the API rejected a token just issued: HEAD {url} answered {status}", code)


def _head(url: str, token: Token, settings: Settings) -> int:
    """``HEAD url`` with the token (no redirect followed: the bearer token must not go
    elsewhere), through the settings' proxy with their client certificate; returns the
    status.

    Raises:
        requests.RequestException: No whole answer came within the attempt bound.
    """
    headers = {"Authorization": f"Bearer {token.access_token}"}
    return status_of(
        shared_session(),
        "HEAD",
        url,
        headers=headers,
        timeout=settings.timeout,
        verify=settings.verify,
        proxies=settings.proxies,
        cert=settings.cert,
    )


def run_emulator(
    args: argparse.Namespace,
    *,
    ready: Callable[[GenesysEmulator], None] | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """The ``emulator`` command: serve a :class:`~genesys_token.testing.GenesysEmulator`.

    Args:
        args: The parsed ``emulator`` options.
        ready: Called with the running emulator (tests use it).
        stop_event: Stops the emulator when set (default: runs until Ctrl-C).
    """
    return run_emulator_args(
        args, prog="genesys-token emulator", ready=ready, stop_event=stop_event
    )


# -- helpers ---------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # Bounded: setitimer overflows on 1e10 (and a command bound beyond a day means none).
    if not 0 < value <= MAX_TIMEOUT:  # also rejects nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and <= {MAX_TIMEOUT:g}, got {text!r}"
        )
    return value


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _on_signals() -> Iterator[None]:
    """SIGTERM ends the command like Ctrl-C does: one line, exit 143, no traceback (Python's
    default would die silently). Only in the main thread, where signals are handled."""
    if not _in_main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise Stopped("terminated (SIGTERM)", EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _bounded(seconds: float | None, progress: Progress | None = None) -> Iterator[None]:
    """Bound the wall-clock time of the block: a SIGALRM timer interrupts even a blocked
    socket read (POSIX, main thread; elsewhere the library's own deadlines apply). The line
    names what ``progress`` knows then."""
    if seconds is None or not _in_main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        line = (progress or Progress()).timed_out(seconds)
        raise Stopped(line, EXIT_UNAVAILABLE)

    previous = signal.signal(signal.SIGALRM, expired)
    try:
        # Inside the try: a timer refused (an out-of-range value) still restores the handler.
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def store_from_env(environ: dict[str, str] | None = None) -> TokenStore | None:
    """The store ``GENESYSCLOUD_TOKEN_CACHE`` asks for: a FileStore, or None when "off".

    Raises:
        ConfigurationError: The path names something that is not a directory.
    """
    value = (os.environ if environ is None else environ).get(ENV_TOKEN_CACHE, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    # Imported only now: the file store needs fcntl, which Windows lacks, and "off" must work
    # everywhere.
    from .stores.file import FileStore

    return FileStore(value or None)


def _manager(store: TokenStore | None, args: argparse.Namespace) -> TokenManager:
    # No timer thread: a command lives for one token, and must exit promptly. No retry wait
    # that would end past --timeout is begun (nor announced): the run would end first.
    timeout = getattr(args, "timeout", None)
    bound = {} if timeout is None else {"retry_deadline": min(timeout, RETRY_DEADLINE)}
    manager = TokenManager.from_env(store=store, background_refresh=False, **bound)
    args.progress.waiting_on(manager.token_url)
    return manager


def _describe_store(store: TokenStore | None) -> str:
    return "off" if store is None else f"file {getattr(store, 'path', store)}"


def _describe(exc: GenesysTokenError) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stdout_closed() -> int:
    """The reader of stdout went away (``genesys-token inspect | head -1``): not an error.

    Python would report the failed flush of the closed pipe at exit; stdout is pointed at
    the null device so that the exit is quiet.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_OK


def _fail(message: str, code: int, stream: TextIO | None = None) -> int:
    """Print one redacted line to stderr and return ``code``."""
    print(f"genesys-token: error: {redact(' '.join(message.split()), _secrets())}",
          file=stream or sys.stderr)  # fmt: skip
    return code


def _secrets() -> list[str]:
    """The secret as given (raw and stripped: what the library sends, so what a server may
    echo back), from the variable or the secret file. ``redact`` replaces them as whole
    values, and only when long enough to be one: a short secret must not eat the prose."""
    raw = os.environ.get(ENV_CLIENT_SECRET, "")
    found = [raw, raw.strip()]
    path = os.environ.get(ENV_CLIENT_SECRET_FILE, "").strip()
    if path:
        with contextlib.suppress(GenesysTokenError, OSError, ValueError):
            found.append(SecretFile(path)())
    return [secret for secret in found if secret]


def _log_to_stderr(verbose: bool) -> tuple[logging.Handler, int]:
    """Send the library's log to stderr (stdout carries only the token).

    Returns:
        The handler and the logger's previous level, for main() to restore.
    """
    previous = library_log.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("genesys-token: %(levelname)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        # The audit records repeat the failure that main() reports in its one error line.
        # So does the rejection warning of a refused secret.
        handler.addFilter(
            lambda record: (
                not record.name.startswith((AUDIT_LOGGER, "genesys_token.core.rejections"))
            )
        )
    library_log.addHandler(handler)
    if verbose:
        library_log.setLevel(logging.DEBUG)
    return handler, previous


if __name__ == "__main__":
    raise SystemExit(main())
