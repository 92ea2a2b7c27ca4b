"""RedisStore over TLS (``rediss://``): the server's certificate must name the URL's host.

redis-py < 6 skips the host-name check by default, so an impostor holding any certificate the
CA signed (for another host) received ``AUTH`` and the sealed entries. These tests run a real
``redis-server`` with TLS; ``make test-minimum`` runs them on redis-py 4.5 too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redis_server import RedisServer, free_port, require_redis_server, wait_for
from store_helpers import load, make_token, save

from genesys_token import ConfigurationError, StoreError, TokenManager
from genesys_token.stores import RedisStore
from genesys_token.testing import GenesysEmulator

MakeManager = Callable[..., TokenManager]
PASSWORD = "hunter2-redis"


class TLSServer:
    """A redis-server with a TLS port (certificate for ``name``) and a plain one to inspect."""

    def __init__(self, ca: trustme.CA, name: str, workdir: Path, *, cluster: bool = False):
        require_redis_server()
        cert = ca.issue_cert(name)
        (workdir / "key.pem").write_bytes(cert.private_key_pem.bytes())
        (workdir / "cert.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        (workdir / "ca.pem").write_bytes(ca.cert_pem.bytes())
        self.ca_file = workdir / "ca.pem"
        self.tls_port = free_port()
        extra = [
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", str(workdir / "cert.pem"),
            "--tls-key-file", str(workdir / "key.pem"),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
        if cluster:  # nodes announce their TLS port
            extra += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            extra += ["--tls-cluster", "yes"]
        self.server = RedisServer(extra=tuple(extra))

    def __enter__(self) -> TLSServer:
        try:
            self.server.start()  # answers PING, then wants the password (AUTH counts)
            self.server.command("config", "set", "requirepass", PASSWORD)
        except BaseException:
            self.server.stop()  # a server that started but failed its set-up must not stay
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.stop()

    def url(self, query: str = "") -> str:
        """The TLS URL of this server (by IP address), trusting the test CA."""
        return (
            f"rediss://:{PASSWORD}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca_file}{query}"
        )

    def inspector(self) -> redis.Redis:
        """A plain-port client with its stats reset: what did the TLS side receive?"""
        client = redis.Redis(port=self.server.port, password=PASSWORD, socket_timeout=2)
        client.config_resetstat()
        return client


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def impostor(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A server on 127.0.0.1 holding a valid certificate for another host."""
    with TLSServer(ca, "impostor.example", tmp_path_factory.mktemp("impostor")) as tls:
        yield tls


