"""Benchmark of the Kubernetes runtime against a real control plane (scripts/k8s-control-plane.sh).

Measures, with the peer `kubectl apply --server-side` + `kubectl rollout status`
in the same run:
  1. a spec change (new image) -> objects applied and the Deployment observed
     Available through a watch; ondeck's own overhead is the time spent
     rendering and applying (the rest is the Deployment controller and KWOK);
  2. a no-op reconcile with 50 services: wall time, requests sent, and write
     requests sent (goal: none), reading live state from the watch-fed cache
     the controller keeps (runtime/kube_cache.py), and, for comparison, with
     one list per kind as without it;
  3. the same two through the controller (`ondeck up`'s Controller, run in
     this process so each check can be timed): a commit -> the sync Succeeded
     with the Deployment Available, and ondeck's overhead over the runtime
     alone (the direct path of 1, measured alternately in the same run); and
     the periodic check of an environment of 50 services already in sync
     (from when its cache is fresh), with every request it sends counted,
     the cache's own lists and watches included.

Run: `.venv/bin/python bench/kubernetes.py [--repeats 5]` (an alias of this
file, bench/kube.py); starts its own control plane in a temporary directory
(built once into ~/.cache/ondeck-k8s) and writes bench/results/kubernetes.json.
docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import Repo, describe, save_results, summarize
from ondeck.cluster import ClusterEnv
from ondeck.controller import Controller
from ondeck.daemon import build_controller
from ondeck.environment import Environment, Options
from ondeck.kube.render import Obj, dump, manifests
from ondeck.runtime.kube_cache import KubeCache
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, cache_sources, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import render
from ondeck.state.health import Health
from ondeck.state.lifecycle import SyncResult, Trigger

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "k8s-control-plane.sh"
GOALS = {"overhead_s": 1.0, "noop_50_s": 0.2, "noop_50_writes": 0}


def spec_text(app: str, services: int, tag: str) -> str:
    lines = [f"app: {app}", "runtime: container", "services:"]
    for i in range(services):
        lines += [
            f"  s{i}:",
            f"    image: registry.example/{app}:{tag}",
            "    port: 8080",
            "    env: {MODE: bench}",
            f"    routes: [{{host: s{i}.example}}]",
        ]
    return "\n".join(lines) + "\n"


def kube_spec(app: str, services: int, tag: str) -> str:
    return spec_text(app, services, tag).replace("runtime: container", "runtime: kubernetes")


def objects(app: str, services: int, tag: str) -> list[Obj]:
    spec = render_spec(parse(spec_text(app, services, tag)), None)
    return manifests(render(spec, "default", "", ""))


class CountingRuntime(KubernetesRuntime):
    """Counts every request the runtime sends, by method."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()

    def _request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        self.sent[method] += 1
        return super()._request(method, path, body, **query)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        timeout=300,
    )


def bench_rollout(runtime: CountingRuntime, kubeconfig: Path, repeats: int) -> dict[str, Any]:
    app = "roll"
    runtime.apply(objects(app, 1, "0"))
    runtime.wait(app, app, "default", ["s0"], timeout=120)
    total, overhead, peer = [], [], []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        wanted = objects(app, 1, f"ondeck{i}")
        result = runtime.apply(wanted, f"rev{i}")
        applied = time.perf_counter()
        status = runtime.wait(app, app, "default", ["s0"], timeout=120)
        done = time.perf_counter()
        if status.health is not Health.HEALTHY or not result.changed:
            raise SystemExit(f"rollout {i} did not finish: {status.reasons()}")
        total.append(done - start)
        overhead.append(applied - start)

        stream = dump(objects(app, 1, f"kubectl{i}"))
        start = time.perf_counter()
        kubectl(
            kubeconfig, "apply", "--server-side", "--field-manager=ondeck", "-f", "-", stdin=stream
        )
        kubectl(kubeconfig, "-n", app, "rollout", "status", "deployment/s0", "--timeout=120s")
        peer.append(time.perf_counter() - start)
    return {
        "ondeck_change_to_available_s": summarize(total),
        "ondeck_overhead_s": summarize(overhead),
        "peer_kubectl_apply_and_rollout_status_s": summarize(peer),
    }


