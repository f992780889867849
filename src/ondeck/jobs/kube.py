"""Runs of a job on Kubernetes, read from the Jobs its CronJob owns: pure.

kubejobs.py lists an environment's CronJobs and Jobs and hands them here:
each Job becomes a `Seen` (trigger, start, result and why), and `merge` folds
what was listed into the job's stored record (the same record a host's runs
go to), returning the runs that ended since the last look, so the metrics and
the job-failed notice fire once per run, as on a host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from ondeck.jobs.runner import JobRecord, Run, RunResult
from ondeck.jobs.schedule import Trigger
from ondeck.kube.cron import INSTANTIATE, JOB_LABEL

Obj = dict[str, Any]

SCHEDULED_AT = "batch.kubernetes.io/cronjob-scheduled-timestamp"  # set by the controller
GONE_GRACE = 5.0  # a run started this recently may be missing from a list begun before it


@dataclass(frozen=True)
class Seen:
    """One Kubernetes Job of a CronJob, as a run."""

    name: str  # the Job's name
    trigger: str
    started_at: float
    deadline: float
    slot: float | None
    result: RunResult
    exit_code: int | None = None
    finished_at: float | None = None
    reason: str = ""


def seen(job: Obj, exit_code: int | None = None) -> Seen:
    """What a Job says of its run; `exit_code` is its pod's, when it failed with one."""
    meta, status = job["metadata"], job.get("status") or {}
    annotations = meta.get("annotations") or {}
    manual = annotations.get(INSTANTIATE) == "manual"
    started = timestamp(status.get("startTime")) or timestamp(meta.get("creationTimestamp")) or 0.0
    limit = float((job.get("spec") or {}).get("activeDeadlineSeconds") or 0)
    result, finished, why = ended(job)
    if result is RunResult.FAILED and exit_code is not None:
        why = f"exited with code {exit_code}"
    return Seen(
        name=meta["name"],
        trigger=str(Trigger.MANUAL if manual else Trigger.SCHEDULE),
        started_at=started,
        deadline=started + limit if limit else 0.0,
        slot=timestamp(annotations.get(SCHEDULED_AT)),
        result=result,
        exit_code=exit_code if result is RunResult.FAILED else (0 if finished else None),
        finished_at=finished,
        reason=why,
    )


def ended(job: Obj) -> tuple[RunResult, float | None, str]:
    """How a Job ended (RUNNING while it has not): result, when, and the controller's why."""
    spec = job.get("spec") or {}
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True" or cond.get("type") not in ("Complete", "Failed"):
            continue
        at = timestamp(cond.get("lastTransitionTime"))
        if cond["type"] == "Complete":
            done = timestamp((job.get("status") or {}).get("completionTime"))
            return RunResult.SUCCEEDED, done or at, ""
        if cond.get("reason") == "DeadlineExceeded":
            limit = spec.get("activeDeadlineSeconds")
            return (
                RunResult.TIMED_OUT,
                at,
                f"timed out after {limit}s (activeDeadlineSeconds) and was stopped",
            )
        text = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
        return RunResult.FAILED, at, text
    return RunResult.RUNNING, None, ""


def failed_pod_exit(pods: Sequence[Obj]) -> dict[str, int]:
    """Job name -> the exit code of its failed pod's container (the last such pod)."""
    found: dict[str, int] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            done = (status.get("state") or {}).get("terminated") or {}
            code = done.get("exitCode")
            if job and isinstance(code, int) and code != 0:
                found[job] = code
    return found


def merge(record: JobRecord, found: Sequence[Seen], listed_at: float) -> list[Run]:
    """Fold the Jobs listed at `listed_at` into `record`; the runs that ended since the last look.

    A Job not seen before is a new run (numbered on from the record); a run still
    recorded as running whose Job is gone was deleted before it ended (a newer run
    replaced it, or someone did): killed. Runs of a host (no Job name) are left alone.
    """
    by_name = {run.kube_job: i for i, run in enumerate(record.runs) if run.kube_job}
    listed = {s.name for s in found}
    ended_now: list[Run] = []
    for s in sorted(found, key=lambda s: (s.started_at, s.name)):
        index = by_name.get(s.name)
        if index is None:
            run = Run(
                record.next_id,
                s.trigger,
                s.started_at,
                s.deadline,
                slot=s.slot,
                result=s.result,
                exit_code=s.exit_code,
                finished_at=s.finished_at,
                reason=s.reason,
                kube_job=s.name,
            )
            record.next_id += 1
            record.runs.append(run)
            by_name[s.name] = len(record.runs) - 1
            if s.slot is not None and (record.last_slot or 0.0) < s.slot:
                record.last_slot = s.slot
            if run.result is not RunResult.RUNNING:
                ended_now.append(run)
            continue
        old = record.runs[index]
        if old.result is RunResult.RUNNING and s.result is not RunResult.RUNNING:
            done = replace(
                old,
                result=s.result,
                exit_code=s.exit_code,
                finished_at=s.finished_at,
                reason=s.reason,
            )
            record.runs[index] = done
            ended_now.append(done)
    for i, run in enumerate(record.runs):
        gone = run.kube_job and run.kube_job not in listed
        if gone and run.result is RunResult.RUNNING and run.started_at < listed_at - GONE_GRACE:
            done = replace(
                run,
                result=RunResult.KILLED,
                finished_at=listed_at,
                reason="its Job was deleted before it ended (replaced by a newer run, or by hand)",
            )
            record.runs[i] = done
            ended_now.append(done)
    return ended_now


def schedule_text(cronjob: Obj | None, fallback: str) -> str:
    """What `ondeck job list` shows as the schedule: the CronJob's, with its time zone."""
    if cronjob is None:
        return f"{fallback} (no CronJob yet)"
    spec = cronjob.get("spec") or {}
    zone = spec.get("timeZone") or "cluster time"
    text = f"{spec.get('schedule', fallback)} ({zone})"
    return text + (" suspended" if spec.get("suspend") else "")


def next_run(cronjob: Obj | None, now: float) -> float | None:
    """When the CronJob fires next; without `timeZone`, as if the cluster kept UTC (most do)."""
    spec = (cronjob or {}).get("spec") or {}
    if not spec.get("schedule") or spec.get("suspend"):
        return None
    zone = ZoneInfo(spec["timeZone"]) if spec.get("timeZone") else UTC
    start = datetime.fromtimestamp(now, zone)
    return float(croniter(spec["schedule"], start).get_next(float))


def cronjobs_by_job(items: Sequence[Obj]) -> Mapping[str, Obj]:
    """The CronJobs listed, by the job they run."""
    return {
        str(((c.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL)): c
        for c in items
        if ((c.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL)
    }


def timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
