"""Benchmark of the git write path: push -> webhook -> new release serving.

A bare repository plays the hosted remote; `ondeck up` follows it with
polling set to an hour, so only the webhook can wake it. Each round commits a
new version with `ondeck set-version --push` (from a clone, as CI would),
then POSTs the provider's signed push event, and waits until the new release
serves. Timestamps are the controller's own (its SQLite store): sync start
and end, and the new instance's start and first passing probe, so the app's
own start-up time is taken out of the controller's figure.

Run: `.venv/bin/python bench/webhook_latency.py [--rounds 10]`; writes
bench/results/webhook_latency.json. There is no peer in the same run: Argo CD
(180 s default poll) and Flux (1 min default interval) cannot run here, so
their documented defaults are reported for scale, marked as such.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    Controller,
    ServiceSpec,
    app_startup,
    bounded,
    describe,
    git,
    save_results,
    spec_yaml,
    summarize,
)

SECRET = "bench-webhook-secret"
GOAL_S = 1.0
PEER_DEFAULTS_S = {"argo_cd_poll": 180.0, "flux_interval": 60.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--budget", type=float, default=300.0, help="hard limit, seconds")
    return p.parse_args(argv)


def remote(root: Path) -> tuple[Path, Path]:
    bare, clone = root / "remote.git", root / "clone"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "clone", "-q", str(bare), str(clone))
    from common import APP_SOURCE

    (clone / "app.py").write_text(APP_SOURCE)
    (clone / "ondeck.yaml").write_text(spec_yaml([ServiceSpec("web", version="0")]))
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "first")
    git(clone, "push", "-q", "origin", "main")
    return bare, clone


def set_version(clone: Path, version: str) -> str:
    argv = [
        sys.executable,
        "-m",
        "ondeck",
        "set-version",
        f"web={version}",
        "--push",
        "--no-sync",
        "--repo",
        str(clone),
        "--author",
        "CI <ci@example.com>",
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return git(clone, "rev-parse", "HEAD")


def push_event(ctl: Controller, bare: Path, sha: str) -> float:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"clone_url": f"file://{bare}", "default_branch": "main"},
        }
    )
    signature = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": sha, "X-Hub-Signature-256": signature}
    sent = time.time()
    answer = ctl.http.post("/hooks/github", content=body, headers=headers, timeout=10)
    answer.raise_for_status()
    return sent


def one_round(ctl: Controller, bare: Path, clone: Path, n: int) -> dict[str, float]:
    sha = set_version(clone, f"1.{n}")
    sent = push_event(ctl, bare, sha)
    ctl.wait_synced(sha, timeout=60, every=0.02)
    sync = next(s for s in ctl.store().history("default", 5) if s.revision == sha)
    new = [i for i in ctl.instances() if i.revision == sha and i.healthy_since and i.started_at]
    app_time = max(i.healthy_since - i.started_at for i in new)  # type: ignore[operator]
    assert sync.finished_at is not None
    return {
        "webhook_to_sync_start": sync.started_at - sent,
        "webhook_to_serving": sync.finished_at - sent,
        "app_start_to_healthy": app_time,
        "controller_time": sync.finished_at - sent - app_time,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with bounded(args.budget), tempfile.TemporaryDirectory(prefix="ondeck-bench-") as tmp:
        root = Path(tmp)
        startup = app_startup(root, repeats=5)
        bare, clone = remote(root)
        ctl = Controller(
            bare, root / "state", "--poll", "1h", "--listen", "none", "--webhook-secret", SECRET
        )
        try:
            ctl.start()
            ctl.wait_synced(None, timeout=60)
            rounds = [one_round(ctl, bare, clone, n) for n in range(args.rounds)]
        finally:
            ctl.cleanup()
    results: dict[str, Any] = {key: summarize([r[key] for r in rounds]) for key in rounds[0]}
    results["app_startup_direct"] = startup
    results["goal_controller_time_s"] = GOAL_S
    results["goal_met"] = results["controller_time"]["p90"] < GOAL_S
    results["peer_documented_defaults_s"] = PEER_DEFAULTS_S
    path = save_results("webhook_latency", {"rounds": args.rounds}, results)
    for key in rounds[0]:
        print(f"{key:24} {describe(results[key])}")
    print(
        f"goal: controller time under {GOAL_S:.0f}s -> {'met' if results['goal_met'] else 'NOT met'}"
    )
    print(
        f"(for scale, not measured: Argo CD polls every {PEER_DEFAULTS_S['argo_cd_poll']:.0f}s, "
        f"Flux every {PEER_DEFAULTS_S['flux_interval']:.0f}s by default)"
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
