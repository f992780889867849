"""Benchmark of zero-downtime releases: failed requests and p99 latency through the router.

A real `python -m ondeck up` serves one service (2 replicas of a small
keep-alive app) through its router on loopback. A separate load process keeps
N keep-alive connections busy at a fixed total rate, each from its own
loopback address (127.100.0.1, 127.101.0.2, ...: the router keeps a client
without a cookie on one side of a canary by its address), and timestamps every
request with the system-wide monotonic clock. Meanwhile this script runs
10 consecutive releases under each strategy (rolling, blue/green with a short
keep_old, canary with short timed steps), then kills the controller (-9) and
restarts it a few times. Each release (commit -> synced) and each outage
(kill -> restarted and synced) is a window; a request belongs to the window
its send time falls in, else to "outside". A request fails when its
connection breaks or times out, or its answer is not 2xx.

Run: `.venv/bin/python bench/zero_downtime.py [--releases 10] [--rate 400]`;
writes bench/results/zero_downtime.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    Controller,
    Repo,
    ServiceSpec,
    bounded,
    kill_instances,
    save_results,
    spec_yaml,
    wait_for,
)
from ondeck.runtime.process import allocate_port

GOAL_FAILED = 0
GOAL_P99_EXTRA_S = 0.050  # p99 during releases at most this much above p99 outside them
STRATEGIES = {
    "rolling": "{strategy: rolling, max_surge: 1, max_unavailable: 0, drain: 5s}",
    "blue-green": "{strategy: blue-green, keep_old: 1s, drain: 5s}",
    "canary": (
        "{strategy: canary, drain: 5s, "
        "steps: [{weight: 20}, {pause: 1s}, {weight: 50}, {pause: 1s}]}"
    ),
}

# The app: asyncio, HTTP/1.1 keep-alive, answers its version; /healthz is 200.
# SIGTERM keeps its default action: the router has drained it before the stop.
APP_SOURCE = """\
import asyncio
import os

BODY = ("v" + os.environ.get("ONDECK_VERSION", "")).encode()
REPLY = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            if not head:
                break
            writer.write(REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--releases", type=int, default=10, help="releases per strategy")
    p.add_argument("--kills", type=int, default=5, help="controller kill -9 + restart cycles")
    p.add_argument("--connections", type=int, default=16, help="keep-alive load connections")
    p.add_argument("--rate", type=float, default=400.0, help="total requests per second")
    p.add_argument("--quiet", type=float, default=2.0, help="load-only seconds between windows")
    p.add_argument("--budget", type=float, default=480.0, help="hard limit, seconds")
    p.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the load process -------------------------------------------------------------------------------

REQUEST_TIMEOUT = 10.0


def load_sources(count: int) -> list[str]:
    """One loopback address per connection, spread so both sides of a canary get some."""
    return [f"127.{100 + i}.0.{i + 1}" for i in range(count)]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    if length:
        await reader.readexactly(length)
    return status, not close


async def _connection(
    port: int,
    source: str,
    every: float,
    offset: float,
    stop: asyncio.Event,
    records: array.array[float],
) -> None:
    """One paced keep-alive client: a request every `every` seconds (sooner after a stall)."""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    next_at = time.monotonic() + offset
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        next_at = max(next_at + every, time.monotonic() - every)
        started = time.monotonic()
        status, keep = 0, False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if streams is None:
                    streams = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(source, 0)
                    )
                streams[1].write(request)
                status, keep = await _answer(streams[0])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            status, keep = 0, False
        records.extend((started, time.monotonic() - started, float(status)))
        if not keep and streams is not None:
            streams[1].close()
            streams = None
    if streams is not None:
        streams[1].close()


async def _load(port: int, connections: int, rate: float, max_seconds: float, out: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.call_later(max_seconds, stop.set)
    records: array.array[float] = array.array("d")
    every = connections / rate
    sources = load_sources(connections)
    await asyncio.gather(
        *(
            _connection(port, s, every, every * i / connections, stop, records)
            for i, s in enumerate(sources)
        )
    )
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        records.tofile(handle)
    os.replace(tmp, out)


def load_worker(args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_load(args.port, args.connections, args.rate, args.max_seconds, args.out))
        return
    uvloop.run(_load(args.port, args.connections, args.rate, args.max_seconds, args.out))


@dataclass(frozen=True)
class Request:
    started: float
    latency: float
    status: int

    @property
    def failed(self) -> bool:
        return not 200 <= self.status < 300


def read_records(path: Path) -> list[Request]:
    raw: array.array[float] = array.array("d")
    raw.frombytes(path.read_bytes())
    return [
        Request(raw[i], raw[i + 1], int(raw[i + 2])) for i in range(0, len(raw) - len(raw) % 3, 3)
    ]


class LoadProcess:
    """The load generator in its own process (so this script's work never delays it)."""

    def __init__(self, port: int, connections: int, rate: float, out: Path, budget: float) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--load-worker",
                "--port",
                str(port),
                "--connections",
                str(connections),
                "--rate",
                str(rate),
                "--out",
                str(out),
                "--max-seconds",
                str(budget),
            ],
            start_new_session=True,
        )

    def finish(self) -> list[Request]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return read_records(self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


# -- windows and figures ------------------------------------------------------------------------------


@dataclass
class Window:
    kind: str  # a strategy, or "controller-kill"
    index: int
    start: float
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


def p(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of an ascending list."""
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def figures(requests: Sequence[Request]) -> dict[str, Any]:
    latencies = sorted(r.latency for r in requests if not r.failed)
    failed = [r for r in requests if r.failed]
    statuses: dict[str, int] = {}
    for r in failed:
        key = str(r.status) if r.status else "connection error"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(requests),
        "failed": len(failed),
        "failed_by_status": statuses,
        "p50_ms": _ms(p(latencies, 0.50)),
        "p99_ms": _ms(p(latencies, 0.99)),
        "p999_ms": _ms(p(latencies, 0.999)),
        "max_ms": _ms(latencies[-1] if latencies else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def classify(requests: Sequence[Request], windows: Sequence[Window]) -> dict[str, list[Request]]:
    """Requests by the kind of window their send time falls in ("outside" for none)."""
    ordered = sorted(windows, key=lambda w: w.start)
    starts = [w.start for w in ordered]
    groups: dict[str, list[Request]] = {"outside": []}
    for r in requests:
        i = bisect_right(starts, r.started) - 1
        kind = ordered[i].kind if i >= 0 and r.started <= ordered[i].end else "outside"
        groups.setdefault(kind, []).append(r)
    return groups


# -- driving ondeck -------------------------------------------------------------------------------------


def service_spec(version: int, rollout: str) -> str:
    svc = ServiceSpec(
        "web",
        version=str(version),
        replicas=2,
        health="{http: /healthz, interval: 1s}",
        extra={"rollout": rollout, "routes": "[{path: /}]"},
    )
    return spec_yaml([svc])


def release(ctl: Controller, repo: Repo, version: int, rollout: str) -> str:
    sha = repo.commit(f"v{version}", service_spec(version, rollout))
    answer = ctl.sync(timeout=120.0)
    if answer.get("error"):
        raise RuntimeError(f"sync of v{version} failed: {answer['error']}")
    ctl.wait_synced(sha, timeout=120.0)
    return sha


def restart_after_kill(ctl: Controller, sha: str) -> None:
    os.kill(ctl.pid, signal.SIGKILL)
    assert ctl.proc is not None
    ctl.proc.wait(timeout=30)
    ctl.proc = None
    ctl.start()
    ctl.wait_synced(sha, timeout=60.0)


def kill_router(state_dir: Path) -> None:
    pid_file = state_dir / "router.pid"
    with contextlib.suppress(OSError, ValueError):
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def router_serves(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def quiet(seconds: float) -> None:
    """Load only: the `outside` samples between windows."""
    time.sleep(seconds)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    repo = Repo(workdir / "repo")
    (repo.path / "app.py").write_text(APP_SOURCE)
    port = allocate_port()
    version = 1
    sha = repo.commit("v1", service_spec(version, STRATEGIES["rolling"]))
    state_dir = workdir / "state"
    ctl = Controller(repo.path, state_dir, "--listen", f"127.0.0.1:{port}", "--poll", "1h")
    windows: list[Window] = []
    load: LoadProcess | None = None
    try:
        ctl.start()
        ctl.wait_synced(sha, timeout=60.0)
        wait_for(lambda: router_serves(port), "the router to serve v1", 30.0)
        load = LoadProcess(port, args.connections, args.rate, workdir / "load.bin", args.budget)
        quiet(args.quiet * 2)
        for kind, rollout in STRATEGIES.items():
            for index in range(args.releases):
                version += 1
                window = Window(kind, index, time.monotonic())
                sha = release(ctl, repo, version, rollout)
                window.end = time.monotonic()
                window.detail = {"version": version, "seconds": round(window.end - window.start, 3)}
                windows.append(window)
                print(f"  {kind} release {index + 1}: v{version} in {window.detail['seconds']}s")
                quiet(args.quiet)
        for index in range(args.kills):
            window = Window("controller-kill", index, time.monotonic())
            restart_after_kill(ctl, sha)
            window.end = time.monotonic()
            window.detail = {"seconds": round(window.end - window.start, 3)}
            windows.append(window)
            print(f"  controller kill -9 {index + 1}: back in {window.detail['seconds']}s")
            quiet(args.quiet)
        requests = load.finish()
    finally:
        if load is not None:
            load.kill()
        ctl.cleanup()
        kill_router(state_dir)
        kill_instances(state_dir)
    return report(requests, windows)


def report(requests: list[Request], windows: list[Window]) -> dict[str, Any]:
    groups = classify(requests, windows)
    during = [r for kind, rs in groups.items() if kind in STRATEGIES for r in rs]
    outside = figures(groups["outside"])
    during_figures = figures(during)
    extra = (
        None
        if during_figures["p99_ms"] is None or outside["p99_ms"] is None
        else round(during_figures["p99_ms"] - outside["p99_ms"], 2)
    )
    failed = sum(1 for r in requests if r.failed)
    return {
        "total": figures(requests),
        "outside": outside,
        "during_releases": during_figures,
        "by_window_kind": {kind: figures(rs) for kind, rs in groups.items() if kind != "outside"},
        "p99_during_minus_outside_ms": extra,
        "windows": [
            {"kind": w.kind, "index": w.index, **w.detail}
            for w in sorted(windows, key=lambda w: w.start)
        ],
        "goal": {
            "failed": GOAL_FAILED,
            "p99_extra_ms": GOAL_P99_EXTRA_S * 1000,
            "met": failed <= GOAL_FAILED and extra is not None and extra <= GOAL_P99_EXTRA_S * 1000,
        },
    }


def print_summary(results: dict[str, Any]) -> None:
    def line(name: str, f: dict[str, Any]) -> str:
        return (
            f"{name:<17} {f['requests']:>7} req  {f['failed']:>4} failed  "
            f"p50 {f['p50_ms']}  p99 {f['p99_ms']}  p99.9 {f['p999_ms']}  max {f['max_ms']} (ms)"
        )

    print(line("outside", results["outside"]))
    print(line("during releases", results["during_releases"]))
    for kind, f in results["by_window_kind"].items():
        print(line(f"  {kind}", f))
        if f["failed_by_status"]:
            print(f"{'':<19}failures: {f['failed_by_status']}")
    goal = results["goal"]
    print(
        f"p99 during - outside: {results['p99_during_minus_outside_ms']} ms "
        f"(goal <= {goal['p99_extra_ms']:.0f} ms, {goal['failed']} failed): "
        + ("met" if goal["met"] else "NOT met")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_worker:
        load_worker(args)
        return 0
    config = {
        "releases_per_strategy": args.releases,
        "controller_kills": args.kills,
        "connections": args.connections,
        "rate_rps": args.rate,
        "quiet_s": args.quiet,
        "replicas": 2,
        "strategies": STRATEGIES,
        "app": "asyncio keep-alive HTTP/1.1, answers its version",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with bounded(args.budget), tempfile.TemporaryDirectory(prefix="ondeck-zd-") as tmp:
        print(
            f"{args.connections} connections at {args.rate:.0f} req/s; "
            f"{args.releases} releases per strategy, {args.kills} controller kills"
        )
        results = run(args, Path(tmp))
    path = save_results("zero_downtime", config, results)
    print_summary(results)
    print(f"wrote {path}")
    print(json.dumps(results["goal"]))
    return 0 if results["goal"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
