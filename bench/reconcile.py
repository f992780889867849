"""Benchmark of promise 2 (converge): how fast and how cheaply `ondeck up` reconciles.

Measures, against a real git repo and a real `python -m ondeck up` on loopback:
  1. commit -> new release serving, via `ondeck sync --wait` (CLI and API) and
     via polling, minus the app's own start-up time (measured on its own);
  2. a no-op reconcile with N services: the pure core (`plan` + `diff`) and the
     controller's whole pass in-process, and the real controller's
     `ondeck_reconcile_duration_seconds` histogram;
  3. the controller's RSS and idle CPU with N services of one instance each.

Run: `.venv/bin/python bench/reconcile.py [--services 10,50,100]`; writes
bench/results/reconcile.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from common import (
    Controller,
    Repo,
    ServiceSpec,
    app_startup,
    bounded,
    cpu_times,
    describe,
    histogram,
    jitter,
    ms,
    rss_mb,
    save_results,
    spec_yaml,
    summarize,
    wait_for,
)
from ondeck.controller import Controller as InProcessController
from ondeck.daemon import build_controller
from ondeck.environment import Options
from ondeck.source.git import CommitInfo
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import Desired, render
from ondeck.state.diff import diff
from ondeck.state.lifecycle import InstanceState, ProbeState
from ondeck.state.live import Live, LiveInstance, Phase
from ondeck.state.plan import plan
from ondeck.store import InstanceRecord
from ondeck.supervisor import Instance

RECONCILE_METRIC = "ondeck_reconcile_duration_seconds"
GOALS = {"sync_overhead_s": 1.0, "noop_100_s": 0.1, "rss_100_mb": 100.0, "idle_cpu_100_pct": 2.0}
FAR_POLL = "600s"  # a controller that should only act when asked


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--services", default="10,50,100", help="service counts (default 10,50,100)")
    p.add_argument("--sync-runs", type=int, default=10, help="commits synced with sync --wait")
    p.add_argument("--poll-runs", type=int, default=10, help="commits picked up by polling")
    p.add_argument("--poll", type=float, default=1.0, help="poll interval of that test, seconds")
    p.add_argument("--idle", type=float, default=10.0, help="idle window per N, seconds")
    p.add_argument("--idle-poll", default="10s", help="--poll of the idle controllers")
    p.add_argument("--noop-syncs", type=int, default=10, help="no-op syncs per N (histogram)")
    p.add_argument("--iterations", type=int, default=300, help="in-process iterations per N")
    p.add_argument("--startup-runs", type=int, default=10, help="direct app start-ups")
    p.add_argument("--budget", type=float, default=1500.0, help="hard limit, seconds")
    p.add_argument("--skip-real", action="store_true", help="in-process parts only")
    return p.parse_args(argv)


class Tracker:
    """Every controller started, so all of them (and their instances) are cleaned up."""

    def __init__(self) -> None:
        self.controllers: list[Controller] = []

    def start(self, repo: Repo, state_dir: Path, *flags: str) -> Controller:
        ctl = Controller(repo.path, state_dir, *flags)
        self.controllers.append(ctl)
        return ctl.start()

    def cleanup(self) -> None:
        for ctl in self.controllers:
            ctl.cleanup()


def web_spec(version: int) -> str:
    return spec_yaml([ServiceSpec("web", version=str(version))])


def new_instance(ctl: Controller, revision: str) -> InstanceRecord | None:
    """The healthy instance of `revision`, once the controller recorded it healthy."""
    return next(
        (i for i in ctl.instances() if i.revision == revision and i.healthy_since is not None),
        None,
    )


def last_sync(ctl: Controller) -> dict[str, Any]:
    rows: list[dict[str, Any]] = ctl.get("/api/v1/history?limit=1")["syncs"]
    return rows[0]


# -- 1. commit -> serving -----------------------------------------------------------------


def one_sync(ctl: Controller, repo: Repo, version: int, via: str) -> dict[str, Any]:
    """Commit, run `ondeck sync --wait` (or the API call it makes), time the result."""
    sha = repo.commit(f"release {version}", web_spec(version))
    started = time.time()
    if via == "cli":
        ctl.sync_cli()
    else:
        ctl.sync()
    returned = time.time()
    inst = wait_for(lambda: new_instance(ctl, sha), f"{sha[:12]} healthy", 10.0)
    assert inst.healthy_since is not None and inst.started_at is not None
    sync = last_sync(ctl)
    return {
        "via": via,
        "returned_s": returned - started,
        "serving_s": inst.healthy_since - started,
        "to_sync_start_s": sync["started_at"] - started,  # fetch + render + export
        "to_spawn_s": inst.started_at - started,
        "healthy_to_done_s": sync["finished_at"] - inst.healthy_since,  # old one stopped
        "result": sync["result"],
    }


def sync_latency(tracker: Tracker, tmp: Path, runs: int, startup: float) -> dict[str, Any]:
    repo = Repo(tmp / "repo-sync")
    first = repo.commit("release 0", web_spec(0))
    ctl = tracker.start(repo, tmp / "state-sync", "--poll", FAR_POLL)
    ctl.wait_synced(first, 60.0)
    samples = [one_sync(ctl, repo, i + 1, "cli" if i % 2 == 0 else "api") for i in range(runs)]
    ctl.cleanup()
    return {"runs": samples, **latency_stats(samples, startup)}


def latency_stats(samples: list[dict[str, Any]], startup: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for via in ("cli", "api"):
        mine = [s for s in samples if s["via"] == via]
        out[via] = {
            key: summarize([s[key] for s in mine])
            for key in ("returned_s", "serving_s", "to_sync_start_s", "to_spawn_s")
        }
        out[via]["overhead_s"] = summarize([s["serving_s"] - startup for s in mine])
    return out


def one_poll(ctl: Controller, repo: Repo, version: int, poll: float) -> dict[str, Any]:
    jitter(poll)  # commit at a random phase of the poll timer
    sha = repo.commit(f"release {version}", web_spec(version))
    committed = repo.committed_at
    inst = wait_for(lambda: new_instance(ctl, sha), f"{sha[:12]} healthy", 30.0, every=0.01)
    ctl.wait_synced(sha, 30.0, every=0.1)
    assert inst.healthy_since is not None
    sync = last_sync(ctl)
    return {
        "serving_s": inst.healthy_since - committed,
        "to_sync_start_s": sync["started_at"] - committed,
    }


def poll_latency(
    tracker: Tracker, tmp: Path, runs: int, poll: float, startup: float
) -> dict[str, Any]:
    repo = Repo(tmp / "repo-poll")
    first = repo.commit("release 0", web_spec(0))
    ctl = tracker.start(repo, tmp / "state-poll", "--poll", f"{poll}s")
    ctl.wait_synced(first, 60.0)
    samples = [one_poll(ctl, repo, i + 1, poll) for i in range(runs)]
    ctl.cleanup()
    return {
        "poll_s": poll,
        "runs": samples,
        "serving_s": summarize([s["serving_s"] for s in samples]),
        "to_sync_start_s": summarize([s["to_sync_start_s"] for s in samples]),
        "overhead_s": summarize([s["serving_s"] - startup for s in samples]),
    }


# -- 2. no-op reconcile, in process ---------------------------------------------------------


def names(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(n)]


def render_text(text: str) -> Desired:
    """What the controller does with a new revision's `ondeck.yaml` (git reads aside)."""
    return render(render_spec(parse(text)), "default", "a" * 40, "b" * 40)


