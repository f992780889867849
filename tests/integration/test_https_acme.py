"""Certificates obtained from a real ACME server (pebble) and served by a real router process.

Pebble resolves the test hosts to 127.0.0.1 through pebble-challtestsrv and
validates HTTP-01 on the router's plain port, where the router answers what
the certificate manager published over the control socket. HTTPS clients
trust pebble's root (fetched from its management API) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from local_ca import LocalCA
from pebble_ca import Pebble, free_port, running_pebble
from test_router_proxy import Client, RouterProcess, Upstream, control_call, run, single_pool

from ondeck.https import CertificateManager, EnvTls, wanted
from ondeck.metrics import Metrics
from ondeck.router.control import RouterControl
from ondeck.router.table import Backend
from ondeck.secrets.hoststore import HostStore
from ondeck.spec.model import Tls
from ondeck.state.renewal import RenewalPolicy

pytestmark = pytest.mark.timeout(240)
HOSTS = ("shop.test", "staging.shop.test", "blog.test")
FAST = RenewalPolicy(retry_initial=1.0, retry_max=2.0, refused_initial=2.0, refused_max=4.0)


@pytest.fixture
def plain_port() -> int:
    return free_port()


@pytest.fixture
def pebble(tmp_path: Path, plain_port: int) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble", plain_port, HOSTS) as server:
        yield server


def tls_spec(pebble: Pebble, **extra: object) -> Tls:
    acme = {"email": "ops@shop.test", "directory": pebble.directory,
            "ca_bundle": str(pebble.ca_bundle)}  # fmt: skip
    return Tls.model_validate({"acme": acme, **extra})


@contextlib.asynccontextmanager
async def router(
    state: Path, plain_port: int, tls_port: int, upstream: int
) -> AsyncIterator[RouterProcess]:
    state.mkdir(exist_ok=True)
    proc = RouterProcess(
        state, "--listen-tls", f"127.0.0.1:{tls_port}", listen=f"127.0.0.1:{plain_port}"
    )
    try:
        await proc.ready()
        config = single_pool(Backend("a", "127.0.0.1", upstream)).to_json()
        await control_call(state / "router.sock", {"op": "apply", "config": config})
        yield proc
    finally:
        proc.stop()


async def https_get(port: int, host: str, root: bytes) -> tuple[int, str]:
    """One request on a new connection (a full handshake); status and the leaf's sha256."""
    ctx = ssl.create_default_context(cadata=root.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    client = Client(reader, writer)
    try:
        response = await client.request("GET", "/", host=host)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return response.status, hashlib.sha256(der).hexdigest()
    finally:
        client.close()


def test_issues_for_two_hosts_of_two_environments_and_serves_them(
    tmp_path: Path, pebble: Pebble, plain_port: int
) -> None:
    async def scenario() -> None:
        tls_port = free_port()
        async with Upstream("a") as up, router(tmp_path / "r", plain_port, tls_port, up.port):
            manager = CertificateManager(tmp_path / "c", RouterControl(tmp_path / "r/router.sock"))
            envs = [
                EnvTls("shop/production", tls_spec(pebble), ("shop.test",)),
                EnvTls("shop/staging", tls_spec(pebble), ("staging.shop.test",)),
                EnvTls("blog/default", None, ("blog.test",)),  # no tls: stays plain HTTP
            ]
            manager.want(wanted(envs))
            await manager.step()
            status = {row["host"]: row for row in manager.status()}
            assert set(status) == {"shop.test", "staging.shop.test"}
            assert all(row["last_error"] is None for row in status.values())
            assert all("Pebble" in row["issuer"] for row in status.values())
            root = pebble.root_pem()
            for host in ("shop.test", "staging.shop.test"):
                code, _ = await https_get(tls_port, host, root)
                assert code == 200
            assert {r.header("X-Forwarded-Proto") for r in up.requests} == {"https"}
            key = next((tmp_path / "c" / "tls").glob("*/key.pem"))
            assert key.stat().st_mode & 0o077 == 0
            assert "PRIVATE" not in str(manager.status())

    run(scenario())


def test_renewal_under_load_fails_no_request(tmp_path: Path, plain_port: int) -> None:
    """Pebble issues 30-second certificates: renewal is due after ~20 s while clients hammer."""

    async def scenario() -> None:
        tls_port = free_port()
        with running_pebble(tmp_path / "pebble", plain_port, HOSTS, validity=30) as pebble:
            async with Upstream("a") as up, router(tmp_path / "r", plain_port, tls_port, up.port):
                manager = CertificateManager(
                    tmp_path / "c", RouterControl(tmp_path / "r/router.sock"), policy=FAST
                )
                manager.want(wanted([EnvTls("shop/production", tls_spec(pebble), HOSTS[:1])]))
                await manager.step()
                root = pebble.root_pem()
                _, first = await https_get(tls_port, "shop.test", root)
                task = asyncio.create_task(manager.run())
                seen, failures, requests = {first}, 0, 0
                try:
                    async with asyncio.timeout(60):
                        while len(seen) < 2:
                            try:
                                code, leaf = await https_get(tls_port, "shop.test", root)
                            except (OSError, ssl.SSLError):
                                code, leaf = 0, ""
                            requests += 1
                            failures += code != 200
                            seen.add(leaf)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                assert failures == 0, f"{failures} of {requests} requests failed"
                assert requests > 20
                assert manager.status()[0]["last_renewal"] is not None

    run(scenario())


def test_ca_down_during_renewal_keeps_the_old_certificate_and_shows_the_error(
    tmp_path: Path, plain_port: int
) -> None:
    async def scenario() -> None:
        tls_port = free_port()
        with running_pebble(tmp_path / "pebble", plain_port, HOSTS, validity=120) as pebble:
            async with Upstream("a") as up, router(tmp_path / "r", plain_port, tls_port, up.port):
                clock, metrics = FakeClock(), Metrics()
                manager = CertificateManager(tmp_path / "c",
                                             RouterControl(tmp_path / "r/router.sock"),
                                             policy=FAST, clock=clock, metrics=metrics)  # fmt: skip
                manager.want(wanted([EnvTls("shop/production", tls_spec(pebble), HOSTS[:1])]))
                await manager.step()
                root = pebble.root_pem()
                _, served = await https_get(tls_port, "shop.test", root)
                pebble.stop_pebble()
                clock.now += 95  # renewal is due (2/3 of 120 s plus jitter); real time barely moved
                await manager.step()
                row = manager.status()[0]
                assert row["failures"] == 1
                assert "unreachable" in row["last_error"]
                text = metrics.render()[0].decode()
                assert 'ondeck_certificate_renewal_failures_total{host="shop.test"} 1.0' in text
                gauge = re.search(
                    r'ondeck_certificate_expiry_timestamp_seconds\{host="shop.test"\} (\S+)', text
                )
                assert gauge is not None and float(gauge.group(1)) == row["not_after_epoch"]
                clock.now += 3  # expiring within 14 days and failing: Degraded
                assert manager.status()[0]["degraded"] is not None
                code, still = await https_get(tls_port, "shop.test", root)
                assert (code, still) == (200, served)

    run(scenario())


def test_bring_your_own_certificate_is_served_and_wins_over_acme(
    tmp_path: Path, pebble: Pebble, plain_port: int
) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        leaf = ca.issue("*.shop.test")
        (tmp_path / "own.crt").write_bytes(leaf.chain_pem)
        (tmp_path / "own.key").write_bytes(leaf.key_pem)
        tls_port = free_port()
        spec = tls_spec(pebble, certificates=[
            {"hosts": ["*.shop.test"], "cert": str(tmp_path / "own.crt"),
             "key": str(tmp_path / "own.key")}])  # fmt: skip
        async with Upstream("a") as up, router(tmp_path / "r", plain_port, tls_port, up.port):
            manager = CertificateManager(tmp_path / "c", RouterControl(tmp_path / "r/router.sock"))
            envs = [EnvTls("shop/staging", spec, ("staging.shop.test", "shop.test"))]
            manager.want(wanted(envs))
            await manager.step()
            by_host = {row["host"]: row for row in manager.status()}
            assert by_host["*.shop.test"]["source"] == "file"
            assert by_host["*.shop.test"]["issuer"] == "ondeck test root"
            assert by_host["shop.test"]["source"] == "acme"  # not covered by the wildcard
            code, leaf_sha = await https_get(tls_port, "staging.shop.test", ca.root_pem)
            assert code == 200
            assert (
                leaf_sha
                == hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.chain_pem.decode())).hexdigest()
            )
            code, _ = await https_get(tls_port, "shop.test", pebble.root_pem())
            assert code == 200

    run(scenario())


