"""`ondeck run SERVICE -- ARGV`: a one-off command in the current release, with the
service's environment and secrets, interactive on a terminal, recorded as an event."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
from conftest import SIMPLE_SPEC, Ondeck, Repo, wait_for

SPEC = SIMPLE_SPEC.replace("replicas: 2", "replicas: 1").replace(
    "    port: true\n",
    '    port: true\n    env: {GREETING: "hi ${ONDECK_ENV}", SERVICE_KEY: "${API_KEY}"}\n',
)
SHOW_ENV = "import json, os; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
SECRET = "s3cr3t-value-42"


def _events(od: Ondeck) -> list[dict[str, Any]]:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    answer = httpx.get(f"{url}/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def test_run_uses_the_release_the_env_and_the_secrets_and_is_recorded(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    first = repo.commit("web", SIMPLE_SPEC)
    od = ondeck(repo.path)
    od.wait_synced(first)
    subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "set", "API_KEY"],
        input=SECRET,
        env=od.env,
        capture_output=True,
        text=True,
        check=True,
    )
    sha = repo.commit("web with a secret", SPEC)
    od.wait_synced(sha, timeout=60)
    instance = od.service()["instances"][0]  # type: ignore[index]
    done = od.cli("run", "web", "--", "python3", "-c", SHOW_ENV)
    seen = json.loads(done.stdout)
    assert seen["cwd"].startswith(str(od.state_dir / "releases"))
    assert os.path.exists(os.path.join(seen["cwd"], "web.py"))
    env = seen["env"]
    assert env["GREETING"] == "hi default"
    assert env["SERVICE_KEY"] == SECRET
    assert env["ONDECK_SERVICE"] == "web" and env["ONDECK_REVISION"] == sha
    assert "PORT" not in env and "ONDECK_INSTANCE" not in env
    assert env["ONDECK_RUN"]  # marks it (and its children) for the drift check: not a stray
    assert SECRET not in done.stderr
    runs = [e for e in _events(od) if e["kind"] == "run"]
    assert runs and "python3 -c" in runs[0]["message"]
    assert od.service()["instances"][0]["id"] == instance["id"]  # type: ignore[index]
    failed = od.cli("run", "web", "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7  # the command's own exit code
    # a run outlasting drift checks (every 1 s here) is not stopped as a stray
    slow = od.cli("run", "web", "--", "python3", "-c", "import time; time.sleep(3); print('done')")
    assert slow.stdout.strip() == "done"


def test_run_is_interactive_on_a_terminal(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    sha = repo.commit("web", SIMPLE_SPEC.replace("replicas: 2", "replicas: 1"))
    od = ondeck(repo.path)
    od.wait_synced(sha)
    ask = "import sys; print('tty', sys.stdin.isatty()); print('got', input('name? '))"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ondeck", "run", "web", "--", "python3", "-c", ask],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=od.env,
    )
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> bool:
        nonlocal seen
        if select.select([master], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):  # EIO: the command has exited, its output read
                seen += os.read(master, 4096)
        return text in seen

    try:
        try:
            wait_for(lambda: read_until(b"name? "), "the prompt on the terminal")
        except AssertionError as failure:
            raise AssertionError(f"{failure}; the terminal showed {seen!r}") from None
        os.write(master, b"ada\n")
        wait_for(lambda: read_until(b"got ada"), "the answer read from the terminal")
        assert b"tty True" in seen
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
