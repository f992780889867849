"""The container runtime: app instances as containers of a Docker-API engine.

The controller drives `ContainerRuntime` like `ProcessRuntime` (start, stop, adopt,
scan, is_alive, close), plus `ensure_image` before a rollout. Docker and Podman
(`podman system service`) both speak the API. Containers carry labels naming this
state dir, so `scan` finds ours and only ours; a pidfd on the container's main
process reports its exit as an event and the engine supplies the exit code. The
engine writes stdout/stderr to `spec.log_path` (`k8s-file` log driver), so logs keep
flowing while the controller is down. Every docker SDK error becomes a
`RuntimeFailure` in `_engine_errors`, the one boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal as signals
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from ondeck.errors import RuntimeFailure
from ondeck.runtime.base import ContainerOptions, ExitCallback, ExitEvent, Handle, InstanceSpec
from ondeck.runtime.process import read_start_ticks, supervisor_id
from ondeck.spec.template import PASSTHROUGH

log = logging.getLogger("ondeck")

LABEL_PREFIX = "ondeck."
SUPERVISOR_LABEL = "ondeck.supervisor"
INSTANCE_LABEL = "ondeck.instance"
PULL_POLICIES = ("always", "missing", "never")
KILL_WAIT = 30.0  # a SIGKILLed container still running after this is stuck
EXIT_STATE_WAIT = 10.0  # the engine records an exit a few ms after the pidfd reports it
SERVICE_START_WAIT = 20.0
API_TIMEOUT = 60
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_CRI_LINE = re.compile(rb"^\S+ (?:stdout|stderr) ([FP]) ?(.*)$", re.DOTALL)


def container_name(supervisor: str, instance_id: str) -> str:
    """The deterministic container name of an instance: found again after any crash."""
    return f"ondeck-{supervisor}-{_NAME_UNSAFE.sub('_', instance_id)}"


def decode_cri_log(data: bytes) -> bytes:
    """The raw output in a `k8s-file` log (`TIME STREAM F|P TEXT` lines): what the app
    wrote, partial (`P`) lines joined; lines in another format pass through unchanged."""
    out = bytearray()
    for line in data.splitlines(keepends=True):
        match = _CRI_LINE.match(line.rstrip(b"\n"))
        if match is None:
            out += line
        else:
            out += match.group(2) + (b"\n" if match.group(1) == b"F" else b"")
    return bytes(out)


# -- the engine boundary ----------------------------------------------------------------


class _Gone(RuntimeFailure):
    """The engine has no such container or image (callers often expect that)."""


class _Refused(RuntimeFailure):
    """The engine refused because of the container's state (e.g. it is not running)."""


@contextlib.contextmanager
def _engine_errors(doing: str) -> Iterator[None]:
    """The one place docker SDK errors become ondeck's: `doing` says what failed."""
    try:
        yield
    except docker.errors.NotFound as err:
        raise _Gone(f"{doing}: {_reason(err)}") from err
    except docker.errors.APIError as err:
        kind = _Refused if err.status_code in (304, 409) else RuntimeFailure
        raise kind(f"{doing}: {_reason(err)}") from err
    except docker.errors.DockerException as err:
        raise RuntimeFailure(f"{doing}: {_reason(err)}") from err
    except requests.RequestException as err:
        raise RuntimeFailure(f"{doing}: the container engine does not answer ({err})") from err


def _reason(err: docker.errors.DockerException) -> str:
    if isinstance(err, docker.errors.APIError) and err.explanation:
        return str(err.explanation)
    return str(err)


# -- finding the engine ---------------------------------------------------------------


def connect(state_dir: Path, host: str | None) -> docker.DockerClient:
    """A client for `host`, else $DOCKER_HOST, else a Podman service we start (or reuse),
    else Docker's default socket; RuntimeFailure saying what to do when none answers."""
    if host is not None:
        return _open(host)
    if os.environ.get("DOCKER_HOST"):
        return _open(os.environ["DOCKER_HOST"], from_env=True)
    if shutil.which("podman") is not None:
        return podman_service(state_dir)
    if Path("/var/run/docker.sock").exists():
        return _open("unix:///var/run/docker.sock")
    raise RuntimeFailure(
        "no container engine: install Podman (`sudo bash scripts/podman-setup.sh`) or"
        " Docker, or point DOCKER_HOST at a Docker API (unix:///… or tcp://…)"
    )


