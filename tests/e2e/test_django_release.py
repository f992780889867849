"""Release tasks with a real Django app: `manage.py migrate` once per release, before traffic.

Django is installed by the app's `build` step with pip, into the release. The
wheels come from PyPI once per machine (a wheelhouse kept beside pip's cache),
then every build installs from there without touching the network, bounded by
pip's own timeout. The database is SQLite in ONDECK_DATA_DIR, so it outlives
releases; the release task notes every run it starts in `release-runs.txt`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FIXTURES, Ondeck, Repo, wait_for

from ondeck.runtime.process import allocate_port

DJANGO = "django==5.2.*"
WAIT = 240.0  # a build installs Django: tens of seconds on a loaded 2-core machine
SECRET_KEY = "dj-key-Hh3k-known-only-to-this-test"
APP = FIXTURES / "apps" / "djangoapp"

ADD_PRIORITY = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]
    operations = [
        migrations.AddField("note", "priority", models.IntegerField(null=True)),
    ]
"""

BROKEN = """\
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("migration 0002 is broken on purpose")


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]
    operations = [migrations.RunPython(fail)]
"""


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Django's wheels, downloaded from PyPI the first time only."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "ondeck-tests" / "wheels" / "django-5.2"
    if not list(path.glob("Django-*.whl")) and not list(path.glob("django-*.whl")):
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                "--dest",
                str(path),
                DJANGO,
            ],
            check=True,
            timeout=300,
        )
    return path


def spec(wheels: Path, version: str, replicas: int = 2, gate: Path | None = None) -> str:
    env = {
        "DJANGO_SECRET_KEY": "${DJANGO_SECRET_KEY}",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_DEFAULT_TIMEOUT": "30",
        **({"RELEASE_GATE": str(gate)} if gate else {}),
    }
    return f"""\
app: shop
services:
  web:
    command: ["python3", "serve.py"]
    build: ["python3", "-m", "pip", "install", "--quiet", "--target", ".deps", "{DJANGO}"]
    release: ["python3", "release.py"]
    release_timeout: 5m
    version: "{version}"
    port: true
    replicas: {replicas}
    env: {json.dumps(env)}
    health: {{http: /healthz, interval: 1s, timeout: 5s}}
    stop: {{grace: 5s}}
    rollout: {{strategy: rolling, max_surge: 1, max_unavailable: 0, drain: 2s}}
    routes: [{{path: /}}]
"""


def copy_app(repo: Repo) -> None:
    for path in APP.rglob("*.py"):
        repo.write(str(path.relative_to(APP)), path.read_text())


