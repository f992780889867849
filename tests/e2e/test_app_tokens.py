"""Tokens scoped to apps, against a real `ondeck up` and its API.

A token made with `--app blog` may not act on the environments of app `shop`
(403 naming both apps), sees none of them in a read, and may not write shop's
secrets; a `--app shop` token may. The controller here runs one app: the
host file's many apps reach the API the same way, through each environment's app.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo

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
