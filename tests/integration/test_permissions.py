"""The state dir is its user's alone: 0700, files 0600, logs 0600 or 0640 to a chosen group.

On 2026-12-01 the state dir was 0755 and the db, the instance logs and each
release's copy of `ondeck.yaml` 0644: any local user read them. Real files,
a real process started by the process runtime, real chmod/chown.
"""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import sys
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.permissions import LogAccess, log_access, secure_state_dir
from ondeck.releases import drift, prepare
from ondeck.runtime.base import InstanceSpec
from ondeck.runtime.process import ProcessRuntime


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _old_state_dir(root: Path) -> Path:
    """A state dir as ondeck left it before: world-readable everywhere."""
    state = root / "state"
    for name in ("logs/shop/default", "releases/shop/default/web/abc", "data/shop/default"):
        (state / name).mkdir(parents=True)
    files = {
        "ondeck.db": "db",
        "ondeck.db-wal": "wal",
        "token": "t",
        "api.json": "{}",
        "logs/shop/default/web-1.log": "DATABASE_URL=postgres://app:pw@db\n",
        "logs/router.log": "",
        "releases/shop/default/web/abc/ondeck.yaml": "app: shop\n",
        "data/shop/default/app.sqlite": "",
    }
    for name, text in files.items():
        (state / name).write_text(text)
        os.chmod(state / name, 0o644)
    for path in [state, *state.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o755)
    return state


def test_an_old_state_dir_is_made_private_at_start(tmp_path: Path) -> None:
    state = _old_state_dir(tmp_path)
    fixed = secure_state_dir(state, LogAccess())
    assert _mode(state) == 0o700
    for name in ("ondeck.db", "ondeck.db-wal", "token", "api.json", "logs/router.log"):
        assert _mode(state / name) == 0o600, name
    assert _mode(state / "logs/shop/default/web-1.log") == 0o600
    assert _mode(state / "logs/shop") == 0o700
    # Releases keep their exported modes (part of drift), app data the app's: the 0700 dir
    # above them is what closes them.
    assert _mode(state / "releases/shop/default/web/abc/ondeck.yaml") == 0o644
    assert _mode(state / "data/shop/default/app.sqlite") == 0o644
    assert state in fixed
    assert secure_state_dir(state, LogAccess()) == []  # nothing left to fix


def test_each_app_of_a_host_file_is_walked_like_a_state_dir(tmp_path: Path) -> None:
    """`ondeck up --host-file` keeps each app in apps/NAME/: its releases keep their modes
    (a chmod there was drift, and every instance was replaced at each restart)."""
    host = tmp_path / "host"
    shop = _old_state_dir(host / "apps")
    secure_state_dir(host, LogAccess())
    assert _mode(host / "apps") == 0o700
    assert _mode(shop / "ondeck.db") == 0o600
    assert _mode(shop / "logs/shop/default/web-1.log") == 0o600
    assert _mode(shop / "releases/shop/default/web/abc/ondeck.yaml") == 0o644
    assert _mode(shop / "data/shop/default/app.sqlite") == 0o644


def _a_group_of_mine() -> grp.struct_group:
    return grp.getgrgid(os.getgid())


def test_logs_may_be_shared_with_one_group(tmp_path: Path) -> None:
    state = _old_state_dir(tmp_path)
    group = _a_group_of_mine()
    access = log_access({"ONDECK_LOG_GROUP": group.gr_name})
    assert access.gid == group.gr_gid
    secure_state_dir(state, access)
    log = state / "logs/shop/default/web-1.log"
    assert (_mode(log), log.stat().st_gid) == (0o640, group.gr_gid)
    assert _mode(state / "logs/shop") == 0o750
    assert _mode(state / "ondeck.db") == 0o600  # only logs are shared


def test_an_unknown_log_group_is_a_user_error() -> None:
    with pytest.raises(UserError, match="ONDECK_LOG_GROUP=no-such-group-x: no such group"):
        log_access({"ONDECK_LOG_GROUP": "no-such-group-x"})


def test_an_instance_log_is_created_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONDECK_LOG_GROUP", raising=False)

    async def scenario() -> Path:
        runtime = ProcessRuntime(tmp_path / "state", lambda _: None)
        spec = InstanceSpec(
            id="web-1",
            app="shop",
            env="test",
            service="web",
            argv=(sys.executable, "-c", "print('started')"),
            environ={"PATH": os.environ["PATH"]},
            cwd=tmp_path,
            log_path=tmp_path / "state" / "logs" / "web-1.log",
        )
        await runtime.start(spec)
        runtime.close()
        return spec.log_path

    assert _mode(asyncio.run(scenario())) == 0o600


class _Tree:
    def export(self, rev: str, path: str, dest: Path) -> None:
        dest.mkdir(parents=True)
        (dest / "ondeck.yaml").write_text("app: shop\nservices: {}\n")
        (dest / "app.py").write_text("print('hi')\n")


def test_a_release_copy_of_the_spec_is_0600_and_no_drift(tmp_path: Path) -> None:
    dest = prepare(_Tree(), "rev", "", tmp_path / "r", None, {})
    assert _mode(dest / "ondeck.yaml") == 0o600
    assert _mode(dest / "app.py") != 0o600  # the rest keeps git's modes
    assert drift(dest) == []
