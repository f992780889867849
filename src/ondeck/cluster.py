"""One environment run on a Kubernetes cluster: sync, observe, heal, all off the host loop.

environment.py gives an environment whose desired runtime is `kubernetes` a
`ClusterEnv` and calls its `step` once per pass. A step starts at most one job,
in a daemon thread (the API calls block): apply the open sync's revision and
watch it settle (`KubernetesRuntime.sync`), or look at what runs (a no-op apply
that reverts or reports drift, plus the pods). The environment's objects are
kept in a watch-fed cache (runtime/kube_cache.py) that the runtime reads, so a
check of an environment in sync sends no request; a change of any of them but
a pod wakes the host loop, so a `kubectl edit` is seen at once; `check_every`
is the backstop.
What was seen is kept as an `Observed` for status; the sync record stays with
the environment, which gets each job's outcome through a `Reports`.
A canary waiting at a pause leaves its sync open: the next sync job runs when
the pause is over, when a person steps in (`request`), or `check_every` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kubernetes import client as k8s

from ondeck.errors import BackupFailure, OndeckError, TemporaryError
from ondeck.kube.render import Obj, manifests, namespace_of
from ondeck.runtime.kube_cache import KubeCache
from ondeck.runtime.kube_canary import CanaryState
from ondeck.runtime.kube_pause import scale_back, scale_down
from ondeck.runtime.kubernetes import (
    ApplyResult,
    Cluster,
    EnvStatus,
    KubernetesRuntime,
    SyncOutcome,
    cache_sources,
    connect,
)
from ondeck.state.desired import Desired
from ondeck.state.health import Health
from ondeck.state.lifecycle import SyncResult

log = logging.getLogger("ondeck")
T = TypeVar("T")
PauseStep = Callable[[KubernetesRuntime, Desired, dict[str, int], float, list[str]], None]

SETTLE_GRACE = 30.0  # past the rollout deadline, time for the Deployment controller to say so
RETRY = 5.0  # the API server unreachable: try again after this long
WATCH_RESTART = 2.0  # a watch that ended on an error starts again after this long
MIN_CHECK_GAP = 0.2  # a burst of watch events coalesces into one check


class ClusterLink:
    """The controller's connection to its cluster, made on first use and shared."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._api: k8s.ApiClient | None = None
        self._lock = threading.Lock()

    def api(self) -> k8s.ApiClient:
        """The API client; a `UserError` saying how to configure a cluster when none is."""
        with self._lock:
            if self._api is None:
                self._api = connect(self.cluster)
            return self._api

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()  # type: ignore[no-untyped-call]
                self._api = None


@dataclass(frozen=True)
class Pod:
    """One pod of a service, as status shows it (an instance)."""

    name: str
    service: str
    ready: bool
    restarts: int
    template: str  # pod-template-hash: which ReplicaSet it belongs to
    started_at: float | None
    waiting: str | None  # why a container waits (CrashLoopBackOff, ...), if it does


@dataclass(frozen=True)
class Observed:
    """What the environment's objects looked like at the last job."""

    namespace: str
    status: EnvStatus
    pods: Mapping[str, tuple[Pod, ...]]
    drifted: tuple[str, ...] = ()  # object keys changed by hand, left so (self-heal off)
    left: tuple[str, ...] = ()  # fields another manager owns, left to it
    error: str | None = None  # the last check failed (the cluster unreachable, ...)
    canaries: tuple[CanaryState, ...] = ()  # canary releases under way (or just ended)


class Reports(Protocol):
    """How a job's outcome reaches the environment (which keeps the sync records)."""

    def cluster_synced(
        self, revision: str, result: SyncResult, error: str | None, actions: list[str]
    ) -> None: ...

    def cluster_healed(self, actions: list[str]) -> None: ...

    def cluster_stepped(self, revision: str, actions: list[str]) -> None:
        """A canary went as far as it could and waits at a pause: the sync stays open."""

    def cluster_canary_aborted(self, service: str, reason: str) -> None:
        """A canary aborted on its own in this job (its pods never became ready)."""


@dataclass(frozen=True)
class _Job:
    kind: str  # "sync" | "check"
    revision: str
    future: asyncio.Future[Any]
    requests: Mapping[str, str]  # what a person asked of this sync (promote|abort)


