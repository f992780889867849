"""Day-two CLI items against a real `ondeck up`: status width, logs -f, local commits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from conftest import SIMPLE_SPEC, Ondeck, Repo, git, wait_for

LONG = "a commit message that goes on and on " * 6


def test_status_fits_80_columns_with_a_long_commit_message(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit(LONG.strip(), SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    od.env["COLUMNS"] = "80"
    shown = od.cli("status").stdout
    assert sha[:12] in shown
    too_wide = [line for line in shown.splitlines() if len(line) > 80]
    assert too_wide == []


def test_logs_follow_prefixes_the_environment_and_picks_up_new_instances(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    sha = repo.commit("one replica", SIMPLE_SPEC.replace("replicas: 2", "replicas: 1"))
    od = ondeck(repo.path)
    od.wait_synced(sha)
    first = {i["id"] for i in od.service()["instances"]}  # type: ignore[index]
    follow = subprocess.Popen(
        [sys.executable, "-m", "ondeck", "logs", "web", "-f", "-n", "1000"],
        env=od.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: lines, "the first lines of logs -f")
        assert all(line.startswith("[default/web-") for line in lines), lines
        sha = repo.commit("two replicas", SIMPLE_SPEC)
        od.wait_synced(sha)
        new = {i["id"] for i in od.service()["instances"]} - first  # type: ignore[index]
        assert new
        wait_for(
            lambda: [ln for ln in lines for i in new if ln.startswith(f"[default/{i}]")],
            f"lines of the instances started after the follow began ({new})",
        )
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        reader.join(timeout=10)


def test_a_commit_to_the_watched_checkout_needs_no_push(
    repo: Repo, ondeck: Callable[..., Ondeck], tmp_path: Path
) -> None:
    sha = repo.commit("first", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    env = {**od.env, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com"}
    env |= {"GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}
    done = subprocess.run(
        [sys.executable, "-m", "ondeck", "set-version", "web=2.0.0", "--repo", str(repo.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "not pushed" not in done.stderr
    assert "the local ondeck is syncing it" in done.stderr
    head = git(repo.path, "rev-parse", "HEAD")
    od.wait_synced(head)
    # elsewhere (a clone nobody watches), the advice stands
    other = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo.path), str(other))
    elsewhere = subprocess.run(
        [sys.executable, "-m", "ondeck", "set-version", "web=3.0.0", "--repo", str(other)],
        env={**env, "GIT_CONFIG_GLOBAL": os.devnull},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "not pushed: add --push" in elsewhere.stderr
