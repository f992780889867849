"""`tls:` under `ondeck up` with runtime kubernetes, against a real control plane.

Real etcd, kube-apiserver, controller manager and scheduler (tests/kubeplane.py;
KWOK plays the kubelet). A certificate you bring becomes the TLS Secret its
Ingress reads, made by the runtime from the files on this host; `tls.acme`
becomes cert-manager's ClusterIssuer. cert-manager itself cannot run here (no
kubelet runs its pods, and it would need an image registry and a reachable
ACME server), so the ACME test installs only its ClusterIssuer
CustomResourceDefinition, a minimal one, and checks what the API server stores.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes.client.exceptions import ApiException

from kubeplane import ControlPlane
from ondeck.errors import UserError
from ondeck.kube.render import namespace_of
from ondeck.kube.tls import certificate_secret
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render
from ondeck.state.health import Health

pytestmark = pytest.mark.timeout(600)
T = TypeVar("T")

OWN = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1
    port: 8080
    routes: [{{host: shop.example}}]
tls:
  certificates: [{{hosts: [shop.example], cert: {cert}, key: {key}}}]
"""

ACME = """\
app: {app}
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1
    port: 8080
    routes: [{{host: shop.example}}]
tls:
  acme: {{email: ops@shop.example, directory: "https://acme.shop.example/directory"}}
"""

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: clusterissuers.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Cluster
  names: {kind: ClusterIssuer, plural: clusterissuers, singular: clusterissuer, listKind: ClusterIssuerList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def _until(what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", "--request-timeout=30s", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


@pytest.fixture
def runtime(control_plane: ControlPlane) -> Iterator[KubernetesRuntime]:
    api = connect(Cluster(control_plane.kubeconfig))
    yield KubernetesRuntime(api)
    api.close()  # type: ignore[no-untyped-call]


def _desired(text: str) -> Desired:
    return render(render_spec(parse(text), None), "default", "", "")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "shop.crt", tmp_path / "shop.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=shop.example"),
            *("-addext", "subjectAltName=DNS:shop.example"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _namespace_exists(runtime: KubernetesRuntime, ns: str) -> bool:
    return runtime.get({"kind": "Namespace", "metadata": {"name": ns}}) is not None


def test_a_certificate_you_bring_becomes_the_tls_secret_its_ingress_reads(
    runtime: KubernetesRuntime, app: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = _self_signed(tmp_path)
    desired = _desired(OWN.format(app=app, cert=cert, key=key))
    name = certificate_secret(desired.tls.certificates[0]) if desired.tls else ""
    caplog.set_level(logging.DEBUG)
    outcome = runtime.sync(desired, "r1", timeout=120)
    assert outcome.status.health is Health.HEALTHY, outcome.status.reasons()
    ns = outcome.namespace
    assert f"Secret/{ns}/{name}" in outcome.result.created

    secret = runtime.get({"kind": "Secret", "metadata": {"name": name, "namespace": ns}})
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.crt"]) == cert.read_bytes()
    assert base64.b64decode(secret["data"]["tls.key"]) == key.read_bytes()
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ondeck"
    ingress = runtime.get({"kind": "Ingress", "metadata": {"name": "web", "namespace": ns}})
    assert ingress is not None
    assert ingress["spec"]["tls"] == [{"hosts": ["shop.example"], "secretName": name}]

    # the key is in the Secret's data only: not in what the sync reports, nor in logs
    pem = key.read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    shown = json.dumps(dataclasses.asdict(outcome), default=str) + repr(outcome) + caplog.text
    for text in (body, base64.b64encode(key.read_bytes()).decode(), body[:40]):
        assert text not in shown

    # nothing changed: nothing written; then a new pair is applied, and the
    # certificate leaving the spec prunes its Secret
    again = runtime.sync(desired, "r1", timeout=60)
    assert again.result.writes == 0 and f"Secret/{ns}/{name}" in again.result.unchanged
    _self_signed(tmp_path)  # a new key and certificate in the same files
    renewed = runtime.sync(desired, "r2", timeout=120)
    assert f"Secret/{ns}/{name}" in renewed.result.changed
    live = runtime.get({"kind": "Secret", "metadata": {"name": name, "namespace": ns}})
    assert live is not None and base64.b64decode(live["data"]["tls.key"]) == key.read_bytes()
    plain = OWN.format(app=app, cert=cert, key=key).split("tls:")[0]
    gone = runtime.sync(_desired(plain), "r3", timeout=120)
    assert f"Secret/{ns}/{name}" in gone.result.pruned
    assert runtime.get({"kind": "Secret", "metadata": {"name": name, "namespace": ns}}) is None


def test_a_missing_key_file_fails_the_sync_naming_it_and_applies_nothing(
    runtime: KubernetesRuntime, app: str, tmp_path: Path
) -> None:
    cert, _ = _self_signed(tmp_path)
    missing = tmp_path / "nowhere.key"
    desired = _desired(OWN.format(app=app, cert=cert, key=missing))
    with pytest.raises(UserError) as failed:
        runtime.sync(desired, "r1", timeout=60)
    assert str(missing) in str(failed.value) and "tls.certificates[0].key" in str(failed.value)
    assert not _namespace_exists(runtime, namespace_of(app, "default"))


def test_acme_needs_cert_manager_and_then_applies_the_cluster_issuer(
    runtime: KubernetesRuntime, control_plane: ControlPlane, app: str
) -> None:
    desired = _desired(ACME.format(app=app))
    issuer = f"/apis/cert-manager.io/v1/clusterissuers/{app}-acme"
    installed = "clusterissuers.cert-manager.io" in _kubectl(control_plane, "get", "crd")
    assert not installed, "another test left cert-manager's CRD behind"
    with pytest.raises(UserError, match=r"install cert-manager .* or remove tls\.acme"):
        runtime.sync(desired, "r1", timeout=60)
    assert not _namespace_exists(runtime, namespace_of(app, "default"))

    _kubectl(control_plane, "apply", "-f", "-", stdin=CRD)
    try:
        _kubectl(
            control_plane,
            "wait",
            "--for=condition=Established",
            "crd/clusterissuers.cert-manager.io",
            "--timeout=60s",
        )

        def served() -> bool:
            try:
                runtime._request("GET", "/apis/cert-manager.io/v1")
            except ApiException:  # not yet in discovery
                return False
            return True

        _until("the ClusterIssuer kind to be served", served, timeout=60)
        outcome = runtime.sync(desired, "r1", timeout=120)
        assert outcome.status.health is Health.HEALTHY, outcome.status.reasons()
        assert f"ClusterIssuer/{app}-acme" in outcome.result.created
        stored: dict[str, Any] = runtime._request("GET", issuer)
        acme = stored["spec"]["acme"]
        assert acme["email"] == "ops@shop.example"
        assert acme["server"] == "https://acme.shop.example/directory"
        assert acme["privateKeySecretRef"] == {"name": f"{app}-acme-account"}
        assert acme["solvers"] == [{"http01": {"ingress": {}}}]
        ingress = runtime.get(
            {"kind": "Ingress", "metadata": {"name": "web", "namespace": outcome.namespace}}
        )
        assert ingress is not None
        annotations = ingress["metadata"]["annotations"]
        assert annotations["cert-manager.io/cluster-issuer"] == f"{app}-acme"
        again = runtime.sync(desired, "r1", timeout=60)
        assert f"ClusterIssuer/{app}-acme" in again.result.unchanged
        assert again.result.writes == 0
    finally:
        _kubectl(control_plane, "delete", "crd", "clusterissuers.cert-manager.io", "--wait=true")
