"""Scheduled jobs and notifications through a real `ondeck up`, real processes and a real
HTTP receiver: runs on schedule in the release, manual runs, history and logs, timeouts,
adoption after kill -9, catch-up after downtime, signed events, a crash loop as one message,
and a hanging target that does not hold up a sync."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Ondeck, Repo, wait_for

KEY = "receiver-hmac-key"

BASE = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    env: {GREETING: hello}
    health: {http: /healthz, interval: 1s}
    stop: {grace: 5s}
"""


class Receiver:
    """A real webhook receiver on loopback; `hang` makes it never answer."""

    def __init__(self, hang: bool = False, key: str | None = KEY) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hang:
                    receiver.release.wait(60)
                want = (
                    "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
                    if key
                    else ""
                )
                if hmac.compare_digest(self.headers.get("X-Ondeck-Signature", ""), want):
                    receiver.events.append(json.loads(body))
                else:
                    receiver.bad_signatures += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(hang: bool = False, key: str | None = KEY) -> Receiver:
        made.append(Receiver(hang, key))
        return made[-1]

    yield make
    for r in made:
        r.close()


def jobs_list(od: Ondeck) -> dict[str, dict[str, Any]]:
    doc = json.loads(od.cli("job", "list", "--json").stdout)
    return {j["name"]: j for j in doc["jobs"]}


