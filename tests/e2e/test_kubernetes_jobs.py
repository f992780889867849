"""Scheduled jobs with `runtime: kubernetes` through a real `ondeck up` and a real control plane.

The cluster is tests/kubeplane.py's: real etcd, kube-apiserver and controller
manager (its CronJob, Job and garbage-collector controllers), real scheduler;
KWOK stands in for the kubelet (no container can run here): it completes a
Job's pods as if their command had exited 0. A run that fails is a pod the
scheduler can never place (its service asks 512GiB), which the Job controller
fails at the job's `timeout` (activeDeadlineSeconds): a timed-out run, the way
a run that hangs ends. Each test has its own app, hence its own namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Ondeck, Repo, wait_for
from test_jobs_notify import Receiver

from kubeplane import ControlPlane

pytestmark = pytest.mark.timeout(600)

SPEC = """\
app: {app}
services:
  web:
    command: ["/bin/web"]
    image: registry.example/shop:1
    port: 8080
    replicas: 1
    env: {{GREETING: hello}}
  batch:  # a service only for jobs: its pods can never be scheduled
    image: registry.example/batch:1
    replicas: 0
    memory: 512GiB
{notify}jobs:
  cleanup:
    service: web
    command: ["/bin/cleanup", "--all"]
    schedule: "0 4 * * *"
    timezone: Europe/Paris
    timeout: 10m
    concurrency: replace
    env: {{TOKEN: "${{API_TOKEN}}"}}
{tick}  stuck:
    service: batch
    command: ["/bin/stuck"]
    schedule: "0 0 1 1 *"
    timeout: 3s
environments:
  staging:
    runtime: kubernetes
"""
TICK = """\
  tick:
    service: web
    command: ["/bin/tick"]
    every: 1m
