"""The status document and the other /api/v1 answers, as pydantic models.

Built by report.py once per reconcile pass (only when something changed),
read by the metrics, served by the API (so /openapi.json documents them) and
printed by the CLI. The JSON is a contract (DESIGN.md): add fields, never
rename one. To add one, give it a default (`None`, `[]`): old clients and old
documents keep validating, e.g. `certificates: list[CertStatus] = []`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ondeck.state.diff import Sync
from ondeck.state.health import Health


class Model(BaseModel):
    """Base of every status model: extra keys from a newer server are kept, not refused."""

    model_config = ConfigDict(extra="allow")


class CommitStatus(Model):
    """A git commit as people see it."""

    sha: str
    author: str
    message: str
    committed_at: float | None = None


class InstanceStatus(Model):
    """One instance: its process, health and last exit."""

    id: str
    pid: int | None = None
    port: int | None = None
    revision: str
    health: Health
    restarts: int = 0
    state: str  # an InstanceState value
    code_revision: str | None = None  # the commit its code came from (`source:` pin, or spec)
    fingerprint: str
    started_at: float | None = None
    exit_code: int | None = None
    last_error: str | None = None
    log_tail: str | None = None  # the end of its log, once it has exited
    log_path: str | None = None


class Replicas(Model):
    """How many instances the spec wants, and how many pass their health check."""

    desired: int
    ready: int


class ReleaseStatus(Model):
    """A blue/green or canary release in flight (`state.rollout.Progress`)."""

    service: str
    stable: str
    canary: str
    stage: str
    step: int = 0
    weight: int = 0
    since: float = 0.0
    reason: str | None = None
    failures: int = 0


class TrafficStatus(Model):
    """How the router splits a service between its stable and new sets."""

    stable: str | None
    canary: str | None
    weight: int


class AnalysisStatus(Model):
    """The last figures measured on a new set under traffic."""

    ok: bool
    requests: int
    error_rate: float
    p95: float | None = None
    reason: str


class ServiceStatus(Model):
    """One service of one environment: sync, health and its instances."""

    name: str
    sync: Sync
    health: Health
    health_reason: str | None = None
    reasons: list[str] = Field(default_factory=list)
    version: str | None = None
    fingerprint: str | None = None
    # The commit the running code comes from (its instances of the current release, else the
    # most of them), next to the spec's `revision`; the desired one and the ref it follows.
    code_revision: str | None = None
    desired_code_revision: str | None = None
    code_ref: str | None = None  # `source.ref` as written; None: the spec's own commit
    code_repo: str | None = None  # `source.repo`; None: the deploy repository
    replicas: Replicas
    instances: list[InstanceStatus] = Field(default_factory=list)
    release: ReleaseStatus | None = None
    traffic: TrafficStatus | None = None
    analysis: AnalysisStatus | None = None


class OperationStatus(Model):
    """The sync in progress."""

    revision: str
    trigger: str  # a Trigger value
    started_at: float


class BackupStatus(Model):
    """One backup of an environment: when it last worked and when a restore last proved it."""

    name: str
    engine: str
    backups: int
    last_success: str | None = None
    last_verified_restore: str | None = None
    last_verified_id: str | None = None
    last_error: str | None = None
    running: bool = False
    next_run: str | None = None


class JobStatus(Model):
    """A scheduled job of the environment: its schedule, next run and last result."""

    name: str
    schedule: str
    next_run: float | None = None
    running: int = 0
    last_result: str | None = None  # a RunResult value
    last_run_at: float | None = None
    last_reason: str | None = None
    last_success_at: float | None = None


class NotificationStatus(Model):
    """A notification target of the environment: deliveries and the last error."""

    url: str  # as written in the spec: ${NAME} placeholders, never a secret
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None


class EnvStatus(Model):
    """One environment: the commit it should run, the one it runs, and how that is going."""

    name: str
    revision: str | None = None  # desired
    live_revision: str | None = None
    sync: Sync
    health: Health
    error: str | None = None
    error_commit: CommitStatus | None = None
    commit: CommitStatus | None = None
    live_commit: CommitStatus | None = None
    pending_commit: CommitStatus | None = None  # auto-sync off: a newer commit waits
    operation: OperationStatus | None = None
    last_result: str | None = None  # a SyncResult value
    app: str | None = None
    services: list[ServiceStatus] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)  # Degraded reasons beside services
    backups: list[BackupStatus] = Field(default_factory=list)
    notifications: list[NotificationStatus] = Field(default_factory=list)
    jobs: list[JobStatus] = Field(default_factory=list)
    namespace: str | None = None  # runtime kubernetes: where its objects are


class CertificateStatus(Model):
    """One host's HTTPS certificate: where it comes from, who issued it, until when."""

    host: str
    source: str  # "acme", or "file" for a certificate brought by the user
    issuer: str | None = None
    not_after: str | None = None  # ISO 8601, UTC
    not_after_epoch: float | None = None
    last_renewal: str | None = None
    last_error: str | None = None
    failures: int = 0  # failed attempts since the last success
    degraded: str | None = None  # why this is a Degraded condition, when it is one
    owners: list[str] = Field(default_factory=list)  # "app/env" routing this host


