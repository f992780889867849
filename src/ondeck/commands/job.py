"""`ondeck job list|run|history`: scheduled jobs, through the controller's API.

Registered in cli.py as the `job` group; `ondeck logs --job NAME` shows a
job's output. `--json` output is a stable contract, as for every command.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ondeck.commands.options import ApiUrl, AppName, JsonOpt, StateDir, Token, client

job_app = typer.Typer(
    help="Scheduled jobs: list them, run one now, see its runs.", no_args_is_help=True
)
out = Console(soft_wrap=True)

EnvOpt = Annotated[str | None, typer.Option("--env", help="Only this environment.")]
RESULT_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "failed": "red",
    "timed-out": "red",
    "killed": "yellow",
    "lost": "red",
}


_client = client


def _ago(at: float | None) -> str:
    if at is None:
        return "-"
    delta = time.time() - at
    future = delta < 0
    delta = abs(delta)
    text = (
        f"{delta:.0f}s"
        if delta < 120
        else f"{delta / 60:.0f}m"
        if delta < 7200
        else f"{delta / 3600:.0f}h"
        if delta < 172800
        else f"{delta / 86400:.0f}d"
    )
    return f"in {text}" if future else f"{text} ago"


def _result(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    style = RESULT_STYLE.get(run["result"], "white")
    code = f" ({run['exit_code']})" if run.get("exit_code") not in (None, 0) else ""
    return f"[{style}]{run['result']}{code}[/{style}]"


@job_app.command("list")
def job_list(
    env: EnvOpt = None,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Every job: schedule, next run, last result."""
    doc = _client(state_dir, api, token, app_name).get("/api/v1/jobs", env=env)
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    if not doc["jobs"]:
        out.print("no jobs (add `jobs:` to ondeck.yaml)")
        return
    table = Table(box=None)
    for col in ("ENV", "JOB", "SCHEDULE", "NEXT", "LAST", "WHEN"):
        table.add_column(col)
    for row in doc["jobs"]:
        last = row["running"][-1] if row["running"] else row["last"]
        table.add_row(
            escape(row["env"]),
            escape(row["name"]),
            escape(row["schedule"]),
            _ago(row["next_run"]),
            _result(last),
            _ago(last["started_at"] if last else None),
        )
    out.print(table)


@job_app.command("run")
def job_run(
    name: str,
    env: EnvOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run to end.")] = False,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Run a job now (recorded with trigger `manual`)."""
    doc = _client(state_dir, api, token, app_name).post(
        f"/api/v1/jobs/{name}/run", {"env": env, "wait": wait}, timeout=None if wait else 30
    )
    run = doc["run"]
    if json_out:
        print(json.dumps(doc, indent=2))
    else:
        out.print(
            f"{escape(doc['env'])}/{escape(name)} run {run['id']}: {_result(run)}"
            + (f" [dim]{escape(run['reason'])}[/dim]" if run.get("reason") else "")
        )
    if wait and run["result"] != "succeeded":
        raise typer.Exit(1)


@job_app.command("history")
def job_history(
    name: str,
    env: EnvOpt = None,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """A job's runs, newest first: trigger, result, exit code, duration (on Kubernetes, its Job)."""
    doc = _client(state_dir, api, token, app_name).get(f"/api/v1/jobs/{name}/history", env=env)
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    table = Table(box=None)
    on_cluster = any(run.get("kube_job") for run in doc["runs"])  # runs that are Jobs
    for col in ("RUN", *(["JOB"] if on_cluster else []), "TRIGGER", "RESULT", "STARTED"):
        table.add_column(col)
    for col in ("DURATION", "REASON"):
        table.add_column(col)
    for run in doc["runs"]:
        dur = f"{run['duration']:.1f}s" if run.get("duration") is not None else "-"
        table.add_row(
            str(run["id"]),
            *([escape(run.get("kube_job") or "-")] if on_cluster else []),
            run["trigger"],
            _result(run),
            _ago(run["started_at"]),
            dur,
            escape(run.get("reason") or ""),
        )
    out.print(table)
