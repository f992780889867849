"""A host file in a git repo (`ondeck up --host-file REPO#PATH`), edited by `ondeck app`.

Real repos and a real `ondeck up`: the host file lives in a checkout of its
own; `ondeck app add` and `app remove` commit there, and the running host
fetches the commit and starts or stops the app. Status names the commit the
apps were read from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Ondeck, Repo, git, wait_for

SPEC = """\
app: {app}
services:
  web:
    command: ["python3", "web.py"]
    version: "1.0.0"
    port: true
    health: {{http: /healthz, interval: 1s}}
    stop: {{grace: 5s}}
"""


def _apps(od: Ondeck) -> dict[str, dict[str, Any]]:
    return {e["app"]: e for e in od.status()["environments"]}


def _synced(od: Ondeck, app: str) -> bool:
    env = _apps(od).get(app)
    return env is not None and (env["sync"], env["health"]) == ("Synced", "Healthy")


def test_app_add_and_remove_commit_and_the_host_follows(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    shop, blog = Repo(tmp_path / "git" / "shop"), Repo(tmp_path / "git" / "blog")
    shop.commit("shop", SPEC.format(app="shop"))
    blog.commit("blog", SPEC.format(app="blog"))
    hosts = Repo(tmp_path / "hosts")
    hosts.commit("host web1", None)
    ref = f"{hosts.path}#web1/ondeck.host.yaml"
    cli_env = {"ONDECK_STATE_DIR": str(tmp_path / "cli-state")}

    first = Ondeck("", tmp_path / "x")  # the CLI only, with its own state dir
    first.env.update(cli_env)
    first.cli("app", "add", "shop", str(shop.path), "--host-file", ref)
    assert git(hosts.path, "log", "-1", "--format=%s") == f"app(shop): add {shop.path}"

    od = ondeck("", "--host-file", ref)
    wait_for(lambda: _synced(od, "shop"), "shop Synced and Healthy", timeout=60)
    head = git(hosts.path, "rev-parse", "HEAD")
    assert od.status()["host_file"]["revision"] == head

    first.cli("app", "add", "blog", str(blog.path), "--host-file", ref)
    wait_for(lambda: _synced(od, "blog"), "blog started from the new commit", timeout=60)
    assert od.status()["host_file"]["revision"] == git(hosts.path, "rev-parse", "HEAD")

    first.cli("app", "remove", "shop", "--host-file", ref)
    wait_for(lambda: "shop" not in _apps(od), "shop to leave the host", timeout=60)
    assert _synced(od, "blog")
    assert [a["name"] for a in od.status()["apps"]] == ["blog"]

    hosts.write("web1/ondeck.host.yaml", "apps: {blog: {rpo: x}}\n")
    hosts.commit("a typo")
    wait_for(
        lambda: (od.status()["host_file"] or {}).get("error"),
        "the broken host file to be reported",
        timeout=60,
    )
    assert _synced(od, "blog")  # a broken host file changes nothing


def test_up_without_repo_runs_the_host_file_app_add_wrote(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    shop = Repo(tmp_path / "git" / "shop")
    shop.commit("shop", SPEC.format(app="shop"))
    cli = Ondeck("", tmp_path / "state")
    missing = cli.cli("up", "--api", "127.0.0.1:0", check=False)
    assert missing.returncode == 1 and "ondeck app add NAME REPO" in missing.stderr
    cli.cli("app", "add", "shop", str(shop.path))

    od = ondeck("")  # `ondeck up` and nothing else: the state dir's ondeck.host.yaml
    wait_for(lambda: _synced(od, "shop"), "shop Synced and Healthy", timeout=60)
    assert od.status()["host_file"]["path"] == str(tmp_path / "state" / "ondeck.host.yaml")
