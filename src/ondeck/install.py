"""`ondeck install`: systemd units so the custodian has a custodian.

Two units per host, named the same whatever runs: `ondeck-router.service` (the
data plane users reach) and `ondeck.service` (the controller: `ondeck up
--host-file FILE` for every app of the host, or `ondeck up REPO` for one).
`KillMode=process` matters for the controller: when systemd restarts `ondeck
up`, only the controller stops; the app instances it supervises keep serving
and are re-adopted. An install never replaces a controller unit that runs
something else (another repo, host file or state dir) unless told to
(`replace`): a second app belongs in the host file, not in a second install.

Credentials in `--repo https://user:pass@host/...` never reach a unit (0644,
and the controller's argv is readable by every local user in /proc): they go
to a 0600 file in the state dir that git reads as its credential store.
"""

from __future__ import annotations

import shlex
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ondeck.errors import UserError
from ondeck.files import write_atomic
from ondeck.redact import mask
from ondeck.source.hostfile import parse_ref
from ondeck.units import parse_address

CREDENTIALS_FILE = "git-credentials"
CONTROLLER_NAME = "ondeck.service"
ROUTER_NAME = "ondeck-router.service"

CONTROLLER_UNIT = """\
[Unit]
Description=ondeck controller: makes this host match {what}
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
    repo: str | None,
    envs: list[str],
    state_dir: Path,
    api: str,
    listen: str = "127.0.0.1:8080",
    python: str = sys.executable,
    credentials_file: Path | None = None,
    listen_tls: str | None = None,
    host_file: str | None = None,
) -> str:
    """The controller's unit; it finds the router of `ondeck-router.service` running.

    It runs `ondeck up REPO` (one app), or `ondeck up --host-file FILE` (every
    app of the host; give `repo` None). Neither may carry credentials (see
    `split_credentials`); with `credentials_file`, git reads them from there as
    its credential store.
    """
    target = ["--host-file", host_file] if host_file is not None else [repo or ""]
    if host_file is None and not repo:
        raise ValueError("a controller unit runs a repo or a host file")
    argv = [python, "-m", "ondeck", "up", *target, "--state-dir", str(state_dir), "--api", api]
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
    what = f"the apps of {mask(host_file)}" if host_file is not None else mask(repo or "")
    return CONTROLLER_UNIT.format(
        what=what,
        exec_start=shlex.join(argv),
        state_dir=state_dir,
        credentials=credentials,
    )


@dataclass(frozen=True)
class Installed:
    """What a controller unit runs: one app's repo or a host file, with its state dir."""

    repo: str | None
    host_file: str | None
    state_dir: str | None

    @property
    def shown(self) -> str:
        runs = f"--host-file {self.host_file}" if self.host_file else f"one app, {self.repo}"
        return f"{mask(runs)} (state dir {self.state_dir})"


def installed(unit_dir: Path) -> Installed | None:
    """What the `ondeck.service` in `unit_dir` runs; None when there is none (or not ours)."""
    try:
        text = (unit_dir / CONTROLLER_NAME).read_text()
    except FileNotFoundError:
        return None
    line = next((x for x in text.splitlines() if x.startswith("ExecStart=")), None)
    argv = shlex.split(line.removeprefix("ExecStart=")) if line else []
    if "up" not in argv:
        return None
    rest = argv[argv.index("up") + 1 :]
    host_file = _flag(rest, "--host-file")
    repo = None if host_file is not None or not rest or rest[0].startswith("-") else rest[0]
    return Installed(repo, host_file, _flag(rest, "--state-dir"))


def check_replace(unit_dir: Path, wanted: Installed, replace: bool) -> None:
    """Refuse to overwrite a controller unit that runs something else, unless `replace`."""
    old = installed(unit_dir)
    if old is None or old == wanted or replace:
        return
    where = unit_dir / CONTROLLER_NAME
    if wanted.host_file is not None and old.host_file is None:
        raise UserError(
            f"{where} runs {old.shown} from an earlier install. One unit set runs every app "
            "of this host now: (1) stop it: `systemctl stop ondeck.service` and "
            f"`ondeck down --state-dir {old.state_dir}`; (2) list that app in the host file: "
            f"`ondeck app add NAME {mask(old.repo or '')}` (its state, history and secrets stay "
            f"in {old.state_dir}; the host keeps each app's under STATE_DIR/apps/NAME/); "
            "(3) run this install again with --replace"
            + (
                f" and a state dir of its own (--state-dir NEW: {old.state_dir} is that "
                "app's, which `ondeck up --host-file` refuses)"
                if old.state_dir == wanted.state_dir
                else ""
            )
        )
    advice = (
        "list every app in one host file (`ondeck app add NAME REPO`) and install that with "
        "`ondeck install --host-file FILE --replace`"
        if wanted.repo is not None
        else "give --replace to run this one instead"
    )
    raise UserError(
        f"{where} runs {old.shown} already; this host has one unit set, and installing "
        f"{wanted.shown} would replace it: {advice}"
    )


def _refuse_one_app_state(state_dir: Path) -> None:
    """`ondeck up --host-file` refuses a state dir `ondeck up REPO` used (its mirror is there)."""
    if (state_dir / "repos").exists():
        raise UserError(
            f"{state_dir} holds the state of `ondeck up REPO` (one app), which "
            "`ondeck up --host-file` refuses: give the host a state dir of its own (--state-dir)"
        )


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


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
    write_atomic(path, line + "\n", 0o600)
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
    repo: str | None,
    envs: list[str],
    state_dir: Path,
    api: str,
    listen: str = "127.0.0.1:8080",
    trusted_proxies: tuple[str, ...] = (),
    listen_tls: str | None = None,
    *,
    host_file: str | None = None,
    replace: bool = False,
) -> list[Path]:
    """Write both units; `check_replace` refuses first when another install is there."""
    if (repo is None) == (host_file is None):
        raise UserError("install runs a repo (--repo) or a host file (--host-file), not both")
    # a unit with a bad address would fail at every restart: refused before anything is written
    parse_address(api, "--api", "127.0.0.1:7070")
    parse_address(listen, "--listen", "127.0.0.1:8080")
    if listen_tls is not None:
        parse_address(listen_tls, "--listen-tls", "0.0.0.0:443")
    if host_file is not None:
        clean_host_file, credentials = _host_file_credentials(host_file)
        wanted = Installed(None, clean_host_file, str(state_dir))
    else:
        clean, credentials = split_credentials(repo or "")
        wanted = Installed(clean, None, str(state_dir))
    check_replace(unit_dir, wanted, replace)
    if wanted.host_file is not None:
        _refuse_one_app_state(state_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    store = write_credentials(state_dir, credentials) if credentials else None
    units = {
        ROUTER_NAME: render_router_unit(
            state_dir, listen, trusted_proxies=trusted_proxies, listen_tls=listen_tls
        ),
        CONTROLLER_NAME: render_unit(
            wanted.repo,
            envs,
            state_dir,
            api,
            listen,
            credentials_file=store,
            listen_tls=listen_tls,
            host_file=wanted.host_file,
        ),
    }
    for name, text in units.items():
        write_atomic(unit_dir / name, text, 0o644)
    return [unit_dir / name for name in units]


def _host_file_credentials(host_file: str) -> tuple[str, str | None]:
    """The host file as the unit names it (absolute; a `REPO#PATH` repo without its
    credentials) and the credential store line for that repo (None: none)."""
    ref = parse_ref(host_file)
    if ref.repo is None:
        return ref.path, None
    clean, credentials = split_credentials(ref.repo)
    return f"{clean}#{ref.path}", credentials
