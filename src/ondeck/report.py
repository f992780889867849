"""How an environment's state is shown: the status models, reasons and unified diffs.

Read-only views over `Environment`s, called by the controller once per reconcile
pass (and by the API for `ondeck diff`). It never imports the controller:
what it needs of the host (the store, how to render a revision, the strays
found) is handed to the `Reporter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from ondeck.cluster import ClusterEnv
from ondeck.environment import Environment, commit_json
from ondeck.errors import SourceError, SpecError, UserError
from ondeck.runtime.kube_canary import progress_of
from ondeck.secrets import known as known_secrets
from ondeck.source.git import CommitInfo
from ondeck.source.git import _redact as redact_url
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.diff import ServiceDiff, Sync, diff, overall, service_view, unified
from ondeck.state.health import Health, Verdict, instance_health, service_health, worst
from ondeck.state.lifecycle import InstanceState
from ondeck.state.live import LiveInstance, Phase
from ondeck.state.rollout import Progress, Stage, Traffic
from ondeck.status import (
    AnalysisStatus,
    BackupStatus,
    CommitStatus,
    EnvStatus,
    InstanceStatus,
    OperationStatus,
    ReleaseStatus,
    Replicas,
    ServiceStatus,
    TrafficStatus,
)
from ondeck.store import Store

Strays = Mapping[str, Mapping[str, list[str]]]  # env -> service -> reasons


class Reporter:
    """Views of a host's environments; caches specs rendered at older revisions."""

    def __init__(
        self,
        store: Store,
        render_revision: Callable[[Environment, str], Desired],
        strays: Callable[[], Strays],
    ) -> None:
        self.store = store
        self._render = render_revision
        self._strays = strays
        self._rendered: dict[tuple[str, str], Desired] = {}  # (env, revision)

    def diffs(self, state: Environment) -> list[ServiceDiff]:
        if state.desired is not None and state.desired.runtime == "kubernetes":
            return cluster_diffs(self.target(state), state.cluster, state.op is not None)
        if state.desired is None or state.supervisor is None:
            return []
        found = diff(self.target(state), state.supervisor.live())
        strays = self._strays().get(state.name, {})
        return [
            replace(d, sync=Sync.OUT_OF_SYNC, reasons=(*d.reasons, *strays[d.name]))
            if strays.get(d.name)
            else d
            for d in found
        ]

    def unified_diffs(self, state: Environment) -> dict[str, list[str]]:
        """Per service, a unified diff of what runs (live) against what git says (desired)."""
        if state.desired is not None and state.desired.runtime == "kubernetes":
            return self.cluster_unified(state)
        if state.desired is None or state.supervisor is None:
            return {}
        target = self.target(state)
        live = state.supervisor.live()
        out: dict[str, list[str]] = {}
        for name in sorted(target.names | live.services):
            running = [i for i in live.of(name) if i.phase is Phase.RUNNING]
            revisions = sorted({i.revision for i in running})
            runs = self.live_service(state, name, running)
            want = target.service(name)
            out[name] = unified(
                name,
                service_view(runs, len(running), revisions, known_secrets.VALUES),
                service_view(
                    want, want.replicas if want else 0, [target.revision], known_secrets.VALUES
                ),
            )
        return out

    def cluster_unified(self, state: Environment) -> dict[str, list[str]]:
        """runtime kubernetes: per service, what its Deployment was applied from against git."""
        target = self.target(state)
        observed = state.cluster.observed if state.cluster is not None else None
        applied = {s.name: s for s in observed.status.services} if observed else {}
        out: dict[str, list[str]] = {}
        for name in sorted(target.names | set(applied)):
            live = applied.get(name)
            rendered = self.rendered_at(state, live.revision) if live and live.revision else None
            runs = rendered.service(name) if rendered is not None else None
            want = target.service(name)
            out[name] = unified(
                name,
                service_view(
                    runs,
                    live.desired if live else 0,
                    [live.revision or ""] if live else [],
                    known_secrets.VALUES,
                ),
                service_view(
                    want, want.replicas if want else 0, [target.revision], known_secrets.VALUES
                ),
            )
        return out

    def target(self, state: Environment) -> Desired:
        """What git says now: the pending commit when auto-sync is off, else the applied one."""
        assert state.desired is not None
        if state.candidate is None:
            return state.desired
        return self.rendered_at(state, state.candidate.sha) or state.desired

    def rendered_at(self, state: Environment, revision: str) -> Desired | None:
        key = (state.name, revision)
        if key not in self._rendered:
            try:
                self._rendered[key] = self._render(state, revision)
            except (SpecError, UserError, SourceError):
                return None
        return self._rendered[key]

    def live_service(
        self, state: Environment, name: str, running: list[LiveInstance]
    ) -> DesiredService | None:
        """The spec the running instances were started from (their most common release)."""
        if not running:
            return None
        counts: dict[tuple[str, str], int] = {}
        for inst in running:
            counts[(inst.revision, inst.fingerprint)] = (
                counts.get((inst.revision, inst.fingerprint), 0) + 1
            )
        revision, fingerprint = max(counts, key=lambda k: counts[k])
        rendered = self.rendered_at(state, revision)
        svc = rendered.service(name) if rendered else None
        if svc is None:
            return None
        # A followed branch renders as it points now: the code shown is what the instance runs.
        ran = next((i.code_revision for i in running if i.fingerprint == fingerprint), None)
        code = replace(svc.code, sha=ran) if svc.code is not None and ran else svc.code
        return replace(svc, fingerprint=fingerprint, code=code)

    def env_status(self, state: Environment, fetch_error: str | None) -> EnvStatus:
        record = self.store.get_env(state.name)
        diffs = self.diffs(state)
        services = self.services_status(state, diffs)
        sync = Sync.UNKNOWN if state.desired is None or state.error is not None else overall(diffs)
        if state.candidate is not None:
            sync = Sync.OUT_OF_SYNC
        health = (
            worst(s.health for s in services)
            if services
            else (Health.HEALTHY if state.desired is not None else Health.UNKNOWN)
        )
        live_commit = record.live_commit if record else None
        return EnvStatus(
            name=state.name,
            revision=state.desired.revision if state.desired else None,
            live_revision=record.live_revision if record else None,
            sync=sync,
            health=health,
            error=state.error or (f"fetch failed: {fetch_error}" if fetch_error else None),
            error_commit=commit_status(state.error_commit),
            commit=commit_status(state.commit),
            live_commit=CommitStatus.model_validate(live_commit) if live_commit else None,
            pending_commit=commit_status(state.candidate),
            operation=OperationStatus(
                revision=state.op.revision, trigger=state.op.trigger, started_at=state.op.started
            )
            if state.op
            else None,
            last_result=state.last_result,
            app=state.desired.app if state.desired else None,
            services=services,
            conditions=[
                c for c in (state.rewritten, cluster_error(state), state.leaving_error()) if c
            ],
            namespace=observed_namespace(state),
            backups=[BackupStatus.model_validate(b) for b in state.backups.status()],
        )

    def services_status(self, state: Environment, diffs: list[ServiceDiff]) -> list[ServiceStatus]:
        if state.desired is not None and state.desired.runtime == "kubernetes":
            return cluster_services(state.desired, state.cluster, diffs)
        if state.desired is None or state.supervisor is None:
            return []
        live = state.supervisor.live()
        reasons = {d.name: d for d in diffs}
        out = []
        for name in sorted(state.desired.names | live.services):
            svc = state.desired.service(name)
            instances = live.of(name)
            verdict = service_health(svc.replicas if svc else 0, instances)
            if svc is None:
                verdict = Verdict(Health.PROGRESSING, "pruning")
            release = state.releases.get(name)
            if release is not None and svc is not None and release.canary == svc.fingerprint:
                verdict = release_health(release, verdict)
            figures = state.measurements.get(name)
            d = reasons.get(name)
            out.append(
                ServiceStatus(
                    name=name,
                    sync=d.sync if d else Sync.SYNCED,
                    health=verdict.health,
                    health_reason=verdict.reason,
                    reasons=list(d.reasons) if d else [],
                    version=svc.spec.version if svc else None,
                    fingerprint=svc.fingerprint if svc else None,
                    code_revision=running_code(svc, instances),
                    desired_code_revision=desired_code(state.desired, svc, instances),
                    code_ref=svc.code.ref if svc and svc.code else None,
                    code_repo=redact_url(svc.code.repo)
                    if svc and svc.code and svc.code.repo
                    else None,
                    replicas=Replicas(
                        desired=svc.replicas if svc else 0,
                        ready=sum(1 for i in instances if i.ready),
                    ),
                    instances=[self.instance_status(state, i) for i in instances],
                    release=ReleaseStatus.model_validate(release.to_json()) if release else None,
                    traffic=traffic_status(state.traffic.get(name)),
                    analysis=AnalysisStatus.model_validate(figures.__dict__) if figures else None,
                )
            )
        return out

    def instance_status(self, state: Environment, li: LiveInstance) -> InstanceStatus:
        assert state.supervisor is not None
        rec = state.supervisor.instances[li.id].rec
        return InstanceStatus(
            id=li.id,
            pid=li.pid,
            port=li.port,
            revision=li.revision,
            code_revision=li.code_revision,
            health=instance_health(li).health,
            restarts=li.restarts,
            state=rec.state,
            fingerprint=li.fingerprint,
            started_at=li.started_at,
            exit_code=li.exit_code,
            last_error=li.last_error,
            log_tail=rec.log_tail if rec.state is InstanceState.EXITED else None,
            log_path=rec.log_path,
        )


