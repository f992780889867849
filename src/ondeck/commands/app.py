"""`ondeck app add|remove|list`: the apps of the host file that `ondeck up --host-file` runs.

The host file is `--host-file` (a path, or `REPO#PATH` for a file in a git
repo), else $ONDECK_HOST_FILE, else STATE_DIR/ondeck.host.yaml. `add` and
`remove` change one entry (comments and order kept, the result checked before
anything is written); in a git repo each is a one-line commit, pushed with
`--push`. A running `ondeck up --host-file` picks the change up by itself.
Registered in cli.py as the `app` group.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ondeck.client import default_state_dir
from ondeck.commands.options import Author, JsonOpt, Push, StateDir
from ondeck.errors import OndeckError, UserError

if TYPE_CHECKING:  # git, the host file model and its editor load when a command runs
    from ondeck.source.hostfile import Edited, HostFileRef
    from ondeck.spec.host import HostApp

app_app = typer.Typer(
    help="The apps this host runs: edit the host file of `ondeck up --host-file`.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

HostFileOpt = Annotated[
    str | None,
    typer.Option(
        "--host-file",
        help="The host file: a path, or REPO#PATH in a git repo "
        "(default: $ONDECK_HOST_FILE, else STATE_DIR/ondeck.host.yaml).",
    ),
]
Name = Annotated[str, typer.Argument(help="The app's name (a DNS label): names its state dir.")]


@app_app.command("add")
def add(
    name: Name,
    repo: Annotated[str, typer.Argument(help="The app's deploy repo: a local path or a git URL.")],
    branch: Annotated[
        str | None, typer.Option("--branch", help="Branch to follow (default: the remote's HEAD).")
    ] = None,
    path: Annotated[
        str, typer.Option("--path", help="Directory in the repo holding ondeck.yaml.")
    ] = "",
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="Environment to run; repeatable (default: every one)."),
    ] = None,
    host_file: HostFileOpt = None,
    state_dir: StateDir = None,
    push: Push = False,
    author: Author = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Read REPO's ondeck.yaml first: its app: must be NAME, the --env defined.",
        ),
    ] = True,
) -> None:
    """Add app NAME, deployed from REPO, to the host file."""
    from ondeck.source.git import _redact
    from ondeck.source.hostfile import edit_host_file
    from ondeck.spec.hostedit import add_app

    ref = _ref(host_file, state_dir, push)
    entry = _entry(_repo_as_written(repo), branch, path, env or [])
    if check:
        _probe(name, entry)
    done = edit_host_file(
        ref,
        lambda text, filename: add_app(text, name, entry, filename),
        f"app({name}): add {_redact(entry.repo)}",
        push,
        author,
    )
    _report(done, f"added app {name}")


@app_app.command("remove")
def remove(
    name: Name,
    host_file: HostFileOpt = None,
    state_dir: StateDir = None,
    push: Push = False,
    author: Author = None,
) -> None:
    """Remove app NAME from the host file: `ondeck up` stops its instances, its routes go."""
    from ondeck.source.hostfile import edit_host_file, read_plain
    from ondeck.spec.hostedit import remove_app

    ref = _ref(host_file, state_dir, push)
    if ref.repo is None and read_plain(ref) is None:
        raise UserError(f"no host file at {ref.path}: there is no app to remove")
    done = edit_host_file(
        ref,
        lambda text, filename: remove_app(text or "", name, filename),
        f"app({name}): remove",
        push,
        author,
    )
    _report(done, f"removed app {name}")


@app_app.command("list")
def list_apps(
    json_out: JsonOpt = False, host_file: HostFileOpt = None, state_dir: StateDir = None
) -> None:
    """The apps of the host file: name, repo, branch, path and environments."""
    from ondeck.source.git import _redact
    from ondeck.source.hostfile import read_host_file, read_plain

    ref = _ref(host_file, state_dir)
    apps: dict[str, HostApp] = {}
    revision = None
    if ref.repo is not None or read_plain(ref) is not None:
        read = read_host_file(ref, _state_dir(state_dir))
        apps, revision = read.host.apps, read.revision
    if json_out:
        rows = [{"name": name, **_shown(entry)} for name, entry in apps.items()]
        print(json.dumps({"host_file": ref.shown, "revision": revision, "apps": rows}, indent=2))
        return
    if not apps:
        err.print(f"no apps in {escape(ref.shown)}: add one with `ondeck app add NAME REPO`")
        return
    for name, entry in apps.items():
        where = "".join(
            f" {key}={value}"
            for key, value in (("branch", entry.branch), ("path", entry.path))
            if value
        )
        envs = ", ".join(entry.envs) or "every environment"
        out.print(f"{name:16} {escape(_redact(entry.repo) + where)}  {escape(f'[{envs}]')}")


def _shown(entry: HostApp) -> dict[str, object]:
    """An entry as `app list --json` shows it: credentials in a repo URL masked."""
    from ondeck.source.git import _redact

    return {
        "repo": _redact(entry.repo),
        "branch": entry.branch,
        "path": entry.path,
        "envs": list(entry.envs),
    }


def _ref(option: str | None, state_dir: Path | None, push: bool = False) -> HostFileRef:
    from ondeck.source.hostfile import locate

    ref = locate(option, _state_dir(state_dir))
    if push and ref.repo is None:
        raise UserError(
            f"--push: {ref.path} is a plain file, not in a git repo; give --host-file REPO#PATH "
            "to keep the host file in git"
        )
    return ref


def _state_dir(state_dir: Path | None) -> Path:
    return (state_dir or default_state_dir()).resolve()


def _entry(repo: str, branch: str | None, path: str, envs: list[str]) -> HostApp:
    """The entry as the host file model takes it; a bad field is a `UserError` naming its flag."""
    from pydantic import ValidationError

    from ondeck.spec.host import HostApp

    try:
        return HostApp(repo=repo, branch=branch, path=path, envs=envs)
    except ValidationError as error:
        flags = {"repo": "REPO", "branch": "--branch", "path": "--path", "envs": "--env"}
        lines = [
            f"  {flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in error.errors()
        ]
        raise UserError("cannot add this app:\n" + "\n".join(lines)) from None


def _probe(name: str, entry: HostApp) -> None:
    from ondeck.source.hostfile import probe_app

    with tempfile.TemporaryDirectory(prefix="ondeck-app-") as scratch:
        try:
            probe_app(name, entry, Path(scratch))
        except OndeckError as error:
            raise UserError(
                f"not adding app {name!r}: {error}\n(--no-check adds it without reading the repo)"
            ) from error


def _repo_as_written(repo: str) -> str:
    """A local repo typed relative to here is written absolute: the host file reads it from
    its own directory, and `ondeck up` may run from anywhere."""
    from ondeck.source.git import _is_local

    local = Path(repo).expanduser()
    if _is_local(repo) and local.exists():
        return str(local.resolve())
    return repo


def _report(done: Edited, what: str) -> None:
    if done.sha is None:
        out.print(f"[green]{escape(what)}[/green] in {escape(done.ref.shown)}")
        err.print("a running `ondeck up --host-file` with this file applies it within seconds")
        return
    out.print(f"[green]committed[/green] {done.sha[:12]}  {escape(done.message)}")
    if done.pushed:
        err.print("pushed: `ondeck up --host-file` applies it at its next fetch")
    else:
        err.print(
            "not pushed: an `ondeck up --host-file` reading this checkout applies it at its "
            "next fetch; one reading a remote needs --push (or `git push`)"
        )
