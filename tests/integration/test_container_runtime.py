"""The container runtime against real Podman: start, exit events, stop, adoption, scan,
volumes, limits and images.

Images are built locally from busybox-static (tests/fixtures/images/build.sh), no
registry needed. The session runs its own `podman system service` on a private socket.
Every container, volume and image a test creates has a name unique to this run and is
removed in a finalizer. Waits are on events or conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from ondeck.errors import RuntimeFailure
from ondeck.runtime.base import ContainerOptions, ExitEvent, Handle, InstanceSpec
from ondeck.runtime.container import (
    ContainerRuntime,
    decode_cri_log,
    service_socket,
)
from ondeck.runtime.process import allocate_port, read_start_ticks, supervisor_id

pytestmark = pytest.mark.timeout(120)

DEADLINE = 20.0
ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "podman-setup.sh"
BUILD = ROOT / "tests" / "fixtures" / "images" / "build.sh"
CONF = Path("/etc/containers/containers.conf")
RUN = uuid.uuid4().hex[:8]
IGNORE_TERM = ("/bin/sh", "-c", 'trap "" TERM; echo ignoring TERM; sleep 600')


# -- the engine, the images ----------------------------------------------------------------


def _podman_ready() -> bool:
    if shutil.which("podman") is None or not CONF.exists():
        return False
    conf = CONF.read_text()
    return '"runc"' in conf and "nofile=1024:1024" in conf


@pytest.fixture(scope="session")
def podman() -> None:
    """Podman installed and configured; skipped only off CI without root."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the container runtime tests need root (Podman with runc) or CI=true")
    if not _podman_ready():
        subprocess.run(["bash", str(SETUP)], check=True)


@dataclass(frozen=True)
class Engine:
    url: str
    client: docker.DockerClient


