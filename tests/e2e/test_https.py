"""HTTPS end to end: `ondeck up --listen-tls` gets certificates from a real ACME server.

Pebble (Debian) validates HTTP-01 on the router's plain port, resolving the
test hosts to 127.0.0.1 through pebble-challtestsrv; clients trust pebble's
root and nothing else. Two environments route two hosts; each gets its own
certificate, status shows them, and HTTPS outlives a `kill -9` of the
controller.
"""

from __future__ import annotations

import functools
import hashlib
import json
import signal
import socket
import ssl
import sys
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest
from conftest import Ondeck, Repo, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from pebble_ca import Pebble, free_port, running_pebble

pytestmark = pytest.mark.timeout(300)
HOSTS = ("shop.test", "staging.shop.test")


def spec(pebble: Pebble) -> str:
    return f"""\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
    routes: [{{host: shop.test}}]
tls:
  acme: {{email: ops@shop.test, directory: "{pebble.directory}", ca_bundle: "{pebble.ca_bundle}"}}
  hsts: 1d
environments:
  staging:
    services: {{web: {{routes: [{{host: staging.shop.test}}]}}}}
  production: {{}}
"""


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def pebble(tmp_path: Path, ports: tuple[int, int]) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble", ports[0], HOSTS) as server:
        yield server


def https(port: int, host: str, root: bytes, path: str = "/") -> tuple[int, dict[str, str], str]:
    """GET over a new TLS connection trusting only `root`: status, headers, the leaf's sha256."""
    ctx = ssl.create_default_context(cadata=root.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = HTTPResponse(tls)
        response.begin()
        response.read()
        der = tls.getpeercert(binary_form=True) or b""
    headers = {k.lower(): v for k, v in response.getheaders()}
    return response.status, headers, hashlib.sha256(der).hexdigest()


def certificates(od: Ondeck) -> dict[str, dict[str, Any]]:
    return {row["host"]: row for row in od.status().get("certificates", [])}


def test_acme_certificates_for_two_environments_served_through_a_controller_kill(
    repo: Repo,
    ondeck: Callable[..., Ondeck],
    pebble: Pebble,
    ports: tuple[int, int],
) -> None:
    plain, tls = ports
    repo.commit("shop with https", spec(pebble))
    od = ondeck(repo.path, "--env", "staging", "--env", "production",
                "--listen", f"127.0.0.1:{plain}", "--listen-tls", f"127.0.0.1:{tls}")  # fmt: skip
    od.wait_synced(env="staging", timeout=60)
    od.wait_synced(env="production", timeout=60)

    def issued() -> dict[str, dict[str, Any]] | None:
        found = certificates(od)
        ok = all(found.get(h, {}).get("issuer") for h in HOSTS)
        return found if ok else None

    rows = wait_for(issued, "certificates for both hosts", timeout=120)
    assert all("Pebble" in rows[h]["issuer"] and rows[h]["last_error"] is None for h in HOSTS)
    assert rows["shop.test"]["owners"] == ["shop/production"]
    assert rows["staging.shop.test"]["owners"] == ["shop/staging"]
    root = pebble.root_pem()
    leaves = {}
    for host in HOSTS:
        _, headers, leaves[host] = wait_for(
            functools.partial(_served, tls, host, root), f"HTTPS for {host}", timeout=30
        )
        assert headers["strict-transport-security"] == "max-age=86400"
    # plain HTTP to a host with a certificate: redirected
    with socket.create_connection(("127.0.0.1", plain), timeout=10) as sock:
        sock.sendall(b"GET /cart HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 308")
    assert f"Location: https://shop.test:{tls}/cart".encode() in head
    text = json.dumps(od.status())
    assert "PRIVATE KEY" not in text
    api = json.loads((od.state_dir / "api.json").read_text())["url"]
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'ondeck_certificate_expiry_timestamp_seconds{host="shop.test"}' in metrics

    od.stop(signal.SIGKILL)  # the controller is gone; the router keeps HTTPS up
    for host in HOSTS:
        status, _, leaf = https(tls, host, root)
        assert (status, leaf) == (200, leaves[host])


def _served(port: int, host: str, root: bytes) -> tuple[int, dict[str, str], str] | None:
    try:
        found = https(port, host, root)
    except (OSError, ssl.SSLError):
        return None
    return found if found[0] == 200 else None


def test_ca_down_at_renewal_keeps_https_up_and_degrades_with_a_reason(
    tmp_path: Path, repo: Repo, ondeck: Callable[..., Ondeck], ports: tuple[int, int]
) -> None:
    """90-second certificates: renewal is due after ~60 s, when pebble is no longer there.

    The old certificate is still valid for ~25 s after the failure: room for a loaded machine.
    """
    plain, tls = ports
    with running_pebble(tmp_path / "p90", plain, HOSTS, validity=90) as pebble:
        repo.commit("https", spec(pebble).split("environments:")[0])
        od = ondeck(repo.path, "--listen", f"127.0.0.1:{plain}",
                    "--listen-tls", f"127.0.0.1:{tls}")  # fmt: skip
        od.wait_synced(timeout=60)
        wait_for(lambda: certificates(od).get("shop.test", {}).get("issuer"), "a certificate", 90)
        root = pebble.root_pem()
        _, _, leaf = wait_for(lambda: _served(tls, "shop.test", root), "HTTPS", 30)
        pebble.stop_pebble()

        def failed() -> dict[str, Any] | None:
            row = certificates(od).get("shop.test", {})
            return row if row.get("last_error") else None

        row = wait_for(failed, "a failed renewal in status", timeout=120)
        assert "unreachable" in row["last_error"]
        assert row["degraded"] and "renewing it failed" in row["degraded"]
        env = od.env_status()
        assert env["health"] == "Degraded"
        assert any("shop.test" in c for c in env["conditions"])
        status, _, still = https(tls, "shop.test", root)  # the old certificate, still valid
        assert (status, still) == (200, leaf)
        assert "last attempt failed" in od.cli("status").stdout
