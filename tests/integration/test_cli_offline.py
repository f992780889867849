"""CLI commands that need no running controller: init, validate, schema, install, version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

CI = os.environ.get("CI") == "true"


def ondeck(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_init_creates_a_committed_repo_with_a_valid_spec(tmp_path: Path) -> None:
    result = ondeck("init", str(tmp_path / "shop"))
    assert result.returncode == 0, result.stderr
    repo = tmp_path / "shop"
    assert {"app.py", "ondeck.yaml", "README.md", ".gitignore"} <= {p.name for p in repo.iterdir()}
    log = subprocess.run(
        ["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert len(log.stdout.splitlines()) == 1
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""
    assert ondeck("validate", str(repo)).returncode == 0


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = ondeck("init", str(tmp_path / "x"))
    assert result.returncode == 1
    assert "not empty" in result.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_validate_prints_located_problems_and_exits_1(tmp_path: Path) -> None:
    spec = tmp_path / "ondeck.yaml"
    spec.write_text(
        "app: shop\nservices:\n  web:\n    command: [python3, app.py]\n    replica: 2\n"
    )
    result = ondeck("validate", str(tmp_path))
    assert result.returncode == 1
    assert f"{spec}:5:5: " in result.stdout
    assert "did you mean 'replicas'" in result.stdout


def test_validate_reports_yaml_syntax_errors_with_position(tmp_path: Path) -> None:
    spec = tmp_path / "ondeck.yaml"
    spec.write_text("app: shop\nservices:\n  web: {command: [python3\n")
    result = ondeck("validate", str(spec))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{spec}:")


def test_validate_missing_file_says_what_to_do(tmp_path: Path) -> None:
    result = ondeck("validate", str(tmp_path))
    assert result.returncode == 1
    assert "ondeck init" in result.stderr


def test_schema_is_json_schema_that_accepts_the_scaffold(tmp_path: Path) -> None:
    result = ondeck("schema")
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    ondeck("init", str(tmp_path / "shop"))
    doc = YAML(typ="safe").load((tmp_path / "shop" / "ondeck.yaml").read_text())
    jsonschema.validate(doc, schema)
    doc["services"]["web"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_status_without_a_controller_explains_how_to_start_one(tmp_path: Path) -> None:
    result = ondeck("status", env={"ONDECK_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 1
    assert "ondeck up" in result.stderr


def test_install_writes_units_that_systemd_accepts(tmp_path: Path) -> None:
    units = tmp_path / "units"
    result = ondeck(
        "install",
        "--repo",
        "https://example.com/shop.git",
        "--env",
        "production",
        "--state-dir",
        str(tmp_path / "state"),
        "--unit-dir",
        str(units),
        "--listen",
        "127.0.0.1:9090",
    )
    assert result.returncode == 0, result.stderr
    unit = (units / "ondeck.service").read_text()
    assert "Restart=always" in unit
    assert "KillMode=process" in unit  # instances must outlive a controller restart
    assert "--env production" in unit and f"--state-dir {tmp_path / 'state'}" in unit
    assert "Wants=network-online.target ondeck-router.service" in unit
    router = (units / "ondeck-router.service").read_text()
    assert (
        "Restart=always" in router and "router --state-dir" in router and "127.0.0.1:9090" in router
    )
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert not CI, "CI must have systemd-analyze (make test installs systemd)"
        pytest.skip("systemd-analyze is not installed")
    verify = subprocess.run(
        [analyze, "verify", str(units / "ondeck-router.service"), str(units / "ondeck.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    assert "ondeck" not in verify.stderr  # no warning about our units


def test_version_prints_the_package_version() -> None:
    from ondeck import __version__

    assert ondeck("version").stdout.strip() == __version__
