"""A host file in a git repo (`ondeck up --host-file REPO#PATH`), edited by `ondeck app`.

Real repos and a real `ondeck up`: the host file lives in a checkout of its
own; `ondeck app add` and `app remove` commit there, and the running host
fetches the commit and starts or stops the app. Status names the commit the
apps were read from.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
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
    shown = od.cli("status").stdout.replace("\n", "")  # long paths wrap at 80 columns
    assert f"host file: {ref} at {head[:12]}" in shown

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


SECRET = "hook-secret-for-tests"


def _push(od: Ondeck, repo: Path, sha: str) -> httpx.Response:
    """A signed GitHub push event for `repo`'s main, to the host's one webhook URL."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {"clone_url": f"file://{repo}", "default_branch": "main"},
        }
    ).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": sha,
        "X-Hub-Signature-256": "sha256="
        + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    return httpx.post(f"{url}/hooks/github", content=body, headers=headers, timeout=10)


def test_one_webhook_url_wakes_the_host_file_and_each_apps_repo(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    shop, blog = Repo(tmp_path / "git" / "shop"), Repo(tmp_path / "git" / "blog")
    shop.commit("shop", SPEC.format(app="shop"))
    blog.commit("blog", SPEC.format(app="blog"))
    hosts = Repo(tmp_path / "hosts")
    hosts.write("ondeck.host.yaml", f"apps:\n  shop: {{repo: {shop.path}}}\n")
    hosts.commit("web1")
    ref = f"{hosts.path}#ondeck.host.yaml"
    od = ondeck("", "--host-file", ref, "--poll", "1h", "--webhook-secret", SECRET)
    wait_for(lambda: _synced(od, "shop"), "shop Synced and Healthy", timeout=60)

    od.cli("app", "add", "blog", str(blog.path), "--host-file", ref)
    head = git(hosts.path, "rev-parse", "HEAD")
    assert _push(od, hosts.path, head).json() == {"accepted": True}
    wait_for(lambda: _synced(od, "blog"), "blog started at the webhook", timeout=60)

    second = shop.commit("shop 1.1", SPEC.format(app="shop").replace("1.0.0", "1.1.0"))
    assert _push(od, shop.path, second).json() == {"accepted": True}
    wait_for(
        lambda: _synced(od, "shop") and _apps(od)["shop"]["live_revision"] == second,
        "shop at its new commit",
        timeout=60,
    )
    other = _push(od, tmp_path / "elsewhere", second).json()
    assert "another repository" in other["ignored"]