def history(od: Ondeck, job: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads(od.cli("job", "history", job, "--json").stdout)["runs"]
    return runs


def secret(od: Ondeck, name: str, value: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ondeck", "secret", "set", name],
        input=value,
        env=od.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_job_runs_every_second_in_the_release_with_the_services_env(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    job = (
        "jobs:\n  tick:\n"
        '    command: ["python3", "-c", "import os, pathlib; '
        "print(os.environ['GREETING'], os.environ['ONDECK_JOB'], pathlib.Path('web.py').exists())\"]\n"
        "    every: 1s\n"
    )
    sha = repo.commit("a job every second", BASE + job)
    od = ondeck(repo.path)
    od.wait_synced(sha)

    def two_succeeded() -> list[dict[str, Any]] | None:
        done = [r for r in history(od, "tick") if r["result"] == "succeeded"]
        return done if len(done) >= 2 else None

    runs = wait_for(two_succeeded, "two scheduled runs")
    assert {r["trigger"] for r in runs} <= {"schedule", "catch-up"}
    row = jobs_list(od)["tick"]
    assert row["schedule"] == "every 1s" and row["next_run"] is not None
    assert row["last_success_at"] is not None
    (shown,) = od.env_status()["jobs"]
    assert shown["name"] == "tick" and shown["last_success_at"] is not None
    logs = od.cli("logs", "--job", "tick").stdout
    assert "hello tick True" in logs  # the service's env, ONDECK_JOB, cwd = the release
    metrics = od.cli("status", "--json")  # the API answers while jobs run
    assert metrics.returncode == 0


def test_manual_run_timeout_and_forbid(repo: Repo, ondeck: Callable[..., Ondeck]) -> None:
    job = (
        "jobs:\n  slow:\n"
        '    command: ["python3", "-c", "import time; time.sleep(30)"]\n'
        '    schedule: "0 4 * * *"\n'
        "    timeout: 1s\n"
        "  fails:\n"
        '    command: ["python3", "-c", "raise SystemExit(7)"]\n'
        '    schedule: "0 4 * * *"\n'
    )
    sha = repo.commit("jobs run by hand", BASE + job)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    done = od.cli("job", "run", "slow", "--wait", "--json", check=False)
    run = json.loads(done.stdout)["run"]
    assert done.returncode == 1 and run["result"] == "timed-out" and run["trigger"] == "manual"
    assert (
        not Path(f"/proc/{run['pid']}").exists()
        or "Z" in Path(f"/proc/{run['pid']}/stat").read_text().split(")")[1].split()[0]
    )
    failed = json.loads(od.cli("job", "run", "fails", "--wait", "--json", check=False).stdout)
    assert (failed["run"]["result"], failed["run"]["exit_code"]) == ("failed", 7)
    assert [r["result"] for r in history(od, "fails")] == ["failed"]
    missing = od.cli("job", "run", "nope", check=False)
    assert missing.returncode == 1 and "no job 'nope'" in missing.stderr


def test_a_running_job_survives_kill_9_and_is_not_started_twice(
    repo: Repo, ondeck: Callable[..., Ondeck], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    job = (
        "jobs:\n  long:\n"
        '    command: ["python3", "-c", "import pathlib, time; '
        f"p = pathlib.Path('{marks}'); p.write_text((p.read_text() if p.exists() else '') + 'x'); "
        'time.sleep(4)"]\n'
        '    schedule: "0 4 * * *"\n'
    )
    sha = repo.commit("a long job", BASE + job)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    started = json.loads(od.cli("job", "run", "long", "--json").stdout)["run"]
    wait_for(marks.exists, "the run to start")
    od.stop(signal.SIGKILL)
    od.start()
    wait_for(lambda: history(od, "long")[0]["result"] == "succeeded", "the adopted run to finish")
    runs = history(od, "long")
    assert [r["id"] for r in runs] == [started["id"]]  # the same run, adopted
    assert marks.read_text() == "x"  # it ran once


def test_a_schedule_missed_while_down_runs_once_on_return(
    repo: Repo, ondeck: Callable[..., Ondeck]
) -> None:
    job = 'jobs:\n  beat:\n    command: ["python3", "-c", "print(1)"]\n    every: 2s\n'
    sha = repo.commit("a job every 2s", BASE + job)
    od = ondeck(repo.path)
    od.wait_synced(sha)
    wait_for(lambda: len(history(od, "beat")) >= 1, "a first run")
    od.stop()
    before = len(history_from_store(od))
    time.sleep(7)  # the controller is down for three slots (the point of this test)
    od.start()
    wait_for(lambda: len(history(od, "beat")) > before, "a run after the restart")
    after = history(od, "beat")
    new = after[: len(after) - before]
    assert new[-1]["trigger"] == "catch-up"  # once for the missed slots...
    assert sum(1 for r in new if r["trigger"] == "catch-up") == 1  # ...not once per slot


def history_from_store(od: Ondeck) -> list[dict[str, Any]]:
    import sqlite3

    db = sqlite3.connect(od.state_dir / "ondeck.db")
    try:
        (raw,) = db.execute("SELECT value FROM kv WHERE key = 'jobs/shop/default/beat'").fetchone()
    finally:
        db.close()
    runs: list[dict[str, Any]] = json.loads(raw)["runs"]
    return runs


def test_events_arrive_signed_and_a_crash_loop_is_one_message(
    repo: Repo, ondeck: Callable[..., Ondeck], receivers: Callable[..., Receiver], tmp_path: Path
) -> None:
    rx = receivers()
    notify = (
        "notify:\n"
        f'  - url: "json://127.0.0.1:{rx.port}/ondeck"\n'
        "    secret: HOOK_KEY\n"
        "jobs:\n  broken:\n"
        '    command: ["python3", "-c", "raise SystemExit(2)"]\n'
        '    schedule: "0 4 * * *"\n'
    )
    od = ondeck(repo.path, state="state")
    secret(od, "HOOK_KEY", KEY)
    sha = repo.commit("notify a receiver", BASE + notify)
    od.cli("sync", "--wait")
    od.wait_synced(sha)
    wait_for(lambda: "sync-succeeded" in rx.kinds(), "sync-succeeded")
    od.cli("job", "run", "broken", "--wait", check=False)
    wait_for(lambda: "job-failed" in rx.kinds(), "job-failed")
    # a bad commit: refused, nothing touched, one sync-failed
    repo.commit("a broken spec", BASE.replace("port: true", "port: maybe") + notify)
    od.cli("sync", "--wait", check=False)
    wait_for(lambda: "sync-failed" in rx.kinds(), "sync-failed")
    # a crash loop: many exits, one degraded message
    crash = BASE.replace('["python3", "web.py"]', '["python3", "-c", "raise SystemExit(1)"]')
    repo.commit("a release that crashes", crash + notify)
    od.cli("sync", check=False)
    wait_for(lambda: "degraded" in rx.kinds(), "degraded", timeout=60)

    def crashes() -> int:
        instances = (od.service("web") or {}).get("instances") or []
        return max((i["restarts"] for i in instances), default=0)

    wait_for(lambda: crashes() >= 3, "several crashes", timeout=60)
    assert rx.kinds().count("degraded") == 1
    assert rx.bad_signatures == 0
    assert all(e["app"] == "shop" and e["env"] == "default" for e in rx.events)
    targets = od.env_status()["notifications"]
    assert targets[0]["delivered"] >= 4 and KEY not in json.dumps(od.status())


def test_a_hanging_target_does_not_hold_up_a_sync(
    repo: Repo, ondeck: Callable[..., Ondeck], receivers: Callable[..., Receiver]
) -> None:
    hang, rx = receivers(hang=True, key=None), receivers(key=None)
    notify = (
        "notify:\n"
        f'  - url: "json://127.0.0.1:{hang.port}/ondeck"\n'
        f'  - url: "json://127.0.0.1:{rx.port}/ondeck"\n'
    )
    od = ondeck(repo.path)
    repo.commit("two targets, one hangs", BASE + notify)
    od.cli("sync", "--wait")
    wait_for(lambda: "sync-succeeded" in rx.kinds(), "the working target's message")
    timings = []
    for n in range(3):
        sha = repo.commit(f"change {n}", BASE.replace("hello", f"hello {n}") + notify)
        started = time.monotonic()
        od.cli("sync", "--wait")
        timings.append(time.monotonic() - started)
        od.wait_synced(sha)
    # The hanging target holds its own queue only: each sync ends while it still hangs.
    assert hang.events == [] and rx.kinds().count("sync-succeeded") >= 4
    print(f"sync --wait with a hanging target: {', '.join(f'{t:.2f}s' for t in timings)}")
