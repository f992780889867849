"""`ondeck up REPO` without --env runs the base spec as `default`; when the spec defines
environments (which then run nowhere) it says so, once, in the log and the events."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

ENVS = "environments:\n  staging: {}\n  production: {}\n"


def _notes(od: Ondeck) -> list[str]:
    api = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    answer = httpx.get(
        f"{api}/api/v1/events", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return [e["message"] for e in answer.json()["events"] if e["kind"] == "note"]


def test_defined_environments_that_run_nowhere_are_pointed_out(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    first = repo.commit("with environments", SIMPLE_SPEC + ENVS)
    od = ondeck(repo.path)
    od.wait_synced(first)
    (note,) = wait_for(lambda: _notes(od), "the note")
    assert "defines environments (staging, production)" in note and "--env NAME" in note
    second = repo.commit("again", SIMPLE_SPEC.replace('"1.0.0"', '"1.0.1"') + ENVS)
    od.cli("sync", "--wait")
    od.wait_synced(second)
    assert len(_notes(od)) == 1  # once, not at every revision
