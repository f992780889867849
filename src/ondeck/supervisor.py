"""The custodian of one environment's instances: start, restart, stop, probe, adopt.

The controller decides what to do (from `plan`); the supervisor carries each
action out through a `Runtime`, records every instance in the store before
and after its process exists (so a crash in between is found again), and
turns process exits and probe verdicts into the live state `plan` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ondeck.clock import SYSTEM_CLOCK, Clock
from ondeck.errors import RuntimeFailure, UserError
from ondeck.metrics import Metrics
from ondeck.releases import SHARED, data_dir
from ondeck.runtime.base import ContainerOptions, ExitEvent, Handle, InstanceSpec, Runtime
from ondeck.runtime.logs import tail
from ondeck.runtime.probes import ProbeResult, probe_exec, probe_http, probe_tcp
from ondeck.runtime.process import MARKER, allocate_port
from ondeck.spec.model import HealthCheck
from ondeck.spec.template import BUILTIN, PASSTHROUGH, expand, instance_env
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.health import exit_text, next_failures
from ondeck.state.lifecycle import InstanceState, ProbeState, transition
from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.store import InstanceRecord, Store

log = logging.getLogger("ondeck")

# While an instance has never been ready we probe it often, so a rollout moves
# as soon as the app answers, and judge it failing only after the time its
# spec allows (start_period + failure_threshold * interval).
FAST_PROBES = (0.005, 0.01, 0.02, 0.05)  # then every 50 ms until ready
DEFAULT_TCP = HealthCheck(tcp=True, interval=2.0, timeout=1.0, failure_threshold=3)
LOG_TAIL_LINES = 15
CONTAINER_DATA = "/data"  # where a container finds its persistent data volume


@dataclass
class Instance:
    """One instance's record plus what only lives in memory: handle and probe state."""

    rec: InstanceRecord
    handle: Handle | None = None
    probe: ProbeState = ProbeState.PENDING
    probe_failures: int = 0
    probe_detail: str | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    version: int = 0  # bumped by every move and verdict: status views cache until it moves

    @property
    def ready(self) -> bool:
        return self.probe is ProbeState.READY

    @property
    def failing(self) -> bool:
        return self.probe is ProbeState.FAILING

    def move(self, state: InstanceState, **changes: Any) -> None:
        """The record in `state` (if its lifecycle allows) with `changes` applied."""
        self.rec = replace(self.rec, state=transition(self.rec.state, state), **changes)
        self.version += 1

    def judge(self, probe: ProbeState, detail: str | None = None) -> None:
        self.probe, self.probe_detail = transition(self.probe, probe), detail
        self.version += 1

    def live(self) -> LiveInstance:
        phase = {InstanceState.EXITED: Phase.EXITED, InstanceState.STOPPING: Phase.STOPPING}.get(
            self.rec.state, Phase.RUNNING
        )
        return LiveInstance(
            id=self.rec.id,
            service=self.rec.service,
            fingerprint=self.rec.fingerprint,
            revision=self.rec.revision,
            code_revision=self.rec.code_revision or self.rec.revision,
            phase=phase,
            ready=self.ready and phase is Phase.RUNNING,
            failing=self.failing,
            pid=self.rec.pid,
            port=self.rec.port,
            restarts=self.rec.restarts,
            failures=self.rec.failures,
            exit_code=self.rec.exit_code,
            started_at=self.rec.started_at,
            exited_at=self.rec.exited_at,
            last_error=self.rec.last_error,
            drift=self.rec.drift,
        )

    def cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()


