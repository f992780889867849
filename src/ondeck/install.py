"""`ondeck install`: systemd units so the custodian has a custodian.

`KillMode=process` matters: when systemd restarts `ondeck up`, only the
controller is stopped; the app instances it supervises keep serving and are
re-adopted by the new controller.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

UNIT = """\
[Unit]
Description=ondeck controller: makes this host match {repo}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Environment=ONDECK_STATE_DIR={state_dir}
Restart=always
RestartSec=2
# Stop only the controller: app instances outlive it and are re-adopted.
KillMode=process
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"""


def render_unit(
    repo: str, envs: list[str], state_dir: Path, api: str, python: str = sys.executable
) -> str:
    argv = [python, "-m", "ondeck", "up", repo, "--state-dir", str(state_dir), "--api", api]
    for env in envs:
        argv += ["--env", env]
    return UNIT.format(repo=repo, exec_start=shlex.join(argv), state_dir=state_dir)


def write_units(
    unit_dir: Path, repo: str, envs: list[str], state_dir: Path, api: str
) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / "ondeck.service"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_unit(repo, envs, state_dir, api))
    tmp.replace(path)
    return [path]