class SourceStatus(Model):
    """The git source the controller watches."""

    repo: str
    branch: str | None = None
    path: str = ""
    head: str | None = None
    error: str | None = None
    last_fetch: float | None = None


class RouterStatus(Model):
    """Where the router serves users, or why it does not."""

    listen: str | None = None
    listen_tls: str | None = None
    error: str | None = None


class StoreStatus(Model):
    """The state dir's database: why writes are held back (a full disk), if they are."""

    error: str | None = None
    held_writes: int = 0


class ControllerStatus(Model):
    """How `ondeck up` was started."""

    started_at: float
    auto_sync: bool
    self_heal: bool
    poll: float


class AppStatus(Model):
    """One app of the host file (`ondeck up --host-file`): its source, or why it does not run."""

    name: str
    source: SourceStatus
    envs: list[str] = Field(default_factory=list)  # the environments it runs
    error: str | None = None  # why it is not running (its repo unreachable, its spec unreadable)


class HostFileStatus(Model):
    """The host file `ondeck up --host-file` follows, and why its last change was not applied."""

    path: str  # a path, or REPO#PATH
    error: str | None = None
    revision: str | None = None  # REPO#PATH: the commit the apps were read from


class StatusDoc(Model):
    """The `ondeck status --json` document (GET /api/v1/status)."""

    environments: list[EnvStatus] = Field(default_factory=list)
    source: SourceStatus
    router: RouterStatus
    store: StoreStatus = Field(default_factory=StoreStatus)
    controller: ControllerStatus
    certificates: list[CertificateStatus] = Field(default_factory=list)
    apps: list[AppStatus] = Field(default_factory=list)  # `--host-file`: every app listed
    host_file: HostFileStatus | None = None  # `--host-file` only


class SyncEntry(Model):
    """One sync in the history (GET /api/v1/history)."""

    id: int
    env: str
    revision: str
    author: str
    message: str
    trigger: str
    result: str | None = None  # a SyncResult value; None while it runs
    started_at: float
    finished_at: float | None = None
    duration: float | None = None
    actions: list[str] = Field(default_factory=list)
    changes: list[str] = Field(default_factory=list)
    error: str | None = None
    app: str | None = None  # `ondeck up --host-file`: the app this sync was of


class HistoryDoc(Model):
    """GET /api/v1/history."""

    syncs: list[SyncEntry]


class EventEntry(Model):
    """Something that happened to an instance or a release (exit, drift, abort...)."""

    id: int
    env: str
    service: str | None = None
    kind: str
    at: float
    message: str | None = None


class EventsDoc(Model):
    """GET /api/v1/events."""

    events: list[EventEntry]


class ServiceDiffStatus(Model):
    """One service's diff: what differs, and the unified diff live -> desired."""

    name: str
    sync: Sync
    reasons: list[str]
    diff: str


class EnvDiff(Model):
    name: str
    services: list[ServiceDiffStatus]


class DiffDoc(Model):
    """GET /api/v1/diff."""

    environments: list[EnvDiff]


class SyncAnswer(Model):
    """POST /api/v1/sync: accepted, or (with wait) the outcome and the status after it."""

    accepted: bool = True
    error: str | None = None
    status: StatusDoc | None = None


class DeployAnswer(Model):
    """POST /api/v1/deploy: the commit written."""

    commit: str
    message: str
    pushed: bool


class RolloutAnswer(Model):
    """POST /api/v1/rollout/{service}/{action}: the release after the action."""

    release: ReleaseStatus


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a model, as the API sends it."""
    return model.model_dump(mode="json")
