"""The host loop: fetch, requests, adoption, housekeeping; one `Environment` per environment.

`ondeck up` runs one `Controller` (built by daemon.py). It wakes on a timer
(poll), on a request (CLI, API) and on every instance event (exit, health
change, backoff timer). Each pass reconciles every environment; nothing slow
runs in a pass: fetching, rendering and building run in background tasks
(fetch here, a revision's prepare phase in its `Environment`), so a build in
one environment never delays the restart of a crashed instance in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ondeck import envjobs
from ondeck.alerts import drift_event, status_events
from ondeck.backup.manifest import Manifest
from ondeck.backup.service import BackupService
from ondeck.clock import SYSTEM_CLOCK, Clock
from ondeck.cluster import ClusterLink
from ondeck.drift import Finding, Strays, apply_drift, find_drift
from ondeck.environment import Environment, Host, Options, prune_shared
from ondeck.errors import OndeckError, RuntimeFailure, SourceError, UserError
from ondeck.https import CertificateManager, env_tls, wanted
from ondeck.jobs.scheduler import JobMetrics
from ondeck.metrics import Metrics
from ondeck.notify import Notifier
from ondeck.report import Reporter
from ondeck.rollout.strategies import EnvTraffic
from ondeck.runtime.base import ExitEvent, Handle, Runtime, Runtimes
from ondeck.runtime.kubernetes import Cluster
from ondeck.source.base import Source
from ondeck.spec.routes import collisions, service_claims
from ondeck.state.desired import DEFAULT_ENV
from ondeck.state.diff import ServiceDiff
from ondeck.state.health import Health, worst
from ondeck.state.lifecycle import InstanceState, SyncResult, Trigger
from ondeck.state.rollout import Progress
from ondeck.status import (
    CertificateStatus,
    ControllerStatus,
    EnvStatus,
    JobStatus,
    NotificationStatus,
    RouterStatus,
    SourceStatus,
    StatusDoc,
    StoreStatus,
    SyncAnswer,
)
from ondeck.store import Store
from ondeck.supervisor import Stray, records_from_proc
from ondeck.traffic import RouterControl

__all__ = ["Controller", "Options", "Trigger"]

log = logging.getLogger("ondeck")

FETCH_BACKOFF_MAX = 300.0
DOWN_DEADLINE = 120.0  # `ondeck down` waits this long for graceful stops
STORE_RETRY = 5.0  # how often held writes are tried again while the disk is full


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

    def __init__(
        self,
        opts: Options,
        *,
        store: Store,
        source: Source,
        runtimes: Runtimes,
        router: RouterControl | None,
        clock: Clock = SYSTEM_CLOCK,
        certificates: CertificateManager | None = None,
    ) -> None:
        self.opts, self.store, self.source, self.clock = opts, store, source, clock
        self.runtimes, self.router = runtimes, router
        runtimes.listen(self._on_exit)
        self.metrics = Metrics()
        self.certificates = certificates  # HTTPS: obtained, renewed, pushed in its own task
        if certificates is not None:
            certificates.metrics = self.metrics
        self.cluster = ClusterLink(Cluster(opts.kubeconfig, opts.kube_context))
        self.host = Host(
            opts,
            store,
            source,
            runtimes,
            self.metrics,
            clock,
            router,
            self.wake,
            self._routing,
            self.cluster,
        )
        names = opts.envs or (DEFAULT_ENV,)
        self.envs = {
            n: Environment(n, None if n == DEFAULT_ENV and not opts.envs else n, self.host)
            for n in names
        }
        self.notifier = Notifier(self.metrics.registry, clock.time)
        job_metrics = JobMetrics(self.metrics.registry)
        self.jobs = {
            name: envjobs.attach(env, self.notifier, job_metrics) for name, env in self.envs.items()
        }
        self.fetch = FetchState()
        self.started = clock.time()
        self.strays: Strays = {}
        self.report = Reporter(
            store, lambda env, rev: env.render_revision(rev, fetch=False), lambda: self.strays
        )
        self._wake_event: asyncio.Event | None = None
        self._refresh: Trigger | None = Trigger.STARTUP
        self._stopping = False
        # An app of a host file: `down` holds every environment down, the loop goes on
        # (`ondeck sync` starts them again); the host's other apps and router serve on.
        self.hold_on_down = False
        self._down: tuple[str | None, asyncio.Future[list[str]]] | None = None
        self._next_housekeeping = 0.0
        self._requests: list[SyncRequest] = []
        self._fetching: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._certifying: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None
        self._status: StatusDoc | None = None
        self._status_key: object = None
        self._exported: StatusDoc | None = None
        self._status_json: tuple[StatusDoc, dict[str, Any]] | None = None

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        await self.start()
        try:
            while not self._stopping:
                await self.step()
                if self._down is not None:
                    await self._go_down(*self._down)
                    continue
                await self._sleep()
        finally:
            self.close()

    async def start(self) -> None:
        """Before the first pass: adopt what runs, restore what was deployed, find the router."""
        self._wake_event = asyncio.Event()
        self._adopt()
        for env in self.envs.values():
            await env.restore()
        if self.router is not None:
            await self.router.ensure()
        if self.certificates is not None:  # ACME never runs in a pass: its own task
            self._certifying = self._background(self.certificates.run(), "_certifying")

    def stop(self) -> None:
        """Leave the loop; instances keep running (the data plane outlives us)."""
        self._stopping = True
        self.wake()

    def request_down(self, env: str | None) -> asyncio.Future[list[str]]:
        """`ondeck down`: stop instances (and, for the whole host, the router) between passes.

        Without `env` the controller then exits too: everything is down, the state is
        kept, and the next `ondeck up` brings it all back. With `env` that environment
        is held down while the others go on, until `ondeck sync --env` starts it again.
        """
        if env:
            self.env(env).refuse_on_cluster(
                "`ondeck down --env`",
                "scale its Deployments with kubectl, or take the environment out of ondeck.yaml",
            )
        names = [self.env(env).name] if env else list(self.envs)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._down = (env and names[0], future)
        self.wake()
        return future

    async def _go_down(self, env: str | None, future: asyncio.Future[list[str]]) -> None:
        self._down = None
        deadline = time.monotonic() + DOWN_DEADLINE
        stopped: list[str] = []
        try:
            for state in self.envs.values():
                if env in (None, state.name):
                    stopped += await state.down(deadline)
                    message = f"ondeck down: stopped {len(stopped)} instance(s)"
                    self.store.events_add(state.name, None, "down", message, self.clock.time())
            if env is None and self.router is not None:
                await self.router.stop()
        except OndeckError as err:
            future.set_exception(err)
            return
        future.set_result(stopped)
        if env is None and not self.hold_on_down:
            self.stop()

    @property
    def stopped(self) -> bool:
        """The loop was asked to end (what serves this controller's API may end too)."""
        return self._stopping

    def wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    def request_sync(
        self, env: str | None, trigger: Trigger, skip_backup: bool = False
    ) -> asyncio.Future[SyncAnswer]:
        """Fetch now and sync; the future resolves once the named env(s) settle."""
        names = [self.env(env).name] if env else list(self.envs)
        for name in names:
            self.envs[name].held_down = False  # after `ondeck down --env`: run it again
        for name in names if skip_backup else ():
            self.envs[name].skip_backup = True
            self.envs[name].seen = None  # a head refused for its failed backup is tried again
        future: asyncio.Future[SyncAnswer] = asyncio.get_running_loop().create_future()
        self._requests.append(SyncRequest(names, future))
        self._refresh = trigger
        self.wake()
        return future

    def refresh(self, trigger: Trigger) -> None:
        """Fetch soon (webhook, poll); a burst of requests coalesces into one fetch."""
        self._refresh = trigger
        self.wake()

    async def step(self) -> None:
        """One pass: start what is due in the background, reconcile every environment."""
        if self._crash is not None:
            raise self._crash
        now = self.clock.time()
        if self._fetching is None and (self._refresh or now >= self.fetch.next_at):
            trigger, self._refresh = self._refresh or Trigger.POLL, None
            waiting = [r for r in self._requests if not r.fetched]
            self._fetching = self._background(self._pull(trigger, waiting), "_fetching")
        if self.store.held:
            self.store.retry()  # the disk was full: write what was held, if there is room now
        for env in self.envs.values():
            try:
                await env.reconcile()
            except Exception as err:  # a bug in one environment: contained there, reported
                env.contain(err)
        if self.router is not None:
            await self.router.push(self._routing())
        if self.certificates is not None:
            envs = [  # a cluster's HTTPS is its Ingress controller's (runtime/kubernetes.py)
                env_tls(e.desired)
                for e in self.envs.values()
                if e.desired is not None and e.desired.runtime != "kubernetes"
            ]
            self.certificates.want(wanted(envs))
        self._export_metrics(self.status())
        self._answer_requests()
        if self._housekeeping is None and now >= self._next_housekeeping:
            self._next_housekeeping = now + self.opts.drift_check
            self._housekeeping = self._background(self._housekeep(), "_housekeeping")

    async def idle(self, timeout: float) -> None:
        """Wait until something wakes the loop (an exit, a verdict, a request), at most `timeout`."""
        assert self._wake_event is not None  # set in start(); a bug otherwise
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_event.wait(), timeout)
        self._wake_event.clear()

    async def _sleep(self) -> None:
        deadlines = [self._next_housekeeping]
        if self._fetching is None:  # a fetch under way wakes the loop when it is done
            deadlines.append(self.fetch.next_at)
        deadlines += [s.wake_at for s in self.envs.values() if s.wake_at is not None]
        if self.store.held:
            deadlines.append(self.clock.time() + STORE_RETRY)
        await self.idle(max(0.0, min(deadlines) - self.clock.time()))

    def _background(self, work: Coroutine[Any, Any, None], slot: str) -> asyncio.Task[None]:
        """Run `work` off the pass; its slot clears when done, a bug in it stops the loop."""

        async def run() -> None:
            try:
                await work
            except BaseException as err:
                if not isinstance(err, asyncio.CancelledError):
                    self._crash = err
                raise
            finally:
                setattr(self, slot, None)
                self.wake()

        return asyncio.get_running_loop().create_task(run())

    @property
    def busy(self) -> bool:
        """Something is under way in the background (a fetch, a revision being prepared)."""
        return self._fetching is not None or any(e.loading for e in self.envs.values())

    # -- git ------------------------------------------------------------------------

    async def _pull(self, trigger: Trigger, waiting: list[SyncRequest]) -> None:
        self.metrics.fetches.inc()
        try:
            await asyncio.to_thread(self.source.fetch)
            head = await asyncio.to_thread(self.source.resolve)
        except (SourceError, UserError) as err:
            self._fetch_failed(err)
        else:
            if self.fetch.error:
                log.info("git source reachable again")
            now = self.clock.time()
            self.fetch = FetchState(None, 0, now + self.opts.poll, now, head)
            self.host.code.new_round()  # app repositories pinned by services: fetched again
            for env in self.envs.values():
                env.offer(head, trigger)
        for request in waiting:
            request.fetched, request.error = True, self.fetch.error

    def _fetch_failed(self, err: Exception) -> None:
        self.fetch.failures += 1
        delay = min(
            self.opts.poll * 2 ** (self.fetch.failures - 1), max(FETCH_BACKOFF_MAX, self.opts.poll)
        )
        self.fetch.next_at = self.clock.time() + delay
        if str(err) != self.fetch.error:
            log.warning("fetch failed (retry in %.0fs): %s", delay, err)
        self.fetch.error = str(err)
        for env in self.envs.values():
            self.metrics.fetch_errors.labels(env.name).inc()

    def _answer_requests(self) -> None:
        """Answer each fetched request whose environments have settled."""
        for request in list(self._requests):
            settled = all(
                self.envs[n].op is None and not self.envs[n].loading for n in request.envs
            )
            if request.future.done() or (request.fetched and (request.error or settled)):
                self._requests.remove(request)
            if request.fetched and (request.error or settled) and not request.future.done():
                error = request.error or next(
                    (self.envs[n].error for n in request.envs if self.envs[n].error), None
                )
                request.future.set_result(SyncAnswer(error=error, status=self.status()))

    # -- people ---------------------------------------------------------------------

    def backup_service(self, env: str | None) -> tuple[str, BackupService]:
        """`/api/v1/backups`: the backups of `env` (of the only environment when None)."""
        found = self.env(env) if env else self._only_env()
        if found.desired is not None:
            found.backups.follow(found.desired)
        if found.backups.service is None:
            raise UserError(f"{found.name} has no backups: add `backups:` to its ondeck.yaml")
        return found.name, found.backups.service

    async def restore_backup(
        self, env: str | None, name: str, backup_id: str | None, while_running: bool
    ) -> Manifest:
        found = self.env(env) if env else self._only_env()
        return await found.restore_backup(name, backup_id, while_running)

    def _only_env(self) -> Environment:
        if len(self.envs) != 1:
            raise UserError(
                f"name the environment with --env: this controller runs {', '.join(self.envs)}"
            )
        return next(iter(self.envs.values()))

    def env(self, name: str) -> Environment:
        if name not in self.envs:
            raise UserError(
                f"unknown environment {name!r}; this controller runs: {', '.join(self.envs)}"
            )
        return self.envs[name]

    def rollout_action(self, env: str | None, service: str, action: str) -> Progress:
        """`ondeck rollout promote|abort SERVICE`: a person steps in."""
        found = (
            self.env(env)
            if env
            else next(
                (e for e in self.envs.values() if service in e.releases or e.rolling(service)),
                None,
            )
        )
        if found is None:
            for state in self.envs.values():  # on a cluster: says why not, and what to do
                desired = state.desired
                if desired and desired.service(service) and state.on_cluster():
                    state.rollout_action(service, action)
            raise UserError(f"no release of {service!r} is in progress; see `ondeck status`")
        return found.rollout_action(service, action)

    # -- instances ------------------------------------------------------------------

    def _routing(self) -> list[EnvTraffic]:
        return [
            EnvTraffic(e.desired, e.supervisor.live().instances, e.traffic)
            for e in self.envs.values()
            if e.desired is not None and e.supervisor is not None
        ]

    def _on_exit(self, event: ExitEvent) -> None:
        for env in self.envs.values():
            if env.supervisor is not None and env.supervisor.on_exit(event):
                return

    def _adopt(self) -> None:
        """Re-attach to instances left by an earlier controller; stop strays."""
        scanned: dict[str, tuple[Handle, Runtime]] = {}
        if any(r.runtime == "container" for r in self.store.instances()):
            try:
                engine = self.runtimes["container"]
                scanned.update({i: (h, engine) for i, h in engine.scan().items()})
            except RuntimeFailure as err:
                log.error("cannot reach the container engine to re-adopt containers: %s", err)
        process = self.runtimes["process"]
        scanned.update({i: (h, process) for i, h in process.scan().items()})
        handles = {i: handle for i, (handle, _) in scanned.items()}
        self._recover_records({i: h for i, (h, owner) in scanned.items() if owner is process})
        for env in self.envs.values():
            # a sync the last controller left open (on Kubernetes, with no instance here too)
            open_op = self.store.open_sync(env.name)
            if open_op is not None:
                self.store.finish_sync(
                    open_op.id, SyncResult.ABORTED, self.clock.time(), "controller restarted"
                )
            records = self.store.instances(env=env.name)
            if records:
                env.ensure_supervisor(records[0].app).adopt(records, handles)
        managed = {r.id for r in self.store.instances()}
        for inst_id, (handle, owner) in scanned.items():
            if inst_id not in managed:
                log.warning(
                    "stopping stray instance %s (pid %d): no record of it", inst_id, handle.pid
                )
                if owner.adopt(handle):
                    asyncio.get_running_loop().create_task(owner.stop(handle, "TERM", 10.0))

    def _recover_records(self, handles: dict[str, Handle]) -> None:
        """Instances running without a record (the db lost or set aside) are adopted, not
        stopped: their records are rebuilt from what each process carries."""
        known = {r.id for r in self.store.instances()}
        lost = {i: h for i, h in handles.items() if i not in known}
        for rec in records_from_proc(lost, self.opts.state_dir, self.clock.time()):
            if rec.env not in self.envs:
                continue  # another controller's environment: a stray here, as before
            log.warning(
                "[%s] %s (pid %s) runs without a record: rebuilt from the process, adopted",
                rec.env,
                rec.id,
                rec.pid,
            )
            self.store.put_instance(rec)

    async def _housekeep(self) -> None:
        """Logs rotated, old releases pruned, drift found: in worker threads, off the pass."""
        if self.router is not None:
            await self.router.ensure()
        for env in self.envs.values():
            try:
                await asyncio.to_thread(env.housekeeping)
            except Exception as err:  # contained to that environment, as in a pass
                env.contain(err)
        await asyncio.to_thread(prune_shared, list(self.envs.values()), self.opts.state_dir)
        findings, strays = await asyncio.to_thread(
            find_drift, self.envs.values(), self.opts.state_dir
        )
        self.strays = apply_drift(
            self.envs, findings, strays, self.opts.self_heal, self.store, self.clock
        )
        self._notify_drift(findings, strays)

    def _notify_drift(self, findings: list[Finding], strays: list[Stray]) -> None:
        """One `drift` notice per service changed by hand (coalesced while it stays so)."""
        found = [
            (s.env, s.service, f"process {s.pid} ({s.command}) started by hand") for s in strays
        ]
        for f in findings:
            sup = self.envs[f.env].supervisor if f.env in self.envs else None
            inst = sup.instances.get(f.instance) if sup is not None else None
            found.append((f.env, inst.rec.service if inst is not None else "", f.reason))
        for env_name, service, reason in found:
            env = self.envs.get(env_name)
            if env is not None and env.desired is not None:
                notice = drift_event(
                    env.desired.app, env_name, service, reason, env.desired.revision
                )
                self.notifier.emit(notice)

    def close(self) -> None:
        for task in (self._fetching, self._housekeeping, self._certifying):
            if task is not None:
                task.cancel()
        for env in self.envs.values():
            env.close()
        self.runtimes.close()
        self.cluster.close()
        self.store.close()

    # -- status -----------------------------------------------------------------------

    def status(self) -> StatusDoc:
        """The `ondeck status --json` document, rebuilt only when something changed."""
        key = self._change_key()
        if self._status is None or key != self._status_key:
            previous = self._status
            self._status, self._status_key = self._build_status(), key
            for notice in status_events(previous, self._status):
                self.notifier.emit(notice)
        return self._status

    def status_json(self) -> dict[str, Any]:
        """`status()` as JSON-ready data, dumped once per change (callers must not mutate it)."""
        doc = self.status()
        if self._status_json is None or self._status_json[0] is not doc:
            self._status_json = (doc, doc.model_dump(mode="json"))
        return self._status_json[1]

    def diffs(self, env: Environment) -> list[ServiceDiff]:
        return self.report.diffs(env)

    def unified_diffs(self, env: Environment) -> dict[str, list[str]]:
        return self.report.unified_diffs(env)

    def _change_key(self) -> object:
        """A cheap fingerprint of everything the status shows."""
        envs = tuple(
            (
                e.desired.revision if e.desired else None,
                e.commit,
                e.candidate,
                e.error,
                e.op,
                e.last_result,
                e.supervisor.changes if e.supervisor else None,
                e.cluster.changes if e.cluster else None,
                e.fault,
                tuple(e.releases.items()),
                tuple(e.traffic.items()),
                tuple(e.measurements.items()),
                e.backups.version,
                e.held_down,
            )
            for e in self.envs.values()
        )
        strays = tuple(
            (env, tuple((svc, tuple(reasons)) for svc, reasons in found.items()))
            for env, found in self.strays.items()
        )
        router = self.router.error if self.router is not None else None
        fetch = (self.fetch.error, self.fetch.head, self.fetch.last_ok)
        certs = None
        if self.certificates is not None:  # expiry conditions move with time: hourly
            certs = (self.certificates.changes, int(self.clock.time() // 3600))
        notified = (self.notifier.changes, tuple(j.runner.changes for j in self.jobs.values()))
        return (
            envs,
            strays,
            router,
            fetch,
            self.store.changes,
            certs,
            self.store.unwritable,
            notified,
        )

    def _build_status(self) -> StatusDoc:
        certificates = [
            CertificateStatus(**row)
            for row in (self.certificates.status() if self.certificates is not None else [])
        ]
        environments = [self.report.env_status(e, self.fetch.error) for e in self.envs.values()]
        for env_doc, env in zip(environments, self.envs.values(), strict=True):
            app = env.desired.app if env.desired else ""
            if env.fault is not None:
                env_doc.conditions.append(env.fault)
                env_doc.health = worst((env_doc.health, Health.DEGRADED))
            env_doc.notifications = [
                NotificationStatus(**vars(t)) for t in self.notifier.status(app, env.name)
            ]
            env_doc.jobs = [
                JobStatus(
                    name=j.name,
                    schedule=j.schedule,
                    next_run=j.next_run,
                    running=len(j.running),
                    last_result=j.last.result.value if j.last else None,
                    last_run_at=j.last.started_at if j.last else None,
                    last_reason=j.last.reason if j.last else None,
                    last_success_at=j.last_success.finished_at if j.last_success else None,
                )
                for j in self.jobs[env.name].status(self.clock.time())
            ]
            if env.held_down:
                env_doc.conditions.append(
                    f"held down by `ondeck down`: `ondeck sync --env {env.name}` starts it again"
                )
        for env_doc, env in zip(environments, self.envs.values(), strict=True):
            owner = f"{env.desired.app}/{env.name}" if env.desired is not None else None
            for cert in certificates:
                if cert.degraded and owner in cert.owners:
                    env_doc.conditions.append(f"{cert.host}: {cert.degraded}")
                    env_doc.health = worst((env_doc.health, Health.DEGRADED))
        self._route_collisions(environments)
        return StatusDoc(
            certificates=certificates,
            environments=environments,
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
                listen_tls=self.opts.listen_tls,
                error=self.router.error if self.router is not None else None,
            ),
            store=StoreStatus(error=self.store.unwritable, held_writes=self.store.held),
            controller=ControllerStatus(
                started_at=self.started,
                auto_sync=self.opts.auto_sync,
                self_heal=self.opts.self_heal,
                poll=self.opts.poll,
            ),
        )

    def _route_collisions(self, environments: list[EnvStatus]) -> None:
        """Routes two environments (or apps) claim on the one router: named in both; the one
        the router does not serve (the later, as `router_config` keeps the first) is Degraded."""
        found = collisions(
            c
            for e in self._routing()
            for c in service_claims(
                ((s.name, s.spec) for s in e.desired.services), f"{e.desired.app}/{e.desired.env}"
            )
        )
        docs = {(d.app, d.name): d for d in environments}
        for hit in found:
            for claim in (hit.first, hit.second):
                app, env, _ = claim.owner.split("/", 2)
                doc = docs.get((app, env))
                if doc is None:
                    continue
                if hit.message not in doc.conditions:
                    doc.conditions.append(hit.message)
                if claim is hit.second:
                    doc.health = worst((doc.health, Health.DEGRADED))

    def _export_metrics(self, doc: StatusDoc) -> None:
        """The gauges, from the status document (nothing to do when it has not changed)."""
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
