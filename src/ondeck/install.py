"""`ondeck install`: systemd units so the custodian has a custodian.

Two units: `ondeck-router.service` (the data plane users reach) and
`ondeck.service` (the controller). `KillMode=process` matters for the
controller: when systemd restarts `ondeck up`, only the controller stops;
the app instances it supervises keep serving and are re-adopted.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

CONTROLLER_UNIT = """\
[Unit]
Description=ondeck controller: makes this host match {repo}
After=network-online.target ondeck-router.service
Wants=network-online.target ondeck-router.service

[Service]
Type=simple
ExecStart={exec_start}
Environment=ONDECK_STATE_DIR={state_dir}
Restart=always
RestartSec=2
# Stop only the controller: app instances outlive it and are re-adopted.
KillMode=process
TimeoutStopSec=30
# Sockets to the API and the router, log files, pidfds of every instance.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

ROUTER_UNIT = """\
[Unit]
Description=ondeck router: serves the apps on {listen}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Restart=always
RestartSec=1
# In-flight requests finish before the router exits.
TimeoutStopSec=15
# Two descriptors per request in flight plus every idle keep-alive connection;
# the router also raises its soft limit to this hard one at start.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def render_unit(
    repo: str,
    envs: list[str],
    state_dir: Path,
    api: str,
    listen: str = "127.0.0.1:8080",
    python: str = sys.executable,
) -> str:
    """The controller's unit; it finds the router of `ondeck-router.service` running."""
    argv = [python, "-m", "ondeck", "up", repo, "--state-dir", str(state_dir), "--api", api]
    argv += ["--listen", listen]
    for env in envs:
        argv += ["--env", env]
    return CONTROLLER_UNIT.format(repo=repo, exec_start=shlex.join(argv), state_dir=state_dir)


def render_router_unit(state_dir: Path, listen: str, python: str = sys.executable) -> str:
    argv = [python, "-m", "ondeck", "router", "--state-dir", str(state_dir), "--listen", listen]
    return ROUTER_UNIT.format(listen=listen, exec_start=shlex.join(argv))


def write_units(
    unit_dir: Path,
    repo: str,
    envs: list[str],
    state_dir: Path,
    api: str,
    listen: str = "127.0.0.1:8080",
) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    units = {
        "ondeck-router.service": render_router_unit(state_dir, listen),
        "ondeck.service": render_unit(repo, envs, state_dir, api, listen),
    }
    written = []
    for name, text in units.items():
        path = unit_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
