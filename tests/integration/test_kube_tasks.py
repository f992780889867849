"""Release tasks, scheduled jobs and secrets on a real control plane (tests/kubeplane.py).

Real etcd, kube-apiserver, controller manager (its Job and CronJob controllers)
and scheduler; KWOK plays the kubelet, completing a Job's pods as if their
command had exited 0 (no container can run here). A task that fails is made by
a pod the scheduler can never place, which the Job controller fails at its
deadline: the same path a task that outruns `release_timeout` takes.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kubeplane import ControlPlane
from ondeck.commands.render import secret_names
from ondeck.errors import ReleaseTaskError, TemporaryError
from ondeck.kube.render import dump, manifests
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, SecretEnv, render
from ondeck.state.health import Health

pytestmark = pytest.mark.timeout(600)

SPEC = """\
app: {app}
services:
  web:
    image: registry.example/shop:1
    command: ["/bin/app"]
    port: true
    replicas: 2
    env: {{LOG_LEVEL: info, DATABASE_URL: "${{DB_URL}}", DSN: "postgres://u:${{DB_PW}}@db/x"}}
    release: ["/bin/migrate"]
    release_timeout: 2m
jobs:
  cleanup:
    command: ["/bin/cleanup"]
    schedule: "0 4 * * *"
    timezone: Europe/Paris
    timeout: 10m
    concurrency: forbid
  tick:
    command: ["/bin/tick"]
    every: 15m
    env: {{TOKEN: "${{API_TOKEN}}"}}
    concurrency: replace
environments:
  production: {{}}
