"""A long-lived WebSocket authenticated with the manager's token, surviving rotations.

The connection is held inside ``manager.in_flight()``, so it counts as a use of the token it
was opened with. :meth:`TokenManager.rotate` is make-before-break: it fetches the new token
while the socket goes on with the old one, swaps it in, and only then sets
``rotation_pending`` on the old token's uses; it then waits (up to its ``drain_timeout``) for
them to end and revokes the old token if asked. The listener sees the flag, closes the
socket, leaves the block (so the drain completes at once instead of timing out) and
reconnects at once: the new token is already in place, so the new ``in_flight()`` block gets
it without waiting for the rotation to return. Keep ``poll_interval`` well below the
rotation's ``drain_timeout``: a socket still open when the drain times out may be cut by the
revocation of its token (unless the rotation was ``strict``, which then does not revoke).
A 401 at connect replaces the rejected token once; other failures reconnect with capped
exponential backoff.

Messages sent while no connection is open cannot arrive on it: pass ``url`` as a callable
to resume where you left off when the service supports it (``?since=<last id>``).

::

    export GENESYSCLOUD_OAUTHCLIENT_ID=... GENESYSCLOUD_OAUTHCLIENT_SECRET=...
    python examples/websocket_notifications.py wss://streaming.example/notifications

``websockets`` logs handshake headers at DEBUG level, ``Authorization`` included; the
listener gives it a logger that masks the token.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from genesys_token import GenesysTokenError, InFlight, ManagerClosedError, TokenManager
from genesys_token.integrations import adapter_port

log = logging.getLogger("genesys_token.examples.websocket")

Message = str | bytes
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


class RedactBearer(logging.Filter):
    """Mask bearer tokens in a logger's records (``websockets`` logs the handshake)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with every bearer token masked; keep the record."""
        if "bearer" in str(record.msg).lower() or any(
            "bearer" in str(arg).lower() for arg in (record.args or ())
        ):
            record.msg = _BEARER.sub(r"\1[redacted]", record.getMessage())
            record.args = None
        return True


def redacted_logger(name: str) -> logging.Logger:
    """A logger (for ``websockets``' ``logger=``) whose records never show a bearer token."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactBearer) for f in logger.filters):
        logger.addFilter(RedactBearer())
    return logger


class NotificationListener:
    """Keep a WebSocket open with a valid token and hand each message to ``on_message``.

    Args:
        manager: The token manager.
        url: The WebSocket URL, or a callable returning it at each connect (to resume).
        on_message: Called with each message, on the thread that runs :meth:`run`.
        poll_interval: How often (seconds) the flags are checked while no message arrives.
        open_timeout: Seconds allowed for the connect and handshake.
        reconnect_delay: First backoff after a failed connection; doubles up to
            ``reconnect_max``.
        reconnect_max: Longest backoff.
        give_up_after: Raise :class:`ConnectionError` after this many failed connects in a
            row before any connection was ever open (a wrong or dead URL); None: retry on.
    """

    def __init__(
        self,
        manager: TokenManager,
        url: str | Callable[[], str],
        on_message: Callable[[Message], None],
        *,
        poll_interval: float = 0.25,
        open_timeout: float = 10.0,
        reconnect_delay: float = 0.5,
        reconnect_max: float = 30.0,
        give_up_after: int | None = None,
    ) -> None:
        self._manager = manager
        self._url = url
        self._on_message = on_message
        self._poll_interval = poll_interval
        self._open_timeout = open_timeout
        self._reconnect_delay = reconnect_delay
        self._reconnect_max = reconnect_max
        self._failures = 0
        self._give_up_after = give_up_after
        self._last_failure = ""
        self._logger = redacted_logger("websockets.client.genesys_token")
        #: Connections opened so far.
        self.connections = 0
        #: Whether a connection is open right now.
        self.connected = False

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set or the manager is closed; reconnect as needed."""
        delay = 0.0
        while not stop.wait(delay):
            try:
                delay = self._connect_once(stop)
            except ManagerClosedError:
                return
            limit = self._give_up_after
            if limit is not None and self.connections == 0 and self._failures >= limit:
                raise ConnectionError(
                    f"cannot connect to {_where(self._current_url())} "
                    f"({self._failures} attempt(s)): {self._last_failure}"
                )

    def _connect_once(self, stop: threading.Event) -> float:
        """Hold one connection until ``stop`` or a rotation; returns the wait before the next
        (none after a rotation: the new token is in place when ``rotation_pending`` is set)."""
        try:
            with self._manager.in_flight() as use:
                try:
                    self._hold(use, stop)
                    self._failures = 0
                    return 0.0
                except InvalidStatus as exc:
                    if exc.response.status_code != 401:
                        raise
                    log.info("WebSocket refused the token (401): replacing it")
                    adapter_port(self._manager).replace_rejected(use.token)
        except ManagerClosedError:
            raise
        except (OSError, TimeoutError, ConnectionClosed, InvalidStatus, GenesysTokenError) as exc:
            # The cause in words (no token: the handshake's headers are not in these texts).
            self._last_failure = f"{type(exc).__name__}: {str(exc)[:200] or 'no detail'}"
            log.warning("WebSocket connection failed: %s", self._last_failure)
        self._failures += 1
        return min(self._reconnect_max, self._reconnect_delay * 2.0 ** (self._failures - 1))

    def _current_url(self) -> str:
        return self._url() if callable(self._url) else self._url

    def _hold(self, use: InFlight, stop: threading.Event) -> None:
        url = self._current_url()
        log.info("connecting to %s (open timeout %.0f s)", _where(url), self._open_timeout)
        headers = {"Authorization": f"Bearer {use.token}"}
        try:
            with connect(
                url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                close_timeout=2.0,
                logger=self._logger,
            ) as ws:
                self.connected = True
                self.connections += 1
                self._pump(ws, use, stop)
        finally:
            self.connected = False

    def _pump(self, ws: ClientConnection, use: InFlight, stop: threading.Event) -> None:
        # Leaving on rotation_pending ends this use of the old token, which is what the
        # rotation's drain waits for; the flag is checked at least every poll_interval.
        while not (stop.is_set() or use.rotation_pending.is_set() or self._manager.closed):
            try:
                message = ws.recv(timeout=self._poll_interval)
            except TimeoutError:
                continue
            self._on_message(message)


def _where(url: str) -> str:
    """``scheme://host:port`` of ``url``: its path and query may name a channel or a key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "?"


def main(argv: list[str] | None = None) -> int:
    """Print every message of ``url`` until Ctrl-C (credentials from ``GENESYSCLOUD_*``).

    Progress goes to stderr; a URL that cannot be reached at the first connect ends the
    program with status 1 and the cause, instead of retrying in silence.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="the WebSocket URL (ws:// or wss://)")
    parser.add_argument("--open-timeout", type=float, default=10.0, help="connect seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    stop = threading.Event()
    with TokenManager.from_env() as manager:
        listener = NotificationListener(
            manager,
            args.url,
            lambda m: print(m, flush=True),
            open_timeout=args.open_timeout,
            give_up_after=1,
        )
        try:
            listener.run(stop)
        except ConnectionError as exc:
            print(f"websocket_notifications: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
