"""`manifests(desired) -> [object]`: one environment as standard Kubernetes objects.

Pure: no I/O, no clock. Called by `ondeck render --target kubernetes`
(commands/render.py) and by the Kubernetes runtime before it applies. The
output is deterministic (objects in apply order, then by name; keys sorted
when dumped) so it diffs cleanly in git and can be handed to kubectl, Argo CD
or Flux.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ruamel.yaml import YAML

from ondeck.errors import UserError
from ondeck.kube.cron import JOB_LABEL
from ondeck.kube.tls import ingress_tls
from ondeck.spec import template
from ondeck.spec.cron import every_as_cron
from ondeck.spec.model import HealthCheck, Service
from ondeck.state.desired import Desired, DesiredJob, DesiredService

Obj = dict[str, Any]

MANAGER = "ondeck"
DEFAULT_PORT = 8080  # `port: true`: ondeck picks the port; in a pod any fixed one will do
DATA_DIR = "/data"
DATA_CLAIM = "ondeck-data"
DATA_SIZE = "1Gi"
SERVICE_PORT = 80
COLOR = "ondeck.dev/color"  # blue/green sets, runtime only
TRACK = "ondeck.dev/track"  # `canary` on the pods of a canary's second Deployment, runtime only
SECRET_VAR = "ONDECK_SECRET_"  # a secret used inside a longer value is read through this var
# Kinds in the order they are applied; pruning goes the other way. A release Job comes
# before the Deployments: the runtime applies PRE_DEPLOY kinds first and waits for the Job.
KIND_ORDER = (
    "Namespace",
    "PersistentVolumeClaim",
    "Secret",
    "ConfigMap",
    "Service",
    "Job",
    "Deployment",
    "CronJob",
    "Ingress",
)
PRE_DEPLOY = frozenset({"Namespace", "PersistentVolumeClaim", "Secret", "Job"})
API_VERSION = {
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Job": "batch/v1",
    "Deployment": "apps/v1",
    "CronJob": "batch/v1",
    "Ingress": "networking.k8s.io/v1",
}
CRONJOB_NAME_MAX = 52  # the CronJob controller appends 11 characters to name each Job
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


def secret_name(app: str, env: str) -> str:
    """The Secret holding an environment's secret values (created by the runtime, never rendered)."""
    return f"{app}-secrets" if env == "default" else f"{app}-{env}-secrets"


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
    canary: Mapping[str, int] | None = None,
) -> list[Obj]:
    """Every object of one environment, in apply order.

    `colors` (runtime only) names the Deployment set of a blue/green service (`web-blue`);
    its Service selects the `serving` color (default: the same). `canary` (runtime only)
    renders a service's new release as `SERVICE-canary` with that many replicas, instead
    of its stable Deployment, which the runtime keeps as it is.
    """
    ns = namespace or namespace_of(desired.app, desired.env)
    objects: list[Obj] = [_meta("Namespace", ns, None, labels(desired))]
    objects.append(_data_claim(desired, ns))
    for svc in desired.services:
        color = (colors or {}).get(svc.name)
        serve = (serving or {}).get(svc.name)
        objects.extend(
            _service_objects(desired, svc, ns, color, serve, (canary or {}).get(svc.name))
        )
        if svc.spec.release is not None:
            objects.append(_release_job(desired, svc, ns))
    for job in desired.jobs:
        objects.append(_cron_job(desired, job, ns))
    return sort_objects(objects)


def pre_deploy(objects: Iterable[Obj]) -> list[Obj]:
    """What must be in place (and, for a release Job, have succeeded) before a Deployment changes."""
    return [obj for obj in objects if obj["kind"] in PRE_DEPLOY]


def secret(desired: Desired, namespace: str, values: Mapping[str, str]) -> Obj:
    """The environment's Secret with `values`: applied by the runtime, never printed or rendered.

    Its `ondeck.dev/fingerprints` annotation holds the keyed fingerprints of the values,
    so a change shows without a hash of a value ever leaving the Secret's data.
    """
    prints: dict[str, str] = {}
    for svc in desired.services:
        prints.update(svc.secrets.prints)
    for job in desired.jobs:
        prints.update(job.secrets.prints)
    obj = _meta("Secret", secret_name(desired.app, desired.env), namespace, labels(desired))
    obj["metadata"]["annotations"] = {
        "ondeck.dev/fingerprints": ",".join(f"{n}={prints.get(n, '')}" for n in sorted(values))
    }
    obj["type"] = "Opaque"
    obj["data"] = {
        name: base64.b64encode(value.encode()).decode() for name, value in sorted(values.items())
    }
    return obj


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
    desired: Desired,
    svc: DesiredService,
    ns: str,
    color: str | None,
    serving: str | None,
    canary: int | None = None,
) -> list[Obj]:
    spec = svc.spec
    _refuse_unrepresentable(svc.name, spec)
    plain, templated = _env_entries(
        spec.env,
        f"services.{svc.name}.env",
        secret_name(desired.app, desired.env),
        template.BUILTIN,
    )
    objects: list[Obj] = []
    if plain:
        config = _meta("ConfigMap", f"{svc.name}-env", ns, labels(desired, svc.name))
        config["data"] = dict(sorted(plain.items()))
        objects.append(config)
    deployment = _deployment(desired, svc, ns, plain, templated, color)
    objects.append(deployment if canary is None else canary_of(deployment, canary))
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


