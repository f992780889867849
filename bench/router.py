"""Router throughput and added latency: ondeck's router against HAProxy and nginx.

One upstream (nginx returning a small static body) is measured directly and
behind each proxy, all on loopback, with `wrk` for throughput (targets
interleaved round by round, median kept) and a paced asyncio client at a fixed
rate for latency. Writes bench/results/router.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "router.json"
BODY = "hello from upstream\n"
TARGETS = ("direct", "ondeck", "ondeck-nolog", "ondeck-2w", "haproxy", "nginx")


@dataclass
class Target:
    name: str
    port: int
    describe: str
    pid: int = 0  # the process (tree) whose CPU time is charged to this target


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its descendants (nginx workers, router workers)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version (`wrk -v` exits 1, hence no check)."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else "?"


# ---------------------------------------------------------------------------
# Servers (configs generated into a temp dir)


def nginx_config(work: Path, body: str) -> str:
    temp = "\n".join(
        f"  {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 1000000;
{body}
}}
"""


def upstream_conf(work: Path, port: int) -> str:
    server = (
        f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY.strip()}\\n"; }} }}'
    )
    return "worker_processes 1;\n" + nginx_config(work, server)


def nginx_proxy_conf(work: Path, port: int, upstream: int) -> str:
    body = f"""  upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }}
  }}"""
    return "worker_processes auto;\n" + nginx_config(work, body)


def haproxy_conf(port: int, upstream: int) -> str:
    return f"""global
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:{upstream}
"""


class Servers:
    """Starts everything measured; `stop` ends exactly what it started."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}

    def spawn(self, name: str, argv: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        self.pids[name] = self.procs[-1].pid

    def nginx(self, name: str, conf: str) -> None:
        (self.work / name).mkdir()
        path = self.work / name / "nginx.conf"
        path.write_text(conf)
        self.spawn(name, ["nginx", "-c", str(path), "-p", str(self.work / name)])

    def start(self) -> dict[str, Target]:
        ports = {name: free_port() for name in TARGETS}
        self.nginx("upstream", upstream_conf(self.work / "upstream", ports["direct"]))
        self.nginx("nginx", nginx_proxy_conf(self.work / "nginx", ports["nginx"], ports["direct"]))
        hap = self.work / "haproxy.cfg"
        hap.write_text(haproxy_conf(ports["haproxy"], ports["direct"]))
        self.spawn("haproxy", ["haproxy", "-f", str(hap), "-db"])
        self.start_ondeck("ondeck", ports["ondeck"], ports["direct"], workers=1)
        self.start_ondeck(
            "ondeck-nolog", ports["ondeck-nolog"], ports["direct"], 1, "--no-access-log"
        )
        self.start_ondeck("ondeck-2w", ports["ondeck-2w"], ports["direct"], workers=2)
        for port in ports.values():
            wait_port(port)
        targets = {
            "direct": Target(
                "direct", ports["direct"], "nginx 1 worker, `return 200` (the upstream)"
            ),
            "ondeck": Target("ondeck", ports["ondeck"], "python -m ondeck.router (1 process)"),
            "ondeck-nolog": Target(
                "ondeck-nolog", ports["ondeck-nolog"], "the same with --no-access-log"
            ),
            "ondeck-2w": Target(
                "ondeck-2w", ports["ondeck-2w"], "python -m ondeck.router --workers 2"
            ),
            "haproxy": Target("haproxy", ports["haproxy"], "haproxy, default nbthread (all cores)"),
            "nginx": Target("nginx", ports["nginx"], "nginx proxy_pass, worker_processes auto"),
        }
        for name, target in targets.items():
            target.pid = self.pids["upstream" if name == "direct" else name]
        return targets

    def start_ondeck(self, name: str, port: int, upstream: int, workers: int, *flags: str) -> None:
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
        argv = [sys.executable, "-m", "ondeck.router", "--state-dir", str(state)]
        argv += ["--listen", f"127.0.0.1:{port}", "--workers", str(workers), *flags]
        self.spawn(name, argv)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


# ---------------------------------------------------------------------------
# Throughput with wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 (ms) and error counts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    done = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "rps": float(rps.group(1)),
        "requests": float(done.group(1)) if done else 0.0,
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def wrk(port: int, seconds: float, threads: int, connections: int) -> dict[str, float]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    result = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return parse_wrk(result.stdout)


def throughput(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, Any]:
    """Interleave targets round by round (noise hits all alike); keep the median."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for target in targets.values():
        wrk(target.port, 1, args.threads, args.connections)  # warm-up: connections, caches
    for round_ in range(args.rounds):
        for name, target in targets.items():
            cpu = cpu_seconds(target.pid)
            result = wrk(target.port, args.seconds, args.threads, args.connections)
            used = cpu_seconds(target.pid) - cpu
            result["cpu_us_per_request"] = round(used / max(result["requests"], 1) * 1e6, 2)
            rounds[name].append(result)
            print(
                f"  round {round_ + 1} {name:12} {result['rps']:>9.0f} req/s"
                f"  {result['cpu_us_per_request']:>6.1f} us CPU/request",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for name, results in rounds.items():
        summary[name] = {
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
            "errors": sum(r["non_2xx"] + r["socket_errors"] for r in results),
            "rounds": results,
        }
    return summary


# ---------------------------------------------------------------------------
# Added latency at a fixed rate (wrk2 is not packaged: a paced asyncio client)

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.localhost\r\n\r\n"


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"content-length:\s*(\d+)", head, re.I)
    if match:
        await reader.readexactly(int(match.group(1)))
    return head.startswith(b"HTTP/1.1 200")