class Load:
    """Keep-alive GETs through the router from a thread; a failure is no answer or a 5xx."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[int, str]] = []  # (status, version)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=20) as client:
            while not self._stop.is_set():
                try:
                    answer = client.get("/")
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                    continue
                if answer.status_code >= 500:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
                else:
                    self.answers.append((answer.status_code, answer.json().get("version", "")))
                self._stop.wait(0.02)  # pacing, not waiting for a condition

    def count(self) -> int:
        return len(self.answers)


def page(port: int) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    data: dict[str, Any] = answer.json()
    return data


def runs(od: Ondeck) -> list[str]:
    path = od.state_dir / "data" / "shop" / "default" / "release-runs.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def set_secret(state: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ondeck",
            "secret",
            "set",
            "DJANGO_SECRET_KEY",
            "--state-dir",
            str(state),
        ],
        input=SECRET_KEY,
        text=True,
        capture_output=True,
        check=True,
        timeout=60,
    )


@pytest.fixture
def django_v1(
    repo: Repo, ondeck: Callable[..., Ondeck], wheelhouse: Path, tmp_path: Path
) -> Iterator[tuple[Ondeck, int, str]]:
    """v1 (migration 0001) deployed with two replicas behind the router."""
    copy_app(repo)
    sha = repo.commit("v1", spec(wheelhouse, "1"))
    set_secret(tmp_path / "state")
    port = allocate_port()
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}")
    od.wait_synced(sha, timeout=WAIT)
    wait_for(lambda: (page(port) or {}).get("version") == "1", "the router to serve v1", WAIT)
    assert runs(od) == [sha]
    yield od, port, sha


def test_a_migration_runs_once_across_replicas_and_a_rolling_update_drops_nothing(
    repo: Repo, wheelhouse: Path, django_v1: tuple[Ondeck, int, str]
) -> None:
    od, port, v1 = django_v1
    assert (page(port) or {}).get("columns") == ["id", "text"]
    with Load(port) as load:
        wait_for(lambda: load.count() >= 20, "answers before the release", WAIT)
        repo.write("notes/migrations/0002_priority.py", ADD_PRIORITY)
        repo.write(
            "notes/models.py",
            (APP / "notes" / "models.py").read_text()
            + "    priority = models.IntegerField(null=True)\n",
        )
        v2 = repo.commit("v2: notes get a priority", spec(wheelhouse, "2"))
        od.wait_synced(v2, timeout=WAIT)
        settled = load.count()
        wait_for(lambda: load.count() >= settled + 20, "answers after the release", WAIT)
    assert not load.failures, f"{len(load.failures)} failed: {load.failures[:5]}"
    assert {v for _, v in load.answers} == {"1", "2"}
    assert runs(od) == [v1, v2]  # once per release, not once per replica
    assert (page(port) or {}).get("columns") == ["id", "text", "priority"]
    history = json.loads(od.cli("history", "--json").stdout)["syncs"]
    assert next(s for s in history if s["revision"] == v2)["result"] == "Succeeded"

    v3 = repo.commit("v3: a third replica", spec(wheelhouse, "2", replicas=3))
    od.wait_synced(v3, timeout=WAIT)
    assert runs(od) == [v1, v2]  # a replicas-only change runs nothing
    assert SECRET_KEY not in od.cli("logs", "web", "--release").stdout
    assert "Applying notes.0002_priority... OK" in od.cli("logs", "web", "--release").stdout


def test_a_failing_migration_fails_the_sync_and_the_old_version_keeps_serving(
    repo: Repo, wheelhouse: Path, django_v1: tuple[Ondeck, int, str]
) -> None:
    od, port, v1 = django_v1
    pids = sorted(i["pid"] for i in (od.service() or {})["instances"])
    repo.write("notes/migrations/0002_priority.py", BROKEN)
    bad = repo.commit("v2: a broken migration", spec(wheelhouse, "2"))
    error = wait_for(lambda: od.env_status()["error"], "the sync to fail", WAIT)
    assert "release task of web 'python3 release.py' exited with code 1" in error
    assert "migration 0002 is broken on purpose" in error  # the output's tail, in status
    env = od.env_status()
    assert env["live_revision"] == v1 and env["health"] == "Healthy"
    assert sorted(i["pid"] for i in (od.service() or {})["instances"]) == pids
    assert (page(port) or {}).get("version") == "1"
    failed = next(
        s for s in json.loads(od.cli("history", "--json").stdout)["syncs"] if s["revision"] == bad
    )
    assert failed["result"] == "Failed" and "exited with code 1" in failed["error"]
    whole = od.cli("logs", "web", "--release").stdout
    assert "Traceback" in whole and "broken on purpose" in whole
    assert runs(od) == [v1, bad]

    retry = od.cli("sync", "--wait", check=False)  # a retry runs the task again, and fails
    assert retry.returncode == 1 and "broken on purpose" in retry.stdout + retry.stderr
    wait_for(lambda: runs(od) == [v1, bad, bad], "the retry to run the task", WAIT)

    repo.write("notes/migrations/0002_priority.py", ADD_PRIORITY)
    fixed = repo.commit("v3: the migration fixed", spec(wheelhouse, "3"))
    od.wait_synced(fixed, timeout=WAIT)
    assert runs(od) == [v1, bad, bad, fixed]
    assert (page(port) or {}).get("version") == "3"


def test_a_controller_killed_during_the_task_neither_skips_nor_repeats_it(
    repo: Repo, wheelhouse: Path, django_v1: tuple[Ondeck, int, str], tmp_path: Path
) -> None:
    od, port, v1 = django_v1
    gate = tmp_path / "gate"
    repo.write("notes/migrations/0002_priority.py", ADD_PRIORITY)
    v2 = repo.commit("v2: a slow migration", spec(wheelhouse, "2", gate=gate))
    wait_for(lambda: runs(od) == [v1, v2], "the task to start and wait at its gate", WAIT)
    started = od.log().count("running the release task")
    od.stop(signal.SIGKILL)
    od.start()
    assert (page(port) or {}).get("version") == "1"  # the old version serves on meanwhile
    # The gate opens once the new controller waits on the task it found running.
    wait_for(
        lambda: od.log().count("running the release task") > started,
        "the restarted controller to take the task over",
        WAIT,
    )
    gate.touch()
    od.wait_synced(v2, timeout=WAIT)
    assert runs(od) == [v1, v2]  # started once, finished once
    assert (page(port) or {}).get("columns") == ["id", "text", "priority"]
    log = od.cli("logs", "web", "--release").stdout
    assert "attempt 2" not in log
