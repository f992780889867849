"""HTTPS at the router: ondeck's TLS termination against HAProxy and Caddy, same run.

One upstream (nginx returning a small body over plain HTTP) sits behind each
TLS terminator, all on loopback, all serving the same ECDSA P-256 certificate
for `localhost`. Measured, targets interleaved round by round (median kept):
keep-alive requests/s (`wrk`), new full handshakes/s (`wrk` with
`Connection: close`: wrk never resumes sessions, so every request is a full
handshake), and latency at a fixed 1,000 req/s over TLS keep-alive
connections, compared with the upstream reached directly. Writes
bench/results/tls.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ondeck.certificates import new_private_key
from ondeck.router.tls import TlsState
from router import Servers, Target, free_port, parse_wrk, tool_version, upstream_conf, wait_port

RESULTS = Path(__file__).resolve().parent / "results" / "tls.json"
HOST = "localhost"
TERMINATORS = ("ondeck", "ondeck-2w", "haproxy", "caddy")


def make_certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost, shared by every terminator."""
    key_pem = new_private_key()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = work / "cert.pem", work / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


def haproxy_tls_conf(port: int, upstream: int, combined: Path) -> str:
    return f"""global
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.2
  ssl-default-bind-ciphers ECDHE+AESGCM:ECDHE+CHACHA20
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:{upstream}
"""


def caddyfile(port: int, upstream: int, cert: Path, key: Path) -> str:
    return f"""{{
  admin off
  auto_https off
}}
https://{HOST}:{port} {{
  bind 127.0.0.1
  tls {cert} {key} {{
    protocols tls1.2 tls1.3
    alpn http/1.1
  }}
  reverse_proxy 127.0.0.1:{upstream}
}}
"""


class TlsServers(Servers):
    """The upstream and the three TLS terminators; `stop` ends exactly what it started."""

    def start_all(self) -> dict[str, Target]:
        ports = {name: free_port() for name in ("direct", *TERMINATORS)}
        cert, key = make_certificate(self.work)
        self.nginx("upstream", upstream_conf(self.work / "upstream", ports["direct"]))
        wait_port(ports["direct"])
        combined = self.work / "combined.pem"
        combined.write_bytes(cert.read_bytes() + key.read_bytes())
        hap = self.work / "haproxy.cfg"
        hap.write_text(haproxy_tls_conf(ports["haproxy"], ports["direct"], combined))
        self.spawn("haproxy", ["haproxy", "-f", str(hap), "-db"])
        caddy_dir = self.work / "caddy"
        caddy_dir.mkdir()
        (caddy_dir / "Caddyfile").write_text(caddyfile(ports["caddy"], ports["direct"], cert, key))
        self.spawn("caddy", ["env", f"HOME={caddy_dir}", f"XDG_DATA_HOME={caddy_dir}",
                             f"XDG_CONFIG_HOME={caddy_dir}", "caddy", "run", "--config",
                             str(caddy_dir / "Caddyfile"), "--adapter", "caddyfile"])  # fmt: skip
        self.start_ondeck_tls("ondeck", ports["ondeck"], ports["direct"], cert, key, 1)
        self.start_ondeck_tls("ondeck-2w", ports["ondeck-2w"], ports["direct"], cert, key, 2)
        for port in ports.values():
            wait_port(port)
        return {
            "direct": Target("direct", ports["direct"], "nginx 1 worker, plain HTTP (upstream)"),
            "ondeck": Target("ondeck", ports["ondeck"], "python -m ondeck.router --listen-tls"),
            "ondeck-2w": Target("ondeck-2w", ports["ondeck-2w"], "the same, --workers 2"),
            "haproxy": Target("haproxy", ports["haproxy"], "haproxy ssl crt, default nbthread"),
            "caddy": Target("caddy", ports["caddy"], "caddy reverse_proxy, tls files"),
        }

    def start_ondeck_tls(
        self, name: str, port: int, upstream: int, cert: Path, key: Path, workers: int
    ) -> None:
        state = self.work / name
        state.mkdir()
        config = {
            "generation": 1,
            "routes": [{"host": None, "path": "/", "pool": "bench/web"}],
            "pools": {
                "bench/web": {"stable": [{"id": "web-1", "host": "127.0.0.1", "port": upstream}]}
            },
        }
        (state / "router.json").write_text(json.dumps(config))
        # the router's own persisted state, as the controller would have pushed it
        TlsState(state).install("bench", [HOST], cert.read_bytes(), key.read_bytes())
        argv = [sys.executable, "-m", "ondeck.router", "--state-dir", str(state)]
        argv += ["--listen", f"127.0.0.1:{free_port()}", "--listen-tls", f"127.0.0.1:{port}"]
        self.spawn(name, [*argv, "--workers", str(workers)])


def url(name: str, target: Target) -> str:
    scheme = "http" if name == "direct" else "https"
    return f"{scheme}://{HOST}:{target.port}/"


def wrk(
    address: str, seconds: float, threads: int, connections: int, close: bool
) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    result = subprocess.run([*argv, address], capture_output=True, text=True,
                            timeout=seconds + 60, check=True)  # fmt: skip
    return parse_wrk(result.stdout)


