"""The git write path end to end: CI commits, a webhook wakes ondeck, rollback is a revert.

A bare repository plays the hosted remote; a clone plays the developer's or
CI's checkout. Polling is set to an hour, so only the webhook can trigger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SIMPLE_SPEC, Ondeck, git, wait_for

SECRET = "s3cret-for-tests"
SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1") + (
    'environments:\n  staging: {services: {web: {version: "1.0.0"}}}\n'
    '  production: {services: {web: {version: "1.0.0"}}}\n'
)


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(bare remote, a developer clone with the first commit pushed)."""
    bare, clone = tmp_path / "remote.git", tmp_path / "clone"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    (clone / "ondeck.yaml").write_text(SPEC)
    (clone / "web.py").write_text((Path(__file__).parents[1] / "fixtures/apps/web.py").read_text())
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "first release")
    git(clone, "push", "-q", "origin", "main")
    return bare, clone


def _api(od: Ondeck) -> tuple[str, dict[str, str]]:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    return url, {"Authorization": f"Bearer {(od.state_dir / 'token').read_text().strip()}"}


def _github_push(od: Ondeck, bare: Path, sha: str, delivery: str | None = None) -> httpx.Response:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {"clone_url": f"file://{bare}", "default_branch": "main"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    url, _ = _api(od)
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or sha,
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }
    return httpx.post(f"{url}/hooks/github", content=body, headers=headers, timeout=10)


def _version(od: Ondeck, env: str) -> str | None:
    web = od.service("web", env=env)
    return None if web is None else web["version"]


def test_set_version_push_webhook_live_then_rollback(
    remote: tuple[Path, Path], ondeck: Callable[..., Ondeck]
) -> None:
    bare, clone = remote
    od = ondeck(bare, "--env", "staging", "--poll", "1h", "--webhook-secret", SECRET)
    first = git(clone, "rev-parse", "HEAD")
    od.wait_synced(first, env="staging")

    od.cli(
        "set-version", "web=1.1.0", "--env", "staging", "--push", "--no-sync", "--repo", str(clone)
    )
    diff = git(clone, "show", "--format=%s", "--stat", "HEAD")
    assert diff.startswith("deploy(web): 1.0.0 -> 1.1.0 [staging]")
    assert "1 insertion(+), 1 deletion(-)" in diff  # a one-line change
    pushed = git(clone, "rev-parse", "HEAD")
    assert git(bare, "rev-parse", "main") == pushed

    accepted = _github_push(od, bare, pushed)  # the provider's signed push event
    assert accepted.status_code == 202 and accepted.json() == {"accepted": True}
    forged = httpx.post(
        f"{_api(od)[0]}/hooks/github",
        content=b"{}",
        timeout=10,
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"},
    )
    assert forged.status_code == 401  # a wrong signature does nothing

    started = time.monotonic()
    env = od.wait_synced(pushed, env="staging")
    assert _version(od, "staging") == "1.1.0"
    assert time.monotonic() - started < 60  # bounded wait; the figure lives in bench/
    history = json.loads(od.cli("history", "--json", "--env", "staging").stdout)["syncs"]
    assert history[0]["trigger"] == "webhook" and history[0]["revision"] == pushed
    assert any("version 1.0.0 -> 1.1.0" in c for c in history[0]["changes"])
    assert env["live_commit"]["message"].startswith("deploy(web)")

    od.cli("rollback", "--env", "staging", "--push", "--no-sync", "--repo", str(clone))
    reverted = git(clone, "rev-parse", "HEAD")
    assert git(clone, "log", "-1", "--format=%s").startswith("rollback")
    _github_push(od, bare, reverted)
    od.wait_synced(reverted, env="staging")
    assert _version(od, "staging") == "1.0.0"
    notes = git(bare, "log", "--notes=ondeck", "--format=%H %N", "-3")
    assert f"{reverted} ondeck: live in staging" in notes


