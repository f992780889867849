"""Services' pinned code against real git: app repositories mirrored, refs resolved or refused."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.source.code import CodeRepos, mirror_dir
from ondeck.source.git import GitSource
from ondeck.spec.model import CodeSource


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
    }
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip()


def repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "change")
    return git(path, "rev-parse", "HEAD")


@pytest.fixture
def code(tmp_path: Path) -> CodeRepos:
    repo(tmp_path / "deploy", {"ondeck.yaml": "app: shop\n", "web.py": "one\n"})
    deploy = GitSource(str(tmp_path / "deploy"), tmp_path / "state" / "deploy.git")
    deploy.fetch()
    return CodeRepos(deploy, tmp_path / "state")


def test_an_app_repo_is_mirrored_and_its_ref_resolved(tmp_path: Path, code: CodeRepos) -> None:
    app = tmp_path / "app"
    one = repo(app, {"src/web.py": "one\n"})
    found = code.resolve("web", CodeSource(repo=str(app), ref="main", path="src"))
    assert (found.sha, found.follows, found.path, found.repo) == (one, True, "src", str(app))
    assert (mirror_dir(tmp_path / "state", str(app)) / "HEAD").is_file()
    two = repo(app, {"src/web.py": "two\n"})
    assert code.resolve("web", CodeSource(repo=str(app), ref="main")).sha == one  # same round
    code.new_round()
    again = code.resolve("web", CodeSource(repo=str(app), ref="main", path="src"))
    assert again.sha == two and again.tree != found.tree


def test_a_ref_that_names_nothing_names_service_ref_and_repo(
    tmp_path: Path, code: CodeRepos
) -> None:
    app = tmp_path / "app"
    repo(app, {"web.py": "one\n"})
    with pytest.raises(UserError, match=f"service web: source ref 'v9' does not resolve in {app}"):
        code.resolve("web", CodeSource(repo=str(app), ref="v9"))
    with pytest.raises(UserError, match="source ref 'v9' does not resolve in this repository"):
        code.resolve("web", CodeSource(ref="v9"))


def test_an_unreachable_app_repo_refuses_until_it_has_a_mirror_then_the_mirror_serves(
    tmp_path: Path, code: CodeRepos, caplog: pytest.LogCaptureFixture
) -> None:
    app = tmp_path / "app"
    with pytest.raises(UserError, match=f"service api: cannot fetch its source repo {app}"):
        code.resolve("api", CodeSource(repo=str(app), ref="main"))
    with pytest.raises(UserError, match="cannot fetch"):  # tried again, not taken as fetched
        code.resolve("web", CodeSource(repo=str(app), ref="main"))
    one = repo(app, {"web.py": "one\n"})
    assert code.resolve("web", CodeSource(repo=str(app), ref="main")).sha == one
    app.rename(tmp_path / "gone")
    caplog.set_level(logging.WARNING, "ondeck")
    for _ in range(3):
        code.new_round()
        assert code.resolve("web", CodeSource(repo=str(app), ref="main")).sha == one
    assert len([r for r in caplog.records if "using its mirror" in r.message]) == 1


def test_a_followed_branch_of_the_deploy_repo_ignores_spec_only_commits(
    tmp_path: Path, code: CodeRepos
) -> None:
    first = git(tmp_path / "deploy", "rev-parse", "HEAD")
    repo(tmp_path / "deploy", {"ondeck.yaml": "app: shop\n# replicas\n"})
    git(tmp_path / "deploy", "tag", "later")
    code.deploy.fetch()
    assert code.resolve("web", CodeSource(ref="main")).sha == first  # the code did not move
    assert code.resolve("web", CodeSource(ref="later")).sha != first  # a tag is what it names
    changed = repo(tmp_path / "deploy", {"web.py": "two\n"})
    code.deploy.fetch()
    assert code.resolve("web", CodeSource(ref="main")).sha == changed