def bench_noop(runtime: CountingRuntime, kubeconfig: Path, repeats: int) -> dict[str, Any]:
    app, n = "noop", 50
    wanted = objects(app, n, "1")
    runtime.apply(wanted)
    runtime.wait(app, app, "default", [f"s{i}" for i in range(n)], timeout=300)

    def noops() -> tuple[list[float], list[float], list[int], list[int]]:
        times, renders, writes, sent = [], [], [], []
        for _ in range(repeats):
            # a controller renders once per revision; a no-op reconcile re-applies that
            start = time.perf_counter()
            again = objects(app, n, "1")
            renders.append(time.perf_counter() - start)
            runtime.sent.clear()
            start = time.perf_counter()
            result = runtime.apply(again)
            times.append(time.perf_counter() - start)
            writes.append(result.writes + runtime.sent["PATCH"] + runtime.sent["DELETE"])
            sent.append(sum(runtime.sent.values()))
        return times, renders, writes, sent

    listed, _, listed_writes, listed_sent = noops()  # one list per kind, no cache
    cache = KubeCache(runtime.api, cache_sources(app, app, "default")).start()
    try:
        if not cache.wait_fresh(120):
            raise SystemExit("the cache of the no-op environment did not become fresh")
        runtime.use_cache(app, app, "default", cache)
        before = cache.requests()
        times, renders, writes, sent = noops()
        cache_sent = sum((cache.requests() - before).values())
    finally:
        runtime.use_cache(app, app, "default", None)
        cache.stop()
    peer = []
    stream = dump(wanted)
    for _ in range(repeats):
        start = time.perf_counter()
        kubectl(
            kubeconfig, "apply", "--server-side", "--field-manager=ondeck", "-f", "-", stdin=stream
        )
        peer.append(time.perf_counter() - start)
    return {
        "objects": len(wanted),
        "ondeck_noop_s": summarize(times),
        "ondeck_render_s": summarize(renders),
        "ondeck_requests_sent": max(sent),
        "ondeck_write_requests": max(writes),
        "cache_requests_during_noops": cache_sent,
        "ondeck_noop_uncached_s": summarize(listed),
        "ondeck_uncached_requests_sent": max(listed_sent),
        "ondeck_uncached_write_requests": max(listed_writes),
        "peer_kubectl_apply_server_side_s": summarize(peer),
        "peer_write_requests": len(wanted),
    }


# --- through the controller ---------------------------------------------------------------


