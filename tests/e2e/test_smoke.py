"""The first promise end to end: a commit becomes running, healthy instances."""

from __future__ import annotations

from collections.abc import Callable

from conftest import SIMPLE_SPEC, Ondeck, Repo


def test_commit_is_deployed_and_status_names_it(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    env = od.wait_synced(sha)
    assert env["commit"]["message"] == "first release"
    assert env["commit"]["author"].startswith("Ada Lovelace")
    web = od.service("web")
    assert web is not None
    assert web["replicas"] == {"desired": 2, "ready": 2}
    assert {i["revision"] for i in web["instances"]} == {sha}
    assert all(i["pid"] and i["port"] for i in web["instances"])
