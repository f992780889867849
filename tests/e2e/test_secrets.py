"""Secrets through a real `ondeck up`: the write-only API of the host store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo, git, wait_for

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


# --- secrets reach exactly the instances that refer to them ---------------------------------

SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
    env: {DATABASE_URL: "postgres://shop:${DB_PASSWORD}@localhost/shop"}
  worker:
    command: ["python3", "web.py"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
    env: {LEVEL: info}
"""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _pids(od: Ondeck, service: str) -> list[int]:
    svc = od.service(service)
    return [i["pid"] for i in svc["instances"]] if svc else []


def _set(od: Ondeck, name: str, value: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "set", name, *args],
        input=value,
        env=od.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert value not in result.stdout + result.stderr


def test_a_missing_secret_refuses_the_sync_until_it_is_set_and_then_only_its_users_get_it(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit("needs a secret", SPEC)
    od = ondeck(repo.path)
    refused = wait_for(lambda: od.env_status()["error"], "the sync to be refused")
    assert "secret ${DB_PASSWORD} is not set" in refused
    assert "ondeck secret set DB_PASSWORD" in refused
    assert od.service("web") is None  # nothing started

    _set(od, "DB_PASSWORD", VALUE)
    od.wait_synced(sha)
    web_env = _environ(_pids(od, "web")[0])
    assert web_env["DATABASE_URL"] == f"postgres://shop:{VALUE}@localhost/shop"
    assert "DB_PASSWORD" not in web_env  # only through the env key that refers to it
    worker_env = _environ(_pids(od, "worker")[0])
    assert VALUE not in "".join(worker_env.values())

    # Rotation: the web rolls, the worker (which does not use it) keeps running.
    web_before, worker_before = _pids(od, "web"), _pids(od, "worker")
    _set(od, "DB_PASSWORD", VALUE + "-rotated")
    wait_for(
        lambda: _pids(od, "web") and set(_pids(od, "web")).isdisjoint(web_before),
        "web to roll onto the new secret",
    )
    od.wait_synced(sha)
    assert _pids(od, "worker") == worker_before
    assert _environ(_pids(od, "web")[0])["DATABASE_URL"].endswith(f"{VALUE}-rotated@localhost/shop")
    syncs = json.loads(od.cli("history", "--json").stdout)["syncs"]
    changes = [c for s in syncs for c in s["changes"]]
    assert "web: secret DB_PASSWORD changed" in changes
    assert not any("worker" in c for c in changes if "secret" in c)


def test_a_secret_in_a_command_line_is_refused(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    spec = SPEC.replace(
        '["python3", "web.py"]\n    port: true\n    health: {http: /healthz, interval: 1s}\n    stop: {grace: 5s}\n    env: {DATABASE_URL',
        '["python3", "web.py", "--db=${DB_PASSWORD}"]\n    port: true\n    health: {http: /healthz, interval: 1s}\n    stop: {grace: 5s}\n    env: {DATABASE_URL',
        1,
    )
    repo.commit("argv secret", spec)
    od = ondeck(repo.path)
    _set(od, "DB_PASSWORD", VALUE)
    od.cli("sync")
    refused = wait_for(lambda: od.env_status()["error"], "the sync to be refused")
    assert "services.web.command[2]: ${DB_PASSWORD} is a secret" in refused
    assert "pass it through env" in refused
    assert od.service("web") is None


# --- the age file in git -----------------------------------------------------------------------


def _encrypt(od: Ondeck, repo: Repo, name: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "encrypt", "secrets.age.yaml", name],
        input=value,
        cwd=repo.path,
        env=od.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_age_file_deploys_wins_over_the_host_and_a_revert_brings_the_old_value_back(
    repo: Repo, ondeck: Callable[..., Ondeck], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    keygen = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "keygen", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert keygen.stdout.startswith("age1")
    spec = SPEC + "secrets: {file: secrets.age.yaml}\n"
    od = Ondeck(repo.path, state)  # not started yet: the CLI writes the file first
    od_env = od.env
    _encrypt(od, repo, "DB_PASSWORD", "from-git-1")
    first = repo.commit("secrets in git", spec)
    od = ondeck(repo.path)
    assert od.env == od_env
    od.wait_synced(first)
    assert "from-git-1@" in _environ(_pids(od, "web")[0])["DATABASE_URL"]

    _set(od, "DB_PASSWORD", "from-the-host")  # the file in git wins
    _encrypt(od, repo, "DB_PASSWORD", "from-git-2")
    second = repo.commit("rotate in git")
    od.wait_synced(second, timeout=60)
    wait_for(lambda: "from-git-2@" in _environ(_pids(od, "web")[0])["DATABASE_URL"], "rotation")

    git(repo.path, "revert", "--no-edit", "HEAD")
    third = git(repo.path, "rev-parse", "HEAD")
    od.wait_synced(third, timeout=60)
    wait_for(lambda: "from-git-1@" in _environ(_pids(od, "web")[0])["DATABASE_URL"], "revert")


def test_a_file_this_host_cannot_decrypt_refuses_the_sync_naming_it(
    repo: Repo, ondeck: Callable[..., Ondeck], tmp_path: Path
) -> None:
    other = tmp_path / "laptop"
    subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "keygen", "--state-dir", str(other)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    laptop = Ondeck(repo.path, other)
    _encrypt(laptop, repo, "DB_PASSWORD", VALUE)  # to the laptop's key only
    repo.commit("secrets", SPEC + "secrets: {file: secrets.age.yaml}\n")
    od = ondeck(repo.path)
    refused = wait_for(lambda: od.env_status()["error"], "the sync to be refused")
    assert "secrets.age.yaml: cannot decrypt" in refused and "secret keygen" in refused
    assert od.service("web") is None
    assert VALUE not in refused


# --- the leak grep -------------------------------------------------------------------------

HOST_VALUE = "hostval-Zr8q-must-never-show"
FILE_VALUE = "fileval-Kp2w-must-never-show"
LEAK_SPEC = """\
app: shop
secrets: {file: secrets.age.yaml}
services:
  web:
    command: ["python3", "web.py"]
    release: ["python3", "-c", "import os; assert os.environ['API_KEY'].startswith('fileval')"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
    env:
      DATABASE_URL: "postgres://shop:${DB_PASSWORD}@localhost/shop"
      API_KEY: "${API_KEY}"
"""


def _everything_shown(od: Ondeck, repo: Repo) -> dict[str, str]:
    """Every place a value could surface, as text, by where it was found."""
    shown: dict[str, str] = {}
    for args in (
        ("status",),
        ("status", "--json"),
        ("diff",),
        ("history",),
        ("history", "--json"),
        ("logs", "web"),
        ("logs", "web", "--release"),
        ("secret", "list"),
        ("secret", "list", "--json"),
    ):
        result = od.cli(*args, check=False)
        shown["ondeck " + " ".join(args)] = result.stdout + result.stderr
    token = (od.state_dir / "token").read_text().strip()
    for path in (
        "/api/v1/status",
        "/api/v1/diff",
        "/api/v1/history",
        "/api/v1/events",
        "/api/v1/logs/web",
        "/api/v1/release-task/web",
        "/api/v1/secrets",
        "/metrics",
        "/openapi.json",
    ):
        shown[path] = _call(od, "GET", path, token).text
    shown["ondeck up's log"] = od.log()
    shown["git notes"] = git(repo.path, "log", "--notes=ondeck", "--format=%H %N")
    shown["the spec repo"] = git(repo.path, "grep", "-I", "-h", "-e", "", "HEAD")
    for file in od.state_dir.rglob("*"):
        if file.is_file() and file.name != "host.json":  # the store itself holds values
            shown[str(file)] = file.read_bytes().decode(errors="replace")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                shown[f"{proc}/cmdline"] = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
    return shown


def test_no_secret_value_shows_anywhere(
    repo: Repo, ondeck: Callable[..., Ondeck], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    od = Ondeck(repo.path, state)
    subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "keygen", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    _encrypt(od, repo, "API_KEY", FILE_VALUE)
    _set(od, "DB_PASSWORD", HOST_VALUE)
    first = repo.commit("secrets from both sources", LEAK_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(first, timeout=60)
    pid = _pids(od, "web")[0]
    assert HOST_VALUE in _environ(pid)["DATABASE_URL"]  # the values did arrive
    assert _environ(pid)["API_KEY"] == FILE_VALUE

    # A rotation of each, and a refused commit (its error message is shown too).
    _set(od, "DB_PASSWORD", HOST_VALUE + "-2")
    _encrypt(od, repo, "API_KEY", FILE_VALUE + "-2")
    second = repo.commit("rotate")
    od.wait_synced(second, timeout=60)
    diff = od.cli("diff").stdout
    repo.commit("missing", LEAK_SPEC.replace("${API_KEY}", "${API_KEY}${MISSING_ONE}"))
    wait_for(lambda: od.env_status()["error"], "the refusal")
    assert "API_KEY" not in diff or FILE_VALUE not in diff

    shown = _everything_shown(od, repo)
    assert len(shown) > 30
    # The grep can find a value: the store holds the host's in clear (0600), by design.
    assert HOST_VALUE in (od.state_dir / "secrets" / "host.json").read_text()
    for value in (HOST_VALUE, FILE_VALUE):
        leaks = sorted(where for where, text in shown.items() if value in text)
        assert not leaks, f"{value} shows in: {leaks}"
    history = json.loads(od.cli("history", "--json").stdout)["syncs"]
    changes = [c for s in history for c in s["changes"]]
    assert "web: secret DB_PASSWORD changed" in changes
    assert "web: secret API_KEY changed" in changes
