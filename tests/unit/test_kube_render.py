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
from ondeck.errors import UserError
from ondeck.kube.render import Obj, dump, manifests
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import render

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
    services: {web: {rollout: {strategy: blue-green}}}
"""


def _render(text: str, env: str | None = None, namespace: str | None = None) -> list[Obj]:
    spec = render_spec(parse(text), env)
    return manifests(render(spec, env or "default", "", ""), namespace)


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _versions() -> list[str]:
    """The two newest Kubernetes versions kubernetes-validate ships schemas for."""
    return list(dict.fromkeys(all_versions()))[-2:]


@pytest.mark.parametrize("version", _versions())
@pytest.mark.parametrize("env", [None, "staging", "production"])
def test_every_manifest_validates_against_the_official_schema(
    version: str, env: str | None
) -> None:
    objects = _render(SPEC, env)
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


def test_every_object_is_labelled() -> None:
    for obj in _render(SPEC, "staging"):
        lbls = obj["metadata"]["labels"]
        assert lbls["app.kubernetes.io/managed-by"] == "ondeck"
        assert lbls["app.kubernetes.io/name"] == "shop"
        assert lbls["ondeck.dev/env"] == "staging"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "shop-staging"


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


NO_IMAGE = SPEC.replace("runtime: container", "runtime: process").replace(
    '    image: registry.example/shop:1.4.2\n    command: ["/bin/app"', '    command: ["/bin/app"'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NO_IMAGE, "has no image"),
        (SPEC.replace("rollout: {strategy: recreate}", "restart: {policy: never}"), "restart"),
        (SPEC.replace("stop: {grace: 45s}", "stop: {grace: 45s, signal: QUIT}"), "signal QUIT"),
        (SPEC.replace('"${ONDECK_APP}-${ONDECK_ENV}"', '"${HOME}"'), "host variable"),
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
    assert files[0] == "0-namespace-s1.yaml" and "4-deployment-web.yaml" in files
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
