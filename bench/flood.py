"""Router under a header flood: memory and legitimate success rate, HAProxy alongside.

Eight attacker connections (a child process) each send a request head whose
last header value never ends, as fast as loopback takes it, and reconnect when
cut. Meanwhile a paced client sends legitimate GETs on fresh connections.
Measured per target (ondeck's router, one process; HAProxy, same upstream,
same run): RSS before, peak during and after the flood (sampled every 50 ms
from /proc), legitimate success rate and latency. Loopback only, bounded in
time. Writes bench/results/flood.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from router import (
    Servers,
    check_tools,
    environment,
    free_port,
    haproxy_conf,
    upstream_conf,
    wait_port,
)

RESULTS = Path(__file__).resolve().parent / "results" / "flood.json"
FLOOD_HEAD = b"GET / HTTP/1.1\r\nHost: flood.localhost\r\nX-Flood: "
FLOOD_PIECE = b"a" * 65536
LEGIT = b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n"


# ---------------------------------------------------------------------------
# The attacker (run as a child process: its loop must not slow the legit client)


async def attack(port: int, connections: int, seconds: float) -> dict[str, int]:
    """`connections` endless header values until `seconds` pass; reconnect when cut."""
    stop = time.monotonic() + seconds
    sent = cuts = 0

    async def one() -> None:
        nonlocal sent, cuts
        while time.monotonic() < stop:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                writer.write(FLOOD_HEAD)
                while time.monotonic() < stop:
                    writer.write(FLOOD_PIECE)
                    async with asyncio.timeout(max(0.1, stop - time.monotonic())):
                        await writer.drain()
                    sent += len(FLOOD_PIECE)
            except (OSError, TimeoutError):
                cuts += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return {"bytes_sent": sent, "connections_cut": cuts}


# ---------------------------------------------------------------------------
# The legitimate client and the RSS sampler


async def legit(port: int, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    """GETs on fresh connections at `rate`/s; a success is a 200 within `timeout`."""
    total = int(rate * seconds)
    start = time.perf_counter()
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(LEGIT)
                answer = await reader.read()
                writer.close()
        except (OSError, TimeoutError) as exc:
            kind = type(exc).__name__
            failures[kind] = failures.get(kind, 0) + 1
            return
        if answer.startswith(b"HTTP/1.1 200"):
            latencies.append((time.perf_counter() - sent) * 1e3)
        else:
            status = answer[9:12].decode("latin-1", "replace") or "empty"
            failures[status] = failures.get(status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(total)))
    latencies.sort()
    return {
        "requests": total,
        "succeeded": len(latencies),
        "success_rate": round(len(latencies) / total, 4) if total else 0.0,
        "failures": failures,
        "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
    }


def rss_kib(pid: int) -> int:
    """Resident set of `pid` and its children (a router may run workers)."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


# ---------------------------------------------------------------------------
# One target


async def measure(name: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    await legit(port, 20, 1.0, args.timeout)  # warm-up: connections, caches
    before = rss_kib(pid)
    calm = await legit(port, args.rate, 2.0, args.timeout)
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, samples, stop))
    attacker = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--attack",
        str(port),
        "--seconds",
        str(args.seconds),
        "--connections",
        str(args.connections),
        stdout=subprocess.PIPE,
    )
    await asyncio.sleep(1.0)  # let the flood build up before judging the legitimate users
    during = await legit(port, args.rate, args.seconds - 2.0, args.timeout)
    out, _ = await attacker.communicate()
    stop.set()
    await sampler
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    recovered = await legit(port, args.rate, 2.0, args.timeout)
    result = {
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(max(samples) / 1024, 1),
        "rss_median_mib": round(statistics.median(samples) / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "legit_calm": calm,
        "legit_during_flood": during,
        "legit_after_flood": recovered,
        "attacker": json.loads(out),
    }
    print(
        f"  {name:8} RSS {result['rss_before_mib']:.0f} -> peak {result['rss_peak_mib']:.0f} MiB"
        f" (after {result['rss_after_mib']:.0f}); legit success {during['success_rate']:.1%}"
        f" during, {recovered['success_rate']:.1%} after;"
        f" flood {result['attacker']['bytes_sent'] / 2**20:.0f} MiB sent,"
        f" {result['attacker']['connections_cut']} connections cut",
        flush=True,
    )
    return result


def start_targets(work: Path, running: Servers) -> dict[str, tuple[int, int]]:
    """Upstream nginx, HAProxy and one ondeck router: name -> (port, pid)."""
    upstream, ondeck, haproxy = free_port(), free_port(), free_port()
    running.nginx("upstream", upstream_conf(work / "upstream", upstream))
    hap = work / "haproxy.cfg"
    hap.write_text(haproxy_conf(haproxy, upstream))
    running.spawn("haproxy", ["haproxy", "-f", str(hap), "-db"])
    haproxy_pid = running.procs[-1].pid
    running.start_ondeck("ondeck", ondeck, upstream, workers=1)
    ondeck_pid = running.procs[-1].pid
    for port in (upstream, ondeck, haproxy):
        wait_port(port)
    return {"ondeck": (ondeck, ondeck_pid), "haproxy": (haproxy, haproxy_pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="flood length per target")
    parser.add_argument("--connections", type=int, default=8, help="attacker connections")
    parser.add_argument("--rate", type=float, default=50.0, help="legitimate requests per second")
    parser.add_argument("--timeout", type=float, default=2.0, help="a legitimate request's limit")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        print(json.dumps(asyncio.run(attack(args.attack, args.connections, args.seconds))))
        return 0
    check_tools()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ondeck-bench-flood-") as tmp:
        running = Servers(Path(tmp))
        try:
            targets = start_targets(Path(tmp), running)
            print(f"flood: {args.connections} endless header values for {args.seconds:g}s")
            for name, (port, pid) in targets.items():
                results[name] = asyncio.run(measure(name, port, pid, args))
        finally:
            running.stop()
    report = {
        "benchmark": "flood",
        "environment": environment(),
        "commit": _commit(),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "attack"},
        "targets": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


def _commit() -> str:
    result = subprocess.run(
        ["git", "-C", os.path.dirname(__file__), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