def _open(url: str, from_env: bool = False) -> docker.DockerClient:
    """A client of the engine at `url` that answered a ping."""
    doing = (
        f"cannot reach the container engine at {url} (is it running? start it, e.g."
        " `podman system service` or `systemctl start docker`, or fix DOCKER_HOST)"
    )
    with _engine_errors(doing):
        if from_env:  # honours DOCKER_TLS_VERIFY and DOCKER_CERT_PATH too
            client = docker.from_env(timeout=API_TIMEOUT)
        else:
            client = docker.DockerClient(base_url=url, timeout=API_TIMEOUT)
        client.ping()
    return client


def _try_open(url: str) -> docker.DockerClient | None:
    try:
        return _open(url)
    except RuntimeFailure:
        return None


def service_socket(state_dir: Path) -> Path:
    """Where the Podman service we start listens (short enough for a unix socket)."""
    path = state_dir.resolve() / "podman.sock"
    if len(str(path)) <= _SOCKET_PATH_MAX:
        return path
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    return base / f"ondeck-podman-{supervisor_id(state_dir)}.sock"


def podman_service(state_dir: Path) -> docker.DockerClient:
    """A client of `podman system service` on our socket, started detached if needed."""
    sock = service_socket(state_dir)
    url = f"unix://{sock}"
    client = _try_open(url)
    if client is not None:
        return client
    state_dir.mkdir(parents=True, exist_ok=True)
    service_log = state_dir / "podman-service.log"
    _spawn_service(url, sock, service_log)
    deadline = time.monotonic() + SERVICE_START_WAIT
    while client is None and time.monotonic() < deadline:
        time.sleep(0.05)
        client = _try_open(url)
    if client is None:
        raise RuntimeFailure(
            f"started `podman system service` on {url} but it did not answer within"
            f" {SERVICE_START_WAIT:.0f}s; see {service_log}, or run"
            " `sudo bash scripts/podman-setup.sh`, or set DOCKER_HOST"
        )
    return client


