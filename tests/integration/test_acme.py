"""The ACME client against a real ACME server (pebble), with real HTTP-01 validation.

Pebble resolves the test hosts through pebble-challtestsrv to 127.0.0.1 and
fetches /.well-known/acme-challenge/TOKEN from the port of `ChallengeServer`,
a plain HTTP server here standing where the router's plain listener will be.
"""

from __future__ import annotations

import logging
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pebble_ca import Pebble, free_port, running_pebble

from ondeck.acme import AcmeClient, AcmeSettings
from ondeck.certificates import check_pair, describe, new_private_key
from ondeck.errors import AcmeFailure

pytestmark = pytest.mark.timeout(180)
HOSTS = ["shop.test", "www.shop.test", "blog.test"]
PREFIX = "/.well-known/acme-challenge/"


class ChallengeServer:
    """Answers HTTP-01 challenges from what was published; records what pebble fetched."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.fetched: list[str] = []
        answers, fetched = self.answers, self.fetched

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.removeprefix(PREFIX)
                body = answers.get(token)
                fetched.append(self.path)
                self.send_response(200 if body else 404)
                self.end_headers()
                self.wfile.write((body or "").encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, token: str, key_authorization: str) -> None:
        self.answers[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self.answers.pop(token, None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def challenges() -> Iterator[ChallengeServer]:
    server = ChallengeServer()
    yield server
    server.close()


@pytest.fixture
def pebble(tmp_path: Path, challenges: ChallengeServer) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble", challenges.port, HOSTS) as server:
        yield server


def client_for(pebble: Pebble, state: Path, publisher: ChallengeServer) -> AcmeClient:
    settings = AcmeSettings(pebble.directory, "ops@shop.test", pebble.ca_bundle)
    return AcmeClient(settings, state, publisher)


def handshake(chain: bytes, key: bytes, root: bytes, server_name: str, tmp: Path) -> str:
    """Serve `chain` over a real TLS socket; return the name a client trusting only `root` saw."""
    (tmp / "chain.pem").write_bytes(chain)
    (tmp / "key.pem").write_bytes(key)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    client_ctx = ssl.create_default_context(cadata=root.decode())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            peer = tls.getpeercert()
            tls.sendall(b"x")
        thread.join(10)
    assert peer is not None
    return str(peer["subjectAltName"])


def test_issues_one_certificate_per_host_set_trusted_by_the_pebble_root(
    pebble: Pebble, challenges: ChallengeServer, tmp_path: Path
) -> None:
    acme = client_for(pebble, tmp_path / "state", challenges)
    key = new_private_key()
    chain = acme.issue(["shop.test", "www.shop.test"], key)
    info = check_pair(chain, key)
    assert sorted(info.hosts) == ["shop.test", "www.shop.test"]
    assert "Pebble" in info.issuer
    assert info.not_after > info.not_before
    # pebble really fetched the answers from our server, and they are withdrawn after
    assert any(path.startswith(PREFIX) for path in challenges.fetched)
    assert challenges.answers == {}
    seen = handshake(chain, key, pebble.root_pem(), "www.shop.test", tmp_path)
    assert "www.shop.test" in seen

    second = acme.issue(["blog.test"], new_private_key())
    assert describe(second).hosts == ("blog.test",)


def test_account_key_is_private_and_reused(
    pebble: Pebble, challenges: ChallengeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    client_for(pebble, state, challenges).issue(["shop.test"], new_private_key())
    key_file = client_for(pebble, state, challenges).key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = key_file.read_bytes()
    # a second client (a restarted controller) finds the existing account by its key
    client_for(pebble, state, challenges).issue(["blog.test"], new_private_key())
    assert key_file.read_bytes() == before
    body = b"".join(before.splitlines()[1:-1]).decode()
    assert body[:40] not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


def test_bad_nonces_are_retried(tmp_path: Path, challenges: ChallengeServer) -> None:
    with running_pebble(tmp_path / "p", challenges.port, HOSTS, nonce_reject=30) as pebble:
        chain = client_for(pebble, tmp_path / "state", challenges).issue(
            ["shop.test"], new_private_key()
        )
    assert describe(chain).hosts == ("shop.test",)


def test_failed_validation_is_a_refusal_naming_the_host(
    pebble: Pebble, challenges: ChallengeServer, tmp_path: Path
) -> None:
    class NoAnswers:
        """Publishes nothing: pebble's fetch from the fixture's server gets a 404."""

        def publish(self, token: str, key_authorization: str) -> None:
            pass

        def withdraw(self, token: str) -> None:
            pass

    settings = AcmeSettings(pebble.directory, None, pebble.ca_bundle)
    acme = AcmeClient(settings, tmp_path / "state", NoAnswers())
    with pytest.raises(AcmeFailure) as failure:
        acme.issue(["shop.test"], new_private_key())
    assert any(path.startswith(PREFIX) for path in challenges.fetched)
    assert failure.value.refused
    assert "shop.test" in str(failure.value)
    assert "validation failed" in str(failure.value)


def test_unknown_host_is_refused(
    pebble: Pebble, challenges: ChallengeServer, tmp_path: Path
) -> None:
    with pytest.raises(AcmeFailure) as failure:
        client_for(pebble, tmp_path / "state", challenges).issue(
            ["nowhere.test"], new_private_key()
        )
    assert failure.value.refused
    assert "nowhere.test" in str(failure.value)


def test_unreachable_ca_is_a_temporary_failure(tmp_path: Path, challenges: ChallengeServer) -> None:
    settings = AcmeSettings(f"https://127.0.0.1:{free_port()}/dir", None, None)
    acme = AcmeClient(settings, tmp_path / "state", challenges)
    with pytest.raises(AcmeFailure) as failure:
        acme.issue(["shop.test"], new_private_key())
    assert not failure.value.refused
    assert "unreachable" in str(failure.value)
    assert isinstance(failure.value.__cause__, Exception)
