"""`render(spec, env, revision, code_id) -> Desired`: what should run, as data.

Called by the controller once per new revision; the result is compared with
the live state by `diff` and `plan`. Each service gets a fingerprint naming
exactly what its instances run, so a change that does not touch an instance
(replicas, routes, rollout settings) never restarts it, and a release key
naming what its build produces, so services and environments whose code,
build and build environment are equal share one release.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ondeck.spec.model import Backup, Job, NotifyTarget, Service, Spec, Tls
from ondeck.spec.template import build_env_spec, names, notify_secrets, secrets_used

DEFAULT_ENV = "default"


@dataclass(frozen=True, repr=False)
class SecretEnv:
    """Secret values by name, with their keyed fingerprints; its repr names them, nothing more.

    Carried by a desired service for the secrets its `env` refers to, so the runtime can
    build an instance's environment; everything shown to people uses `prints` only.
    """

    values: Mapping[str, str] = field(default_factory=dict)
    prints: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SecretEnv({sorted(self.values)})"

    def only(self, names: Iterable[str]) -> SecretEnv:
        wanted = set(names)
        return SecretEnv(
            MappingProxyType({n: v for n, v in self.values.items() if n in wanted}),
            MappingProxyType({n: p for n, p in self.prints.items() if n in wanted}),
        )

    @property
    def identity(self) -> str:
        """A stable id of these values (their fingerprints): part of a service's fingerprint."""
        return ",".join(f"{n}={self.prints[n]}" for n in sorted(self.prints))


NO_SECRETS = SecretEnv()


@dataclass(frozen=True)
class Code:
    """A service's pinned code (`source:`), resolved: the commit its release is exported from."""

    ref: str  # as written: a branch, tag or sha
    sha: str  # the full commit sha it resolved to
    repo: str | None = None  # a separate app repository; None: the deploy repository
    path: str = ""  # directory exported, inside that repository
    follows: bool = False  # a branch: resolved again at every fetch
    tree: str = ""  # a content id of the exported directory (shares equal releases)


@dataclass(frozen=True)
class DesiredService:
    name: str
    spec: Service
    fingerprint: str
    secrets: SecretEnv = field(default=NO_SECRETS, compare=False)  # only those its env uses
    code: Code | None = None  # pinned by `source:`; None: the spec's own commit
    release: str = ""  # the release key: equal for equal code, build and build environment

    @property
    def replicas(self) -> int:
        return self.spec.replicas


@dataclass(frozen=True)
class DesiredJob:
    """A scheduled job, with the secrets its own `env` refers to."""

    name: str
    spec: Job
    secrets: SecretEnv = field(default=NO_SECRETS, compare=False)


@dataclass(frozen=True)
class Desired:
    app: str
    env: str
    revision: str
    runtime: str
    services: tuple[DesiredService, ...]
    signed_by: tuple[str, ...] = ()  # keys allowed to sign what this environment deploys
    tls: Tls | None = None  # HTTPS for the hosts this environment routes
    backups: tuple[tuple[str, Backup], ...] = ()  # databases backed up, by name
    jobs: tuple[DesiredJob, ...] = ()  # run on a schedule in a service's release
    notify: tuple[NotifyTarget, ...] = ()  # where events go
    notify_secrets: SecretEnv = field(default=NO_SECRETS, compare=False)  # URLs, HMAC keys

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host named in a route of this environment, in order, once."""
        named = (r.host for s in self.services for r in s.spec.routes if r.host)
        return tuple(dict.fromkeys(named))

    def service(self, name: str) -> DesiredService | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.services)

    def code_revision(self, svc: DesiredService) -> str:
        """The commit `svc`'s code comes from: its pin, else the spec's own commit."""
        return svc.code.sha if svc.code is not None else self.revision


def _pinned_id(pin: Code) -> str:
    return f"{pin.repo or ''}@{pin.sha}:{pin.path}"


def fingerprint(
    service: Service, code_id: str, secrets_id: str = "", app: str = "", runtime: str = "process"
) -> str:
    """A short id of everything that shapes a running instance of `service`.

    The image and container keys shape a container or a pod, never a process: a process
    environment carries them for `ondeck render --target kubernetes` only, so changing
    them restarts nothing there (they count as their defaults, so a fingerprint is the same
    as when they were counted)."""
    runs_images = runtime != "process"
    payload: dict[str, Any] = {
        "app": app,
        "runtime": runtime,
        "code": code_id,
        "secrets": secrets_id,
        "command": service.command,
        "build": service.build,
        "image": service.image if runs_images else None,
        "version": service.version,
        "env": dict(sorted(service.env.items())),
        "port": service.port,
        "container": [service.pull, service.volumes, service.memory, service.cpus]
        if runs_images
        else ["missing", {}, None, None],
    }
    if service.release:  # only when set: adding the key must not roll services without one
        payload["release"] = service.release
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def release_key(service: Service, code_id: str, app: str, secrets: SecretEnv) -> str:
    """The id of the release a service runs: its code, build argv and build environment.

    Secrets count by their keyed fingerprints, never their values.
    """
    env = build_env_spec(service.env)
    used = secrets.only(r for v in env.values() for r in names(v))
    payload = {
        "code": code_id,
        "build": service.build,
        "env": dict(sorted(env.items())),
        "secrets": used.identity,
        "builtins": {"ONDECK_APP": app, "ONDECK_VERSION": service.version or ""},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def render(
    spec: Spec,
    env: str,
    revision: str,
    code_id: str,
    secrets_id: str = "",
    secrets: SecretEnv = NO_SECRETS,
    codes: Mapping[str, Code] | None = None,
) -> Desired:
    """The desired state of one environment at one revision.

    Each service carries (and is fingerprinted by) only the secrets its `env` refers to,
    so a changed secret rolls exactly the services that use it. `codes` holds the
    resolved `source:` of the services that pin their code (their sha is fingerprinted).
    """
    # An image is the whole artifact of a container: the repo's files do not shape it.
    process = spec.runtime.value == "process"
    services = []
    for name, service in sorted(spec.services.items()):
        pin = (codes or {}).get(name) if process else None
        code = "" if not process else code_id if pin is None else _pinned_id(pin)
        used = secrets.only(secrets_used(service.env, secrets.values))
        ident = ";".join(x for x in (secrets_id, used.identity) if x)
        print_ = fingerprint(service, code, ident, spec.app, spec.runtime.value)
        content = code_id if pin is None else pin.tree or _pinned_id(pin)
        release = release_key(service, content, spec.app, secrets) if process else ""
        services.append(DesiredService(name, service, print_, used, pin, release))
    signed_by = tuple(spec.protect.signed_by) if spec.protect else ()
    backups = tuple(sorted(spec.backups.items()))
    jobs = tuple(
        DesiredJob(name, job, secrets.only(secrets_used(job.env, secrets.values)))
        for name, job in sorted(spec.jobs.items())
    )
    desired = Desired(
        spec.app,
        env,
        revision,
        spec.runtime.value,
        tuple(services),
        signed_by,
        backups=backups,
        jobs=jobs,
        notify=tuple(spec.notify),
        notify_secrets=secrets.only(notify_secrets(spec.notify)),
    )
    return dataclasses.replace(desired, tls=spec.tls) if spec.tls else desired