def _spawn_service(url: str, sock: Path, service_log: Path) -> None:
    sock.unlink(missing_ok=True)  # a stale socket of a dead service
    with service_log.open("ab") as out:
        # `setsid --fork`: the service leads its own session and is not our child,
        # so it outlives the controller and never lingers as our zombie.
        subprocess.run(
            ["setsid", "--fork", "podman", "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=True,
        )
    log.info("started podman system service on %s (log: %s)", url, service_log)


def _is_podman(client: docker.DockerClient) -> bool:
    """Podman's `k8s-file` log driver writes to a path of our choice; Docker has none."""
    with _engine_errors("cannot read the container engine's version"):
        components = client.version().get("Components") or []
    return any(str(c.get("Name", "")).startswith("Podman") for c in components)


# -- the runtime --------------------------------------------------------------------------


@dataclass
class _Watch:
    """One container we watch: the pidfd of its main process and the future its exit sets."""

    handle: Handle
    name: str
    loop: asyncio.AbstractEventLoop
    exited: asyncio.Future[int | None]
    pidfd: int | None = None
    report: asyncio.Task[None] | None = None


class ContainerRuntime:
    """Starts, stops, watches and re-adopts instances as containers of one engine."""

    def __init__(self, state_dir: Path, on_exit: ExitCallback, host: str | None = None) -> None:
        self._supervisor = supervisor_id(state_dir)
        self._on_exit = on_exit
        self._client = connect(state_dir, host)
        self._logs_to_file = _is_podman(self._client)
        self._watches: dict[str, _Watch] = {}

    def name_of(self, instance_id: str) -> str:
        """The container name of `instance_id` under this state dir."""
        return container_name(self._supervisor, instance_id)

    # -- images -----------------------------------------------------------------------

    async def ensure_image(
        self, image: str, pull: str = "missing", progress: Callable[[str], None] | None = None
    ) -> None:
        """Make `image` present per the pull policy; nothing running is touched."""
        if pull not in PULL_POLICIES:
            raise ValueError(f"pull policy {pull!r} is not one of {', '.join(PULL_POLICIES)}")
        if pull != "always" and await asyncio.to_thread(self._has_image, image):
            return
        if pull == "never":
            raise RuntimeFailure(
                f"image {image} is not on this host and its pull policy is 'never':"
                f" build or load it here (`podman build -t {image} .`), or use pull: missing"
            )
        report = _threadsafe(progress) if progress else None
        await asyncio.to_thread(self._pull, image, report)

    def _has_image(self, image: str) -> bool:
        try:
            with _engine_errors(f"cannot inspect image {image}"):
                self._client.images.get(image)
        except _Gone:
            return False
        return True

    def _pull(self, image: str, progress: Callable[[str], None] | None) -> None:
        doing = f"cannot pull image {image}"
        hint = "check the name, that its registry is reachable and that you are logged in"
        with _engine_errors(f"{doing} ({hint})"):
            for item in self._client.api.pull(image, stream=True, decode=True):
                if item.get("error"):
                    raise RuntimeFailure(f"{doing}: {item['error']} ({hint})")
                if progress is not None and (line := _progress_line(item)):
                    progress(line)
        if not self._has_image(image):
            raise RuntimeFailure(f"{doing}: the engine reported no error but has no such image")

    # -- start --------------------------------------------------------------------------

    async def start(self, spec: InstanceSpec, container: ContainerOptions | None = None) -> Handle:
        """Create and start the instance's container (logging to `spec.log_path`), watch it."""
        container = container or spec.container
        if container is None:
            raise RuntimeFailure(
                f"instance {spec.id} has no image: the container runtime needs one"
            )
        await self.ensure_image(container.image, container.pull)
        name = self.name_of(spec.id)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = await asyncio.to_thread(self._launch, spec, container, name)
        self._watch(handle, name)
        return handle

    def _launch(self, spec: InstanceSpec, container: ContainerOptions, name: str) -> Handle:
        self._remove_stale(spec.id, name)
        config = self._create_config(spec, container, name)
        with _engine_errors(f"cannot create the container of instance {spec.id}"):
            self._client.containers.create(**config)
        try:
            with _engine_errors(f"cannot start instance {spec.id} (image {container.image})"):
                self._client.api.start(name)
        except RuntimeFailure:
            self._remove(name)  # a failed start leaves nothing behind
            raise
        return self._running_handle(spec.id, name)

    def _create_config(
        self, spec: InstanceSpec, container: ContainerOptions, name: str
    ) -> dict[str, Any]:
        """Keyword arguments of `containers.create` for one instance."""
        config: dict[str, Any] = {
            "image": container.image,
            "command": list(spec.argv) or None,
            "name": name,
            "labels": self._labels(spec),
            "environment": container_env(spec.environ),
            "detach": True,
            "stop_signal": _signal_name(spec.stop_signal),
            "restart_policy": {"Name": "no"},  # restarts are ondeck's decision
            "volumes": {
                vol: {"bind": path, "mode": "rw"} for vol, path in container.volumes.items()
            },
        }
        if self._logs_to_file:
            # conmon appends to the file itself, with or without the controller.
            path = str(spec.log_path.resolve())
            config["log_config"] = docker.types.LogConfig(type="k8s-file", config={"path": path})
        if container.container_port is not None:
            if spec.port is None:
                raise RuntimeFailure(
                    f"instance {spec.id} has container port {container.container_port}"
                    " but no host port to publish it on"
                )
            config["ports"] = {f"{container.container_port}/tcp": ("127.0.0.1", spec.port)}
        if container.memory is not None:
            config["mem_limit"] = container.memory
        if container.cpus is not None:
            config["nano_cpus"] = round(container.cpus * 1e9)
        return config

    def _labels(self, spec: InstanceSpec) -> dict[str, str]:
        labels = {f"{LABEL_PREFIX}{key}": value for key, value in spec.labels.items()}
        labels.update(
            {
                SUPERVISOR_LABEL: self._supervisor,
                f"{LABEL_PREFIX}app": spec.app,
                f"{LABEL_PREFIX}env": spec.env,
                f"{LABEL_PREFIX}service": spec.service,
                INSTANCE_LABEL: spec.id,
            }
        )
        return labels

    def _remove_stale(self, instance_id: str, name: str) -> None:
        """Remove an exited container left under this instance's name (ours only)."""
        attrs = self._inspect(name)
        if attrs is None:
            return
        if not self._ours(attrs):
            raise RuntimeFailure(
                f"a container named {name} exists that this ondeck state dir did not"
                f" start; remove or rename it (`podman rm {name}`)"
            )
        if attrs["State"].get("Running"):
            raise RuntimeFailure(
                f"instance {instance_id} is already running as container {name}; stop it first"
            )
        self._remove(name)

    def _running_handle(self, instance_id: str, name: str) -> Handle:
        """The handle of a just-started container (pid 0 if it has already exited)."""
        attrs = self._inspect(name)
        pid = int(attrs["State"].get("Pid") or 0) if attrs else 0
        ticks = read_start_ticks(pid) if pid > 0 else None
        return Handle(id=instance_id, pid=pid if ticks is not None else 0, start_ticks=ticks or 0)

    # -- watching exits --------------------------------------------------------------------

    def _watch(self, handle: Handle, name: str, pidfd: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        watch = _Watch(handle, name, loop, loop.create_future(), pidfd)
        self._watches[handle.id] = watch
        if watch.pidfd is None and handle.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                watch.pidfd = os.pidfd_open(handle.pid)
        if watch.pidfd is None:  # already gone: report it right away
            watch.report = loop.create_task(self._report_exit(watch))
        else:
            loop.add_reader(watch.pidfd, self._pid_exited, watch)

    def _pid_exited(self, watch: _Watch) -> None:
        """The pidfd became readable: the container's main process is gone."""
        self._close_pidfd(watch)
        watch.report = watch.loop.create_task(self._report_exit(watch))

    async def _report_exit(self, watch: _Watch) -> None:
        """Fetch the exit code, remove the container, then tell the controller (once)."""
        try:
            code = await asyncio.to_thread(self._collect_exit, watch.name)
        except RuntimeFailure as err:
            log.warning("instance %s exited; its exit code is unknown: %s", watch.handle.id, err)
            code = None
        if self._watches.get(watch.handle.id) is watch:
            del self._watches[watch.handle.id]
        if not watch.exited.done():
            watch.exited.set_result(code)
        self._on_exit(ExitEvent(id=watch.handle.id, pid=watch.handle.pid, exit_code=code))

    def _collect_exit(self, name: str) -> int | None:
        """The exit code of a stopped container, which is then removed (volumes stay);
        None if the container is already gone."""
        state = self._stopped_state(name)
        if state is None:
            return None
        self._remove(name)
        return int(state["ExitCode"])

    def _stopped_state(self, name: str) -> dict[str, Any] | None:
        # The pidfd fires when the process dies; the engine's monitor (conmon) records
        # the exit a moment later, so wait briefly for it, with a deadline.
        deadline = time.monotonic() + EXIT_STATE_WAIT
        delay = 0.005
        while (attrs := self._inspect(name)) is not None:
            state: dict[str, Any] = attrs["State"]
            if not state.get("Running"):
                return state
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"the main process of container {name} ended but the engine still"
                    f" reports it running after {EXIT_STATE_WAIT:.0f}s; it is left as is"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        return None

    def _close_pidfd(self, watch: _Watch) -> None:
        if watch.pidfd is not None:
            watch.loop.remove_reader(watch.pidfd)
            os.close(watch.pidfd)
            watch.pidfd = None

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, handle: Handle, signal: str, grace: float) -> int | None:
        """Send `signal`, SIGKILL after `grace`; the container is then removed (its named
        volumes stay). The exit code, or None if the container was already gone."""
        sig = _signal_name(signal)
        watch = self._watched(handle)
        if watch is None:  # not running: clear away what is left of it, if ours
            return await asyncio.to_thread(self._collect_if_ours, handle.id)
        await asyncio.to_thread(self._kill, watch.name, sig)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(watch.exited), grace)
        await asyncio.to_thread(self._kill, watch.name, "SIGKILL")
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), KILL_WAIT)
        except TimeoutError:
            raise RuntimeFailure(
                f"instance {handle.id} (container {watch.name}, pid {handle.pid}) survived"
                f" SIGKILL for {KILL_WAIT:.0f}s; check `podman inspect {watch.name}`"
            ) from None

    def _watched(self, handle: Handle) -> _Watch | None:
        watch = self._watches.get(handle.id)
        if watch is not None and watch.handle == handle:
            return watch
        return self._watches.get(handle.id) if self.adopt(handle) else None

    def _kill(self, name: str, sig: str) -> None:
        # Already stopped or removed: the pidfd reports that, there is nothing to signal.
        with contextlib.suppress(_Gone, _Refused), _engine_errors(f"cannot send {sig} to {name}"):
            self._client.api.kill(name, signal=sig)

    def _collect_if_ours(self, instance_id: str) -> int | None:
        name = self.name_of(instance_id)
        attrs = self._inspect(name)
        if attrs is None or not self._ours(attrs) or attrs["State"].get("Running"):
            return None
        return self._collect_exit(name)

    # -- adoption and scan -------------------------------------------------------------------

    def adopt(self, handle: Handle) -> bool:
        """Watch a live container an earlier controller started; False if it is gone."""
        current = self._watches.get(handle.id)
        if current is not None:
            return current.handle == handle
        if handle.pid <= 0:
            return False
        try:
            pidfd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            return False
        # Checked after opening the pidfd: from now on the pid cannot be recycled under us.
        if read_start_ticks(handle.pid) != handle.start_ticks or not self._runs(handle):
            os.close(pidfd)
            return False
        self._watch(handle, self.name_of(handle.id), pidfd)
        return True

    def _runs(self, handle: Handle) -> bool:
        """True if `handle` is the main process of our running container of its instance."""
        attrs = self._inspect(self.name_of(handle.id))
        if attrs is None or not self._ours(attrs):
            return False
        state = attrs["State"]
        return bool(state.get("Running")) and int(state.get("Pid") or 0) == handle.pid

    def scan(self) -> dict[str, Handle]:
        """Every running container of this state dir, by instance id (no other is looked at)."""
        label = f"{SUPERVISOR_LABEL}={self._supervisor}"
        with _engine_errors("cannot list containers"):
            summaries = self._client.api.containers(filters={"label": label})
        found: dict[str, Handle] = {}
        for summary in summaries:
            handle = self._handle_of(str(summary["Id"]))
            if handle is not None:
                found[handle.id] = handle
        return found

    def _handle_of(self, container_id: str) -> Handle | None:
        attrs = self._inspect(container_id)
        if attrs is None or not self._ours(attrs) or not attrs["State"].get("Running"):
            return None
        instance = (attrs["Config"].get("Labels") or {}).get(INSTANCE_LABEL)
        pid = int(attrs["State"].get("Pid") or 0)
        ticks = read_start_ticks(pid) if pid > 0 else None
        if not instance or ticks is None:
            return None
        return Handle(id=str(instance), pid=pid, start_ticks=ticks)

    def is_alive(self, handle: Handle) -> bool:
        """True while the container's very main process runs (not a reused pid)."""
        return handle.pid > 0 and read_start_ticks(handle.pid) == handle.start_ticks

    # -- logs ---------------------------------------------------------------------------------

    async def logs(self, handle: Handle, follow: bool) -> AsyncIterator[bytes]:
        """The container's output from the engine (stdout and stderr, as written). The same
        bytes are in `spec.log_path` in `k8s-file` form: see `decode_cri_log`."""
        name = self.name_of(handle.id)
        with _engine_errors(f"cannot read the logs of instance {handle.id}"):
            stream = await asyncio.to_thread(
                self._client.api.logs, name, stream=True, follow=follow
            )
        try:
            while True:
                with _engine_errors(f"cannot read the logs of instance {handle.id}"):
                    chunk = await asyncio.to_thread(next, stream, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            stream.close()

    # -- shared -------------------------------------------------------------------------------

    def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            with _engine_errors(f"cannot inspect container {name}"):
                attrs: dict[str, Any] = self._client.api.inspect_container(name)
        except _Gone:
            return None
        return attrs

    def _ours(self, attrs: Mapping[str, Any]) -> bool:
        labels = attrs.get("Config", {}).get("Labels") or {}
        return bool(labels.get(SUPERVISOR_LABEL) == self._supervisor)

    def _remove(self, name: str) -> None:
        # v=True removes anonymous volumes only; named volumes are kept.
        with contextlib.suppress(_Gone), _engine_errors(f"cannot remove container {name}"):
            self._client.api.remove_container(name, v=True, force=True)

    def close(self) -> None:
        """Stop watching; the containers keep running for the next controller to adopt."""
        for watch in list(self._watches.values()):
            self._close_pidfd(watch)
            if watch.report is not None:
                watch.report.cancel()
            watch.exited.cancel()
        self._watches.clear()
        self._client.close()


def container_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The instance's environment minus what `instance_env` passed through from the host:
    a host PATH or HOME would replace the image's own."""
    return {
        key: value
        for key, value in environ.items()
        if not (key in PASSTHROUGH and os.environ.get(key) == value)
    }


def _signal_name(name: str) -> str:
    upper = name.upper()
    full = upper if upper.startswith("SIG") else f"SIG{upper}"
    if full not in signals.Signals.__members__:
        raise RuntimeFailure(f"unknown stop signal {name!r}: use a name like TERM, INT or QUIT")
    return full


def _threadsafe(progress: Callable[[str], None]) -> Callable[[str], None]:
    """`progress` called on the event loop, from the thread that pulls."""
    loop = asyncio.get_running_loop()

    def report(line: str) -> None:
        loop.call_soon_threadsafe(progress, line)

    return report


def _progress_line(item: Mapping[str, Any]) -> str:
    parts = (item.get("id"), item.get("status"), item.get("progress"), item.get("stream"))
    return " ".join(str(p).strip() for p in parts if p)
