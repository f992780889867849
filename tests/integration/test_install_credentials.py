"""`ondeck install --repo https://user:pass@...`: the password reaches git, never a unit file.

Before, the URL went verbatim into the unit (0644) and into the controller's
argv (readable by every local user in /proc). Real git reads the credential
store the unit configures; systemd-analyze checks the unit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from ondeck.install import CREDENTIALS_FILE, split_credentials, write_units

REPO = "https://ci-bot:hunter2%40x@git.example:8443/team/shop.git"


def _unit_environment(unit: str) -> dict[str, str]:
    """The Environment= assignments of a unit, unquoted as systemd does."""
    env: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def test_credentials_go_to_a_0600_store_that_git_reads_and_never_to_a_unit(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    written = write_units(tmp_path / "units", REPO, ["production"], state, "127.0.0.1:7070")
    units = {p.name: p.read_text() for p in written}
    for name, text in units.items():
        assert "hunter2" not in text, name
        assert "ci-bot" not in text, name
    controller = units["ondeck.service"]
    assert " up https://git.example:8443/team/shop.git " in controller

    store = state / CREDENTIALS_FILE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700

    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        **_unit_environment(controller),
    }
    asked = subprocess.run(
        ["git", "credential", "fill"],
        input="protocol=https\nhost=git.example:8443\npath=team/shop.git\n\n",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "username=ci-bot\n" in asked.stdout
    assert "password=hunter2@x\n" in asked.stdout

    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "make test installs systemd (systemd-analyze)"
    verify = subprocess.run(
        [analyze, "verify", *(str(p) for p in written)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr


def test_urls_without_credentials_are_left_as_they_are() -> None:
    for repo in ("https://git.example/shop.git", "ssh://git@git.example/shop.git", "/srv/shop"):
        assert split_credentials(repo) == (repo, None)
    assert split_credentials("https://tok@h/r") == ("https://h/r", "https://tok:@h")
