"""Benchmark of the dashboard: server time, live-update latency and page weight.

A real `ondeck up` runs SERVICES services (one `sleep` instance each, so the
host can afford a hundred of them), and a real headless Chromium shows the
overview. Three figures, each beside a peer measured in the same run:

- overview server time: `GET /` (HTML, logged in) against `GET /api/v1/status`
  (the JSON the page is rendered from), sequential requests, keep-alive,
  interleaved; once with the overview open in the browser (the pages share one
  status snapshot, taken at most every 100 ms) and once with no page open;
- status change -> DOM: an instance is killed; from the controller's own
  record of the exit (its event time in SQLite) to the moment a
  MutationObserver in the page sees that service's row count the restart
  (no reload).
  The kill -> DOM time is reported too (it includes the supervisor noticing);
- render CPU: the CPU time (not wall time) to render the overview of the same
  status document in this process, which a loaded machine does not inflate;
- page weight: every byte the browser decoded for the overview (document,
  script, stylesheet; uncompressed), beside the status JSON's size.

Run: `.venv/bin/python bench/dashboard.py [--services 100] [--rounds 20]`;
writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
from playwright.sync_api import Page, sync_playwright

from common import Controller, Repo, bounded, describe, save_results, summarize, wait_for
from ondeck.api.ui.access import Viewer
from ondeck.api.ui.live import IDLE_STOP, Sampler
from ondeck.api.ui.pages import Dashboard
from ondeck.tokens import ADMIN

GOALS = {"overview_ms": 50.0, "dom_update_ms": 500.0, "page_weight_kb": 150.0}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

# Records, in the page's clock (the host's wall clock), when a service's row first shows
# a restart (the supervisor restarts a killed instance at once: its status changes then).
WATCH = """
window.__seen = {};
new MutationObserver(() => {
  const name = window.__target;
  if (!name || window.__seen[name]) return;
  const row = document.getElementById('row-default-' + name);
  if (row && row.dataset.restarts !== '0') window.__seen[name] = Date.now() / 1000;
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def spec(services: int) -> str:
    lines = ["app: bench", "services:"]
    for i in range(services):
        lines += [
            f"  s{i:03d}:",
            '    command: ["sleep", "86400"]',
            f'    version: "1.0.{i}"',
            "    stop: {grace: 1s}",
        ]
    return "\n".join(lines) + "\n"


def log_in(page: Page, url: str, token: str) -> None:
    page.goto(url + "/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_selector("#env-default")


def time_get(client: httpx.Client, path: str, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append(time.perf_counter() - started)
        answer.raise_for_status()
    return samples


def server_times(url: str, cookies: dict[str, str], token: str, rounds: int) -> dict[str, Any]:
    """Interleaved, so both see the same machine load."""
    html: list[float] = []
    json_: list[float] = []
    with (
        httpx.Client(base_url=url, cookies=cookies, timeout=30) as page_client,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as api_client,
    ):
        time_get(page_client, "/", 3)  # warm both: templates compiled, caches filled
        time_get(api_client, "/api/v1/status", 3)
        for _ in range(rounds):
            html += time_get(page_client, "/", 1)
            json_ += time_get(api_client, "/api/v1/status", 1)
        sizes = {
            "overview_html_bytes": len(page_client.get("/").content),
            "status_json_bytes": len(api_client.get("/api/v1/status").content),
        }
    return {"overview": summarize(html), "status_api": summarize(json_), **sizes}


class _Snapshot:
    """The one thing `Dashboard.page` asks of its feed: the status document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def current(self) -> tuple[int, dict[str, Any]]:
        return 1, self.doc


def render_cpu(doc: dict[str, Any], rounds: int) -> dict[str, Any]:
    """CPU seconds to render the overview of `doc` in this process (no HTTP, no other load)."""
    ui = Dashboard(cast(Any, None), cast(Any, _Snapshot(doc)), Sampler(cast(Any, None), dict))
    viewer = Viewer(ADMIN, "csrf")
    ui.page("overview", "Overview", viewer, {})  # templates compiled
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        ui.page("overview", "Overview", viewer, {})
        samples.append(time.process_time() - started)
    return summarize(samples)


def page_weight(page: Page) -> dict[str, Any]:
    entries: list[dict[str, Any]] = page.evaluate(
        """() => [...performance.getEntriesByType('navigation'),
                  ...performance.getEntriesByType('resource')]
                 .filter(e => !e.name.includes('/ui/events/'))
                 .map(e => ({name: e.name, bytes: e.decodedBodySize}))"""
    )
    return {"assets": entries, "total_bytes": sum(int(e["bytes"]) for e in entries)}


def exit_time(od: Controller, inst_id: str, after: float) -> float | None:
    for event in od.events(200):
        if event["kind"] == "exit" and inst_id in event["message"] and event["at"] >= after:
            return float(event["at"])
    return None


def seen_at(page: Page, name: str) -> float | None:
    seen: float | None = page.evaluate(f"window.__seen[{name!r}]")
    return seen


def dom_updates(page: Page, od: Controller, services: int, rounds: int) -> dict[str, Any]:
    page.evaluate(WATCH)
    status = od.get("/api/v1/status")["environments"][0]["services"]
    by_name = {s["name"]: s for s in status}
    change: list[float] = []
    end_to_end: list[float] = []
    step = max(services // rounds, 1)
    for i in range(rounds):
        name = f"s{(i * step) % services:03d}"
        inst = by_name[name]["instances"][0]
        page.evaluate(f"window.__target = {name!r}")
        killed = time.time()
        os.kill(inst["pid"], signal.SIGKILL)
        seen = wait_for(partial(seen_at, page, name), f"{name}'s restart in the DOM", 30)
        recorded = wait_for(partial(exit_time, od, inst["id"], killed - 1), "the exit event", 30)
        change.append(seen - recorded)
        end_to_end.append(seen - killed)
    return {"status_change_to_dom": summarize(change), "kill_to_dom": summarize(end_to_end)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=900.0)
    args = parser.parse_args()
    with bounded(args.budget), tempfile.TemporaryDirectory(prefix="ondeck-bench-") as tmp:
        repo = Repo(Path(tmp) / "repo")
        sha = repo.commit("bench", spec(args.services))
        od = Controller(repo.path, Path(tmp) / "state", "--poll", "1h")
        try:
            od.start()
            od.wait_synced(sha, timeout=300)
            url = str(od.http.base_url).rstrip("/")
            token = (od.state_dir / "token").read_text().strip()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page()
                log_in(page, url, token)
                cookies = {c["name"]: c["value"] for c in page.context.cookies()}
                weight = page_weight(page)
                times = server_times(url, cookies, token, args.rounds * 5)
                live = dom_updates(page, od, args.services, args.rounds)
                browser.close()
            # No page open any more: once the shared status feed stops, GET / takes the
            # status itself, as the API does.
            time.sleep(IDLE_STOP + 2)
            cold = server_times(url, cookies, token, args.rounds * 2)
            render = render_cpu(od.get("/api/v1/status"), args.rounds * 2)
        finally:
            od.cleanup()
    results = {
        **times,
        **live,
        "page_weight": weight,
        "no_page_open": cold,
        "overview_render_cpu": render,
    }
    results["goals"] = {
        "overview_median_ms": {
            "goal": GOALS["overview_ms"],
            "value": round(times["overview"]["median"] * 1000, 1),
            "met": times["overview"]["median"] * 1000 < GOALS["overview_ms"],
        },
        "overview_no_page_open_median_ms": {
            "goal": GOALS["overview_ms"],
            "value": round(cold["overview"]["median"] * 1000, 1),
            "met": cold["overview"]["median"] * 1000 < GOALS["overview_ms"],
        },
        "status_change_to_dom_median_ms": {
            "goal": GOALS["dom_update_ms"],
            "value": round(live["status_change_to_dom"]["median"] * 1000, 1),
            "met": live["status_change_to_dom"]["median"] * 1000 < GOALS["dom_update_ms"],
        },
        "page_weight_kb": {
            "goal": GOALS["page_weight_kb"],
            "value": round(weight["total_bytes"] / 1024, 1),
            "met": weight["total_bytes"] / 1024 < GOALS["page_weight_kb"],
        },
    }
    path = save_results("dashboard", {"services": args.services, "rounds": args.rounds}, results)
    print(f"services: {args.services}")
    print(f"GET / (overview HTML)  {describe(times['overview'])}")
    print(f"GET /api/v1/status     {describe(times['status_api'])}  (peer, same run)")
    print(f"GET /, no page open    {describe(cold['overview'])}")
    print(f"GET /api/v1/status     {describe(cold['status_api'])}  (peer, same moment)")
    print(f"overview render, CPU   {describe(render)}  (in process, no HTTP)")
    print(f"status change -> DOM   {describe(live['status_change_to_dom'])}")
    print(f"kill -> DOM            {describe(live['kill_to_dom'])}")
    print(
        f"page weight            {weight['total_bytes'] / 1024:.1f} KB "
        f"(status JSON {times['status_json_bytes'] / 1024:.1f} KB)"
    )
    for name, goal in results["goals"].items():
        print(
            f"goal {name}: {goal['value']} vs {goal['goal']}: {'met' if goal['met'] else 'MISSED'}"
        )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
