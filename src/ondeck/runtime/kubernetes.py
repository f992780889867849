"""The Kubernetes runtime: one environment's manifests applied to a real cluster and watched.

Called for environments with `runtime: kubernetes` (and by tests/bench
directly). Objects come from the pure renderer (kube/render.py). Every write is
a server-side apply with field manager `ondeck`; a reconcile that finds
nothing to change sends no write at all. Drift in a field ondeck owns is
reverted (self-heal) or reported; a field another declarative manager owns,
or one changed through a subresource (an HPA scaling), is left to it.
Third-party errors are mapped to ondeck's at one boundary (`_api_errors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ondeck.certificates import CertificateProblem, check_pair
from ondeck.errors import OndeckError, UserError
from ondeck.kube import tls as kube_tls
from ondeck.kube.health import Crash, service_health
from ondeck.kube.render import (
    API_VERSION,
    COLOR,
    KIND_ORDER,
    MANAGER,
    Obj,
    container_port,
    key_order,
    labels,
    manifests,
    namespace_of,
    secret,
    sort_objects,
)
from ondeck.runtime.kube_cache import KubeCache, Source
from ondeck.runtime.kube_canary import CanaryRun, CanaryState, Position, annotate
from ondeck.runtime.kube_errors import api_errors as _api_errors
from ondeck.runtime.kube_release import run_release_tasks
from ondeck.state.desired import Desired
from ondeck.state.health import Health, Verdict, worst

log = logging.getLogger(__name__)

NO_CLUSTER = (
    "runtime kubernetes needs a cluster, and none is configured: pass --kubeconfig FILE "
    "(and --context NAME) to `ondeck up`, set KUBECONFIG, or run ondeck inside a cluster "
    "(in-cluster service account)"
)
MANAGED_BY = "app.kubernetes.io/managed-by"
APPLIED = "ondeck.dev/applied"  # hash of what ondeck applied: tells drift from a new spec
REVISION = "ondeck.dev/revision"
SWITCHED = "ondeck.dev/switched-at"  # when a blue/green Service last changed sets
RESTORER = "ondeck-restore"  # the field manager of a restore's scale to 0 (kube_pause.py)
_COLLECTION = {
    "Namespace": "/api/v1/namespaces",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "CronJob": "/apis/batch/v1/namespaces/{ns}/cronjobs",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
}
_TIMEOUT = 20.0
_RESOURCE = {path.rsplit("/", 1)[1]: kind for kind, path in _COLLECTION.items()} | {"pods": "Pod"}


class ConflictError(OndeckError):
    """Another field manager owns fields ondeck applies; carries them."""

    def __init__(self, key: str, fields: list[tuple[str, str]]) -> None:
        self.key = key
        self.fields = fields  # (field path, manager)
        text = ", ".join(f"{path} (owned by {manager})" for path, manager in fields)
        super().__init__(f"{key}: conflict with another field manager: {text}")


@dataclass(frozen=True)
class Cluster:
    """Where the cluster is: a kubeconfig (and context), or None for the usual places."""

    kubeconfig: Path | None = None
    context: str | None = None


def connect(cluster: Cluster) -> k8s.ApiClient:
    """An API client for `cluster`: kubeconfig file, $KUBECONFIG, ~/.kube/config, in-cluster."""
    configuration = k8s.Configuration()
    path = cluster.kubeconfig or _default_kubeconfig()
    try:
        if path is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path), context=cluster.context, client_configuration=configuration
            )
        elif cluster.context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            raise UserError(NO_CLUSTER)
    except (ConfigException, OSError) as err:
        raise UserError(f"{NO_CLUSTER}; the configuration found did not load: {err}") from err
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def _default_kubeconfig() -> Path | None:
    for candidate in os.environ.get("KUBECONFIG", "").split(os.pathsep):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    home = Path.home() / ".kube" / "config"
    return home if home.is_file() else None


def cache_sources(namespace: str, app: str, env: str) -> list[Source]:
    """What a `KubeCache` of one environment keeps: every kind ondeck applies, and pods."""
    labels = (("labelSelector", f"ondeck.dev/app={app},ondeck.dev/env={env}"),)
    sources = [
        Source(
            "Namespace",
            "v1",
            _COLLECTION["Namespace"],
            (("fieldSelector", f"metadata.name={namespace}"),),
        )
    ]
    for kind, path in _COLLECTION.items():
        if kind != "Namespace":
            sources.append(Source(kind, API_VERSION[kind], path.format(ns=namespace), labels))
    sources.append(Source("Pod", "v1", f"/api/v1/namespaces/{namespace}/pods", labels))
    return sources


def object_key(obj: Obj) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj['kind']}/{ns}/{meta['name']}" if ns else f"{obj['kind']}/{meta['name']}"


def _path(obj: Obj) -> str:
    meta = obj["metadata"]
    return _COLLECTION[obj["kind"]].format(ns=meta.get("namespace", "")) + f"/{meta['name']}"


def applied_hash(obj: Obj) -> str:
    import hashlib

    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stamped(obj: Obj, revision: str) -> Obj:
    """`obj` with the annotations ondeck keeps on what it applies."""
    meta = dict(obj["metadata"])
    annotations = dict(meta.get("annotations", {}))
    if revision:
        annotations[REVISION] = revision
    # a Secret's values stay out of the hash (its fingerprints annotation stands for them)
    basis = {k: v for k, v in obj.items() if k != "data"} if obj["kind"] == "Secret" else obj
    annotations[APPLIED] = applied_hash({"object": basis, "revision": revision})
    meta["annotations"] = annotations
    return {**obj, "metadata": meta}


def is_subset(want: Any, live: Any) -> bool:
    """Every value `want` sets is in `live` (what the server adds or defaults is ignored)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and is_subset(v, live[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(want) == len(live)
            and all(is_subset(w, v) for w, v in zip(want, live, strict=True))
        )
    return bool(want == live)


# --- field paths in conflicts ----------------------------------------------------------------

_CONFLICT = re.compile(r'conflict with "([^"]+)"(?: using [^:]+)?(?:: (\S+))?')
_STEP = re.compile(r'\.([^.\[]+)|\[([A-Za-z]+)="([^"]*)"\]|\[=([^\]]*)\]')


def conflicts(err: ApiException) -> list[tuple[str, str]]:
    """(field path, manager) of each conflict a 409 from server-side apply names."""
    with contextlib.suppress(ValueError, TypeError):
        details = json.loads(err.body or "").get("details") or {}
        found = []
        for cause in details.get("causes") or []:
            match = _CONFLICT.search(cause.get("message", ""))
            if match:
                path = cause.get("field") or match.group(2)
                if path:
                    found.append((path, match.group(1)))
        return found
    return []


def without_field(obj: Obj, path: str) -> bool:
    """Remove the field at a server-side-apply field path from `obj`; False if not found.

    Map keys may hold dots (`app.kubernetes.io/name`), so a step takes the longest key of
    the map that the rest of the path starts with.
    """
    node: Any = obj
    rest = path
    parents: list[tuple[Any, Any]] = []
    while rest:
        if isinstance(node, dict) and rest.startswith("."):
            key = max((k for k in node if rest[1:].startswith(k)), key=len, default=None)
            if key is None:
                return False
            parents.append((node, key))
            node, rest = node[key], rest[1 + len(key) :]
            continue
        match = _STEP.match(rest)
        if match is None or not isinstance(node, list):
            return False
        if match.group(2):
            index = next(
                (i for i, it in enumerate(node) if it.get(match.group(2)) == match.group(3)), None
            )
        else:
            index = next((i for i, it in enumerate(node) if str(it) == match.group(4)), None)
        if index is None:
            return False
        parents.append((node, index))
        node, rest = node[index], rest[match.end() :]
    if not parents:
        return False
    container, key = parents[-1]
    del container[key]
    return True


# --- results ---------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    """What one apply did, by object key."""

    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)  # drift in ondeck's fields, undone
    drifted: list[str] = field(default_factory=list)  # drift found, self-heal off
    left: list[str] = field(default_factory=list)  # fields left to another manager
    pruned: list[str] = field(default_factory=list)
    writes: int = 0

    @property
    def changed_anything(self) -> bool:
        return bool(self.created or self.changed or self.reverted or self.pruned)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    verdict: Verdict
    desired: int
    ready: int
    updated: int
    revision: str | None
    images: tuple[str, ...]
    crashes: tuple[tuple[Crash, str], ...] = ()  # with the last log lines


