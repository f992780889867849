"""The router's certificate state over real TLS sockets: SNI, wildcards, swaps, restarts.

A real asyncio TLS server serves `TlsState.server_context()`; clients trust
only the test CA's root and verify host names, as browsers do.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_ca import LocalCA

from ondeck.router.table import RouterConfigError
from ondeck.router.tls import CHALLENGE_TTL, Challenges, TlsState

pytestmark = pytest.mark.timeout(60)


class EchoServer:
    """A TLS server in its own thread and loop answering each line with 'ok <line>'."""

    def __init__(self, state: TlsState) -> None:
        self.state = state
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    writer.write(b"ok " + line)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            server = await asyncio.start_server(
                handle, "127.0.0.1", 0, ssl=state.server_context(), ssl_handshake_timeout=5
            )
            self.port = server.sockets[0].getsockname()[1]
            self.stop = asyncio.Event()
            ready.set()
            async with server:
                await self.stop.wait()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),))
        self.thread.daemon = True
        self.thread.start()
        assert ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture
def state(tmp_path: Path) -> TlsState:
    return TlsState(tmp_path)


@pytest.fixture
def server(state: TlsState) -> Iterator[EchoServer]:
    running = EchoServer(state)
    yield running
    running.close()


def connect(port: int, host: str | None, root: bytes, **kw: object) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cadata=root.decode())
    if host is None:
        ctx.check_hostname = False
    for key, value in kw.items():
        setattr(ctx, key, value)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def leaf_sha256(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def roundtrip(tls: ssl.SSLSocket, text: bytes = b"ping\n") -> bytes:
    tls.sendall(text)
    return tls.recv(100)


def test_sni_picks_each_hosts_certificate_and_wildcards(
    state: TlsState, server: EchoServer, ca: LocalCA
) -> None:
    shop = state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
    wild = state.install("wild", ["*.apps.test"], *_pair(ca, "*.apps.test"))
    exact = state.install("exact", ["blog.apps.test"], *_pair(ca, "blog.apps.test"))
    for host, served in [("shop.test", shop), ("x.apps.test", wild), ("blog.apps.test", exact)]:
        with connect(server.port, host, ca.root_pem) as tls:
            assert leaf_sha256(tls) == served.info.fingerprint
            assert tls.selected_alpn_protocol() is None  # client offered none
            assert roundtrip(tls) == b"ok ping\n"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_alpn_is_http11_and_old_protocols_are_refused(
    state: TlsState, server: EchoServer, ca: LocalCA
) -> None:
    state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
    ctx = ssl.create_default_context(cadata=ca.root_pem.decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        ctx.wrap_socket(raw, server_hostname="shop.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(ssl.SSLError):
        # a TLS 1.1 client, allowed client-side: the refusal can only come from the router
        old = ssl.create_default_context(cadata=ca.root_pem.decode())
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            old.wrap_socket(raw, server_hostname="shop.test").close()
    with pytest.raises(ssl.SSLError):
        # a TLS 1.2 client offering only CBC suites: no modern cipher in common
        ctx12 = ssl.create_default_context(cadata=ca.root_pem.decode())
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx12.set_ciphers("AES128-SHA")
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            ctx12.wrap_socket(raw, server_hostname="shop.test").close()


@pytest.mark.parametrize("host", ["unknown.test", None])
def test_unknown_or_missing_sni_is_refused_and_others_still_served(
    state: TlsState, server: EchoServer, ca: LocalCA, host: str | None
) -> None:
    state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
    with pytest.raises(ssl.SSLError):
        connect(server.port, host, ca.root_pem)
    with connect(server.port, "shop.test", ca.root_pem) as tls:
        assert roundtrip(tls) == b"ok ping\n"


def test_a_renewed_certificate_serves_new_handshakes_and_keeps_open_connections(
    state: TlsState, server: EchoServer, ca: LocalCA
) -> None:
    old = state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
    with connect(server.port, "shop.test", ca.root_pem) as open_conn:
        assert roundtrip(open_conn) == b"ok ping\n"
        new = state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
        assert new.info.fingerprint != old.info.fingerprint
        with connect(server.port, "shop.test", ca.root_pem) as fresh:
            assert leaf_sha256(fresh) == new.info.fingerprint
        assert leaf_sha256(open_conn) == old.info.fingerprint
        assert roundtrip(open_conn, b"still\n") == b"ok still\n"


def test_certificates_survive_a_restart_with_private_keys(
    state: TlsState, ca: LocalCA, tmp_path: Path
) -> None:
    served = state.install("shop", ["shop.test"], *_pair(ca, "shop.test"), hsts=3600.0)
    key_file = state.directory / "shop.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    restarted = TlsState(tmp_path)
    restarted.load()
    found = restarted.lookup("SHOP.test.")
    assert found is not None and found.info.fingerprint == served.info.fingerprint
    assert found.hsts == 3600.0 and found.redirect
    again = EchoServer(restarted)
    try:
        with connect(again.port, "shop.test", ca.root_pem) as tls:
            assert leaf_sha256(tls) == served.info.fingerprint
    finally:
        again.close()
    assert restarted.remove("shop")
    assert not key_file.exists()
    assert "key" not in str(restarted.listing())


def test_a_mismatched_or_broken_pair_is_refused_and_nothing_changes(
    state: TlsState, ca: LocalCA
) -> None:
    good = state.install("shop", ["shop.test"], *_pair(ca, "shop.test"))
    other = ca.issue("shop.test")
    with pytest.raises(RouterConfigError, match="does not belong"):
        state.install("shop", ["shop.test"], good_chain(ca), other.key_pem)
    with pytest.raises(RouterConfigError, match="PEM"):
        state.install("shop", ["shop.test"], b"garbage", other.key_pem)
    with pytest.raises(RouterConfigError, match="name"):
        state.install("../evil", ["shop.test"], other.chain_pem, other.key_pem)
    served = state.lookup("shop.test")
    assert served is not None and served.info.fingerprint == good.info.fingerprint


def test_challenge_answers_are_served_until_withdrawn_or_stale() -> None:
    answers = Challenges()
    answers.publish("tok-En_1", "tok-En_1.thumb", now=0.0)
    assert answers.answer(b"/.well-known/acme-challenge/tok-En_1", now=1.0) == b"tok-En_1.thumb"
    assert answers.answer(b"/.well-known/acme-challenge/other", now=1.0) is None
    assert answers.answer(b"/.well-known/acme-challenge/tok-En_1", now=CHALLENGE_TTL + 1) is None
    answers.publish("again", "again.thumb", now=0.0)
    answers.withdraw("again")
    assert answers.answer(b"/.well-known/acme-challenge/again", now=1.0) is None
    with pytest.raises(RouterConfigError):
        answers.publish("../x", "y")


def _pair(ca: LocalCA, *hosts: str) -> tuple[bytes, bytes]:
    leaf = ca.issue(*hosts)
    return leaf.chain_pem, leaf.key_pem


def good_chain(ca: LocalCA) -> bytes:
    return ca.issue("shop.test").chain_pem
