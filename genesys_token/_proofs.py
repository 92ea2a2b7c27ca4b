"""Proving a secret before a pool trusts it.

A :class:`~genesys_token.TokenManagerPool` hands one manager to every caller of a client.
A caller with another secret than that manager's must neither get its token nor replace its
secret on say-so: the other secret is proven first, by a token request of its own made by a
*probe*, a private manager with that secret, no shared store and no background refresh.
Only an accepted secret is handed on (secret rotation); a rejected one gets its own
:class:`~genesys_token.InvalidClientError` and changes nothing.

A probe is kept while it is useful: callers with the same secret share its one token request
(its single flight) and, after a rejection, its credentials cool-down (about 1 s doubling to
60 s): a thread hammering with a wrong secret costs a token request per cool-down, not per
call. At most :data:`PROBES_PER_CLIENT` probes are kept per client, the least recently
used forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ._secrets import Secret, SecretValue, digest, hidden, is_known
from .errors import InvalidClientError, ManagerClosedError
from .manager import TokenManager

#: Other secrets remembered per client, each with its own cool-down. Enough for a rotation
#: and a few misconfigured callers; a bound, so guessing secrets cannot grow memory.
PROBES_PER_CLIENT = 4
#: A secret accepted this recently is trusted again without a request, and without switching
#: the manager back to it: two valid secrets alternating (workers mid-rollout) cost a proof
#: each per this window, not one per get(). A secret revoked meanwhile is trusted that long.
ACCEPTED_FOR = 60.0
#: Every secret source (callable) counts as one: code passing ``lambda: vault(cid)`` makes a
#: new object per call, and a probe per object would be a token request per call.
_SOURCE = "source"

MakeProbe = Callable[[Secret], TokenManager]


def same_secret(held: Secret, given: Secret) -> bool:
    """Whether ``given`` changes nothing. Two sources (callables) count as the same: code
    that passes ``lambda: vault(cid)`` on every get() makes a new object each time, and
    handing each one over would end the rejected-secret cool-down and the failure backoff on
    every call. A source is read for each token request anyway."""
    if held is given:
        return True
    if isinstance(held, str | SecretValue) and isinstance(given, str | SecretValue):
        return hidden(held).matches(given)  # constant-time
    return not is_known(held) and not is_known(given)


def secret_name(client_id: str, secret: Secret) -> Hashable:
    """What probes are shared by: a digest of a secret string (never the secret), or one
    name for every secret source."""
    return digest(client_id, secret) if is_known(secret) else _SOURCE


class SecretProofs:
    """The probes of one pool, by client and secret name (thread-safe)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        #: Per client: when each recently accepted secret (by name) was accepted.
        self._accepted: dict[Hashable, OrderedDict[Hashable, float]] = {}
        #: Per client, per secret name: the probe and the secret it was made with.
        self._probes: dict[Hashable, OrderedDict[Hashable, tuple[TokenManager, Secret]]] = {}
        self._closed = False
        self.accepted = 0
        self.rejected = 0
        self._requests_of_closed = 0

    def prove(
        self, client: Hashable, name: Hashable, secret: Secret, make: MakeProbe
    ) -> Secret | None:
        """Have the token endpoint accept ``secret`` for ``client``.

        Returns:
            The secret accepted: the one the probe was made with, which for a source is the
            first source object asked with (every source shares one probe); None when the
            probe was closed meanwhile (another caller's proof of the same secret settled
            it, or the pool closed): look again.

        Raises:
            InvalidClientError: The secret is rejected (at once during its cool-down).
            GenesysTokenError: No answer (outage, throttling): nothing is proven.
        """
        probe, proven = self._probe(client, name, secret, make)
        try:
            probe.get_token()
        except ManagerClosedError:
            return None
        except InvalidClientError:
            with self._lock:
                self.rejected += 1
            raise
        return proven

    def settle(self, client: Hashable, name: Hashable) -> None:
        """The secret ``name`` is now the client's: its probe has served."""
        with self._lock:
            probes = self._probes.get(client)
            held = probes.pop(name, None) if probes is not None else None
            probe = held[0] if held is not None else None
            if probes is not None and not probes:
                del self._probes[client]
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
        """A fresh lock in a forked child (the probes reset themselves)."""
        self._lock = threading.Lock()

    def _probe(
        self, client: Hashable, name: Hashable, secret: Secret, make: MakeProbe
    ) -> tuple[TokenManager, Secret]:
        with self._lock:
            if self._closed:
                raise ManagerClosedError("the token manager pool is closed")
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

    def _close(self, probe: TokenManager) -> None:
        requests = int(probe.metrics().get("token_requests") or 0)
        probe.close()
        with self._lock:
            self._requests_of_closed += requests
