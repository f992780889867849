"""The life of a deployment end to end: commit, roll, scale, prune, refuse, build, observe.

Each test drives a real `ondeck up` against a real git repo and checks what a
user would see: processes (pids), what the instances serve, `status`,
`history`, `logs`, the API and `/metrics`. Waits are conditions with deadlines.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from conftest import FIXTURES, GIT_ENV, SIMPLE_SPEC, Ondeck, Repo, wait_for
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

Factory = Callable[..., Ondeck]
ENVAPP = (FIXTURES / "apps" / "envapp.py").read_text()
HEALTH = "{http: /healthz, interval: 1s, start_period: 60s}"  # never judged failing while held back


# -- helpers -------------------------------------------------------------------------------------


def envapp_spec(version: str = "1.0.0", replicas: int = 2, env: str = "{}", extra: str = "") -> str:
    return f"""\
app: shop
services:
  web:
    command: ["python3", "envapp.py"]
    version: "{version}"
    port: true
    replicas: {replicas}
    env: {env}
    health: {HEALTH}
    stop: {{grace: 5s}}
    rollout: {{strategy: rolling, max_surge: 1, max_unavailable: 0}}
{extra}"""


def with_envapp(repo: Repo) -> Repo:
    repo.write("envapp.py", ENVAPP)
    return repo


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


def pids(od: Ondeck, service: str = "web", env: str = "default") -> dict[str, int]:
    svc = od.service(service, env)
    assert svc is not None, f"no service {service} in {env}"
    return {i["id"]: i["pid"] for i in svc["instances"]}


def served(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
    return doc


def served_by_all(od: Ondeck, env: str = "default") -> list[dict[str, Any]]:
    svc = od.service("web", env)
    assert svc is not None
    return [served(i["port"]) for i in svc["instances"]]


def history(od: Ondeck) -> list[dict[str, Any]]:
    syncs: list[dict[str, Any]] = json.loads(od.cli("history", "--json").stdout)["syncs"]
    return syncs


def sync_of(od: Ondeck, revision: str) -> dict[str, Any]:
    return next(s for s in history(od) if s["revision"] == revision)


def api_of(od: Ondeck, token: str | None = None) -> httpx.Client:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = token if token is not None else (od.state_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def sampling(od: Ondeck) -> Iterator[list[dict[str, Any]]]:
    """Record the `web` service of the default env, as the API reports it, until the block ends."""
    samples: list[dict[str, Any]] = []
    done = threading.Event()

    def run() -> None:
        with api_of(od) as api:
            while not done.is_set():
                env = api.get("/api/v1/status").json()["environments"][0]
                samples.extend(s for s in env["services"] if s["name"] == "web")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(timeout=30)


# -- 1. new commits: polling, sync --wait, rolling update ----------------------------------------


def test_poll_rolls_a_new_commit_out_without_losing_ready_instances(
    repo: Repo, ondeck: Factory, tmp_path: Path
) -> None:
    gate = tmp_path / "ready"
    gate.mkdir()
    (gate / "1.0.0").touch()
    env = f'{{READY_DIR: "{gate}"}}'
    sha1 = with_envapp(repo).commit("v1", envapp_spec("1.0.0", env=env))
    od = ondeck(repo.path)
    od.wait_synced(sha1)
    old = pids(od)
    assert len(old) == 2

    with sampling(od) as samples:
        sha2 = repo.commit("v2", envapp_spec("2.0.0", env=env))

        def surged() -> dict[str, Any] | None:
            e = od.env_status()
            return e if len(e["services"][0]["instances"]) == 3 else None

        # Polling found the commit; the new instance is held not ready, so no old one may stop.
        mid = wait_for(surged, "a surge instance of v2 next to both v1 instances")
        assert mid["operation"] == {**mid["operation"], "revision": sha2, "trigger": "poll"}
        assert mid["live_revision"] == sha1
        web = mid["services"][0]
        assert web["replicas"]["ready"] == 2
        assert {i["id"]: i["pid"] for i in web["instances"] if i["revision"] == sha1} == old
        assert all(alive(p) for p in old.values())

        (gate / "2.0.0").touch()
        od.wait_synced(sha2)

    assert samples, "the sampler saw no status"
    assert min(s["replicas"]["ready"] for s in samples) >= 2, "ready instances dipped below 2"
    assert max(sum(i["state"] != "stopping" for i in s["instances"]) for s in samples) <= 3
    new = pids(od)
    assert len(new) == 2 and not set(new.values()) & set(old.values())
    wait_for(lambda: not any(alive(p) for p in old.values()), "the v1 processes to be gone")
    for doc in served_by_all(od):
        assert (doc["revision"], doc["version"]) == (sha2, "2.0.0")

    row = sync_of(od, sha2)
    assert (row["trigger"], row["result"], row["message"]) == ("poll", "Succeeded", "v2")
    actions = row["actions"]
    starts = [a for a in actions if a.startswith("start ")]
    stops = [a for a in actions if a.startswith("stop ")]
    assert len(starts) == 2 and {a.split()[1] for a in stops} == set(old)
    for k, action in enumerate(actions):  # max_unavailable 0: a start precedes every stop
        if action.startswith("stop "):
            before = actions[:k]
            assert sum(a.startswith("start ") for a in before) > sum(
                a.startswith("stop ") for a in before
            ), actions


def test_sync_wait_applies_a_new_commit_at_once_and_history_tells_it(
    repo: Repo, ondeck: Factory
) -> None:
    sha1 = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path, "--poll", "1h")  # the last --poll wins: only `sync` can fetch
    od.wait_synced(sha1)
    old = pids(od)
    sha2 = repo.commit("second release", SIMPLE_SPEC.replace('"1.0.0"', '"1.1.0"'))

    result = od.cli("sync", "--wait")
    assert result.returncode == 0
    env = od.env_status()
    assert (env["sync"], env["health"], env["live_revision"]) == ("Synced", "Healthy", sha2)
    assert env["commit"]["sha"] == sha2 and env["commit"]["message"] == "second release"
    new = pids(od)
    assert len(new) == 2 and not set(new.values()) & set(old.values())
    for doc in served_by_all(od):
        assert (doc["revision"], doc["version"]) == (sha2, "1.1.0")

    rows = history(od)
    by_rev = {r["revision"]: r for r in rows}
    author = f"{GIT_ENV['GIT_AUTHOR_NAME']} <{GIT_ENV['GIT_AUTHOR_EMAIL']}>"
    first, second = by_rev[sha1], by_rev[sha2]
    assert rows[0]["id"] == second["id"], "history is newest first"
    assert (first["trigger"], second["trigger"]) == ("startup", "cli")
    for row, message in ((first, "first release"), (second, "second release")):
        assert row["author"] == author and row["message"] == message
        assert row["result"] == "Succeeded" and row["error"] is None
        assert isinstance(row["duration"], float) and row["duration"] >= 0
    assert sorted(a.split()[0] for a in first["actions"]) == ["start", "start"]
    assert sorted(a.split()[0] for a in second["actions"]) == ["start", "start", "stop", "stop"]


# -- 3. scaling, 4. pruning ------------------------------------------------------------------------


def test_a_replicas_only_change_scales_without_restarting(repo: Repo, ondeck: Factory) -> None:
    sha1 = repo.commit("two", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha1)
    two = pids(od)

    sha2 = repo.commit("three", SIMPLE_SPEC.replace("replicas: 2", "replicas: 3"))
    od.cli("sync", "--wait")
    env = od.wait_synced(sha2)
    three = pids(od)
    assert env["services"][0]["replicas"] == {"desired": 3, "ready": 3}
    assert {k: three[k] for k in two} == two, "an existing instance was replaced"
    assert all(alive(p) for p in three.values())
    assert all(i["restarts"] == 0 for i in env["services"][0]["instances"])
    assert [a.split()[0] for a in sync_of(od, sha2)["actions"]] == ["start"]

    sha3 = repo.commit("one", SIMPLE_SPEC.replace("replicas: 2", "replicas: 1"))
    od.cli("sync", "--wait")
    od.wait_synced(sha3)
    one = pids(od)
    assert len(one) == 1 and one.items() <= three.items()
    assert alive(next(iter(one.values())))
    gone = [p for k, p in three.items() if k not in one]
    wait_for(lambda: not any(alive(p) for p in gone), "the scaled-down processes to be gone")


def test_a_service_removed_from_the_spec_is_pruned(repo: Repo, ondeck: Factory) -> None:
    worker = """\
  worker:
    command: ["python3", "web.py"]
    port: true
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
"""
    sha1 = repo.commit("web and worker", SIMPLE_SPEC + worker)
    od = ondeck(repo.path)
    od.wait_synced(sha1)
    web, work = pids(od), pids(od, "worker")
    assert len(work) == 1

    sha2 = repo.commit("drop the worker", SIMPLE_SPEC)
    od.cli("sync", "--wait")
    env = od.wait_synced(sha2)
    assert [s["name"] for s in env["services"]] == ["web"]
    wait_for(lambda: not any(alive(p) for p in work.values()), "the worker process to be gone")
    assert pids(od) == web and all(alive(p) for p in web.values())
    assert any(a.startswith(f"stop {next(iter(work))}") for a in sync_of(od, sha2)["actions"])


# -- 5. bad commits and the schema -------------------------------------------------------------------


BROKEN_YAML = 'app: shop\nservices:\n  web:\n    command: ["python3", "web.py"\n    port: true\n'
UNKNOWN_KEY = SIMPLE_SPEC + "    replica: 2\n"


def test_a_bad_commit_is_refused_and_what_runs_is_untouched(repo: Repo, ondeck: Factory) -> None:
    sha1 = repo.commit("good", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha1)
    before = pids(od)

    for message, text, where in (
        ("broken yaml", BROKEN_YAML, "ondeck.yaml:5:5: YAML syntax"),
        ("typo", UNKNOWN_KEY, "ondeck.yaml:10:5: services.web: unknown key 'replica'"),
    ):
        bad = repo.commit(message, text)

        def refused(bad: str = bad) -> dict[str, Any] | None:
            e = od.env_status()
            return e if (e["error_commit"] or {}).get("sha") == bad else None

        env = wait_for(refused, f"the {message} commit to be refused")
        assert env["sync"] == "Unknown"
        assert env["error"].startswith(where), env["error"]
        assert env["error_commit"]["author"] == "Ada Lovelace <ada@example.com>"
        assert env["error_commit"]["message"] == message
        assert env["live_revision"] == sha1
        web = env["services"][0]
        assert web["health"] == "Healthy" and web["replicas"]["ready"] == 2
        assert {i["id"]: i["pid"] for i in web["instances"]} == before
        assert all(alive(p) for p in before.values())
        assert {i["revision"] for i in web["instances"]} == {sha1}

        checked = od.cli("validate", str(repo.path), check=False)
        assert checked.returncode == 1
        assert checked.stdout.splitlines() == [f"{repo.path}/{env['error']}"]
        row = sync_of(od, bad)
        assert (row["result"], row["trigger"]) == ("Failed", "poll")
        assert row["error"] == env["error"]

    assert od.cli("sync", "--wait", check=False).returncode == 1, "sync --wait hid the error"
    fixed = repo.commit("fix the typo", SIMPLE_SPEC)
    env = od.wait_synced(fixed)
    assert env["error"] is None and env["error_commit"] is None
    assert pids(od) == before, "the fix restarted instances it does not change"


def test_schema_is_published_and_matches_validation() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "environments" in schema["properties"]
    validator = jsonschema.Draft202012Validator(schema)
    yaml = YAML(typ="safe")

    def errors(text: str) -> list[str]:
        return [e.message for e in validator.iter_errors(yaml.load(text))]

    overlays = "environments:\n  staging:\n    services: {web: {replicas: 1, stop: {grace: 2s}}}\n"
    assert errors(SIMPLE_SPEC) == []
    assert errors(SIMPLE_SPEC + overlays) == []
    assert errors(SIMPLE_SPEC.replace("interval: 1s", "interval: 500ms")) == []
    assert errors(UNKNOWN_KEY)
    assert errors(SIMPLE_SPEC.replace("interval: 1s", "interval: soon"))
    assert errors(SIMPLE_SPEC.replace("grace: 5s", "grace: 5 parsecs"))
    assert errors(SIMPLE_SPEC + overlays.replace("replicas: 1", "replica: 1"))


# -- 6. environments -------------------------------------------------------------------------------


ENVIRONMENTS = """\
environments:
  staging:
    services: {web: {replicas: 1, env: {GREETING: hi-staging}}}
  production:
    services: {web: {env: {GREETING: PROD}}}
