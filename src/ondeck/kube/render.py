"""`manifests(desired) -> [object]`: one environment as standard Kubernetes objects.

Pure: no I/O, no clock. Called by `ondeck render --target kubernetes`
(commands/render.py) and by the Kubernetes runtime before it applies. The
output is deterministic (objects in apply order, then by name; keys sorted
when dumped) so it diffs cleanly in git and can be handed to kubectl, Argo CD
or Flux.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ruamel.yaml import YAML

from ondeck.errors import UserError
from ondeck.spec import template
from ondeck.spec.model import HealthCheck, Service
from ondeck.state.desired import Desired, DesiredService

Obj = dict[str, Any]

MANAGER = "ondeck"
DEFAULT_PORT = 8080  # `port: true`: ondeck picks the port; in a pod any fixed one will do
DATA_DIR = "/data"
DATA_CLAIM = "ondeck-data"
DATA_SIZE = "1Gi"
SERVICE_PORT = 80
COLOR = "ondeck.dev/color"  # blue/green and canary sets, runtime only
# Kinds in the order they are applied; pruning goes the other way.
KIND_ORDER = ("Namespace", "PersistentVolumeClaim", "ConfigMap", "Service", "Deployment", "Ingress")
API_VERSION = {
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "Ingress": "networking.k8s.io/v1",
}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def namespace_of(app: str, env: str) -> str:
    """The namespace of one environment: `APP-ENV` (`APP` for the `default` environment)."""
    name = app if env == "default" else f"{app}-{env}"
    if not _DNS_LABEL.match(name):
        raise UserError(
            f"namespace {name!r} (app-env) is not a DNS label of at most 63 characters: "
            "choose one with --namespace"
        )
    return name


def labels(desired: Desired, service: str | None = None) -> dict[str, str]:
    """The labels of every object ondeck renders; `service` adds the service's own."""
    found = {
        "app.kubernetes.io/name": desired.app,
        "app.kubernetes.io/instance": f"{desired.app}-{desired.env}",
        "app.kubernetes.io/part-of": desired.app,
        "app.kubernetes.io/managed-by": MANAGER,
        "ondeck.dev/app": desired.app,
        "ondeck.dev/env": desired.env,
    }
    if service is not None:
        found["app.kubernetes.io/component"] = service
        found["ondeck.dev/service"] = service
    return found


def selector(desired: Desired, service: str) -> dict[str, str]:
    """The pod selector of a service (immutable on a Deployment: never add to it)."""
    return {
        "ondeck.dev/app": desired.app,
        "ondeck.dev/env": desired.env,
        "ondeck.dev/service": service,
    }


def manifests(
    desired: Desired,
    namespace: str | None = None,
    colors: Mapping[str, str] | None = None,
    serving: Mapping[str, str] | None = None,
) -> list[Obj]:
    """Every object of one environment, in apply order.

    `colors` (runtime only) names the Deployment set of a blue/green service (`web-blue`);
    its Service selects the `serving` color (default: the same).
    """
    ns = namespace or namespace_of(desired.app, desired.env)
    objects: list[Obj] = [_meta("Namespace", ns, None, labels(desired))]
    objects.append(_data_claim(desired, ns))
    for svc in desired.services:
        color = (colors or {}).get(svc.name)
        objects.extend(_service_objects(desired, svc, ns, color, (serving or {}).get(svc.name)))
    return sort_objects(objects)


def sort_objects(objects: Iterable[Obj]) -> list[Obj]:
    """Apply order: by kind (KIND_ORDER), then namespace and name."""
    return sorted(objects, key=key_order)


def key_order(obj: Obj) -> tuple[int, str, str]:
    meta = obj["metadata"]
    return (KIND_ORDER.index(obj["kind"]), meta.get("namespace", ""), meta["name"])


