"""Many apps on one host: `ondeck up --host-file` runs two apps from two repos behind one router.

Real git repos, a real `ondeck up` process, real instances and a real router on a
loopback port: each app has staging and production, routed by Host header. An app
removed from the host file is stopped and its routes go while the other serves
every request; an app claiming a host + path another serves is refused, naming both.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Ondeck, Repo, git, wait_for
from prometheus_client.parser import text_string_to_metric_families

from ondeck.runtime.process import allocate_port

SPEC = """\
app: {app}
services:
  web:
    command: ["python3", "web.py"]
    version: "{version}"
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
    rollout: {{drain: 2s}}
environments:
  staging:
    services: {{web: {{routes: [{{host: staging.{app}.localhost}}]}}}}
  production:
    services: {{web: {{routes: [{{host: {host}}}]}}}}
"""
ENVS = ("staging", "production")
MAX_REQUESTS = 4000  # the load loop's bound, whatever happens


def _repo(root: Path, app: str, version: str, host: str | None = None) -> Repo:
    repo = Repo(root / app)
    repo.commit("first", SPEC.format(app=app, version=version, host=host or f"{app}.localhost"))
    return repo


def _host_file(path: Path, apps: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the host file as an editor would: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"apps": apps}))  # JSON is YAML
    os.replace(tmp, path)


def _get(port: int, host: str) -> tuple[int, dict[str, Any] | str]:
    answer = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=10)
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, answer.text


def _version(port: int, host: str) -> str | None:
    body = _get(port, host)[1]
    return str(body.get("version")) if isinstance(body, dict) else None


def _envs(od: Ondeck) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["app"], e["name"]): e for e in od.status()["environments"]}


def _all_synced(od: Ondeck, wanted: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every environment of each app in `wanted` (app: revision) Synced and Healthy there."""
    envs = _envs(od)
    for app, revision in wanted.items():
        for env in ENVS:
            e = envs.get((app, env))
            if e is None or (e["sync"], e["health"], e["live_revision"]) != (
                "Synced",
                "Healthy",
                revision,
            ):
                return None
    return envs


@dataclass
class Load:
    """A bounded loop of concurrent requests to one host, counting every failure."""

    port: int
    host: str
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                with self.lock:
                    if self.ok + len(self.failed) >= MAX_REQUESTS:
                        return
                try:
                    answer = client.get(
                        f"http://127.0.0.1:{self.port}/", headers={"Host": self.host}
                    )
                    good = answer.status_code == 200 and answer.json().get("version") == "1.0.0"
                    outcome = "" if good else f"{answer.status_code} {answer.text[:100]}"
                except (httpx.HTTPError, ValueError) as err:
                    outcome = repr(err)
                with self.lock:
                    if outcome:
                        self.failed.append(outcome)
                    else:
                        self.ok += 1


