"""HostFileWatch: `ondeck up --host-file` reads the host file again only when it changed.

A plain file by its stat, every call; `REPO#PATH` by the head commit, fetched
at most every `poll` seconds (a settable clock stands in for time). A bad
version raises once, then counts as seen until the next change.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ondeck.errors import SpecError
from ondeck.source.hostfile import HostFileWatch, parse_ref

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "A",
    "GIT_AUTHOR_EMAIL": "a@x",
    "GIT_COMMITTER_NAME": "A",
    "GIT_COMMITTER_EMAIL": "a@x",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def commit(repo: Path, text: str) -> str:
    (repo / "web1.yaml").write_text(text)
    for args in (["add", "-A"], ["commit", "-q", "-m", "host"]):
        subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True)
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=GIT_ENV, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def test_a_plain_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text("apps: {shop: {repo: /srv/shop.git}}\n")
    watch = HostFileWatch(parse_ref(str(path)), tmp_path / "state")
    assert list(watch.load().host.apps) == ["shop"]
    assert watch.changed() is None

    path.write_text("apps: {shop: {repo: /srv/shop.git}, blog: {repo: /srv/blog.git}}\n")
    read = watch.changed()
    assert read is not None and list(read.host.apps) == ["shop", "blog"] and read.revision is None
    assert watch.changed() is None

    path.write_text("apps: {shop: {rpo: x}}\n")
    with pytest.raises(SpecError, match=r"h\.yaml:1:"):
        watch.changed()
    assert watch.changed() is None  # said once
    path.write_text("apps: {}\n")
    again = watch.changed()
    assert again is not None and again.host.apps == {}


def test_a_file_in_a_repo_is_fetched_every_poll_and_read_at_a_new_commit(tmp_path: Path) -> None:
    repo = tmp_path / "hosts"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, env=GIT_ENV, check=True)
    first = commit(repo, "apps: {shop: {repo: /srv/shop.git}}\n")
    clock = Clock()
    watch = HostFileWatch(parse_ref(f"{repo}#web1.yaml"), tmp_path / "state", 10.0, clock)
    assert watch.load().revision == first

    second = commit(repo, "apps: {blog: {repo: /srv/blog.git}}\n")
    clock.now += 9
    assert watch.changed() is None  # not fetched yet
    clock.now += 1
    read = watch.changed()
    assert read is not None and read.revision == second and list(read.host.apps) == ["blog"]
    clock.now += 10
    assert watch.changed() is None  # fetched, same commit

    commit(repo, "apps: [nope]\n")
    clock.now += 10
    with pytest.raises(SpecError, match=r"web1\.yaml"):
        watch.changed()
    clock.now += 10
    assert watch.changed() is None
