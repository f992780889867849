"""Tokens scoped to apps, against a real `ondeck up` and its API.

A token made with `--app blog` may not act on the environments of app `shop`
(403 naming both apps), sees none of them in a read, and may not write shop's
secrets; a `--app shop` token may. The controller here runs one app: the
host file's many apps reach the API the same way, through each environment's app.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1")


def test_a_token_for_another_app_gets_403_and_sees_nothing(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    first = repo.commit("shop", SPEC)
    od = ondeck(repo.path)
    od.wait_synced(first)
    shop = od.cli("token", "create", "shop-ci", "--scope", "deploy", "--app", "shop").stdout
    blog = od.cli("token", "create", "blog-ci", "--scope", "deploy", "--app", "blog").stdout
    url = json.loads((od.state_dir / "api.json").read_text())["url"]

    def call(method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.strip()}"}
        return httpx.request(method, url + path, headers=headers, timeout=60, **kw)

    refused = call("POST", "/api/v1/sync", blog, json={"env": "default"})
    assert refused.status_code == 403
    assert "limited to app blog" in refused.json()["detail"]
    assert "app shop" in refused.json()["detail"]
    assert call("POST", "/api/v1/sync", blog, json={}).status_code == 403
    assert call("POST", "/api/v1/rollout/web/abort", blog).status_code == 403
    assert call("GET", "/api/v1/status", blog).json()["environments"] == []
    assert call("GET", "/api/v1/history", blog, params={"env": "default"}).status_code == 403
    secret = {"value": "s3cret-value", "app": "shop"}
    assert call("PUT", "/api/v1/secrets/API_KEY", blog, json=secret).status_code == 403
    everywhere = call("PUT", "/api/v1/secrets/API_KEY", shop, json={"value": "x"})
    assert everywhere.status_code == 403 and "every app" in everywhere.json()["detail"]

    assert call("POST", "/api/v1/sync", shop, json={"env": "default"}).status_code == 200
    seen = call("GET", "/api/v1/status", shop).json()["environments"]
    assert [e["name"] for e in seen] == ["default"]
    saved = call("PUT", "/api/v1/secrets/API_KEY", shop, json=secret)
    assert saved.status_code == 200 and saved.json()["app"] == "shop"
    listed = call("GET", "/api/v1/secrets", blog).json()["secrets"]
    assert listed == []  # shop's secret name is not blog's business

    rows = json.loads(od.cli("token", "list", "--json").stdout)
    assert {r["name"]: r["apps"] for r in rows} == {"blog-ci": ["blog"], "shop-ci": ["shop"]}


HOST_SPEC = """\
app: {app}
services:
  web:
    command: ["python3", "web.py"]
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
"""


def test_under_a_host_file_the_hosts_tokens_are_limited_per_app(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    repos = {app: Repo(tmp_path / "git" / app) for app in ("shop", "blog")}
    for app, repo in repos.items():
        repo.commit(app, HOST_SPEC.format(app=app))
    host_file = tmp_path / "ondeck.host.yaml"
    host_file.write_text(
        "apps:\n" + "".join(f"  {app}: {{repo: {r.path}}}\n" for app, r in repos.items())
    )
    od = ondeck("", "--host-file", str(host_file))

    def synced() -> bool:
        envs = od.status()["environments"]
        return sorted((e["app"], e["sync"], e["health"]) for e in envs) == [
            ("blog", "Synced", "Healthy"),
            ("shop", "Synced", "Healthy"),
        ]

    wait_for(synced, "both apps Synced and Healthy", timeout=90)
    blog = od.cli("token", "create", "blog-ci", "--scope", "deploy", "--app", "blog").stdout
    every = od.cli("token", "create", "ops", "--scope", "deploy").stdout
    store = od.state_dir / "tokens.db"  # the host's tokens, not one app's
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    url = json.loads((od.state_dir / "api.json").read_text())["url"]

    def call(method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.strip()}"}
        return httpx.request(method, url + path, headers=headers, timeout=60, **kw)

    refused = call("POST", "/apps/shop/api/v1/sync", blog, json={})
    assert refused.status_code == 403, refused.text
    assert "limited to app blog" in refused.json()["detail"]
    assert "app shop" in refused.json()["detail"]
    assert call("GET", "/apps/shop/api/v1/status", blog).json()["environments"] == []
    assert call("PUT", "/apps/shop/api/v1/secrets/K", blog, json={"value": "v"}).status_code == 403

    assert call("POST", "/apps/blog/api/v1/sync", blog, json={}).status_code == 200
    own = call("PUT", "/apps/blog/api/v1/secrets/K", blog, json={"value": "v"})
    assert own.status_code == 200, own.text
    assert [
        e["app"] for e in call("GET", "/apps/blog/api/v1/status", blog).json()["environments"]
    ] == ["blog"]
    assert call("POST", "/apps/shop/api/v1/sync", every, json={}).status_code == 200

    # the host's own calls: a read shows the token's apps, a sync of every app needs all
    seen = call("GET", "/api/v1/status", blog).json()
    assert [e["app"] for e in seen["environments"]] == ["blog"]
    assert [a["name"] for a in seen["apps"]] == ["blog"]
    everything = call("POST", "/api/v1/sync", blog, json={})
    assert everything.status_code == 403 and "--app" in everything.json()["detail"]
    assert call("POST", "/api/v1/sync", every, json={}).status_code == 200
    assert call("POST", "/api/v1/down", every, json={}).status_code == 403  # the admin's
    assert call("GET", "/api/v1/status", "odk_wrong").status_code == 401