@contextmanager
def load(port: int, host: str, workers: int = 4) -> Iterator[Load]:
    state = Load(port, host)
    threads = [threading.Thread(target=state.run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        for thread in threads:
            thread.join(timeout=30)


@pytest.fixture
def host(tmp_path: Path, ondeck: Callable[..., Ondeck]) -> Iterator[tuple[Ondeck, Path, int]]:
    """Two apps, shop (1.0.0) and blog (2.0.0), each from its own repo, on one router."""
    shop = _repo(tmp_path / "git", "shop", "1.0.0")
    blog = _repo(tmp_path / "git", "blog", "2.0.0")
    host_file = tmp_path / "ondeck.host.yaml"
    _host_file(
        host_file,
        {"shop": {"repo": str(shop.path)}, "blog": {"repo": "git/blog", "envs": list(ENVS)}},
    )
    port = allocate_port()
    od = ondeck("", "--host-file", str(host_file), "--listen", f"127.0.0.1:{port}")
    heads = {"shop": shop.commit("second"), "blog": blog.commit("second")}
    wait_for(lambda: _all_synced(od, heads), "both apps Synced and Healthy", timeout=90)
    yield od, host_file, port


def test_two_apps_behind_one_router_and_one_removed_while_the_other_serves(
    host: tuple[Ondeck, Path, int],
) -> None:
    od, host_file, port = host
    for app, version in (("shop", "1.0.0"), ("blog", "2.0.0")):
        for name in (f"{app}.localhost", f"staging.{app}.localhost"):
            code, body = _get(port, name)
            assert code == 200 and isinstance(body, dict) and body["version"] == version, body
    status = od.status()
    assert {a["name"] for a in status["apps"]} == {"shop", "blog"}
    assert (od.state_dir / "apps" / "blog" / "ondeck.db").exists()  # its own history
    # one app per command: its own API under /apps/NAME/, `--app` in the CLI
    history = json.loads(od.cli("history", "--app", "blog", "--json").stdout)["syncs"]
    assert history and all(row["env"] in ENVS for row in history)
    merged = json.loads(od.cli("history", "--json").stdout)["syncs"]  # every app, no --app
    assert {row["app"] for row in merged} == {"shop", "blog"}
    assert "blog/production" in od.cli("history").stdout
    for command in (
        ("logs", "web", "--env", "staging"),
        ("down", "--env", "staging"),
        ("history", "--env", "staging"),
    ):
        ambiguous = od.cli(*command, check=False)
        assert ambiguous.returncode != 0 and "--app" in ambiguous.stderr, command
    assert "[staging/" in od.cli("logs", "web", "--env", "staging", "--app", "shop").stdout
    api = json.loads((od.state_dir / "api.json").read_text())["url"]
    scrape = httpx.get(f"{api}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(scrape) for s in f.samples]
    assert {s.labels.get("app") for s in samples} >= {"shop", "blog"}  # one scrape, every app
    blog_pids = [
        i["pid"]
        for (app, _), e in _envs(od).items()
        if app == "blog"
        for s in e["services"]
        for i in s["instances"]
    ]
    assert len(blog_pids) == 2

    with load(port, "shop.localhost") as shop_load:
        wait_for(lambda: shop_load.ok >= 20, "the load loop to get going")
        _host_file(host_file, {"shop": {"repo": str(host_file.parent / "git" / "shop")}})
        wait_for(
            lambda: (
                _get(port, "blog.localhost")[0] == 503
                and _get(port, "staging.blog.localhost")[0] == 503
            ),
            "blog's routes to leave the router",
            timeout=60,
        )
        wait_for(lambda: not any(app == "blog" for app, _ in _envs(od)), "blog to leave the status")
        wait_for(lambda: not any(_alive(pid) for pid in blog_pids), "blog's instances to stop")
        before = shop_load.ok
        wait_for(lambda: shop_load.ok >= before + 20, "shop to serve on after the removal")
    assert shop_load.failed == []
    assert "No application is routed" in str(_get(port, "blog.localhost")[1])
    assert _get(port, "shop.localhost")[0] == 200
    assert {a["name"] for a in od.status()["apps"]} == {"shop"}


def test_an_app_claiming_a_host_another_app_serves_is_refused_naming_both(
    host: tuple[Ondeck, Path, int], tmp_path: Path
) -> None:
    od, host_file, port = host
    dup = _repo(tmp_path / "git", "dup", "9.9.9", host="shop.localhost")
    apps: dict[str, dict[str, Any]] = {
        "shop": {"repo": "git/shop"},
        "blog": {"repo": "git/blog", "envs": list(ENVS)},
        "dup": {"repo": str(dup.path), "envs": ["production"]},
    }
    _host_file(host_file, apps)

    def refused() -> str | None:
        e = _envs(od).get(("dup", "production"))
        return e["error"] if e is not None and e["error"] else None

    error = wait_for(refused, "dup's sync to be refused", timeout=60)
    assert "app 'dup'" in error and "app 'shop'" in error and "shop.localhost" in error
    code, body = _get(port, "shop.localhost")
    assert code == 200 and isinstance(body, dict) and body["version"] == "1.0.0"
    assert not [s for s in _envs(od)[("dup", "production")]["services"] if s["instances"]]
    history = json.loads(od.cli("history", "--app", "dup", "--json").stdout)["syncs"]
    assert history[0]["result"] == "Failed" and "app 'shop'" in history[0]["error"]


def test_down_of_one_app_holds_it_down_while_the_other_serves(
    host: tuple[Ondeck, Path, int],
) -> None:
    od, _, port = host
    down = od.cli("down", "--app", "blog")
    assert "held down" in down.stderr and "ondeck sync --app blog" in down.stderr
    assert _get(port, "blog.localhost")[0] == 503 and _get(port, "shop.localhost")[0] == 200
    held = _envs(od)[("blog", "production")]
    assert any("held down" in c for c in held["conditions"])
    assert not [i for s in held["services"] for i in s["instances"]]
    od.cli("sync", "--app", "blog", "--wait")
    wait_for(lambda: _get(port, "blog.localhost")[0] == 200, "blog serving again")
    assert _get(port, "shop.localhost")[0] == 200


def test_a_broken_spec_or_an_unreachable_repo_in_one_app_leaves_the_others_alone(
    host: tuple[Ondeck, Path, int],
) -> None:
    od, host_file, port = host
    blog = host_file.parent / "git" / "blog"
    spec = SPEC.format(app="blog", version="2.0.0", host="blog.localhost")
    (blog / "ondeck.yaml").write_text(spec.replace("command:", "comand:"))
    git(blog, "commit", "-qam", "broken")

    def refused() -> str | None:
        e = _envs(od)[("blog", "staging")]
        return e["error"] if e["error"] else None

    error = wait_for(refused, "blog's broken spec refused")
    assert "ondeck.yaml:4:" in error and "did you mean 'command'" in error
    assert _version(port, "blog.localhost") == "2.0.0"  # what ran runs on
    assert _version(port, "shop.localhost") == "1.0.0"
    apps: dict[str, dict[str, Any]] = {
        "shop": {"repo": "git/shop"},
        "blog": {"repo": "git/blog", "envs": list(ENVS)},
        "gone": {"repo": str(host_file.parent / "git" / "nowhere")},
    }
    _host_file(host_file, apps)
    rows = wait_for(
        lambda: [a for a in od.status()["apps"] if a["name"] == "gone" and a["error"]],
        "the unreachable app reported",
    )
    assert "nowhere" in rows[0]["error"]
    assert _version(port, "shop.localhost") == "1.0.0"
    assert _version(port, "blog.localhost") == "2.0.0"


def _pids(od: Ondeck, app: str, env: str) -> list[int]:
    e = _envs(od).get((app, env))
    return [i["pid"] for s in e["services"] for i in s["instances"]] if e else []


def test_an_entry_changed_restarts_its_app_without_restarting_what_stays(
    host: tuple[Ondeck, Path, int],
) -> None:
    od, host_file, port = host
    production, staging = _pids(od, "blog", "production"), _pids(od, "blog", "staging")
    shop = _pids(od, "shop", "production")
    apps: dict[str, Any] = {
        "shop": {"repo": "git/shop"},
        "blog": {"repo": "git/blog", "envs": ["production"]},
    }
    _host_file(host_file, apps)
    wait_for(lambda: ("blog", "staging") not in _envs(od), "blog's staging to leave the status")
    wait_for(lambda: not any(_alive(pid) for pid in staging), "blog's staging instance to stop")
    assert "No application is routed" in str(_get(port, "staging.blog.localhost")[1])
    wait_for(lambda: _pids(od, "blog", "production") == production, "blog production adopted")
    assert _version(port, "blog.localhost") == "2.0.0"
    assert _pids(od, "shop", "production") == shop


def test_a_broken_host_file_leaves_every_app_running(host: tuple[Ondeck, Path, int]) -> None:
    od, host_file, port = host
    # a commit to the second app's repo is known as watched here: no push, deployed at once
    blog = host_file.parent / "git" / "blog"
    edit = od.cli("set-version", "web=2.0.1", "--env", "staging", "--repo", str(blog))
    assert "no push needed" in edit.stderr and "syncing" in edit.stderr
    wait_for(lambda: _version(port, "staging.blog.localhost") == "2.0.1", "blog staging 2.0.1")
    host_file.write_text("apps:\n  shop: {repo: git/shop, brnch: main}\n")
    error = wait_for(
        lambda: (od.status().get("host_file") or {}).get("error"), "the host file refused"
    )
    assert ":2:" in error and "did you mean 'branch'" in error
    assert _get(port, "blog.localhost")[0] == 200 and _get(port, "shop.localhost")[0] == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _instance_of(od: Ondeck, app: str, env: str) -> dict[str, Any] | None:
    e = _envs(od).get((app, env))
    if e is None or (e["sync"], e["health"]) != ("Synced", "Healthy"):
        return None
    instances = [i for s in e["services"] for i in s["instances"]]
    return dict(instances[0]) if len(instances) == 1 else None


def _code_of(inst: dict[str, Any]) -> str:
    """What the instance's own working directory holds: the code it really runs."""
    return (Path(os.readlink(f"/proc/{inst['pid']}/cwd")) / "code.txt").read_text().strip()


def _runs(od: Ondeck, app: str, env: str, code: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        inst = _instance_of(od, app, env)
        return inst if inst is not None and _code_of(inst) == code else None

    return wait_for(check, f"{app}/{env} running code {code}", timeout=60)


def test_each_app_pins_its_code_per_environment_promote_and_rollback(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    """Code pinning (`source: {ref}`) in one app of a host: a code change reaches its
    staging only, `promote` moves exactly that code to its production, a rollback of
    production leaves staging alone, and the other app is never touched."""
    shop = Repo(tmp_path / "git" / "shop")
    shop.write("code.txt", "one\n")
    one = shop.commit("code one", SPEC.format(app="shop", version="1.0.0", host="shop.localhost"))
    blog = _repo(tmp_path / "git", "blog", "2.0.0")
    blog.write("code.txt", "blog\n")
    blog.commit("blog code")
    host_file = tmp_path / "ondeck.host.yaml"
    _host_file(host_file, {"shop": {"repo": "git/shop"}, "blog": {"repo": "git/blog"}})
    port = allocate_port()
    od = ondeck("", "--host-file", str(host_file), "--listen", f"127.0.0.1:{port}")
    od.cli("set-ref", f"web={one}", "--env", "production", "--repo", str(shop.path))
    production = _runs(od, "shop", "production", "one")
    blog_pids = {env: _runs(od, "blog", env, "blog")["pid"] for env in ENVS}

    shop.write("code.txt", "two\n")
    two = shop.commit("code two")
    staging = _runs(od, "shop", "staging", "two")  # staging follows main
    wait_for(
        lambda: (_envs(od)[("shop", "production")]["revision"] or "") == two, "production at two"
    )
    assert _runs(od, "shop", "production", "one")["pid"] == production["pid"]  # not moved

    promoted = od.cli("promote", "staging", "production", "--repo", str(shop.path)).stdout
    assert two in promoted
    production = _runs(od, "shop", "production", "two")  # exactly the code staging runs
    assert _runs(od, "shop", "staging", "two")["pid"] == staging["pid"]

    od.cli("rollback", "--env", "production", "--repo", str(shop.path))
    _runs(od, "shop", "production", "one")
    assert _runs(od, "shop", "staging", "two")["pid"] == staging["pid"]  # staging left alone
    assert {env: _runs(od, "blog", env, "blog")["pid"] for env in ENVS} == blog_pids
    code, body = _get(port, "staging.shop.localhost")
    assert code == 200 and isinstance(body, dict) and body["version"] == "1.0.0"