def running_code(svc: DesiredService | None, instances: list[LiveInstance]) -> str | None:
    """The code the service runs: its current release's instances', else most instances'."""
    running = [i for i in instances if i.phase is Phase.RUNNING and i.code_revision]
    current = [i for i in running if svc is not None and i.fingerprint == svc.fingerprint]
    found = [i.code_revision for i in current or running if i.code_revision]
    return max(set(found), key=found.count) if found else None


def desired_code(
    desired: Desired, svc: DesiredService | None, instances: list[LiveInstance]
) -> str | None:
    """The code commit the service should run. Without a pin, a spec-only commit does not
    move it: instances of the current release run the code they were started with."""
    if svc is None:
        return None
    if svc.code is None:
        current = [i.code_revision for i in instances if i.fingerprint == svc.fingerprint]
        return next((c for c in current if c), desired.revision)
    return svc.code.sha


def cluster_error(state: Environment) -> str | None:
    observed = state.cluster.observed if state.cluster is not None else None
    return f"the cluster: {observed.error}" if observed and observed.error else None


def observed_namespace(state: Environment) -> str | None:
    observed = state.cluster.observed if state.cluster is not None else None
    return observed.namespace if observed is not None else None


def cluster_diffs(target: Desired, cluster: ClusterEnv | None, syncing: bool) -> list[ServiceDiff]:
    """runtime kubernetes: a service is OutOfSync while its objects are not at the target
    revision (a sync under way), or changed by hand and left so (self-heal off)."""
    observed = cluster.observed if cluster is not None else None
    applied = {s.name: s for s in observed.status.services} if observed else {}
    drifted = observed.drifted if observed else ()
    out: list[ServiceDiff] = []
    for name in sorted(target.names | set(applied)):
        live = applied.get(name)
        reasons: list[str] = []
        if name not in target.names:
            reasons.append("not in the spec any more: to be pruned")
        elif live is None or live.verdict.health is Health.MISSING:
            reasons.append("not on the cluster yet")
        elif live.revision != target.revision:
            reasons.append(
                f"applied at {(live.revision or '?')[:12]}, git says {target.revision[:12]}"
            )
        elif syncing and live.verdict.health is not Health.HEALTHY:
            reasons.append(f"rolling out: {live.verdict.reason}")
        for key in drifted:
            if _names_service(key, name):
                reasons.append(
                    f"{key} changed by hand (self-heal is off: `ondeck sync` reverts it)"
                )
        out.append(ServiceDiff(name, Sync.OUT_OF_SYNC if reasons else Sync.SYNCED, tuple(reasons)))
    return out


