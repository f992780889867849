"""`ondeck maintenance on|off`: one commit in a real git checkout, as set-version makes.

On writes `maintenance: {message: ...}` where the environment keeps its
overrides; off removes it and the overlay mappings it leaves empty, so on then
off gives back the file byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ondeck.spec.load import load_file

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}
SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]  # the shop itself
    port: true
    routes: [{path: /}]
  worker:
    command: ["python3", "worker.py"]
environments:
  staging:
    services:
      web: {replicas: 1, routes: [{host: staging.shop.localhost}]}
  production: {}
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ondeck(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_ENV, "ONDECK_STATE_DIR": str(cwd.parent / "state")}
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "ondeck.yaml").write_text(SPEC)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def maintenance_of(repo: Path, env: str, service: str = "web") -> str | None:
    spec = load_file(repo / "ondeck.yaml", env)
    mode = spec.services[service].maintenance
    return None if mode is None else mode.message


@pytest.mark.parametrize("env", ["staging", "production"])
def test_on_then_off_is_two_commits_and_restores_the_file(checkout: Path, env: str) -> None:
    on = ondeck(checkout, "maintenance", "on", "web", "--env", env, "--message", "Back at 10:00")
    assert on.returncode == 0, on.stderr
    assert f"maintenance(web): on [{env}]" in on.stdout
    assert git(checkout, "log", "-1", "--format=%s") == f"maintenance(web): on [{env}]"
    assert maintenance_of(checkout, env) == "Back at 10:00"
    other = "production" if env == "staging" else "staging"
    assert maintenance_of(checkout, other) is None
    changed = git(checkout, "diff", "--numstat", "HEAD~1", "HEAD").split()
    assert changed[:2] == ["1", "1"]  # one line in the overlay, nothing else touched
    off = ondeck(checkout, "maintenance", "off", "web", "--env", env)
    assert off.returncode == 0, off.stderr
    assert git(checkout, "log", "-1", "--format=%s") == f"maintenance(web): off [{env}]"
    assert (checkout / "ondeck.yaml").read_text() == SPEC
    assert git(checkout, "status", "--porcelain") == ""


def test_the_base_spec_and_the_default_message(checkout: Path) -> None:
    assert ondeck(checkout, "maintenance", "on", "worker").returncode == 0
    assert maintenance_of(checkout, "production", "worker") is not None  # inherited
    again = ondeck(checkout, "maintenance", "on", "worker")
    assert again.returncode == 0 and "nothing to change" in again.stderr
    refused = ondeck(checkout, "maintenance", "off", "worker", "--env", "staging")
    assert refused.returncode == 1
    assert "in the base spec" in refused.stderr and "without --env" in refused.stderr
    assert ondeck(checkout, "maintenance", "off", "worker").returncode == 0
    assert (checkout / "ondeck.yaml").read_text() == SPEC


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["on", "shop"], "unknown service 'shop'"),
        (["on", "web", "--env", "qa"], "unknown environment 'qa'"),
        (["on", "web", "--message", " "], "--message is empty"),
        (["off", "web"], "nothing to change: web is not in maintenance"),
    ],
)
def test_mistakes_are_explained_and_commit_nothing(
    checkout: Path, args: list[str], expected: str
) -> None:
    head = git(checkout, "rev-parse", "HEAD")
    result = ondeck(checkout, "maintenance", *args)
    assert expected in result.stderr
    assert git(checkout, "rev-parse", "HEAD") == head
    assert (checkout / "ondeck.yaml").read_text() == SPEC
