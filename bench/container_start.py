"""Benchmark of instance start-up: container runtime vs process runtime, start() -> healthy.

The same tiny app runs both ways: busybox httpd serving a static /healthz. As a
process, the static busybox binary runs directly under `ProcessRuntime`; as a
container, the test image (tests/fixtures/images/build.sh, built locally, no
registry) runs under `ContainerRuntime` on Podman. Each sample is the time from
calling `start()` to the first HTTP 200 on 127.0.0.1:PORT/healthz (polled every
millisecond), with the time `start()` itself took recorded alongside. The two
runtimes alternate, after one unrecorded warm-up each; every instance is stopped
before the next starts.

Run as root: `.venv/bin/python bench/container_start.py [--runs 10]`; writes
bench/results/container_start.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from common import bounded, describe, free_port, http_ok, save_results, summarize, wait_for
from ondeck.runtime.base import ContainerOptions, ExitEvent, Handle, InstanceSpec
from ondeck.runtime.container import ContainerRuntime
from ondeck.runtime.process import ProcessRuntime, supervisor_id

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests" / "fixtures" / "images" / "build.sh"
WWW = ROOT / "tests" / "fixtures" / "images" / "app" / "www"
SETUP = ROOT / "scripts" / "podman-setup.sh"
BUSYBOX = "/bin/busybox"
HEALTHY_WITHIN = 30.0
POLL = 0.001


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="measured starts per runtime")
    p.add_argument("--budget", type=float, default=600.0, help="hard limit, seconds")
    return p.parse_args(argv)


@dataclass
class Samples:
    """Per runtime: seconds to healthy, and seconds `start()` itself took."""

    healthy: list[float] = field(default_factory=list)
    start_call: list[float] = field(default_factory=list)


Starter = Callable[[InstanceSpec], Awaitable[Handle]]
Stopper = Callable[[Handle], Awaitable[object]]


async def measure(start: Starter, stop: Stopper, spec: InstanceSpec, into: Samples | None) -> None:
    """One start -> healthy -> stop; recorded into `into` unless it is a warm-up."""
    port = spec.port or 0
    began = time.perf_counter()
    handle = await start(spec)
    started = time.perf_counter()
    try:
        await asyncio.to_thread(
            wait_for, lambda: http_ok(port), f"{spec.id} healthy", HEALTHY_WITHIN, POLL
        )
        healthy = time.perf_counter()
    finally:
        await stop(handle)
    if into is not None:
        into.healthy.append(healthy - began)
        into.start_call.append(started - began)


def spec_for(kind: str, n: int, tmp: Path) -> InstanceSpec:
    """A container keeps its image's command; a process runs busybox httpd itself."""
    port = free_port()
    httpd = ("/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(WWW))
    return InstanceSpec(
        id=f"{kind}-{n}",
        app="bench",
        env="bench",
        service="web",
        argv=() if kind == "container" else httpd,
        environ={"PORT": str(port)},
        cwd=tmp,
        log_path=tmp / "logs" / f"{kind}-{n}.log",
        port=port,
    )


async def run(tmp: Path, url: str, image: str, runs: int) -> dict[str, Samples]:
    samples = {"container": Samples(), "process": Samples()}

    def ignore(_event: ExitEvent) -> None:
        pass

    containers = ContainerRuntime(tmp / "state", ignore, host=url)
    processes = ProcessRuntime(tmp / "state", ignore)
    options = ContainerOptions(image=image, container_port=8080, pull="never")
    starters: dict[str, tuple[Starter, Stopper]] = {
        "container": (
            lambda spec: containers.start(spec, options),
            lambda handle: containers.stop(handle, "TERM", 10.0),
        ),
        "process": (processes.start, lambda handle: processes.stop(handle, "TERM", 10.0)),
    }
    try:
        for n in range(runs + 1):  # n == 0 is each runtime's warm-up, not recorded
            for kind, (start, stop) in starters.items():
                into = samples[kind] if n else None
                await measure(start, stop, spec_for(kind, n, tmp), into)
    finally:
        containers.close()
        processes.close()
    return samples


@contextlib.contextmanager
def podman_engine(tmp: Path) -> Iterator[str]:
    """A private `podman system service` for this run, stopped at the end."""
    if shutil.which("podman") is None:
        subprocess.run(["bash", str(SETUP)], check=True)
    url = f"unix://{tmp}/podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _answers(url), "podman system service", 20.0)
        yield url
    finally:
        service.terminate()
        service.wait(20.0)


def _answers(url: str) -> bool:
    try:
        docker.DockerClient(base_url=url).close()
    except docker.errors.DockerException:
        return False
    return True


@contextlib.contextmanager
def test_image() -> Iterator[str]:
    """The app image, built locally for this run and removed afterwards."""
    repo = f"localhost/ondeck-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["bash", str(BUILD), repo], check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"{repo}:1"
    finally:
        subprocess.run(["bash", str(BUILD), "--remove", repo], check=True)


def remove_leftovers(url: str, state_dir: Path) -> None:
    """Containers of this run that an interrupted sample may have left."""
    with contextlib.suppress(docker.errors.DockerException):
        client = docker.DockerClient(base_url=url)
        label = f"ondeck.supervisor={supervisor_id(state_dir)}"
        for summary in client.api.containers(all=True, filters={"label": label}):
            client.api.remove_container(summary["Id"], force=True)
        client.close()


def report(samples: dict[str, Samples]) -> dict[str, object]:
    results: dict[str, object] = {}
    for kind, s in samples.items():
        results[kind] = {
            "start_to_healthy_s": summarize(s.healthy),
            "start_call_s": summarize(s.start_call),
        }
        print(f"{kind:9}  start() -> healthy: {describe(summarize(s.healthy))}")
        print(f"{'':9}  start() call alone: {describe(summarize(s.start_call))}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(BUSYBOX).is_file():
        print(f"{BUSYBOX} is missing: run `sudo bash {SETUP}`", file=sys.stderr)
        return 1
    with (
        bounded(args.budget),
        tempfile.TemporaryDirectory(prefix="ondeck-bench-", dir="/tmp") as tmp_name,
    ):
        tmp = Path(tmp_name)
        (tmp / "state").mkdir()
        with podman_engine(tmp) as url, test_image() as image:
            try:
                samples = asyncio.run(run(tmp, url, image, args.runs))
            finally:
                remove_leftovers(url, tmp / "state")
    config = {"runs": args.runs, "warmup": 1, "poll_s": POLL, "app": "busybox httpd"}
    path = save_results("container_start", config, report(samples))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
