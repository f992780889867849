"""Benchmark of self-healing: `kill -9` of an instance -> a new healthy instance.

A real `python -m ondeck up` runs one service with R replicas of a tiny app.
Each replica is killed once (SIGKILL), so every measured restart is a first
crash, which restarts at once (the backoff starts at the second crash in a
row); one extra kill of an instance already restarted shows the backoff.
Timestamps are the controller's own, read from its SQLite store: the exit
event (when it noticed the exit), the new process' start, its first passing
probe. The app's own start-up time is measured on its own and subtracted.

Run: `.venv/bin/python bench/restart.py [--kills 10]`; writes
bench/results/restart.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    Controller,
    Repo,
    ServiceSpec,
    app_startup,
    bounded,
    describe,
    jitter,
    save_results,
    spec_yaml,
    summarize,
    wait_for,
)
from ondeck.store import InstanceRecord

GOAL_S = 0.1  # kill -> healthy, minus the app's own start-up, before any backoff
PROBE_EVERY = (
    0.05  # the supervisor probes a not-yet-ready instance this often (the last of FAST_PROBES)
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="instances killed, one kill each")
    p.add_argument("--gap", type=float, default=0.5, help="max random pause between kills, s")
    p.add_argument("--startup-runs", type=int, default=10, help="direct app start-ups")
    p.add_argument("--budget", type=float, default=600.0, help="hard limit, seconds")
    return p.parse_args(argv)


def record(ctl: Controller, inst_id: str) -> InstanceRecord:
    found = next((i for i in ctl.instances() if i.id == inst_id), None)
    if found is None:
        raise RuntimeError(f"instance {inst_id} is not in the controller's store")
    return found


def healthy_again(ctl: Controller, before: InstanceRecord) -> InstanceRecord | None:
    """The record of `before` once restarted and probed healthy, else None."""
    now = record(ctl, before.id)
    restarted = now.restarts > before.restarts and now.pid != before.pid
    return now if restarted and now.healthy_since is not None else None


def exit_seen_at(ctl: Controller, inst_id: str, after: float) -> float:
    """When the controller handled the exit (its `exit` event for `inst_id`)."""
    for event in ctl.events(limit=50):
        if (
            event["kind"] == "exit"
            and event["message"].startswith(inst_id)
            and event["at"] >= after
        ):
            return float(event["at"])
    raise RuntimeError(f"no exit event for {inst_id} after {after}")


def kill_and_wait(ctl: Controller, inst_id: str, timeout: float = 15.0) -> dict[str, float]:
    """SIGKILL one instance; the controller's timestamps of its way back, from the kill."""
    before = record(ctl, inst_id)
    if before.pid is None or before.healthy_since is None:
        raise RuntimeError(f"{inst_id} is not running and healthy: {before}")
    killed = time.time()
    os.kill(before.pid, signal.SIGKILL)
    after = wait_for(lambda: healthy_again(ctl, before), f"{inst_id} back", timeout, every=0.005)
    assert after.started_at is not None and after.healthy_since is not None
    seen = exit_seen_at(ctl, inst_id, killed)
    return {
        "exit_seen_s": seen - killed,
        "exit_to_spawn_s": after.started_at - seen,
        "kill_to_spawn_s": after.started_at - killed,
        "kill_to_healthy_s": after.healthy_since - killed,
        "spawn_to_healthy_s": after.healthy_since - after.started_at,
    }


def first_restarts(ctl: Controller, ids: list[str], gap: float) -> list[dict[str, float]]:
    samples = []
    for inst_id in ids:
        jitter(gap)
        samples.append(kill_and_wait(ctl, inst_id))
    return samples


def run(args: argparse.Namespace, tmp: Path, ctl_box: list[Controller]) -> dict[str, Any]:
    startup = app_startup(tmp / "app", args.startup_runs)
    print(f"app start-up on its own: {describe(startup)}", flush=True)
    repo = Repo(tmp / "repo")
    sha = repo.commit("restart bench", spec_yaml([ServiceSpec("web", replicas=args.kills)]))
    ctl = Controller(repo.path, tmp / "state", "--poll", "600s")
    ctl_box.append(ctl)
    ctl.start()
    ctl.wait_synced(sha, 60.0 + 2.0 * args.kills)
    ids = sorted(i.id for i in ctl.instances())
    samples = first_restarts(ctl, ids, args.gap)
    time.sleep(0.5)
    backoff = kill_and_wait(ctl, ids[0])  # a second crash in a row: backoff_initial applies
    median_startup = float(startup["median"])
    stats = {key: summarize([s[key] for s in samples]) for key in samples[0]}
    stats["overhead_s"] = summarize([s["kill_to_healthy_s"] - median_startup for s in samples])
    return {
        "app_startup_s": startup,
        "first_restart": {"runs": samples, **stats},
        "second_crash": backoff,
        "goal": {
            "value": stats["overhead_s"]["median"],
            "target": GOAL_S,
            "unit": "s",
            "met": stats["overhead_s"]["median"] < GOAL_S,
        },
    }


def print_summary(results: dict[str, Any]) -> None:
    first = results["first_restart"]
    print(f"\napp start-up on its own:          {describe(results['app_startup_s'])}")
    print(f"kill -> exit seen by controller:   {describe(first['exit_seen_s'])}")
    print(f"exit seen -> new process spawned:  {describe(first['exit_to_spawn_s'])}")
    print(f"kill -> spawned:                   {describe(first['kill_to_spawn_s'])}")
    print(f"spawned -> first passing probe:    {describe(first['spawn_to_healthy_s'])}")
    print(f"kill -> healthy:                   {describe(first['kill_to_healthy_s'])}")
    print(f"kill -> healthy minus app start-up: {describe(first['overhead_s'])}")
    print(f"  (not-ready instances are probed every {PROBE_EVERY * 1000:.0f} ms: part of it)")
    second = results["second_crash"]
    print(f"second crash in a row: kill -> spawned {second['kill_to_spawn_s'] * 1000:.0f} ms")
    goal = results["goal"]
    verdict = "met" if goal["met"] else "MISSED"
    print(
        f"goal: median overhead {goal['value'] * 1000:.1f} ms < {GOAL_S * 1000:.0f} ms: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    box: list[Controller] = []
    with bounded(args.budget), tempfile.TemporaryDirectory(prefix="ondeck-bench-") as tmp:
        try:
            results = run(args, Path(tmp), box)
        finally:
            for ctl in box:
                ctl.cleanup()
    print_summary(results)
    print(f"\nwrote {save_results('restart', vars(args), results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
