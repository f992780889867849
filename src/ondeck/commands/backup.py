"""`ondeck backup run|list|restore|verify NAME`: an environment's backups, through the API.

The controller knows each environment's data dir and secrets, so every
command asks the running `ondeck up`; `--json` output is a stable contract
(`list --json`: one object per backup). Registered in cli.py as the `backup` group.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ondeck.commands.options import ApiUrl, AppName, JsonOpt, StateDir, Token, client

backup_app = typer.Typer(
    help="Backups that are proven: run, list, verify (a scratch restore) and restore.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EnvOpt = Annotated[
    str | None, typer.Option("--env", help="The environment (default: the only one).")
]
IdOpt = Annotated[str | None, typer.Option("--id", help="A backup id from `ondeck backup list`.")]
Name = Annotated[str, typer.Argument(help="The backup's name under `backups:`.")]
LONG = 3600.0  # a backup or a restore of a big database takes minutes


_client = client


def _show(manifest: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    proof = (
        "[green]verified by a scratch restore[/green]"
        if manifest["verified"]
        else "[yellow]not verified[/yellow]"
    )
    out.print(f"{verb} {manifest['name']} {manifest['id']}: {_size(manifest['size'])}, {proof}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@backup_app.command("run")
def run(
    name: Name,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Take a backup now (and prove it by restoring it when `verify` is on)."""
    client = _client(state_dir, api, token, app_name)
    _show(client.post(f"/api/v1/backups/{name}/run", {"env": env}, timeout=LONG), "took", as_json)


@backup_app.command("verify")
def verify(
    name: Name,
    env: EnvOpt = None,
    backup_id: IdOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Restore a backup (the newest unless --id) into a scratch target and compare it."""
    client = _client(state_dir, api, token, app_name)
    body = {"env": env, "id": backup_id}
    _show(client.post(f"/api/v1/backups/{name}/verify", body, timeout=LONG), "verified", as_json)


@backup_app.command("restore")
def restore(
    name: Name,
    env: EnvOpt = None,
    backup_id: IdOpt = None,
    while_running: Annotated[
        bool, typer.Option("--while-running", help="Do not stop the services first.")
    ] = False,
    as_json: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Put back the latest verified backup (or --id); the current state is backed up first."""
    client = _client(state_dir, api, token, app_name)
    body = {"env": env, "id": backup_id, "while_running": while_running}
    answer = client.post(f"/api/v1/backups/{name}/restore", body, timeout=LONG)
    _show(answer, "restored", as_json)


@backup_app.command("list")
def list_backups(
    name: Name,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """The backups of NAME, oldest first, with whether a restore proved each."""
    answer = _client(state_dir, api, token, app_name).get(f"/api/v1/backups/{name}", env=env)
    rows = answer["backups"]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        err.print(f"no backups of {name} in {answer['env']} yet: `ondeck backup run {name}`")
        return
    table = Table("id", "created", "size", "verified", "revision")
    for row in rows:
        verdict = (
            f"[green]yes[/green] {row['verified_at'][:19]}"
            if row["verified"]
            else "[red]FAILED[/red] " + escape(row.get("verify_error") or "")
            if row["verified"] is False
            else "[yellow]no[/yellow]"
        )
        table.add_row(
            row["id"],
            row["created"][:19],
            _size(row["size"]),
            verdict,
            (row["revision"] or "")[:12],
        )
    out.print(table)
