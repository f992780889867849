"""The end-to-end harness: a real git repo as the remote and a real `ondeck up` process.

Every wait polls a condition with a deadline (never a bare sleep); teardown
stops the controller and every instance it started, found by the runtime's
own marker, so no test leaves a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ondeck.runtime.process import ProcessRuntime

FIXTURES = Path(__file__).parent.parent / "fixtures"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}
T = TypeVar("T")

SIMPLE_SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    version: "1.0.0"
    port: true
    replicas: 2
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
"""


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


class Repo:
    """A working repo that plays the git remote `ondeck up` follows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        shutil.copy(FIXTURES / "apps" / "web.py", path / "web.py")

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str, spec: str | None = None) -> str:
        if spec is not None:
            self.write("ondeck.yaml", spec)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


def wait_for(
    check: Callable[[], T | None], what: str, timeout: float = 30.0, every: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class Ondeck:
    """A real `ondeck up` process plus a CLI bound to its state dir."""

    def __init__(self, repo: Path | str, state_dir: Path, *flags: str) -> None:
        self.repo, self.state_dir, self.flags = str(repo), state_dir, flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-up.log"
        self.env = {**os.environ, "ONDECK_STATE_DIR": str(state_dir)}

    def start(self) -> Ondeck:
        (self.state_dir / "api.json").unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ondeck",
                "up",
                *([self.repo] if self.repo else []),  # none: `--host-file FILE` in the flags
                "--api",
                "127.0.0.1:0",
                "--poll",
                "1s",
                *([] if "--listen" in self.flags else ["--listen", "none"]),
                "--drift-check",
                "1s",
                *self.flags,
            ],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for(
            lambda: (self.state_dir / "api.json").exists() or self._died(), "the API to come up"
        )
        return self

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"ondeck up exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "ondeck", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ondeck {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return doc

    def env_status(self, name: str = "default") -> dict[str, Any]:
        return next(e for e in self.status()["environments"] if e["name"] == name)

    def service(self, name: str = "web", env: str = "default") -> dict[str, Any] | None:
        return next((s for s in self.env_status(env)["services"] if s["name"] == name), None)

    def wait_synced(
        self, revision: str | None = None, env: str = "default", timeout: float = 30.0
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            e = self.env_status(env)
            ok = (
                e["sync"] == "Synced"
                and e["health"] == "Healthy"
                and (revision is None or e["live_revision"] == revision)
            )
            return e if ok else None

        return wait_for(check, f"{env} Synced/Healthy at {revision}", timeout)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        kill_instances(self.state_dir)


def kill_instances(state_dir: Path) -> None:
    """SIGKILL every instance a controller with this state dir started, and its router."""
    pid_file = state_dir / "router.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    apps = state_dir / "apps"  # `ondeck up --host-file`: one state dir per app
    for app_dir in [state_dir, *(sorted(apps.iterdir()) if apps.is_dir() else [])]:
        runtime = ProcessRuntime(app_dir, lambda _: None)
        for handle in runtime.scan().values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.pid, signal.SIGKILL)
        runtime.close()


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def ondeck(tmp_path: Path) -> Iterator[Callable[..., Ondeck]]:
    """Factory: `ondeck(repo_path, *flags)` starts a controller; all are cleaned up."""
    made: list[Ondeck] = []

    def make(repo: Path | str, *flags: str, state: str = "state") -> Ondeck:
        od = Ondeck(repo, tmp_path / state, *flags)
        made.append(od)
        return od.start()

    yield make
    for od in made:
        od.cleanup()
