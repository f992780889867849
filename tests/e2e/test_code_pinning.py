"""Environments that pin their own code (`source:`), against a real `ondeck up` and real git.

Which code an instance runs is read from the instance itself: the `code.txt` of
its working directory (/proc/PID/cwd) and the ONDECK_CODE_REVISION it was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Ondeck, Repo, git, wait_for

BASE = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
"""
ENVS = ("--env", "staging", "--env", "production")
WAIT = 60.0


def _spec(production: str = "{}", staging: str = "{}", base: str = BASE) -> str:
    return f"{base}environments:\n  staging: {staging}\n  production: {production}\n"


def _pinned(ref: str) -> str:
    return "{services: {web: {source: {ref: " + ref + "}}}}"


def _instance(od: Ondeck, env: str, service: str = "web") -> dict[str, Any]:
    svc = od.service(service, env=env)
    assert svc is not None and len(svc["instances"]) == 1, svc
    return dict(svc["instances"][0])


def _code_of(inst: dict[str, Any]) -> str:
    """What the instance's own working directory holds: the code it really runs."""
    return (Path(os.readlink(f"/proc/{inst['pid']}/cwd")) / "code.txt").read_text().strip()


def _env_of(inst: dict[str, Any]) -> dict[str, str]:
    raw = Path(f"/proc/{inst['pid']}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().split("=", 1) for item in raw if b"=" in item)
    return dict(p for p in pairs if len(p) == 2)


def _runs(od: Ondeck, env: str, code: str, sha: str, service: str = "web") -> dict[str, Any]:
    """Wait until `env` runs `code` from commit `sha`, healthy, and return its instance."""

    def check() -> dict[str, Any] | None:
        e = od.env_status(env)
        svc = next((s for s in e["services"] if s["name"] == service), None)
        if e["sync"] != "Synced" or e["health"] != "Healthy" or svc is None:
            return None
        if svc["code_revision"] != sha or len(svc["instances"]) != 1:
            return None
        inst = dict(svc["instances"][0])
        return inst if _code_of(inst) == code else None

    return wait_for(check, f"{env} running code {code} from {sha[:12]}", WAIT)


def test_staging_follows_main_production_stays_on_its_pinned_sha(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.write("code.txt", "one\n")
    first = repo.commit("code one", _spec())
    second = repo.commit("pin production", _spec(production=_pinned(first)))
    od = ondeck(repo.path, *ENVS)
    staging = _runs(od, "staging", "one", second)
    production = _runs(od, "production", "one", first)
    assert _env_of(production)["ONDECK_CODE_REVISION"] == first
    assert _env_of(production)["ONDECK_REVISION"] == second  # the spec's commit, as before
    assert od.service("web", env="production")["code_ref"] == first  # type: ignore[index]

    repo.write("code.txt", "two\n")
    third = repo.commit("code two")
    staging = _runs(od, "staging", "two", third)
    assert _env_of(staging)["ONDECK_CODE_REVISION"] == third
    # Production saw the new spec commit but its pin did not move: the same instance runs on.
    od.wait_synced(third, env="production")
    assert _instance(od, "production")["pid"] == production["pid"]
    assert _code_of(production) == "one"
    history = od.cli("history", "--json").stdout
    assert "code" in history

    shown = od.cli("status").stdout
    assert first[:7] in shown and third[:7] in shown  # the CODE column, per environment


def test_a_ref_that_does_not_resolve_is_refused_and_nothing_running_changes(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.write("code.txt", "one\n")
    first = repo.commit("code one", _spec())
    od = ondeck(repo.path, *ENVS)
    production = _runs(od, "production", "one", first)
    bad = repo.commit("pin production to nothing", _spec(production=_pinned("no-such-tag")))

    def refused() -> str | None:
        e = od.env_status("production")
        return e["error"] if e["error_commit"] and e["error_commit"]["sha"] == bad else None

    error = wait_for(refused, "production to refuse the commit", WAIT)
    assert "web" in error and "'no-such-tag'" in error and "this repository" in error
    assert _instance(od, "production")["pid"] == production["pid"]
    assert od.env_status("production")["revision"] == first
    od.wait_synced(bad, env="staging")  # staging pins nothing: the same commit is fine there

    # The tag appears: the same commit is tried again at the next fetch and applies.
    git(repo.path, "tag", "no-such-tag", first)
    wait_for(
        lambda: od.env_status("production")["revision"] == bad,
        "production to apply the commit once its tag exists",
        WAIT,
    )
    _runs(od, "production", "one", first)


def test_a_separate_app_repo_branch_is_followed_and_a_tag_is_fixed(
    tmp_path: Path, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    git(app, "init", "-q", "-b", "main")
    (app / "src" / "web.py").write_text((repo.path / "web.py").read_text())
    (app / "src" / "code.txt").write_text("app one\n")
    git(app, "add", "-A")
    git(app, "commit", "-q", "-m", "app one")
    one = git(app, "rev-parse", "HEAD")
    git(app, "tag", "v1")

    def source(ref: str) -> str:
        return (
            "{services: {web: {source: {repo: '" + str(app) + "', ref: " + ref + ", path: src}}}}"
        )

    spec = _spec(staging=source("main"), production=source("v1"))
    deploy = repo.commit("config and code split", spec)
    od = ondeck(repo.path, *ENVS)
    _runs(od, "staging", "app one", one)
    production = _runs(od, "production", "app one", one)
    assert od.service("web", env="staging")["code_repo"] == str(app)  # type: ignore[index]

    (app / "src" / "code.txt").write_text("app two\n")
    git(app, "commit", "-q", "-am", "app two")
    two = git(app, "rev-parse", "HEAD")
    # No commit to the deploy repo: the followed branch moved, and that is a new desired state.
    staging = _runs(od, "staging", "app two", two)
    assert _env_of(staging)["ONDECK_CODE_REVISION"] == two
    history = od.cli("history", "--json").stdout
    assert f"web: code {one[:7]} -> {two[:7]}" in history
    assert od.env_status("staging")["revision"] == deploy
    assert _instance(od, "production")["pid"] == production["pid"]
    assert _code_of(production) == "app one"


SHARED = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    build: ["python3", "-c", "import os; open('{log}', 'a').write(os.getcwd() + '\\\\n')"]
    port: true
    health: {http: /healthz, interval: 1s}
    env: {FLAVOR: plain}
  api:
    command: ["python3", "web.py"]
    build: ["python3", "-c", "import os; open('{log}', 'a').write(os.getcwd() + '\\\\n')"]
    port: true
    health: {http: /healthz, interval: 1s}
    env: {FLAVOR: plain}
"""


def test_a_release_is_built_once_for_services_and_environments_with_equal_builds(
    tmp_path: Path, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    log = tmp_path / "builds.log"
    repo.write("code.txt", "one\n")
    base = SHARED.replace("{log}", str(log))
    # production's api builds with another env value: that one release is its own.
    sha = repo.commit(
        "two services, two environments",
        _spec(base=base, production="{services: {api: {env: {FLAVOR: spicy}}}}"),
    )
    od = ondeck(repo.path, *ENVS)
    for env in ("staging", "production"):
        od.wait_synced(sha, env=env, timeout=WAIT)
    builds = log.read_text().splitlines()
    assert len(builds) == 2, builds
    releases = sorted(p for p in (od.state_dir / "releases" / "shop" / "_shared").iterdir())
    assert [str(p) for p in releases] == sorted(builds)
    cwds = {
        (env, name): os.readlink(f"/proc/{_instance(od, env, name)['pid']}/cwd")
        for env in ("staging", "production")
        for name in ("web", "api")
    }
    shared = {cwds[("staging", "web")], cwds[("production", "web")], cwds[("staging", "api")]}
    assert len(shared) == 1 and cwds[("production", "api")] not in shared


def test_promote_pins_production_to_stagings_code_and_rollback_leaves_staging_alone(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    repo.write("code.txt", "one\n")
    first = repo.commit("code one", _spec(staging=_pinned("main")))
    od = ondeck(repo.path, *ENVS)
    od.cli("set-ref", f"web={first}", "--env", "production", "--repo", str(repo.path))
    assert git(repo.path, "diff", "--numstat", "HEAD~1").split()[:2] == ["1", "1"]  # one line
    production = _runs(od, "production", "one", first)
    _runs(od, "staging", "one", first)

    repo.write("code.txt", "two\n")
    two = repo.commit("code two")
    staging = _runs(od, "staging", "two", two)  # staging follows main: the new code
    od.wait_synced(two, env="production")
    assert _instance(od, "production")["pid"] == production["pid"]  # production did not move

    promoted = od.cli("promote", "staging", "production", "--repo", str(repo.path)).stdout
    assert two in promoted
    production = _runs(od, "production", "two", two)  # exactly the code staging runs
    assert _env_of(production)["ONDECK_CODE_REVISION"] == two
    assert _instance(od, "staging")["pid"] == staging["pid"]

    od.cli("rollback", "--env", "production", "--repo", str(repo.path))
    _runs(od, "production", "one", first)
    assert _instance(od, "staging")["pid"] == staging["pid"]  # rollback left staging alone
    assert _code_of(staging) == "two"
