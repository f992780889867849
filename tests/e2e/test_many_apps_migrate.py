"""An app run alone (`ondeck up REPO`) joins a host file by moving its state dir under
apps/NAME/: its history, data and secrets come along (real processes, real git)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from conftest import Ondeck, wait_for
from test_many_apps import ENVS, _envs, _get, _host_file, _repo

from ondeck.runtime.process import allocate_port


def test_a_one_app_state_dir_moved_under_apps_keeps_its_history_and_data(
    tmp_path: Path, ondeck: Callable[..., Ondeck]
) -> None:
    shop = _repo(tmp_path / "git", "shop", "1.0.0")
    alone = ondeck(shop.path, "--env", "staging", "--env", "production", state="alone")
    head = shop.commit("second")
    for env in ENVS:
        alone.wait_synced(head, env=env, timeout=60)
    data = alone.state_dir / "data" / "shop" / "production"
    (data / "kept.txt").write_text("orders\n")
    before = json.loads(alone.cli("history", "--json").stdout)["syncs"]
    alone.cli("down")
    wait_for(lambda: alone.proc is not None and alone.proc.poll() is not None, "ondeck down")

    host_state = tmp_path / "state"
    (host_state / "apps").mkdir(parents=True)
    shutil.move(str(alone.state_dir), host_state / "apps" / "shop")
    host_file = tmp_path / "ondeck.host.yaml"
    _host_file(host_file, {"shop": {"repo": "git/shop"}})
    port = allocate_port()
    od = ondeck("", "--host-file", str(host_file), "--listen", f"127.0.0.1:{port}")

    def synced() -> bool:
        envs = _envs(od)
        return all(
            (e := envs.get(("shop", env))) is not None
            and (e["sync"], e["health"], e["live_revision"]) == ("Synced", "Healthy", head)
            for env in ENVS
        )

    wait_for(synced, "shop Synced in the host", timeout=90)
    code, body = _get(port, "shop.localhost")
    assert code == 200 and isinstance(body, dict) and body["revision"] == head
    after = json.loads(od.cli("history", "--app", "shop", "--json").stdout)["syncs"]
    assert {r["id"] for r in before} <= {r["id"] for r in after}  # its history came along
    inst = next(i for s in _envs(od)[("shop", "production")]["services"] for i in s["instances"])
    environ = Path(f"/proc/{inst['pid']}/environ").read_bytes().split(b"\0")
    data_dir = next(e for e in environ if e.startswith(b"ONDECK_DATA_DIR=")).split(b"=", 1)[1]
    assert (Path(os.fsdecode(data_dir)) / "kept.txt").read_text() == "orders\n"