def _names_service(key: str, service: str) -> bool:
    """Is object `Kind/ns/name` one of `service`'s (web, web-env, web-blue, ...)?"""
    name = key.rsplit("/", 1)[-1]
    return name == service or name.startswith(f"{service}-")


def cluster_services(
    desired: Desired, cluster: ClusterEnv | None, diffs: list[ServiceDiff]
) -> list[ServiceStatus]:
    """runtime kubernetes: each service from its Deployment; its pods are the instances."""
    observed = cluster.observed if cluster is not None else None
    applied = {s.name: s for s in observed.status.services} if observed else {}
    reasons = {d.name: d for d in diffs}
    out = []
    for name in sorted(desired.names | set(applied)):
        svc, live = desired.service(name), applied.get(name)
        verdict = live.verdict if live else Verdict(Health.MISSING, "not on the cluster yet")
        if svc is None:
            verdict = Verdict(Health.PROGRESSING, "pruning")
        pods = observed.pods.get(name, ()) if observed else ()
        canary = cluster.canary(name) if cluster is not None else None
        logs = {crash.pod: lines for crash, lines in live.crashes} if live else {}
        d = reasons.get(name)
        current = svc is not None and verdict.health is Health.HEALTHY
        out.append(
            ServiceStatus(
                name=name,
                sync=d.sync if d else Sync.SYNCED,
                health=verdict.health,
                health_reason=verdict.reason,
                reasons=list(d.reasons) if d else [],
                version=svc.spec.version if svc else None,
                fingerprint=svc.fingerprint if svc else None,
                replicas=Replicas(
                    desired=svc.replicas if svc else 0, ready=live.ready if live else 0
                ),
                instances=[
                    InstanceStatus(
                        id=pod.name,
                        revision=(live.revision or "") if live else "",
                        health=Health.HEALTHY
                        if pod.ready
                        else (Health.DEGRADED if pod.name in logs else Health.PROGRESSING),
                        restarts=pod.restarts,
                        state=InstanceState.RUNNING,
                        # every pod of a settled Deployment runs its current template
                        fingerprint=svc.fingerprint if current and svc else pod.template,
                        started_at=pod.started_at,
                        last_error=pod.waiting,
                        log_tail=logs.get(pod.name),
                    )
                    for pod in pods
                ],
                release=ReleaseStatus.model_validate(progress_of(canary).to_json())
                if canary
                else None,
            )
        )
    return out


def commit_status(commit: CommitInfo | None) -> CommitStatus | None:
    return CommitStatus.model_validate(commit_json(commit)) if commit else None


def release_health(release: Progress, verdict: Verdict) -> Verdict:
    """A stopped release is Degraded and a paused one Suspended, whatever the instances say."""
    if release.stage is Stage.ABORTED:
        return Verdict(Health.DEGRADED, f"release {release.canary} aborted: {release.reason}")
    if release.stage is Stage.PAUSED and verdict.health is not Health.DEGRADED:
        return Verdict(
            Health.SUSPENDED,
            f"paused at {release.weight}%: run `ondeck rollout promote {release.service}`",
        )
    return verdict


def traffic_status(traffic: Traffic | None) -> TrafficStatus | None:
    if traffic is None or traffic.canary is None:
        return None
    return TrafficStatus(stable=traffic.stable, canary=traffic.canary, weight=traffic.weight)