def test_scoped_token_deploys_staging_but_not_production(
    remote: tuple[Path, Path], ondeck: Callable[..., Ondeck]
) -> None:
    bare, clone = remote
    od = ondeck(bare, "--env", "staging", "--env", "production")
    first = git(clone, "rev-parse", "HEAD")
    od.wait_synced(first, env="staging")
    od.wait_synced(first, env="production")
    token = od.cli(
        "token", "create", "ci-staging", "--scope", "deploy", "--env", "staging"
    ).stdout.strip()
    reader = od.cli("token", "create", "dashboard", "--scope", "read").stdout.strip()
    url, _ = _api(od)

    def call(method: str, path: str, tok: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, url + path, headers={"Authorization": f"Bearer {tok}"}, timeout=60, **kw
        )

    seen = call("GET", "/api/v1/status", token).json()["environments"]
    assert [e["name"] for e in seen] == ["staging"]
    assert call("POST", "/api/v1/sync", token, json={"env": "production"}).status_code == 403
    assert (
        call(
            "POST",
            "/api/v1/deploy",
            token,
            json={"service": "web", "env": "production", "version": "9.9.9"},
        ).status_code
        == 403
    )
    assert call("POST", "/api/v1/sync", reader, json={"env": "staging"}).status_code == 403
    assert len(call("GET", "/api/v1/status", reader).json()["environments"]) == 2

    answer = call(
        "POST",
        "/api/v1/deploy",
        token,
        json={"service": "web", "env": "staging", "version": "2.0.0"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == "deploy(web): 1.0.0 -> 2.0.0 [staging]"
    wait_for(
        lambda: _version(od, "staging") == "2.0.0" and od.env_status("staging")["sync"] == "Synced",
        "staging to run 2.0.0",
    )
    assert _version(od, "production") == "1.0.0"
    assert "ci-staging (ondeck token)" in git(bare, "log", "-1", "--format=%an")

    # The code pin too (source.ref), one of version, image or ref per call.
    staging = {"service": "web", "env": "staging"}
    both = call("POST", "/api/v1/deploy", token, json={**staging, "version": "3", "ref": "main"})
    assert both.status_code == 422
    pinned = call("POST", "/api/v1/deploy", token, json={**staging, "ref": first})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["message"] == f"deploy(web): unset -> {first} [staging]"
    wait_for(
        lambda: (od.service("web", env="staging") or {}).get("code_ref") == first,
        "staging to pin its code to the first commit",
    )

    od.cli("token", "revoke", "ci-staging")
    assert call("GET", "/api/v1/status", token).status_code == 401
    listing = od.cli("token", "list", "--json").stdout
    assert token not in listing and "dashboard" in listing


def _fetches(od: Ondeck) -> float:
    url, _ = _api(od)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("ondeck_fetches_total "))
    return float(line.split()[1])


def test_a_burst_of_webhooks_is_one_fetch_and_the_last_commit_wins(
    remote: tuple[Path, Path], ondeck: Callable[..., Ondeck]
) -> None:
    bare, clone = remote
    od = ondeck(bare, "--env", "staging", "--poll", "1h", "--webhook-secret", SECRET)
    od.wait_synced(git(clone, "rev-parse", "HEAD"), env="staging")
    before = _fetches(od)
    shas = []
    for n in range(3):  # three pushes in a row, each announced, faster than a sync
        od.cli(
            "set-version",
            f"web=2.{n}.0",
            "--env",
            "staging",
            "--push",
            "--no-sync",
            "--repo",
            str(clone),
        )
        shas.append(git(clone, "rev-parse", "HEAD"))
    threads = [
        threading.Thread(target=_github_push, args=(od, bare, sha, f"{sha}-{n}"))
        for n, sha in enumerate(shas * 5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    od.wait_synced(shas[-1], env="staging")
    assert _version(od, "staging") == "2.2.0"  # the last commit is what runs
    # 15 distinct deliveries (no replay): coalesced into fewer fetches than deliveries
    assert _fetches(od) - before < len(threads)