async def paced(port: int, rate: float, seconds: float, connections: int) -> dict[str, float]:
    """Send `rate` req/s on a fixed schedule over `connections` keep-alive connections.

    Two latencies per request: from the actual send (`p*_ms`, what the proxy
    adds) and from the scheduled time (`sched_p*_ms`, which keeps a stall
    visible, no coordinated omission, as wrk2 does; it also carries the ~1 ms
    timer granularity of the event loop, hence not the headline figure).
    """
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.1
    service: list[float] = []
    scheduled: list[float] = []
    errors = 0

    async def worker(index: int) -> None:
        nonlocal errors
        reader, writer = conns[index]
        for i in range(index, total, connections):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            ok = await _one(reader, writer)
            done = time.perf_counter()
            service.append((done - sent) * 1e3)
            scheduled.append((done - due) * 1e3)
            errors += 0 if ok else 1

    await asyncio.gather(*(worker(i) for i in range(connections)))
    for _, writer in conns:
        writer.close()
    service.sort()
    scheduled.sort()
    return {
        "requests": float(len(service)),
        "errors": float(errors),
        "p50_ms": _pct(service, 0.50),
        "p90_ms": _pct(service, 0.90),
        "p99_ms": _pct(service, 0.99),
        "max_ms": round(service[-1], 3),
        "sched_p50_ms": _pct(scheduled, 0.50),
        "sched_p99_ms": _pct(scheduled, 0.99),
    }


def _pct(sorted_values: list[float], q: float) -> float:
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)


