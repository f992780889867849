"""`ondeck install --listen-tls`: both units carry it (the controller restarts the router with it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ondeck.errors import UserError
from ondeck.install import write_units


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_both_units_serve_https_where_asked(tmp_path: Path) -> None:
    written = write_units(tmp_path / "units", "/srv/shop", [], tmp_path / "state",
                          "127.0.0.1:7070", "0.0.0.0:80", listen_tls="0.0.0.0:443")  # fmt: skip
    for unit in written:
        argv = _exec_start(unit)
        assert argv[argv.index("--listen-tls") + 1] == "0.0.0.0:443", unit.name
        assert argv[argv.index("--listen") + 1] == "0.0.0.0:80", unit.name
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "make test installs systemd (systemd-analyze)"
    verify = subprocess.run(
        [analyze, "verify", *(str(p) for p in written)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    plain = write_units(tmp_path / "plain", "/srv/shop", [], tmp_path / "state", "127.0.0.1:7070")
    assert all("--listen-tls" not in _exec_start(unit) for unit in plain)


def test_a_bad_address_is_refused_before_any_unit_is_written(tmp_path: Path) -> None:
    units, state = tmp_path / "units", tmp_path / "state"
    for option, api, listen, listen_tls in (
        ("--listen", "127.0.0.1:7070", "bad", None),
        ("--api", "localhost:http", "127.0.0.1:8080", None),
        ("--listen-tls", "127.0.0.1:7070", "127.0.0.1:8080", "0.0.0.0:99999"),
    ):
        with pytest.raises(UserError, match=f"{option} .*expected HOST:PORT"):
            write_units(units, "/srv/shop", [], state, api, listen, listen_tls=listen_tls)
        assert not units.exists()