def dump(objects: Iterable[Obj]) -> str:
    """A YAML stream of `objects`, keys sorted so that it is deterministic."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.explicit_start = True
    text = io.StringIO()
    yaml.dump_all([_sorted(obj) for obj in objects], text)
    return text.getvalue()


def config_hash(data: Mapping[str, str]) -> str:
    blob = json.dumps(dict(sorted(data.items())), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- objects -------------------------------------------------------------------------------


def _meta(kind: str, name: str, namespace: str | None, lbls: Mapping[str, str]) -> Obj:
    meta: Obj = {"name": name, "labels": dict(lbls)}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": API_VERSION[kind], "kind": kind, "metadata": meta}


def _data_claim(desired: Desired, ns: str) -> Obj:
    obj = _meta("PersistentVolumeClaim", DATA_CLAIM, ns, labels(desired))
    obj["spec"] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": DATA_SIZE}},
    }
    return obj


def _service_objects(
    desired: Desired, svc: DesiredService, ns: str, color: str | None, serving: str | None
) -> list[Obj]:
    spec = svc.spec
    _refuse_unrepresentable(svc.name, spec)
    plain, templated = _split_env(svc.name, spec.env)
    objects: list[Obj] = []
    if plain:
        config = _meta("ConfigMap", f"{svc.name}-env", ns, labels(desired, svc.name))
        config["data"] = dict(sorted(plain.items()))
        objects.append(config)
    objects.append(_deployment(desired, svc, ns, plain, templated, color))
    port = container_port(spec)
    if port is not None:
        pods = selector(desired, svc.name)
        if color is not None:
            pods[COLOR] = serving or color
        objects.append(_service(desired, svc.name, ns, pods))
        if spec.routes:
            objects.append(_ingress(desired, svc.name, ns))
    for volume in sorted(spec.volumes):
        claim = _meta("PersistentVolumeClaim", volume, ns, labels(desired))
        claim["spec"] = _data_claim(desired, ns)["spec"]
        objects.append(claim)
    return objects


def container_port(spec: Service) -> int | None:
    if spec.port is None or spec.port is False:
        return None
    return DEFAULT_PORT if spec.port is True else int(spec.port)


def _refuse_unrepresentable(name: str, spec: Service) -> None:
    """Settings a Deployment cannot carry are errors, never silently dropped."""
    where = f"service {name!r}"
    if spec.image is None:
        raise UserError(f"{where} has no image: Kubernetes runs images, set services.{name}.image")
    if spec.restart.policy != "always":
        raise UserError(
            f"{where}: restart policy {spec.restart.policy!r} cannot run as a Deployment "
            "(its pods always restart); use restart: {policy: always}"
        )
    if spec.stop.signal != "TERM":
        raise UserError(
            f"{where}: stop signal {spec.stop.signal} cannot be set on Kubernetes (the "
            "kubelet sends TERM, or the image's STOPSIGNAL); remove stop.signal"
        )


def _split_env(name: str, env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Plain values (into the ConfigMap) and values with `${NAME}` (inline, expanded by k8s)."""
    plain: dict[str, str] = {}
    templated: dict[str, str] = {}
    for key, value in env.items():
        if template.names(value):
            templated[key] = _k8s_refs(value, f"services.{name}.env.{key}")
        else:
            plain[key] = template.expand(value, {})
    return plain, templated


def _k8s_refs(value: str, where: str) -> str:
    """`${NAME}` as Kubernetes' `$(NAME)`; a literal `$(` escaped as `$$(`."""
    parts: list[str] = []
    for kind, text in template._tokens(value):
        if kind == "name":
            if text in template.PASSTHROUGH:
                raise UserError(
                    f"{where}: ${{{text}}} is a host variable, and a pod has no host to take "
                    "it from; write the value instead"
                )
            parts.append(f"$({text})")
        elif kind == "text":
            parts.append(text.replace("$(", "$$("))
        else:
            raise UserError(f"{where}: malformed reference {text!r}")
    return "".join(parts)