def fixed_rate(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, Any]:
    """Paced runs, targets interleaved round by round; the median round is kept."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for target in targets.values():
        asyncio.run(paced(target.port, args.rate, 1.0, args.paced_connections))  # warm-up
    for round_ in range(args.rounds):
        for name, target in targets.items():
            result = asyncio.run(
                paced(target.port, args.rate, args.paced_seconds, args.paced_connections)
            )
            rounds[name].append(result)
            print(
                f"  round {round_ + 1} {name:12} p50 {result['p50_ms']:.3f} ms"
                f"  p99 {result['p99_ms']:.3f} ms  max {result['max_ms']:.1f} ms",
                flush=True,
            )
    return {
        name: {
            **{key: statistics.median(r[key] for r in results) for key in results[0]},
            "rounds": results,
        }
        for name, results in rounds.items()
    }


# ---------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "httptools": version("httptools"),
        "uvloop": version("uvloop"),
        "haproxy": tool_version(["haproxy", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
    }


def verdict(tp: dict[str, Any], fr: dict[str, Any]) -> dict[str, Any]:
    ratio = {name: round(tp[name]["rps"] / tp["haproxy"]["rps"], 3) for name in tp}

    def added(key: str, target: str = "ondeck") -> float:
        return round(float(fr[target][key]) - float(fr["direct"][key]), 3)

    return {
        "ratio_to_haproxy": ratio,
        "added_p50_ms_at_fixed_rate": added("p50_ms"),
        "added_p99_ms_at_fixed_rate": added("p99_ms"),
        "added_sched_p99_ms_at_fixed_rate": added("sched_p99_ms"),
        "haproxy_added_p99_ms_at_fixed_rate": added("p99_ms", "haproxy"),
        # The access log's cost: one process with it (the default) against one without.
        "access_log_throughput_cost": round(1 - tp["ondeck"]["rps"] / tp["ondeck-nolog"]["rps"], 3),
        # CPU per request barely moves with the machine's load, unlike req/s.
        "access_log_cpu_us_per_request": round(
            tp["ondeck"]["cpu_us_per_request"] - tp["ondeck-nolog"]["cpu_us_per_request"], 2
        ),
        # Judged on one process only: two workers are reported, never the verdict.
        "goal_half_of_haproxy": ratio["ondeck"] >= 0.5,
        "goal_added_p99_under_1ms": added("p99_ms") < 1.0,
    }


def print_summary(
    tp: dict[str, Any], fr: dict[str, Any], result: dict[str, Any], rate: float
) -> None:
    print(
        f"\n{'target':12} {'req/s':>9} {'vs haproxy':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'@rate p50':>10} {'@rate p99':>10} {'CPU us/req':>10}"
    )
    for name in tp:
        ratio = result["ratio_to_haproxy"][name]
        print(
            f"{name:12} {tp[name]['rps']:>9.0f} {ratio:>10.2f} {tp[name]['p50_ms']:>8.2f}"
            f" {tp[name]['p99_ms']:>8.2f} {fr[name]['p50_ms']:>10.3f} {fr[name]['p99_ms']:>10.3f}"
            f" {tp[name]['cpu_us_per_request']:>10.1f}"
        )
    ratios = result["ratio_to_haproxy"]
    print(
        f"\nondeck/haproxy throughput {ratios['ondeck']:.2f} (1 process;"
        f" goal >= 0.5: {'met' if result['goal_half_of_haproxy'] else 'NOT met'}),"
        f" {ratios['ondeck-2w']:.2f} (2 workers, not judged);"
        f"\nadded at {rate:g} req/s: p50 {result['added_p50_ms_at_fixed_rate']:+.3f} ms,"
        f" p99 {result['added_p99_ms_at_fixed_rate']:+.3f} ms"
        f" (from schedule: {result['added_sched_p99_ms_at_fixed_rate']:+.3f} ms;"
        f" haproxy adds {result['haproxy_added_p99_ms_at_fixed_rate']:+.3f} ms)"
        f" (goal < 1 ms: {'met' if result['goal_added_p99_under_1ms'] else 'NOT met'})"
        f"\naccess log: {result['access_log_throughput_cost']:+.1%} of one process's throughput"
        f" ({tp['ondeck']['rps']:.0f} req/s with it, {tp['ondeck-nolog']['rps']:.0f} without),"
        f" {result['access_log_cpu_us_per_request']:+.1f} us CPU per request"
    )


def check_tools() -> None:
    missing = [tool for tool in ("wrk", "haproxy", "nginx") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench/router.py needs {', '.join(missing)}: run `make bench-deps`")


@contextlib.contextmanager
def servers() -> Iterator[dict[str, Target]]:
    with tempfile.TemporaryDirectory(prefix="ondeck-bench-router-") as tmp:
        running = Servers(Path(tmp))
        try:
            yield running.start()
        finally:
            running.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk run per target per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced requests per second")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="per target per round")
    parser.add_argument("--paced-connections", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    check_tools()
    with servers() as targets:
        print(
            f"throughput: wrk -t{args.threads} -c{args.connections}, {args.rounds}x{args.seconds:g}s"
        )
        tp = throughput(targets, args)
        print(f"fixed rate: {args.rate:g} req/s, {args.rounds}x{args.paced_seconds:g}s per target")
        fr = fixed_rate(targets, args)
    result = verdict(tp, fr)
    report = {
        "benchmark": "router",
        "environment": environment(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "targets": {name: t.describe for name, t in targets.items()},
        "throughput": tp,
        "fixed_rate": fr,
        **result,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(tp, fr, result, args.rate)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
