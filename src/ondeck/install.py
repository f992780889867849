"""`ondeck install`: systemd units so the custodian has a custodian.

Two units: `ondeck-router.service` (the data plane users reach) and
`ondeck.service` (the controller). `KillMode=process` matters for the
controller: when systemd restarts `ondeck up`, only the controller stops;
the app instances it supervises keep serving and are re-adopted.

Credentials in `--repo https://user:pass@host/...` never reach a unit (0644,
and the controller's argv is readable by every local user in /proc): they go
to a 0600 file in the state dir that git reads as its credential store.
"""

from __future__ import annotations

import os
import shlex
import sys
import urllib.parse
from pathlib import Path

from ondeck.redact import mask

CREDENTIALS_FILE = "git-credentials"

CONTROLLER_UNIT = """\
[Unit]
Description=ondeck controller: makes this host match {repo}
After=network-online.target ondeck-router.service
Wants=network-online.target ondeck-router.service

[Service]
Type=simple
ExecStart={exec_start}
Environment=ONDECK_STATE_DIR={state_dir}
{credentials}Restart=always
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
    credentials_file: Path | None = None,
    listen_tls: str | None = None,
) -> str:
    """The controller's unit; it finds the router of `ondeck-router.service` running.

    `repo` must carry no credentials (see `split_credentials`); with
    `credentials_file`, git reads them from there as its credential store.
    """
    argv = [python, "-m", "ondeck", "up", repo, "--state-dir", str(state_dir), "--api", api]
    argv += ["--listen", listen]
    if listen_tls:
        argv += ["--listen-tls", listen_tls]
    for env in envs:
        argv += ["--env", env]
    credentials = ""
    if credentials_file is not None:
        helper = f"store --file={credentials_file}"
        credentials = (
            "# git reads the repo's credentials from this 0600 file, never from argv.\n"
            "Environment=GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=credential.helper\n"
            f'Environment="GIT_CONFIG_VALUE_0={helper}"\n'
        )
    return CONTROLLER_UNIT.format(
        repo=mask(repo),
        exec_start=shlex.join(argv),
        state_dir=state_dir,
        credentials=credentials,
    )


def split_credentials(repo: str) -> tuple[str, str | None]:
    """`repo` without its userinfo, and the line git's credential store wants (None: none).

    `https://ci:pw@git.example/shop.git` gives `https://git.example/shop.git`
    and `https://ci:pw@git.example`; an ssh user (`ssh://git@host/...`) is no
    credential and stays.
    """
    parts = urllib.parse.urlsplit(repo)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return repo, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return clean, f"{parts.scheme}://{user}:{password if colon else ''}@{host}"


def write_credentials(state_dir: Path, line: str) -> Path:
    """The credential store file (0600, in a 0700 state dir), written whole and renamed."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / CREDENTIALS_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(line + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def render_router_unit(
    state_dir: Path,
    listen: str,
    python: str = sys.executable,
    trusted_proxies: tuple[str, ...] = (),
    listen_tls: str | None = None,
) -> str:
    """The router's unit; `trusted_proxies` keep their X-Forwarded-For/-Proto."""
    argv = [python, "-m", "ondeck", "router", "--state-dir", str(state_dir), "--listen", listen]
    if listen_tls:
        argv += ["--listen-tls", listen_tls]
    for cidr in trusted_proxies:
        argv += ["--trusted-proxy", cidr]
    return ROUTER_UNIT.format(listen=listen, exec_start=shlex.join(argv))


def write_units(
    unit_dir: Path,
    repo: str,
    envs: list[str],
    state_dir: Path,
    api: str,
    listen: str = "127.0.0.1:8080",
    trusted_proxies: tuple[str, ...] = (),
    listen_tls: str | None = None,
) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    clean, credentials = split_credentials(repo)
    store = write_credentials(state_dir, credentials) if credentials else None
    units = {
        "ondeck-router.service": render_router_unit(
            state_dir, listen, trusted_proxies=trusted_proxies, listen_tls=listen_tls
        ),
        "ondeck.service": render_unit(
            clean, envs, state_dir, api, listen, credentials_file=store, listen_tls=listen_tls
        ),
    }
    written = []
    for name, text in units.items():
        path = unit_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
