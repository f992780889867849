"""Which notifications a change of state calls for: pure, from one status to the next.

The controller keeps the last status document it built and, whenever it
builds a new one, hands both to `status_events`; sync results come from the
environment's finish hook (`sync_event`), job failures from the scheduler
(`job_event`). `Notifier.emit` then coalesces and delivers them, off the loop.
"""

from __future__ import annotations

from typing import Any

from ondeck.jobs.runner import Run
from ondeck.notify import Notice
from ondeck.spec.model import Event
from ondeck.state.health import Health
from ondeck.state.lifecycle import SyncResult
from ondeck.status import EnvStatus, StatusDoc

SYNC_EVENTS = {
    SyncResult.SUCCEEDED: Event.SYNC_SUCCEEDED,
    SyncResult.FAILED: Event.SYNC_FAILED,
    SyncResult.ABORTED: Event.ROLLOUT_ABORTED,
}


def sync_event(
    app: str, env: str, result: SyncResult, revision: str, error: str | None
) -> Notice | None:
    event = SYNC_EVENTS.get(result)
    if event is None:
        return None
    if result is SyncResult.ABORTED and error and error.startswith("superseded by"):
        return None  # a newer commit replaced it: nothing went wrong
    text = f"sync {result.value}" + (f": {error}" if error else "")
    return Notice(event, app, env, "", text, revision)


def drift_event(app: str, env: str, service: str, reason: str, revision: str) -> Notice:
    return Notice(Event.DRIFT, app, env, service, f"drift: {reason}", revision)


def job_event(app: str, env: str, job: str, run: Run) -> Notice:
    reason = run.reason or run.result.value
    return Notice(Event.JOB_FAILED, app, env, job, f"job {job} run {run.id} {reason}")


def status_events(prev: StatusDoc | None, cur: StatusDoc) -> list[Notice]:
    """Degraded / recovered services, new backup and certificate failures."""
    if prev is None:
        return []
    before = {e.name: e for e in prev.environments}
    found: list[Notice] = []
    for env in cur.environments:
        old = before.get(env.name)
        if old is None or env.app is None:
            continue
        found += _health(old, env)
        found += _rewritten(old, env)
        found += _failures(old, env, "backups", Event.BACKUP_FAILED)
    found += _certificates(prev, cur)
    return found


def _certificates(prev: StatusDoc, cur: StatusDoc) -> list[Notice]:
    """A host whose renewal error is new: one notice per app/env routing it."""
    before = {c.host: c.last_error for c in getattr(prev, "certificates", [])}
    out = []
    for cert in getattr(cur, "certificates", []):
        if cert.last_error and cert.last_error != before.get(cert.host):
            for owner in cert.owners:
                app, _, env = owner.partition("/")
                out.append(
                    Notice(
                        Event.CERTIFICATE_FAILED,
                        app,
                        env,
                        cert.host,
                        f"certificate of {cert.host}: {cert.last_error}",
                    )
                )
    return out


def _health(old: EnvStatus, env: EnvStatus) -> list[Notice]:
    assert env.app is not None
    was = {s.name: s.health for s in old.services}
    out = []
    for svc in env.services:
        prior = was.get(svc.name)
        if svc.health is Health.DEGRADED and prior is not Health.DEGRADED:
            why = svc.health_reason or "; ".join(svc.reasons) or "unhealthy"
            out.append(
                Notice(
                    Event.DEGRADED,
                    env.app,
                    env.name,
                    svc.name,
                    f"{svc.name} is Degraded: {why}",
                    env.revision,
                )
            )
        elif svc.health is Health.HEALTHY and prior is Health.DEGRADED:
            out.append(
                Notice(
                    Event.RECOVERED,
                    env.app,
                    env.name,
                    svc.name,
                    f"{svc.name} is Healthy again",
                    env.revision,
                )
            )
    return out


def _rewritten(old: EnvStatus, env: EnvStatus) -> list[Notice]:
    """A force-pushed, unrelated history deployed: once, when its condition appears."""
    assert env.app is not None
    return [
        Notice(Event.HISTORY_REWRITTEN, env.app, env.name, "", c, env.revision)
        for c in env.conditions
        if c.startswith("history rewritten") and c not in old.conditions
    ]


def _failures(old: EnvStatus, env: EnvStatus, field: str, event: Event) -> list[Notice]:
    """Entries of a list field (`backups`, `certificates`) whose `last_error` is new."""
    assert env.app is not None
    before = {_name(e): _error(e) for e in _entries(old, field)}
    out = []
    for entry in _entries(env, field):
        error = _error(entry)
        if error and error != before.get(_name(entry)):
            out.append(Notice(event, env.app, env.name, _name(entry), f"{_name(entry)}: {error}"))
    return out


def _entries(env: EnvStatus, field: str) -> list[Any]:
    value = getattr(env, field, None)
    return list(value) if isinstance(value, list) else []


def _get(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else getattr(entry, key, None)


def _name(entry: Any) -> str:
    return str(_get(entry, "name") or _get(entry, "host") or "")


def _error(entry: Any) -> str | None:
    error = _get(entry, "last_error") or _get(entry, "error")
    return str(error) if error else None