"""


def spec(app: str, tick: bool = True, notify: str = "") -> str:
    return SPEC.format(app=app, tick=TICK if tick else "", notify=notify)


@pytest.fixture
def app(control_plane: ControlPlane) -> Iterator[str]:
    name = f"c{uuid.uuid4().hex[:6]}"
    yield name
    subprocess.run(
        [
            *("kubectl", f"--kubeconfig={control_plane.kubeconfig}", "delete", "namespace"),
            *(f"{name}-staging", "--wait=false", "--ignore-not-found"),
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )


def kubectl_json(plane: ControlPlane, *args: str) -> dict[str, Any] | None:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] | None = json.loads(result.stdout) if result.stdout.strip() else None
    return found


def cronjob(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    return kubectl_json(plane, "-n", ns, "get", "cronjob", name, "-o", "json", "--ignore-not-found")


def kube_jobs(plane: ControlPlane, ns: str, job: str) -> list[dict[str, Any]]:
    doc = kubectl_json(plane, "-n", ns, "get", "jobs", "-l", f"ondeck.dev/job={job}", "-o", "json")
    return list((doc or {}).get("items", []))


def history(od: Ondeck, job: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(
        od.cli("job", "history", job, "--env", "staging", "--json").stdout
    )["runs"]
    return runs


def jobs_list(od: Ondeck) -> dict[str, dict[str, Any]]:
    doc = json.loads(od.cli("job", "list", "--json").stdout)
    return {j["name"]: j for j in doc["jobs"]}


def set_secret(od: Ondeck, name: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "set", name, "--env", "staging"],
        input=value,
        env=od.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def start(
    ondeck: Callable[..., Ondeck], repo: Repo, plane: ControlPlane, text: str, *flags: str
) -> tuple[Ondeck, str]:
    rev = repo.commit("jobs on kubernetes", text)
    od = ondeck(repo.path, "--kubeconfig", str(plane.kubeconfig), "--env", "staging", *flags)
    set_secret(od, "API_TOKEN", "t0ken-" + uuid.uuid4().hex)
    od.wait_synced(rev, "staging", timeout=180)
    return od, rev


def test_the_cluster_runs_the_schedule_the_host_does_not_and_a_removed_job_is_pruned(
    control_plane: ControlPlane, repo: Repo, ondeck: Callable[..., Ondeck], app: str
) -> None:
    od, _ = start(ondeck, repo, control_plane, spec(app))
    ns = f"{app}-staging"

    # every key of the job is on the CronJob
    cleanup = cronjob(control_plane, ns, "cleanup")
    assert cleanup is not None
    assert cleanup["spec"]["schedule"] == "0 4 * * *"
    assert cleanup["spec"]["timeZone"] == "Europe/Paris"
    assert cleanup["spec"]["concurrencyPolicy"] == "Replace"
    run = cleanup["spec"]["jobTemplate"]["spec"]
    assert run["activeDeadlineSeconds"] == 600
    (container,) = run["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/shop:1"  # the service's image
    assert container["command"] == ["/bin/cleanup", "--all"]
    env = {e["name"]: e for e in container["env"]}
    assert env["GREETING"]["value"] == "hello" and env["ONDECK_JOB"]["value"] == "cleanup"
    assert env["TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "API_TOKEN"
    tick = cronjob(control_plane, ns, "tick")
    assert tick is not None and tick["spec"]["schedule"] == "* * * * *"

    # the cluster's CronJob controller starts `tick` at the next whole minute; ondeck
    # reads the Job it made and records the run
    def scheduled() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in history(od, "tick")
                if r["trigger"] == "schedule" and r["result"] == "succeeded"
            ),
            None,
        )

    done = wait_for(scheduled, "a scheduled run of tick to succeed", timeout=150, every=1)
    assert done["kube_job"].startswith("tick-") and done["pid"] == 0
    assert done["slot"] is not None and done["slot"] % 60 == 0  # a whole minute
    assert any(
        j["metadata"]["name"] == done["kube_job"] for j in kube_jobs(control_plane, ns, "tick")
    )
    # the host ran nothing: no run's log, no run's directory
    state = od.state_dir
    assert not list(state.glob("logs/**/job-*.log")), list(state.glob("logs/**/*"))
    assert not (state / "jobs").exists()

    row = jobs_list(od)["tick"]
    assert row["env"] == "staging" and row["schedule"] == "* * * * * (cluster time)"
    assert row["next_run"] is not None and row["last_success_at"] is not None
    shown = {j["name"]: j for j in od.env_status("staging")["jobs"]}
    assert shown["tick"]["last_result"] == "succeeded"
    assert shown["cleanup"]["schedule"] == "0 4 * * * (Europe/Paris)"
    assert shown["cleanup"]["next_run"] is not None and shown["cleanup"]["last_result"] is None
    listed = od.cli("job", "list").stdout
    assert "tick" in listed and "succeeded" in listed
    logs = od.cli("logs", "--job", "tick", "--env", "staging", check=False)
    assert logs.returncode != 0
    assert f"kubectl logs -n {ns} -l ondeck.dev/job=tick" in logs.stdout + logs.stderr

    # the job leaves the spec: its CronJob is pruned, and its Jobs with it
    rev = repo.commit("no more tick", spec(app, tick=False))
    od.wait_synced(rev, "staging", timeout=180)
    wait_for(lambda: cronjob(control_plane, ns, "tick") is None, "the CronJob pruned", 60)
    wait_for(lambda: not kube_jobs(control_plane, ns, "tick"), "its Jobs collected", 120)
    assert cronjob(control_plane, ns, "cleanup") is not None
    assert "tick" not in jobs_list(od)
    assert "Traceback" not in od.log()


def test_job_run_makes_a_job_from_the_cronjob_and_a_failed_one_is_reported(
    control_plane: ControlPlane,
    repo: Repo,
    ondeck: Callable[..., Ondeck],
    app: str,
) -> None:
    rx = Receiver(key=None)
    try:
        notify = (
            f'notify:\n  - url: "json://127.0.0.1:{rx.port}/ondeck"\n    events: [job-failed]\n'
        )
        od, _ = start(ondeck, repo, control_plane, spec(app, notify=notify), "--public-read")
        ns = f"{app}-staging"

        done = od.cli("job", "run", "cleanup", "--env", "staging", "--wait", "--json")
        run = json.loads(done.stdout)["run"]
        assert run["result"] == "succeeded" and run["trigger"] == "manual", run
        assert run["kube_job"].startswith("cleanup-manual-") and run["duration"] is not None
        (made,) = kube_jobs(control_plane, ns, "cleanup")
        assert made["metadata"]["name"] == run["kube_job"]
        owner = made["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("CronJob", "cleanup")
        assert made["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"

        # without --wait: it returns at once, and the run's end is read from the cluster
        quick = json.loads(od.cli("job", "run", "cleanup", "--json").stdout)["run"]
        assert quick["id"] == run["id"] + 1 and quick["kube_job"] != run["kube_job"]

        def both_succeeded() -> list[dict[str, Any]] | None:
            runs = history(od, "cleanup")
            return runs if [r["result"] for r in runs] == ["succeeded"] * 2 else None

        runs = wait_for(both_succeeded, "the second manual run to succeed", 90, every=0.5)
        assert [r["id"] for r in runs] == [quick["id"], run["id"]]  # newest first
        table = od.cli("job", "history", "cleanup").stdout
        assert run["kube_job"] in table and quick["kube_job"] in table
        # the sync that follows does not prune runs the CronJob owns
        wait_for(
            lambda: (
                len(kube_jobs(control_plane, ns, "cleanup")) == 2
                and od.env_status("staging")["sync"] == "Synced"
            ),
            "both runs kept through the drift checks",
            30,
        )

        # a run that cannot finish: the Job controller stops it at its timeout
        stuck = od.cli("job", "run", "stuck", "--env", "staging", "--wait", "--json", check=False)
        failed = json.loads(stuck.stdout)["run"]
        assert stuck.returncode == 1 and failed["result"] == "timed-out", failed
        assert "activeDeadlineSeconds" in failed["reason"]
        wait_for(lambda: "job-failed" in rx.kinds(), "the job-failed notification", 60)
        event = next(e for e in rx.events if e["event"] == "job-failed")
        assert event["app"] == app and event["env"] == "staging" and "stuck" in json.dumps(event)
        api = json.loads((od.state_dir / "api.json").read_text())["url"]
        metrics = httpx.get(f"{api}/metrics", timeout=10).text
        assert 'ondeck_job_runs_total{env="staging",job="stuck",result="timed-out"} 1.0' in metrics
        assert (
            'ondeck_job_runs_total{env="staging",job="cleanup",result="succeeded"} 2.0' in metrics
        )
        assert rx.kinds().count("job-failed") == 1  # once, not at every read
        page = httpx.get(f"{api}/", timeout=10).text  # the dashboard (--public-read)
        assert 'id="job-staging-stuck"' in page and "timed-out" in page

        # a run that ends while ondeck is down is read, and reported once, when it is back
        again = json.loads(od.cli("job", "run", "stuck", "--json").stdout)["run"]
        assert again["result"] == "running"
        od.stop()
        wait_for(
            lambda: any(
                c["type"] == "Failed" and c["status"] == "True"
                for j in kube_jobs(control_plane, ns, "stuck")
                if j["metadata"]["name"] == again["kube_job"]
                for c in j.get("status", {}).get("conditions") or []
            ),
            "the Job to fail while ondeck is down",
            60,
        )
        od.start()

        def stuck_ended() -> dict[str, Any] | None:
            newest = history(od, "stuck")[0]
            return newest if newest["id"] == again["id"] and newest["result"] != "running" else None

        ended = wait_for(stuck_ended, "the run's end read after the restart", 60, every=0.5)
        assert ended["kube_job"] == again["kube_job"] and ended["result"] == "timed-out"
        wait_for(lambda: rx.kinds().count("job-failed") == 2, "its job-failed notification", 60)
        missing = od.cli("job", "run", "nope", check=False)
        assert missing.returncode == 1 and "no job 'nope'" in missing.stderr
        assert "Traceback" not in od.log()
    finally:
        rx.close()
