"""The Kubernetes renderer: spec in, manifests out, checked against the official schemas.

Schemas come from `kubernetes-validate` (the two newest Kubernetes versions it
ships); the same manifests go through `kubectl apply --dry-run=server` against
a real API server in tests/integration/test_kubernetes_runtime.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from ruamel.yaml import YAML
from typer.testing import CliRunner

from ondeck.cli import app
from ondeck.commands.render import secret_names
from ondeck.errors import SpecError, UserError
from ondeck.kube.render import Obj, dump, manifests, pre_deploy, secret
from ondeck.spec.cron import every_as_cron
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import SecretEnv, render

SPEC = """\
app: shop
runtime: container
services:
  web:
    image: registry.example/shop:1.4.2
    command: ["/bin/app", "--port", "${PORT}", "--name", "$${literal}"]
    version: "1.4.2"
    env: {LOG_LEVEL: info, GREETING: "hi $(x)", SELF: "${ONDECK_APP}-${ONDECK_ENV}"}
    port: 8080
    replicas: 3
    memory: 256MiB
    cpus: 0.5
    health: {http: /healthz, interval: 2s, timeout: 1s, failure_threshold: 4, start_period: 5s}
    stop: {grace: 45s}
    rollout: {strategy: rolling, max_surge: 2, max_unavailable: 1}
    routes:
      - {host: shop.example, path: /}
      - {host: shop.example, path: /api}
      - {path: /}
    volumes: {uploads: /uploads}
  worker:
    image: registry.example/shop:1.4.2
    command: ["/bin/worker"]
    rollout: {strategy: recreate}
environments:
  staging:
    services: {web: {replicas: 1}}
  production:
    services: {web: {rollout: {strategy: blue-green, max_surge: 1, max_unavailable: 0}}}
"""


# A host spec (process runtime) given images: what a user renders to move to a cluster.
TASKS = """\
app: shop
services:
  web:
    image: registry.example/shop:2
    command: ["/bin/app"]
    port: true
    replicas: 2
    env:
      LOG_LEVEL: info
      DATABASE_URL: "${DB_URL}"
      DSN: "postgres://app:${DB_PW}@db/shop?opt=$(x)"
      SELF: "${ONDECK_APP}"
    release: ["/bin/migrate", "--app", "${ONDECK_APP}"]
    release_timeout: 90s
    volumes: {uploads: /uploads}
  worker:
    image: registry.example/shop:2
    command: ["/bin/worker"]
jobs:
  cleanup:
    command: ["/bin/cleanup", "--env", "${ONDECK_ENV}"]
    service: web
    schedule: "0 4 * * *"
    timezone: Europe/Paris
    timeout: 10m
    concurrency: replace
  tick:
    command: ["/bin/tick"]
    service: worker
    every: 10m
    env: {TOKEN: "${API_TOKEN}", PLAIN: "a $(b)"}
    concurrency: allow
environments:
  production:
    services: {web: {image: registry.example/shop:3}}
