"""Benchmark of the Kubernetes runtime against a real control plane (scripts/k8s-control-plane.sh).

Measures, with the peer `kubectl apply --server-side` + `kubectl rollout status`
in the same run:
  1. a spec change (new image) -> objects applied and the Deployment observed
     Available through a watch; ondeck's own overhead is the time spent
     rendering and applying (the rest is the Deployment controller and KWOK);
  2. a no-op reconcile with 50 services: wall time, requests sent, and write
     requests sent (goal: none).

Run: `.venv/bin/python bench/kube.py [--repeats 5]`; starts its own control
plane in a temporary directory (built once into ~/.cache/ondeck-k8s) and writes
bench/results/kube.json. docs/benchmarks.md explains the figures.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import describe, save_results, summarize
from ondeck.kube.render import Obj, dump, manifests
from ondeck.runtime.kubernetes import Cluster, KubernetesRuntime, connect
from ondeck.spec.load import parse, render_spec
from ondeck.state.desired import render
from ondeck.state.health import Health

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
        "peer_kubectl_apply_server_side_s": summarize(peer),
        "peer_write_requests": len(wanted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # SIGTERM and Ctrl-C both unwind, so the control plane below is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="ondeck-k8s-bench-") as tmp:
        directory = Path(tmp)
        subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, timeout=3600)
        try:
            kubeconfig = directory / "kubeconfig"
            runtime = CountingRuntime(connect(Cluster(kubeconfig)))
            rollout = bench_rollout(runtime, kubeconfig, args.repeats)
            noop = bench_noop(runtime, kubeconfig, args.repeats)
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False, timeout=120)
    results = {"rollout": rollout, "noop_50_services": noop, "goals": GOALS}
    path = save_results("kube", {"repeats": args.repeats}, results)
    print("spec change -> Available:", describe(rollout["ondeck_change_to_available_s"]))
    print("  ondeck overhead:      ", describe(rollout["ondeck_overhead_s"]))
    print("  peer kubectl:         ", describe(rollout["peer_kubectl_apply_and_rollout_status_s"]))
    print("no-op, 50 services:     ", describe(noop["ondeck_noop_s"]))
    print(f"  requests {noop['ondeck_requests_sent']}, writes {noop['ondeck_write_requests']}")
    print("  render (once a revision):", describe(noop["ondeck_render_s"]))
    print("  peer kubectl apply:   ", describe(noop["peer_kubectl_apply_server_side_s"]))
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