@pytest.fixture(scope="module")
def genuine(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """A server whose certificate names 127.0.0.1."""
    with TLSServer(ca, "127.0.0.1", tmp_path_factory.mktemp("genuine")) as tls:
        yield tls


def _received(inspector: redis.Redis) -> list[str]:
    """Commands the server ran since the inspector reset its stats (its own CONFIG aside):
    ``auth`` or ``hello`` (redis-py 6+ authenticates with HELLO) carry the password."""
    stats = inspector.info("commandstats")
    return sorted(name for name in stats if not name.startswith("cmdstat_config"))


def test_an_impostor_certificate_gets_neither_auth_nor_the_token(
    impostor: TLSServer, make_manager: MakeManager, emulator: GenesysEmulator
) -> None:
    inspector = impostor.inspector()
    store = RedisStore.from_url(impostor.url())
    try:
        with pytest.raises(StoreError, match="ConnectionError"):
            load(store)
        store._down_until = 0.0  # the manager below tries again at once
        manager = make_manager(store=store, background_refresh=False)
        assert manager.get_token()  # a refused Redis is an outage: the network still works
        assert emulator.token_requests == 1
        assert _received(inspector) == []  # not even the handshake's AUTH / HELLO
        assert inspector.dbsize() == 0
    finally:
        store.close()
        inspector.close()


def test_what_the_url_says_wins_over_the_check(impostor: TLSServer) -> None:
    # Also proves the impostor is one a client without the check would talk to.
    inspector = impostor.inspector()
    for query in ("&ssl_check_hostname=false", "&ssl_cert_reqs=none"):
        store = RedisStore.from_url(impostor.url(query), prefix=f"{query[1:-1]}:")
        try:
            save(store, make_token("tok-over-tls"))
            loaded = load(store)
            assert loaded is not None and loaded.access_token == "tok-over-tls"
        finally:
            store.close()
    assert {"cmdstat_auth", "cmdstat_hello"} & set(_received(inspector))
    assert inspector.dbsize() == 2
    inspector.flushall()
    inspector.close()


def test_a_certificate_for_the_host_works(genuine: TLSServer) -> None:
    store = RedisStore.from_url(genuine.url())
    try:
        save(store, make_token("tok-genuine"))
        loaded = load(store)
        assert loaded is not None and loaded.access_token == "tok-genuine"
        with store.lock("k", 1.0) as held:
            assert held
    finally:
        store.close()


def test_the_check_is_asked_for_rediss_only(genuine: TLSServer) -> None:
    def options(url: str) -> dict[str, object]:
        store = RedisStore.from_url(url)
        kwargs: dict[str, object] = store._client.connection_pool.connection_kwargs
        store.close()
        return kwargs

    assert options(genuine.url())["ssl_check_hostname"] is True
    assert "ssl_check_hostname" not in options(f"redis://127.0.0.1:{genuine.server.port}/0")
    assert options(genuine.url("&ssl_check_hostname=no"))["ssl_check_hostname"] is False


def test_a_given_client_without_the_check_is_warned_about(
    impostor: TLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    def warned(url: str) -> bool:
        caplog.clear()
        client = redis.Redis.from_url(url, socket_timeout=1)
        RedisStore(client=client).close()
        client.close()
        return any("host name" in r.getMessage() for r in caplog.records)

    assert warned(impostor.url("&ssl_check_hostname=false"))
    default = inspect.signature(redis.connection.SSLConnection.__init__).parameters
    assert warned(impostor.url()) is (default["ssl_check_hostname"].default is False)
    assert not warned(impostor.url("&ssl_check_hostname=true"))
    assert not warned(impostor.url("&ssl_cert_reqs=none"))  # no certificate check at all
    assert not warned(f"redis://127.0.0.1:{impostor.server.port}/0")
    assert PASSWORD not in caplog.text


def _cluster_checks_host_names() -> bool:
    """Whether this redis-py's Cluster client can check TLS host names (redis-py >= 6)."""
    if "ssl_check_hostname" in getattr(redis.cluster, "REDIS_ALLOWED_KEYS", ()):
        return True
    ssl_init = inspect.signature(redis.connection.SSLConnection.__init__)
    return ssl_init.parameters["ssl_check_hostname"].default is True


@pytest.mark.skipif(not _cluster_checks_host_names(), reason="redis-py < 6: see the next test")
def test_a_cluster_over_tls_checks_host_names_too(
    ca: trustme.CA, tmp_path: Path, make_manager: MakeManager, emulator: GenesysEmulator
) -> None:
    with TLSServer(ca, "impostor.example", tmp_path, cluster=True) as tls:  # one node, all slots
        tls.server.command("-a", PASSWORD, "--no-auth-warning", "cluster", "addslotsrange",
                           "0", "16383")  # fmt: skip
        wait_for(
            lambda: (
                "cluster_state:ok"
                in tls.server.command("-a", PASSWORD, "--no-auth-warning", "cluster", "info")
            ),
            10.0,
            "the one-node cluster",
        )
        inspector = tls.inspector()
        refused = RedisStore.from_url(tls.url(), cluster=True)
        with pytest.raises(StoreError):
            load(refused)
        refused.close()
        assert _received(inspector) == []
        allowed = RedisStore.from_url(tls.url("&ssl_check_hostname=false"), cluster=True)
        save(allowed, make_token("tok-cluster"))  # the harness can tell: this one talks
        allowed.close()
        assert inspector.dbsize() == 1
        inspector.close()


@pytest.mark.skipif(_cluster_checks_host_names(), reason="this redis-py checks Cluster host names")
def test_a_cluster_over_tls_is_refused_where_redis_py_cannot_check(impostor: TLSServer) -> None:
    with pytest.raises(ConfigurationError, match=r"redis>=6\.1") as info:
        RedisStore.from_url(impostor.url(), cluster=True)
    assert info.value.field == "url"
    assert PASSWORD not in str(info.value)
    for query in ("&ssl_check_hostname=false", "&ssl_cert_reqs=none"):  # said knowingly
        RedisStore.from_url(impostor.url(query), cluster=True).close()
    RedisStore.from_url(f"redis://127.0.0.1:{impostor.server.port}/0", cluster=True).close()