@dataclass(frozen=True)
class EnvStatus:
    namespace: str
    services: tuple[ServiceStatus, ...]

    @property
    def health(self) -> Health:
        return worst(s.verdict.health for s in self.services)

    def reasons(self) -> list[str]:
        return [
            f"{s.name}: {s.verdict.reason}"
            for s in self.services
            if s.verdict.health is not Health.HEALTHY and s.verdict.reason
        ]


@dataclass(frozen=True)
class SyncOutcome:
    namespace: str
    result: ApplyResult
    status: EnvStatus
    switched: tuple[str, ...]  # blue/green services whose traffic moved to the new set
    canaries: tuple[CanaryState, ...] = ()  # canary services with a new release, where they are


# --- the runtime -----------------------------------------------------------------------------


class KubernetesRuntime:
    """Server-side apply, prune, watch and health for one cluster."""

    def __init__(self, api: k8s.ApiClient, self_heal: bool = True) -> None:
        self.api = api
        self.self_heal = self_heal
        self.apps = k8s.AppsV1Api(api)
        self.core = k8s.CoreV1Api(api)
        # fields left to another manager, by object key: never applied again by ondeck
        self._left: dict[str, set[str]] = {}
        # the last renders, as JSON text: a no-op reconcile does not render the spec again
        self._rendered: dict[tuple[Any, ...], tuple[Desired, str]] = {}
        # watch-fed live state by (namespace, app, env), read instead of lists while fresh
        self.caches: dict[tuple[str, str, str], KubeCache] = {}

    def use_cache(self, namespace: str, app: str, env: str, cache: KubeCache | None) -> None:
        """Read the environment's live state from `cache` (None: from the API server)."""
        if cache is None:
            self.caches.pop((namespace, app, env), None)
        else:
            self.caches[(namespace, app, env)] = cache

    def _cached(
        self, kind: str, namespace: str, app: str, env: str
    ) -> tuple[list[Obj], str] | None:
        """`kind`'s live objects in the environment and their version, if a fresh cache has them."""
        cache = self.caches.get((namespace, app, env))
        return cache.snapshot(kind) if cache is not None else None

    def _wrote(self, path: str, answer: Any) -> None:
        """Tell the caches of the namespace `path` is in what a write there answered."""
        parts = path.strip("/").split("/")
        if "namespaces" not in parts:
            return
        at = parts.index("namespaces")
        namespace = parts[at + 1] if len(parts) > at + 1 else ""
        kind = _RESOURCE.get(parts[at + 2], "") if len(parts) > at + 2 else "Namespace"
        version = (answer or {}).get("metadata", {}).get("resourceVersion") if answer else None
        for (ns, _, _), cache in list(self.caches.items()):
            if ns == namespace:
                cache.wrote(kind, str(version) if version else None)

    # -- requests --

    def _request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        # a PATCH is a server-side apply unless `content_type` says otherwise
        content_type = query.pop("content_type", "application/apply-patch+yaml")
        params = [(k, v) for k, v in query.items() if v is not None]
        headers = {"Accept": "application/json"}
        if method == "PATCH":
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method,
            path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        if method == "GET":
            return self._send(request)
        try:
            answer = self._send(request)
        except ApiException as err:
            if err.status is not None and 400 <= err.status < 500:
                raise  # refused (a conflict, a 404...): nothing was written
            self._wrote(path, None)  # the outcome is unknown: the caches list again
            raise
        except BaseException:
            self._wrote(path, None)
            raise
        self._wrote(path, answer if isinstance(answer, dict) else None)
        return answer

    def _send(self, request: tuple[Any, ...]) -> Any:
        method, url, headers, body, post = request
        response = self.api.call_api(method, url, headers, body, post, _request_timeout=_TIMEOUT)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def get(self, obj: Obj) -> Obj | None:
        with _api_errors(f"reading {object_key(obj)}"):
            try:
                found: Obj = self._request("GET", _path(obj))
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
        return found

    def _apply_one(self, obj: Obj, force: bool) -> Obj:
        with _api_errors(f"applying {object_key(obj)}"):
            applied: Obj = self._request(
                "PATCH",
                _path(obj),
                body=obj,
                fieldManager=MANAGER,
                force="true" if force else None,
            )
        return applied

    def scale(self, namespace: str, name: str, replicas: int, manager: str) -> None:
        """Set a Deployment's replicas through its /scale subresource, as `manager`."""
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
        with _api_errors(f"scaling Deployment {namespace}/{name}"):
            self._request(
                "PATCH",
                path,
                body={"spec": {"replicas": replicas}},
                content_type="application/merge-patch+json",
                fieldManager=manager,
            )

    def list_owned(self, namespace: str, app: str, env: str) -> list[Obj]:
        """Every object ondeck applied for `app`/`env` in `namespace`, in apply order."""
        selector = (
            f"app.kubernetes.io/managed-by={MANAGER},ondeck.dev/app={app},ondeck.dev/env={env}"
        )
        found: list[Obj] = []
        for kind in KIND_ORDER:
            if kind == "Namespace":
                continue
            cached = self._cached(kind, namespace, app, env)
            if cached is not None:
                found += [o for o in cached[0] if _labels(o).get(MANAGED_BY) == MANAGER]
                continue
            path = _COLLECTION[kind].format(ns=namespace)
            with _api_errors(f"listing {kind}s in {namespace}"):
                listing = self._request("GET", path, labelSelector=selector)
            for item in listing.get("items", []):
                # items of a list carry neither kind nor apiVersion
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", API_VERSION[kind])
                found.append(item)
        return sorted(found, key=key_order)

    # -- apply --

    def apply(
        self,
        objects: Iterable[Obj],
        revision: str = "",
        prune: bool = True,
        keep: frozenset[str] = frozenset(),
    ) -> ApplyResult:
        """Make the cluster hold `objects`: create, update, revert drift, prune what left.

        Live state is read with one list per kind; objects whose live state already holds
        everything ondeck applies get no request at all.
        """
        result = ApplyResult()
        wanted = [stamped(obj, revision) for obj in objects]
        live = self._live(wanted)
        for obj in wanted:
            self._apply_if_needed(obj, live.get(object_key(obj)), result)
        if prune:
            keys = {object_key(o) for o in wanted}
            gone = [
                o
                for k, o in live.items()
                if k not in keys
                and k not in keep
                and o["kind"] != "Namespace"
                and not o["metadata"].get("deletionTimestamp")  # already on its way out
                # a CronJob's runs carry its labels; the CronJob (and the garbage
                # collector, when it is pruned) is what removes them
                and not o["metadata"].get("ownerReferences")
            ]
            self._prune(sorted(gone, key=key_order, reverse=True), result)
        return result

    def _live(self, wanted: list[Obj]) -> dict[str, Obj]:
        """What ondeck owns in the namespaces of `wanted`, by key (plus the namespaces)."""
        found: dict[str, Obj] = {}
        for obj in wanted:
            if obj["kind"] == "Namespace":
                name, labels = obj["metadata"]["name"], obj["metadata"]["labels"]
                app, env = labels["ondeck.dev/app"], labels["ondeck.dev/env"]
                cached = self._cached("Namespace", name, app, env)
                live = cached[0][0] if cached and cached[0] else None
                if cached is None:
                    live = self.get(obj)
                if live is not None:
                    live.setdefault("kind", "Namespace")
                    found[object_key(live)] = live
                    for item in self.list_owned(name, app, env):
                        found[object_key(item)] = item
        return found

    def _apply_if_needed(self, obj: Obj, live: Obj | None, result: ApplyResult) -> None:
        key = object_key(obj)
        body = json.loads(json.dumps(obj))
        for path in sorted(self._left.get(key, ())):
            without_field(body, path)
        if live is not None and is_subset(body, live):
            result.unchanged.append(key)
            return
        ours = (
            live is not None
            and (live["metadata"].get("annotations") or {}).get(APPLIED)
            == body["metadata"]["annotations"][APPLIED]
        )
        if ours and not self.self_heal:
            result.drifted.append(key)
            return
        self._apply_resolving(key, body, result)
        if live is None:
            result.created.append(key)
        elif ours:
            result.reverted.append(key)
        else:
            result.changed.append(key)

    def _apply_resolving(self, key: str, body: Obj, result: ApplyResult) -> None:
        """Apply; on a conflict, take back what an imperative edit took, leave the rest."""
        try:
            result.writes += 1
            self._apply_one(body, force=False)
            return
        except ApiException as err:
            if err.status != 409:
                raise
            found = conflicts(err)
        live = self.get(body) or {}
        imperative = {
            path
            for path, manager in found
            if (_operation(live, manager) == ("Update", "") and self.self_heal)
            or manager == RESTORER  # a restore's pause is ondeck's own: taken back
        }
        left = [(p, m) for p, m in found if p not in imperative]
        for path, manager in left:
            if not without_field(body, path):
                raise ConflictError(key, left)
            self._left.setdefault(key, set()).add(path)
            result.left.append(f"{key} {path} (owned by {manager})")
            log.info("%s: %s is managed by %s; ondeck leaves it", key, path, manager)
        result.writes += 1
        self._apply_one(body, force=bool(imperative))

    def _prune(self, gone: list[Obj], result: ApplyResult) -> None:
        for live in gone:
            key = object_key(live)
            with _api_errors(f"deleting {key}"):
                try:
                    result.writes += 1
                    self._request("DELETE", _path(live), propagationPolicy="Background")
                except ApiException as err:
                    if err.status != 404:
                        raise
            result.pruned.append(key)

    # -- status and watch --

    def status(
        self, namespace: str, app: str, env: str, services: Mapping[str, str] | Iterable[str]
    ) -> EnvStatus:
        """Health of each service now (services: names, or service -> Deployment name)."""
        return self._judge(
            namespace, app, env, _targets(services), self._deployments(namespace, app, env)[0]
        )

    def _deployments(self, namespace: str, app: str, env: str) -> tuple[dict[str, Obj], str]:
        """The environment's Deployments by name, and the list's resourceVersion."""
        cached = self._cached("Deployment", namespace, app, env)
        if cached is not None:
            return {d["metadata"]["name"]: d for d in cached[0]}, cached[1]
        selector = f"ondeck.dev/app={app},ondeck.dev/env={env}"
        with _api_errors(f"reading Deployments in {namespace}"):
            listing = self._request(
                "GET", _COLLECTION["Deployment"].format(ns=namespace), labelSelector=selector
            )
        found = {d["metadata"]["name"]: d for d in listing.get("items", [])}
        return found, str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _judge(
        self,
        namespace: str,
        app: str,
        env: str,
        targets: Mapping[str, str],
        deployments: Mapping[str, Obj],
        look_at_pods: bool = True,
    ) -> EnvStatus:
        """Each service's status; pods are listed (once, for all) only if one is unsettled."""
        chosen = {name: deployments.get(targets[name]) for name in targets}
        pods: dict[str, list[Obj]] = {}
        unsettled = any(d is not None and not _settled(d) for d in chosen.values())
        if look_at_pods and unsettled:
            for pod in self.pods(namespace, app, env):
                service = pod["metadata"].get("labels", {}).get("ondeck.dev/service", "")
                pods.setdefault(service, []).append(pod)
        return EnvStatus(
            namespace,
            tuple(
                self._service(namespace, name, chosen[name], pods.get(name, []))
                for name in sorted(targets)
            ),
        )

    def _service(
        self, namespace: str, name: str, deploy: Obj | None, pods: list[Obj]
    ) -> ServiceStatus:
        verdict, crashed = service_health(deploy, pods)
        logs = tuple((crash, self._last_lines(namespace, crash)) for crash in crashed[:3])
        status = (deploy or {}).get("status", {})
        spec = (deploy or {}).get("spec", {})
        containers = spec.get("template", {}).get("spec", {}).get("containers", [])
        return ServiceStatus(
            name,
            verdict,
            desired=spec.get("replicas", 0),
            ready=status.get("readyReplicas", 0),
            updated=status.get("updatedReplicas", 0),
            revision=((deploy or {}).get("metadata", {}).get("annotations") or {}).get(REVISION),
            images=tuple(c.get("image", "") for c in containers),
            crashes=logs,
        )

    def _last_lines(self, namespace: str, crash: Crash, lines: int = 20) -> str:
        try:
            text: str = self.core.read_namespaced_pod_log(
                crash.pod,
                namespace,
                container=crash.container,
                tail_lines=lines,
                previous=crash.restarts > 0,
                _request_timeout=_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            return f"(no logs: {getattr(err, 'reason', err)})"
        return text

    def wait(
        self,
        namespace: str,
        app: str,
        env: str,
        services: Mapping[str, str] | Iterable[str],
        timeout: float,
    ) -> EnvStatus:
        """Watch the environment's Deployments until all are Healthy or one is Degraded.

        One list, then a watch from its resourceVersion; each event updates the object
        it names (pods are listed only for a Deployment that is not settled).
        """
        targets = _targets(services)
        deadline = time.monotonic() + timeout
        deployments, version = self._deployments(namespace, app, env)
        status = self._judge(namespace, app, env, targets, deployments)
        looked = time.monotonic()
        selector = f"ondeck.dev/app={app},ondeck.dev/env={env}"
        while status.health not in (Health.HEALTHY, Health.DEGRADED):
            left = deadline - time.monotonic()
            if left <= 0:
                return status
            watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                with _api_errors(f"watching Deployments in {namespace}"):
                    for event in watcher.stream(  # type: ignore[no-untyped-call]
                        self.apps.list_namespaced_deployment,
                        namespace,
                        label_selector=selector,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=max(1, int(min(left, 30))),
                        _request_timeout=min(left, 30) + 5,
                    ):
                        raw = event["raw_object"]
                        version = raw.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] == "BOOKMARK":
                            continue
                        name = raw["metadata"]["name"]
                        if event["type"] == "DELETED":
                            deployments.pop(name, None)
                        else:
                            deployments[name] = raw
                        # pods (crash loops) at most once a second; the Deployments each event
                        now = time.monotonic()
                        look = now - looked >= 1.0
                        looked = now if look else looked
                        status = self._judge(namespace, app, env, targets, deployments, look)
                        if status.health in (Health.HEALTHY, Health.DEGRADED):
                            break
                    else:  # the watch ended quiet: look at the pods once more
                        status = self._judge(namespace, app, env, targets, deployments)
            except ApiException as err:
                if err.status != 410:  # resourceVersion too old: list again
                    raise
                deployments, version = self._deployments(namespace, app, env)
            finally:
                watcher.stop()  # type: ignore[no-untyped-call]
        return status

    # -- releases --

    def sync(
        self,
        desired: Desired,
        revision: str,
        timeout: float,
        namespace: str | None = None,
        promote: frozenset[str] = frozenset(),
        abort: frozenset[str] = frozenset(),
    ) -> SyncOutcome:
        """Apply one environment and watch it settle; blue/green services switch when ready.

        Rolling and recreate are the Deployment's own. A blue/green service has two
        Deployments (`web-blue`, `web-green`): the new template goes to the idle one, the
        Service keeps selecting the serving one until the new set is Available, then
        switches; the old set is kept `keep_old` for an instant switch back.
        """
        ns = namespace or namespace_of(desired.app, desired.env)
        app, env = desired.app, desired.env
        live, _ = self._deployments(ns, app, env)
        services = self._services(ns, app, env)  # one list, not a read per service
        colors: dict[str, str] = {}
        serving: dict[str, str] = {}
        keep: set[str] = set()
        now = time.time()
        for svc in desired.services:
            two_sets = svc.spec.rollout.strategy == "blue-green"
            if not two_sets or container_port(svc.spec) is None:
                continue
            active = _serving_color(services.get(svc.name))
            if active is None:
                colors[svc.name] = "blue"
                continue
            idle = "green" if active == "blue" else "blue"
            candidate = _deployment_of(manifests(desired, ns, {svc.name: active}))
            current = live.get(f"{svc.name}-{active}")
            if current is not None and is_subset(
                candidate[svc.name]["spec"]["template"], current["spec"]["template"]
            ):
                colors[svc.name] = active
                if now - _switched_at(services.get(svc.name)) < svc.spec.rollout.keep_old:
                    keep.add(f"Deployment/{ns}/{svc.name}-{idle}")
                continue
            colors[svc.name], serving[svc.name] = idle, active
            keep.add(f"Deployment/{ns}/{svc.name}-{active}")
        objects = self.objects(desired, ns, colors, serving)
        _carry_switch_time(objects, services)
        issued = self.apply_issuer(desired, objects)  # before anything of the environment
        # release tasks succeed before any Deployment changes (ReleaseTaskError otherwise)
        first = run_release_tasks(self, objects, revision, timeout)

        def build(positions: Mapping[str, Position]) -> list[Obj]:
            canary = {name: pos.replicas for name, pos in positions.items()}
            built = self.objects(desired, ns, colors, serving, canary)
            _carry_switch_time(built, services)
            annotate(built, positions)
            return built

        # a canary service with a new release steps through its weights (kube_canary.py)
        canaries = CanaryRun(
            self, is_subset, desired, ns, revision, timeout, frozenset(keep), promote, abort
        )
        canaries.advance(build, live)
        objects = build(canaries.positions)
        for step in canaries.applied:  # what the canary's steps applied counts too
            first = _merged(first, dataclasses.replace(step, writes=0))
        result = _merged(first, self.apply(objects, revision, keep=canaries.kept()))
        result.writes += canaries.writes + issued.writes
        for done, into in ((issued.created, result.created), (issued.changed, result.changed)):
            into[:0] = done
        result.unchanged[:0] = issued.unchanged
        targets = {
            s.name: f"{s.name}-{colors[s.name]}" if s.name in colors else s.name
            for s in desired.services
        }
        status = _with_canaries(self.wait(ns, app, env, targets, timeout), canaries.states)
        switched: list[str] = []
        if serving and status.health is Health.HEALTHY:
            switch = self.objects(desired, ns, colors)
            for obj in switch:
                if obj["kind"] == "Service" and obj["metadata"]["name"] in serving:
                    obj["metadata"].setdefault("annotations", {})[SWITCHED] = str(int(now))
            switched_result = self.apply(switch, revision, keep=frozenset(keep))
            result.changed += switched_result.changed
            result.writes += switched_result.writes
            switched = sorted(serving)
        return SyncOutcome(ns, result, status, tuple(switched), tuple(canaries.states.values()))

    def apply_issuer(self, desired: Desired, objects: list[Obj]) -> ApplyResult:
        """Apply the app's cert-manager ClusterIssuer when an Ingress of `objects` names it.

        Cluster-wide and shared by the app's environments, so never pruned with one of
        them. A cluster without cert-manager's CRDs fails the sync before anything is
        applied, saying what to do.
        """
        result = ApplyResult()
        acme = desired.tls.acme if desired.tls is not None else None
        named = any(
            (o["metadata"].get("annotations") or {}).get(kube_tls.ISSUER)
            for o in objects
            if o["kind"] == "Ingress"
        )
        if acme is None or not named:
            return result
        ca_pem = _read_file(acme.ca_bundle, "tls.acme.ca_bundle") if acme.ca_bundle else None
        lbls = {  # the app's, not one environment's: no prune of an environment finds it
            k: v
            for k, v in labels(desired).items()
            if k not in ("ondeck.dev/env", "app.kubernetes.io/instance")
        }
        obj = kube_tls.issuer(desired.app, acme, lbls, ca_pem)
        name = obj["metadata"]["name"]
        key = f"ClusterIssuer/{name}"
        path = f"/apis/{kube_tls.ISSUER_API}/clusterissuers/{name}"
        with _api_errors(f"reading {key}"):
            try:
                live: Obj | None = self._request("GET", path)
            except ApiException as err:
                if err.status != 404:
                    raise
                live = None
                try:
                    self._request("GET", f"/apis/{kube_tls.ISSUER_API}")
                except ApiException as missing:
                    if missing.status != 404:
                        raise
                    raise UserError(
                        f"tls.acme on Kubernetes needs cert-manager, and the cluster has no "
                        f"{kube_tls.ISSUER_API} ClusterIssuer kind: install cert-manager "
                        "(https://cert-manager.io/docs/installation/) or remove tls.acme"
                    ) from None
        if live is not None and is_subset(obj, live):
            result.unchanged.append(key)
            return result
        with _api_errors(f"applying {key}"):
            result.writes += 1
            self._request("PATCH", path, body=obj, fieldManager=MANAGER, force="true")
        (result.created if live is None else result.changed).append(key)
        return result

    def promote(
        self, desired: Desired, service: str, revision: str, timeout: float, **kw: Any
    ) -> SyncOutcome:
        """`ondeck rollout promote`: a canary goes past its current pause (a sync)."""
        return self.sync(desired, revision, timeout, promote=frozenset({service}), **kw)

    def force_apply(self, obj: Obj, revision: str) -> None:
        """Apply `obj` taking every field it sets from whichever manager held it."""
        self._apply_one(stamped(obj, revision), force=True)

    def objects(
        self,
        desired: Desired,
        namespace: str,
        colors: Mapping[str, str] | None = None,
        serving: Mapping[str, str] | None = None,
        canary: Mapping[str, int] | None = None,
    ) -> list[Obj]:
        """The environment's manifests plus the Secrets only the runtime holds values for: its
        environment's, and the TLS Secret of each certificate you bring."""
        key = (namespace, _frozen(colors), _frozen(serving), _frozen(canary))
        hit = self._rendered.get(key)
        if hit is None or hit[0] is not desired:
            hit = (desired, json.dumps(self._render(desired, namespace, colors, serving, canary)))
            if len(self._rendered) >= 8:
                self._rendered.clear()
            self._rendered[key] = hit
        found: list[Obj] = json.loads(hit[1])  # a fresh copy: callers change what they get
        # certificates you bring are read on every call: their files change without the spec
        return sort_objects([*found, *_certificate_secrets(desired, namespace, found)])

    def _render(
        self,
        desired: Desired,
        namespace: str,
        colors: Mapping[str, str] | None,
        serving: Mapping[str, str] | None,
        canary: Mapping[str, int] | None,
    ) -> list[Obj]:
        objects = with_deadlines(manifests(desired, namespace, colors, serving, canary), desired)
        values: dict[str, str] = {}
        for svc in desired.services:
            values.update(svc.secrets.values)
        for job in desired.jobs:
            values.update(job.secrets.values)
        if values:
            objects = sort_objects([*objects, secret(desired, namespace, values)])
        return objects

    def pods(self, namespace: str, app: str, env: str) -> list[Obj]:
        """The environment's pods (one list request, or none when cached), for status."""
        cached = self._cached("Pod", namespace, app, env)
        if cached is not None:
            return sorted(cached[0], key=lambda p: str(p["metadata"]["name"]))
        selector = f"ondeck.dev/app={app},ondeck.dev/env={env}"
        with _api_errors(f"listing pods in {namespace}"):
            listing = self._request(
                "GET", f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector
            )
        return sorted(listing.get("items", []), key=lambda p: str(p["metadata"]["name"]))

    def _services(self, namespace: str, app: str, env: str) -> dict[str, Obj]:
        """The environment's Services by name (one list request, or none when cached)."""
        cached = self._cached("Service", namespace, app, env)
        if cached is not None:
            return {s["metadata"]["name"]: s for s in cached[0]}
        selector = f"ondeck.dev/app={app},ondeck.dev/env={env}"
        with _api_errors(f"reading Services in {namespace}"):
            listing = self._request(
                "GET", _COLLECTION["Service"].format(ns=namespace), labelSelector=selector
            )
        return {s["metadata"]["name"]: s for s in listing.get("items", [])}

    def _live_service(self, namespace: str, name: str) -> Obj | None:
        return self.get({"kind": "Service", "metadata": {"name": name, "namespace": namespace}})

    def remove_owned(
        self, namespace: str, app: str, env: str, keep: frozenset[str] = frozenset()
    ) -> tuple[ApplyResult, list[str]]:
        """Delete every object ondeck applied for `app`/`env` in `namespace` but those of the
        kinds in `keep` (a prune with nothing desired): what was deleted, and what was kept.

        The Namespace itself is never deleted here (deleting it deletes what it holds).
        """
        owned = self.list_owned(namespace, app, env)
        kept = [object_key(o) for o in owned if o["kind"] in keep]
        gone = [
            o for o in owned if o["kind"] not in keep and not o["metadata"].get("deletionTimestamp")
        ]
        result = ApplyResult()
        self._prune(sorted(gone, key=key_order, reverse=True), result)
        return result, kept

    def delete_environment(self, namespace: str) -> None:
        """Remove a whole environment: its namespace and everything in it."""
        with _api_errors(f"deleting namespace {namespace}"):
            try:
                self._request("DELETE", f"/api/v1/namespaces/{namespace}")
            except ApiException as err:
                if err.status != 404:
                    raise