"""
VALUES = {"DB_URL": "postgres://db/shop", "DB_PW": "hunter2", "API_TOKEN": "t0ken"}


def _desired(app: str, text: str | None = None, env: str = "production") -> Desired:
    doc = parse(text or SPEC.format(app=app))
    spec = render_spec(doc, env, secrets=secret_names(doc))
    prints = {name: f"fp{i}" for i, name in enumerate(sorted(VALUES))}
    return render(spec, env, "", "", secrets=SecretEnv(VALUES, prints))


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def app() -> str:
    return f"j{uuid.uuid4().hex[:6]}"


@pytest.fixture
def runtime(control_plane: ControlPlane) -> Iterator[KubernetesRuntime]:
    api = connect(Cluster(control_plane.kubeconfig))
    yield KubernetesRuntime(api)
    api.close()  # type: ignore[no-untyped-call]


def _get(runtime: KubernetesRuntime, kind: str, ns: str, name: str) -> dict[str, Any]:
    found = runtime.get({"kind": kind, "metadata": {"name": name, "namespace": ns}})
    assert found is not None, f"{kind}/{ns}/{name} not found"
    return found


def _jobs(runtime: KubernetesRuntime, ns: str) -> list[dict[str, Any]]:
    items = runtime._request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
    return [j for j in items if "ondeck.dev/release" in j["metadata"]["labels"]]


def test_jobs_release_tasks_and_secret_refs_pass_server_side_dry_run(
    control_plane: ControlPlane, app: str
) -> None:
    objects = manifests(_desired(app))
    kinds = {o["kind"] for o in objects}
    assert {"CronJob", "Job", "Deployment"} <= kinds
    _kubectl(control_plane, "apply", "-f", "-", stdin=dump(objects[:1]))
    out = _kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=dump(objects))
    assert "cronjob.batch/cleanup created (server dry run)" in out
    assert "cronjob.batch/tick created (server dry run)" in out
    assert "job.batch/web-release-" in out and "deployment.apps/web" in out


def test_an_ingress_with_tls_passes_server_side_dry_run(
    control_plane: ControlPlane, app: str
) -> None:
    text = SPEC.format(app=app).replace(
        "    release_timeout: 2m\n",
        "    release_timeout: 2m\n    routes: [{host: shop.example}, {host: api.example}]\n",
    )
    for tls in (
        "tls:\n  acme: {email: ops@shop.example}\n",
        "tls:\n  certificates: [{hosts: ['*.example'], cert: /etc/x.crt, key: /etc/x.key}]\n",
    ):
        objects = manifests(_desired(app, text.replace("jobs:", tls + "jobs:")))
        ingress = next(o for o in objects if o["kind"] == "Ingress")
        assert ingress["spec"]["tls"][0]["hosts"] == ["api.example", "shop.example"]
        _kubectl(control_plane, "apply", "-f", "-", stdin=dump(objects[:1]))
        out = _kubectl(control_plane, "apply", "--dry-run=server", "-f", "-", stdin=dump(objects))
        assert "ingress.networking.k8s.io/web created (server dry run)" in out


def test_the_release_task_succeeds_before_the_deployment_and_runs_once(
    control_plane: ControlPlane, runtime: KubernetesRuntime, app: str
) -> None:
    desired = _desired(app)
    outcome = runtime.sync(desired, "r1", timeout=180)
    ns = outcome.namespace
    assert outcome.status.health is Health.HEALTHY, outcome.status.reasons()
    (job,) = _jobs(runtime, ns)
    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert conditions.get("Complete") == "True"
    # the Job had succeeded before the Deployment was created
    deploy = _get(runtime, "Deployment", ns, "web")
    done = job["status"]["completionTime"]
    assert deploy["metadata"]["creationTimestamp"] >= done, (done, deploy["metadata"])
    # the Secret holds the values, the objects only name it
    stored = _get(runtime, "Secret", ns, f"{app}-production-secrets")
    assert base64.b64decode(stored["data"]["DB_PW"]).decode() == "hunter2"
    assert "hunter2" not in str(stored["metadata"]) and "hunter2" not in str(deploy)
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DB_URL"
    cron = _get(runtime, "CronJob", ns, "tick")
    assert cron["spec"]["schedule"] == "*/15 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Replace"
    assert _get(runtime, "CronJob", ns, "cleanup")["spec"]["timeZone"] == "Europe/Paris"

    # the same release again: nothing is written, the task does not run twice
    again = runtime.sync(desired, "r1", timeout=180)
    assert again.result.writes == 0, again.result
    assert [j["metadata"]["uid"] for j in _jobs(runtime, ns)] == [job["metadata"]["uid"]]

    # a new image is a new release: a new Job, the old one pruned once the new one ran
    newer = _desired(app, SPEC.format(app=app).replace("shop:1", "shop:2"))
    rolled = runtime.sync(newer, "r2", timeout=180)
    assert rolled.status.health is Health.HEALTHY, rolled.status.reasons()
    (second,) = _jobs(runtime, ns)
    assert second["metadata"]["name"] != job["metadata"]["name"]
    assert f"Job/{ns}/{job['metadata']['name']}" in rolled.result.pruned


def test_a_failed_release_task_leaves_the_running_deployment_alone(
    runtime: KubernetesRuntime, app: str
) -> None:
    desired = _desired(app)
    first = runtime.sync(desired, "r1", timeout=180)
    ns = first.namespace
    assert first.status.health is Health.HEALTHY, first.status.reasons()
    before = _get(runtime, "Deployment", ns, "web")
    # a new release whose task cannot run (its pod asks more memory than any node has)
    # and gives up at its 3 s deadline
    text = (
        SPEC.format(app=app)
        .replace("shop:1", "shop:2")
        .replace("release_timeout: 2m", "release_timeout: 3s\n    memory: 512GiB")
    )
    with pytest.raises(ReleaseTaskError, match=r"release task of web failed .*DeadlineExceeded"):
        runtime.sync(_desired(app, text), "r2", timeout=60)
    after = _get(runtime, "Deployment", ns, "web")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    image = after["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/shop:1"
    # trying again does not run the task again: the failed Job stays, and so does the error
    failed = [j for j in _jobs(runtime, ns) if j["spec"]["activeDeadlineSeconds"] == 3]
    assert len(failed) == 1
    with pytest.raises(ReleaseTaskError):
        runtime.sync(_desired(app, text), "r2", timeout=60)
    again = [j for j in _jobs(runtime, ns) if j["spec"]["activeDeadlineSeconds"] == 3]
    assert [j["metadata"]["uid"] for j in again] == [failed[0]["metadata"]["uid"]]


def test_a_look_without_waiting_does_not_block_on_a_running_release_task(
    runtime: KubernetesRuntime, app: str
) -> None:
    # the controller also syncs with no time to wait, to observe: a release task that
    # cannot finish yet (its pod is never scheduled) is reported at once, not waited for
    first = runtime.sync(_desired(app), "r1", timeout=180)
    ns = first.namespace
    text = (
        SPEC.format(app=app)
        .replace("shop:1", "shop:2")
        .replace("release_timeout: 2m", "release_timeout: 2m\n    memory: 512GiB")
    )
    with pytest.raises(TemporaryError, match=r"release task of web .* still running"):
        runtime.sync(_desired(app, text), "r2", timeout=0)
    image = _get(runtime, "Deployment", ns, "web")["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "registry.example/shop:1"