@pytest.fixture(scope="session")
def engine(podman: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A private `podman system service` for this session, stopped at its end."""
    sock = tmp_path_factory.mktemp("engine") / "podman.sock"
    url = f"unix://{sock}"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = _connect_within_deadline(url)
        yield Engine(url, client)
        client.close()
    finally:
        service.terminate()
        service.wait(DEADLINE)


def _connect_within_deadline(url: str) -> docker.DockerClient:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return docker.DockerClient(base_url=url)
        except docker.errors.DockerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass(frozen=True)
class Images:
    repo: str

    def tag(self, version: int) -> str:
        return f"{self.repo}:{version}"


@pytest.fixture(scope="session")
def images(engine: Engine) -> Iterator[Images]:
    repo = f"localhost/ondeck-test-{RUN}"
    subprocess.run(["bash", str(BUILD), repo], check=True, stdout=subprocess.DEVNULL)
    try:
        yield Images(repo)
    finally:
        subprocess.run(["bash", str(BUILD), "--remove", repo], check=True)


# -- per test: a state dir, exits, and cleanup -----------------------------------------------


class Exits:
    """Collects on_exit events; tests await them instead of sleeping."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ExitEvent] = asyncio.Queue()
        self.seen: list[ExitEvent] = []

    def __call__(self, event: ExitEvent) -> None:
        self.seen.append(event)
        self.queue.put_nowait(event)

    async def next(self) -> ExitEvent:
        return await asyncio.wait_for(self.queue.get(), DEADLINE)


@dataclass
class World:
    tmp: Path
    engine: Engine
    images: Images
    state_dirs: list[Path] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def runtime(self, exits: Exits, state: str = "state") -> ContainerRuntime:
        state_dir = self.tmp / state
        state_dir.mkdir(exist_ok=True)
        self.state_dirs.append(state_dir)
        return ContainerRuntime(state_dir, exits, host=self.engine.url)

    def spec(self, instance: str, argv: tuple[str, ...] = (), **extra: Any) -> InstanceSpec:
        environ = {"ONDECK_INSTANCE": instance, "GREETING": "hi", "PATH": os.environ["PATH"]}
        return InstanceSpec(
            id=instance,
            app="shop",
            env="test",
            service="web",
            argv=argv,
            environ=environ,
            cwd=self.tmp,
            log_path=self.tmp / "logs" / f"{instance}.log",
            **extra,
        )

    def options(self, version: int = 1, **extra: Any) -> ContainerOptions:
        extra.setdefault("container_port", 8080)
        return ContainerOptions(image=self.images.tag(version), **extra)

    def volume(self, purpose: str) -> str:
        name = f"ondeck-test-{RUN}-{purpose}"
        self.volumes.append(name)
        return name

    def inspect(self, name: str) -> dict[str, Any] | None:
        try:
            attrs: dict[str, Any] = self.engine.client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        return attrs

    def foreign(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A running container ondeck did not start (or another state dir did)."""
        self.containers.append(name)
        self.engine.client.containers.run(
            self.images.tag(1), ["sleep", "600"], name=name, labels=labels or {}, detach=True
        )
        attrs = self.inspect(name)
        assert attrs is not None
        return attrs


@pytest.fixture
def world(tmp_path: Path, engine: Engine, images: Images) -> Iterator[World]:
    w = World(tmp_path, engine, images)
    try:
        yield w
    finally:
        _clean(w)


def _clean(w: World) -> None:
    api = w.engine.client.api
    for state_dir in w.state_dirs:
        label = f"ondeck.supervisor={supervisor_id(state_dir)}"
        for summary in api.containers(all=True, filters={"label": label}):
            api.remove_container(summary["Id"], force=True, v=True)
    for name in w.containers:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(name, force=True, v=True)
    for volume in w.volumes:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(volume, force=True)


# -- waiting --------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def http_get(port: int, path: str = "/") -> tuple[int, str]:
    """The first answer of the app on 127.0.0.1:PORT, retried until the deadline."""
    deadline = time.monotonic() + DEADLINE
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}{path}")
                return response.status_code, response.text
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)


def logged(spec: InstanceSpec) -> str:
    """What the app wrote to stdout and stderr so far, from the k8s-file log."""
    try:
        return decode_cri_log(spec.log_path.read_bytes()).decode()
    except FileNotFoundError:
        return ""


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# -- pure helpers --------------------------------------------------------------------------


def test_decode_cri_log_joins_partial_lines_and_keeps_foreign_lines() -> None:
    data = (
        b"2026-01-01T00:00:00.1+00:00 stdout F hello\n"
        b"2026-01-01T00:00:00.2+00:00 stdout P par\n"
        b"2026-01-01T00:00:00.3+00:00 stderr F tial\n"
        b"2026-01-01T00:00:00.4+00:00 stdout F \n"
        b"not a cri line\n"
    )
    assert decode_cri_log(data) == b"hello\npartial\n\nnot a cri line\n"


def test_service_socket_stays_short_for_long_state_dirs(tmp_path: Path) -> None:
    assert service_socket(tmp_path) == tmp_path.resolve() / "podman.sock"
    deep = tmp_path / ("x" * 120)
    assert len(str(service_socket(deep))) < 108


# -- start -----------------------------------------------------------------------------------


def test_start_serves_on_loopback_with_env_labels_and_logs(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = world.runtime(exits)
        spec = world.spec("web-1", port=allocate_port(), labels={"revision": "abc123"})
        handle = await runtime.start(spec, world.options(1))
        assert spec.port is not None
        assert await http_get(spec.port) == (200, "version 1\n")
        assert await http_get(spec.port, "/healthz") == (200, "ok\n")
        attrs = world.inspect(runtime.name_of("web-1"))
        assert attrs is not None
        assert attrs["State"]["Pid"] == handle.pid
        assert handle.start_ticks == read_start_ticks(handle.pid)
        assert runtime.is_alive(handle)
        labels = attrs["Config"]["Labels"]
        assert {k: v for k, v in labels.items() if k.startswith("ondeck.")} == {
            "ondeck.supervisor": supervisor_id(world.tmp / "state"),
            "ondeck.app": "shop",
            "ondeck.env": "test",
            "ondeck.service": "web",
            "ondeck.instance": "web-1",
            "ondeck.revision": "abc123",
        }
        env = set(attrs["Config"]["Env"])
        assert {"GREETING=hi", "ONDECK_INSTANCE=web-1"} <= env
        assert f"PATH={os.environ['PATH']}" not in env  # the host's PATH stays on the host
        bindings = attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
        await wait_until(lambda: "app stderr check" in logged(spec), "both streams logged")
        assert "app version 1 starting, greeting=hi" in logged(spec)
        chunks = [chunk async for chunk in runtime.logs(handle, follow=False)]
        assert b"greeting=hi" in b"".join(chunks)
        assert await runtime.stop(handle, "TERM", 10) == 0
        assert "app got TERM" in logged(spec)  # the log outlives the container
        assert world.inspect(runtime.name_of("web-1")) is None
        assert [e.id for e in exits.seen] == ["web-1"]
        runtime.close()

    run(scenario)


def test_start_failure_names_the_problem_and_leaves_no_container(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        spec = world.spec("web-1", argv=("/no/such/binary",))
        with pytest.raises(RuntimeFailure, match=r"cannot start instance web-1.*no/such/binary"):
            await runtime.start(spec, world.options(1, container_port=None))
        assert world.inspect(runtime.name_of("web-1")) is None
        runtime.close()

    run(scenario)


def test_start_refuses_a_foreign_container_holding_the_name(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        name = runtime.name_of("web-1")
        before = world.foreign(name)
        with pytest.raises(RuntimeFailure, match="did not start"):
            await runtime.start(world.spec("web-1"), world.options(1, container_port=None))
        after = world.inspect(name)
        assert after is not None and after["State"]["Pid"] == before["State"]["Pid"]
        runtime.close()

    run(scenario)


def test_restart_with_the_same_instance_id_replaces_the_exited_container(world: World) -> None:
    async def scenario() -> None:
        first = world.runtime(Exits())
        spec = world.spec("web-1", port=allocate_port())
        handle = await first.start(spec, world.options(1))
        first.close()  # nobody removes the container when it dies now
        os.kill(handle.pid, signal.SIGKILL)
        name = first.name_of("web-1")
        await wait_until(lambda: not _running(world, name), "the engine to see the exit")
        second = world.runtime(Exits())
        again = await second.start(spec, world.options(2))
        assert spec.port is not None
        assert await http_get(spec.port) == (200, "version 2\n")
        await second.stop(again, "TERM", 10)
        second.close()

    run(scenario)


def _running(world: World, name: str) -> bool:
    attrs = world.inspect(name)
    return attrs is not None and bool(attrs["State"]["Running"])


# -- exits and stop --------------------------------------------------------------------------


def test_kill_9_of_the_main_process_fires_on_exit_once_with_the_code(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = world.runtime(exits)
        handle = await runtime.start(world.spec("web-1"), world.options(1, container_port=None))
        os.kill(handle.pid, signal.SIGKILL)
        event = await exits.next()
        assert event == ExitEvent(id="web-1", pid=handle.pid, exit_code=137)
        assert not runtime.is_alive(handle)
        assert world.inspect(runtime.name_of("web-1")) is None  # removed once reported
        assert await runtime.stop(handle, "TERM", 1) is None  # already gone
        assert len(exits.seen) == 1
        runtime.close()

    run(scenario)


def test_stop_escalates_to_kill_when_term_is_ignored(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = world.runtime(exits)
        spec = world.spec("web-1", argv=IGNORE_TERM)
        handle = await runtime.start(spec, world.options(1, container_port=None))
        await wait_until(lambda: "ignoring TERM" in logged(spec), "the trap to be set")
        began = time.monotonic()
        assert await runtime.stop(handle, "TERM", 0.5) == 137
        assert time.monotonic() - began >= 0.5  # TERM had its grace before KILL
        assert world.inspect(runtime.name_of("web-1")) is None
        assert [e.exit_code for e in exits.seen] == [137]
        runtime.close()

    run(scenario)


def test_stop_rejects_an_unknown_signal_and_touches_nothing(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        handle = await runtime.start(world.spec("web-1"), world.options(1, container_port=None))
        with pytest.raises(RuntimeFailure, match="unknown stop signal"):
            await runtime.stop(handle, "NOPE", 1)
        assert runtime.is_alive(handle)
        await runtime.stop(handle, "TERM", 10)
        runtime.close()

    run(scenario)


# -- adoption and scan -----------------------------------------------------------------------


def test_a_new_runtime_scans_adopts_and_sees_the_exit(world: World) -> None:
    async def scenario() -> None:
        old_exits, new_exits = Exits(), Exits()
        old = world.runtime(old_exits)
        spec = world.spec("web-1", port=allocate_port())
        handle = await old.start(spec, world.options(1))
        old.close()  # the controller goes away; the container keeps serving and logging
        assert spec.port is not None
        assert await http_get(spec.port) == (200, "version 1\n")
        await wait_until(lambda: "response:200" in logged(spec), "the request to be logged")
        new = world.runtime(new_exits)
        assert new.scan() == {"web-1": handle}
        stale = Handle(id="web-1", pid=handle.pid, start_ticks=handle.start_ticks + 1)
        assert not new.adopt(stale)
        assert new.adopt(handle)
        assert new.is_alive(handle)
        os.kill(handle.pid, signal.SIGKILL)
        assert await new_exits.next() == ExitEvent("web-1", handle.pid, 137)
        assert old_exits.seen == []
        assert new.scan() == {}
        new.close()

    run(scenario)


def test_scan_and_stop_leave_foreign_containers_alone(world: World) -> None:
    async def scenario() -> None:
        exits = Exits()
        runtime = world.runtime(exits)
        ours = await runtime.start(world.spec("web-1"), world.options(1, container_port=None))
        unlabelled = world.foreign(f"ondeck-test-{RUN}-plain")
        other = world.foreign(
            f"ondeck-test-{RUN}-other",
            {"ondeck.supervisor": "0123456789abcdef", "ondeck.instance": "web-2"},
        )
        assert runtime.scan() == {"web-1": ours}
        for attrs in (unlabelled, other):
            pid = attrs["State"]["Pid"]
            ticks = read_start_ticks(pid)
            assert ticks is not None
            foreign = Handle(id="web-2", pid=pid, start_ticks=ticks)
            assert not runtime.adopt(foreign)
            assert await runtime.stop(foreign, "KILL", 1) is None
            assert _running(world, attrs["Name"].lstrip("/"))
        await runtime.stop(ours, "TERM", 10)
        assert _running(world, f"ondeck-test-{RUN}-plain")
        assert _running(world, f"ondeck-test-{RUN}-other")
        assert [e.id for e in exits.seen] == ["web-1"]
        runtime.close()

    run(scenario)


def test_two_state_dirs_never_see_each_others_containers(world: World) -> None:
    async def scenario() -> None:
        one = world.runtime(Exits(), "one")
        two = world.runtime(Exits(), "two")
        handle = await one.start(world.spec("web-1"), world.options(1, container_port=None))
        assert two.scan() == {}
        assert not two.adopt(handle)
        assert one.scan() == {"web-1": handle}
        await one.stop(handle, "TERM", 10)
        one.close()
        two.close()

    run(scenario)


# -- volumes and limits ----------------------------------------------------------------------


def test_a_named_volume_keeps_its_data_across_stop_and_start(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        volume = world.volume("data")
        options = world.options(1, container_port=None, volumes={volume: "/data"})
        write = ("/bin/sh", "-c", "echo kept-$GREETING > /data/marker; echo written; sleep 600")
        first = world.spec("web-1", argv=write)
        handle = await runtime.start(first, options)
        await wait_until(lambda: "written" in logged(first), "the data to be written")
        await runtime.stop(handle, "KILL", 1)
        assert world.engine.client.volumes.get(volume).name == volume  # stop keeps volumes
        read = ("/bin/sh", "-c", "cat /data/marker; sleep 600")
        second = world.spec("web-2", argv=read)
        handle = await runtime.start(second, options)
        await wait_until(lambda: "kept-hi" in logged(second), "the data to be read back")
        await runtime.stop(handle, "KILL", 1)
        runtime.close()

    run(scenario)


def test_memory_and_cpu_limits_are_set_on_the_container(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        options = world.options(1, container_port=None, memory=64 * 1024 * 1024, cpus=0.5)
        handle = await runtime.start(world.spec("web-1"), options)
        attrs = world.inspect(runtime.name_of("web-1"))
        assert attrs is not None
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        await runtime.stop(handle, "TERM", 10)
        runtime.close()

    run(scenario)


# -- images ------------------------------------------------------------------------------------


def test_pull_never_with_a_missing_image_fails_and_creates_nothing(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        missing = f"localhost/ondeck-test-{RUN}-missing:1"
        with pytest.raises(
            RuntimeFailure, match=rf"{re.escape(missing)} is not on this host.*'never'"
        ):
            await runtime.ensure_image(missing, pull="never")
        options = ContainerOptions(image=missing, container_port=None, pull="never")
        with pytest.raises(RuntimeFailure, match="not on this host"):
            await runtime.start(world.spec("web-1"), options)
        assert world.inspect(runtime.name_of("web-1")) is None
        runtime.close()

    run(scenario)


def test_pull_missing_uses_a_local_image_without_pulling(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        lines: list[str] = []
        # No registry is reachable: any pull attempt would fail.
        await runtime.ensure_image(world.images.tag(2), pull="missing", progress=lines.append)
        await runtime.ensure_image(world.images.tag(2), pull="never", progress=lines.append)
        assert lines == []
        runtime.close()

    run(scenario)


def test_a_failed_pull_is_a_clear_failure_and_running_containers_stay(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        handle = await runtime.start(world.spec("web-1"), world.options(1, container_port=None))
        unreachable = f"127.0.0.1:9/ondeck-test/{RUN}:1"
        with pytest.raises(
            RuntimeFailure, match=rf"cannot pull image {re.escape(unreachable)}.*registry"
        ):
            await runtime.ensure_image(unreachable, pull="missing")
        with pytest.raises(
            RuntimeFailure, match=rf"cannot pull image {re.escape(world.images.tag(1))}"
        ):
            await runtime.ensure_image(world.images.tag(1), pull="always")
        assert runtime.is_alive(handle)
        assert runtime.scan() == {"web-1": handle}
        await runtime.stop(handle, "TERM", 10)
        runtime.close()

    run(scenario)


def test_an_unknown_pull_policy_is_a_bug(world: World) -> None:
    async def scenario() -> None:
        runtime = world.runtime(Exits())
        with pytest.raises(ValueError, match="pull policy"):
            await runtime.ensure_image(world.images.tag(1), pull="sometimes")
        runtime.close()

    run(scenario)


# -- finding the engine ------------------------------------------------------------------------


def test_an_unreachable_engine_says_what_to_do(tmp_path: Path, podman: None) -> None:
    with pytest.raises(RuntimeFailure, match=r"cannot reach the container engine.*running"):
        ContainerRuntime(tmp_path, Exits(), host=f"unix://{tmp_path}/none.sock")


def test_without_a_host_a_podman_service_is_started_once_and_reused(
    tmp_path: Path, podman: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    state_dir = tmp_path / "state"
    url = f"unix://{service_socket(state_dir)}"
    try:
        first = ContainerRuntime(state_dir, Exits())
        assert first.scan() == {}
        first.close()
        second = ContainerRuntime(state_dir, Exits())
        assert second.scan() == {}
        second.close()
        assert len(_service_pids(url)) == 1
    finally:
        for pid in _service_pids(url):  # the one service this test made, by its own socket
            os.kill(pid, signal.SIGTERM)


def _service_pids(url: str) -> list[int]:
    wanted = ["podman", "system", "service", "--time=0", url]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
                if argv == wanted:
                    pids.append(int(entry.name))
    return pids