def _read_file(path: str, what: str) -> bytes:
    """A file on the controller's host that an object is made from, or a clear error."""
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as err:
        raise UserError(
            f"{what}: cannot read {path} on this host ({err.strerror or err}): the file must "
            "exist and be readable by ondeck"
        ) from None


def _certificate_secrets(desired: Desired, namespace: str, objects: list[Obj]) -> list[Obj]:
    """The TLS Secret of each certificate you bring that an Ingress reads, from its files."""
    if desired.tls is None:
        return []
    used = kube_tls.secret_names([o for o in objects if o["kind"] == "Ingress"])
    found: list[Obj] = []
    for index, cert in enumerate(desired.tls.certificates):
        if kube_tls.certificate_secret(cert) not in used:
            continue
        where = f"tls.certificates[{index}]"
        chain = _read_file(cert.cert, f"{where}.cert")
        key = _read_file(cert.key, f"{where}.key")
        try:
            check_pair(chain, key)
        except CertificateProblem as err:  # its message never holds key material
            raise UserError(f"{where} ({cert.cert}, {cert.key}): {err}") from None
        found.append(kube_tls.certificate_object(cert, namespace, labels(desired), chain, key))
    return found


def _with_canaries(status: EnvStatus, states: Mapping[str, CanaryState]) -> EnvStatus:
    """A paused canary is Suspended, an aborted one Degraded, each with where it stands."""
    services = tuple(
        dataclasses.replace(s, verdict=Verdict(states[s.name].health, states[s.name].reason))
        if s.name in states and states[s.name].health is not Health.HEALTHY
        else s
        for s in status.services
    )
    return dataclasses.replace(status, services=services)


