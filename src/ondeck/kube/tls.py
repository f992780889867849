"""`tls:` as the TLS section of each Ingress: cert-manager for ACME, Secrets for your own.

Pure. Called by the renderer (kube/render.py) for each service with routes,
and by the Kubernetes runtime (runtime/kubernetes.py) for the objects it
applies besides the manifests. A host covered by a certificate you bring
reads its key pair from a TLS Secret named after that certificate's hosts
(its files are on your host, never in a manifest: `ondeck up` creates the
Secret from them at apply time, `ondeck render` users create it by hand);
other hosts get a certificate from ACME through cert-manager
(`cert-manager.io/cluster-issuer: APP-acme`, a ClusterIssuer made from the
spec's `acme`, which `ondeck up` applies). What only an Ingress controller
decides is said for ingress-nginx, or refused.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ondeck.errors import UserError
from ondeck.spec.model import Acme, OwnCertificate, Tls

ISSUER = "cert-manager.io/cluster-issuer"
REDIRECT = "nginx.ingress.kubernetes.io/ssl-redirect"
ISSUER_API = "cert-manager.io/v1"
CERTIFICATE = "ondeck.dev/certificate"  # sha256 of the chain: a new pair shows, the key never


def issuer_name(app: str) -> str:
    """The cert-manager ClusterIssuer the Ingresses of `app` name for ACME."""
    return f"{app}-acme"


def certificate_secret(cert: OwnCertificate) -> str:
    """The TLS Secret holding a certificate you bring, named by the hosts it serves."""
    digest = hashlib.sha256(",".join(sorted(cert.hosts)).encode()).hexdigest()
    return f"tls-{digest[:10]}"


def covers(pattern: str, host: str) -> bool:
    """A certificate's host name matches `host` (a wildcard: exactly one label)."""
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def ingress_tls(
    tls: Tls | None, app: str, service: str, hosts: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The Ingress's `spec.tls` entries and annotations for the `hosts` of its rules."""
    if tls is None or not hosts:
        return [], {}
    where = f"tls (service {service!r} on Kubernetes)"
    if tls.hsts is not None:
        raise UserError(
            f"{where}: hsts is set by the Ingress controller, not by an Ingress (ingress-nginx: "
            "`hsts` in its ConfigMap); remove tls.hsts from the environment you render"
        )
    own: dict[int, list[str]] = {}
    rest: list[str] = []
    for host in hosts:
        index = next(
            (i for i, c in enumerate(tls.certificates) if any(covers(p, host) for p in c.hosts)),
            None,
        )
        if index is None:
            rest.append(host)
        else:
            own.setdefault(index, []).append(host)
    entries: list[dict[str, Any]] = [
        {"hosts": sorted(names), "secretName": certificate_secret(tls.certificates[i])}
        for i, names in sorted(own.items())
    ]
    annotations: dict[str, str] = {}
    if rest and tls.acme is not None:
        if own:
            raise UserError(
                f"{where}: its hosts mix certificates you bring with ACME, and cert-manager "
                "would take over every TLS Secret of the Ingress; give this service's hosts "
                "one or the other"
            )
        entries.append({"hosts": sorted(rest), "secretName": f"{service}-tls"})
        annotations[ISSUER] = issuer_name(app)
    if entries:
        annotations[REDIRECT] = "true" if tls.redirect else "false"
    return entries, annotations


def issuer(app: str, acme: Acme, labels: Mapping[str, str], ca_pem: bytes | None) -> dict[str, Any]:
    """The cert-manager ClusterIssuer `APP-acme` for `acme` (HTTP-01 through the Ingress).

    Cluster-wide, so shared by the app's environments: `labels` name the app, not one
    environment. `ca_pem` is the content of `acme.ca_bundle` (a private CA's HTTPS).
    """
    spec: dict[str, Any] = {
        "server": acme.directory,
        "privateKeySecretRef": {"name": f"{issuer_name(app)}-account"},
        "solvers": [{"http01": {"ingress": {}}}],
    }
    if acme.email is not None:
        spec["email"] = acme.email
    if ca_pem is not None:
        spec["caBundle"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": ISSUER_API,
        "kind": "ClusterIssuer",
        "metadata": {"name": issuer_name(app), "labels": dict(labels)},
        "spec": {"acme": spec},
    }


def secret_names(ingresses: Sequence[Mapping[str, Any]]) -> set[str]:
    """The TLS Secrets the `ingresses` read (`spec.tls[].secretName`)."""
    return {
        str(entry["secretName"])
        for ingress in ingresses
        for entry in ingress.get("spec", {}).get("tls", [])
        if entry.get("secretName")
    }


def certificate_object(
    cert: OwnCertificate,
    namespace: str,
    labels: Mapping[str, str],
    chain_pem: bytes,
    key_pem: bytes,
) -> dict[str, Any]:
    """The TLS Secret of a certificate you bring: applied by the runtime, never printed.

    Its `ondeck.dev/certificate` annotation (the chain's sha256, public data) stands for
    its content wherever objects are compared or shown; the key is only in `data`.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": certificate_secret(cert),
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {CERTIFICATE: hashlib.sha256(chain_pem).hexdigest()},
        },
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(chain_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }
