"""Resilience end to end: killed instances, crash loops, a killed controller, a
vanishing git remote and stubborn processes, against a real `ondeck up`.

Every wait polls a condition with a deadline; timing is only ever asserted as
a lower bound the controller guarantees (a backoff is never shorter than its
delay), never as an upper bound a loaded machine could break.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FIXTURES, SIMPLE_SPEC, Ondeck, Repo, git, wait_for

from ondeck.runtime.base import Handle
from ondeck.runtime.process import ProcessRuntime

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., Ondeck]

CRASH_SPEC = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    env: {MODE: crash}
    port: true
    replicas: 1
    restart: {backoff_initial: 1s}
"""

STOP_SPEC = """\
app: shop
services:
  stubborn:
    command: ["python3", "web.py"]
    env: {MODE: ignore-term}
    port: true
    replicas: REPLICAS
    health: {http: /healthz, interval: 1s}
    stop: {grace: 1s}
  forker:
    command: ["python3", "web.py"]
    env: {MODE: child}
    port: true
    replicas: REPLICAS
    health: {http: /healthz, interval: 1s}
    stop: {grace: 20s}
  orphaner:
    command: ["python3", "stubborn_child.py"]
    port: true
    replicas: REPLICAS
    health: {http: /healthz, interval: 1s}
    stop: {grace: 20s}
"""
STOP_NAMES = ("stubborn", "forker", "orphaner")


# -- looking at processes ---------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; None when the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def alive(pid: int) -> bool:
    """The process runs (a zombie has already exited and counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`, other than its leader."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != pgid:
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat), in seconds."""
    fields = _stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def marked(state_dir: Path) -> dict[str, Handle]:
    """Every live instance carrying this state dir's marker, found the runtime's own way."""
    runtime = ProcessRuntime(state_dir, lambda _: None)
    try:
        return runtime.scan()
    finally:
        runtime.close()


def appended(path: Path, old: bytes) -> bool:
    """`path` still starts with `old` and has grown past it."""
    now = path.read_bytes()
    return len(now) > len(old) and now.startswith(old)


def app_get(port: int) -> dict[str, Any]:
    """GET / on an instance: its version, instance id and revision."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


# -- talking to the controller (the API directly: faster than a CLI per poll) -----------------


def api_get(od: Ondeck, path: str) -> Any:
    url = json.loads((od.state_dir / "api.json").read_text())["url"]
    token = (od.state_dir / "token").read_text().strip()
    response = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def env_now(od: Ondeck, env: str = "default") -> dict[str, Any]:
    doc = api_get(od, "/api/v1/status")
    found: dict[str, Any] = next(e for e in doc["environments"] if e["name"] == env)
    return found


def service_now(od: Ondeck, name: str = "web") -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in env_now(od)["services"] if s["name"] == name)
    return found


def instance_now(od: Ondeck, inst_id: str, service: str = "web") -> dict[str, Any] | None:
    """The instance, or None while it (or its service) is not shown."""
    services = [s for s in env_now(od)["services"] if s["name"] == service]
    found = [i for s in services for i in s["instances"] if i["id"] == inst_id]
    return found[0] if found else None


def exit_events(od: Ondeck, service: str = "web") -> list[dict[str, Any]]:
    """The `exit` events of `service`, oldest first."""
    events = api_get(od, "/api/v1/events?limit=1000")["events"]
    return sorted(
        (e for e in events if e["kind"] == "exit" and e["service"] == service),
        key=lambda e: float(e["at"]),
    )


def settle(od: Ondeck, revision: str | None = None) -> dict[str, Any]:
    """Synced and Healthy at `revision`, and the sync that got there is closed."""
    od.wait_synced(revision)

    def closed() -> dict[str, Any] | None:
        env = env_now(od)
        ok = env["operation"] is None and env["sync"] == "Synced" and env["health"] == "Healthy"
        return env if ok else None

    return wait_for(closed, "the sync to close")


def restarted(od: Ondeck, old: dict[str, Any]) -> dict[str, Any]:
    """Wait until instance `old` runs again, healthy, under a new pid."""

    def check() -> dict[str, Any] | None:
        inst = instance_now(od, old["id"])
        ok = inst is not None and inst["pid"] not in (None, old["pid"])
        return inst if ok and inst is not None and inst["health"] == "Healthy" else None

    return wait_for(check, f"{old['id']} to be restarted")


def history(od: Ondeck) -> list[dict[str, Any]]:
    syncs: list[dict[str, Any]] = json.loads(od.cli("history", "--json").stdout)["syncs"]
    return syncs


def hold(seconds: float, check: Callable[[], None]) -> None:
    """Assert `check` keeps passing over a window (a sampling loop, not a bare sleep)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.2)
    check()