"""


def test_environments_run_side_by_side_and_are_isolated(repo: Repo, ondeck: Factory) -> None:
    spec = envapp_spec(env="{GREETING: hi}", extra=ENVIRONMENTS.replace("PROD", "hi-prod"))
    sha1 = with_envapp(repo).commit("two envs", spec)
    od = ondeck(repo.path, "--env", "staging", "--env", "production")
    od.wait_synced(sha1, env="staging")
    od.wait_synced(sha1, env="production")
    assert [e["name"] for e in od.status()["environments"]] == ["staging", "production"]
    staging = served_by_all(od, "staging")
    production = served_by_all(od, "production")
    assert len(staging) == 1 and len(production) == 2
    assert {(d["env"], d["greeting"]) for d in staging} == {("staging", "hi-staging")}
    assert {(d["env"], d["greeting"]) for d in production} == {("production", "hi-prod")}
    data_dirs = {d["data_dir"] for d in staging + production}
    assert data_dirs == {str(od.state_dir / "data" / "shop" / e) for e in ("staging", "production")}
    assert all(Path(d).is_dir() for d in data_dirs)
    staging_pids = pids(od, env="staging")

    sha2 = repo.commit("production only", spec.replace("hi-prod", "hi-prod-2"))
    od.wait_synced(sha2, env="production")
    od.wait_synced(sha2, env="staging")
    production_now = served_by_all(od, "production")
    assert {d["greeting"] for d in production_now} == {"hi-prod-2"}
    assert {d["data_dir"] for d in production_now} == {d["data_dir"] for d in production}
    assert pids(od, env="staging") == staging_pids
    assert all(alive(p) for p in staging_pids.values())
    assert {d["greeting"] for d in served_by_all(od, "staging")} == {"hi-staging"}


# -- 7. build ----------------------------------------------------------------------------------------


def test_build_runs_once_per_release_and_a_failing_build_fails_the_sync(
    repo: Repo, ondeck: Factory, tmp_path: Path
) -> None:
    builds = tmp_path / "builds.log"
    env = f'{{BUILD_LOG: "{builds}"}}'
    good = (
        "    build: [\"python3\", \"-c\", \"import os; open('built.txt','w').write('ok'); "
        "print(os.getcwd(), file=open(os.environ['BUILD_LOG'], 'a'))\"]\n"
    )
    sha1 = with_envapp(repo).commit("built", envapp_spec(env=env) + good)
    od = ondeck(repo.path)
    od.wait_synced(sha1)
    before = pids(od)
    docs = served_by_all(od)
    assert [d["built"] for d in docs] == ["ok", "ok"]
    assert builds.read_text().splitlines() == [docs[0]["cwd"]], "one build, in the release dir"
    assert {d["cwd"] for d in docs} == {docs[0]["cwd"]}

    bad = '    build: ["python3", "-c", "import sys; print(\'boom\'); sys.exit(2)"]\n'
    sha2 = repo.commit("broken build", envapp_spec(env=env) + bad)
    assert od.cli("sync", "--wait", check=False).returncode == 1
    row = sync_of(od, sha2)
    assert row["result"] == "Failed"
    assert "boom" in row["error"].split("build log", 1)[1]
    status = od.env_status()
    assert "build" in status["error"] and "boom" in status["error"]
    assert status["error_commit"]["sha"] == sha2
    assert status["live_revision"] == sha1
    web = status["services"][0]
    assert web["health"] == "Healthy" and pids(od) == before
    assert all(alive(p) for p in before.values())
    assert [d["built"] for d in served_by_all(od)] == ["ok", "ok"]
    assert len(builds.read_text().splitlines()) == 1


# -- 8. API and metrics -----------------------------------------------------------------------------


def test_api_needs_the_token_and_metrics_tell_the_truth(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    token_file = od.state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    with api_of(od, token="") as anonymous, api_of(od, token="wrong") as wrong, api_of(od) as api:
        openapi = anonymous.get("/openapi.json")
        assert openapi.status_code == 200
        calls = [
            (method.upper(), path.replace("{service}", "web"))
            for path, item in openapi.json()["paths"].items()
            if path.startswith("/api/v1/")
            for method in item
        ]
        assert ("GET", "/api/v1/status") in calls and ("POST", "/api/v1/sync") in calls
        for method, path in calls:
            for client in (anonymous, wrong):
                answer = client.request(method, path, json={} if method == "POST" else None)
                assert answer.status_code == 401, (method, path, answer.text)
        assert api.get("/api/v1/status").status_code == 200

        ready = ("ondeck_ready_instances", (("env", "default"), ("service", "web")))

        def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            text = anonymous.get("/metrics").text
            found = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            return found if found.get(ready) == 2.0 else None

        found = wait_for(metrics, "ondeck_ready_instances of web at 2")
        synced = ("ondeck_syncs_total", (("env", "default"), ("result", "Succeeded")))
        assert found[synced] >= 1
        assert found[("ondeck_reconcile_duration_seconds_count", (("env", "default"),))] > 0


# -- 9. logs, 10. manual sync -----------------------------------------------------------------------


def test_logs_show_stdout_and_stderr_of_each_instance(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    ids = list(pids(od))

    def complete() -> str | None:
        out = od.cli("logs", "web").stdout
        lines = out.splitlines()
        # each line names its environment and instance (issue 9: `[env/instance]`)
        wanted = [f"[default/{i}] starting version=1.0.0" for i in ids]
        wanted += [f"[default/{i}] to stderr" for i in ids]
        return out if all(any(line.startswith(w) for line in lines) for w in wanted) else None

    out = wait_for(complete, "stdout and stderr lines of both instances in `ondeck logs web`")
    assert all(line.startswith(tuple(f"[default/{i}] " for i in ids)) for line in out.splitlines())


def test_without_auto_sync_a_commit_waits_for_sync(repo: Repo, ondeck: Factory) -> None:
    sha1 = repo.commit("first", SIMPLE_SPEC)
    od = ondeck(repo.path, "--no-auto-sync")
    od.wait_synced(sha1)
    before = pids(od)
    sha2 = repo.commit("second", SIMPLE_SPEC.replace('"1.0.0"', '"2.0.0"'))

    def pending() -> dict[str, Any] | None:
        e = od.env_status()
        return e if (e["pending_commit"] or {}).get("sha") == sha2 else None

    env = wait_for(pending, "the new commit to show as pending")
    assert env["sync"] == "OutOfSync" and env["live_revision"] == sha1
    assert env["pending_commit"]["message"] == "second"
    with api_of(od) as api:
        seen = api.get("/api/v1/status").json()["source"]["last_fetch"]
        wait_for(
            lambda: api.get("/api/v1/status").json()["source"]["last_fetch"] > seen, "another poll"
        )
    env = od.env_status()
    assert (env["sync"], env["live_revision"]) == ("OutOfSync", sha1), "a poll applied the commit"
    assert pids(od) == before and all(alive(p) for p in before.values())

    assert od.cli("sync", "--wait").returncode == 0
    env = od.env_status()
    assert (env["sync"], env["live_revision"], env["pending_commit"]) == ("Synced", sha2, None)
    assert not set(pids(od).values()) & set(before.values())
    assert {d["version"] for d in served_by_all(od)} == {"2.0.0"}
    assert sync_of(od, sha2)["trigger"] == "cli"