class Supervisor:
    """All instances of one (app, environment) on this host."""

    def __init__(
        self,
        app: str,
        env: str,
        state_dir: Path,
        store: Store,
        runtimes: Mapping[str, Runtime],
        metrics: Metrics,
        wake: Callable[[], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app, self.env = app, env
        self.state_dir, self.store, self.runtimes = state_dir, store, runtimes
        self.metrics, self.wake, self.clock = metrics, wake, clock
        self.instances: dict[str, Instance] = {}
        self.before_stop: Callable[[InstanceRecord], Awaitable[None]] | None = None
        # The host's fingerprint key (set by the environment): env signatures are keyed,
        # so a copy of the db tells nothing about the values (secrets among them).
        self.fingerprint_key: bytes | None = None

    @property
    def data_dir(self) -> Path:
        """Persistent data of this app in this environment, kept across releases."""
        return self.state_dir / "data" / self.app / self.env

    # -- the live state ---------------------------------------------------

    def live(self) -> Live:
        return Live(self.env, tuple(i.live() for i in self.instances.values()))

    @property
    def changes(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever an instance moves, is judged, comes or goes."""
        return tuple((i, inst.version) for i, inst in self.instances.items())

    def used_ports(self) -> set[int]:
        return {i.rec.port for i in self.instances.values() if i.rec.port}

    # -- actions ----------------------------------------------------------

    async def start(self, desired: Desired, svc: DesiredService, release: Path) -> str:
        """A new instance of `svc`: recorded first, then spawned."""
        seq = int(self.store.get_kv("instance_seq") or "0") + 1
        self.store.set_kv("instance_seq", str(seq))
        inst_id = f"{svc.name}-{svc.fingerprint[:4]}-{seq}"
        rec = InstanceRecord(
            id=inst_id,
            app=self.app,
            env=self.env,
            service=svc.name,
            fingerprint=svc.fingerprint,
            revision=desired.revision,
            code_revision=desired.code_revision(svc),
            release_dir=str(release),
            log_path=str(self.state_dir / "logs" / self.app / self.env / f"{inst_id}.log"),
            created_at=self.clock.time(),
            **_policy(svc),
        )
        self.store.put_instance(rec)
        inst = self.instances[inst_id] = Instance(rec)
        await self._spawn(inst, desired, svc)
        return inst_id

    async def restart(self, desired: Desired, svc: DesiredService, inst_id: str) -> None:
        inst = self.instances[inst_id]
        inst.rec = replace(inst.rec, restarts=inst.rec.restarts + 1)
        self.metrics.restarts.labels(self.env, svc.name).inc()
        await self._spawn(inst, desired, svc)

    def stop(self, inst_id: str, reason: str) -> None:
        """Begin a graceful stop in the background; the record goes when the process has."""
        inst = self.instances[inst_id]
        inst.cancel_tasks()
        inst.judge(ProbeState.PENDING)
        inst.move(InstanceState.STOPPING)
        self.store.put_instance(inst.rec)
        log.info("[%s] stop %s (%s)", self.env, inst_id, reason)
        inst.tasks.append(asyncio.create_task(self._stop(inst)))

    def forget(self, inst_id: str) -> None:
        inst = self.instances.pop(inst_id)
        inst.cancel_tasks()
        self.store.delete_instance(inst_id)

    async def _stop(self, inst: Instance) -> None:
        try:
            if self.before_stop is not None and inst.handle is not None:
                await self.before_stop(inst.rec)  # leave the router's pool, let requests finish
            if inst.handle is not None:
                await self._runtime(inst).stop(
                    inst.handle, inst.rec.stop_signal, inst.rec.stop_grace
                )
        finally:
            self.instances.pop(inst.rec.id, None)
            self.store.delete_instance(inst.rec.id)
            self.wake()

    async def _spawn(self, inst: Instance, desired: Desired, svc: DesiredService) -> None:
        port = self._port(inst, svc)
        try:
            spec = self._instance_spec(inst, desired, svc, port)
            kind = "container" if spec.container else "process"
            inst.rec = replace(inst.rec, runtime=kind)
            inst.handle = await self.runtimes[kind].start(spec)
        except (RuntimeFailure, UserError) as err:
            self._mark_exited(inst, 127, str(err))
            return
        inst.judge(ProbeState.PENDING)
        inst.probe_failures = 0
        inst.move(
            InstanceState.RUNNING,
            pid=inst.handle.pid,
            start_ticks=inst.handle.start_ticks,
            port=port,
            started_at=self.clock.time(),
            exit_code=None,
            exited_at=None,
            healthy_since=None,
            last_error=None,
        )
        self.store.put_instance(inst.rec)
        self._remember_env(inst, {k: v for k, v in spec.environ.items() if k in _owned(svc)})
        log.info(
            "[%s] started %s (pid %d%s)",
            self.env,
            inst.rec.id,
            inst.handle.pid,
            f", port {port}" if port else "",
        )
        self._watch(inst)

    def _port(self, inst: Instance, svc: DesiredService) -> int | None:
        if svc.spec.port is None or svc.spec.port is False:
            return None
        used = self.used_ports() - {inst.rec.port or 0}
        if inst.rec.port and inst.rec.port not in used and _port_free(inst.rec.port):
            return inst.rec.port  # a restarted instance keeps its port when it can
        return allocate_port(exclude=used)

    def _instance_spec(
        self, inst: Instance, desired: Desired, svc: DesiredService, port: int | None
    ) -> InstanceSpec:
        container = self._container(svc) if desired.runtime == "container" else None
        if container is None:
            data_dir(self.state_dir, self.app, self.env)  # made 0700 when new
        data = CONTAINER_DATA if container else str(self.data_dir)
        builtins = {
            # in a container the app listens on its own port; ondeck publishes it on `port`
            "PORT": str(container.container_port or "") if container else str(port or ""),
            "ONDECK_APP": self.app,
            "ONDECK_SERVICE": svc.name,
            "ONDECK_ENV": self.env,
            "ONDECK_REVISION": inst.rec.revision,
            "ONDECK_CODE_REVISION": inst.rec.code_revision or inst.rec.revision,
            "ONDECK_VERSION": svc.spec.version or "",
            "ONDECK_INSTANCE": inst.rec.id,
            "ONDECK_DATA_DIR": data,
        }
        host = {} if container else os.environ
        environ = instance_env(svc.spec.env, builtins, host, svc.secrets.values)
        argv = tuple(expand(arg, environ) for arg in svc.spec.command or ())
        return InstanceSpec(
            id=inst.rec.id,
            app=self.app,
            env=self.env,
            service=svc.name,
            argv=argv,
            environ=environ,
            cwd=Path(inst.rec.release_dir),
            log_path=Path(inst.rec.log_path),
            port=port,
            stop_signal=svc.spec.stop.signal,
            stop_grace=svc.spec.stop.grace,
            labels={"fingerprint": svc.fingerprint, "revision": desired.revision},
            container=container,
        )

    def _container(self, svc: DesiredService) -> ContainerOptions:
        """The image and its surroundings; volumes are per app and environment."""
        assert svc.spec.image is not None  # the spec's validation requires it
        volumes = {f"ondeck-{self.app}-{self.env}-data": CONTAINER_DATA}
        volumes.update(
            {f"ondeck-{self.app}-{self.env}-{n}": p for n, p in svc.spec.volumes.items()}
        )
        port = (
            svc.spec.port if isinstance(svc.spec.port, int) and svc.spec.port is not True else None
        )
        return ContainerOptions(
            image=svc.spec.image,
            container_port=port,
            volumes=volumes,
            memory=svc.spec.memory,
            cpus=svc.spec.cpus,
            pull=svc.spec.pull,
        )

    def _runtime(self, inst: Instance) -> Runtime:
        return self.runtimes[inst.rec.runtime]

    # -- drift ------------------------------------------------------------------

    def _remember_env(self, inst: Instance, environ: Mapping[str, str]) -> None:
        """A fingerprint of each variable ondeck sets (not its value), to notice edits later.

        Only the spec's own variables and the builtins count: a wrapper such as a
        pyenv shim may add or adjust host variables before the app starts.
        """
        inst.rec = replace(inst.rec, env_signature=_env_signature(environ, self.fingerprint_key))
        self.store.put_instance(inst.rec)

    def env_drift(self, inst: Instance) -> str | None:
        """Does the running process have the environment ondeck gave it?"""
        expected = inst.rec.env_signature
        if not expected or inst.rec.pid is None or inst.rec.state is not InstanceState.RUNNING:
            return None
        actual = read_environ(inst.rec.pid)
        if actual is None or MARKER not in actual:
            return None  # gone, or forked but not yet exec'd: /proc shows our own environment
        key = self.fingerprint_key
        changed = sorted(k for k in expected if not _same(expected[k], actual.get(k), key))
        return f"environment differs from the spec: {', '.join(changed)}" if changed else None

    def mark_drift(self, inst_id: str, reason: str) -> None:
        inst = self.instances.get(inst_id)
        if inst is None or inst.rec.drift:
            return
        inst.rec = replace(inst.rec, drift=reason)
        self.store.put_instance(inst.rec)
        self.store.events_add(
            self.env, inst.rec.service, "drift", f"{inst_id}: {reason}", self.clock.time()
        )
        log.warning("[%s] drift: %s %s", self.env, inst_id, reason)
        self.wake()

    # -- exits --------------------------------------------------------------

    def on_exit(self, event: ExitEvent) -> bool:
        """A process ended: a requested stop finishes in `_stop`; anything else is a crash."""
        inst = self.instances.get(event.id)
        if inst is None or inst.handle is None or inst.handle.pid != event.pid:
            return False
        if inst.rec.state is InstanceState.STOPPING:
            return True
        self._mark_exited(inst, event.exit_code, exit_text(event.exit_code))
        return True

    def _mark_exited(self, inst: Instance, code: int | None, why: str) -> None:
        now = self.clock.time()
        inst.cancel_tasks()
        inst.judge(ProbeState.PENDING)
        failures = next_failures(
            inst.rec.failures, inst.rec.healthy_since, now, inst.rec.reset_after
        )
        inst.move(
            InstanceState.EXITED,
            exit_code=code,
            exited_at=now,
            failures=failures,
            healthy_since=None,
            last_error=why,
            log_tail=tail(Path(inst.rec.log_path), LOG_TAIL_LINES),
        )
        self.store.put_instance(inst.rec)
        self.store.events_add(self.env, inst.rec.service, "exit", f"{inst.rec.id} {why}", now)
        log.warning("[%s] %s %s", self.env, inst.rec.id, why)
        self.wake()

    # -- health ---------------------------------------------------------------

    def _watch(self, inst: Instance) -> None:
        check = _health_of(inst.rec)
        if check is None:
            self._set_ready(inst)
            return
        inst.tasks.append(asyncio.create_task(self._probe_loop(inst, check)))

    async def _probe_loop(self, inst: Instance, check: HealthCheck) -> None:
        attempt = 0
        while True:
            result = await self._probe(inst, check)
            now = self.clock.time()
            started = inst.rec.started_at or now
            if result.ok:
                inst.probe_failures = 0
                self._set_ready(inst)
            elif not inst.ready and inst.rec.healthy_since is None:
                # never ready yet: failing only once its allowance is spent
                allowance = check.start_period + check.failure_threshold * check.interval
                if now - started >= allowance:
                    self._set_failing(inst, result.detail)
            elif now - started >= check.start_period:
                inst.probe_failures += 1
                if inst.probe_failures >= check.failure_threshold:
                    self._set_failing(inst, result.detail)
            if inst.ready or inst.failing:
                await asyncio.sleep(_next_tick(check.interval))
            else:
                await asyncio.sleep(FAST_PROBES[min(attempt, len(FAST_PROBES) - 1)])
                attempt += 1

    async def _probe(self, inst: Instance, check: HealthCheck) -> ProbeResult:
        port = inst.rec.port
        if check.http is not None and port:
            return await probe_http(port, check.http, check.timeout)
        if check.exec is not None:
            environ = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
            environ.update(PORT=str(port or ""), ONDECK_INSTANCE=inst.rec.id)
            return await probe_exec(check.exec, Path(inst.rec.release_dir), environ, check.timeout)
        if port:
            return await probe_tcp(port, check.timeout)
        return ProbeResult(False, "health check needs a port: set `port: true`", 0.0)

    def _set_ready(self, inst: Instance) -> None:
        if inst.ready:
            return
        inst.judge(ProbeState.READY)
        if inst.rec.healthy_since is None:
            inst.rec = replace(inst.rec, healthy_since=self.clock.time())
            self.store.put_instance(inst.rec)
        log.info("[%s] %s is healthy", self.env, inst.rec.id)
        self.wake()

    def _set_failing(self, inst: Instance, detail: str) -> None:
        if inst.failing:
            return
        inst.judge(ProbeState.FAILING, detail)
        inst.rec = replace(inst.rec, last_error=f"health check: {detail}")
        self.store.put_instance(inst.rec)
        self.store.events_add(
            self.env, inst.rec.service, "unhealthy", f"{inst.rec.id}: {detail}", self.clock.time()
        )
        log.warning("[%s] %s is unhealthy: %s", self.env, inst.rec.id, detail)
        self.wake()

    # -- adoption -------------------------------------------------------------

    def adopt_fingerprints(self, desired: Desired) -> None:
        """Instances rebuilt from a shared release (`records_from_proc`) get their full
        fingerprint once the desired state is known: the one of their service whose
        release they run and whose first digits their id carries."""
        for inst in self.instances.values():
            rec = inst.rec
            if not rec.fingerprint.startswith(RECOVERED):
                continue
            svc = desired.service(rec.service)
            prefix = rec.fingerprint.removeprefix(RECOVERED)
            if svc is not None and svc.fingerprint.startswith(prefix):
                inst.rec = replace(rec, fingerprint=svc.fingerprint)
                self.store.put_instance(inst.rec)

    def adopt(self, records: Iterable[InstanceRecord], handles: dict[str, Handle]) -> None:
        """Take over the instances an earlier controller left running."""
        for rec in records:
            inst = self.instances[rec.id] = Instance(rec)
            handle = handles.pop(rec.id, None)
            alive = (
                handle is not None
                and (rec.pid in (None, handle.pid))
                and self.runtimes[rec.runtime].adopt(handle)
            )
            if rec.state is InstanceState.EXITED:
                continue
            if not alive or handle is None:
                if rec.state in (InstanceState.STOPPING, InstanceState.LAUNCHING):
                    self.forget(rec.id)
                else:
                    self._mark_exited(inst, None, "exited while the controller was down")
                continue
            inst.handle = handle
            # It served before the restart: it keeps serving until a probe says otherwise,
            # so a slow health check never empties the router's pool.
            if rec.state is InstanceState.RUNNING and rec.healthy_since is not None:
                inst.judge(ProbeState.READY)
            if (
                rec.state is InstanceState.LAUNCHING
            ):  # spawned; the controller died before recording it
                inst.move(
                    InstanceState.RUNNING,
                    pid=handle.pid,
                    start_ticks=handle.start_ticks,
                    started_at=self.clock.time(),
                )
                self.store.put_instance(inst.rec)
            log.info("[%s] adopted %s (pid %d)", self.env, rec.id, handle.pid)
            if inst.rec.state is InstanceState.STOPPING:
                inst.tasks.append(asyncio.create_task(self._stop(inst)))
            else:
                self._watch(inst)

    def close(self) -> None:
        for inst in self.instances.values():
            inst.cancel_tasks()


def _policy(svc: DesiredService) -> dict[str, Any]:
    """What an instance must remember of its spec even after the spec moves on."""
    health = svc.spec.health
    if health is None and svc.spec.port:
        health = DEFAULT_TCP
    return {
        "stop_signal": svc.spec.stop.signal,
        "stop_grace": svc.spec.stop.grace,
        "reset_after": svc.spec.restart.reset_after,
        "drain": svc.spec.rollout.drain,
        "health": health.model_dump(mode="json") if health else None,
    }


def _next_tick(interval: float) -> float:
    """Seconds until the next multiple of `interval` on the loop's clock.

    Instances sharing an interval are probed in the same loop iteration: one
    wake-up for a hundred idle services instead of a hundred.
    """
    now = asyncio.get_running_loop().time()
    return interval - (now % interval) if interval > 0 else 0.0


def _health_of(rec: InstanceRecord) -> HealthCheck | None:
    return HealthCheck.model_validate(rec.health) if rec.health else None


ONE_OFF_VAR = "ONDECK_RUN"  # set in `ondeck run`'s commands (and their children): not strays


@dataclass(frozen=True)
class Stray:
    """A process running from a release directory that ondeck did not start."""

    env: str
    service: str
    pid: int
    command: str


def find_strays(
    state_dir: Path, known: set[int], owners: Mapping[Path, list[tuple[str, str]]] | None = None
) -> list[Stray]:
    """Processes whose cwd is inside a release, outside the sessions of our instances.

    Builds and exec probes are the controller's own children and are skipped. A
    shared release is attributed to the (env, service) pairs `owners` names for it.
    """
    owners = owners or {}
    root = (state_dir / "releases").resolve()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        ppid, session = int(fields[1]), int(fields[3])
        if not cwd.is_relative_to(root) or pid in known or session in known or ppid == me:
            continue
        if ONE_OFF_VAR in (read_environ(pid) or {}):
            continue  # `ondeck run`: a one-off command a person started through ondeck
        parts = cwd.relative_to(root).parts
        if len(parts) >= 3 and parts[1] == SHARED:  # a shared release: whoever runs it
            for env, service in owners.get(root.joinpath(*parts[:3]), [("", "")]):
                found.append(Stray(env, service, pid, command.strip()[:80]))
        elif len(parts) >= 3:
            found.append(Stray(parts[1], parts[2], pid, command.strip()[:80]))
    return found


def _owned(svc: DesiredService) -> set[str]:
    return set(svc.spec.env) | set(BUILTIN)


KEYED = "k:"
"""Prefix of a keyed signature; a bare one was written before ondeck keyed them."""


def _sig(value: str | None, key: bytes | None) -> str | None:
    """What the db keeps of an env value: an HMAC under the host key, never the value.

    Without a key (a supervisor no environment configured) the plain hash of old
    records is used, so those still compare and nothing restarts on upgrade.
    """
    if value is None:
        return None
    if key is None:
        return hashlib.sha256(value.encode()).hexdigest()[:12]
    return KEYED + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def _same(expected: str | None, value: str | None, key: bytes | None) -> bool:
    """Does `value` have the signature `expected`, keyed or written before keys?"""
    keyed = expected is not None and expected.startswith(KEYED)
    return expected == _sig(value, key if keyed else None)


def _env_signature(environ: Mapping[str, str], key: bytes | None) -> dict[str, str | None]:
    return {k: _sig(v, key) for k, v in environ.items()}


def records_from_proc(
    handles: Mapping[str, Handle], state_dir: Path, now: float
) -> list[InstanceRecord]:
    """Records of running instances the db has lost, rebuilt from what each process carries.

    Every instance runs with ondeck's marker (that is how `scan` found it), the
    ONDECK_* environment it was given, and its release as its working directory
    (releases/APP/ENV/SERVICE/FINGERPRINT): enough to adopt it rather than stop
    it as a stray before its replacement is ready. It served before, so it is
    taken as healthy until its next probe or exit says otherwise.
    """
    releases = state_dir.resolve() / "releases"
    found = []
    for inst_id, handle in handles.items():
        environ = read_environ(handle.pid) or {}
        app, env, service = (environ.get(k) for k in ("ONDECK_APP", "ONDECK_ENV", "ONDECK_SERVICE"))
        revision = environ.get("ONDECK_REVISION")
        try:
            cwd = Path(os.readlink(f"/proc/{handle.pid}/cwd"))
        except OSError:
            continue
        if not (app and env and service and revision):
            continue
        shared = cwd.parent == releases / app / SHARED
        if not shared and cwd.parent != releases / app / env / service:
            continue
        # A shared release does not name the fingerprint: the id carries its first digits,
        # and the environment's restore completes it (`adopt_fingerprints`).
        fingerprint = f"{RECOVERED}{inst_id.split('-')[-2]}" if shared else cwd.name
        port = environ.get("PORT", "")
        found.append(
            InstanceRecord(
                id=inst_id,
                app=app,
                env=env,
                service=service,
                fingerprint=fingerprint,
                revision=revision,
                code_revision=environ.get("ONDECK_CODE_REVISION"),
                release_dir=str(cwd),
                log_path=str(state_dir / "logs" / app / env / f"{inst_id}.log"),
                port=int(port) if port.isdigit() else None,
                pid=handle.pid,
                start_ticks=handle.start_ticks,
                state=InstanceState.RUNNING,
                created_at=now,
                started_at=now,
                healthy_since=now,
            )
        )
    return found


RECOVERED = "recovered:"  # the fingerprint of an instance adopted without a record, in part


def read_environ(pid: int) -> dict[str, str] | None:
    """A live process's environment from /proc; None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _port_free(port: int) -> bool:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", port))
        return True
    return False
