"""`ondeck logs SVC --access`: which lines are shown, for one app or a host file's apps."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ondeck.commands.access import show


def _entry(env: str, service: str, path: str) -> str:
    fields = {"time": "t", "env": env, "service": service, "method": "GET", "path": path}
    return json.dumps({**fields, "status": 200, "bytes": 1, "duration_ms": 1.0})


def _shown(tmp_path: Path, env: str | None, app: str | None) -> list[str]:
    out = io.StringIO()
    show(tmp_path, "web", env, 100, False, out, app=app)
    return [line.split()[5] for line in out.getvalue().splitlines()]


def test_a_host_files_pools_are_app_env_service_and_each_part_filters(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    lines = [
        _entry("shop/production", "web", "/shop-prod"),
        _entry("shop/staging", "web", "/shop-staging"),
        _entry("blog/production", "web", "/blog-prod"),
        _entry("shop/production", "api", "/shop-api"),
    ]
    (tmp_path / "logs" / "access.log").write_text("\n".join(lines) + "\n")
    assert _shown(tmp_path, "production", "shop") == ["/shop-prod"]
    assert _shown(tmp_path, "production", None) == ["/shop-prod", "/blog-prod"]
    assert _shown(tmp_path, None, "shop") == ["/shop-prod", "/shop-staging"]
    assert _shown(tmp_path, None, None) == ["/shop-prod", "/shop-staging", "/blog-prod"]


def test_one_apps_pools_are_env_service(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    lines = [_entry("production", "web", "/p"), _entry("staging", "web", "/s")]
    (tmp_path / "logs" / "access.log").write_text("\n".join(lines) + "\n")
    assert _shown(tmp_path, "staging", None) == ["/s"]
    assert _shown(tmp_path, None, None) == ["/p", "/s"]
