"""The reconcile loop: fetch, render, plan, execute, observe, repeat.

`ondeck up` runs one `Controller`. It wakes on a timer (poll), on a request
(CLI, API) and on every instance event (exit, health change, backoff timer),
reads the repo's head, renders each environment's desired state, and drives
each environment's `Supervisor` with the actions of `plan` until live matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ondeck.environment import EnvState, Operation
from ondeck.errors import BuildError, RuntimeFailure, SourceError, SpecError, UserError
from ondeck.metrics import Metrics
from ondeck.releases import drift, is_complete, prepare, prune, release_dir, taint
from ondeck.report import Reporter, commit_json
from ondeck.rollout.analysis import Measurement, measure
from ondeck.rollout.strategies import EnvTraffic
from ondeck.runtime.base import ExitEvent, Handle, Runtime
from ondeck.runtime.container import ContainerRuntime
from ondeck.runtime.logs import rotate
from ondeck.runtime.process import ProcessRuntime
from ondeck.source.git import CommitInfo, GitSource
from ondeck.source.verify import verify_commit
from ondeck.source.write import add_note, push_notes
from ondeck.spec.load import parse, render_spec
from ondeck.spec.template import instance_env
from ondeck.state import rollout
from ondeck.state.desired import DEFAULT_ENV, Desired, render
from ondeck.state.diff import (
    ServiceDiff,
    summarize,
)
from ondeck.state.health import Health
from ondeck.state.lifecycle import InstanceState, SyncResult, Trigger
from ondeck.state.plan import Action, Forget, Plan, Restart, Start, Stop, plan
from ondeck.state.rollout import Progress, Stage
from ondeck.state.verdict import analysis_step, verdict
from ondeck.status import (
    ControllerStatus,
    RouterStatus,
    SourceStatus,
    StatusDoc,
    SyncAnswer,
)
from ondeck.store import EnvRecord, InstanceRecord, Store
from ondeck.supervisor import Stray, Supervisor, find_strays
from ondeck.traffic import RouterLink

log = logging.getLogger("ondeck")

SPEC_FILE = "ondeck.yaml"
HOUSEKEEPING_EVERY = 30.0
FETCH_BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class Options:
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
    drift_check: float = HOUSEKEEPING_EVERY
    container_host: str | None = (
        None  # Docker API URL; default $DOCKER_HOST, else Podman  # how often release files, envs and strays are checked
    )


@dataclass
class SyncRequest:
    """Someone waits (`ondeck sync --wait`) for a fetch and the syncs it causes."""

    envs: list[str]
    future: asyncio.Future[SyncAnswer]
    fetched: bool = False
    error: str | None = None


@dataclass
class FetchState:
    error: str | None = None
    failures: int = 0
    next_at: float = 0.0
    last_ok: float | None = None
    head: str | None = None


class Controller:
    """Makes this host match the repo, for every environment it was given."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(opts.state_dir / "ondeck.db")
        mirror = opts.state_dir / "repos" / hashlib.sha256(opts.repo.encode()).hexdigest()[:16]
        self.source = GitSource(opts.repo, mirror, opts.branch)
        self.metrics = Metrics()
        self.runtime = ProcessRuntime(opts.state_dir, self._on_exit)
        self.runtimes: dict[str, Runtime] = {"process": self.runtime}  # + "container" when used
        names = opts.envs or (DEFAULT_ENV,)
        self.router = RouterLink(opts.state_dir, opts.listen) if opts.listen else None
        self.envs = {
            n: EnvState(n, None if n == DEFAULT_ENV and not opts.envs else n) for n in names
        }
        for state in self.envs.values():
            self._load_releases(state)
        self.fetch = FetchState()
        self.started = time.time()
        self._wake_event: asyncio.Event | None = None
        self._refresh: Trigger | None = Trigger.STARTUP
        self._stopping = False
        self._next_housekeeping = 0.0
        self._requests: list[SyncRequest] = []
        self.strays: dict[str, dict[str, list[str]]] = {}  # env -> service -> reasons
        self.report = Reporter(self.store, self.render_revision, lambda: self.strays)
        self._status: StatusDoc | None = None
        self._status_key: object = None
        self._exported: StatusDoc | None = None

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        self._wake_event = asyncio.Event()
        self._adopt()
        await self._restore()
        if self.router is not None:
            await self.router.ensure()
        try:
            while not self._stopping:
                await self._step()
                await self._sleep()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Leave the loop; instances keep running (the data plane outlives us)."""
        self._stopping = True
        self.wake()

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def request_sync(self, env: str | None, trigger: Trigger) -> asyncio.Future[SyncAnswer]:
        """Fetch now and sync; the future resolves once the named env(s) settle."""
        names = [self._env(env).name] if env else list(self.envs)
        future: asyncio.Future[SyncAnswer] = asyncio.get_running_loop().create_future()
        self._requests.append(SyncRequest(names, future))
        self._refresh = trigger
        self.wake()
        return future

    def refresh(self, trigger: Trigger) -> None:
        """Fetch soon (webhook, poll); a burst of requests coalesces into one fetch."""
        self._refresh = trigger
        self.wake()

    async def _step(self) -> None:
        now = time.time()
        if self._refresh or now >= self.fetch.next_at:
            trigger, self._refresh = self._refresh or Trigger.POLL, None
            waiting = [r for r in self._requests if not r.fetched]
            await self._pull(trigger)
            for request in waiting:
                request.fetched, request.error = True, self.fetch.error
        for state in self.envs.values():
            await self._reconcile(state)
        self._export_metrics(self.status())
        self._answer_requests()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.opts.drift_check
            if self.router is not None:
                await self.router.ensure()
            await asyncio.to_thread(self._housekeeping)
            self._apply_drift(*await asyncio.to_thread(self._find_drift))

    async def _sleep(self) -> None:
        assert self._wake_event is not None  # set in run(); a bug otherwise
        deadlines = [self.fetch.next_at, self._next_housekeeping]
        deadlines += [s.wake_at for s in self.envs.values() if s.wake_at is not None]
        timeout = max(0.0, min(deadlines) - time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_event.wait(), timeout)
        self._wake_event.clear()

    # -- git -> desired -----------------------------------------------------------

    async def _pull(self, trigger: Trigger) -> None:
        self.metrics.fetches.inc()
        try:
            await asyncio.to_thread(self.source.fetch)
            head = await asyncio.to_thread(self.source.resolve)
        except (SourceError, UserError) as err:
            self._fetch_failed(err)
            return
        if self.fetch.error:
            log.info("git source reachable again")
        self.fetch = FetchState(None, 0, time.time() + self.opts.poll, time.time(), head)
        for state in self.envs.values():
            await self._load(state, head, trigger)

    def _fetch_failed(self, err: Exception) -> None:
        self.fetch.failures += 1
        delay = min(
            self.opts.poll * 2 ** (self.fetch.failures - 1), max(FETCH_BACKOFF_MAX, self.opts.poll)
        )
        self.fetch.next_at = time.time() + delay
        if str(err) != self.fetch.error:
            log.warning("fetch failed (retry in %.0fs): %s", delay, err)
        self.fetch.error = str(err)
        for state in self.envs.values():
            self.metrics.fetch_errors.labels(state.name).inc()

    async def _load(self, state: EnvState, head: str, trigger: Trigger) -> None:
        manual = trigger not in (Trigger.POLL, Trigger.STARTUP)
        state.manual = state.manual or manual
        if head == state.seen:
            if manual and state.candidate is not None and state.candidate.sha == head:
                await self._apply_revision(state, head, trigger)
            return
        state.seen = head
        if state.desired is not None and state.desired.revision == head and state.error is None:
            return  # restored from the state dir: nothing new
        commit = await asyncio.to_thread(self.source.commit_info, head)
        if self.opts.auto_sync or manual or state.desired is None:
            await self._apply_revision(state, head, trigger, commit)
        else:
            state.candidate = commit
            log.info("[%s] %s is new; auto-sync is off: run `ondeck sync`", state.name, head[:12])

    async def _restore(self) -> None:
        """Render what was last applied from the local mirror, before any fetch.

        So a controller restarted while the remote is unreachable still
        supervises (restarts, heals) what it had deployed.
        """
        for state in self.envs.values():
            record = self.store.get_env(state.name)
            if record is None or not record.desired_revision:
                continue
            rev = record.desired_revision
            try:
                desired = await asyncio.to_thread(self.render_revision, state, rev)
                await asyncio.to_thread(self._prepare_releases, state, desired)
                commit = await asyncio.to_thread(self.source.commit_info, rev)
            except (SpecError, UserError, SourceError) as err:
                log.warning("[%s] cannot restore %s from the mirror: %s", state.name, rev[:12], err)
                continue
            state.desired, state.commit = desired, commit
            log.info("[%s] restored %s %s", state.name, rev[:12], commit.message)

    async def _apply_revision(
        self, state: EnvState, rev: str, trigger: Trigger, commit: CommitInfo | None = None
    ) -> None:
        if commit is None:
            commit = await asyncio.to_thread(self.source.commit_info, rev)
        try:
            desired = await asyncio.to_thread(self.render_revision, state, rev)
            await asyncio.to_thread(self._check_signature, state, desired)
            await self._pull_images(desired)
            await asyncio.to_thread(self._prepare_releases, state, desired)
        except (SpecError, UserError, SourceError, RuntimeFailure) as err:
            self._refuse(state, commit, trigger, err)
            return
        if state.op is not None:
            self._finish(state, SyncResult.ABORTED, f"superseded by {rev[:12]}")
        changes = summarize(state.desired, desired)
        state.desired, state.commit, state.candidate = desired, commit, None
        state.error = state.error_commit = None
        record = self.store.get_env(state.name)
        if trigger == Trigger.STARTUP and record is not None and record.live_revision == rev:
            self._save_env(state)  # a restart on the same revision: only drift opens a sync
            return
        op_id = self.store.begin_sync(
            state.name, rev, commit.author, commit.message, trigger, time.time(), changes
        )
        state.op = Operation(op_id, rev, trigger, time.time())
        self._save_env(state)
        log.info("[%s] syncing %s %s (%s)", state.name, rev[:12], commit.message, commit.author)
        self.wake()

    def render_revision(self, state: EnvState, rev: str) -> Desired:
        """The desired state of `state`'s environment at `rev`, read from the local mirror."""
        spec_path = f"{self.opts.path.strip('/')}/{SPEC_FILE}".lstrip("/")
        text = self.source.read_file(rev, spec_path)
        if text is None:
            raise UserError(
                f"{spec_path}: not found at {rev[:12]}; add an ondeck.yaml there (`ondeck init`)"
            )
        spec = render_spec(parse(text, spec_path), state.overlay)
        code_id = self.source.tree_id(rev, self.opts.path.strip("/"), frozenset({SPEC_FILE}))
        return render(spec, state.name, rev, code_id)

    async def _pull_images(self, desired: Desired) -> None:
        """Every image of a container release is here before anything is touched."""
        if desired.runtime != "container":
            return
        engine = await asyncio.to_thread(self._containers)
        for svc in desired.services:
            assert svc.spec.image is not None  # validated
            await engine.ensure_image(
                svc.spec.image, svc.spec.pull, progress=lambda line: log.info("pull %s", line)
            )

    def _check_signature(self, state: EnvState, desired: Desired) -> None:
        """`protect.signed_by`: the running release's rules and the new one's both apply."""
        allowed = sorted({*desired.signed_by, *(state.desired.signed_by if state.desired else ())})
        if not allowed:
            return
        home = self.opts.state_dir / "gnupg"
        verdict = verify_commit(
            self.source.mirror_dir, desired.revision, allowed, home if home.is_dir() else None
        )
        if not verdict.ok:
            raise UserError(
                f"{state.name} deploys only commits signed by an allowed key; "
                f"{desired.revision[:12]}: {verdict.reason}. Sign it (git commit -S) with an allowed key"
            )
        log.info("[%s] %s %s", state.name, desired.revision[:12], verdict.reason)

    def _prepare_releases(self, state: EnvState, desired: Desired) -> None:
        if desired.runtime != "process":
            return  # an image is the release: nothing to export or build
        for svc in desired.services:
            dest = release_dir(
                self.opts.state_dir, desired.app, state.name, svc.name, svc.fingerprint
            )
            builtins = {
                "ONDECK_APP": desired.app,
                "ONDECK_SERVICE": svc.name,
                "ONDECK_ENV": state.name,
                "ONDECK_REVISION": desired.revision,
                "ONDECK_VERSION": svc.spec.version or "",
                "ONDECK_DATA_DIR": str(self.opts.state_dir / "data" / desired.app / state.name),
            }
            environ = instance_env(svc.spec.env, builtins, os.environ)
            prepare(
                self.source,
                desired.revision,
                self.opts.path.strip("/"),
                dest,
                svc.spec.build,
                environ,
            )

    def _refuse(
        self, state: EnvState, commit: CommitInfo, trigger: Trigger, err: Exception
    ) -> None:
        """A bad commit: say why, record it, and leave everything running untouched."""
        message = str(err)
        if isinstance(err, BuildError) and err.log_tail:
            message += "\n--- build log (tail) ---\n" + err.log_tail
        state.error, state.error_commit = message, commit
        now = time.time()
        op_id = self.store.begin_sync(
            state.name, commit.sha, commit.author, commit.message, trigger, now
        )
        self.store.finish_sync(op_id, SyncResult.FAILED, now, message)
        self.metrics.syncs.labels(state.name, SyncResult.FAILED).inc()
        self._save_env(state)
        log.error("[%s] refused %s (%s): %s", state.name, commit.sha[:12], commit.author, message)

    # -- desired -> live ------------------------------------------------------------

    async def _reconcile(self, state: EnvState) -> None:
        sup, desired = state.supervisor, state.desired
        if desired is None:
            return
        if sup is None:
            sup = state.supervisor = self._supervisor(desired.app, state.name)
        sup.app = desired.app  # a renamed app rolls: the app is part of every fingerprint
        started = time.perf_counter()
        now = time.time()
        await self._analyze(state, now)
        steps = plan(desired, sup.live(), now, state.releases)
        state.wake_at = _earliest(steps.wake_at, self._next_analysis(state))
        acting = state.op is not None or self.opts.self_heal or state.manual
        trigger = Trigger.CLI if state.manual else Trigger.SELF_HEAL
        state.manual = False
        if acting:
            self._keep_progress(state, steps)
        if acting and steps.actions:
            if state.op is None and any(not isinstance(a, Restart) for a in steps.actions):
                self._open_heal_op(state, steps, trigger)
            await self._execute(state, sup, desired, steps.actions)
            self.wake()  # observe the result and plan again at once
        elif state.op is not None:
            self._settle(state, steps, now)
        await self._push_routes()
        self.metrics.reconcile_duration.labels(state.name).observe(time.perf_counter() - started)

    # -- traffic and progressive releases ---------------------------------------------------

    def _routing(self) -> list[EnvTraffic]:
        return [
            EnvTraffic(s.desired, s.supervisor.live().instances, s.traffic)
            for s in self.envs.values()
            if s.desired is not None and s.supervisor is not None
        ]

    async def _push_routes(self) -> None:
        if self.router is not None:
            await self.router.push(self._routing())

    async def _drain(self, rec: InstanceRecord) -> None:
        if self.router is not None:
            await self.router.drain(rec, self._routing())

    def _keep_progress(self, state: EnvState, steps: Plan) -> None:
        """Store every release step before acting on it, so a crash resumes from here."""
        state.traffic.update(steps.traffic)
        changed = False
        for name, progress in steps.progress.items():
            if progress is None:
                changed |= state.releases.pop(name, None) is not None
                state.measurements.pop(name, None)
            elif state.releases.get(name) != progress:
                state.releases[name], changed = progress, True
        if changed:
            self._save_releases(state)

    def _save_releases(self, state: EnvState) -> None:
        blob = {name: p.to_json() for name, p in state.releases.items()}
        self.store.set_kv(f"releases/{state.name}", json.dumps(blob))

    def _load_releases(self, state: EnvState) -> None:
        raw = self.store.get_kv(f"releases/{state.name}")
        if raw:
            state.releases = {n: Progress.from_json(p) for n, p in json.loads(raw).items()}

    def _next_analysis(self, state: EnvState) -> float | None:
        times = []
        for name, progress in state.releases.items():
            spec = self._analysis_spec(state, name, progress)
            if spec is not None and name in state.snapshots:
                times.append(state.snapshots[name][0] + spec.interval)
        return min(times, default=None)

    def _analysis_spec(self, state: EnvState, name: str, progress: Progress) -> Any:
        svc = state.desired.service(name) if state.desired else None
        if svc is None or progress.canary != svc.fingerprint or progress.weight == 0:
            return None
        if progress.stage not in (Stage.PROGRESSING, Stage.PAUSED):
            return None
        return svc.spec.rollout.analysis

    async def _analyze(self, state: EnvState, now: float) -> None:
        """Measure each new version under traffic; abort it after too many bad figures."""
        if self.router is None or state.supervisor is None:
            return
        stats: dict[str, Any] | None = None
        for name, progress in list(state.releases.items()):
            spec = self._analysis_spec(state, name, progress)
            last = state.snapshots.get(name)
            if spec is None or (last is not None and now - last[0] < spec.interval):
                continue
            stats = stats if stats is not None else await self.router.stats()
            state.snapshots[name] = (now, stats)
            if last is None:
                continue
            ids = [
                i.id for i in state.supervisor.live().of(name) if i.fingerprint == progress.canary
            ]
            figures = measure(last[1], stats, ids, spec)
            if figures is None:
                continue
            state.measurements[name] = figures
            if not figures.ok:
                self._analysis_failed(state, name, progress, figures, spec.failure_limit, now)

    def _analysis_failed(
        self,
        state: EnvState,
        name: str,
        progress: Progress,
        figures: Measurement,
        limit: int,
        now: float,
    ) -> None:
        before = progress
        progress = analysis_step(progress, figures.ok, figures.reason, limit, now)
        log.warning(
            "[%s] %s analysis failed (%d/%d): %s",
            state.name,
            name,
            progress.failures,
            limit + 1,
            figures.reason,
        )
        if progress.stage is Stage.ABORTED and before.stage is not Stage.ABORTED:
            self.store.events_add(state.name, name, "abort", progress.reason or "", now)
            log.error("[%s] %s release aborted: %s", state.name, name, progress.reason)
        state.releases[name] = progress
        self._save_releases(state)

    def rollout_action(self, env: str | None, service: str, action: str) -> Progress:
        """`ondeck rollout promote|abort SERVICE`: a person steps in."""
        state = (
            self._env(env)
            if env
            else next((s for s in self.envs.values() if service in s.releases), None)
        )
        progress = state.releases.get(service) if state else None
        if state is None or progress is None:
            raise UserError(f"no release of {service!r} is in progress; see `ondeck status`")
        now = time.time()
        if action == "promote":
            progress = rollout.promote(progress, now)
        else:
            progress = rollout.abort(progress, "aborted by a person (ondeck rollout abort)", now)
        state.releases[service] = progress
        self._save_releases(state)
        self.store.events_add(state.name, service, action, f"{service}: {action} by a person", now)
        log.info("[%s] %s: %s", state.name, service, action)
        self.wake()
        return progress

    def _open_heal_op(self, state: EnvState, steps: Plan, trigger: Trigger) -> None:
        assert state.desired is not None and state.commit is not None
        c = state.commit
        op_id = self.store.begin_sync(state.name, c.sha, c.author, c.message, trigger, time.time())
        state.op = Operation(op_id, c.sha, trigger, time.time())
        log.info("[%s] drift: %s", state.name, "; ".join(_describe(a) for a in steps.actions))

    async def _execute(
        self, state: EnvState, sup: Supervisor, desired: Desired, actions: tuple[Action, ...]
    ) -> None:
        done: list[str] = []
        for action in actions:
            svc = desired.service(action.service)
            if isinstance(action, Start) and svc is not None:
                dest = release_dir(
                    self.opts.state_dir, desired.app, state.name, svc.name, svc.fingerprint
                )
                if desired.runtime == "process" and not is_complete(dest):  # drifted, or removed
                    await asyncio.to_thread(self._prepare_releases, state, desired)
                inst_id = await sup.start(desired, svc, dest)
                done.append(f"start {inst_id}")
                continue
            if isinstance(action, Restart) and svc is not None:
                where = Path(sup.instances[action.instance].rec.release_dir)
                if desired.runtime == "process" and not is_complete(where):
                    await asyncio.to_thread(self._prepare_releases, state, desired)
                await sup.restart(desired, svc, action.instance)
            elif isinstance(action, Stop):
                sup.stop(action.instance, action.reason)
            elif isinstance(action, Forget):
                sup.forget(action.instance)
            done.append(_describe(action))
        if state.op is not None and done:
            self.store.add_sync_actions(state.op.id, done)

    def _settle(self, state: EnvState, steps: Plan, now: float) -> None:
        """Close the open sync once live matches, or fail it when it cannot get there."""
        assert state.op is not None and state.supervisor is not None and state.desired is not None
        current = {s.name: s.fingerprint for s in state.desired.services}
        found = verdict(
            current,
            state.supervisor.live(),
            state.releases,
            steps.done,
            steps.waiting,
            state.op.started,
            now,
        )
        if found.result is not None:
            self._finish(state, found.result, found.reason)

    def _finish(self, state: EnvState, result: SyncResult, error: str | None = None) -> None:
        op = state.op
        if op is None:
            return
        now = time.time()
        self.store.finish_sync(op.id, result, now, error)
        self.metrics.syncs.labels(state.name, result).inc()
        self.metrics.sync_duration.labels(state.name).observe(now - op.started)
        state.op, state.last_result = None, result
        if result is SyncResult.SUCCEEDED:
            self._save_env(state, live=op.revision)
            asyncio.get_running_loop().run_in_executor(
                None, self._note, state.name, op.revision, now
            )
        log_fn = log.info if result is SyncResult.SUCCEEDED else log.warning
        log_fn(
            "[%s] sync %s %s in %.2fs%s",
            state.name,
            op.revision[:12],
            result,
            now - op.started,
            f": {error}" if error else "",
        )

    def _note(self, env: str, revision: str, at: float) -> None:
        """The deploy ledger in git itself: `git log --notes=ondeck` shows what ran where."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        text = f"ondeck: live in {env} on {socket.gethostname()} since {when}"
        try:
            add_note(self.source.mirror_dir, revision, text)
        except (SourceError, UserError) as err:
            log.warning("[%s] could not record the git note: %s", env, err)
            return
        if not push_notes(self.source.mirror_dir, remote=self.source.url):
            log.debug("[%s] notes not pushed: no write access to %s", env, self.source.url)

    def _answer_requests(self) -> None:
        """Answer each fetched request whose environments have settled."""
        for request in list(self._requests):
            settled = all(self.envs[name].op is None for name in request.envs)
            if request.future.done() or (request.fetched and (request.error or settled)):
                self._requests.remove(request)
            if request.fetched and (request.error or settled) and not request.future.done():
                error = request.error or next(
                    (self.envs[n].error for n in request.envs if self.envs[n].error), None
                )
                request.future.set_result(SyncAnswer(error=error, status=self.status()))

    # -- instances ----------------------------------------------------------------------

    def _supervisor(self, app: str, env: str) -> Supervisor:
        sup = Supervisor(
            app, env, self.opts.state_dir, self.store, self.runtimes, self.metrics, self.wake
        )
        sup.before_stop = self._drain
        return sup

    def _on_exit(self, event: ExitEvent) -> None:
        for state in self.envs.values():
            if state.supervisor is not None and state.supervisor.on_exit(event):
                return

    def _containers(self) -> ContainerRuntime:
        """The container engine, connected (or a Podman service started) on first use."""
        if "container" not in self.runtimes:
            self.runtimes["container"] = ContainerRuntime(
                self.opts.state_dir, self._on_exit, self.opts.container_host
            )
        runtime = self.runtimes["container"]
        assert isinstance(runtime, ContainerRuntime)
        return runtime

    def _adopt(self) -> None:
        """Re-attach to instances left by an earlier controller; stop strays."""
        scanned: dict[str, tuple[Handle, Runtime]] = {}
        if any(r.runtime == "container" for r in self.store.instances()):
            try:
                engine = self._containers()
                scanned.update({i: (h, engine) for i, h in engine.scan().items()})
            except RuntimeFailure as err:
                log.error("cannot reach the container engine to re-adopt containers: %s", err)
        scanned.update({i: (h, self.runtime) for i, h in self.runtime.scan().items()})
        owners = {i: owner for i, (_, owner) in scanned.items()}
        handles = {i: handle for i, (handle, _) in scanned.items()}
        for record_env in self.envs.values():
            saved = self.store.get_env(record_env.name)
            records = [r for r in self.store.instances(env=record_env.name)]
            if not records:
                continue
            app = records[0].app
            record_env.supervisor = self._supervisor(app, record_env.name)
            record_env.supervisor.adopt(records, handles)
            open_op = self.store.open_sync(record_env.name)
            if open_op is not None:
                self.store.finish_sync(
                    open_op.id, SyncResult.ABORTED, time.time(), "controller restarted"
                )
            if saved is not None and saved.desired_revision:
                record_env.seen = None
        managed = {r.id for r in self.store.instances()}
        for inst_id, handle in handles.items():
            if inst_id not in managed:
                log.warning(
                    "stopping stray instance %s (pid %d): no record of it", inst_id, handle.pid
                )
                owner = owners[inst_id]
                if owner.adopt(handle):
                    asyncio.get_running_loop().create_task(owner.stop(handle, "TERM", 10.0))

    def _housekeeping(self) -> None:
        for state in self.envs.values():
            if state.supervisor is None:
                continue
            for inst in list(state.supervisor.instances.values()):
                rotate(Path(inst.rec.log_path), self.opts.log_max_bytes, self.opts.log_keep)
            if state.op is None and state.desired is not None:
                keep = {Path(i.rec.release_dir) for i in state.supervisor.instances.values()}
                keep |= {
                    release_dir(
                        self.opts.state_dir, state.desired.app, state.name, s.name, s.fingerprint
                    )
                    for s in state.desired.services
                }
                prune(self.opts.state_dir / "releases" / state.desired.app / state.name, keep)

    def _shutdown(self) -> None:
        for state in self.envs.values():
            if state.supervisor is not None:
                state.supervisor.close()
        for runtime in self.runtimes.values():
            runtime.close()  # type: ignore[attr-defined]
        self.store.close()

    # -- reporting ----------------------------------------------------------------------

    def _env(self, name: str) -> EnvState:
        if name not in self.envs:
            raise UserError(
                f"unknown environment {name!r}; this controller runs: {', '.join(self.envs)}"
            )
        return self.envs[name]

    def _save_env(self, state: EnvState, live: str | None = None) -> None:
        old = self.store.get_env(state.name)
        live_commit = old.live_commit if old else None
        if live is not None and state.commit is not None:
            live_commit = commit_json(state.commit)
        self.store.put_env(
            EnvRecord(
                env=state.name,
                desired_revision=state.desired.revision if state.desired else None,
                live_revision=live or (old.live_revision if old else None),
                error=state.error,
                error_revision=state.error_commit.sha if state.error_commit else None,
                updated_at=time.time(),
                extra=dict(old.extra) if old else {},
                live_commit=live_commit,
            )
        )

    def _export_metrics(self, doc: StatusDoc) -> None:
        """The gauges, from the status document (a no-op when it has not changed)."""
        if doc is self._exported:
            return
        self._exported = doc
        for env in doc.environments:
            if env.revision is None:
                continue
            for svc in env.services:
                if svc.fingerprint is None:
                    continue  # pruned: not in the spec any more
                self.metrics.desired.labels(env.name, svc.name).set(svc.replicas.desired)
                ready = sum(
                    1
                    for i in svc.instances
                    if i.health is Health.HEALTHY
                    and i.state == InstanceState.RUNNING
                    and i.fingerprint == svc.fingerprint
                )
                self.metrics.ready.labels(env.name, svc.name).set(ready)
            self.metrics.set_env_info(env.name, env.revision, env.sync, env.health)

    def status(self) -> StatusDoc:
        """The `ondeck status --json` document, rebuilt only when something changed."""
        key = self._change_key()
        if self._status is None or key != self._status_key:
            self._status, self._status_key = self._build_status(), key
        return self._status

    def _change_key(self) -> object:
        """A cheap fingerprint of everything the status shows."""
        envs = tuple(
            (
                s.desired.revision if s.desired else None,
                s.commit,
                s.candidate,
                s.error,
                s.op,
                s.last_result,
                s.supervisor.changes if s.supervisor else -1,
                tuple(s.releases.items()),
                tuple(s.traffic.items()),
                tuple(s.measurements.items()),
            )
            for s in self.envs.values()
        )
        strays = tuple(
            (e, tuple((k, tuple(v)) for k, v in m.items())) for e, m in self.strays.items()
        )
        router = self.router.error if self.router is not None else None
        fetch = (self.fetch.error, self.fetch.head, self.fetch.last_ok)
        return (envs, strays, router, fetch, self.store.changes)

    def _build_status(self) -> StatusDoc:
        return StatusDoc(
            environments=[self.report.env_status(s, self.fetch.error) for s in self.envs.values()],
            source=SourceStatus(
                repo=self.opts.repo,
                branch=self.opts.branch,
                path=self.opts.path,
                head=self.fetch.head,
                error=self.fetch.error,
                last_fetch=self.fetch.last_ok,
            ),
            router=RouterStatus(
                listen=self.opts.listen,
                error=self.router.error if self.router is not None else None,
            ),
            controller=ControllerStatus(
                started_at=self.started,
                auto_sync=self.opts.auto_sync,
                self_heal=self.opts.self_heal,
                poll=self.opts.poll,
            ),
        )

    def diffs(self, state: EnvState) -> list[ServiceDiff]:
        return self.report.diffs(state)

    def unified_diffs(self, state: EnvState) -> dict[str, list[str]]:
        return self.report.unified_diffs(state)

    # -- drift ----------------------------------------------------------------------------

    def _find_drift(self) -> tuple[list[tuple[str, str, str]], list[Stray]]:
        """Edits by hand since ondeck started things: release files, environments, strays.

        Runs in a worker thread: it only reads (files, /proc); `_apply_drift`
        acts on what it found, in the loop.
        """
        findings: list[tuple[str, str, str]] = []
        checked: dict[str, list[str]] = {}
        for state in self.envs.values():
            for inst in list(state.supervisor.instances.values()) if state.supervisor else []:
                if inst.rec.state is not InstanceState.RUNNING or inst.rec.drift:
                    continue
                where = inst.rec.release_dir
                if where not in checked:
                    checked[where] = drift(Path(where))
                    if checked[where]:
                        taint(Path(where))  # a clean copy is prepared before the next start
                if checked[where]:
                    shown = ", ".join(checked[where][:3]) + (
                        " …" if len(checked[where]) > 3 else ""
                    )
                    findings.append(
                        (state.name, inst.rec.id, f"release files changed by hand: {shown}")
                    )
                elif (reason := state.supervisor.env_drift(inst)) is not None:  # type: ignore[union-attr]
                    findings.append((state.name, inst.rec.id, reason))
        return findings, find_strays(self.opts.state_dir, self._known_pids())

    def _known_pids(self) -> set[int]:
        return {
            inst.rec.pid
            for state in self.envs.values()
            if state.supervisor
            for inst in state.supervisor.instances.values()
            if inst.rec.pid
        }

    def _apply_drift(self, findings: list[tuple[str, str, str]], strays: list[Stray]) -> None:
        for env, inst_id, reason in findings:
            sup = self.envs[env].supervisor
            if sup is not None:
                sup.mark_drift(inst_id, reason)
        self.strays = {}
        for stray in strays:
            reason = f"process {stray.pid} ({stray.command}) started by hand in the release"
            if self.opts.self_heal:
                log.warning("[%s] stopping %s", stray.env, reason)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray.pid, signal.SIGTERM)
                self.store.events_add(
                    stray.env, stray.service, "drift", f"stopped {reason}", time.time()
                )
            else:
                self.strays.setdefault(stray.env, {}).setdefault(stray.service, []).append(reason)


def _describe(action: Action) -> str:
    if isinstance(action, Start):
        return f"start {action.service}"
    if isinstance(action, Stop):
        return f"stop {action.instance} ({action.reason})"
    return f"{type(action).__name__.lower()} {action.instance}"


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)