# -- 1. a killed instance ------------------------------------------------------------------


def test_killed_instance_is_restarted_in_place(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    victim, bystander = service_now(od)["instances"]

    os.kill(victim["pid"], signal.SIGKILL)

    after = restarted(od, victim)
    assert after["restarts"] == 1
    assert not alive(victim["pid"])
    assert app_get(after["port"])["instance"] == victim["id"]
    untouched = instance_now(od, bystander["id"])
    assert untouched is not None
    assert (untouched["pid"], untouched["restarts"]) == (bystander["pid"], 0)
    od.wait_synced(sha)
    assert set(marked(od.state_dir)) == {victim["id"], bystander["id"]}
    # Detected by its exit event (pidfd), recorded, then restarted: in that order.
    exits = [e["message"] for e in exit_events(od)]
    assert exits == [f"{victim['id']} killed by signal 9"]
    log = od.log()
    detected = log.index(f"{victim['id']} killed by signal 9")
    assert log.index(f"started {victim['id']} (pid {after['pid']}", detected) > detected


# -- 2. a crash loop ---------------------------------------------------------------------------


def test_crash_loop_backs_off_degrades_and_fails_the_sync(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("a release that crashes", CRASH_SPEC)
    od = ondeck(repo.path)
    assert od.proc is not None
    controller = od.proc.pid

    wait_for(lambda: len(exit_events(od)) >= 4, "four crashes", timeout=60, every=0.2)
    # The 4th crash waits 4s before its restart: the controller must sleep through it.
    cpu_before, wall_before = cpu_seconds(controller), time.monotonic()
    hold(3.0, lambda: None)
    cpu_used, wall = cpu_seconds(controller) - cpu_before, time.monotonic() - wall_before
    assert cpu_used < 0.25 * wall, f"controller used {cpu_used:.2f}s CPU in {wall:.2f}s"

    def five_crashes() -> list[dict[str, Any]] | None:
        found = exit_events(od)
        return found if len(found) >= 5 else None

    exits = wait_for(five_crashes, "five crashes", timeout=60, every=0.2)
    at = [float(e["at"]) for e in exits[:5]]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # restart_delay after the n-th crash: 0, 1s, 2s, 4s; a gap is never shorter than its delay.
    for gap, delay in zip(gaps, (0.0, 1.0, 2.0, 4.0), strict=True):
        assert gap >= delay - 0.01, gaps
    # They grow: each beyond the one before (with slack for a slow start) and, with a
    # whole backoff step of margin, beyond the one before that.
    assert all(later > earlier - 1.0 for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[2] > gaps[0] and gaps[3] > gaps[1], gaps
    assert all(e["message"].endswith("exited with code 3") for e in exits), exits

    def backing_off() -> dict[str, Any] | None:
        svc = service_now(od)
        inst = svc["instances"][0] if svc["instances"] else None
        return svc if inst is not None and inst["state"] == "exited" else None

    svc = wait_for(backing_off, "the instance to be seen backing off")
    inst = svc["instances"][0]
    assert svc["health"] == "Degraded"
    assert "exited with code 3" in svc["health_reason"]
    assert inst["exit_code"] == 3
    assert inst["restarts"] >= 4
    assert "mode=crash" in inst["log_tail"]
    assert "to stderr" in inst["log_tail"]
    assert env_now(od)["health"] == "Degraded"

    failed = [s for s in history(od) if s["revision"] == sha and s["result"] == "Failed"]
    assert failed, history(od)
    assert f"{inst['id']} is crash-looping" in failed[0]["error"]
    assert "exited with code 3" in failed[0]["error"]


# -- 3. self-heal off ---------------------------------------------------------------------------


def test_without_self_heal_a_killed_instance_is_reported_not_restarted(
    repo: Repo, ondeck: Factory
) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path, "--no-self-heal")
    settle(od, sha)
    victim, bystander = service_now(od)["instances"]

    os.kill(victim["pid"], signal.SIGKILL)

    reason = f"{victim['id']} killed by signal 9"
    wait_for(lambda: reason in service_now(od)["reasons"], "the drift to be reported")

    def still_down() -> None:
        inst = instance_now(od, victim["id"])
        assert inst is not None
        assert (inst["state"], inst["restarts"], inst["exit_code"]) == ("exited", 0, -9)
        assert set(marked(od.state_dir)) == {bystander["id"]}

    hold(3.0, still_down)
    status = od.env_status()  # through the CLI: what a user sees
    assert status["sync"] == "OutOfSync"
    web = next(s for s in status["services"] if s["name"] == "web")
    assert web["sync"] == "OutOfSync"
    assert reason in web["reasons"]
    assert alive(bystander["pid"])
    assert od.log().count(f"started {victim['id']} ") == 1  # its first start only


# -- 4. a killed controller ------------------------------------------------------------------------


def test_killed_controller_readopts_without_duplicates(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    before = {i["id"]: i for i in service_now(od)["instances"]}
    synced_before = history(od)
    logs_before = {i: Path(inst["log_path"]).read_bytes() for i, inst in before.items()}

    assert od.stop(signal.SIGKILL) == -signal.SIGKILL
    assert all(alive(inst["pid"]) for inst in before.values())
    first_run = len(od.log())
    od.start()

    od.wait_synced(sha)
    after = {i["id"]: i for i in service_now(od)["instances"]}
    assert {i: inst["pid"] for i, inst in after.items()} == {
        i: inst["pid"] for i, inst in before.items()
    }
    assert all(inst["health"] == "Healthy" and inst["restarts"] == 0 for inst in after.values())
    found = marked(od.state_dir)
    assert {i: h.pid for i, h in found.items()} == {i: inst["pid"] for i, inst in before.items()}
    assert "adopted" in od.log()[first_run:]
    assert "started " not in od.log()[first_run:]

    synced_after = history(od)
    by_id = {s["id"]: s for s in synced_after}
    assert [by_id.get(s["id"]) for s in synced_before] == synced_before
    for extra in (s for s in synced_after if s["id"] not in {b["id"] for b in synced_before}):
        assert extra["result"] == "Succeeded"
        assert not [a for a in extra["actions"] if a.startswith(("start", "stop", "restart"))]

    # The same log files, appended to (the new controller's probes are logged by the app).
    for inst_id, old in logs_before.items():
        path = Path(after[inst_id]["log_path"])
        assert str(path) == before[inst_id]["log_path"]
        wait_for(partial(appended, path, old), f"{path} to grow")

    # An adopted instance is not our child: its exit still arrives (pidfd) and heals.
    victim = next(iter(after.values()))
    os.kill(victim["pid"], signal.SIGKILL)
    again = restarted(od, victim)
    assert again["restarts"] == 1
    assert [e["message"] for e in exit_events(od)] == [
        f"{victim['id']} exited (code unknown: adopted process)"
    ]
    od.wait_synced(sha)
    assert set(marked(od.state_dir)) == set(before)


def test_instance_killed_while_the_controller_is_down_is_restarted(
    repo: Repo, ondeck: Factory
) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    victim, bystander = service_now(od)["instances"]

    od.stop(signal.SIGKILL)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: not alive(victim["pid"]), "the instance to die")
    od.start()

    again = restarted(od, victim)
    assert again["restarts"] == 1
    od.wait_synced(sha)
    kept = instance_now(od, bystander["id"])
    assert kept is not None and kept["pid"] == bystander["pid"]
    assert [e["message"] for e in exit_events(od)] == [
        f"{victim['id']} exited while the controller was down"
    ]
    assert {i: h.pid for i, h in marked(od.state_dir).items()} == {
        victim["id"]: again["pid"],
        bystander["id"]: bystander["pid"],
    }


# -- 5. one controller per state dir -----------------------------------------------------------------


def test_second_controller_on_the_same_state_dir_is_refused(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    pids = {i["id"]: i["pid"] for i in service_now(od)["instances"]}

    second = subprocess.run(
        [sys.executable, "-m", "ondeck", "up", str(repo.path), "--api", "127.0.0.1:0"],
        env=od.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    said = " ".join((second.stdout + second.stderr).split())
    assert second.returncode != 0, said
    assert "already running" in said
    assert str(od.state_dir) in said
    assert od.proc is not None and od.proc.poll() is None
    assert {i["id"]: i["pid"] for i in service_now(od)["instances"]} == pids
    assert {i: h.pid for i, h in marked(od.state_dir).items()} == pids


# -- 6. the git remote going away ----------------------------------------------------------------------


def _running_untouched(od: Ondeck, pids: dict[str, int]) -> Callable[[], None]:
    def check() -> None:
        env = env_now(od)
        web = next(s for s in env["services"] if s["name"] == "web")
        assert {i["id"]: i["pid"] for i in web["instances"]} == pids
        assert env["health"] == "Healthy", env
        assert all(alive(pid) for pid in pids.values())

    return check


def test_unreachable_remote_keeps_instances_and_recovers(
    repo: Repo, ondeck: Factory, tmp_path: Path
) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    pids = {i["id"]: i["pid"] for i in service_now(od)["instances"]}

    away = tmp_path / "moved-away"
    repo.path.rename(away)
    env = wait_for(lambda: (e := env_now(od))["error"] and e, "the fetch error to show")
    assert "fetch" in env["error"]
    hold(2.0, _running_untouched(od, pids))
    assert "fetch" in od.env_status()["error"]

    away.rename(repo.path)
    new = repo.commit("1.0.1", SIMPLE_SPEC.replace('"1.0.0"', '"1.0.1"'))
    env = od.wait_synced(new, timeout=60)
    assert env["error"] is None
    web = od.service()
    assert web is not None
    assert {app_get(i["port"])["version"] for i in web["instances"]} == {"1.0.1"}


def test_force_pushed_branch_deploys_the_new_head(repo: Repo, ondeck: Factory) -> None:
    base = repo.commit("first release", SIMPLE_SPEC)
    doomed = repo.commit("1.0.1", SIMPLE_SPEC.replace('"1.0.0"', '"1.0.1"'))
    od = ondeck(repo.path)
    settle(od, doomed)

    git(repo.path, "reset", "-q", "--hard", base)
    rewritten = repo.commit("1.0.2 instead", SIMPLE_SPEC.replace('"1.0.0"', '"1.0.2"'))
    assert subprocess.run(
        ["git", "merge-base", "--is-ancestor", doomed, rewritten], cwd=repo.path, check=False
    ).returncode

    env = od.wait_synced(rewritten)
    assert env["commit"]["message"] == "1.0.2 instead"
    web = od.service()
    assert web is not None
    assert web["version"] == "1.0.2"
    assert {i["revision"] for i in web["instances"]} == {rewritten}
    assert {app_get(i["port"])["version"] for i in web["instances"]} == {"1.0.2"}


def test_deleted_branch_shows_an_error_and_keeps_instances(repo: Repo, ondeck: Factory) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    git(repo.path, "branch", "feature")
    od = ondeck(repo.path, "--branch", "feature")
    settle(od, sha)
    pids = {i["id"]: i["pid"] for i in service_now(od)["instances"]}

    git(repo.path, "branch", "-D", "feature")

    env = wait_for(lambda: (e := env_now(od))["error"] and e, "the missing branch to show")
    assert "feature" in env["error"]
    assert "not found" in env["error"]
    hold(2.0, _running_untouched(od, pids))
    status = od.env_status()
    assert "feature" in status["error"]
    assert status["revision"] == sha


def test_controller_restarted_during_an_outage_still_supervises(
    repo: Repo, ondeck: Factory, tmp_path: Path
) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    pids = {i["id"]: i["pid"] for i in service_now(od)["instances"]}
    assert od.stop() == 0

    repo.path.rename(tmp_path / "moved-away")
    od.start()

    env = wait_for(lambda: (e := env_now(od))["error"] and e, "the fetch error to show")
    assert "fetch" in env["error"]
    assert env["revision"] == sha
    od.wait_synced(sha)
    hold(1.0, _running_untouched(od, pids))
    # What was last applied is still supervised: a killed instance comes back.
    victim = service_now(od)["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    assert restarted(od, victim)["restarts"] == 1
    assert len(marked(od.state_dir)) == len(pids)


# -- 7. graceful stop -------------------------------------------------------------------------------------


def test_stop_kills_after_grace_and_takes_the_process_group(repo: Repo, ondeck: Factory) -> None:
    shutil.copy(FIXTURES / "apps" / "stubborn_child.py", repo.path / "stubborn_child.py")
    sha = repo.commit("three apps", STOP_SPEC.replace("REPLICAS", "1"))
    od = ondeck(repo.path)
    settle(od, sha)
    leaders = {name: service_now(od, name)["instances"][0] for name in STOP_NAMES}
    for name in ("forker", "orphaner"):
        wait_for(partial(group_members, leaders[name]["pid"]), f"{name}'s child")
    orphaner_log = Path(leaders["orphaner"]["log_path"])
    wait_for(lambda: "child ready" in orphaner_log.read_text(), "the orphaner's child to be ready")
    children = {name: group_members(leaders[name]["pid"]) for name in ("forker", "orphaner")}
    assert all(len(pids) == 1 for pids in children.values()), children
    everyone = [i["pid"] for i in leaders.values()] + [p for ps in children.values() for p in ps]

    down = repo.commit("scale to zero", STOP_SPEC.replace("REPLICAS", "0"))

    wait_for(lambda: not any(alive(pid) for pid in everyone), "every process to be gone")
    od.wait_synced(down)
    assert all(service_now(od, name)["instances"] == [] for name in STOP_NAMES)
    assert marked(od.state_dir) == {}
    # SIGTERM was ignored, so only the SIGKILL after the grace can have ended it.
    assert "stopped gracefully" not in Path(leaders["stubborn"]["log_path"]).read_text()
    assert "stopped gracefully" in Path(leaders["forker"]["log_path"]).read_text()
    assert "stopped gracefully" in orphaner_log.read_text()
    log = od.log()
    for inst in leaders.values():
        assert f"stop {inst['id']} (scale down to 0)" in log


# -- 9. SIGTERM to the controller ---------------------------------------------------------------------------


def test_sigterm_leaves_instances_running_and_a_restart_adopts_them(
    repo: Repo, ondeck: Factory
) -> None:
    sha = repo.commit("first release", SIMPLE_SPEC)
    od = ondeck(repo.path)
    settle(od, sha)
    before = {i["id"]: i for i in service_now(od)["instances"]}
    synced_before = history(od)

    assert od.stop() == 0

    assert "instances keep running" in od.log()
    for inst in before.values():
        assert alive(inst["pid"])
        assert app_get(inst["port"])["instance"] == inst["id"]
    assert {i: h.pid for i, h in marked(od.state_dir).items()} == {
        i: inst["pid"] for i, inst in before.items()
    }

    first_run = len(od.log())
    od.start()
    od.wait_synced(sha)
    after = {i["id"]: i["pid"] for i in service_now(od)["instances"]}
    assert after == {i: inst["pid"] for i, inst in before.items()}
    assert {i: h.pid for i, h in marked(od.state_dir).items()} == after
    assert od.log()[first_run:].count("adopted ") == len(before)
    assert "started " not in od.log()[first_run:]
    assert [s for s in history(od) if s["id"] in {b["id"] for b in synced_before}] == synced_before