async def _settled(controller: Controller, rev: str, timeout: float = 300) -> Environment:
    """The default environment once its sync of `rev` Succeeded (polled on the loop)."""
    env = controller.envs["default"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = controller.store.get_env("default")
        if env.op is None and live is not None and live.live_revision == rev:
            if env.last_result is not SyncResult.SUCCEEDED:
                raise SystemExit(f"sync of {rev[:12]} ended {env.last_result}")
            return env
        if env.error is not None:
            raise SystemExit(f"sync of {rev[:12]} refused: {env.error}")
        await asyncio.sleep(0.005)
    raise SystemExit(f"sync of {rev[:12]} not done in {timeout:.0f}s")


def _controller(
    tmp: Path, name: str, kubeconfig: Path, spec: str, check: float
) -> tuple[Controller, Repo, str]:
    repo = Repo(tmp / f"{name}-repo")
    rev = repo.commit("first", spec)
    opts = Options(
        repo=str(repo.path),
        state_dir=tmp / f"{name}-state",
        poll=3600.0,  # commits are announced (a webhook would), never polled for
        drift_check=check,
        kubeconfig=kubeconfig,
    )
    return build_controller(opts), repo, rev


async def bench_controller_rollout(
    runtime: CountingRuntime, tmp: Path, kubeconfig: Path, repeats: int
) -> dict[str, Any]:
    app = "ctl"
    controller, repo, rev = _controller(tmp, app, kubeconfig, kube_spec(app, 1, "0"), 30.0)
    direct = "dir"
    runtime.sync(_desired(direct, 1, "0"), "r0", 120)
    task = asyncio.create_task(controller.run())
    try:
        await _settled(controller, rev)
        through, alone, recorded = [], [], []
        for i in range(1, repeats + 1):
            rev = await asyncio.to_thread(repo.commit, f"v{i}", kube_spec(app, 1, f"c{i}"))
            start = time.perf_counter()
            controller.refresh(Trigger.WEBHOOK)
            env = await _settled(controller, rev)
            through.append(time.perf_counter() - start)
            row = controller.store.history(env="default", limit=1)[0]
            assert row.finished_at is not None
            recorded.append(row.finished_at - row.started_at)

            desired = _desired(direct, 1, f"d{i}")
            start = time.perf_counter()
            outcome = await asyncio.to_thread(runtime.sync, desired, f"r{i}", 120)
            alone.append(time.perf_counter() - start)
            if outcome.status.health is not Health.HEALTHY:
                raise SystemExit(f"direct rollout {i}: {outcome.status.reasons()}")
        assert env.desired is not None
    finally:
        controller.stop()
        await task
    through_s, alone_s = summarize(through), summarize(alone)
    return {
        "controller_commit_to_available_s": through_s,
        "controller_sync_duration_in_history_s": summarize(recorded),
        "runtime_sync_alone_s": alone_s,
        "controller_overhead_median_s": through_s["median"] - alone_s["median"],
    }


def _desired(app: str, services: int, tag: str) -> Any:
    spec = render_spec(parse(kube_spec(app, services, tag)), None)
    return render(spec, "default", f"rev-{tag}", "")


async def bench_controller_noop(tmp: Path, kubeconfig: Path, repeats: int) -> dict[str, Any]:
    app, n = "ctlnoop", 50
    controller, _, rev = _controller(tmp, app, kubeconfig, kube_spec(app, n, "1"), 0.5)
    task = asyncio.create_task(controller.run())
    try:
        env = await _settled(controller, rev)
        cluster = env.cluster
        assert isinstance(cluster, ClusterEnv)
        runtime = cluster.runtime(True)
        sent: Counter[str] = Counter()
        send = runtime._request

        def counted(method: str, path: str, body: Any = None, **query: Any) -> Any:
            sent[method] += 1
            return send(method, path, body, **query)

        cache = cluster._cache
        fresh = cache is not None and await asyncio.to_thread(cache.wait_fresh, 120)
        if cache is None or not fresh:
            raise SystemExit("the controller's cache did not become fresh")
        while cluster.busy:  # a check begun before the cache was fresh is not measured
            await asyncio.sleep(0.01)
        before = cache.requests()
        runtime._request = counted  # type: ignore[method-assign]
        check = cluster._check
        times: list[float] = []
        healed: list[int] = []

        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            found = check(*args)
            times.append(time.perf_counter() - start)
            healed.append(int(found[0].changed_anything))
            return found

        cluster._check = timed  # type: ignore[method-assign,assignment]
        wanted = max(10, repeats * 4)
        deadline = time.monotonic() + 120
        while len(times) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        writes = sum(sent[m] for m in ("PATCH", "POST", "PUT", "DELETE"))
        cache_sent = cache.requests() - before
    finally:
        controller.stop()
        await task
    return {
        "services": n,
        "checks": len(times),
        "controller_noop_check_s": summarize(times),
        "requests_sent": sum(sent.values()),
        "requests_per_check": sum(sent.values()) / max(1, len(times)),
        "write_requests": writes,
        "cache_lists_and_watches_meanwhile": sum(cache_sent.values()),
        "checks_that_changed_something": sum(healed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # SIGTERM and Ctrl-C both unwind, so the control plane below is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # 2 cores shared: say how busy
    with tempfile.TemporaryDirectory(prefix="ondeck-k8s-bench-") as tmp:
        directory = Path(tmp)
        subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, timeout=3600)
        try:
            kubeconfig = directory / "kubeconfig"
            runtime = CountingRuntime(connect(Cluster(kubeconfig)))
            rollout = bench_rollout(runtime, kubeconfig, args.repeats)
            noop = bench_noop(runtime, kubeconfig, args.repeats)
            through = asyncio.run(
                bench_controller_rollout(runtime, directory, kubeconfig, args.repeats)
            )
            noop_through = asyncio.run(bench_controller_noop(directory, kubeconfig, args.repeats))
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False, timeout=120)
    results = {
        "rollout": rollout,
        "noop_50_services": noop,
        "controller_rollout": through,
        "controller_noop_50_services": noop_through,
        "goals": GOALS,
        "loadavg_at_start": load_at_start,
    }
    path = save_results("kubernetes", {"repeats": args.repeats}, results)
    print("spec change -> Available:", describe(rollout["ondeck_change_to_available_s"]))
    print("  ondeck overhead:      ", describe(rollout["ondeck_overhead_s"]))
    print("  peer kubectl:         ", describe(rollout["peer_kubectl_apply_and_rollout_status_s"]))
    print("no-op, 50 services:     ", describe(noop["ondeck_noop_s"]))
    print(f"  requests {noop['ondeck_requests_sent']}, writes {noop['ondeck_write_requests']}")
    print(f"  cache lists/watches meanwhile: {noop['cache_requests_during_noops']}")
    print("  without the cache:    ", describe(noop["ondeck_noop_uncached_s"]))
    print(f"  requests {noop['ondeck_uncached_requests_sent']}")
    print("  render (once a revision):", describe(noop["ondeck_render_s"]))
    print("  peer kubectl apply:   ", describe(noop["peer_kubectl_apply_server_side_s"]))
    print("through the controller:")
    print("  commit -> Available:  ", describe(through["controller_commit_to_available_s"]))
    print("  runtime alone:        ", describe(through["runtime_sync_alone_s"]))
    print(f"  overhead (medians):    {through['controller_overhead_median_s'] * 1000:.0f} ms")
    print("  no-op check, 50 svcs: ", describe(noop_through["controller_noop_check_s"]))
    print(
        f"  {noop_through['checks']} checks, {noop_through['requests_per_check']:.1f} requests"
        f" each, writes {noop_through['write_requests']}, cache lists/watches meanwhile"
        f" {noop_through['cache_lists_and_watches_meanwhile']}"
    )
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
