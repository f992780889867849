"""`ondeck secret …`: the host's secret store and the age-encrypted file in git.

Values come from standard input (or a prompt without echo), never argv, and
are never printed: listings show names, scopes and keyed fingerprints.
Registered in cli.py as the `secret` group.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ondeck.client import Client, default_state_dir
from ondeck.commands.options import StateDir
from ondeck.errors import OndeckError, UserError

if TYPE_CHECKING:  # the spec machinery and age load when a command needs them (CLI start-up)
    from ondeck.secrets.hoststore import HostStore
    from ondeck.spec.load import Document

secret_app = typer.Typer(
    help="Secrets: the host's store (value on stdin) and the age-encrypted file in git.",
    no_args_is_help=True,
)
err = Console(stderr=True, soft_wrap=True)

EnvOpt = Annotated[
    str | None, typer.Option("--env", help="Only this environment (default: every one).")
]
AppOpt = Annotated[
    str | None, typer.Option("--app", help="Only this app (default: every app on the host).")
]
Recipients = Annotated[
    list[str] | None,
    typer.Option("--recipient", "-r", help="An age or SSH public key; repeatable."),
]
IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity", "-i", help="age identity file (default: the host's)."),
]


def _state(state_dir: Path | None) -> Path:
    return (state_dir or default_state_dir()).resolve()


def _store(state_dir: Path | None, app: str | None) -> HostStore:
    """The host's secrets; under `ondeck up --host-file`, the named app's own (apps/NAME/)."""
    from ondeck.secrets.hoststore import HostStore

    root = _state(state_dir)
    apps = root / "apps"
    if not apps.is_dir():
        return HostStore(root)
    names = sorted(p.name for p in apps.iterdir() if p.is_dir())
    if app is None or app not in names:
        what = "name one with --app" if app is None else f"unknown app {app!r}"
        raise UserError(f"{root} runs the apps of a host file, each with its own secrets: "
                        f"{what} ({', '.join(names) or 'none yet'})")  # fmt: skip
    return HostStore(apps / app)


def read_value(name: str) -> str:
    """The secret's value: standard input (one trailing newline dropped), or a prompt on a tty."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
        if getpass.getpass(f"again, to confirm {name}: ") != value:
            raise UserError("the two values differ; nothing was stored")
        return value
    value = sys.stdin.read()
    if value.endswith("\n"):
        value = value[:-1].removesuffix("\r")
    return value


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@secret_app.command("set")
def secret_set(
    name: str, env: EnvOpt = None, app: AppOpt = None, state_dir: StateDir = None
) -> None:
    """Store a secret on this host; the value is read from standard input, never argv."""
    info = _store(state_dir, app).set(name, read_value(name), app=app, env=env)
    where = f"environment {env}" if env else "every environment"
    err.print(f"[green]secret {name}[/green] set for {where} (fingerprint {info.fingerprint})")
    _nudge(state_dir)


@secret_app.command("unset")
def secret_unset(
    name: str, env: EnvOpt = None, app: AppOpt = None, state_dir: StateDir = None
) -> None:
    """Forget a secret in exactly that scope."""
    _store(state_dir, app).unset(name, app=app, env=env)
    err.print(f"[green]secret {name}[/green] unset")
    _nudge(state_dir)


def _nudge(state_dir: Path | None) -> None:
    """Wake a controller on this host: the services that use the secret roll at once."""
    try:
        Client(_state(state_dir)).post("/api/v1/sync", {"trigger": "cli"}, timeout=10)
    except OndeckError:
        return  # none running: it reads the store when it starts
    err.print("the local ondeck rolls the services that use it: `ondeck status`")