def canary_of(deployment: Obj, replicas: int) -> Obj:
    """`deployment` as its canary: `NAME-canary`, `replicas` pods labelled `track: canary`.

    Its pods keep the service's labels, so the Service selects them with the stable ones.
    """
    obj: Obj = json.loads(json.dumps(deployment))
    obj["metadata"]["name"] = f"{deployment['metadata']['name']}-canary"
    obj["metadata"]["labels"][TRACK] = "canary"
    spec = obj["spec"]
    spec["replicas"] = replicas
    spec["selector"]["matchLabels"][TRACK] = "canary"
    spec["template"]["metadata"]["labels"][TRACK] = "canary"
    return obj


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
    if spec.rollout.match is not None:
        raise UserError(
            f"{where}: rollout.match (header/cookie A/B) needs ondeck's router, and on "
            "Kubernetes a canary splits traffic by replicas only; remove rollout.match"
        )
    if spec.rollout.analysis is not None:
        raise UserError(
            f"{where}: rollout.analysis measures the new version through ondeck's router, "
            "which does not carry a cluster's traffic; remove rollout.analysis"
        )


def _env_entries(
    env: Mapping[str, str], where: str, secret: str, defined: Collection[str]
) -> tuple[dict[str, str], list[Obj]]:
    """Plain values, and env entries for the values that refer to something.

    `${BUILTIN}` becomes Kubernetes' `$(BUILTIN)`; any other name is a secret, read from
    the environment's Secret: a value that is only `${NAME}` is a `secretKeyRef` itself,
    one that holds more text reads it through `ONDECK_SECRET_NAME` (defined before it, as
    Kubernetes expands in order). Secret values are never rendered.
    """
    plain: dict[str, str] = {}
    carriers: dict[str, Obj] = {}
    entries: list[Obj] = []
    for key, value in sorted(env.items()):
        refs = template.names(value)
        if not refs:
            plain[key] = template.expand(value, {})
            continue
        secrets = {n for n in refs if n not in defined and n not in template.PASSTHROUGH}
        if len(refs) == 1 and value == f"${{{refs[0]}}}" and refs[0] in secrets:
            entries.append({"name": key, "valueFrom": _secret_ref(secret, refs[0])})
            continue
        for name in sorted(secrets):
            carriers.setdefault(
                name, {"name": SECRET_VAR + name, "valueFrom": _secret_ref(secret, name)}
            )
        entries.append({"name": key, "value": _k8s_refs(value, f"{where}.{key}", secrets)})
    return plain, [carriers[name] for name in sorted(carriers)] + entries


def _secret_ref(secret: str, name: str) -> Obj:
    return {"secretKeyRef": {"name": secret, "key": name}}


def _k8s_refs(value: str, where: str, secrets: Collection[str] = ()) -> str:
    """`${NAME}` as Kubernetes' `$(NAME)`; a literal `$(` escaped as `$$(`."""
    parts: list[str] = []
    for kind, text in template._tokens(value):
        if kind == "name":
            if text in template.PASSTHROUGH:  # refused by validation too: defence in depth
                raise UserError(f"{where}: {template.hostless(text, 'kubernetes')}")
            if text == "ONDECK_REVISION":
                raise UserError(
                    f"{where}: ${{ONDECK_REVISION}} is not set in pods (it would change every "
                    "pod at every commit); read the ondeck.dev/revision annotation instead"
                )
            parts.append(f"$({SECRET_VAR}{text})" if text in secrets else f"$({text})")
        elif kind == "text":
            parts.append(_escape(text))
        else:
            raise UserError(f"{where}: malformed reference {text!r}")
    return "".join(parts)


def _escape(text: str) -> str:
    """Literal text in an inline env value or argument: Kubernetes would expand `$(`."""
    return text.replace("$(", "$$(")