"""


def _render(text: str, env: str | None = None, namespace: str | None = None) -> list[Obj]:
    doc = parse(text)
    spec = render_spec(doc, env, secrets=secret_names(doc))
    return manifests(render(spec, env or "default", "", ""), namespace)


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _versions() -> list[str]:
    """The two newest Kubernetes versions kubernetes-validate ships schemas for."""
    return list(dict.fromkeys(all_versions()))[-2:]


@pytest.mark.parametrize("version", _versions())
@pytest.mark.parametrize(
    ("text", "env"),
    [(SPEC, None), (SPEC, "staging"), (SPEC, "production"), (TASKS, None), (TASKS, "production")],
)
def test_every_manifest_validates_against_the_official_schema(
    version: str, text: str, env: str | None
) -> None:
    objects = _render(text, env)
    kinds = {o["kind"] for o in objects}
    if text == TASKS:  # every kind the renderer makes is checked
        assert {"CronJob", "Job", "Deployment", "Service", "ConfigMap"} <= kinds
    for obj in YAML(typ="safe").load_all(dump(objects)):
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_deployment_carries_what_the_spec_says() -> None:
    objects = _render(SPEC)
    deploy = _one(objects, "Deployment", "web")
    assert deploy["metadata"]["namespace"] == "shop"
    spec = deploy["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1},
    }
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/shop:1.4.2"
    # ${NAME} becomes Kubernetes' $(NAME); $${...} stays a literal ${...}
    assert container["command"] == ["/bin/app", "--port", "$(PORT)", "--name", "${literal}"]
    assert container["resources"]["limits"] == {"memory": "256Mi", "cpu": "500m"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["periodSeconds"] == 2
    assert container["livenessProbe"]["failureThreshold"] == 4
    assert container["livenessProbe"]["initialDelaySeconds"] == 5
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PORT"] == "8080" and env["ONDECK_ENV"] == "default"
    assert env["SELF"] == "$(ONDECK_APP)-$(ONDECK_ENV)"
    # builtins come before the values that refer to them (Kubernetes expands in order)
    names = [e["name"] for e in container["env"]]
    assert names.index("ONDECK_APP") < names.index("SELF")
    assert container["envFrom"] == [{"configMapRef": {"name": "web-env"}}]
    assert spec["selector"]["matchLabels"] == {
        "ondeck.dev/app": "shop",
        "ondeck.dev/env": "default",
        "ondeck.dev/service": "web",
    }
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "1.4.2"


def test_plain_env_goes_to_a_configmap_whose_hash_rolls_the_pods() -> None:
    objects = _render(SPEC)
    config = _one(objects, "ConfigMap", "web-env")
    # a literal $( is escaped for Kubernetes only where it would expand; a ConfigMap does not
    assert config["data"] == {"GREETING": "hi $(x)", "LOG_LEVEL": "info"}
    before = _one(objects, "Deployment", "web")["spec"]["template"]["metadata"]["annotations"]
    changed = _render(SPEC.replace("LOG_LEVEL: info", "LOG_LEVEL: debug"))
    after = _one(changed, "Deployment", "web")["spec"]["template"]["metadata"]["annotations"]
    assert before["ondeck.dev/config-hash"] != after["ondeck.dev/config-hash"]


def test_service_ingress_and_claims() -> None:
    objects = _render(SPEC)
    service = _one(objects, "Service", "web")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = _one(objects, "Ingress", "web")
    rules = ingress["spec"]["rules"]
    assert [r.get("host") for r in rules] == ["shop.example", None]
    assert [p["path"] for p in rules[0]["http"]["paths"]] == ["/", "/api"]
    _one(objects, "PersistentVolumeClaim", "ondeck-data")
    _one(objects, "PersistentVolumeClaim", "uploads")
    # a service without a port gets no Service and no Ingress
    assert not [o for o in objects if o["kind"] in ("Service", "Ingress") and "worker" in str(o)]
    assert _one(objects, "Deployment", "worker")["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(("text", "env"), [(SPEC, "staging"), (TASKS, "production")])
def test_every_object_is_labelled(text: str, env: str) -> None:
    for obj in _render(text, env):
        lbls = obj["metadata"]["labels"]
        assert lbls["app.kubernetes.io/managed-by"] == "ondeck"
        assert lbls["app.kubernetes.io/name"] == "shop"
        assert lbls["ondeck.dev/env"] == env
        assert lbls["ondeck.dev/app"] == lbls["app.kubernetes.io/part-of"] == "shop"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == f"shop-{env}"
        for pods in _pod_templates(obj):
            assert pods["metadata"]["labels"]["ondeck.dev/env"] == env


def _pod_templates(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"], spec["jobTemplate"]["spec"]["template"]]
    return [spec["template"]] if "template" in spec else []


def test_environments_get_their_overlay_and_namespace() -> None:
    staging = _one(_render(SPEC, "staging"), "Deployment", "web")
    assert staging["spec"]["replicas"] == 1
    production = _one(_render(SPEC, "production", namespace="prod"), "Deployment", "web")
    assert production["metadata"]["namespace"] == "prod"
    assert production["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": "100%",
        "maxUnavailable": 0,
    }


def test_output_is_deterministic_and_in_apply_order() -> None:
    first = dump(_render(SPEC))
    assert first == dump(_render(SPEC))
    kinds = [o["kind"] for o in _render(SPEC)]
    assert kinds[0] == "Namespace"
    assert kinds.index("ConfigMap") < kinds.index("Deployment") < kinds.index("Ingress")
    assert "creationTimestamp" not in first


NO_IMAGE = (
    SPEC.replace("runtime: container", "runtime: process")
    .replace(
        '    image: registry.example/shop:1.4.2\n    command: ["/bin/app"',
        '    command: ["/bin/app"',
    )
    .replace("port: 8080", "port: true")
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NO_IMAGE, "has no image"),
        (SPEC.replace("rollout: {strategy: recreate}", "restart: {policy: never}"), "restart"),
        (SPEC.replace("stop: {grace: 45s}", "stop: {grace: 45s, signal: QUIT}"), "signal QUIT"),
        (SPEC.replace('"${ONDECK_APP}-${ONDECK_ENV}"', '"${HOME}"'), "host variable"),
        (
            SPEC.replace(
                "{strategy: rolling, max_surge: 2, max_unavailable: 1}",
                "{strategy: canary, match: {header: {X-C: a}}}",
            ),
            "rollout.match",
        ),
        (
            SPEC.replace(
                "{strategy: rolling, max_surge: 2, max_unavailable: 1}",
                "{strategy: canary, analysis: {interval: 5s}}",
            ),
            "rollout.analysis",
        ),
    ],
)
def test_what_a_deployment_cannot_carry_is_an_error(text: str, message: str) -> None:
    assert text != SPEC
    with pytest.raises(UserError, match=message):
        _render(text)


def test_the_command_prints_or_writes_files(tmp_path: Path) -> None:
    (tmp_path / "ondeck.yaml").write_text(SPEC)
    runner = CliRunner()
    printed = runner.invoke(app, ["render", "--target", "kubernetes", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    docs: list[Any] = list(YAML(typ="safe").load_all(printed.stdout))
    namespaces = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    assert namespaces == ["shop-production", "shop-staging"]
    out = tmp_path / "out"
    written = runner.invoke(
        app,
        ["render", str(tmp_path), "--env", "staging", "--namespace", "s1", "--output", str(out)],
    )
    assert written.exit_code == 0, written.output
    files = sorted(p.name for p in (out / "staging").iterdir())
    assert files[0] == "0-namespace-s1.yaml" and "6-deployment-web.yaml" in files
    refused = runner.invoke(app, ["render", str(tmp_path), "--namespace", "s1"])
    assert refused.exit_code != 0


def test_blue_green_sets_are_named_and_selected_by_color() -> None:
    spec = render_spec(parse(SPEC), "production")
    desired = render(spec, "production", "", "")
    objects = manifests(desired, colors={"web": "green"}, serving={"web": "blue"})
    deploy = _one(objects, "Deployment", "web-green")
    assert deploy["spec"]["selector"]["matchLabels"]["ondeck.dev/color"] == "green"
    assert deploy["spec"]["template"]["metadata"]["labels"]["ondeck.dev/color"] == "green"
    # the Service keeps the serving set until the runtime switches it
    assert _one(objects, "Service", "web")["spec"]["selector"]["ondeck.dev/color"] == "blue"
    switched = manifests(desired, colors={"web": "green"})
    assert _one(switched, "Service", "web")["spec"]["selector"]["ondeck.dev/color"] == "green"
    for obj in objects:
        kubernetes_validate.validate(obj, _versions()[-1], strict=True)


# --- jobs, release tasks, secrets ------------------------------------------------------------


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_a_scheduled_job_is_a_cronjob_in_its_services_image() -> None:
    objects = _render(TASKS, "production")
    cron = _one(objects, "CronJob", "cleanup")["spec"]
    assert cron["schedule"] == "0 4 * * *"
    assert cron["timeZone"] == "Europe/Paris"
    assert cron["concurrencyPolicy"] == "Replace"
    run = cron["jobTemplate"]["spec"]
    assert run["activeDeadlineSeconds"] == 600 and run["backoffLimit"] == 0
    pod = run["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/shop:3"  # the overlay's image of web
    assert container["command"] == ["/bin/cleanup", "--env", "$(ONDECK_ENV)"]
    env = _env(container)
    # the service's env, inline; a job has ONDECK_JOB and neither PORT nor ONDECK_INSTANCE
    assert env["LOG_LEVEL"] == "info" and env["ONDECK_JOB"] == "cleanup"
    assert "PORT" not in env and "ONDECK_INSTANCE" not in env
    assert env["DATABASE_URL"] == {
        "secretKeyRef": {"name": "shop-production-secrets", "key": "DB_URL"}
    }
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/data", "/uploads"}
    # its pods are not the service's: no Service or Deployment counts them
    assert "ondeck.dev/service" not in run["template"]["metadata"]["labels"]

    tick = _one(objects, "CronJob", "tick")["spec"]
    assert tick["schedule"] == "*/10 * * * *" and tick["concurrencyPolicy"] == "Allow"
    assert "timeZone" not in tick
    (worker,) = tick["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = _env(worker)
    assert env["TOKEN"] == {"secretKeyRef": {"name": "shop-production-secrets", "key": "API_TOKEN"}}
    assert env["PLAIN"] == "a $$(b)"  # inline, so a literal $( is escaped
    assert env["ONDECK_SERVICE"] == "worker"


@pytest.mark.parametrize(
    ("every", "cron"),
    [
        (60, "* * * * *"),
        (600, "*/10 * * * *"),
        (900, "*/15 * * * *"),
        (3600, "0 * * * *"),
        (7200, "0 */2 * * *"),
        (6 * 3600, "0 */6 * * *"),
        (86400, "0 0 * * *"),
        (7 * 86400, "0 0 * * 0"),
    ],
)
def test_every_becomes_the_cron_that_says_the_same(every: float, cron: str) -> None:
    assert every_as_cron(every, "jobs.x.every") == cron


@pytest.mark.parametrize(
    ("every", "message"),
    [
        (30, "once a minute"),
        (90, "once a minute"),
        (420, "no cron equivalent"),
        (5 * 3600, "no cron equivalent"),
        (2 * 86400, "no cron equivalent"),
    ],
)
def test_an_interval_cron_cannot_say_is_refused(every: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        every_as_cron(every, "jobs.x.every")
    with pytest.raises(UserError, match=r"jobs\.tick\.every"):
        _render(TASKS.replace("every: 10m", f"every: {int(every)}s"))


def test_the_release_task_is_a_job_named_by_its_release() -> None:
    objects = _render(TASKS)
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["metadata"]["name"].startswith("web-release-")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 90
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/migrate", "--app", "$(ONDECK_APP)"]
    env = _env(container)
    assert env["LOG_LEVEL"] == "info" and "PORT" not in env and "ONDECK_JOB" not in env
    assert spec["template"]["metadata"]["labels"]["ondeck.dev/release"] == "web"
    assert "ondeck.dev/service" not in spec["template"]["metadata"]["labels"]
    # the same release keeps its name (it runs once); a new image is a new release
    assert _one(_render(TASKS), "Job", job["metadata"]["name"]) == job
    scaled = _render(TASKS.replace("replicas: 2", "replicas: 5"))
    assert [o["metadata"]["name"] for o in scaled if o["kind"] == "Job"] == [
        job["metadata"]["name"]
    ]
    (other,) = [o for o in _render(TASKS, "production") if o["kind"] == "Job"]
    assert other["metadata"]["name"] != job["metadata"]["name"]
    # it goes before the Deployments, and is among what the runtime applies first
    kinds = [o["kind"] for o in objects]
    assert kinds.index("Job") < kinds.index("Deployment")
    assert job in pre_deploy(objects)
    assert {o["kind"] for o in pre_deploy(objects)} == {"Namespace", "PersistentVolumeClaim", "Job"}


def test_secrets_are_referenced_never_rendered() -> None:
    objects = _render(TASKS)
    web = _one(objects, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    env = web["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    ref = {"secretKeyRef": {"name": "shop-secrets", "key": "DB_URL"}}
    assert by_name["DATABASE_URL"] == {"name": "DATABASE_URL", "valueFrom": ref}
    # a secret inside a longer value is read through a variable defined before it
    assert by_name["DSN"]["value"] == "postgres://app:$(ONDECK_SECRET_DB_PW)@db/shop?opt=$$(x)"
    assert by_name["ONDECK_SECRET_DB_PW"]["valueFrom"]["secretKeyRef"]["key"] == "DB_PW"
    assert names.index("ONDECK_SECRET_DB_PW") < names.index("DSN")
    assert by_name["SELF"]["value"] == "$(ONDECK_APP)"
    # secret-carrying values are not in the ConfigMap
    assert _one(objects, "ConfigMap", "web-env")["data"] == {"LOG_LEVEL": "info"}
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_the_runtimes_secret_holds_values_and_shows_only_fingerprints() -> None:
    doc = parse(TASKS)
    spec = render_spec(doc, None, secrets=["DB_URL", "DB_PW", "API_TOKEN"])
    values = {"DB_URL": "postgres://s3cret", "DB_PW": "hunter2", "API_TOKEN": "tok"}
    prints = {n: f"fp-{n.lower()}" for n in values}
    desired = render(spec, "default", "", "", secrets=SecretEnv(values, prints))
    obj = secret(desired, "shop", values)
    assert obj["metadata"]["name"] == "shop-secrets"
    assert obj["data"]["DB_PW"] == "aHVudGVyMg=="  # base64 of the value, as Kubernetes stores it
    annotations = obj["metadata"]["annotations"]
    assert (
        annotations["ondeck.dev/fingerprints"]
        == "API_TOKEN=fp-api_token,DB_PW=fp-db_pw,DB_URL=fp-db_url"
    )
    assert "hunter2" not in str(obj["metadata"])
    kubernetes_validate.validate(obj, _versions()[-1], strict=True)


def test_a_secret_on_a_command_line_is_refused_as_on_a_host() -> None:
    text = TASKS.replace('command: ["/bin/worker"]', 'command: ["/bin/worker", "${DB_PW}"]')
    with pytest.raises(SpecError, match="is a secret"):
        _render(text)


def test_ondeck_revision_in_a_pod_is_refused() -> None:
    with pytest.raises(UserError, match="ONDECK_REVISION"):
        _render(TASKS.replace('SELF: "${ONDECK_APP}"', 'SELF: "${ONDECK_REVISION}"'))


def test_render_names_secrets_without_a_store(tmp_path: Path) -> None:
    (tmp_path / "ondeck.yaml").write_text(TASKS)
    printed = CliRunner().invoke(app, ["render", "--target", "kubernetes", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    docs: list[Any] = list(YAML(typ="safe").load_all(printed.stdout))
    assert {d["kind"] for d in docs} >= {"CronJob", "Job"}
    assert "shop-production-secrets" in printed.stdout and "kind: Secret" not in printed.stdout


def test_rollout_deadline_is_the_progress_deadline() -> None:
    deploy = _one(
        _render(SPEC.replace("max_unavailable: 1}", "max_unavailable: 1, deadline: 90s}")),
        "Deployment",
        "web",
    )
    assert deploy["spec"]["progressDeadlineSeconds"] == 90
    assert _one(_render(SPEC), "Deployment", "worker")["spec"]["progressDeadlineSeconds"] == 300


def test_a_canary_set_is_a_second_deployment_behind_the_same_service() -> None:
    spec = render_spec(parse(SPEC), "production")
    desired = render(spec, "production", "", "")
    objects = manifests(desired, canary={"web": 2})
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]
    assert names == ["web-canary", "worker"]  # the stable set is the runtime's to keep
    canary = _one(objects, "Deployment", "web-canary")
    assert canary["spec"]["replicas"] == 2
    assert canary["spec"]["selector"]["matchLabels"]["ondeck.dev/track"] == "canary"
    pods = canary["spec"]["template"]["metadata"]["labels"]
    service = _one(objects, "Service", "web")["spec"]["selector"]
    assert service.items() <= pods.items()  # the Service selects canary pods with stable ones
    for obj in objects:
        kubernetes_validate.validate(obj, _versions()[-1], strict=True)


@pytest.mark.parametrize(
    ("memory", "cpus", "limits"),
    [
        ("256MiB", "0.5", {"memory": "256Mi", "cpu": "500m"}),
        ("1024MiB", "2", {"memory": "1Gi", "cpu": "2"}),
        ("512KiB", "64", {"memory": "512Ki", "cpu": "64"}),
        ("1MB", "1.25", {"memory": "1M", "cpu": "1250m"}),
    ],
)
def test_quantities_are_written_as_the_api_server_writes_them_back(
    memory: str, cpus: str, limits: dict[str, str]
) -> None:
    text = SPEC.replace("memory: 256MiB", f"memory: {memory}").replace("cpus: 0.5", f"cpus: {cpus}")
    deploy = _one(_render(text), "Deployment", "web")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == limits


# --- TLS on the Ingress ----------------------------------------------------------------------

ACME = SPEC.replace("environments:", "tls:\n  acme: {email: ops@shop.example}\nenvironments:")
OWN = SPEC.replace(
    "environments:",
    "tls:\n  certificates: [{hosts: ['*.example'], cert: /etc/ondeck/x.crt, key: /etc/ondeck/x.key}]\n"
    "  redirect: false\nenvironments:",
)


def test_acme_hosts_get_a_certificate_from_cert_manager() -> None:
    ingress = _one(_render(ACME), "Ingress", "web")
    assert ingress["spec"]["tls"] == [{"hosts": ["shop.example"], "secretName": "web-tls"}]
    assert ingress["metadata"]["annotations"] == {
        "cert-manager.io/cluster-issuer": "shop-acme",
        "nginx.ingress.kubernetes.io/ssl-redirect": "true",
    }
    for version in _versions():
        kubernetes_validate.validate(ingress, version, strict=True)
    # no tls: no TLS section, no annotation
    assert "tls" not in _one(_render(SPEC), "Ingress", "web")["spec"]


def test_a_certificate_you_bring_is_a_tls_secret_named_by_its_hosts() -> None:
    ingress = _one(_render(OWN), "Ingress", "web")
    ((entry),) = ingress["spec"]["tls"]
    assert entry["hosts"] == ["shop.example"] and entry["secretName"].startswith("tls-")
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/ssl-redirect": "false"
    }
    assert not [o for o in _render(OWN) if o["kind"] == "Secret"]  # its files stay on the host


def test_what_an_ingress_cannot_say_about_tls_is_refused() -> None:
    with pytest.raises(UserError, match="hsts"):
        _render(ACME.replace("acme: {email: ops@shop.example}", "acme: {}\n  hsts: 180d"))
    mixed = OWN.replace("  redirect: false\n", "  acme: {}\n").replace(
        "- {path: /}", "- {host: shop.other, path: /}"
    )
    with pytest.raises(UserError, match="mix certificates you bring with ACME"):
        _render(mixed)


def test_a_changed_secret_rolls_the_pods_that_use_it_and_is_a_new_release() -> None:
    spec = render_spec(parse(TASKS), None, secrets=["DB_URL", "DB_PW", "API_TOKEN"])
    values = {"DB_URL": "u", "DB_PW": "p", "API_TOKEN": "t"}

    def rendered(prints: dict[str, str]) -> list[Obj]:
        return manifests(render(spec, "default", "", "", secrets=SecretEnv(values, prints)))

    before = rendered({"DB_URL": "a1", "DB_PW": "b1", "API_TOKEN": "c1"})
    after = rendered({"DB_URL": "a1", "DB_PW": "b2", "API_TOKEN": "c1"})
    web = _one(before, "Deployment", "web")["spec"]["template"]["metadata"]["annotations"]
    assert web["ondeck.dev/secrets"] == "DB_PW=b1,DB_URL=a1"  # fingerprints, never values
    changed = _one(after, "Deployment", "web")["spec"]["template"]["metadata"]["annotations"]
    assert changed["ondeck.dev/secrets"] != web["ondeck.dev/secrets"]
    # the worker uses no secret: its pods do not roll
    assert _one(before, "Deployment", "worker") == _one(after, "Deployment", "worker")
    jobs = [[o["metadata"]["name"] for o in objs if o["kind"] == "Job"] for objs in (before, after)]
    assert jobs[0] != jobs[1]