def _merged(first: ApplyResult, then: ApplyResult) -> ApplyResult:
    """One result for two applies of overlapping sets (what the first did counts once)."""
    done = set(first.created + first.changed + first.reverted)
    return ApplyResult(
        created=first.created + then.created,
        changed=first.changed + [k for k in then.changed if k not in done],
        unchanged=[k for k in then.unchanged if k not in done],
        reverted=first.reverted + then.reverted,
        drifted=first.drifted + then.drifted,
        left=first.left + then.left,
        pruned=then.pruned,
        writes=first.writes + then.writes,
    )


def with_deadlines(objects: list[Obj], desired: Desired) -> list[Obj]:
    """Each Deployment gets its service's `rollout.deadline` as `progressDeadlineSeconds`,
    so the Deployment controller itself reports a release that cannot finish in time."""
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        svc = desired.service(obj["metadata"]["labels"].get("ondeck.dev/service", ""))
        if svc is not None:
            deadline = max(1, math.ceil(svc.spec.rollout.deadline))
            obj["spec"]["progressDeadlineSeconds"] = deadline
    return objects


def _frozen(values: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((values or {}).items()))


def _serving_color(service: Obj | None) -> str | None:
    if service is None:
        return None
    color = (service.get("spec", {}).get("selector") or {}).get(COLOR)
    return str(color) if color else None


