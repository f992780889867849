"""How the controller's state is shown: the status document, reasons and unified diffs.

Read-only views over a running `Controller`, used by the API (and so by
`ondeck status`, `ondeck diff` and the metrics). The shape of `status()` is
a contract (DESIGN.md): extend it, never rename a key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ondeck.errors import SourceError, SpecError, UserError
from ondeck.source.git import CommitInfo
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.diff import ServiceDiff, Sync, diff, overall, service_view, unified
from ondeck.state.health import Health, Verdict, instance_health, service_health, worst
from ondeck.state.lifecycle import InstanceState
from ondeck.state.live import LiveInstance, Phase
from ondeck.state.rollout import Progress, Stage, Traffic

if TYPE_CHECKING:
    from ondeck.controller import Controller, EnvState


class Reporter:
    """Views of one controller; caches specs rendered at older revisions."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self._rendered: dict[tuple[str, str], Desired] = {}  # (env, revision)

    def status(self) -> dict[str, Any]:
        """The `ondeck status --json` document (its shape is a contract; see DESIGN.md)."""
        return {
            "environments": [self.env_status(s) for s in self.c.envs.values()],
            "source": {
                "repo": self.c.opts.repo,
                "branch": self.c.opts.branch,
                "path": self.c.opts.path,
                "head": self.c.fetch.head,
                "error": self.c.fetch.error,
                "last_fetch": self.c.fetch.last_ok,
            },
            "router": {
                "listen": self.c.opts.listen,
                "error": self.c.router.error if self.c.router is not None else None,
            },
            "controller": {
                "started_at": self.c.started,
                "auto_sync": self.c.opts.auto_sync,
                "self_heal": self.c.opts.self_heal,
                "poll": self.c.opts.poll,
            },
        }

    def diffs(self, state: EnvState) -> list[ServiceDiff]:
        if state.desired is None or state.supervisor is None:
            return []
        found = diff(self.target(state), state.supervisor.live())
        strays = self.c.strays.get(state.name, {})
        return [
            replace(d, sync=Sync.OUT_OF_SYNC, reasons=(*d.reasons, *strays[d.name]))
            if strays.get(d.name)
            else d
            for d in found
        ]

    def unified_diffs(self, state: EnvState) -> dict[str, list[str]]:
        """Per service, a unified diff of what runs (live) against what git says (desired)."""
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
                service_view(runs, len(running), revisions),
                service_view(want, want.replicas if want else 0, [target.revision]),
            )
        return out

    def target(self, state: EnvState) -> Desired:
        """What git says now: the pending commit when auto-sync is off, else the applied one."""
        assert state.desired is not None
        if state.candidate is None:
            return state.desired
        return self.rendered_at(state, state.candidate.sha) or state.desired

    def rendered_at(self, state: EnvState, revision: str) -> Desired | None:
        key = (state.name, revision)
        if key not in self._rendered:
            try:
                self._rendered[key] = self.c.render_revision(state, revision)
            except (SpecError, UserError, SourceError):
                return None
        return self._rendered[key]

    def live_service(
        self, state: EnvState, name: str, running: list[LiveInstance]
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
        return replace(svc, fingerprint=fingerprint) if svc else None

    def env_status(self, state: EnvState) -> dict[str, Any]:
        record = self.c.store.get_env(state.name)
        diffs = self.diffs(state)
        services = self.services_status(state, diffs)
        sync = Sync.UNKNOWN if state.desired is None or state.error is not None else overall(diffs)
        if state.candidate is not None:
            sync = Sync.OUT_OF_SYNC
        health = (
            worst(Health(s["health"]) for s in services)
            if services
            else (Health.HEALTHY if state.desired is not None else Health.UNKNOWN)
        )
        return {
            "name": state.name,
            "revision": state.desired.revision if state.desired else None,
            "live_revision": record.live_revision if record else None,
            "sync": sync.value,
            "health": health.value,
            "error": state.error
            or (f"fetch failed: {self.c.fetch.error}" if self.c.fetch.error else None),
            "error_commit": commit_json(state.error_commit) if state.error_commit else None,
            "commit": commit_json(state.commit) if state.commit else None,
            "live_commit": record.live_commit if record else None,
            "pending_commit": commit_json(state.candidate) if state.candidate else None,
            "operation": {
                "revision": state.op.revision,
                "trigger": state.op.trigger,
                "started_at": state.op.started,
            }
            if state.op
            else None,
            "last_result": state.last_result,
            "app": state.desired.app if state.desired else None,
            "services": services,
        }

    def services_status(self, state: EnvState, diffs: list[ServiceDiff]) -> list[dict[str, Any]]:
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
                {
                    "name": name,
                    "sync": d.sync.value if d else Sync.SYNCED.value,
                    "health": verdict.health.value,
                    "health_reason": verdict.reason,
                    "reasons": list(d.reasons) if d else [],
                    "version": svc.spec.version if svc else None,
                    "fingerprint": svc.fingerprint if svc else None,
                    "replicas": {
                        "desired": svc.replicas if svc else 0,
                        "ready": sum(1 for i in instances if i.ready),
                    },
                    "instances": [self.instance_status(state, i.id) for i in instances],
                    "release": release.to_json() if release is not None else None,
                    "traffic": traffic_json(state.traffic.get(name)),
                    "analysis": figures.__dict__ if figures is not None else None,
                }
            )
        return out

    def instance_status(self, state: EnvState, inst_id: str) -> dict[str, Any]:
        assert state.supervisor is not None
        inst = state.supervisor.instances[inst_id]
        li = inst.live()
        return {
            "id": li.id,
            "pid": li.pid,
            "port": li.port,
            "revision": li.revision,
            "health": instance_health(li).health.value,
            "restarts": li.restarts,
            "state": inst.rec.state,
            "fingerprint": li.fingerprint,
            "started_at": li.started_at,
            "exit_code": li.exit_code,
            "last_error": li.last_error,
            "log_tail": inst.rec.log_tail if inst.rec.state is InstanceState.EXITED else None,
            "log_path": inst.rec.log_path,
        }


def commit_json(commit: CommitInfo) -> dict[str, Any]:
    return {
        "sha": commit.sha,
        "author": commit.author,
        "message": commit.message,
        "committed_at": commit.committed_at,
    }


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


def traffic_json(traffic: Traffic | None) -> dict[str, Any] | None:
    if traffic is None or traffic.canary is None:
        return None
    return {"stable": traffic.stable, "canary": traffic.canary, "weight": traffic.weight}