class ClusterEnv:
    """One environment's objects on the cluster."""

    def __init__(
        self, link: ClusterLink, env: str, wake: Callable[[], None], check_every: float
    ) -> None:
        self.link, self.env, self.wake = link, env, wake
        self.check_every = check_every
        self.observed: Observed | None = None
        self.changes = 0  # bumped whenever `observed` changes: the status cache key
        self._job: _Job | None = None
        self._runtimes: dict[bool, KubernetesRuntime] = {}
        self._next_check = 0.0
        self._last_check = 0.0
        self._retry_at = 0.0
        self._dirty = False
        self._watching: tuple[str, str, str] | None = None
        self._cache: KubeCache | None = None
        self._requests: dict[str, str] = {}  # service -> promote|abort, for the next sync job
        self._paused: str | None = None  # the revision whose sync waits at a canary pause
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: dict[str, int] = {}  # a restore's pause: replicas before, by Deployment

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def running(self) -> bool:
        """A job's thread still works (the environment may stop stepping it meanwhile)."""
        return self._job is not None and not self._job.future.done()

    def due_in(self) -> float | None:
        """Seconds until the next job is due, for the host loop's sleep (None: a job runs)."""
        if self._job is not None:
            return None
        due = self._next_check
        if self._dirty:
            due = min(due, self._last_check + MIN_CHECK_GAP)
        return max(0.0, max(due, self._retry_at) - time.monotonic())

    def runtime(self, self_heal: bool) -> KubernetesRuntime:
        if self_heal not in self._runtimes:
            runtime = KubernetesRuntime(self.link.api(), self_heal=self_heal)
            if self._cache is not None and self._watching is not None:
                runtime.use_cache(*self._watching, self._cache)
            self._runtimes[self_heal] = runtime
        return self._runtimes[self_heal]

    # -- the pass ----------------------------------------------------------------------

    def step(self, desired: Desired, sync_open: bool, heal: bool, reports: Reports) -> None:
        """Start the job that is due, if none runs: the open sync first, else a check."""
        self._loop = asyncio.get_running_loop()
        if self._job is not None:
            if self._job.future.done():
                self._collect(self._job, reports)
            else:
                return
        now = time.monotonic()
        if now < self._retry_at:
            return
        due = now >= self._next_check or (self._dirty and now - self._last_check >= MIN_CHECK_GAP)
        if sync_open and (self._paused != desired.revision or due):
            self._dirty = False
            requests, self._requests = self._requests, {}
            self._start("sync", desired, self._sync, desired, requests, requests=requests)
        elif not sync_open and due:
            self._dirty = False
            self._start("check", desired, self._check, desired, heal)

    def request(self, service: str, action: str) -> None:
        """`ondeck rollout promote|abort SERVICE`: carried out by the next sync job, soon."""
        self._requests[service] = action
        self._next_check = 0.0
        self.wake()

    def canary(self, service: str) -> CanaryState | None:
        """Where `service`'s canary release stands, if one is under way (promoted: None)."""
        observed = self.observed
        found = [c for c in observed.canaries if c.service == service] if observed else []
        return found[0] if found and found[0].health is not Health.HEALTHY else None

    def _start(
        self,
        kind: str,
        desired: Desired,
        work: Callable[..., T],
        *args: Any,
        requests: Mapping[str, str] | None = None,
    ) -> None:
        future = in_thread(work, *args)
        future.add_done_callback(lambda _: self.wake())
        self._job = _Job(kind, desired.revision, future, requests or {})
        self._last_check = time.monotonic()
        self._next_check = self._last_check + self.check_every

    def _collect(self, job: _Job, reports: Reports) -> None:
        self._job = None
        err = job.future.exception()
        if isinstance(err, TemporaryError):
            log.warning("[%s] the cluster: %s (retry in %.0fs)", self.env, err, RETRY)
            self._retry_at = time.monotonic() + RETRY
            self._requests = {**job.requests, **self._requests}  # asked again at the retry
            self._observe_error(str(err))
            return
        if isinstance(err, OndeckError) and job.kind == "sync":
            self._paused = None
            reports.cluster_synced(job.revision, SyncResult.FAILED, str(err), [])
            return
        if isinstance(err, OndeckError):
            self._observe_error(str(err))
            return
        if err is not None:
            raise err  # a bug: the environment contains it
        if job.kind == "sync":
            outcome, observed = job.future.result()
            self._set(observed)
            for canary in outcome.canaries:
                if canary.failed_now:
                    reports.cluster_canary_aborted(canary.service, canary.reason)
            result, error = judge(outcome)
            if result is None:  # a canary at a pause: look again when it is over
                self._paused = job.revision
                self._next_check = min(self._next_check, _monotonic(wake_at(outcome)))
                reports.cluster_stepped(job.revision, actions(outcome.result))
                return
            self._paused, self._requests = None, {}  # asked of a release that has ended
            reports.cluster_synced(job.revision, result, error, actions(outcome.result))
        else:
            applied, observed = job.future.result()
            self._set(observed)
            if applied.changed_anything:
                reports.cluster_healed(actions(applied))

    def _set(self, observed: Observed) -> None:
        if observed != self.observed:
            self.observed = observed
            self.changes += 1

    def _observe_error(self, error: str) -> None:
        if self.observed is not None:
            self.observed = dataclasses.replace(self.observed, error=error)
            self.changes += 1

    # -- a restore's pause (environment.py stops calling `step` meanwhile) ---------------

    async def pause(self, desired: Desired, timeout: float, log: list[str]) -> None:
        """Let the running job end, then scale the Deployments to 0 until their pods are gone."""
        job = self._job
        if job is not None:  # a check or sync could apply replicas back mid-restore
            await asyncio.wait([job.future], timeout=timeout)
            if not job.future.done():
                raise BackupFailure(
                    f"a sync of {self.env} is still running on the cluster after "
                    f"{timeout:.0f}s, so nothing was restored: try again when it ends"
                )
        await _as_backup_failure(in_thread(self._hold, scale_down, desired, timeout, log))

    async def resume(self, desired: Desired, timeout: float, log: list[str]) -> None:
        """Undo `pause` (even one that failed midway): re-apply, wait until Available."""
        await _as_backup_failure(in_thread(self._hold, scale_back, desired, timeout, log))

    def _hold(self, step: PauseStep, desired: Desired, timeout: float, log: list[str]) -> None:
        step(self.runtime(True), desired, self._held, timeout, log)

    # -- the jobs (in a worker thread) -------------------------------------------------

    def _sync(self, desired: Desired, requests: Mapping[str, str]) -> tuple[SyncOutcome, Observed]:
        runtime = self.runtime(True)  # a sync applies what git says, over any edit by hand
        self._watch(namespace_of(desired.app, desired.env), desired.app, desired.env)
        deadline = max(s.spec.rollout.deadline for s in desired.services) if desired.services else 0
        outcome = runtime.sync(
            desired,
            desired.revision,
            deadline + SETTLE_GRACE,
            promote=frozenset(s for s, a in requests.items() if a == "promote"),
            abort=frozenset(s for s, a in requests.items() if a == "abort"),
        )
        self._watch(outcome.namespace, desired.app, desired.env)
        return outcome, self._observe(runtime, desired, outcome)

    def _check(self, desired: Desired, heal: bool) -> tuple[ApplyResult, Observed]:
        runtime = self.runtime(heal)
        self._watch(namespace_of(desired.app, desired.env), desired.app, desired.env)
        outcome = runtime.sync(desired, desired.revision, 0.0)
        self._watch(outcome.namespace, desired.app, desired.env)
        return outcome.result, self._observe(runtime, desired, outcome)

    def _observe(
        self, runtime: KubernetesRuntime, desired: Desired, outcome: SyncOutcome
    ) -> Observed:
        status, result = outcome.status, outcome.result
        listed = runtime.pods(status.namespace, desired.app, desired.env)
        pods: dict[str, list[Pod]] = {}
        for raw in listed:
            pod = _pod(raw)
            pods.setdefault(pod.service, []).append(pod)
        return Observed(
            status.namespace,
            status,
            {name: tuple(found) for name, found in sorted(pods.items())},
            tuple(sorted(result.drifted)),
            tuple(sorted(result.left)),
            canaries=outcome.canaries,
        )

    # -- the watch (its own daemon thread) ---------------------------------------------

    def _watch(self, namespace: str, app: str, env: str) -> None:
        """Keep this environment's objects in a watch-fed cache from now on (one per key).

        The runtimes read live state from it (a check in sync sends no request), and any
        change but a pod's wakes the host loop for a check, so a `kubectl edit` is seen at once.
        """
        key = (namespace, app, env)
        if self._watching == key:
            return
        self._stop_cache()
        self._watching = key
        self._cache = KubeCache(
            self.link.api(), cache_sources(*key), on_change=self._changed
        ).start()
        for runtime in self._runtimes.values():
            runtime.use_cache(*key, self._cache)

    def cached(self, kind: str) -> tuple[list[Obj], str] | None:
        """This environment's objects of `kind` from the watch-fed cache, and their
        resourceVersion; None before the first sync or while not fresh. Read-only."""
        return self._cache.snapshot(kind) if self._cache is not None else None

    def _changed(self, kind: str) -> None:
        if kind != "Pod":
            self._poke()

    def _stop_cache(self) -> None:
        if self._cache is not None and self._watching is not None:
            for runtime in self._runtimes.values():
                runtime.use_cache(*self._watching, None)
            self._cache.stop()
        self._cache = None

    def _poke(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def mark() -> None:
            self._dirty = True
            self.wake()

        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            loop.call_soon_threadsafe(mark)

    def close(self) -> None:
        self._stop_cache()
        self._watching = None


# --- decisions (pure) ---------------------------------------------------------------------


def judge(outcome: SyncOutcome) -> tuple[SyncResult | None, str | None]:
    """A sync's result from how the environment settled: Healthy succeeds, a canary aborted
    aborts it, a canary at a pause (the rest Healthy) leaves it open (None), else it fails."""
    status = outcome.status
    aborted = [c for c in outcome.canaries if c.aborted]
    if aborted:
        return SyncResult.ABORTED, "; ".join(f"{c.service}: {c.reason}" for c in aborted)
    if status.health is Health.HEALTHY:
        return SyncResult.SUCCEEDED, None
    if status.health is Health.SUSPENDED and any(c.waiting for c in outcome.canaries):
        return None, None
    reasons = status.reasons()
    for svc in status.services:
        for crash, lines in svc.crashes:
            reasons.append(
                f"--- {crash.pod} ({crash.reason}), last log lines ---\n{lines.rstrip()}"
            )
    if status.health is Health.DEGRADED:
        return SyncResult.FAILED, "; ".join(reasons) or "Degraded"
    return SyncResult.FAILED, "not ready before the rollout deadline: " + (
        "; ".join(reasons) or status.health.value
    )


def wake_at(outcome: SyncOutcome) -> float | None:
    """When the first timed canary pause of `outcome` is over (epoch seconds), if any."""
    return min((c.wake_at for c in outcome.canaries if c.wake_at is not None), default=None)


def _monotonic(epoch: float | None) -> float:
    if epoch is None:
        return float("inf")
    return time.monotonic() + max(0.0, epoch - time.time())


def actions(result: ApplyResult) -> list[str]:
    """What an apply did, as history lines."""
    return (
        [f"create {k}" for k in result.created]
        + [f"apply {k}" for k in result.changed]
        + [f"revert {k} (changed by hand)" for k in result.reverted]
        + [f"prune {k}" for k in result.pruned]
    )


def rendered(desired: Desired) -> list[Obj]:
    """The objects of `desired` (raises the renderer's `UserError` for what it cannot map)."""
    return manifests(desired, namespace_of(desired.app, desired.env))


def _pod(raw: Obj) -> Pod:
    meta, status = raw["metadata"], raw.get("status", {})
    statuses = status.get("containerStatuses") or []
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    waiting = next(
        (
            s["state"]["waiting"].get("reason")
            for s in statuses
            if (s.get("state") or {}).get("waiting")
        ),
        None,
    )
    return Pod(
        name=meta["name"],
        service=(meta.get("labels") or {}).get("ondeck.dev/service", ""),
        ready=ready,
        restarts=sum(int(s.get("restartCount", 0)) for s in statuses),
        template=(meta.get("labels") or {}).get("pod-template-hash", ""),
        started_at=_timestamp(status.get("startTime")),
        waiting=waiting,
    )


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        from datetime import datetime

        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


async def _as_backup_failure(work: Awaitable[None]) -> None:
    try:
        await work
    except BackupFailure:
        raise
    except OndeckError as err:  # the cluster unreachable, a request refused...
        raise BackupFailure(str(err)) from err


def in_thread(work: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run blocking `work` in a daemon thread (an exit never waits for an API call)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            value = work(*args)
        except BaseException as err:  # handed to the loop, which decides
            failure = err
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(failure))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(value))

    threading.Thread(target=run, name="ondeck-cluster", daemon=True).start()
    return future
