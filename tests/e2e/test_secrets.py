"""Secrets through a real `ondeck up`: the write-only API of the host store."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo

VALUE = "pw-7Qz4-known-to-the-test"


def _call(od: Ondeck, method: str, path: str, tok: str, **kw: Any) -> httpx.Response:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    headers = {"Authorization": f"Bearer {tok}"}
    return httpx.request(method, url + path, headers=headers, timeout=60, **kw)


def test_the_api_sets_secrets_write_only_within_the_tokens_scope(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.commit("first", SIMPLE_SPEC)
    od = ondeck(repo.path, "--env", "staging", "--env", "production")
    deploy = od.cli("token", "create", "ci", "--scope", "deploy", "--env", "staging").stdout.strip()
    reader = od.cli("token", "create", "dash", "--scope", "read").stdout.strip()

    body = {"value": VALUE, "env": "staging"}
    answer = _call(od, "PUT", "/api/v1/secrets/DB_PASSWORD", deploy, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["fingerprint"] and VALUE not in answer.text
    assert _call(od, "PUT", "/api/v1/secrets/DB_PASSWORD", reader, json=body).status_code == 403
    other = {"value": VALUE, "env": "production"}
    assert _call(od, "PUT", "/api/v1/secrets/DB_PASSWORD", deploy, json=other).status_code == 403
    every = {"value": VALUE}  # no env: every environment, beyond a staging-only token
    assert _call(od, "PUT", "/api/v1/secrets/DB_PASSWORD", deploy, json=every).status_code == 403

    # A rejected body is never echoed back (a validation error would show the value).
    for bad in ({"value": VALUE, "env": 5}, {"value": VALUE, "env": "staging", "app": "Bad App"}):
        refused = _call(od, "PUT", "/api/v1/secrets/DB_PASSWORD", deploy, json=bad)
        assert refused.status_code in (403, 422) and VALUE not in refused.text
    bad_name = _call(od, "PUT", "/api/v1/secrets/db-password", deploy, json=body)
    assert bad_name.status_code == 422 and VALUE not in bad_name.text

    listed = _call(od, "GET", "/api/v1/secrets", reader)
    assert [s["name"] for s in listed.json()["secrets"]] == ["DB_PASSWORD"]
    assert VALUE not in listed.text
    cli = json.loads(od.cli("secret", "list", "--json").stdout)
    assert cli[0]["fingerprint"] == answer.json()["fingerprint"]

    gone = _call(od, "DELETE", "/api/v1/secrets/DB_PASSWORD", deploy, params={"env": "staging"})
    assert gone.status_code == 200
    assert _call(od, "GET", "/api/v1/secrets", reader).json()["secrets"] == []
    openapi = _call(od, "GET", "/openapi.json", reader).json()
    for path, ops in openapi["paths"].items():
        if path.startswith("/api/v1/secrets"):
            assert set(ops) <= {"get", "put", "delete"}
