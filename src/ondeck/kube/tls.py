"""`tls:` as the TLS section of each Ingress: cert-manager for ACME, Secrets for your own.

Pure. Called by the renderer (kube/render.py) for each service with routes.
A host covered by a certificate you bring reads its key pair from a TLS
Secret named after that certificate's hosts (you create it: its files are on
your host, never in a manifest); other hosts get a certificate from ACME
through cert-manager (`cert-manager.io/cluster-issuer: APP-acme`, a
ClusterIssuer you create from the spec's `acme`). What only an Ingress
controller decides is said for ingress-nginx, or refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ondeck.errors import UserError
from ondeck.spec.model import OwnCertificate, Tls

ISSUER = "cert-manager.io/cluster-issuer"
REDIRECT = "nginx.ingress.kubernetes.io/ssl-redirect"


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
