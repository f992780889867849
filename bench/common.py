"""Shared pieces of the benchmarks: a git repo, a tiny app, a real `ondeck up`, numbers.

Each `bench/*.py` script drives real processes (git, `python -m ondeck up`,
app instances) on loopback in a temporary directory, and writes its figures
to `bench/results/NAME.json` with the machine they were taken on. Every wait
has a deadline, and `cleanup` kills every controller and instance it started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx

import ondeck
from ondeck.runtime.process import ProcessRuntime
from ondeck.store import InstanceRecord, Store

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench Mark",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench Mark",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# The app every benchmark deploys: one blocking socket loop, no imports beyond
# `os` and `socket`, so its own start-up is as small as a Python app's can be.
# Any request gets `200 ok` (so it serves both `http: /healthz` and `tcp: true`);
# SIGTERM keeps its default action, so a stop is immediate.
APP_SOURCE = """\
import os
import socket

REPLY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen(128)
while True:
    conn, _ = server.accept()
    with conn:
        try:
            conn.settimeout(1.0)
            conn.recv(4096)
            conn.sendall(REPLY)
        except OSError:
            pass
"""


def app_python() -> str:
    """The interpreter that runs the app, by absolute path.

    `python3` on PATH may be a version-manager shim (pyenv's costs ~60 ms per
    start); the benchmarks measure ondeck, not the shim.
    """
    base = Path(sys.base_prefix) / "bin" / "python3"
    return str(base) if base.is_file() else sys.executable


# -- numbers ------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, p90 (nearest rank), max and mean of `samples`."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p90 = ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p90": p90,
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def describe(stats: dict[str, float | int]) -> str:
    """One line: median, p90, max (and n) in milliseconds."""
    if not stats.get("n"):
        return "no samples"
    return (
        f"median {ms(stats['median'])}, p90 {ms(stats['p90'])}, "
        f"max {ms(stats['max'])} (n={stats['n']})"
    )


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _output(["git", "--version"]),
        "ondeck": ondeck.__version__,
        "ondeck_commit": _output(["git", "-C", str(RESULTS.parent.parent), "rev-parse", "HEAD"]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_at_save": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None


def _mem_total_mb() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return None


def _output(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    return None


def save_results(name: str, config: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write `bench/results/NAME.json` (machine info, config, results) atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine_info(), "config": config, "results": results}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# -- waiting and bounding -----------------------------------------------------------


class BenchTimeout(Exception):
    """A wait ran past its deadline, or the whole script past its budget."""


def wait_for(check: Callable[[], T | None], what: str, timeout: float, every: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; BenchTimeout after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise BenchTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def bounded(budget: float) -> Iterator[None]:
    """The whole script gets `budget` seconds; SIGTERM/SIGINT/SIGHUP unwind it (so
    every `finally` and cleanup runs) instead of killing it where it stands."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise BenchTimeout(f"benchmark exceeded its {budget:.0f}s budget")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(int(budget), 1))
    try:
        yield
    finally:
        signal.alarm(0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- git ------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


class Repo:
    """A working repo that plays the git remote `ondeck up` follows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed_at = 0.0  # wall clock just after the last `git commit` returned
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        (path / "app.py").write_text(APP_SOURCE)

    def commit(self, message: str, spec: str) -> str:
        (self.path / "ondeck.yaml").write_text(spec)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        self.committed_at = time.time()
        return git(self.path, "rev-parse", "HEAD")


@dataclass(frozen=True)
class ServiceSpec:
    """What one service of a generated `ondeck.yaml` looks like."""

    name: str
    version: str = "1"
    replicas: int = 1
    health: str = "{http: /healthz, interval: 1s}"
    extra: dict[str, str] = field(default_factory=dict)


def spec_yaml(services: Sequence[ServiceSpec], app: str = "bench") -> str:
    """An `ondeck.yaml` running the tiny app once per service entry."""
    command = json.dumps([app_python(), "app.py"])
    lines = [f"app: {app}", "services:"]
    for svc in services:
        lines += [
            f"  {svc.name}:",
            f"    command: {command}",
            f'    version: "{svc.version}"',
            "    port: true",
            f"    replicas: {svc.replicas}",
            f"    health: {svc.health}",
            "    stop: {grace: 5s}",
        ]
        lines += [f"    {key}: {value}" for key, value in svc.extra.items()]
    return "\n".join(lines) + "\n"


# -- the app on its own -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ok(port: int, path: str = "/healthz", timeout: float = 0.5) -> bool:
    """True when `GET path` on 127.0.0.1:port answers 2xx right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def app_startup_once(workdir: Path, poll: float = 0.001, timeout: float = 10.0) -> float:
    """Seconds from spawning the app directly until /healthz answers 200."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [app_python(), "app.py"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: http_ok(port), "the app to answer", timeout, every=poll)
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait(timeout=10)


def app_startup(workdir: Path, repeats: int) -> dict[str, float | int]:
    """The app's own start-up time, measured `repeats` times (after one warm-up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "app.py").write_text(APP_SOURCE)
    app_startup_once(workdir)
    return summarize([app_startup_once(workdir) for _ in range(repeats)])


# -- a real `ondeck up` ------------------------------------------------------------------


class Controller:
    """A real `python -m ondeck up` process, its API, and a read-only view of its store."""

    def __init__(self, repo: Path, state_dir: Path, *flags: str) -> None:
        self.repo, self.state_dir, self.flags = repo, state_dir, flags
        self.log_path = state_dir.parent / f"{state_dir.name}-up.log"
        self.env = {**os.environ, "ONDECK_STATE_DIR": str(state_dir)}
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None
        self._store: Store | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the controller is not running")
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Controller:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "api.json").unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            argv = [sys.executable, "-m", "ondeck", "up", str(self.repo)]
            self.proc = subprocess.Popen(
                [*argv, "--api", "127.0.0.1:0", *self._router_flags(), *self.flags],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(lambda: (self.state_dir / "api.json").exists() or self._died(), "the API", timeout)
        url = json.loads((self.state_dir / "api.json").read_text())["url"]
        token = (self.state_dir / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=60.0)
        return self

    def _router_flags(self) -> list[str]:
        """No router unless a benchmark asks for one: never a stray on port 8080."""
        return [] if "--listen" in self.flags else ["--listen", "none"]

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ondeck up exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("the controller is not started")
        return self._http

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def sync(self, timeout: float = 120.0) -> dict[str, Any]:
        """`POST /api/v1/sync {"wait": true}`: fetch now and wait for the sync."""
        body = {"wait": True, "timeout": timeout}
        response = self.http.post("/api/v1/sync", json=body, timeout=timeout + 10)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def sync_cli(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`ondeck sync --wait`, the command a user or a CI job would type."""
        argv = [sys.executable, "-m", "ondeck", "sync", "--wait"]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=True
        )

    def env_status(self, name: str = "default") -> dict[str, Any]:
        doc = self.get("/api/v1/status")
        return next(e for e in doc["environments"] if e["name"] == name)

    def wait_synced(self, revision: str | None, timeout: float, every: float = 0.2) -> None:
        def check() -> bool:
            env = self.env_status()
            self._died()
            return (
                env["sync"] == "Synced"
                and env["health"] == "Healthy"
                and (revision is None or env["live_revision"] == revision)
            )

        wait_for(check, f"Synced/Healthy at {revision}", timeout, every)

    def metrics(self) -> str:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return response.text

    def instances(self) -> list[InstanceRecord]:
        """The controller's own instance records, with its timestamps (read from SQLite)."""
        return self.store().instances()

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The controller's events (exits, health failures), newest first, from SQLite."""
        return self.store().events(limit=limit)

    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.state_dir / "ondeck.db")
        return self._store

    def cleanup(self) -> None:
        """Kill the controller and every instance of its state dir; idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None
        kill_instances(self.state_dir)


def kill_instances(state_dir: Path) -> int:
    """SIGKILL every instance a controller with this state dir started (by its environ marker)."""
    runtime = ProcessRuntime(state_dir, lambda _: None)
    handles = runtime.scan()
    for handle in handles.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.pid, signal.SIGKILL)
    runtime.close()
    return len(handles)


# -- /proc and /metrics ---------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU a process used itself, and its reaped children used."""

    own: float
    children: float


def cpu_times(pid: int) -> CpuTimes:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: utime, stime, cutime, cstime are fields 14-17 (1-based).
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return CpuTimes((utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def histogram(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram, over all its label sets."""
    total, count = 0.0, 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def jitter(maximum: float) -> None:
    """Sleep a random time up to `maximum`, so samples do not lock onto a timer's phase."""
    time.sleep(random.uniform(0.0, maximum))
