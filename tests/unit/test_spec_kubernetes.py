"""runtime kubernetes: what validates is what a cluster carries out; the rest is refused."""

from __future__ import annotations

import pytest

from ondeck.spec.load import parse, render_spec, validate

BASE = """\
app: shop
runtime: kubernetes
services:
  web:
    image: ghcr.io/acme/shop:1
    command: ["/bin/shop", "--port", "${PORT}"]
    version: "1.4.2"
    env: {LOG_LEVEL: info}
    port: 8080
    replicas: 2
    memory: 256MiB
    cpus: 0.5
    pull: always
    volumes: {uploads: /uploads}
    health: {http: /healthz, interval: 2s, timeout: 1s, failure_threshold: 3, start_period: 5s}
    restart: {policy: always}
    stop: {signal: TERM, grace: 20s}
    rollout: {strategy: rolling, max_surge: 1, max_unavailable: 0, deadline: 2m, keep_old: 30s}
    routes: [{host: shop.example, path: /}]
    release: ["/bin/shop", "migrate"]
    release_timeout: 5m
  admin:
    image: ghcr.io/acme/admin:1
    rollout: {strategy: blue-green}
protect: {signed_by: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0 admin"]}
notify: [{url: "json://127.0.0.1:9000/ondeck"}]
"""


def test_every_key_a_cluster_carries_out_validates() -> None:
    assert validate(BASE) == []
    assert render_spec(parse(BASE), None).runtime == "kubernetes"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("    build: [make]\n", "services.web.build"),
        ("    maintenance: {message: soon}\n", "services.web.maintenance"),
        ("    restart: {policy: on-failure}\n", "services.web.restart.policy"),
        ("    restart: {backoff_max: 10s}\n", "services.web.restart"),
        ("    stop: {signal: INT}\n", "services.web.stop.signal"),
        (
            "    rollout: {strategy: blue-green, analysis: {interval: 5s}}\n",
            "services.web.rollout.analysis",
        ),
        (
            "    rollout: {strategy: canary, match: {header: {X-Canary: always}}}\n",
            "services.web.rollout.match",
        ),
        ("    rollout: {drain: 5s}\n", "services.web.rollout.drain"),
    ],
)
def test_a_service_key_only_a_host_carries_out_is_refused(extra: str, key: str) -> None:
    spec = "app: shop\nruntime: kubernetes\nservices:\n  web:\n    image: shop:1\n" + extra
    [problem] = validate(spec)
    assert problem.message.startswith(f"{key} is not supported yet with runtime kubernetes")
    assert "runtime process or container" in problem.message
    # on a host, nothing is said of kubernetes
    on_host = validate(spec.replace("runtime: kubernetes", "runtime: container"))
    assert not any("kubernetes" in p.message for p in on_host)


def test_tls_validates_on_kubernetes_but_what_only_a_host_or_controller_does_is_refused() -> None:
    spec = "app: shop\nruntime: kubernetes\nservices:\n  web: {image: 'shop:1', port: 80}\n"
    own = "tls: {certificates: [{hosts: [a.example], cert: /c, key: /k}]}\n"
    assert validate(spec + own) == []  # the runtime makes the TLS Secret from the files
    assert validate(spec + "tls: {acme: {email: ops@shop.example}}\n") == []
    [hsts] = validate(spec + "tls: {acme: {}, hsts: 180d}\n")
    assert hsts.message.startswith("tls.hsts cannot be set with runtime kubernetes")
    assert "Ingress controller" in hsts.message
    [stored] = validate(spec + own.replace("key: /k", "key: 'secret:TLS_KEY'"))
    assert "tls.certificates[0]" in stored.message and "file paths" in stored.message
    # on a host, hsts and host secrets are fine
    host = "app: shop\nservices:\n  web: {command: [a], port: true}\n"
    assert validate(host + "tls: {acme: {}, hsts: 180d}\n") == []


def test_a_postgres_backup_validates_on_kubernetes_and_a_sqlite_one_is_refused_with_why() -> None:
    spec = "app: shop\nruntime: kubernetes\nservices:\n  web: {image: 'shop:1', port: 80}\n"
    assert validate(spec + "backups:\n  db: {postgres: {url_env: DATABASE_URL}}\n") == []
    [problem] = validate(spec + "backups:\n  files: {sqlite: data/shop.db}\n")
    message = problem.message
    assert message.startswith("backups.files.sqlite cannot be backed up with runtime kubernetes")
    assert "out of the controller's reach" in message  # why
    assert "PostgreSQL" in message and "cluster's tools" in message  # what to do instead
    # on a host, the same file backup is fine
    host = "app: shop\nservices:\n  web: {command: [a], port: true}\n"
    assert validate(host + "backups:\n  files: {sqlite: data/shop.db}\n") == []


def test_an_overlay_moving_one_environment_to_kubernetes_is_checked_there_only() -> None:
    spec = """\
app: shop
services:
  web: {command: [a], image: "shop:1", rollout: {drain: 5s}}
environments:
  staging: {}
  production: {runtime: kubernetes, services: {web: {rollout: {drain: 30s}}}}
"""
    assert render_spec(parse(spec), "staging").runtime == "process"
    [problem] = validate(spec)
    assert "production" in str(problem) and "rollout.drain" in problem.message


def test_a_release_task_is_refused_on_containers_only() -> None:
    spec = "app: shop\nruntime: container\nservices:\n  web: {image: 'a:1', release: [m]}\n"
    [problem] = validate(spec)
    assert "release tasks are not supported yet with the container runtime" in problem.message
    assert validate(spec.replace("runtime: container", "runtime: kubernetes")) == []


def test_a_canary_with_steps_validates_the_cluster_splits_it_by_replicas() -> None:
    steps = "[{weight: 25}, {pause: 30s}, {weight: 50}, {pause: manual}]"
    spec = (
        "app: shop\nruntime: kubernetes\nservices:\n  web:\n    image: shop:1\n"
        f"    replicas: 4\n    rollout: {{strategy: canary, steps: {steps}}}\n"
    )
    assert validate(spec) == []
    rollout = render_spec(parse(spec), None).services["web"].rollout
    assert rollout.strategy == "canary" and len(rollout.steps) == 4