def synthetic_live(desired: Desired) -> Live:
    instances = tuple(
        LiveInstance(
            id=f"{svc.name}-{svc.fingerprint[:4]}-{i}",
            service=svc.name,
            fingerprint=svc.fingerprint,
            revision=desired.revision,
            phase=Phase.RUNNING,
            ready=True,
            pid=10000 + i,
            port=20000 + i,
            started_at=1.0,
        )
        for i, svc in enumerate(desired.services)
    )
    return Live(desired.env, instances)


def timed(fn: Callable[[], object], iterations: int) -> dict[str, float | int]:
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return summarize(samples)


def core_noop(desired: Desired, live: Live, iterations: int) -> dict[str, Any]:
    """`plan` + `diff` of a synced environment: what a no-op pass decides from."""
    now = time.time()
    steps = plan(desired, live, now)
    if not steps.done:
        raise RuntimeError(f"the synthetic state is not in sync: {steps}")
    return {
        "plan_s": timed(lambda: plan(desired, live, now), iterations),
        "diff_s": timed(lambda: diff(desired, live), iterations),
        "plan_and_diff_s": timed(
            lambda: (plan(desired, live, now), diff(desired, live)), iterations
        ),
    }


@contextmanager
def inprocess_controller(tmp: Path, repo: Path, desired: Desired) -> Iterator[InProcessController]:
    """A `Controller` (never run) whose one environment is synced with N ready instances.

    No process is started: the supervisor's instances are records marked ready,
    which is all a no-op pass reads.
    """
    ctl = build_controller(Options(repo=str(repo), state_dir=tmp))
    state = ctl.envs["default"]
    state.desired = desired
    state.commit = CommitInfo(desired.revision, "Bench <b@example.com>", "bench", time.time())
    sup = state.ensure_supervisor(desired.app)
    for live in synthetic_live(desired).instances:
        rec = InstanceRecord(
            id=live.id,
            app=desired.app,
            env=state.name,
            service=live.service,
            fingerprint=live.fingerprint,
            revision=live.revision,
            release_dir=str(tmp / "release"),
            log_path=str(tmp / f"{live.id}.log"),
            port=live.port,
            pid=live.pid,
            state=InstanceState.RUNNING,
            started_at=live.started_at,
            healthy_since=live.started_at,
        )
        sup.instances[rec.id] = Instance(rec, probe=ProbeState.READY)
    try:
        yield ctl
    finally:
        ctl.close()


