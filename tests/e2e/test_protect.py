"""Who may change production: an environment that deploys only signed commits."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import SIMPLE_SPEC, Ondeck, Repo, git, wait_for


def _key(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"{name}@example.com",
            "-f",
            str(key),
        ],
        check=True,
    )
    return key


def _signed_commit(repo: Repo, key: Path, message: str, spec: str) -> str:
    repo.write("ondeck.yaml", spec)
    git(repo.path, "add", "-A")
    git(
        repo.path,
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={key}.pub",
        "commit",
        "-q",
        "-S",
        "-m",
        message,
    )
    return git(repo.path, "rev-parse", "HEAD")


def _spec(admin: Path, version: str) -> str:
    pub = (admin.parent / f"{admin.name}.pub").read_text().strip()
    return SIMPLE_SPEC.replace('"1.0.0"', f'"{version}"') + (
        f'environments:\n  production:\n    protect:\n      signed_by:\n        - "{pub}"\n'
    )


def test_production_deploys_only_commits_signed_by_an_allowed_key(
    tmp_path: Path, repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    admin, intruder = _key(tmp_path, "admin"), _key(tmp_path, "intruder")
    first = _signed_commit(repo, admin, "signed 1.0.0", _spec(admin, "1.0.0"))
    od = ondeck(repo.path, "--env", "production")
    od.wait_synced(first, env="production")
    pids = {i["pid"] for i in od.service("web", env="production")["instances"]}  # type: ignore[index]

    unsigned = repo.commit("unsigned 2.0.0", _spec(admin, "2.0.0"))
    refused = wait_for(
        lambda: (
            (e := od.env_status("production"))["error"]
            and e["error_commit"]["sha"] == unsigned
            and e
        ),
        "the unsigned commit to be refused",
    )
    assert "not signed" in refused["error"]
    assert refused["live_revision"] == first
    assert {i["pid"] for i in od.service("web", env="production")["instances"]} == pids  # type: ignore[index]

    # An unsigned commit cannot lift the rule: the running release's rules still apply.
    lifted = repo.commit("drop protection", SIMPLE_SPEC.replace('"1.0.0"', '"3.0.0"'))
    wait_for(
        lambda: (od.env_status("production")["error_commit"] or {}).get("sha") == lifted,
        "the rule-lifting commit to be refused",
    )

    forged = _signed_commit(repo, intruder, "signed by someone else", _spec(admin, "4.0.0"))
    wait_for(
        lambda: (od.env_status("production")["error_commit"] or {}).get("sha") == forged,
        "the commit signed by an unknown key to be refused",
    )
    assert "unknown key" in od.env_status("production")["error"]

    good = _signed_commit(repo, admin, "signed 5.0.0", _spec(admin, "5.0.0"))
    env = od.wait_synced(good, env="production")
    assert env["error"] is None
    web = od.service("web", env="production")
    assert web is not None and web["version"] == "5.0.0"