def rounds_of(
    targets: dict[str, Target], args: argparse.Namespace, close: bool, label: str
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for name, target in targets.items():
        wrk(url(name, target), 1, args.threads, args.connections, close)  # warm-up
    for round_ in range(args.rounds):
        for name, target in targets.items():
            result = wrk(url(name, target), args.seconds, args.threads, args.connections, close)
            runs[name].append(result)
            print(f"  {label} round {round_ + 1} {name:8} {result['rps']:>9.0f}/s", flush=True)
    return {
        name: {
            "per_second": statistics.median(r["rps"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["non_2xx"] + r["socket_errors"] for r in results),
            "rounds": results,
        }
        for name, results in runs.items()
    }


REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


async def paced(
    name: str, port: int, rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """`rate` req/s on a fixed schedule over keep-alive connections (TLS unless direct)."""
    ctx: ssl.SSLContext | None = None
    if name != "direct":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the bench measures cost, not trust
    conns = [
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=HOST if ctx else None
        )
        for _ in range(connections)
    ]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.1
    service: list[float] = []
    errors = 0

    async def worker(index: int) -> None:
        nonlocal errors
        reader, writer = conns[index]
        for i in range(index, total, connections):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if length:
                await reader.readexactly(int(length.group(1)))
            service.append((time.perf_counter() - sent) * 1e3)
            errors += 0 if head.startswith(b"HTTP/1.1 200") else 1

    await asyncio.gather(*(worker(i) for i in range(connections)))
    for _, writer in conns:
        writer.close()
    service.sort()

    def pct(q: float) -> float:
        return round(service[min(len(service) - 1, int(q * len(service)))], 3)

    return {"requests": float(len(service)), "errors": float(errors),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(service[-1], 3)}  # fmt: skip


def fixed_rate(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for name, target in targets.items():
        asyncio.run(paced(name, target.port, args.rate, 1.0, args.paced_connections))
    for round_ in range(args.rounds):
        for name, target in targets.items():
            result = asyncio.run(
                paced(name, target.port, args.rate, args.paced_seconds, args.paced_connections)
            )
            runs[name].append(result)
            print(f"  @{args.rate:g}/s round {round_ + 1} {name:8} p99 {result['p99_ms']:.3f} ms",
                  flush=True)  # fmt: skip
    return {
        name: {
            **{key: statistics.median(r[key] for r in results) for key in results[0]},
            "rounds": results,
        }
        for name, results in runs.items()
    }


def verdict(
    keepalive: dict[str, Any], handshakes: dict[str, Any], fr: dict[str, Any]
) -> dict[str, Any]:
    def ratio(table: dict[str, Any], name: str) -> float:
        return round(float(table[name]["per_second"]) / float(table["haproxy"]["per_second"]), 3)

    def added(name: str) -> float:
        return round(float(fr[name]["p99_ms"]) - float(fr["direct"]["p99_ms"]), 3)

    result: dict[str, Any] = {
        "keepalive_ratio_to_haproxy": {n: ratio(keepalive, n) for n in TERMINATORS},
        "handshake_ratio_to_haproxy": {n: ratio(handshakes, n) for n in TERMINATORS},
        "added_p99_ms_at_fixed_rate": {n: added(n) for n in TERMINATORS},
    }
    result["goal_keepalive_half_of_haproxy"] = result["keepalive_ratio_to_haproxy"]["ondeck"] >= 0.5
    result["goal_handshakes_half_of_haproxy"] = (
        result["handshake_ratio_to_haproxy"]["ondeck"] >= 0.5
    )
    result["goal_added_p99_under_1ms"] = result["added_p99_ms_at_fixed_rate"]["ondeck"] < 1.0
    return result


def check_tools() -> None:
    missing = [t for t in ("wrk", "haproxy", "caddy", "nginx") if shutil.which(t) is None]
    if missing:
        sys.exit(
            f"bench/tls.py needs {', '.join(missing)}: apt-get install haproxy caddy nginx wrk"
        )


@contextlib.contextmanager
def servers() -> Iterator[dict[str, Target]]:
    with tempfile.TemporaryDirectory(prefix="ondeck-bench-tls-") as tmp:
        running = TlsServers(Path(tmp))
        try:
            yield running.start_all()
        finally:
            running.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk run per target per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced requests per second")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--paced-connections", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    check_tools()
    with servers() as targets:
        terminators = {n: t for n, t in targets.items() if n != "direct"}
        print(
            f"keep-alive: wrk -t{args.threads} -c{args.connections}, {args.rounds}x{args.seconds:g}s"
        )
        keepalive = rounds_of(terminators, args, close=False, label="keep-alive")
        print("new handshakes: the same with Connection: close")
        handshakes = rounds_of(terminators, args, close=True, label="handshakes")
        print(f"fixed rate: {args.rate:g} req/s")
        fr = fixed_rate(targets, args)
    result = verdict(keepalive, handshakes, fr)
    report = {
        "benchmark": "tls",
        "environment": {
            "load_average_at_start": list(os.getloadavg()),
            "openssl": ssl.OPENSSL_VERSION,
            "haproxy": tool_version(["haproxy", "-v"]),
            "caddy": tool_version(["caddy", "version"]),
            "wrk": tool_version(["wrk", "-v"]),
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "targets": {name: t.describe for name, t in targets.items()},
        "keepalive": keepalive,
        "handshakes": handshakes,
        "fixed_rate": fr,
        **result,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'target':8} {'keep-alive/s':>13} {'handshakes/s':>13} {'p99@rate ms':>12}")
    for name in TERMINATORS:
        print(f"{name:8} {keepalive[name]['per_second']:>13.0f} {handshakes[name]['per_second']:>13.0f}"
              f" {fr[name]['p99_ms']:>12.3f}")  # fmt: skip
    print(f"direct p99@rate {fr['direct']['p99_ms']:.3f} ms")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
