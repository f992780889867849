"""`ondeck app add|remove|list` on real files and real git repos (the `ondeck` CLI process).

A plain host file is replaced whole, comments and order kept; a refused edit
leaves its bytes as they were. `REPO#PATH` is a file in a git repo: edits are
one-line commits (pushed with --push), and `read_host_file` reads the branch head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.source.hostfile import parse_ref, read_host_file

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def ondeck(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **GIT_ENV, **env},
        timeout=120,
        check=False,
    )


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ONDECK_STATE_DIR": str(tmp_path / "state")}


def test_add_list_remove_in_the_state_dir_by_default(tmp_path: Path, env: dict[str, str]) -> None:
    blog = tmp_path / "blog.git"
    blog.mkdir()
    added = ondeck(
        "app",
        "add",
        "--no-check",
        "shop",
        "https://git.example/shop.git",
        "--env",
        "staging",
        "--env",
        "production",
        "--branch",
        "main",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert "added app shop" in added.stdout
    ondeck(
        "app", "add", "--no-check", "blog", "blog.git", "--path", "deploy", env=env, cwd=tmp_path
    )
    host_file = tmp_path / "state" / "ondeck.host.yaml"
    assert host_file.stat().st_mode & 0o777 == 0o600
    text = host_file.read_text()
    assert text.splitlines()[1:] == [
        "apps:",
        '  shop: {repo: "https://git.example/shop.git", branch: main, envs: [staging, production]}',
        f"  blog: {{repo: {blog}, path: deploy}}",  # relative to where it was typed: absolute
    ]
    listed = json.loads(ondeck("app", "list", "--json", env=env).stdout)
    assert listed == {
        "host_file": str(host_file),
        "revision": None,
        "apps": [
            {
                "name": "shop",
                "repo": "https://git.example/shop.git",
                "branch": "main",
                "path": "",
                "envs": ["staging", "production"],
            },
            {"name": "blog", "repo": str(blog), "branch": None, "path": "deploy", "envs": []},
        ],
    }
    human = ondeck("app", "list", env=env).stdout
    assert "shop" in human and "staging, production" in human and "every environment" in human

    removed = ondeck("app", "remove", "shop", env=env)
    assert removed.returncode == 0, removed.stderr
    assert [
        a["name"] for a in json.loads(ondeck("app", "list", "--json", env=env).stdout)["apps"]
    ] == ["blog"]


def test_refused_edits_write_nothing_and_say_why(tmp_path: Path, env: dict[str, str]) -> None:
    host_file = tmp_path / "hosts" / "web1.yaml"
    host_file.parent.mkdir()
    original = "# web1\napps:\n  shop: {repo: /srv/shop.git}   # the shop\n"
    host_file.write_text(original)
    flag = ("--host-file", str(host_file))
    cases = [
        (("app", "add", "--no-check", "shop", "/elsewhere.git", *flag), "already in"),
        (("app", "add", "--no-check", "Shop", "/x.git", *flag), "not a valid app name"),
        (("app", "add", "--no-check", "wiki", "/x.git", "--env", "Prod", *flag), "--env"),
        (("app", "add", "--no-check", "wiki", "/x.git", "--path", "../up", *flag), "--path"),
        (("app", "add", "--no-check", "wiki", "/x.git", "--push", *flag), "plain file"),
        (("app", "remove", "wiki", *flag), "no app 'wiki'"),
    ]
    for args, message in cases:
        done = ondeck(*args, env=env)
        assert done.returncode == 1, args
        assert message in done.stderr, (args, done.stderr)
        assert host_file.read_text() == original
    assert sorted(p.name for p in host_file.parent.iterdir()) == ["web1.yaml"]  # no temp left

    via_env = ondeck(
        "app",
        "add",
        "--no-check",
        "wiki",
        "/srv/wiki.git",
        env={**env, "ONDECK_HOST_FILE": str(host_file)},
    )
    assert via_env.returncode == 0, via_env.stderr
    assert host_file.read_text() == original + "  wiki: {repo: /srv/wiki.git}\n"


def test_a_host_file_in_a_checkout_is_committed_one_line(
    tmp_path: Path, env: dict[str, str]
) -> None:
    checkout = tmp_path / "hosts"
    checkout.mkdir()
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "commit", "-q", "--allow-empty", "-m", "start")
    ref = f"{checkout}#web1/ondeck.host.yaml"
    done = ondeck("app", "add", "--no-check", "shop", "/srv/shop.git", "--host-file", ref, env=env)
    assert done.returncode == 0, done.stderr
    assert "committed" in done.stdout
    assert git(checkout, "log", "-1", "--format=%s") == "app(shop): add /srv/shop.git"
    assert git(checkout, "status", "--porcelain") == ""
    ondeck("app", "add", "--no-check", "blog", "/srv/blog.git", "--host-file", ref, env=env)
    stat = git(checkout, "show", "--stat", "--format=", "HEAD")
    assert "1 insertion(+)" in stat and "deletion" not in stat

    read = read_host_file(ref, tmp_path / "state")
    assert list(read.host.apps) == ["shop", "blog"]
    assert read.revision == git(checkout, "rev-parse", "HEAD")
    listed = json.loads(ondeck("app", "list", "--json", "--host-file", ref, env=env).stdout)
    assert listed["revision"] == read.revision and len(listed["apps"]) == 2

    ondeck("app", "remove", "shop", "--host-file", ref, env=env)
    assert git(checkout, "log", "-1", "--format=%s") == "app(shop): remove"
    assert list(read_host_file(ref, tmp_path / "state").host.apps) == ["blog"]


def test_a_host_file_in_a_remote_is_pushed(tmp_path: Path, env: dict[str, str]) -> None:
    bare = tmp_path / "hosts.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    (seed / "ondeck.host.yaml").write_text("# every host\napps: {}\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "empty host")
    git(seed, "push", "-q", "origin", "main")
    ref = f"{bare}#ondeck.host.yaml"

    unpushed = ondeck(
        "app", "add", "--no-check", "shop", "/srv/shop.git", "--host-file", ref, env=env
    )
    assert unpushed.returncode == 1 and "add --push" in unpushed.stderr
    pushed = ondeck(
        "app", "add", "--no-check", "shop", "/srv/shop.git", "--host-file", ref, "--push", env=env
    )
    assert pushed.returncode == 0, pushed.stderr
    assert git(bare, "log", "-1", "--format=%s", "main") == "app(shop): add /srv/shop.git"
    read = read_host_file(ref, tmp_path / "state")
    assert read.revision == git(bare, "rev-parse", "main")
    assert read.host.apps["shop"].repo == "/srv/shop.git"

    missing = parse_ref(f"{bare}#nope.yaml")
    with pytest.raises(UserError, match=r"no nope\.yaml at"):
        read_host_file(missing, tmp_path / "state")


def test_ref_forms(tmp_path: Path) -> None:
    assert parse_ref(str(tmp_path / "h.yaml")).repo is None
    odd = tmp_path / "a#b.yaml"
    odd.write_text("apps: {}\n")
    assert parse_ref(str(odd)).repo is None  # an existing file named with '#' is that file
    remote = parse_ref("https://u:pw@git.example/hosts.git#web1/h.yaml")
    assert (remote.repo, remote.path) == ("https://u:pw@git.example/hosts.git", "web1/h.yaml")
    assert "pw" not in remote.shown
    for bad in ("repo#", "#path", "repo#../x.yaml"):
        with pytest.raises(UserError):
            parse_ref(bad)
    with pytest.raises(UserError) as refused:
        parse_ref("https://u:pw@git.example/hosts.git#")
    assert "pw" not in str(refused.value)


def test_add_reads_the_apps_repo_first(tmp_path: Path, env: dict[str, str]) -> None:
    repo = tmp_path / "shop"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "deploy").mkdir()
    (repo / "deploy" / "ondeck.yaml").write_text(
        "app: shop\nservices: {web: {command: [python3, web.py]}}\n"
        "environments: {staging: {}, production: {}}\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "shop")
    host_file = tmp_path / "h.yaml"
    flag = ("--host-file", str(host_file))
    cases = [
        (("blog", str(repo), "--path", "deploy"), "says `app: shop`"),
        (("shop", str(repo)), "no ondeck.yaml"),
        (("shop", str(repo), "--path", "deploy", "--env", "qa"), "no environment qa"),
        (("shop", str(repo), "--path", "deploy", "--branch", "nope"), "'nope' not found"),
        (("shop", str(tmp_path / "nothing.git")), "--no-check"),
    ]
    for args, message in cases:
        done = ondeck("app", "add", *args, *flag, env=env)
        assert done.returncode == 1, args
        assert message in done.stderr, (args, done.stderr)
        assert not host_file.exists()
    ok = ondeck("app", "add", "shop", str(repo), "--path", "deploy", "--env", "staging", *flag,
                env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert f"shop: {{repo: {repo}, path: deploy, envs: [staging]}}" in host_file.read_text()


def test_list_masks_credentials_in_repo_urls(tmp_path: Path, env: dict[str, str]) -> None:
    url = "https://ci:hunter2@git.example/shop.git"
    added = ondeck("app", "add", "--no-check", "shop", url, env=env)
    assert added.returncode == 0, added.stderr
    assert "hunter2" not in added.stdout + added.stderr
    host_file = tmp_path / "state" / "ondeck.host.yaml"
    assert "hunter2" in host_file.read_text() and host_file.stat().st_mode & 0o077 == 0
    for args in (("app", "list"), ("app", "list", "--json")):
        shown = ondeck(*args, env=env)
        assert shown.returncode == 0 and "git.example/shop.git" in shown.stdout
        assert "hunter2" not in shown.stdout + shown.stderr, args
