"""`ondeck install`: one unit set per host, running the host file; never a silent overwrite.

The unit names do not depend on the app. A second install for another app (or
the move from an older per-app install to the host file) is refused with what
to do, the units left byte for byte, unless --replace. systemd-analyze checks
the units written.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"


def ondeck(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def units_of(unit_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(unit_dir.iterdir())}


def verify(unit_dir: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert not CI, "CI must have systemd-analyze (make test installs systemd)"
        pytest.skip("systemd-analyze is not installed")
    paths = [str(p) for p in sorted(unit_dir.iterdir())]
    done = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ONDECK_STATE_DIR": str(tmp_path / "state")}


def test_the_host_file_is_installed_as_one_unit_set(tmp_path: Path, env: dict[str, str]) -> None:
    units = tmp_path / "units"
    missing = ondeck("install", "--unit-dir", str(units), env=env)
    assert missing.returncode == 1 and "ondeck app add" in missing.stderr
    assert not units.exists()

    ondeck("app", "add", "--no-check", "shop", "/srv/git/shop.git", env=env)
    ondeck("app", "add", "--no-check", "blog", "/srv/git/blog.git", env=env)
    done = ondeck("install", "--unit-dir", str(units), "--listen", "0.0.0.0:80", env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(units_of(units)) == ["ondeck-router.service", "ondeck.service"]
    argv = exec_start(units / "ondeck.service")
    host_file = str(tmp_path / "state" / "ondeck.host.yaml")
    assert argv[argv.index("up") + 1 :][:2] == ["--host-file", host_file]
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path / "state")
    assert "shop" not in units_of(units)["ondeck.service"]  # nothing names an app
    verify(units)

    again = ondeck("install", "--unit-dir", str(units), "--listen", "0.0.0.0:80", env=env)
    assert again.returncode == 0, again.stderr  # the same install again is fine
    assert "systemctl restart" in again.stderr

    bad = ondeck("install", "--unit-dir", str(units), "--env", "staging", env=env)
    assert bad.returncode == 1 and "per app" in bad.stderr
    tls = ondeck("install", "--unit-dir", str(units), "--listen-tls", "0.0.0.0:443", env=env)
    assert tls.returncode == 1 and "not supported yet" in tls.stderr
    assert "--listen-tls" not in units_of(units)["ondeck.service"]


def test_a_second_install_for_another_app_does_not_overwrite_the_first(
    tmp_path: Path, env: dict[str, str]
) -> None:
    units = tmp_path / "units"
    first = ondeck("install", "--repo", "/srv/git/shop.git", "--unit-dir", str(units), env=env)
    assert first.returncode == 0, first.stderr
    before = units_of(units)

    second = ondeck("install", "--repo", "/srv/git/blog.git", "--unit-dir", str(units), env=env)
    assert second.returncode == 1
    assert "/srv/git/shop.git" in second.stderr and "host file" in second.stderr
    assert units_of(units) == before

    other_state = ondeck("install", "--repo", "/srv/git/shop.git", "--unit-dir", str(units),
                         "--state-dir", str(tmp_path / "elsewhere"), env=env)  # fmt: skip
    assert other_state.returncode == 1 and units_of(units) == before

    replaced = ondeck("install", "--repo", "/srv/git/blog.git", "--unit-dir", str(units),
                      "--replace", env=env)  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert "/srv/git/blog.git" in exec_start(units / "ondeck.service")


def test_an_older_per_app_install_is_explained_not_overwritten(
    tmp_path: Path, env: dict[str, str]
) -> None:
    units = tmp_path / "units"
    ondeck("install", "--repo", "/srv/git/shop.git", "--unit-dir", str(units), env=env)
    before = units_of(units)
    host_file = tmp_path / "web1.yaml"
    ondeck(
        "app",
        "add",
        "--no-check",
        "shop",
        "/srv/git/shop.git",
        "--host-file",
        str(host_file),
        env=env,
    )

    moved = ondeck("install", "--host-file", str(host_file), "--unit-dir", str(units), env=env)
    assert moved.returncode == 1
    for step in ("systemctl stop ondeck.service", "ondeck down --state-dir", "--replace"):
        assert step in moved.stderr
    assert units_of(units) == before

    (tmp_path / "state" / "repos").mkdir(parents=True)  # the one app's mirror: its state
    same_state = ondeck("install", "--host-file", str(host_file), "--unit-dir", str(units),
                        env=env)  # fmt: skip
    assert same_state.returncode == 1 and "--state-dir NEW" in same_state.stderr
    replaced = ondeck("install", "--host-file", str(host_file), "--unit-dir", str(units),
                      "--replace", env=env)  # fmt: skip
    assert replaced.returncode == 1 and "a state dir of its own" in replaced.stderr
    assert units_of(units) == before

    host_state = ("--state-dir", str(tmp_path / "host-state"))
    done = ondeck("install", "--host-file", str(host_file), "--unit-dir", str(units),
                  "--replace", *host_state, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = exec_start(units / "ondeck.service")
    assert argv[argv.index("--host-file") + 1] == str(host_file)


def test_a_host_file_in_a_repo_keeps_its_credentials_out_of_the_unit(
    tmp_path: Path, env: dict[str, str]
) -> None:
    units = tmp_path / "units"
    bare = tmp_path / "hosts.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True)
    (seed / "web1.yaml").write_text("apps: {}\n")
    git = ["git", "-C", str(seed), "-c", "user.name=A", "-c", "user.email=a@x"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "host"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    done = ondeck("install", "--host-file", f"{bare}#web1.yaml", "--unit-dir", str(units), env=env)
    assert done.returncode == 0, done.stderr
    argv = exec_start(units / "ondeck.service")
    assert argv[argv.index("--host-file") + 1] == f"{bare}#web1.yaml"

    from ondeck.install import write_units

    secret = "https://ci:hunter2@git.example/hosts.git#web1.yaml"
    written = write_units(tmp_path / "u2", None, [], tmp_path / "s2", "127.0.0.1:7070",
                          host_file=secret)  # fmt: skip
    for path in written:
        assert "hunter2" not in path.read_text()
    argv = exec_start(tmp_path / "u2" / "ondeck.service")
    assert argv[argv.index("--host-file") + 1] == "https://git.example/hosts.git#web1.yaml"
    assert "hunter2" in (tmp_path / "s2" / "git-credentials").read_text()
