"""/openapi.json documents every /api/v1 answer with a model, and the status keeps its keys."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from ondeck.api.app import create_app
from ondeck.daemon import build_controller
from ondeck.environment import Options

DOCUMENTED_ENV_KEYS = {"name", "revision", "live_revision", "sync", "health", "error", "services"}
TOP_KEYS = {"environments", "source", "router", "controller"}
# The controller's own answers (api/app.py); other modules' routers document theirs.
CORE = ("status", "sync", "deploy", "rollout", "diff", "history", "events")


def _openapi(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)

    async def build() -> tuple[dict[str, Any], dict[str, Any]]:
        controller = build_controller(Options(repo=str(repo), state_dir=tmp_path / "state"))
        try:
            app = create_app(controller, "t" * 32)
            return app.openapi(), controller.status().model_dump(mode="json")
        finally:
            controller.store.close()

    return asyncio.run(build())


def test_every_api_v1_answer_has_a_schema(tmp_path: Path) -> None:
    spec, _ = _openapi(tmp_path)
    paths = {
        p: ops
        for p, ops in spec["paths"].items()
        if p.startswith(tuple(f"/api/v1/{c}" for c in CORE))
    }
    assert {"/api/v1/status", "/api/v1/sync", "/api/v1/history", "/api/v1/diff"} <= set(paths)
    for path, ops in paths.items():
        for method, op in ops.items():
            ok: dict[str, Any] = op["responses"].get("200", {}).get("content", {})
            first: dict[str, Any] = next(iter(ok.values()), {})
            schema: dict[str, Any] = first.get("schema", {})
            assert "$ref" in schema, f"{method.upper()} {path} answers an undocumented document"
    status = spec["components"]["schemas"]["StatusDoc"]
    assert set(status["properties"]) >= TOP_KEYS
    assert set(spec["components"]["schemas"]["EnvStatus"]["properties"]) >= DOCUMENTED_ENV_KEYS
    assert "description" in spec["components"]["schemas"]["ServiceStatus"]


def test_status_of_a_fresh_controller_has_the_documented_keys(tmp_path: Path) -> None:
    _, doc = _openapi(tmp_path)
    assert set(doc) >= TOP_KEYS
    (env,) = doc["environments"]
    assert set(env) >= DOCUMENTED_ENV_KEYS
    assert (env["name"], env["sync"], env["health"]) == ("default", "Unknown", "Unknown")