@secret_app.command("list")
def secret_list(
    env: EnvOpt = None,
    app: AppOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Names, scopes, when set and a keyed fingerprint: never a value."""
    rows = _store(state_dir, app).infos(app=app, env=env)
    if json_out:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return
    if not rows:
        err.print("no secrets set: `ondeck secret set NAME [--env E]` (value on stdin)")
    for r in rows:
        print(f"{r.name:24} app {r.app:12} env {r.env:12} {_when(r.set_at)}  {r.fingerprint}")


@secret_app.command("keygen")
def secret_keygen(state_dir: StateDir = None) -> None:
    """Print the host's age public key, creating its identity the first time."""
    from ondeck.secrets import agefile

    public, created = agefile.keygen(_state(state_dir))
    print(public)
    path = agefile.identity_path(_state(state_dir))
    verb = "created" if created else "existing"
    err.print(f"{verb} identity {path}: encrypt secrets files to the key above")


@secret_app.command("encrypt")
def secret_encrypt(
    file: Path,
    name: str,
    recipient: Recipients = None,
    state_dir: StateDir = None,
) -> None:
    """Add or replace NAME in an age secrets file; the value is read from standard input.

    A new file is encrypted to --recipient keys, else to this host's key.
    """
    from ondeck.secrets import agefile

    value = read_value(name)
    if file.exists():
        doc = agefile.read(file)
        if recipient and set(recipient) - set(doc.recipients):
            raise UserError(
                f"{file} exists: add recipients with `ondeck secret edit {file} --recipient KEY` "
                "(every value must be encrypted again to them)"
            )
    else:
        keys = list(recipient or [])
        if not keys:
            keys = [_host_public(_state(state_dir))]
        doc = agefile.AgeFile(tuple(keys))
    kept: dict[str, str | None] = dict.fromkeys(doc.values)
    updated = agefile.update(doc, {**kept, name: value})
    agefile.write(file, updated)
    err.print(
        f"[green]{name}[/green] encrypted into {file} for {len(updated.recipients)} recipient(s)"
    )


def _host_public(state_dir: Path) -> str:
    from ondeck.secrets import agefile

    path = agefile.identity_path(state_dir)
    if not path.exists():
        raise UserError(
            "no recipients: pass --recipient KEY, or run `ondeck secret keygen` to give this "
            "host an identity"
        )
    return agefile.keygen(state_dir)[0]


@secret_app.command("edit")
def secret_edit(
    file: Path,
    recipient: Recipients = None,
    identity: IdentityOpt = None,
    state_dir: StateDir = None,
) -> None:
    """Edit an age secrets file in $EDITOR (a decrypted copy in a private temp dir).

    --recipient adds a key: every value is then encrypted again to all of them.
    """
    from ondeck.secrets import agefile

    doc = agefile.read(file)
    ident = identity or agefile.identity_path(_state(state_dir))
    old = agefile.decrypt(doc, agefile.load_identities(ident), str(file))
    new = _edit_in_editor(old, file.name)
    recipients = [*doc.recipients, *(recipient or [])]
    if set(recipients) == set(doc.recipients):
        values: dict[str, str | None] = {n: None if old.get(n) == v else v for n, v in new.items()}
    else:
        values = dict(new)  # new readers: every value is encrypted again
    agefile.write(file, agefile.update(doc, values, recipients))
    changed = sorted(n for n in new if old.get(n) != new[n])
    removed = sorted(set(old) - set(new))
    err.print(
        f"[green]{file}[/green]: {len(changed)} changed or added, {len(removed)} removed"
        + (f" ({', '.join(changed + removed)})" if changed or removed else "")
    )


def _edit_in_editor(values: dict[str, str], label: str) -> dict[str, str]:
    """Run $EDITOR on `NAME: value` lines in a 0700 temp dir; the dir is removed after."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    tmp = Path(tempfile.mkdtemp(prefix="ondeck-secrets-"))
    try:
        tmp.chmod(0o700)
        path = tmp / label.replace(".age", "")
        yaml = YAML(typ="safe")
        yaml.default_flow_style = False
        with path.open("w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write("# NAME: value, one per line; save and quit to encrypt again\n")
            if values:
                yaml.dump(dict(sorted(values.items())), f)
        result = subprocess.run([*editor, str(path)], check=False)
        if result.returncode != 0:
            raise UserError(f"{editor[0]} exited with {result.returncode}: the file is unchanged")
        try:
            data = yaml.load(path.read_text()) or {}
        except YAMLError as error:
            raise UserError(
                f"the edited text is not YAML `NAME: value` lines ({error.__class__.__name__}): "
                "the file is unchanged"
            ) from None
        if not isinstance(data, dict):
            raise UserError("the edited text must be `NAME: value` lines: the file is unchanged")
        return {str(k): _text(v) for k, v in data.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def known_secrets(spec_dir: Path, state_dir: Path) -> Callable[[Document, str | None], list[str]]:
    """For `ondeck validate`: the names of an environment's secrets, from the host store of
    the state dir (under a host file, the app's: STATE_DIR/apps/APP) and from the spec's
    age file (names are in clear)."""
    from ondeck.secrets.hoststore import HostStore
    from ondeck.secrets.resolve import file_names, secrets_file
    from ondeck.state.desired import DEFAULT_ENV

    def names(doc: Document, env: str | None) -> list[str]:
        app = doc.data.get("app")
        found: set[str] = set()
        if isinstance(app, str):
            own = state_dir / "apps" / app  # `ondeck up --host-file`: each app has its own
            store = HostStore(own if own.is_dir() else state_dir)
            found.update(store.values(app, env or DEFAULT_ENV))
        name = secrets_file(doc.data, env)
        if name is not None and (spec_dir / name).is_file():
            found.update(file_names((spec_dir / name).read_bytes(), name))
        return sorted(found)

    return names
