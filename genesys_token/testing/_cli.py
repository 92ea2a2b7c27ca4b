"""The emulator's command line: one parser for ``python -m genesys_token.testing`` and for
``genesys-token emulator``, and one runner that turns bad input into a one-line error."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import select
import shlex
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from genesys_token.core.threads import DaemonStarter
from genesys_token.testing._rate import parse_rate_limit

if TYPE_CHECKING:
    from genesys_token.testing.emulator import ApiRequestRecord, GenesysEmulator

__all__ = ["EXIT_USAGE", "add_arguments", "build_parser", "run", "run_parsed"]

#: Exit code for a bad option or a port that cannot be bound (as argparse uses for usage).
EXIT_USAGE = 2
_MAX_PORT = 65535
#: Request lines waiting for stdout at most; beyond this they are dropped (and counted): a
#: stdout pipe nobody reads must neither block the command nor grow its memory.
LINE_QUEUE_SIZE = 1000
#: How long the command waits on exit for stdout to take the summary (a full pipe nobody
#: reads must not keep a stopped emulator running).
SUMMARY_WAIT = 0.5

log = logging.getLogger(__name__)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to {_MAX_PORT}, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _rate_limit(text: str) -> tuple[int, float] | None:
    try:
        return parse_rate_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the emulator's options to ``parser`` (both command lines share them).

    Returns:
        ``parser``, for chaining.
    """
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=0, help="port (default %(default)s: a free one)"
    )
    parser.add_argument(
        "--token-ttl",
        type=_non_negative,
        default=86399.0,
        metavar="SECONDS",
        help="token lifetime in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=("opaque", "jwt"),
        default="opaque",
        help="token format (default %(default)s)",
    )
    parser.add_argument(
        "--client-id", default="emulator-client", help="OAuth client id (default %(default)s)"
    )
    parser.add_argument(
        "--client-secret",
        default="emulator-secret",
        help="OAuth client secret (default %(default)s)",
    )
    parser.add_argument(
        "--token-rate-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="token creations per minute per client (default: unlimited)",
    )
    parser.add_argument(
        "--api-rate-limit",
        type=_rate_limit,
        default=None,
        metavar="CALLS/SECONDS",
        help="API calls per access token in any window of SECONDS, e.g. 300/60 (Genesys'"
        " default); the next call is answered 429 with Retry-After (default: off)",
    )
    parser.add_argument(
        "--invalid-client-status",
        type=int,
        choices=(400, 401),
        default=401,
        help="HTTP status of an invalid_client answer (default %(default)s)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no line per request (default: one line per request: method, path, status,"
        " client id, correlation id); the summary on exit is printed either way",
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
            api_rate_limit=getattr(args, "api_rate_limit", None),
        )
        emulator.start()
    except (ValueError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{prog}: error: cannot start on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    event = stop_event if stop_event is not None else threading.Event()
    requests = RequestPrinter(emulator, sys.stdout, quiet=getattr(args, "quiet", False))
    with emulator, _stop_on_sigterm(event), contextlib.suppress(KeyboardInterrupt):
        exports = {
            "GENESYSCLOUD_OAUTHCLIENT_ID": emulator.client_id,
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": emulator.client_secret,
            "GENESYSCLOUD_TOKEN_URL": emulator.token_url,
            "GENESYSCLOUD_API_URL": emulator.api_base_url,
        }
        lines = [f"Genesys emulator on {emulator.url} (client id: {emulator.client_id})"]
        if emulator.api_rate_limit is not None:
            calls, window = emulator.api_rate_limit
            lines.append(f"API rate limit: {calls} calls per {window:g} s per token")
        lines += [f"export {name}={shlex.quote(value)}" for name, value in exports.items()]
        with contextlib.suppress(OSError):  # stdout closed or full: serve all the same
            print("\n".join(lines), flush=True)
        if ready is not None:
            ready(emulator)
        while not event.is_set():
            event.wait(0.2)  # short waits so Ctrl-C is handled promptly everywhere
            requests.poll()
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during the summary
        requests.poll()
        requests.finish(SUMMARY_WAIT)
    return 0


@contextlib.contextmanager
def _stop_on_sigterm(event: threading.Event) -> Iterator[None]:
    """SIGTERM stops the emulator as Ctrl-C does (summary printed, exit 0); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _correlation(correlation_id: str | None) -> str:
    """`` correlation=ID`` for a request that was answered: the id a client's error carries
    (``TokenRequestError.correlation_id``), so the two can be matched."""
    return f" correlation={_printable(correlation_id)}" if correlation_id else ""


def _printable(text: str) -> str:
    """``text`` as is when it is printable without spaces, else its repr: a client id or a
    path from a request must not forge lines or send terminal escapes."""
    return text if text.isprintable() and " " not in text else repr(text)


class _LineWriter:
    """Writes lines to a stream from a daemon thread, so that a stdout nobody reads never
    blocks the caller; at most :data:`LINE_QUEUE_SIZE` lines wait, newer ones are dropped.

    A stream with a file descriptor is written with ``os.write``: a thread blocked in
    ``print`` on a full pipe would hold the stream's lock, which the interpreter's exit
    (flushing stdout) then waits for, or aborts on.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: OSError
            self._fd = None
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._cond = threading.Condition()
        self._lines: deque[str] = deque()
        self._closed = False
        self.dropped = 0
        starter = DaemonStarter(log, "the request line writer thread", "lines are dropped")
        self._thread = starter.start(self._run, "genesys-token-emulator-stdout")

    def write(self, lines: list[str]) -> None:
        """Queue ``lines``; those beyond the bound are dropped and counted."""
        with self._cond:
            for line in lines:
                if self._thread is None or len(self._lines) >= LINE_QUEUE_SIZE:
                    self.dropped += 1
                else:
                    self._lines.append(line)
            self._cond.notify()

    def close(self, last: Callable[[int], str], timeout: float) -> None:
        """Queue ``last(dropped)`` after what waits (dropping the newest line if the queue
        is full), then wait at most ``timeout`` seconds for the writer to write it all."""
        with self._cond:
            if len(self._lines) >= LINE_QUEUE_SIZE:
                self._lines.pop()
                self.dropped += 1
            line = last(self.dropped)
            self._lines.append(line)
            self._closed = True
            self._cond.notify()
        if self._thread is None:
            self._emit(line)  # no thread could start: write it here, it is one line
        else:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closed:
                    self._cond.wait()
                lines = list(self._lines)
                self._lines.clear()
                closed = self._closed
            if lines and not self._emit("\n".join(lines)):
                return  # stdout is gone (a closed pipe): nothing more can be written
            if closed:
                with self._cond:
                    if not self._lines:
                        return

    def _emit(self, text: str) -> bool:
        """Write ``text`` and a newline; False when the stream is gone."""
        try:
            if self._fd is None:
                self._stream.write(text + "\n")
                self._stream.flush()
                return True
            data = (text + "\n").encode(self._encoding, "backslashreplace")
            while data:
                try:
                    data = data[os.write(self._fd, data) :]
                except BlockingIOError:  # a non-blocking pipe that is full: wait for room
                    select.select([], [self._fd], [], 1.0)
        except (OSError, ValueError):  # a closed pipe or stream
            return False
        return True


class RequestPrinter:
    """Prints one line per answered request, read from the emulator's request logs
    (polled: the emulator has no per-request hook), and the summary on exit.

    Token requests and API calls come from two logs, so a token request and an API call
    answered within one poll (0.2 s) may be printed in the other order. Lines are written
    by a daemon thread: a stream nobody reads never blocks :meth:`poll` (lines beyond
    :data:`LINE_QUEUE_SIZE` waiting are dropped, and the summary counts them).

    Args:
        emulator: The emulator whose requests are printed.
        stream: Where the lines and the summary go; None prints nothing.
        quiet: No line per request, the summary only.
    """

    def __init__(
        self, emulator: GenesysEmulator, stream: TextIO | None, *, quiet: bool = False
    ) -> None:
        self._emulator = emulator
        self._writer = _LineWriter(stream) if stream is not None else None
        self._quiet = quiet
        self._tokens_seen = 0
        self._api_seen = 0
        self._statuses: list[int] = []
        self._api_calls = 0

    def poll(self) -> None:
        """Print (when not quiet) the requests answered since the last poll."""
        from genesys_token.testing._wire import TOKEN_PATH

        tokens = self._emulator.token_request_log[self._tokens_seen :]
        calls = self._emulator.api_request_log[self._api_seen :]
        self._tokens_seen += len(tokens)
        self._api_seen += len(calls)
        self._api_calls += len(calls)
        issued = set(self._emulator.issued_tokens) if calls else set()
        lines = []
        for record in tokens:
            self._statuses.append(record.status)
            client = _printable(record.client_id) if record.client_id else "-"
            line = f"POST {TOKEN_PATH} {record.status} client={client}"
            lines.append(line + _correlation(record.correlation_id))
        for call in calls:
            self._statuses.append(call.status)
            method, path = _printable(call.method), _printable(call.path)
            line = f"{method} {path} {call.status} client={self._client(call, issued)}"
            lines.append(line + _correlation(call.correlation_id))
        if lines and self._writer is not None and not self._quiet:
            self._writer.write(lines)

    def _client(self, call: ApiRequestRecord, issued: set[str]) -> str:
        # The command line makes one client, so a token the emulator issued is its token.
        return self._emulator.client_id if call.token_used in issued else "-"

    def summary(self, dropped: int = 0) -> str:
        """One line: token requests, API calls, 401s and 429s answered (and the request
        lines ``dropped`` unprinted, if any)."""
        line = (
            f"summary: {self._emulator.token_requests} token requests,"
            f" {self._api_calls} API calls, {self._statuses.count(401)} answered 401,"
            f" {self._statuses.count(429)} answered 429"
        )
        if dropped:
            line += f", {dropped} request lines not printed (stdout was not read)"
        return line

    def finish(self, timeout: float) -> None:
        """Print the summary after the lines still waiting, waiting at most ``timeout``
        seconds for the stream to take them (a pipe nobody reads must not hang the exit)."""
        if self._writer is not None:
            self._writer.close(self.summary, timeout)