def controller_noop(tmp: Path, repo: Path, desired: Desired, iterations: int) -> dict[str, Any]:
    """The controller's own no-op pass and two of its parts, and `status()`.

    A pass is the env's reconcile plus the status and metrics export that follow
    it (the status is rebuilt only when something changed); the export and a full
    rebuild of the status (`status_rebuild_s`) are also timed on their own.
    """
    with inprocess_controller(tmp, repo, desired) as ctl:
        state = ctl.envs["default"]

        async def passes() -> dict[str, float | int]:
            samples = []
            for _ in range(iterations):
                started = time.perf_counter()
                await state.reconcile()
                ctl._export_metrics(ctl.status())
                samples.append(time.perf_counter() - started)
            return summarize(samples)

        pass_stats = asyncio.run(passes())
        if state.op is not None:
            raise RuntimeError("the in-process pass acted: the synthetic state is not in sync")
        return {
            "pass_s": pass_stats,
            "export_metrics_s": timed(lambda: ctl._export_metrics(ctl.status()), iterations),
            "status_s": timed(ctl.status, iterations),
            "status_rebuild_s": timed(ctl._build_status, iterations),
        }


def inprocess(tmp: Path, counts: list[int], iterations: int) -> dict[str, Any]:
    repo = Repo(tmp / "repo-inprocess")
    repo.commit("bench", spec_yaml([ServiceSpec("web")]))
    out: dict[str, Any] = {}
    for n in counts:
        text = synthetic_spec(n)
        desired = render_text(text)
        live = synthetic_live(desired)
        render_time = timed(partial(render_text, text), max(iterations // 10, 5))
        out[str(n)] = {
            "render_s": render_time,
            **core_noop(desired, live, iterations),
            **controller_noop(tmp / f"inprocess-{n}", repo.path, desired, iterations),
        }
    return out


# -- 3. a real controller with N services: RSS, idle CPU, reconcile histogram ---------------


def idle_window(ctl: Controller, seconds: float) -> dict[str, Any]:
    """CPU and RSS of the controller while nothing changes; only /proc is read."""
    pid = ctl.pid
    before_metrics = ctl.metrics()
    c0, t0 = cpu_times(pid), time.monotonic()
    rss = [rss_mb(pid)]
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        rss.append(rss_mb(pid))
    c1, elapsed = cpu_times(pid), time.monotonic() - t0
    s0, n0 = histogram(before_metrics, RECONCILE_METRIC)
    s1, n1 = histogram(ctl.metrics(), RECONCILE_METRIC)
    return {
        "seconds": elapsed,
        "cpu_pct": 100 * (c1.own - c0.own) / elapsed,
        "children_cpu_pct": 100 * (c1.children - c0.children) / elapsed,
        "rss_mb": max(rss),
        "reconciles": n1 - n0,
        "reconcile_mean_s": (s1 - s0) / (n1 - n0) if n1 > n0 else None,
    }


def noop_syncs(ctl: Controller, count: int) -> dict[str, Any]:
    """`sync --wait` with nothing new: fetch, a no-op pass, the status answer."""
    s0, n0 = histogram(ctl.metrics(), RECONCILE_METRIC)
    round_trips = []
    for _ in range(count):
        started = time.perf_counter()
        ctl.sync()
        round_trips.append(time.perf_counter() - started)
    s1, n1 = histogram(ctl.metrics(), RECONCILE_METRIC)
    return {
        "round_trip_s": summarize(round_trips),
        "reconciles": n1 - n0,
        "reconcile_mean_s": (s1 - s0) / (n1 - n0) if n1 > n0 else None,
        "rss_mb_after": rss_mb(ctl.pid),
    }


def real_controller(
    tracker: Tracker, tmp: Path, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    repo = Repo(tmp / f"repo-{n}")
    sha = repo.commit(f"{n} services", synthetic_spec(n))
    started = time.monotonic()
    ctl = tracker.start(repo, tmp / f"state-{n}", "--poll", args.idle_poll)
    ctl.wait_synced(sha, 60.0 + 2.0 * n, every=1.0)
    synced = time.monotonic() - started
    time.sleep(2.0)  # let every probe settle on its steady interval
    idle = idle_window(ctl, args.idle)
    syncs = noop_syncs(ctl, args.noop_syncs)
    s, count = histogram(ctl.metrics(), RECONCILE_METRIC)
    ctl.cleanup()
    return {
        "time_to_synced_s": synced,
        "idle": idle,
        "noop_syncs": syncs,
        "histogram_total": {"sum_s": s, "count": count},
    }


def synthetic_spec(n: int) -> str:
    return spec_yaml([ServiceSpec(name, health="{tcp: true}") for name in names(n)])


# -- report -------------------------------------------------------------------------------------


def goals(results: dict[str, Any], counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sync = results.get("sync", {})
    if sync:
        overhead = sync["cli"]["overhead_s"]["median"]
        out["sync_overhead"] = check(overhead, GOALS["sync_overhead_s"], "s")
    top = str(max(counts))
    inproc = results["inprocess"].get(top)
    if inproc:
        out[f"noop_{top}_inprocess"] = check(inproc["pass_s"]["median"], GOALS["noop_100_s"], "s")
    real = results.get("real", {}).get(top)
    if real and real["noop_syncs"]["reconcile_mean_s"] is not None:
        out[f"noop_{top}_histogram"] = check(
            real["noop_syncs"]["reconcile_mean_s"], GOALS["noop_100_s"], "s"
        )
    if real:
        out[f"rss_{top}"] = check(real["idle"]["rss_mb"], GOALS["rss_100_mb"], "MB")
        out[f"idle_cpu_{top}"] = check(real["idle"]["cpu_pct"], GOALS["idle_cpu_100_pct"], "%")
    return out


def check(value: float, target: float, unit: str) -> dict[str, Any]:
    return {"value": value, "target": target, "unit": unit, "met": value < target}


def print_summary(results: dict[str, Any], startup: dict[str, Any]) -> None:
    print(f"\napp start-up on its own: {describe(startup)}")
    if "sync" in results:
        for via in ("cli", "api"):
            r = results["sync"][via]
            label = "ondeck sync --wait" if via == "cli" else "POST /api/v1/sync"
            print(f"{label}: returns {describe(r['returned_s'])}")
            print(f"  commit -> serving {describe(r['serving_s'])}")
            print(f"  minus app start-up (controller overhead) {describe(r['overhead_s'])}")
            print(f"  -> sync opened (fetch, render, export) {describe(r['to_sync_start_s'])}")
    if "poll" in results:
        r = results["poll"]
        print(f"polling every {r['poll_s']:g}s: commit -> serving {describe(r['serving_s'])}")
        print(f"  minus app start-up {describe(r['overhead_s'])}")
    for n, r in results["inprocess"].items():
        print(
            f"no-op, {n} services, in process: plan+diff {ms(r['plan_and_diff_s']['median'])}, "
            f"controller pass {ms(r['pass_s']['median'])} (p90 {ms(r['pass_s']['p90'])}; "
            f"of which metrics export {ms(r['export_metrics_s']['median'])}), "
            f"status() {ms(r['status_s']['median'])}, render {ms(r['render_s']['median'])}"
        )
    for n, r in results.get("real", {}).items():
        idle, syncs = r["idle"], r["noop_syncs"]
        print(
            f"real controller, {n} services: synced in {r['time_to_synced_s']:.1f}s; "
            f"idle {idle['seconds']:.0f}s: RSS {idle['rss_mb']:.1f} MB, CPU {idle['cpu_pct']:.2f}% "
            f"(+ git children {idle['children_cpu_pct']:.2f}%); "
            f"no-op reconcile (histogram) {ms(syncs['reconcile_mean_s'])}, "
            f"no-op sync round trip {ms(syncs['round_trip_s']['median'])}"
        )


def print_goals(table: dict[str, Any]) -> None:
    print("\ngoals:")
    for name, g in table.items():
        shown = (
            f"{g['value'] * 1000:.1f} ms" if g["unit"] == "s" else f"{g['value']:.2f} {g['unit']}"
        )
        target = (
            f"{g['target'] * 1000:.0f} ms" if g["unit"] == "s" else f"{g['target']:g} {g['unit']}"
        )
        print(f"  {name:28} {shown:>12}  < {target:8} {'met' if g['met'] else 'MISSED'}")


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path, tracker: Tracker) -> tuple[dict[str, Any], list[int]]:
    counts = [int(x) for x in args.services.split(",") if x.strip()]
    startup = app_startup(tmp / "app", args.startup_runs)
    print(f"app start-up on its own: {describe(startup)}", flush=True)
    results: dict[str, Any] = {"app_startup_s": startup}
    results["inprocess"] = inprocess(tmp, counts, args.iterations)
    print("in-process no-op reconcile: done", flush=True)
    if not args.skip_real:
        median = float(startup["median"])
        results["sync"] = sync_latency(tracker, tmp, args.sync_runs, median)
        print("sync --wait latency: done", flush=True)
        results["poll"] = poll_latency(tracker, tmp, args.poll_runs, args.poll, median)
        print("poll latency: done", flush=True)
        results["real"] = {}
        for n in counts:
            results["real"][str(n)] = real_controller(tracker, tmp, n, args)
            print(f"real controller with {n} services: done", flush=True)
    return results, counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tracker = Tracker()
    with bounded(args.budget), tempfile.TemporaryDirectory(prefix="ondeck-bench-") as tmp:
        try:
            results, counts = run(args, Path(tmp), tracker)
        finally:
            tracker.cleanup()
    results["goals"] = goals(results, counts)
    print_summary(results, results["app_startup_s"])
    print_goals(results["goals"])
    config = {k: v for k, v in vars(args).items()}
    print(f"\nwrote {save_results('reconcile', config, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
