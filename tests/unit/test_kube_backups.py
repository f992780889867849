"""Backups of an environment on Kubernetes: which deploys are gated, which pods a pause waits for."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ondeck.backup.envbackups import EnvBackups, changes_a_service
from ondeck.backup.service import Action
from ondeck.errors import BackupFailure
from ondeck.runtime.kube_pause import serving
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render

SPEC = """\
app: shop
runtime: kubernetes
services:
  web:
    image: registry.example/shop:1
    port: 8080
    replicas: 2
    env: {LOG_LEVEL: info}
    health: {http: /healthz}
    rollout: {max_surge: 1}
backups:
  db: {postgres: {url_env: DATABASE_URL}}
"""


def desired(text: str = SPEC, revision: str = "a" * 40) -> Desired:
    return render(render_spec(parse(text), None), "default", revision, revision)


def test_a_commit_that_changes_no_deployment_takes_no_backup() -> None:
    # another revision, same pods: nothing to protect
    assert not changes_a_service(desired(), desired(revision="b" * 40))
    # the rollout's surge changes the Deployment's strategy, not its pods
    assert not changes_a_service(desired(), desired(SPEC.replace("max_surge: 1", "max_surge: 2")))


def test_what_replaces_or_adds_pods_is_gated() -> None:
    before = desired()
    for changed in (
        SPEC.replace("shop:1", "shop:2"),  # image
        SPEC.replace("replicas: 2", "replicas: 3"),  # scale
        SPEC.replace("LOG_LEVEL: info", "LOG_LEVEL: debug"),  # a ConfigMap value (config hash)
        SPEC.replace("/healthz", "/ready"),  # probes: the host fingerprint does not see them
    ):
        assert changes_a_service(before, desired(changed)), changed


def test_the_gate_names_the_before_deploy_backups_of_what_runs(tmp_path: Path) -> None:
    backups = EnvBackups(tmp_path, "default", None, lambda _app, _env: {})
    assert backups.gated(desired(), desired(SPEC.replace("shop:1", "shop:2"))) == ["db"]
    assert backups.gated(None, desired()) == []  # a first deploy: nothing ran yet
    moved = SPEC.replace("runtime: kubernetes", "runtime: container")
    assert backups.gated(desired(moved), desired()) == ["db"]  # every instance moves


def test_a_pause_waits_for_the_pods_of_deployments_only() -> None:
    def pod(name: str, owner: str | None) -> dict[str, Any]:
        refs = [{"kind": owner, "name": "x"}] if owner else []
        return {"metadata": {"name": name, "ownerReferences": refs}}

    pods = [pod("web-1", "ReplicaSet"), pod("migrate-1", "Job"), pod("bare", None)]
    assert serving(pods) == ["web-1"]
    assert serving([]) == []


def test_a_pause_that_fails_midway_is_undone_and_nothing_is_restored(tmp_path: Path) -> None:
    # a real SQLite backup; the pause is the environment's callable, failing once it began
    host = SPEC.replace("runtime: kubernetes", "runtime: process").replace(
        "    image: registry.example/shop:1\n", '    command: ["python3", "web.py"]\n'
    )
    host = host.replace("postgres: {url_env: DATABASE_URL}", "sqlite: shop.db")
    host = host.replace("port: 8080", "port: true")
    data = tmp_path / "data" / "shop" / "default"
    data.mkdir(parents=True)
    with sqlite3.connect(data / "shop.db") as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
        db.execute("INSERT INTO orders VALUES (1)")
    db.close()
    backups = EnvBackups(tmp_path, "default", None, lambda _app, _env: {})
    backups.follow(desired(host))
    assert backups.service is not None
    backups.service.submit("db", Action.RUN).result(timeout=60)
    calls: list[str] = []

    async def pause() -> None:
        calls.append("pause")
        raise BackupFailure("the pods of shop did not stop within 120s")

    async def resume() -> None:
        calls.append("resume")

    try:
        with pytest.raises(BackupFailure, match="did not stop"):
            asyncio.run(backups.restore("db", None, False, pause, resume))
    finally:
        backups.close()
    assert calls == ["pause", "resume"]  # what the pause did is undone