def _switched_at(service: Obj | None) -> float:
    annotations = ((service or {}).get("metadata", {}).get("annotations")) or {}
    try:
        return float(annotations.get(SWITCHED, 0))
    except ValueError:
        return 0.0


def _carry_switch_time(objects: list[Obj], services: Mapping[str, Obj | None]) -> None:
    """Keep the live switch time on a blue/green Service, so re-applying it writes nothing."""
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Service" and COLOR in obj["spec"]["selector"]:
            when = _switched_at(services.get(name))
            if when:
                obj["metadata"].setdefault("annotations", {})[SWITCHED] = str(int(when))


def _deployment_of(objects: list[Obj]) -> dict[str, Obj]:
    """The Deployments of `objects` by service name."""
    return {
        o["metadata"]["labels"]["ondeck.dev/service"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }


def _targets(services: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    if isinstance(services, Mapping):
        return dict(services)
    return {name: name for name in services}


def _labels(obj: Obj) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _settled(deploy: Obj) -> bool:
    return service_health(deploy, [])[0].health is Health.HEALTHY


def _operation(live: Mapping[str, Any], manager: str) -> tuple[str, str]:
    """How `manager` last wrote `live`: (Apply|Update, subresource)."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == manager:
            return entry.get("operation", ""), entry.get("subresource", "")
    return "", ""
