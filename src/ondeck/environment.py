"""One environment's path from a revision to a sync result.

The host loop (controller.py) offers each `Environment` the repo's head after
every fetch and calls `reconcile` once per pass. An offered revision goes
through the *prepare phase* in a background task (render the spec, then each
`prepare_steps` entry: signature check, image pull, release export and build),
so slow work never delays a pass; only when every step passed does the
environment switch its desired state and open a sync. A pass plans from
desired and live, carries out the actions through its `Supervisor`, and lets
`state.verdict` close the sync.

Hook points for features that add to a sync (each a list; append to it):

- `prepare_steps: list[PrepareStep]`, `async step(env, desired) -> None`: run
  in order in the background task, before anything running is touched; run
  blocking work with `asyncio.to_thread`. Raise a `UserError` (or `SpecError`,
  `SourceError`, `RuntimeFailure`) to refuse the revision: it is recorded as a
  failed sync and what runs is left alone. For secrets resolution, release
  tasks before instances start, a backup before deploy, certificates.
- `pass_hooks: list[PassHook]`, `async hook(env, now) -> None`: on the loop at
  the start of every pass; must be quick (start a task for slow work and call
  `env.host.wake()` when it is done). For jobs scheduling, renewals.
- `finish_hooks: list[FinishHook]`, `hook(env, op, result, error) -> None`:
  when a sync ends. For notifications.
- `Host.runtimes`: a `Runtimes` registry; a new runtime (kubernetes) is one
  more factory there and a `Desired.runtime` value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ondeck.backup.envbackups import EnvBackups
from ondeck.backup.manifest import Manifest
from ondeck.backup.service import BackupMetrics
from ondeck.clock import Clock
from ondeck.cluster import ClusterEnv, ClusterLink, rendered
from ondeck.errors import (
    BackupFailure,
    BuildError,
    OndeckError,
    ReleaseTaskError,
    RuntimeFailure,
    SourceError,
    SpecError,
    TemporaryError,
    UnresolvedRef,
    UserError,
)
from ondeck.kube.render import namespace_of
from ondeck.leaving import Departure, Left, host_ready
from ondeck.metrics import Metrics
from ondeck.release_phase import HostSecretsWatch, run_release_tasks, secrets_at
from ondeck.releases import (
    KEEP_RECENT,
    SHARED,
    data_dir,
    is_complete,
    prepare,
    prune,
    prune_flat,
    release_dir,
)
from ondeck.rollout.analysis import Measurement, measure
from ondeck.rollout.strategies import EnvTraffic
from ondeck.runtime.base import Runtime
from ondeck.runtime.container import ContainerRuntime
from ondeck.runtime.kube_canary import progress_of
from ondeck.runtime.kubernetes import Cluster
from ondeck.runtime.logs import rotate
from ondeck.secrets.hoststore import HostStore, host_key
from ondeck.source.base import Source
from ondeck.source.code import CodeRepos
from ondeck.source.git import CommitInfo
from ondeck.source.verify import verify_commit
from ondeck.source.write import add_note, push_notes
from ondeck.spec.load import environment_names, parse, render_spec
from ondeck.spec.model import Spec
from ondeck.spec.template import build_env, expand
from ondeck.state import rollout
from ondeck.state.desired import Code, Desired, render
from ondeck.state.diff import summarize
from ondeck.state.lifecycle import InstanceState, SyncResult, Trigger
from ondeck.state.live import Phase
from ondeck.state.plan import Action, Forget, Plan, Restart, Start, Stop, plan
from ondeck.state.rollout import Progress, Stage, Traffic
from ondeck.state.verdict import analysis_step, verdict
from ondeck.store import ClusterMark, EnvRecord, InstanceRecord, Store
from ondeck.supervisor import Supervisor
from ondeck.traffic import RouterControl

log = logging.getLogger("ondeck")

SPEC_FILE = "ondeck.yaml"
HOUSEKEEPING_EVERY = 30.0
DEFAULT_DEADLINE = 300.0  # rollout.deadline's default
REBUILD_RETRY = 30.0
FAULT_RETRY = 5.0  # an environment whose pass raised is tried again after this long  # a release that failed to rebuild is tried again after this long
REFUSABLE = (SpecError, UserError, SourceError, RuntimeFailure)
RESTORE_STOP_DEADLINE = 120.0  # a restore waits this long for the services to stop
RESTORE_HEALTH_DEADLINE = 300.0  # and this long for them to be healthy again after it
ABORTED_ON_CLUSTER = "cluster-aborted/"  # kv: env -> the revision whose sync ended Aborted


@dataclass(frozen=True)
class Options:
    """How `ondeck up` was asked to run (its command-line flags)."""

    repo: str
    state_dir: Path
    branch: str | None = None
    path: str = ""
    envs: tuple[str, ...] = ()
    poll: float = 10.0
    auto_sync: bool = True
    self_heal: bool = True
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    listen: str | None = None  # where the router serves users; None: no router
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-* the router keeps
    listen_tls: str | None = None  # where the router serves HTTPS; None: no TLS listener
    drift_check: float = HOUSEKEEPING_EVERY  # how often release files, envs and strays are checked
    container_host: str | None = None  # Docker API URL; default $DOCKER_HOST, else Podman
    kubeconfig: Path | None = None  # runtime kubernetes: else $KUBECONFIG, ~/.kube, in-cluster
    kube_context: str | None = None


@dataclass
class Host:
    """What the environments of one controller share; the controller builds it once."""

    opts: Options
    store: Store
    source: Source
    runtimes: Mapping[str, Runtime]
    metrics: Metrics
    clock: Clock
    router: RouterControl | None
    wake: Callable[[], None]  # ask the host loop for a pass soon
    routing: Callable[[], list[EnvTraffic]]  # who serves what, across every environment
    cluster: ClusterLink | None = None  # runtime kubernetes: the cluster, connected on first use
    code: CodeRepos = field(init=False)  # where services' pinned code comes from

    def __post_init__(self) -> None:
        self.code = CodeRepos(self.source, self.opts.state_dir, self.opts.path)


@dataclass
class Operation:
    """A sync in progress: from a new desired state until live matches it."""

    id: int
    revision: str
    trigger: Trigger
    started: float


PrepareStep = Callable[["Environment", Desired], Awaitable[None]]
PassHook = Callable[["Environment", float], Awaitable[None]]
FinishHook = Callable[["Environment", Operation, SyncResult, str | None], None]


class Environment:
    """One environment of one app on this host: its desired state, its instances, its sync."""

    def __init__(self, name: str, overlay: str | None, host: Host) -> None:
        self.name, self.overlay, self.host = name, overlay, host
        self._noted_envs: list[str] = []  # environments the spec defines that run nowhere
        self.supervisor: Supervisor | None = None
        self.cluster: ClusterEnv | None = None  # runtime kubernetes: its objects on the cluster
        # objects it may have on a cluster (kept in the store), and their removal once it left
        self._mark: ClusterMark | None = host.store.cluster_mark(name)
        self.departure: Departure | None = None
        self.held_down = False  # `ondeck down --env`: nothing runs until `ondeck sync --env`
        self.desired: Desired | None = None
        self.commit: CommitInfo | None = None
        self.candidate: CommitInfo | None = None  # a newer revision not applied (auto-sync off)
        self.rewritten: str | None = (
            None  # the last revision applied did not descend from the one before
        )
        self.seen: str | None = None  # the last head offered
        self.error: str | None = None
        self.waiting_ref = False  # refused for a `source` ref that names nothing (yet)
        self.error_commit: CommitInfo | None = None
        self.op: Operation | None = None
        self.last_result: SyncResult | None = None
        self.wake_at: float | None = None
        self.manual = False  # a person asked for a sync: act even with self-heal off
        self.releases: dict[str, Progress] = {}  # blue/green, canary in flight
        self.traffic: dict[str, Traffic] = {}
        self.measurements: dict[str, Measurement] = {}
        self.snapshots: dict[str, tuple[float, dict[str, Any]]] = {}
        self.backups = EnvBackups(
            host.opts.state_dir,
            name,
            BackupMetrics.of(host.metrics.registry),
            HostStore(host.opts.state_dir).values,
            log.info,
        )
        self.skip_backup = False  # `ondeck sync --skip-backup`: the next deploy goes without
        self.paused = False  # a restore holds this environment's services stopped
        self.prepare_steps: list[PrepareStep] = [
            Environment.check_signature,
            Environment.check_cluster,  # runtime kubernetes: a cluster, and a spec it can hold
            Environment.backup_before_deploy,  # before anything that touches data (release tasks)
            Environment.pull_images,
            Environment.build_releases,
            run_release_tasks,  # after the build, before any instance of the release starts
        ]
        self.pass_hooks: list[PassHook] = [
            Environment.schedule_backups,
            HostSecretsWatch(host.opts.state_dir),
        ]
        self.finish_hooks: list[FinishHook] = []
        self.fault: str | None = None  # a bug contained to this environment (`contain`)
        self.wake_hints: dict[str, float | None] = {}  # hooks' next deadlines (jobs, ...)
        self.closers: list[Callable[[], None]] = []  # hooks' cleanup at shutdown
        # session leaders hooks started in a release (job runs): not strays
        self.owned_pids: list[Callable[[], set[int]]] = []
        self._loading: asyncio.Task[None] | None = None
        self._queued: tuple[str, Trigger] | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._rebuild_after = 0.0
        self._crash: BaseException | None = None
        self._load_releases()

    @property
    def loading(self) -> bool:
        """A revision is in its prepare phase (or queued behind one)."""
        return self._loading is not None or self._queued is not None

    def check(self) -> None:
        """Re-raise, on the host loop, a bug that ended a background task (once)."""
        crash, self._crash = self._crash, None
        if crash is not None:
            raise crash

    def contain(self, err: Exception) -> None:
        """A bug in this environment's processing: reported in its status (Degraded) and
        logged with its traceback once; the other environments, and the process, go on."""
        fault = f"internal error in ondeck ({type(err).__name__}: {err}); please report it"
        if fault != self.fault:
            log.error("[%s] %s", self.name, fault, exc_info=err)
        self.fault = fault
        self.wake_at = self.host.clock.time() + FAULT_RETRY  # try again, without spinning

    # -- revision -> desired (the prepare phase, in the background) ------------------

    def offer(self, head: str, trigger: Trigger) -> None:
        """The repo's head after a fetch: prepare it in the background when it is new here."""
        manual = trigger not in (Trigger.POLL, Trigger.STARTUP)
        self.manual = self.manual or manual
        if self._loading is not None:
            self._queued = (head, trigger)  # the newest wins, once the one in flight is done
            return
        if head == self.seen:
            if manual and self.candidate is not None and self.candidate.sha == head:
                self._start(self._apply_revision(head, trigger, self.candidate))
            elif manual and self.error_commit is not None and self.error_commit.sha == head:
                self._start(self._apply_revision(head, trigger, self.error_commit))  # a retry
            elif self._follows_code(head):
                self._start(self._follow_code(head, trigger, manual))
            return
        self.seen = head
        if self.desired is not None and self.desired.revision == head and self.error is None:
            if self._follows_code(head):  # restored: a pinned branch may have moved meanwhile
                self._start(self._follow_code(head, trigger, manual))
            return  # restored from the state dir: nothing new
        self._start(self._consider(head, trigger, manual))

    def _follows_code(self, head: str) -> bool:
        """Could `head` mean new code without a new commit (a pinned branch, a ref refused)?"""
        if self._waits_for_ref(head):
            return True
        desired = self.desired
        return desired is not None and any(s.code and s.code.follows for s in desired.services)

    async def _follow_code(self, head: str, trigger: Trigger, manual: bool) -> None:
        """Resolve the pins at `head` again; apply it when a branch moved or a ref appeared."""
        retry = self._waits_for_ref(head)
        commit = self.error_commit if retry else self.commit
        if commit is None or commit.sha != head or not (self.host.opts.auto_sync or manual):
            return
        try:
            again = await asyncio.to_thread(self.render_revision, head)
        except REFUSABLE:
            if self.error is not None:
                return  # refused already, and said why: not a new failed sync at every fetch
            again = None  # a followed branch is gone: refuse it (what runs stays)
        before = None if retry or again is None else self.desired
        if before is not None and again is not None and _codes(again) == _codes(before):
            return
        await self._apply_revision(head, trigger, commit)

    def _waits_for_ref(self, head: str) -> bool:
        """`head` was refused only because a ref named nothing: the ref may exist now.

        (A head refused for anything else, a failed build say, waits for a new commit or
        `ondeck sync`, as before.)"""
        refused = self.error_commit is not None and self.error_commit.sha == head
        return refused and self.waiting_ref

    def start_background(self, work: Awaitable[None]) -> None:
        """Run prepare-phase work (a hook's) in the background, as for an offered revision."""
        self._start(work)

    async def apply_revision(self, rev: str, trigger: Trigger, commit: CommitInfo) -> None:
        """Prepare `rev` again and switch to it (a hook's retry, e.g. after a secret changed)."""
        await self._apply_revision(rev, trigger, commit)

    def _start(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except OndeckError as err:
                log.warning("[%s] could not read the new revision: %s", self.name, err)
                self.seen = None  # try again on the next fetch
            except asyncio.CancelledError:
                raise  # the controller is closing: not a bug
            except BaseException as err:
                self._crash = err
                raise
            finally:
                self._loading = None
                queued, self._queued = self._queued, None
                if queued is not None:
                    self.offer(*queued)
                self.host.wake()

        self._loading = asyncio.get_running_loop().create_task(run())

    async def _consider(self, head: str, trigger: Trigger, manual: bool) -> None:
        commit = await asyncio.to_thread(self.host.source.commit_info, head)
        if self.host.opts.auto_sync or manual or self.desired is None:
            await self._apply_revision(head, trigger, commit)
        else:
            self.candidate = commit
            log.info("[%s] %s is new; auto-sync is off: run `ondeck sync`", self.name, head[:12])

    async def restore(self) -> None:
        """Render what was last applied from the local mirror, before any fetch.

        So a controller restarted while the remote is unreachable still
        supervises (restarts, heals) what it had deployed.
        """
        record = self.host.store.get_env(self.name)
        if record is None or not record.desired_revision:
            return
        rev = record.desired_revision
        try:
            desired = await asyncio.to_thread(self.render_revision, rev)
            await asyncio.to_thread(self.prepare_releases, desired)
            commit = await asyncio.to_thread(self.host.source.commit_info, rev)
        except (SpecError, UserError, SourceError) as err:
            log.warning("[%s] cannot restore %s from the mirror: %s", self.name, rev[:12], err)
            return
        self.desired, self.commit = desired, commit
        if self.supervisor is not None:
            self.supervisor.adopt_fingerprints(desired)
        log.info("[%s] restored %s %s", self.name, rev[:12], commit.message)
        aborted = self.host.store.get_kv(f"{ABORTED_ON_CLUSTER}{self.name}") == rev
        if desired.runtime == "kubernetes" and record.live_revision != rev and not aborted:
            # a sync the last controller did not see through: this one finishes it (not one
            # that ended Aborted: as on a host, an aborted release is not tried again)
            self._open(commit, Trigger.STARTUP, self.host.clock.time(), None)

    async def _apply_revision(self, rev: str, trigger: Trigger, commit: CommitInfo) -> None:
        started = self.host.clock.time()  # the sync's duration counts its prepare phase
        try:
            desired = await asyncio.to_thread(self.render_revision, rev)
            for step in self.prepare_steps:
                await step(self, desired)
        except REFUSABLE as err:
            self._refuse(commit, trigger, err, started)
            return
        if self.op is not None:
            self._finish(SyncResult.ABORTED, f"superseded by {rev[:12]}")
        changes = summarize(self.desired, desired)
        rewritten = await asyncio.to_thread(self._rewritten, rev)
        if rewritten is not None:
            log.warning("[%s] %s", self.name, rewritten)
            changes.insert(0, rewritten)
        self.rewritten = rewritten
        self.desired, self.commit, self.candidate = desired, commit, None
        if self.supervisor is not None:  # instances adopted without a record (db lost)
            self.supervisor.adopt_fingerprints(desired)
        self.error = self.error_commit = None
        self.waiting_ref = False
        record = self.host.store.get_env(self.name)
        if trigger == Trigger.STARTUP and record is not None and record.live_revision == rev:
            self._save_env()  # a restart on the same revision: only drift opens a sync
            return
        self._open(commit, trigger, started, changes)
        log.info("[%s] syncing %s %s (%s)", self.name, rev[:12], commit.message, commit.author)

    def _rewritten(self, rev: str) -> str | None:
        """Why `rev` does not follow what ran here (a force-push of another history), or None."""
        record = self.host.store.get_env(self.name)
        before = self.desired.revision if self.desired is not None else None
        before = before or (record.live_revision if record is not None else None)
        if before is None or before == rev:
            return None
        try:
            if self.host.source.is_ancestor(before, rev):
                return None
        except SourceError:  # the old commit is gone from the mirror: not an ancestor either
            pass
        return f"history rewritten: {rev[:12]} is not a descendant of {before[:12]}"

    def render_revision(self, rev: str, fetch: bool = True) -> Desired:
        """The desired state of this environment at `rev`, read from the local mirror.

        Services' pinned code is resolved too (app repositories fetched once per
        round unless `fetch` is false: the status renders older revisions so).
        """
        path = self.host.opts.path.strip("/")
        spec_path = f"{path}/{SPEC_FILE}".lstrip("/")
        text = self.host.source.read_file(rev, spec_path)
        if text is None:
            raise UserError(
                f"{spec_path}: not found at {rev[:12]}; add an ondeck.yaml there (`ondeck init`)"
            )
        doc = parse(text, spec_path)
        if self.overlay is None and fetch:
            self._note_unused_environments(environment_names(doc))
        secrets = secrets_at(self.host, self.name, self.overlay, rev, doc.data)
        spec = render_spec(doc, self.overlay, secrets=secrets.values)
        code_id = self.host.source.tree_id(rev, path, frozenset({SPEC_FILE}))
        codes = self._resolve_code(spec, fetch)
        return render(spec, self.name, rev, code_id, secrets=secrets, codes=codes)

    def _note_unused_environments(self, defined: list[str]) -> None:
        """`ondeck up REPO` without --env runs the base spec: say so (once) when the spec
        defines environments, which then run nowhere."""
        if not defined or self._noted_envs == defined:
            return
        self._noted_envs = defined
        message = (
            f"the spec defines environments ({', '.join(defined)}) but this runs the base "
            f"spec as {self.name!r}: run `ondeck up REPO --env NAME` for each one to run"
        )
        log.warning("[%s] %s", self.name, message)
        self.host.store.events_add(self.name, None, "note", message, self.host.clock.time())

    def _resolve_code(self, spec: Spec, fetch: bool) -> dict[str, Code]:
        if spec.runtime.value != "process":
            return {}  # refused by validation: the image is the code
        return {
            name: self.host.code.resolve(name, svc.source, fetch)
            for name, svc in spec.services.items()
            if svc.source is not None
        }

    async def check_signature(self, desired: Desired) -> None:
        """`protect.signed_by`: the running release's rules and the new one's both apply."""
        allowed = sorted({*desired.signed_by, *(self.desired.signed_by if self.desired else ())})
        if not allowed:
            return
        home = self.host.opts.state_dir / "gnupg"
        found = await asyncio.to_thread(
            verify_commit,
            self.host.source.mirror_dir,
            desired.revision,
            allowed,
            home if home.is_dir() else None,
        )
        if not found.ok:
            raise UserError(
                f"{self.name} deploys only commits signed by an allowed key; "
                f"{desired.revision[:12]}: {found.reason}. Sign it (git commit -S) with an allowed key"
            )
        log.info("[%s] %s %s", self.name, desired.revision[:12], found.reason)

    async def check_cluster(self, desired: Desired) -> None:
        """runtime kubernetes: the cluster is configured and every object renders."""
        if desired.runtime != "kubernetes":
            return
        await asyncio.to_thread(rendered, desired)
        await asyncio.to_thread(self.ensure_cluster().link.api)

    def ensure_cluster(self) -> ClusterEnv:
        if self.cluster is None:
            link = self.host.cluster
            if link is None:  # a host built without one (tests): the usual places
                link = self.host.cluster = ClusterLink(Cluster())
            self.cluster = ClusterEnv(link, self.name, self.host.wake, self.host.opts.drift_check)
        return self.cluster

    async def backup_before_deploy(self, desired: Desired) -> None:
        """`before_deploy`: what runs now is backed up (and proven) before it is changed."""
        skip, self.skip_backup = self.skip_backup, False
        gated = self.backups.gated(self.desired, desired)
        if skip and gated:
            message = f"{desired.revision[:12]} deployed without its backups ({', '.join(gated)}): --skip-backup"
            self.host.store.events_add(
                self.name, None, "backup-skipped", message, self.host.clock.time()
            )
        taken = await self.backups.before_deploy(self.desired, desired, skip)
        if taken:
            log.info("[%s] backed up before deploying: %s", self.name, ", ".join(taken))

    async def schedule_backups(self, now: float) -> None:
        if self.desired is not None:
            self.backups.follow(self.desired)
            self.backups.tick()

    async def pull_images(self, desired: Desired) -> None:
        """Every image of a container release is here before anything is touched."""
        if desired.runtime != "container":
            return
        runtimes = self.host.runtimes
        engine = cast(ContainerRuntime, await asyncio.to_thread(runtimes.__getitem__, "container"))
        for svc in desired.services:
            assert svc.spec.image is not None  # validated
            await engine.ensure_image(
                svc.spec.image, svc.spec.pull, progress=lambda line: log.info("pull %s", line)
            )

    async def build_releases(self, desired: Desired) -> None:
        await asyncio.to_thread(self.prepare_releases, desired)

    def prepare_releases(self, desired: Desired) -> None:
        """Export and build every service's release (blocking: call it in a worker thread)."""
        if desired.runtime != "process":
            return  # an image is the release: nothing to export or build
        opts = self.host.opts
        data_dir(opts.state_dir, desired.app, self.name)  # exists before the first build
        for svc in desired.services:
            dest = release_dir(opts.state_dir, desired.app, svc.release)
            # A release is shared by equal code, build and build env: nothing per service,
            # environment or commit reaches the build (see spec.template.AT_BUILD).
            builtins = {"ONDECK_APP": desired.app, "ONDECK_VERSION": svc.spec.version or ""}
            environ = build_env(svc.spec.env, builtins, os.environ, svc.secrets.values)
            code = svc.code
            prepare(
                self.host.code.source_for(code.repo) if code else self.host.source,
                code.sha if code else desired.revision,
                code.path if code else opts.path.strip("/"),
                dest,
                [expand(arg, environ) for arg in svc.spec.build] if svc.spec.build else None,
                environ,
            )

    def _refuse(self, commit: CommitInfo, trigger: Trigger, err: Exception, started: float) -> None:
        """A bad commit: say why, record it, and leave everything running untouched."""
        message = str(err)
        if isinstance(err, BuildError) and err.log_tail:
            message += "\n--- build log (tail) ---\n" + err.log_tail
        if isinstance(err, ReleaseTaskError) and err.log_tail:
            message += "\n--- release task output (tail) ---\n" + err.log_tail
        self.error, self.error_commit = message, commit
        self.waiting_ref = isinstance(err, UnresolvedRef)
        store = self.host.store
        op_id = store.begin_sync(
            self.name, commit.sha, commit.author, commit.message, trigger, started
        )
        store.finish_sync(op_id, SyncResult.FAILED, self.host.clock.time(), message)
        self.host.metrics.syncs.labels(self.name, SyncResult.FAILED).inc()
        self._save_env()
        refused = Operation(op_id, commit.sha, trigger, started)
        for hook in self.finish_hooks:
            hook(self, refused, SyncResult.FAILED, message)
        log.error("[%s] refused %s (%s): %s", self.name, commit.sha[:12], commit.author, message)

    # -- desired -> live (one pass, on the host loop) -----------------------------------

    def ensure_supervisor(self, app: str) -> Supervisor:
        if self.supervisor is None:
            h = self.host
            self.supervisor = Supervisor(
                app, self.name, h.opts.state_dir, h.store, h.runtimes, h.metrics, h.wake, h.clock
            )
            self.supervisor.before_stop = self._drain
            self.supervisor.fingerprint_key = host_key(h.opts.state_dir)
        return self.supervisor

    async def reconcile(self) -> None:
        """One pass: plan from desired and live, act, and judge the open sync."""
        self.check()
        if self.held_down:
            return
        desired = self.desired
        if desired is None:
            return
        sup = self.ensure_supervisor(desired.app)
        sup.app = desired.app  # a renamed app rolls: the app is part of every fingerprint
        started = time.perf_counter()
        now = self.host.clock.time()
        for hook in self.pass_hooks:
            await hook(self, now)
        if self.paused:
            return  # a restore stopped the services: nothing starts them until it is done
        if desired.runtime == "kubernetes":
            self._reconcile_cluster(desired, sup, now)
            return
        await self._analyze(now)
        leave_at = self._leave_cluster(desired, sup, now)
        steps = plan(desired, sup.live(), now, self.releases)
        self.wake_at = _earliest(
            steps.wake_at,
            self._next_analysis(),
            self._rebuild_at(),
            leave_at,
            *self.wake_hints.values(),
        )
        acting = self.op is not None or self.host.opts.self_heal or self.manual
        trigger = Trigger.CLI if self.manual else Trigger.SELF_HEAL
        self.manual = False
        if acting:
            self._keep_progress(steps)
        if acting and steps.actions:
            if self.op is None and any(not isinstance(a, Restart) for a in steps.actions):
                self._open_heal_op(steps, trigger)
            await self._execute(sup, desired, steps.actions)
            self.host.wake()  # observe the result and plan again at once
        elif self.op is not None:
            self._settle(steps, now)
        self.host.metrics.reconcile_duration.labels(self.name).observe(
            time.perf_counter() - started
        )

    def _reconcile_cluster(self, desired: Desired, sup: Supervisor, now: float) -> None:
        """runtime kubernetes: the cluster does the work; a pass starts or collects a job."""
        for inst_id, inst in list(sup.instances.items()):  # moved from this host
            if inst.rec.state is not InstanceState.STOPPING:
                sup.stop(inst_id, "the environment runs on Kubernetes now")
        departure = self.departure
        if departure is not None:  # back on the cluster before its objects were removed
            self._departure_step(departure, False, now)
            if departure.busy:
                return  # what it deletes must not race the apply: collected when it ends
            departure.close()
            self.departure = None
        cluster = self.ensure_cluster()
        self._mark_on_cluster(desired, cluster)
        heal = self.host.opts.self_heal or self.manual
        self.manual = False
        cluster.step(desired, self.op is not None, heal, self)
        due = cluster.due_in()
        self.wake_at = _earliest(now + due if due is not None else None, *self.wake_hints.values())

    def _mark_on_cluster(self, desired: Desired, cluster: ClusterEnv) -> None:
        """Record in the store, before anything is applied, where the objects will be."""
        where = cluster.link.cluster
        mark = ClusterMark(
            desired.app,
            namespace_of(desired.app, desired.env),
            str(where.kubeconfig.absolute()) if where.kubeconfig is not None else None,
            where.context,
        )
        if mark != self._mark:
            self.host.store.put_cluster_mark(self.name, mark)
            self._mark = mark

    def _leave_cluster(self, desired: Desired, sup: Supervisor, now: float) -> float | None:
        """Runs on this host, had objects on a cluster: remove them once the host serves.

        Returns when to try again after a failed attempt (None: a wake-up will come)."""
        if self.cluster is not None and not self.cluster.running:
            self.cluster.close()  # its watches and status: this environment is off the cluster
            self.cluster = None
        if self._mark is None:
            return None
        if self.departure is None:
            self.departure = Departure(self.name, self._mark, self.host.cluster, self.host.wake)
            log.info(
                "[%s] runs on this host now: its objects on the cluster (namespace %s) are "
                "removed once its instances are healthy",
                self.name,
                self._mark.namespace,
            )
        ready = self.cluster is None and host_ready(desired, sup.live())
        self._departure_step(self.departure, ready, now)
        due = self.departure.due_in() if self.departure is not None else None
        return now + due if due else None

    def _departure_step(self, departure: Departure, ready: bool, now: float) -> None:
        left, failed = departure.step(ready)
        if failed is not None:
            message = (
                f"could not remove its objects from the cluster (namespace "
                f"{departure.mark.namespace}), retrying: {failed}"
            )
            log.warning("[%s] %s", self.name, message)
            self.host.store.events_add(self.name, None, "cluster-left-failed", message, now)
        if left is not None:
            self._left(left, now)

    def _left(self, left: Left, now: float) -> None:
        """A teardown worked: in history (the sync that moved the environment), mark cleared."""
        store = self.host.store
        store.clear_cluster_mark(self.name)
        self._mark = None
        if self.departure is not None:
            self.departure.close()
            self.departure = None
        revision = self.desired.revision if self.desired is not None else None
        moved = next((r for r in store.history(self.name, 20) if r.revision == revision), None)
        if moved is not None:
            store.add_sync_actions(moved.id, left.actions())
        elif self.commit is not None:
            c = self.commit
            op_id = store.begin_sync(self.name, c.sha, c.author, c.message, Trigger.SELF_HEAL, now)
            store.add_sync_actions(op_id, left.actions())
            store.finish_sync(op_id, SyncResult.SUCCEEDED, self.host.clock.time())
        store.events_add(self.name, None, "cluster-left", left.summary(), now)

    def leaving_error(self) -> str | None:
        """Why the objects it left on a cluster are not removed yet (status shows it)."""
        departure = self.departure
        if departure is None or departure.error is None:
            return None
        return (
            f"its objects on the cluster (namespace {departure.mark.namespace}) are not "
            f"removed yet, retrying: {departure.error}"
        )

    def cluster_synced(
        self, revision: str, result: SyncResult, error: str | None, actions: list[str]
    ) -> None:
        """A sync's job on the cluster ended (cluster.Reports)."""
        op = self.op
        if op is None or op.revision != revision:
            return  # superseded meanwhile: the newer sync has its own job
        if actions:
            self.host.store.add_sync_actions(op.id, actions)
        if result is SyncResult.ABORTED:  # a restart does not open it again (`restore`)
            self.host.store.set_kv(f"{ABORTED_ON_CLUSTER}{self.name}", revision)
        self._finish(result, error)

    def cluster_canary_aborted(self, service: str, reason: str) -> None:
        """A canary on the cluster aborted on its own (cluster.Reports): an event, as on a host."""
        self.host.store.events_add(self.name, service, "abort", reason, self.host.clock.time())
        log.error("[%s] %s release aborted: %s", self.name, service, reason)

    def cluster_stepped(self, revision: str, actions: list[str]) -> None:
        """A canary on the cluster waits at a pause (cluster.Reports): the sync stays open."""
        op = self.op
        if op is not None and op.revision == revision and actions:
            self.host.store.add_sync_actions(op.id, actions)

    def cluster_healed(self, actions: list[str]) -> None:
        """A check changed the cluster back to what git says (cluster.Reports): in history."""
        if self.desired is None or self.commit is None:
            return
        c, now = self.commit, self.host.clock.time()
        op_id = self.host.store.begin_sync(
            self.name, c.sha, c.author, c.message, Trigger.SELF_HEAL, now
        )
        self.host.store.add_sync_actions(op_id, actions)
        self.host.store.finish_sync(op_id, SyncResult.SUCCEEDED, self.host.clock.time())
        log.info("[%s] drift on the cluster: %s", self.name, "; ".join(actions))

    async def _execute(
        self, sup: Supervisor, desired: Desired, actions: tuple[Action, ...]
    ) -> None:
        op = self.op  # a revision applied meanwhile opens another; these actions are this one's
        done: list[str] = []
        state_dir = self.host.opts.state_dir
        for action in actions:
            svc = desired.service(action.service)
            if isinstance(action, Start) and svc is not None:
                dest = release_dir(state_dir, desired.app, svc.release)
                if not self._release_ready(desired, dest):
                    continue
                inst_id = await sup.start(desired, svc, dest)
                done.append(f"start {inst_id}")
                continue
            if isinstance(action, Restart) and svc is not None:
                where = Path(sup.instances[action.instance].rec.release_dir)
                if not self._release_ready(desired, where):
                    continue
                await sup.restart(desired, svc, action.instance)
            elif isinstance(action, Stop):
                sup.stop(action.instance, action.reason)
            elif isinstance(action, Forget):
                sup.forget(action.instance)
            done.append(_describe(action))
        if op is not None and done:
            self.host.store.add_sync_actions(op.id, done)

    def _release_ready(self, desired: Desired, dest: Path) -> bool:
        """Is `dest` complete? If not (drifted, removed), rebuild it in the background."""
        if desired.runtime != "process" or is_complete(dest):
            return True
        now = self.host.clock.time()
        if self._rebuilding is None and now >= self._rebuild_after:
            self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild(desired))
        return False

    async def _rebuild(self, desired: Desired) -> None:
        try:
            await asyncio.to_thread(self.prepare_releases, desired)
        except REFUSABLE as err:
            self._rebuild_after = self.host.clock.time() + REBUILD_RETRY
            log.error(
                "[%s] cannot rebuild a release (retry in %.0fs): %s", self.name, REBUILD_RETRY, err
            )
        except asyncio.CancelledError:
            raise  # the controller is closing: not a bug
        except BaseException as err:
            self._crash = err
            raise
        finally:
            self._rebuilding = None
            self.host.wake()

    def _rebuild_at(self) -> float | None:
        return self._rebuild_after if self._rebuild_after > self.host.clock.time() else None

    def _settle(self, steps: Plan, now: float) -> None:
        """Close the open sync once live matches, or fail it when it cannot get there."""
        assert self.op is not None and self.supervisor is not None and self.desired is not None
        current = {s.name: s.fingerprint for s in self.desired.services}
        deadlines = {s.name: s.spec.rollout.deadline for s in self.desired.services}
        found = verdict(
            current,
            self.supervisor.live(),
            self.releases,
            steps.done,
            steps.waiting,
            self.op.started,
            now,
            max(deadlines.values(), default=DEFAULT_DEADLINE),
            deadlines,
        )
        if found.result is not None:
            self._finish(found.result, found.reason)

    # -- the sync record ---------------------------------------------------------------

    def _open(
        self, commit: CommitInfo, trigger: Trigger, started: float, changes: list[str] | None
    ) -> None:
        op_id = self.host.store.begin_sync(
            self.name, commit.sha, commit.author, commit.message, trigger, started, changes
        )
        self.op = Operation(op_id, commit.sha, trigger, started)
        self._save_env()
        self.host.wake()

    def _open_heal_op(self, steps: Plan, trigger: Trigger) -> None:
        assert self.desired is not None and self.commit is not None
        c = self.commit
        now = self.host.clock.time()
        op_id = self.host.store.begin_sync(self.name, c.sha, c.author, c.message, trigger, now)
        self.op = Operation(op_id, c.sha, trigger, now)
        log.info("[%s] drift: %s", self.name, "; ".join(_describe(a) for a in steps.actions))

    def _finish(self, result: SyncResult, error: str | None = None) -> None:
        op = self.op
        if op is None:
            return
        now = self.host.clock.time()
        metrics = self.host.metrics
        self.host.store.finish_sync(op.id, result, now, error)
        metrics.syncs.labels(self.name, result).inc()
        metrics.sync_duration.labels(self.name).observe(now - op.started)
        self.op, self.last_result = None, result
        if result is SyncResult.SUCCEEDED:
            self.fault = None  # a sync went through: whatever failed before did not stop it
        if result is SyncResult.SUCCEEDED:
            self._save_env(live=op.revision)
            asyncio.get_running_loop().run_in_executor(None, self._note, op.revision, now)
        log_fn = log.info if result is SyncResult.SUCCEEDED else log.warning
        log_fn(
            "[%s] sync %s %s in %.2fs%s",
            self.name,
            op.revision[:12],
            result,
            now - op.started,
            f": {error}" if error else "",
        )
        for hook in self.finish_hooks:
            hook(self, op, result, error)

    def _note(self, revision: str, at: float) -> None:
        """The deploy ledger in git itself: `git log --notes=ondeck` shows what ran where."""
        source = self.host.source
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        text = f"ondeck: live in {self.name} on {socket.gethostname()} since {when}"
        try:
            add_note(source.mirror_dir, revision, text)
        except (SourceError, UserError) as err:
            log.warning("[%s] could not record the git note: %s", self.name, err)
            return
        if not push_notes(source.mirror_dir, remote=source.url):
            log.debug("[%s] notes not pushed: no write access to %s", self.name, source.url)

    def _save_env(self, live: str | None = None) -> None:
        store = self.host.store
        old = store.get_env(self.name)
        live_commit = old.live_commit if old else None
        if live is not None and self.commit is not None:
            live_commit = commit_json(self.commit)
        store.put_env(
            EnvRecord(
                env=self.name,
                desired_revision=self.desired.revision if self.desired else None,
                live_revision=live or (old.live_revision if old else None),
                error=self.error,
                error_revision=self.error_commit.sha if self.error_commit else None,
                updated_at=self.host.clock.time(),
                extra=dict(old.extra) if old else {},
                live_commit=live_commit,
            )
        )

    # -- progressive releases ------------------------------------------------------------

    async def _drain(self, rec: InstanceRecord) -> None:
        if self.host.router is not None:
            await self.host.router.drain(rec, self.host.routing())

    def _keep_progress(self, steps: Plan) -> None:
        """Store every release step before acting on it, so a crash resumes from here."""
        self.traffic.update(steps.traffic)
        changed = False
        for name, progress in steps.progress.items():
            if progress is None:
                changed |= self.releases.pop(name, None) is not None
                self.measurements.pop(name, None)
            elif self.releases.get(name) != progress:
                self.releases[name], changed = progress, True
        if changed:
            self._save_releases()

    def _save_releases(self) -> None:
        blob = {name: p.to_json() for name, p in self.releases.items()}
        self.host.store.set_kv(f"releases/{self.name}", json.dumps(blob))

    def _load_releases(self) -> None:
        raw = self.host.store.get_kv(f"releases/{self.name}")
        if raw:
            self.releases = {n: Progress.from_json(p) for n, p in json.loads(raw).items()}

    def _next_analysis(self) -> float | None:
        times = []
        for name, progress in self.releases.items():
            spec = self._analysis_spec(name, progress)
            if spec is not None and name in self.snapshots:
                times.append(self.snapshots[name][0] + spec.interval)
        return min(times, default=None)

    def _analysis_spec(self, name: str, progress: Progress) -> Any:
        svc = self.desired.service(name) if self.desired else None
        if svc is None or progress.canary != svc.fingerprint or progress.weight == 0:
            return None
        if progress.stage not in (Stage.PROGRESSING, Stage.PAUSED):
            return None
        return svc.spec.rollout.analysis

    async def _analyze(self, now: float) -> None:
        """Measure each new version under traffic; abort it after too many bad figures."""
        router = self.host.router
        if router is None or self.supervisor is None:
            return
        stats: dict[str, Any] | None = None
        for name, progress in list(self.releases.items()):
            spec = self._analysis_spec(name, progress)
            last = self.snapshots.get(name)
            if spec is None or (last is not None and now - last[0] < spec.interval):
                continue
            stats = stats if stats is not None else await router.stats()
            self.snapshots[name] = (now, stats)
            if last is None:
                continue
            ids = [
                i.id for i in self.supervisor.live().of(name) if i.fingerprint == progress.canary
            ]
            figures = measure(last[1], stats, ids, spec)
            if figures is None:
                continue
            self.measurements[name] = figures
            if not figures.ok:
                self._analysis_failed(name, progress, figures, spec.failure_limit, now)

    def _analysis_failed(
        self, name: str, before: Progress, figures: Measurement, limit: int, now: float
    ) -> None:
        progress = analysis_step(before, figures.ok, figures.reason, limit, now)
        log.warning(
            "[%s] %s analysis failed (%d/%d): %s",
            self.name,
            name,
            progress.failures,
            limit + 1,
            figures.reason,
        )
        if progress.stage is Stage.ABORTED and before.stage is not Stage.ABORTED:
            self.host.store.events_add(self.name, name, "abort", progress.reason or "", now)
            log.error("[%s] %s release aborted: %s", self.name, name, progress.reason)
        self.releases[name] = progress
        self._save_releases()

    def on_cluster(self) -> str | None:
        """runtime kubernetes: `namespace N` where its objects are (what to tell kubectl)."""
        desired = self.desired
        if desired is None or desired.runtime != "kubernetes":
            return None
        return f"namespace {namespace_of(desired.app, desired.env)}"

    def refuse_on_cluster(self, what: str, instead: str) -> None:
        """A host-only operation asked of an environment that runs on Kubernetes."""
        where = self.on_cluster()
        if where is not None:
            raise UserError(
                f"environment {self.name!r} runs on Kubernetes ({where}): {what} works on "
                f"this host's instances only; {instead}"
            )

    def rollout_action(self, service: str, action: str) -> Progress:
        """`ondeck rollout promote|abort SERVICE`: a person steps in."""
        if self.on_cluster() is not None:
            return self._cluster_rollout(service, action)
        now = self.host.clock.time()
        progress = self.releases.get(service) or self._rolling_release(service, action, now)
        if action == "promote":
            progress = rollout.promote(progress, now)
        else:
            progress = rollout.abort(progress, "aborted by a person (ondeck rollout abort)", now)
        self.releases[service] = progress
        self._save_releases()
        self.host.store.events_add(
            self.name, service, action, f"{service}: {action} by a person", now
        )
        log.info("[%s] %s: %s", self.name, service, action)
        self.host.wake()
        return progress

    def _cluster_rollout(self, service: str, action: str) -> Progress:
        """runtime kubernetes: the next sync job promotes or aborts the canary on the cluster."""
        canary = self.cluster.canary(service) if self.cluster is not None else None
        svc = self.desired.service(service) if self.desired else None
        if canary is None and svc is not None and svc.spec.rollout.strategy == "canary":
            raise UserError(
                f"no canary release of {service!r} is in progress on the cluster "
                f"({self.on_cluster()}); see `ondeck status`"
            )
        if canary is None:
            raise UserError(
                f"environment {self.name!r} runs on Kubernetes ({self.on_cluster()}): "
                f"`ondeck rollout {action}` steps into a canary release only; a Deployment's "
                "rolling update is the cluster's: undo a release with `ondeck rollback`"
            )
        progress = progress_of(canary)
        now = self.host.clock.time()
        if action == "abort" and progress.stage is Stage.ABORTED:
            raise UserError(
                f"the release of {service!r} is aborted already: `ondeck rollout promote "
                f"{service}` tries it again, a new commit replaces it"
            )
        assert self.cluster is not None and self.commit is not None  # it has a canary
        self.cluster.request(service, action)
        if self.op is None:  # a retry of an aborted release is a sync of its own
            self.host.store.delete_kv(f"{ABORTED_ON_CLUSTER}{self.name}")
            self._open(self.commit, Trigger.CLI, now, None)
        if action == "promote":
            progress = rollout.promote(progress, now)
        else:
            progress = rollout.abort(progress, "aborted by a person (ondeck rollout abort)", now)
        self.host.store.events_add(
            self.name, service, action, f"{service}: {action} by a person", now
        )
        log.info("[%s] %s: %s (on the cluster)", self.name, service, action)
        return progress

    async def restore_backup(
        self, name: str, backup_id: str | None, while_running: bool
    ) -> Manifest:
        """Restore one backup; history records it with the safety backup taken before."""
        desired = self.desired
        if desired is None:
            raise UserError(f"{self.name} runs nothing yet: nothing to restore into")
        self.backups.follow(desired)
        store, started = self.host.store, self.host.clock.time()
        what = f"restore of backup {name} {backup_id or '(latest verified)'}"
        op_id = store.begin_sync(
            self.name, desired.revision, "ondeck backup", what, Trigger.RESTORE, started
        )
        steps: list[str] = []  # on a cluster: the scale to 0 and back, in history
        try:
            restored, safety = await self.backups.restore(
                name,
                backup_id,
                while_running,
                lambda: self._pause(steps),
                lambda: self._resume(steps),
            )
        except (BackupFailure, UserError) as err:
            if steps:
                store.add_sync_actions(op_id, steps)
            store.finish_sync(op_id, SyncResult.FAILED, self.host.clock.time(), str(err))
            raise
        if steps:
            store.add_sync_actions(op_id, steps)
        note = f"restored {restored.id}; the state before is backup {safety.id}"
        store.finish_sync(op_id, SyncResult.SUCCEEDED, self.host.clock.time(), note)
        log.info("[%s] %s", self.name, note)
        return restored

    async def _pause(self, steps: list[str]) -> None:
        """Stop every instance and keep them stopped (reconcile stands aside).

        On a cluster: the Deployments scaled to 0 until their pods are gone."""
        self.paused = True
        if self.desired is not None and self.desired.runtime == "kubernetes":
            await self.ensure_cluster().pause(self.desired, RESTORE_STOP_DEADLINE, steps)
            return
        sup = self.supervisor
        if sup is None:
            return
        for inst_id, inst in list(sup.instances.items()):
            if inst.rec.state is not InstanceState.STOPPING:
                sup.stop(inst_id, "restore")
        await self._until(lambda: not sup.instances, RESTORE_STOP_DEADLINE, "to stop")

    async def _resume(self, steps: list[str]) -> None:
        """Let reconcile start the services again and wait until they are healthy.

        On a cluster: each Deployment gets back the replicas it had, and is Available."""
        desired = self.desired
        if desired is not None and desired.runtime == "kubernetes":
            try:
                await self.ensure_cluster().resume(desired, RESTORE_HEALTH_DEADLINE, steps)
            finally:
                self.paused = False
                self.host.wake()
            return
        self.paused = False
        self.host.wake()

        def healthy() -> bool:
            if desired is None or self.supervisor is None:
                return True
            ready = [i.rec.service for i in self.supervisor.instances.values() if i.ready]
            return all(ready.count(s.name) >= s.replicas for s in desired.services)

        await self._until(healthy, RESTORE_HEALTH_DEADLINE, "to be healthy again")

    async def _until(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        end = time.monotonic() + deadline
        while not done():
            if time.monotonic() > end:
                raise BackupFailure(
                    f"the services of {self.name} did not come {what} within {deadline:.0f}s: "
                    "see `ondeck status`"
                )
            await asyncio.sleep(0.05)

    async def down(self, deadline: float) -> list[str]:
        """`ondeck down`: stop every instance gracefully (drain, stop signal, grace) and wait.

        What was deployed stays in the store, so the next `ondeck up` (or, held down,
        `ondeck sync --env`) starts the same release again.
        """
        self.held_down = True
        sup = self.supervisor
        if sup is None:
            return []
        stopped = sorted(sup.instances)
        for inst_id, inst in list(sup.instances.items()):
            if inst.rec.state is not InstanceState.STOPPING:
                sup.stop(inst_id, "ondeck down")
        while sup.instances and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if sup.instances:
            raise TemporaryError(
                f"{self.name}: {', '.join(sorted(sup.instances))} still stopping; run `ondeck down` again"
            )
        return stopped

    def close(self) -> None:
        """Stop watching; the instances keep running for the next controller to adopt."""
        self.backups.close()
        for task in (self._loading, self._rebuilding):
            if task is not None:
                task.cancel()
        if self.supervisor is not None:
            self.supervisor.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.departure is not None:
            self.departure.close()
        for close in self.closers:
            close()

    def rolling(self, service: str) -> bool:
        """Is a rolling or recreate release of `service` under way (one `rollout abort` stops)?"""
        if self.on_cluster() is not None:  # on a cluster, a canary is ondeck's to step into
            return self.cluster is not None and self.cluster.canary(service) is not None
        svc = self.desired.service(service) if self.desired else None
        if svc is None or self.op is None or self.supervisor is None:
            return False
        live = [i for i in self.supervisor.live().of(service) if i.phase is Phase.RUNNING]
        new_ready = sum(1 for i in live if i.fingerprint == svc.fingerprint and i.ready)
        return any(i.fingerprint != svc.fingerprint for i in live) or new_ready < svc.replicas

    def _rolling_release(self, service: str, action: str, now: float) -> Progress:
        """A release of a service without stored progress (rolling, recreate): only abort."""
        svc = self.desired.service(service) if self.desired else None
        if svc is None or not self.rolling(service):
            raise UserError(f"no release of {service!r} is in progress; see `ondeck status`")
        if action != "abort":
            raise UserError(
                f"{service} rolls out {svc.spec.rollout.strategy}: there is no pause to promote;"
                f" `ondeck rollout abort {service}` stops it"
            )
        assert self.supervisor is not None  # rolling() checked it
        old = [i for i in self.supervisor.live().of(service) if i.fingerprint != svc.fingerprint]
        return rollout.start(svc, old, None, now)

    # -- housekeeping (in a worker thread) ---------------------------------------------

    def housekeeping(self) -> None:
        """Rotate the instances' logs; prune releases nothing runs or wants."""
        sup, opts = self.supervisor, self.host.opts
        if sup is None:
            return
        for inst in list(sup.instances.values()):
            rotate(Path(inst.rec.log_path), opts.log_max_bytes, opts.log_keep)
        if self.op is None and self.desired is not None and not self.loading:
            # Releases from before they were shared: releases/APP/ENV/SERVICE/FINGERPRINT.
            keep = {Path(i.rec.release_dir) for i in list(sup.instances.values())}
            prune(opts.state_dir / "releases" / self.desired.app / self.name, keep)

    def releases_in_use(self) -> set[Path] | None:
        """The releases this environment runs or wants; None while it may be building one."""
        if self.loading or self._rebuilding is not None or self.op is not None:
            return None
        used = set()
        if self.supervisor is not None:
            used = {Path(i.rec.release_dir) for i in list(self.supervisor.instances.values())}
        if self.desired is not None:
            state_dir, app = self.host.opts.state_dir, self.desired.app
            used |= {release_dir(state_dir, app, s.release) for s in self.desired.services}
        return used


def prune_shared(envs: Iterable[Environment], state_dir: Path) -> list[Path]:
    """Remove shared releases no environment runs or wants (and beyond the recent spares).

    A release is shared by services and environments, so it is kept while any of them
    uses it; nothing is pruned while an environment may be building one.
    """
    keep: set[Path] = set()
    users = 0
    for env in envs:
        used = env.releases_in_use()
        if used is None:
            return []
        keep |= used
        users += len(env.desired.services) if env.desired is not None else 0
    removed = []
    for root in {p.parent for p in keep if p.parent.name == SHARED}:
        removed += prune_flat(root, keep, KEEP_RECENT * max(users, 1))
    return removed


def _codes(desired: Desired) -> dict[str, str | None]:
    return {s.name: s.code.sha if s.code else None for s in desired.services}


def commit_json(commit: CommitInfo) -> dict[str, Any]:
    return {
        "sha": commit.sha,
        "author": commit.author,
        "message": commit.message,
        "committed_at": commit.committed_at,
    }


def _describe(action: Action) -> str:
    if isinstance(action, Start):
        return f"start {action.service}"
    if isinstance(action, Stop):
        return f"stop {action.instance} ({action.reason})"
    return f"{type(action).__name__.lower()} {action.instance}"


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)