def test_a_brought_key_can_be_a_host_secret(tmp_path: Path, plain_port: int) -> None:
    async def scenario() -> None:
        ca = LocalCA()
        leaf = ca.issue("shop.test")
        (tmp_path / "shop.crt").write_bytes(leaf.chain_pem)
        spec = Tls.model_validate({"certificates": [
            {"hosts": ["shop.test"], "cert": str(tmp_path / "shop.crt"),
             "key": "secret:SHOP_TLS_KEY"}]})  # fmt: skip
        tls_port = free_port()
        async with Upstream("a") as up, router(tmp_path / "r", plain_port, tls_port, up.port):
            manager = CertificateManager(tmp_path / "r", RouterControl(tmp_path / "r/router.sock"))
            manager.want(wanted([EnvTls("shop/production", spec, ("shop.test",))]))
            await manager.step()
            row = manager.status()[0]
            assert row["issuer"] is None
            assert "ondeck secret set SHOP_TLS_KEY --env production" in row["last_error"]
            HostStore(tmp_path / "r").set("SHOP_TLS_KEY", leaf.key_pem.decode(), env="production")
            await manager.step()
            row = manager.status()[0]
            assert (row["issuer"], row["last_error"]) == ("ondeck test root", None)
            code, served = await https_get(tls_port, "shop.test", ca.root_pem)
            assert code == 200
            assert (
                served
                == hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.chain_pem.decode())).hexdigest()
            )
            assert leaf.key_pem.decode().splitlines()[1] not in str(manager.status())

    run(scenario())


def test_router_keeps_serving_https_when_the_controller_is_gone(
    tmp_path: Path, pebble: Pebble, plain_port: int
) -> None:
    """The manager is the controller's; the router alone (restarted, even) keeps HTTPS up."""

    async def scenario() -> None:
        tls_port = free_port()
        async with Upstream("a") as up:
            async with router(tmp_path / "r", plain_port, tls_port, up.port):
                manager = CertificateManager(
                    tmp_path / "c", RouterControl(tmp_path / "r/router.sock")
                )
                manager.want(wanted([EnvTls("shop/production", tls_spec(pebble), HOSTS[:1])]))
                await manager.step()
                root = pebble.root_pem()
                _, before = await https_get(tls_port, "shop.test", root)
            del manager  # no controller from here on
            again = RouterProcess(tmp_path / "r", "--listen-tls", f"127.0.0.1:{tls_port}",
                                  listen=f"127.0.0.1:{plain_port}")  # fmt: skip
            try:
                await again.ready()
                code, after = await https_get(tls_port, "shop.test", root)
                assert (code, after) == (200, before)
            finally:
                again.stop(signal.SIGKILL)

    run(scenario())


class FakeClock:
    """Time for the renewal policy only (the CA and the router run on real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now