def _builtin_env(desired: Desired, svc: DesiredService) -> list[Obj]:
    env: list[Obj] = [
        {"name": "ONDECK_APP", "value": desired.app},
        {"name": "ONDECK_SERVICE", "value": svc.name},
        {"name": "ONDECK_ENV", "value": desired.env},
        # an empty value is stored without `value`, so render it that way
        {"name": "ONDECK_VERSION", "value": svc.spec.version}
        if svc.spec.version
        else {"name": "ONDECK_VERSION"},
        {"name": "ONDECK_DATA_DIR", "value": DATA_DIR},
        {"name": "ONDECK_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    port = container_port(svc.spec)
    if port is not None:
        env.append({"name": "PORT", "value": str(port)})
    return env


def _deployment(
    desired: Desired,
    svc: DesiredService,
    ns: str,
    plain: Mapping[str, str],
    templated: Mapping[str, str],
    color: str | None = None,
) -> Obj:
    spec = svc.spec
    pod_labels = {**labels(desired, svc.name), **_version_label(spec.version)}
    pods = selector(desired, svc.name)
    if color is not None:
        pod_labels[COLOR] = pods[COLOR] = color
    container: Obj = {
        "name": svc.name,
        "image": spec.image,
        "imagePullPolicy": {"always": "Always", "missing": "IfNotPresent", "never": "Never"}[
            spec.pull
        ],
        "env": _builtin_env(desired, svc)
        + [{"name": k, "value": v} for k, v in sorted(templated.items())],
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}]
        + [{"name": f"vol-{v}", "mountPath": spec.volumes[v]} for v in sorted(spec.volumes)],
    }
    if spec.command:
        container["command"] = [
            _k8s_refs(arg, f"services.{svc.name}.command[{i}]")
            for i, arg in enumerate(spec.command)
        ]
    if plain:
        container["envFrom"] = [{"configMapRef": {"name": f"{svc.name}-env"}}]
    port = container_port(spec)
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    health = spec.health or (HealthCheck(tcp=True) if port is not None else None)
    if health is not None:
        container["readinessProbe"] = _probe(health, port, initial=0)
        container["livenessProbe"] = _probe(health, port, initial=math.ceil(health.start_period))
    volumes: list[Obj] = [{"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}}]
    volumes += [
        {"name": f"vol-{v}", "persistentVolumeClaim": {"claimName": v}}
        for v in sorted(spec.volumes)
    ]
    annotations = {"ondeck.dev/config-hash": config_hash(plain)} if plain else {}
    template_meta: Obj = {"labels": pod_labels}
    if annotations:
        template_meta["annotations"] = annotations
    name = f"{svc.name}-{color}" if color else svc.name
    obj = _meta("Deployment", name, ns, pod_labels)
    obj["spec"] = {
        "replicas": spec.replicas,
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": pods},
        "strategy": _strategy(spec),
        "template": {
            "metadata": template_meta,
            "spec": {
                "containers": [container],
                "terminationGracePeriodSeconds": math.ceil(spec.stop.grace),
                "volumes": volumes,
            },
        },
    }
    return obj


def _version_label(version: str | None) -> dict[str, str]:
    if version and len(version) <= 63 and _LABEL_VALUE.match(version):
        return {"app.kubernetes.io/version": version}
    return {}


def _resources(spec: Service) -> Obj:
    limits: dict[str, str] = {}
    if spec.memory is not None:
        mib, rest = divmod(spec.memory, 1024 * 1024)
        limits["memory"] = f"{mib}Mi" if rest == 0 else str(spec.memory)
    if spec.cpus is not None:
        limits["cpu"] = f"{max(1, round(spec.cpus * 1000))}m"
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def _strategy(spec: Service) -> Obj:
    rollout = spec.rollout
    if rollout.strategy == "recreate":
        return {"type": "Recreate"}
    if rollout.strategy == "rolling":
        return {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": rollout.max_surge,
                "maxUnavailable": rollout.max_unavailable,
            },
        }
    # blue-green and canary: the whole new set is up before an old pod goes. The runtime
    # does the switch with a second Deployment; as plain manifests this is the closest.
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}}


def _probe(health: HealthCheck, port: int | None, initial: int) -> Obj:
    probe: Obj
    if health.http is not None:
        probe = {"httpGet": {"path": health.http, "port": "http"}}
    elif health.exec is not None:
        probe = {"exec": {"command": list(health.exec)}}
    else:
        probe = {"tcpSocket": {"port": "http"}}
    if port is None and "exec" not in probe:
        raise UserError("an http or tcp health check needs a port on the service")
    probe.update(
        {
            "periodSeconds": max(1, math.ceil(health.interval)),
            "timeoutSeconds": max(1, math.ceil(health.timeout)),
            "failureThreshold": health.failure_threshold,
            "successThreshold": 1,
        }
    )
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def _service(desired: Desired, name: str, ns: str, pods: Mapping[str, str]) -> Obj:
    obj = _meta("Service", name, ns, labels(desired, name))
    obj["spec"] = {
        "type": "ClusterIP",
        "selector": dict(pods),
        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    return obj


def _ingress(desired: Desired, name: str, ns: str) -> Obj:
    spec = desired.service(name)
    assert spec is not None  # only called for a service of `desired`
    backend = {"service": {"name": name, "port": {"number": SERVICE_PORT}}}
    by_host: dict[str | None, list[Obj]] = {}
    for route in spec.spec.routes:
        by_host.setdefault(route.host, []).append(
            {"path": route.path, "pathType": "Prefix", "backend": backend}
        )
    rules: list[Obj] = []
    for host in sorted(by_host, key=lambda h: (h is None, h or "")):
        rule: Obj = {"http": {"paths": sorted(by_host[host], key=lambda p: str(p["path"]))}}
        if host is not None:
            rule = {"host": host, **rule}
        rules.append(rule)
    obj = _meta("Ingress", name, ns, labels(desired, name))
    obj["spec"] = {"rules": rules}
    return obj


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value
