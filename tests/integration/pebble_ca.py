"""A real ACME server for tests: Debian's `pebble` with `pebble-challtestsrv` as its DNS.

`running_pebble` starts the mock DNS (A records of the test hosts -> 127.0.0.1,
on a free loopback port), then pebble with real HTTP-01 validation against
`http_port` (the router's plain port in the tests) and an HTTPS certificate
made here with openssl. Every wait polls a condition with a deadline. Pebble
keeps everything in memory: its root changes at every start (`root_pem`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: object, deadline: float = START_DEADLINE) -> None:
    """Poll `check()` until it is truthy; fail naming `what` after `deadline` seconds."""
    assert callable(check)
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready after {deadline}s (last error: {last})")


def make_server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for pebble's own HTTPS (127.0.0.1 and localhost)."""
    cert, key = directory / "pebble-https.pem", directory / "pebble-https.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=pebble test server",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Pebble:
    """A running pebble + challtestsrv pair; `directory` is the ACME directory URL."""

    workdir: Path
    http_port: int
    hosts: Sequence[str]
    validity: int | None = None  # seconds; None keeps pebble's default (5 years)
    nonce_reject: int = 0  # percent of good nonces pebble refuses as badNonce
    acme_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_management_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pebble_argv: list[str] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """The certificate of pebble's own HTTPS: what an ACME client must trust."""
        return self.workdir / "pebble-https.pem"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ca_bundle.exists():
            make_server_certificate(self.workdir)
        self._start_dns()
        self.start_pebble()

    def _start_dns(self) -> None:
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-dns01", f"127.0.0.1:{self.dns_port}",
                "-management", f"127.0.0.1:{self.dns_management_port}",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-defaultIPv4", "", "-defaultIPv6", "",
            ],
            {},
        )  # fmt: skip
        wait_for("pebble-challtestsrv", lambda: _accepts(self.dns_management_port))
        for host in self.hosts:
            self.add_host(host)

    def add_host(self, host: str, address: str = "127.0.0.1") -> None:
        """An A record for `host` in the mock DNS pebble resolves with."""
        body = json.dumps({"host": host.rstrip(".") + ".", "addresses": [address]}).encode()
        url = f"http://127.0.0.1:{self.dns_management_port}/add-a"
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as reply:
            assert reply.status == 200, reply.status

    def start_pebble(self) -> None:
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.ca_bundle),
                "privateKey": str(self.workdir / "pebble-https.key"),
                "httpPort": self.http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                **({"certificateValidityPeriod": self.validity} if self.validity else {}),
            }
        }
        path = self.workdir / "pebble-config.json"
        path.write_text(json.dumps(config))
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject)}
        self.pebble_argv = [
            "pebble",
            "-config",
            str(path),
            "-dnsserver",
            f"127.0.0.1:{self.dns_port}",
        ]
        self._spawn("pebble", self.pebble_argv, env)
        wait_for("pebble", lambda: self._get(f"https://127.0.0.1:{self.acme_port}/dir"))

    def stop_pebble(self) -> None:
        """Stop the ACME server only (the DNS stays): renewals now fail to connect."""
        for proc in [p for p in self.processes if p.args == self.pebble_argv]:
            _stop(proc)
            self.processes.remove(proc)

    def root_pem(self) -> bytes:
        """The root pebble issues under (new at every start): the tests' only trust anchor."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            _stop(proc)
        self.processes.clear()

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=context, timeout=5) as reply:
            data: bytes = reply.read()
            return data

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            start_new_session=True,
        )
        log.close()
        self.processes.append(proc)
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited at once: see {self.workdir / name}.log")


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_pebble(
    workdir: Path,
    http_port: int,
    hosts: Sequence[str],
    *,
    validity: int | None = None,
    nonce_reject: int = 0,
) -> Iterator[Pebble]:
    """Pebble validating HTTP-01 on 127.0.0.1:`http_port` for `hosts`; stopped on exit."""
    pebble = Pebble(workdir, http_port, hosts, validity=validity, nonce_reject=nonce_reject)
    try:
        pebble.start()
        yield pebble
    finally:
        pebble.stop()