def _builtin_env(desired: Desired, svc: DesiredService, job: str | None = None) -> list[Obj]:
    """The builtins of a pod: an instance's, or (`job` set) a release task's or job run's.

    As on a host, a task or job has no PORT and no ONDECK_INSTANCE; a job has ONDECK_JOB.
    """
    env: list[Obj] = [
        {"name": "ONDECK_APP", "value": desired.app},
        {"name": "ONDECK_SERVICE", "value": svc.name},
        {"name": "ONDECK_ENV", "value": desired.env},
        # an empty value is stored without `value`, so render it that way
        {"name": "ONDECK_VERSION", "value": svc.spec.version}
        if svc.spec.version
        else {"name": "ONDECK_VERSION"},
        {"name": "ONDECK_DATA_DIR", "value": DATA_DIR},
    ]
    if job is not None:
        return env + ([{"name": "ONDECK_JOB", "value": job}] if job else [])
    env.append(
        {"name": "ONDECK_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    port = container_port(svc.spec)
    if port is not None:
        env.append({"name": "PORT", "value": str(port)})
    return env


def _container(
    svc: DesiredService, name: str, env: list[Obj], argv: list[str] | None, where: str
) -> Obj:
    """A container running `svc`'s image with `argv` (the image's own when None)."""
    spec = svc.spec
    container: Obj = {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": {"always": "Always", "missing": "IfNotPresent", "never": "Never"}[
            spec.pull
        ],
        "env": env,
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}]
        + [{"name": f"vol-{v}", "mountPath": spec.volumes[v]} for v in sorted(spec.volumes)],
    }
    if argv:
        container["command"] = [_k8s_refs(arg, f"{where}[{i}]") for i, arg in enumerate(argv)]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def _pod(spec: Service, container: Obj, restart: str | None = None) -> Obj:
    volumes: list[Obj] = [{"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}}]
    volumes += [
        {"name": f"vol-{v}", "persistentVolumeClaim": {"claimName": v}}
        for v in sorted(spec.volumes)
    ]
    pod: Obj = {
        "containers": [container],
        "terminationGracePeriodSeconds": math.ceil(spec.stop.grace),
        "volumes": volumes,
    }
    if restart is not None:
        pod["restartPolicy"] = restart
    return pod


def _deployment(
    desired: Desired,
    svc: DesiredService,
    ns: str,
    plain: Mapping[str, str],
    templated: list[Obj],
    color: str | None = None,
) -> Obj:
    spec = svc.spec
    pod_labels = {**labels(desired, svc.name), **_version_label(spec.version)}
    pods = selector(desired, svc.name)
    if color is not None:
        pod_labels[COLOR] = pods[COLOR] = color
    env = _builtin_env(desired, svc) + templated
    container = _container(svc, svc.name, env, spec.command, f"services.{svc.name}.command")
    if plain:
        container["envFrom"] = [{"configMapRef": {"name": f"{svc.name}-env"}}]
    port = container_port(spec)
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    health = spec.health or (HealthCheck(tcp=True) if port is not None else None)
    if health is not None:
        container["readinessProbe"] = _probe(health, port, initial=0)
        container["livenessProbe"] = _probe(health, port, initial=math.ceil(health.start_period))
    annotations = {"ondeck.dev/config-hash": config_hash(plain)} if plain else {}
    annotations.update(_secret_prints(svc))
    template_meta: Obj = {"labels": pod_labels}
    if annotations:
        template_meta["annotations"] = annotations
    name = f"{svc.name}-{color}" if color else svc.name
    obj = _meta("Deployment", name, ns, pod_labels)
    obj["spec"] = {
        "replicas": spec.replicas,
        # rollout.deadline: a release making no progress that long is Degraded, with the reason
        "progressDeadlineSeconds": max(1, math.ceil(spec.rollout.deadline)),
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": pods},
        "strategy": _strategy(spec),
        "template": {"metadata": template_meta, "spec": _pod(spec, container)},
    }
    return obj


def _task_env(
    desired: Desired, svc: DesiredService, env: Mapping[str, str], job: str, where: str
) -> list[Obj]:
    """A release task's or job run's env, all inline (a Job does not wait for a ConfigMap)."""
    defined = (*template.BUILTIN, "ONDECK_JOB") if job else template.BUILTIN
    plain, templated = _env_entries(env, where, secret_name(desired.app, desired.env), defined)
    inline = [{"name": k, "value": _escape(v)} for k, v in sorted(plain.items())]
    return _builtin_env(desired, svc, job) + inline + templated


def _release_job(desired: Desired, svc: DesiredService, ns: str) -> Obj:
    """The release task of `svc` as a Job named by what it runs, so it runs once per release.

    Its pods carry no `ondeck.dev/service` label: the Service and the Deployment's
    health never count them. No TTL: a finished Job is kept (a deleted one would run again).
    """
    spec = svc.spec
    where = f"services.{svc.name}"
    env = _task_env(desired, svc, spec.env, "", f"{where}.env")
    container = _container(svc, "release", env, spec.release, f"{where}.release")
    lbls = {
        **labels(desired),
        "app.kubernetes.io/component": "release",
        "ondeck.dev/release": svc.name,
    }
    pod_meta: Obj = {"labels": lbls}
    if _secret_prints(svc):  # a changed secret is a new release, as on a host
        pod_meta["annotations"] = _secret_prints(svc)
    pod_template = {"metadata": pod_meta, "spec": _pod(spec, container, "Never")}
    digest = hashlib.sha256(json.dumps(pod_template, sort_keys=True).encode()).hexdigest()
    obj = _meta("Job", f"{svc.name[:41]}-release-{digest[:10]}", ns, lbls)
    obj["spec"] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": max(1, math.ceil(spec.release_timeout)),
        "template": pod_template,
    }
    return obj


_CONCURRENCY = {"allow": "Allow", "forbid": "Forbid", "replace": "Replace"}


def _cron_job(desired: Desired, job: DesiredJob, ns: str) -> Obj:
    """A scheduled job as a CronJob running in its service's image with its service's env."""
    spec = job.spec
    where = f"jobs.{job.name}"
    if len(job.name) > CRONJOB_NAME_MAX:
        raise UserError(
            f"{where}: a CronJob name has at most {CRONJOB_NAME_MAX} characters; "
            "give the job a shorter name"
        )
    svc = desired.service(spec.service) if spec.service else desired.services[0]
    assert svc is not None  # validation: a job's service is in the spec
    _refuse_unrepresentable(svc.name, svc.spec)
    env = _task_env(desired, svc, {**svc.spec.env, **spec.env}, job.name, f"{where}.env")
    container = _container(svc, "job", env, spec.command, f"{where}.command")
    lbls = {**labels(desired), "app.kubernetes.io/component": "job", JOB_LABEL: job.name}
    if spec.schedule is not None:
        schedule = spec.schedule
    else:
        assert spec.every is not None  # validation: exactly one of schedule and every
        schedule = every_as_cron(spec.every, f"{where}.every")
    run: Obj = {
        "backoffLimit": 0,  # as on a host: a failed run is reported, not retried
        "activeDeadlineSeconds": max(1, math.ceil(spec.timeout)),
        "template": {"metadata": {"labels": lbls}, "spec": _pod(svc.spec, container, "Never")},
    }
    obj = _meta("CronJob", job.name, ns, lbls)
    obj["spec"] = {
        "schedule": schedule,
        "concurrencyPolicy": _CONCURRENCY[spec.concurrency],
        "jobTemplate": {"metadata": {"labels": lbls}, "spec": run},
    }
    if spec.timezone is not None:
        obj["spec"]["timeZone"] = spec.timezone
    return obj


def _secret_prints(svc: DesiredService) -> dict[str, str]:
    """The keyed fingerprints of the secrets a service uses, as a pod-template annotation.

    A pod reads a Secret when it starts: a changed value rolls the pods only if the
    template changes with it (as a changed secret rolls instances on a host). Known to
    the runtime only; `ondeck render` has no values, so no annotation.
    """
    return {"ondeck.dev/secrets": svc.secrets.identity} if svc.secrets.prints else {}


def _version_label(version: str | None) -> dict[str, str]:
    if version and len(version) <= 63 and _LABEL_VALUE.match(version):
        return {"app.kubernetes.io/version": version}
    return {}


def _resources(spec: Service) -> Obj:
    limits: dict[str, str] = {}
    if spec.memory is not None:
        limits["memory"] = _bytes(spec.memory)
    if spec.cpus is not None:
        millis = max(1, round(spec.cpus * 1000))
        limits["cpu"] = _decimal(millis // 1000) if millis % 1000 == 0 else f"{millis}m"
    return {"limits": limits, "requests": dict(limits)} if limits else {}


# Quantities as the API server writes them back (its canonical form): anything else
# would read as drift at every reconcile (`64000m` comes back `64`, `1024Mi` `1Gi`).
def _bytes(size: int) -> str:
    for power, suffix in ((6, "Ei"), (5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{suffix}"
    return _decimal(size)


def _decimal(value: int) -> str:
    for power, suffix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if value and value % 10**power == 0:
            return f"{value // 10**power}{suffix}"
    return str(value)


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
    hosts = [h for h in sorted(by_host, key=lambda h: h or "") if h is not None]
    entries, annotations = ingress_tls(desired.tls, desired.app, name, hosts)
    if entries:
        obj["spec"]["tls"] = entries
        obj["metadata"]["annotations"] = annotations
    return obj


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value
