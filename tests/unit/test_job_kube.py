"""Runs read from a cluster's Jobs (jobs/kube.py): Job objects in, runs and ended runs out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ondeck.jobs.kube import failed_pod_exit, merge, next_run, schedule_text, seen
from ondeck.jobs.runner import JobRecord, Run, RunResult


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def job(name: str, *conditions: dict[str, str], manual: bool = False) -> dict[str, Any]:
    annotations = (
        {"cronjob.kubernetes.io/instantiate": "manual"}
        if manual
        else {"batch.kubernetes.io/cronjob-scheduled-timestamp": "2026-12-02T08:00:00Z"}
    )
    status: dict[str, Any] = {"startTime": "2026-12-02T08:00:01Z", "conditions": list(conditions)}
    if any(c["type"] == "Complete" for c in conditions):
        status["completionTime"] = "2026-12-02T08:00:05Z"
    return {
        "metadata": {
            "name": name,
            "annotations": annotations,
            "creationTimestamp": "2026-12-02T08:00:00Z",
        },
        "spec": {"activeDeadlineSeconds": 600},
        "status": status,
    }


COMPLETE = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-02T08:00:05Z"}
DEADLINE = {
    "type": "Failed",
    "status": "True",
    "reason": "DeadlineExceeded",
    "message": "Job was active longer than specified deadline",
    "lastTransitionTime": "2026-12-02T08:10:01Z",
}
BACKOFF = {
    "type": "Failed",
    "status": "True",
    "reason": "BackoffLimitExceeded",
    "message": "Job has reached the specified backoff limit",
    "lastTransitionTime": "2026-12-02T08:00:09Z",
}


def test_a_scheduled_job_that_completed_is_a_succeeded_run_at_its_slot() -> None:
    s = seen(job("tick-29412345", COMPLETE))
    assert (s.trigger, s.result, s.exit_code) == ("schedule", RunResult.SUCCEEDED, 0)
    assert s.slot == _at("2026-12-02T08:00:00Z")
    assert s.started_at == _at("2026-12-02T08:00:01Z")
    assert s.finished_at == _at("2026-12-02T08:00:05Z")
    assert s.deadline == s.started_at + 600


def test_a_running_manual_job_and_the_two_ways_a_job_fails() -> None:
    running = seen(job("t-manual-abc123", manual=True))
    assert (running.trigger, running.result, running.finished_at) == ("manual", "running", None)
    timed_out = seen(job("t-1", DEADLINE))
    assert timed_out.result is RunResult.TIMED_OUT
    assert "600s (activeDeadlineSeconds)" in timed_out.reason
    failed = seen(job("t-2", BACKOFF), exit_code=3)
    assert (failed.result, failed.exit_code, failed.reason) == (
        RunResult.FAILED,
        3,
        "exited with code 3",
    )
    assert seen(job("t-3", BACKOFF)).reason.startswith("BackoffLimitExceeded: Job has reached")


def test_the_exit_code_of_a_failed_pod_by_job() -> None:
    pods = [
        {
            "metadata": {"labels": {"batch.kubernetes.io/job-name": "t-2"}},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]},
        },
        {
            "metadata": {"labels": {"job-name": "t-1"}},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}]},
        },
    ]
    assert failed_pod_exit(pods) == {"t-2": 3}


def test_merge_numbers_new_runs_and_reports_each_end_once() -> None:
    record = JobRecord(next_id=4)
    ended = merge(record, [seen(job("t-a", manual=True)), seen(job("t-b", COMPLETE))], 0.0)
    assert [(r.id, r.kube_job, r.result) for r in record.runs] == [
        (4, "t-a", RunResult.RUNNING),
        (5, "t-b", RunResult.SUCCEEDED),
    ]
    assert [r.kube_job for r in ended] == ["t-b"]  # seen already finished: reported now
    assert record.last_slot == _at("2026-12-02T08:00:00Z")
    ended = merge(record, [seen(job("t-a", BACKOFF), 1), seen(job("t-b", COMPLETE))], 0.0)
    assert [(r.id, r.result, r.exit_code) for r in ended] == [(4, RunResult.FAILED, 1)]
    assert merge(record, [seen(job("t-a", BACKOFF), 1), seen(job("t-b", COMPLETE))], 0.0) == []
    assert record.next_id == 6


def test_a_running_run_whose_job_is_gone_was_killed_unless_it_just_started() -> None:
    started = _at("2026-12-02T08:00:01Z")
    record = JobRecord()
    merge(record, [seen(job("t-a"))], 0.0)
    assert merge(record, [], started + 1) == []  # the list may have begun before it
    (killed,) = merge(record, [], started + 60)
    assert killed.result is RunResult.KILLED and "deleted" in killed.reason
    host = Run(9, "schedule", 0.0, 10.0, pid=42)  # a host's run (no Job) is left alone
    record.runs.append(host)
    assert merge(record, [], started + 120) == []


def test_schedule_and_next_run_follow_the_cronjob() -> None:
    now = datetime(2026, 12, 2, 8, 30, tzinfo=UTC).timestamp()
    paris = {"spec": {"schedule": "0 4 * * *", "timeZone": "Europe/Paris"}}
    assert schedule_text(paris, "0 4 * * *") == "0 4 * * * (Europe/Paris)"
    assert next_run(paris, now) == datetime(2026, 12, 3, 3, 0, tzinfo=UTC).timestamp()
    plain = {"spec": {"schedule": "*/15 * * * *"}}
    assert schedule_text(plain, "every 900s") == "*/15 * * * * (cluster time)"
    assert next_run(plain, now) == datetime(2026, 12, 2, 8, 45, tzinfo=UTC).timestamp()
    assert schedule_text(None, "every 900s") == "every 900s (no CronJob yet)"
    assert next_run(None, now) is None
    suspended = {"spec": {"schedule": "* * * * *", "suspend": True}}
    assert next_run(suspended, now) is None
    assert schedule_text(suspended, "x").endswith("suspended")


def test_jobs_validate_on_kubernetes_and_stay_refused_on_containers() -> None:
    import pytest
    from pydantic import ValidationError

    from ondeck.spec.model import Spec

    def spec(runtime: str, **job: Any) -> dict[str, Any]:
        return {
            "app": "shop",
            "runtime": runtime,
            "services": {"web": {"image": "shop:1"}},
            "jobs": {"j": {"command": ["true"], "every": "1m", **job}},
        }

    assert Spec.model_validate(spec("kubernetes")).jobs["j"].every == 60.0
    with pytest.raises(ValidationError, match="not container"):
        Spec.model_validate(spec("container"))
    with pytest.raises(ValidationError, match="a service of its own"):
        Spec.model_validate(spec("kubernetes", image="busybox"))


def test_an_every_without_a_cron_equivalent_is_refused_by_validation_on_kubernetes() -> None:
    import pytest
    from pydantic import ValidationError

    from ondeck.spec.model import Spec

    def spec(runtime: str, every: str) -> dict[str, Any]:
        return {
            "app": "shop",
            "runtime": runtime,
            "services": {"web": {"image": "shop:1", "command": ["true"]}},
            "jobs": {"tick": {"command": ["true"], "every": every}},
        }

    with pytest.raises(ValidationError, match=r"jobs\.tick\.every: every 7m has no cron"):
        Spec.model_validate(spec("kubernetes", "7m"))
    with pytest.raises(ValidationError, match="at most once a minute"):
        Spec.model_validate(spec("kubernetes", "90s"))
    assert Spec.model_validate(spec("kubernetes", "15m")).jobs["tick"].every == 900.0
    assert Spec.model_validate(spec("process", "7m")).jobs["tick"].every == 420.0  # a host can
