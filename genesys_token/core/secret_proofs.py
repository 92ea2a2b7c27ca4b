"""Proving a secret before a pool trusts it.

A :class:`~genesys_token.TokenManagerPool` hands one manager to every caller of a client.
A caller with another secret than that manager's must neither get its token nor replace its
secret on say-so: the other secret is proven first, by a token request of its own made by a
*probe*, a private manager with that secret, no shared store and no background refresh.
Only an accepted secret is handed on (secret rotation); a rejected one gets its own
:class:`~genesys_token.InvalidClientError` and changes nothing. A secret source (callable)
is named by the digest of the value it gives now, like a string: never trusted on say-so.

A probe is kept while it is useful: callers with the same secret share its one token request
(its single flight). At most :data:`PROBES_PER_CLIENT` probes are kept per client, the least
recently used forgotten first. Rejections are remembered apart from the probes, so that
guessing many secrets cannot evict them: per client, the last :data:`REJECTED_PER_CLIENT`
rejected secrets (by digest) are refused at once during their own cool-down
(:data:`PAUSE_FIRST` s doubling to :data:`PAUSE_MAX` s each time the same secret is rejected
again), and after the first rejection of a secret never rejected before, proofs of any other
secret of that client are paused (:data:`PAUSE_FIRST` s doubling to
:data:`SHARED_PAUSE_MAX` s, ended by an accepted proof): whatever the number of distinct
wrong secrets, proofs cost about one token request per pause per client. A stale secret
polled again and again (workers not yet rolled) only lengthens its own cool-down: it never
re-arms the shared pause, which would keep the client's new, right secret out.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..credentials import Secret, SecretValue, digest, hidden, is_known, read_secret
from ..errors import InvalidClientError, ManagerClosedError, RateLimitedError
from ..http.retry_policy import NO_JITTER, Backoff
from ..manager import TokenManager

#: Other secrets remembered per client, each with its own cool-down. Enough for a rotation
#: and a few misconfigured callers; a bound, so guessing secrets cannot grow memory.
PROBES_PER_CLIENT = 4
#: A secret accepted this recently is trusted again without a request, and without switching
#: the manager back to it: two valid secrets alternating (workers mid-rollout) cost a proof
#: each per this window, not one per get(). A secret revoked meanwhile is trusted that long.
ACCEPTED_FOR = 60.0
#: Rejected secrets remembered per client (by digest, with their cool-down deadline).
REJECTED_PER_CLIENT = 64
#: After a rejection, proofs of other secrets of the client wait this long, doubling on
#: consecutive rejections up to PAUSE_MAX; an accepted proof ends the doubling.
PAUSE_FIRST = 1.0
PAUSE_MAX = 60.0
#: The longest the shared pause gets: how long a right secret (a rotation) can wait behind
#: a stream of ever new wrong ones.
SHARED_PAUSE_MAX = 10.0
#: A rejected secret's own cool-down, doubling from PAUSE_FIRST to PAUSE_MAX.
_COOL_DOWN = Backoff(PAUSE_FIRST, PAUSE_MAX, NO_JITTER)
#: The pause of a client's proofs after each new wrong secret, up to SHARED_PAUSE_MAX.
_SHARED_PAUSE = Backoff(PAUSE_FIRST, SHARED_PAUSE_MAX, NO_JITTER)

MakeProbe = Callable[[Secret], TokenManager]


def same_value(held: Secret, given: Secret) -> bool:
    """Whether ``given`` is ``held`` or, both being values, the same value (constant-time).
    Sources (callables) are never compared here: see :func:`secret_name`."""
    if held is given:
        return True
    if isinstance(held, str | SecretValue) and isinstance(given, str | SecretValue):
        return hidden(held).matches(given)
    return False


def secret_name(client_id: str, secret: Secret) -> bytes:
    """What a secret is known by: the digest of its value (never the value). A source is
    read once, locally (no token request), in the caller's thread: it is the caller's own.

    Raises:
        SecretSourceError: The source failed.
    """
    if is_known(secret):
        return digest(client_id, secret)
    return digest(client_id, read_secret(secret))


def same_name(one: bytes, other: bytes) -> bool:
    """Two digests compared in constant time."""
    return hmac.compare_digest(one, other)


class SecretProofs:
    """The probes of one pool, by client and secret name (thread-safe)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        #: Per client: when each recently accepted secret (by name) was accepted.
        self._accepted: dict[Hashable, OrderedDict[Hashable, float]] = {}
        #: Per client, per secret name: the probe and the secret it was made with.
        self._probes: dict[Hashable, OrderedDict[Hashable, tuple[TokenManager, Secret]]] = {}
        #: Per client: rejected secrets (by name) and until when they are refused at once.
        #: (Rejections of that name so far, to double its own cool-down.)
        self._rejected: dict[Hashable, OrderedDict[Hashable, tuple[float, int]]] = {}
        #: Per client: until when proofs of other secrets wait, and the rejections in a row.
        self._paused: dict[Hashable, tuple[float, int]] = {}
        #: Per client with rejections in a row: the one secret being proven now.
        self._proving: dict[Hashable, Hashable] = {}
        self._closed = False
        self.accepted = 0
        self.rejected = 0
        self._requests_of_closed = 0

    def prove(
        self, client: Hashable, name: Hashable, secret: Secret, make: MakeProbe
    ) -> Secret | None:
        """Have the token endpoint accept ``secret`` for ``client``.

        Returns:
            The secret accepted: the one the probe was made with (the first object asked
            with whose value has this digest: a source joining it is not it); None when the
            probe was closed meanwhile (another caller's proof of the same secret settled
            it, or the pool closed): look again.

        Raises:
            InvalidClientError: The secret is rejected (at once during its cool-down).
            RateLimitedError: Proofs of other secrets of ``client`` are paused after a
                rejection (``retry_after`` says how long); no request was made.
            GenesysTokenError: No answer (outage, throttling): nothing is proven.
        """
        try:
            probe, proven = self._probe(client, name, secret, make)
            try:
                probe.get_token()
            except ManagerClosedError:
                return None
            except InvalidClientError as exc:
                if exc.attempts:  # a probe's own cool-down refusing again is no new strike
                    self._record_rejection(client, name)
                raise
        finally:
            with self._lock:
                if self._proving.get(client) == name:
                    del self._proving[client]
        return proven

    def _record_rejection(self, client: Hashable, name: Hashable) -> None:
        """Remember a rejection of ``name`` and pause other proofs of ``client``; callers
        that shared the one request (already remembered) add no strike."""
        with self._lock:
            self.rejected += 1
            now = self._now()
            rejected = self._rejected.setdefault(client, OrderedDict())
            until, seen = rejected.get(name, (float("-inf"), 0))
            if until > now:
                return
            rejected[name] = (now + _COOL_DOWN.ceiling(seen + 1), seen + 1)
            rejected.move_to_end(name)
            if len(rejected) > REJECTED_PER_CLIENT:
                rejected.popitem(last=False)
            if seen:
                return  # a stale secret again: its own cool-down grows, the pause does not
            _, strikes = self._paused.get(client, (0.0, 0))
            pause = _SHARED_PAUSE.ceiling(strikes + 1)
            self._paused[client] = (now + pause, strikes + 1)

    def settle(self, client: Hashable, name: Hashable) -> None:
        """The secret ``name`` is now the client's: its probe has served."""
        with self._lock:
            probes = self._probes.get(client)
            held = probes.pop(name, None) if probes is not None else None
            probe = held[0] if held is not None else None
            if probes is not None and not probes:
                del self._probes[client]
            self._paused.pop(client, None)
            rejected = self._rejected.get(client)
            if rejected is not None:
                rejected.pop(name, None)
            if probe is not None:
                self.accepted += 1
                recent = self._accepted.setdefault(client, OrderedDict())
                recent[name] = self._now()
                recent.move_to_end(name)
                if len(recent) > PROBES_PER_CLIENT:
                    recent.popitem(last=False)
        if probe is not None:
            self._close(probe)

    def recently_accepted(self, client: Hashable, name: Hashable) -> bool:
        """Whether the secret ``name`` was accepted for ``client`` within ACCEPTED_FOR."""
        with self._lock:
            recent = self._accepted.get(client)
            at = recent.get(name) if recent is not None else None
        return at is not None and self._now() - at < ACCEPTED_FOR

    def forget(self, client: Hashable) -> None:
        """Drop every probe of ``client`` (it left the pool)."""
        with self._lock:
            self._accepted.pop(client, None)
            self._rejected.pop(client, None)
            self._paused.pop(client, None)
            probes = self._probes.pop(client, None)
        for probe, _ in (probes or {}).values():
            self._close(probe)

    def close(self) -> None:
        """Close every probe; later proofs fail with ManagerClosedError."""
        with self._lock:
            self._closed = True
            probes = [p for per_client in self._probes.values() for p, _ in per_client.values()]
            self._probes.clear()
        for probe in probes:
            self._close(probe)

    def token_requests(self) -> int:
        """Token requests the probes made, those closed included."""
        with self._lock:
            live = [p for per_client in self._probes.values() for p, _ in per_client.values()]
            spent = self._requests_of_closed
        return spent + sum(int(p.metrics().get("token_requests") or 0) for p in live)

    def figures(self) -> dict[str, int]:
        """``accepted`` secrets, ``rejected`` callers, and the ``token_requests`` made."""
        with self._lock:
            accepted, rejected = self.accepted, self.rejected
        return {"accepted": accepted, "rejected": rejected, "token_requests": self.token_requests()}

    def after_fork(self) -> None:
        """A fresh lock in a forked child (the probes reset themselves); proofs that were
        in flight in the parent's threads are not the child's."""
        self._lock = threading.Lock()
        self._proving.clear()

    def _probe(
        self, client: Hashable, name: Hashable, secret: Secret, make: MakeProbe
    ) -> tuple[TokenManager, Secret]:
        with self._lock:
            if self._closed:
                raise ManagerClosedError("the token manager pool is closed")
            self._refuse_now(client, name)
            probes = self._probes.setdefault(client, OrderedDict())
            held = probes.get(name)
            if held is not None and not held[0].closed:
                probes.move_to_end(name)
                return held
            held = probes[name] = (make(secret), secret)
            oldest = None
            if len(probes) > PROBES_PER_CLIENT:
                _, (oldest, _) = probes.popitem(last=False)
        if oldest is not None:
            self._close(oldest)
        return held

    def _refuse_now(self, client: Hashable, name: Hashable) -> None:
        """Raise, with no request made, for a secret rejected moments ago, or for any other
        secret while the client's proofs are paused (the lock is held)."""
        now = self._now()
        rejected = self._rejected.get(client)
        entry = rejected.get(name) if rejected is not None else None
        until = entry[0] if entry is not None else None
        if until is not None and until > now:
            self.rejected += 1
            raise InvalidClientError(
                "the token endpoint rejected this client secret moments ago; it is refused "
                f"without a request for {until - now:.1f} s",
                error="invalid_client",
                attempts=0,
            )
        paused_until, strikes = self._paused.get(client, (float("-inf"), 0))
        if strikes and self._proving.setdefault(client, name) != name:
            # After a rejection, one proof at a time: guessers in parallel wait their turn.
            paused_until = max(paused_until, now + PAUSE_FIRST)
        if paused_until > now:
            if self._proving.get(client) == name:
                del self._proving[client]
            wait = paused_until - now
            raise RateLimitedError(
                f"proofs of new secrets for this client are paused for {wait:.1f} s after a "
                "rejected one; no token request was made",
                retryable=True,
                attempts=0,
                retry_after=wait,
            )

    def _close(self, probe: TokenManager) -> None:
        requests = int(probe.metrics().get("token_requests") or 0)
        probe.close()
        with self._lock:
            self._requests_of_closed += requests
