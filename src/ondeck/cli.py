"""The `ondeck` command line: a thin adapter over the spec, the controller and the API.

Commands that inspect or steer a running controller talk to its API, found
through the state dir; `--json` output is a stable contract (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ondeck import __version__
from ondeck.client import default_state_dir
from ondeck.commands.app import app_app
from ondeck.commands.backup import backup_app
from ondeck.commands.committed import report as _report
from ondeck.commands.job import job_app
from ondeck.commands.maintenance import maintenance_app
from ondeck.commands.options import (
    ApiUrl,
    AppName,
    Author,
    BranchOpt,
    JsonOpt,
    Nudge,
    PathOpt,
    Push,
    StateDir,
    Target,
    Token,
    client,
)
from ondeck.commands.render import render_command
from ondeck.commands.secret import secret_app
from ondeck.errors import OndeckError, UserError
from ondeck.redact import RedactingFilter
from ondeck.secrets import known as known_secrets
from ondeck.units import format_duration, parse_duration

if TYPE_CHECKING:
    from ondeck.router.options import ProxyOptions
    from ondeck.status import (
        BackupStatus,
        CertificateStatus,
        EnvStatus,
        ServiceStatus,
        StatusDoc,
    )

app = typer.Typer(
    help="GitOps for the humble app: a git repo states what runs; ondeck makes this host match it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("render")(render_command)
app.add_typer(backup_app, name="backup")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EnvOpt = Annotated[str | None, typer.Option("--env", help="Only this environment.")]
TrustedProxy = Annotated[
    list[str] | None,
    typer.Option(
        "--trusted-proxy",
        metavar="CIDR",
        help="A proxy in front of the router whose X-Forwarded-For/-Proto are kept; repeatable.",
    ),
]
SYNC_STYLE = {"Synced": "green", "OutOfSync": "yellow", "Unknown": "red"}
HEALTH_STYLE = {
    "Healthy": "green",
    "Progressing": "cyan",
    "Suspended": "blue",
    "Missing": "yellow",
    "Degraded": "red",
    "Unknown": "red",
}
DOWN_TIMEOUT = 180.0  # the controller waits up to 120 s for graceful stops
RESULT_STYLE = {"Succeeded": "green", "Failed": "red", "Aborted": "yellow", "Running": "cyan"}


def main() -> None:
    try:
        app()
    except OndeckError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}")
        sys.exit(1)


_client = client


# -- spec ------------------------------------------------------------------------------


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="ondeck.yaml, or a directory holding one.")] = Path(
        "."
    ),
    state_dir: StateDir = None,
) -> None:
    """Check a spec: exit 1 with FILE:LINE:COL: message lines."""
    from ondeck.spec.load import validate as check

    file = path / "ondeck.yaml" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file}: no such file; run `ondeck init` to scaffold one")
    from ondeck.commands.secret import known_secrets

    where = (state_dir or default_state_dir()).resolve()
    problems = check(file.read_bytes(), str(file), known_secrets(file.parent, where))
    for problem in problems:
        print(problem)
    if problems:
        raise typer.Exit(1)
    err.print(f"[green]{file}: valid[/green]")


@app.command()
def schema() -> None:
    """Print the JSON Schema of ondeck.yaml."""
    from ondeck.spec.schema import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the repo.")] = Path("."),
) -> None:
    """Scaffold a git repo holding an example app and its ondeck.yaml."""
    from ondeck.scaffold import scaffold

    created = scaffold(directory)
    err.print(f"[green]created[/green] {created} with an example app, committed on branch main")
    err.print(f"next: [bold]ondeck up {created}[/bold], then [bold]ondeck status[/bold]")


# -- the controller -----------------------------------------------------------------------


@app.command()
def up(
    repo: Annotated[
        str | None, typer.Argument(help="Local path or any URL git can fetch (one app).")
    ] = None,
    branch: Annotated[
        str | None, typer.Option(help="Branch to follow (default: the remote's HEAD).")
    ] = None,
    path: Annotated[str, typer.Option(help="Directory in the repo holding ondeck.yaml.")] = "",
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environment overlay to run; repeatable.")
    ] = None,
    state_dir: StateDir = None,
    api: Annotated[
        str, typer.Option(help="Where the API listens (host:port; port 0 picks one).")
    ] = "127.0.0.1:7070",
    listen: Annotated[
        str, typer.Option(help="Where the router serves users (host:port; 'none': no router).")
    ] = "127.0.0.1:8080",
    listen_tls: Annotated[
        str | None,
        typer.Option(
            help="Where the router serves HTTPS (host:port, e.g. 0.0.0.0:443); needs tls:."
        ),
    ] = None,
    poll: Annotated[str, typer.Option(help="How often to fetch the repo.")] = "10s",
    drift_check: Annotated[
        str, typer.Option(help="How often to look for changes by hand (files, env, processes).")
    ] = "30s",
    no_auto_sync: Annotated[
        bool, typer.Option("--no-auto-sync", help="Apply new commits only on `ondeck sync`.")
    ] = False,
    no_self_heal: Annotated[
        bool, typer.Option("--no-self-heal", help="Report drift (OutOfSync) instead of fixing it.")
    ] = False,
    container_host: Annotated[
        str | None,
        typer.Option(
            envvar="DOCKER_HOST", help="Docker API of the container runtime (default: Podman)."
        ),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="ONDECK_WEBHOOK_SECRET", help="Shared secret of /hooks/{github,gitlab,gitea}."
        ),
    ] = None,
    trusted_proxy: TrustedProxy = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            help="runtime kubernetes: the cluster's kubeconfig (else $KUBECONFIG, "
            "~/.kube/config, in-cluster)."
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option(help="runtime kubernetes: the kubeconfig context to use.")
    ] = None,
    public_read: Annotated[
        bool,
        typer.Option(
            "--public-read",
            help="Anyone who reaches the API may read the dashboard (never act, never see logs).",
        ),
    ] = False,
    host_file: Annotated[
        str | None,
        typer.Option(
            "--host-file",
            help="Run every app this file lists (instead of REPO), one router; "
            "REPO#PATH: the file PATH in a git repo, followed like an app's repo "
            "(default without REPO: $ONDECK_HOST_FILE, else STATE_DIR/ondeck.host.yaml).",
        ),
    ] = None,
) -> None:
    """Run the controller in the foreground: make this host match the repo, and keep it so."""
    from ondeck.environment import Options

    directory = (state_dir or default_state_dir()).resolve()
    _setup_logging()
    from ondeck.source.hostfile import default_host_file, parse_ref

    if repo is not None and host_file is not None:
        raise UserError("give `ondeck up` a REPO (one app) or --host-file FILE (many), not both")
    ref = parse_ref(host_file) if host_file is not None else None
    if repo is None and ref is None:
        ref = default_host_file(directory)
        if ref is None:
            raise UserError(
                "give `ondeck up` a REPO (one app) or --host-file FILE (many apps); "
                f"`ondeck app add NAME REPO` writes {directory}/ondeck.host.yaml, "
                "which `ondeck up` then runs"
            )
    if ref is not None and (branch or path or env):
        raise UserError("--branch, --path and --env are per app with --host-file: set them there")
    source = str(repo) if ref is None else ref.path if ref.repo is None else ref.shown
    is_local = os.path.exists(source)
    opts = Options(
        repo=str(Path(source).resolve()) if is_local else source,
        state_dir=directory,
        branch=branch,
        path=path,
        envs=tuple(env or ()),
        poll=parse_duration(poll),
        auto_sync=not no_auto_sync,
        self_heal=not no_self_heal,
        listen=None if listen.lower() in ("", "none", "off") else listen,
        listen_tls=listen_tls,
        drift_check=parse_duration(drift_check),
        container_host=container_host,
        trusted_proxies=_router_options(trusted_proxy).trusted_proxies,
        kubeconfig=kubeconfig.resolve() if kubeconfig else None,
        kube_context=context,
    )
    if ref is not None:
        from ondeck.api.host import create_host_app
        from ondeck.daemon import serve_host

        host_app = functools.partial(create_host_app, public_read=public_read)
        serve_host(ref, opts, api, webhook_secret, host_app)
        return
    from ondeck.api.app import create_app
    from ondeck.daemon import serve

    serve(opts, api, webhook_secret, functools.partial(create_app, public_read=public_read))


@app.command()
def router(
    state_dir: StateDir = None,
    listen: Annotated[
        str, typer.Option(help="Where users reach the services (host:port).")
    ] = "127.0.0.1:8080",
    listen_tls: Annotated[
        str | None, typer.Option(help="Where users reach the services over HTTPS (host:port).")
    ] = None,
    trusted_proxy: TrustedProxy = None,
) -> None:
    """Run the router (the data plane) in the foreground; `ondeck up` starts one when none runs."""
    from ondeck.router.server import run

    options = _router_options(trusted_proxy)
    run((state_dir or default_state_dir()).resolve(), listen, options, listen_tls=listen_tls)


def _router_options(trusted_proxy: list[str] | None) -> ProxyOptions:
    """The router's options from the command line; a bad CIDR is the user's to fix."""
    from ondeck.router.options import ProxyOptions, parse_trusted

    trusted = tuple(trusted_proxy or ())
    try:
        parse_trusted(trusted)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return ProxyOptions(trusted_proxies=trusted)


def _setup_logging() -> None:
    level = logging.DEBUG if os.environ.get("ONDECK_DEBUG") else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            show_path=False, markup=False, log_time_format="%H:%M:%S"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    # URL passwords, secret-looking values and every secret value loaded: never logged
    handler.addFilter(RedactingFilter(known_secrets.VALUES))
    root = logging.getLogger("ondeck")
    root.handlers[:] = [handler]
    root.setLevel(level)


# -- talking to a running controller ---------------------------------------------------------------


@app.command()
def status(
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Desired vs live, per environment and service."""
    doc = _client(state_dir, api, token, app_name).get("/api/v1/status")
    if json_out:
        shown = {"environments": doc["environments"]}
        if doc.get("certificates"):
            shown["certificates"] = doc["certificates"]
        if doc.get("apps"):  # `ondeck up --host-file`: every app listed, running or not
            shown["apps"] = doc["apps"]
        if doc.get("host_file"):
            shown["host_file"] = doc["host_file"]
        print(json.dumps(shown, indent=2))
        return
    _print_status(doc)


def _print_status(raw: dict[str, Any]) -> None:
    from ondeck.status import StatusDoc  # pydantic: loaded only by the commands that print it

    doc = StatusDoc.model_validate(raw)
    wrap, out.soft_wrap = out.soft_wrap, False  # status fits the terminal (80 columns too)
    try:
        _print_doc(doc)
    finally:
        out.soft_wrap = wrap


def _print_doc(doc: StatusDoc) -> None:
    if doc.router.error:
        out.print(f"[red]router:[/red] {escape(doc.router.error)}")
    elif doc.router.listen:
        out.print(f"[dim]router: http://{doc.router.listen}/[/dim]")
        if doc.router.listen_tls:
            out.print(f"[dim]router: https://{doc.router.listen_tls}/[/dim]")
    if doc.source.error:
        out.print(
            f"[red]git source error:[/red] {escape(doc.source.error)} (retrying with backoff)"
        )
    if doc.store.error:
        out.print(f"[red]state dir:[/red] {escape(doc.store.error)} (free some space)")
    if doc.host_file is not None:
        at = f" at {doc.host_file.revision[:12]}" if doc.host_file.revision else ""
        out.print(f"[dim]host file: {escape(doc.host_file.path)}{at}[/dim]")
    if doc.host_file is not None and doc.host_file.error:
        out.print(f"[red]host file not applied:[/red] {escape(doc.host_file.error)}")
    for row in doc.apps:
        if row.error:
            out.print(f"[red]app {row.name} not running:[/red] {escape(row.error)}")
    for env in doc.environments:
        _print_env(env, len(doc.apps) > 1)
    for cert in doc.certificates:
        _print_certificate(cert)
    if doc.certificates and not doc.router.listen_tls:
        out.print(
            "[yellow]tls: certificates are held but not served: "
            "run `ondeck up` with --listen-tls (e.g. 0.0.0.0:443)[/yellow]"
        )


def _print_certificate(cert: CertificateStatus) -> None:
    """One host's certificate: issuer and expiry, or why there is none."""
    if cert.issuer is None:
        text = "[yellow]no certificate yet[/yellow]"
    else:
        text = f"{escape(cert.issuer)}, valid until {cert.not_after}"
    out.print(f"[bold]https[/bold] {escape(cert.host)}  {text}  [dim]({cert.source})[/dim]")
    if cert.last_error:
        out.print(f"  [red]last attempt failed:[/red] {escape(cert.last_error)}")
    if cert.degraded:
        out.print(f"  [red]Degraded:[/red] {escape(cert.degraded)}")


def _print_backup(b: BackupStatus) -> None:
    proven = (
        f"last verified restore: {b.last_verified_restore[:19]} ({b.last_verified_id})"
        if b.last_verified_restore
        else "[yellow]never verified by a restore[/yellow]"
    )
    running = " [cyan]running[/cyan]" if b.running else ""
    out.print(f"  backup {b.name} ({b.engine}, {b.backups} kept){running}: {proven}")
    if b.last_error:
        out.print(f"    [red]last error:[/red] {escape(b.last_error)}")


def _print_env(env: EnvStatus, with_app: bool = False) -> None:
    sync, health = env.sync, env.health
    name = f"{env.app}/{env.name}" if with_app and env.app else env.name
    out.print(
        f"[bold]{escape(name)}[/bold]  [{SYNC_STYLE.get(sync, 'white')}]{sync}[/]  "
        f"[{HEALTH_STYLE.get(health, 'white')}]{health}[/]"
    )
    for label, commit in (
        ("desired", env.commit),
        ("live", env.live_commit),
        ("pending", env.pending_commit),
    ):
        if commit:
            out.print(_commit_line(label, commit.sha, commit.message, _who(commit.author)))
    if env.operation:
        out.print(f"  [cyan]syncing[/cyan] {env.operation.revision[:12]} ({env.operation.trigger})")
    for condition in env.conditions:
        out.print(f"  [yellow]{escape(condition)}[/yellow]")
    if env.error:
        culprit = env.error_commit
        where = f" (commit {culprit.sha[:12]} by {escape(_who(culprit.author))})" if culprit else ""
        out.print(f"  [red]error{where}:[/red] {escape(env.error)}")
        out.print(
            "  [dim]the last good release keeps running; push a fix or revert the commit[/dim]"
        )
    for backup in env.backups:
        _print_backup(backup)
    if env.services:
        out.print(_services_table(env.services))


def _commit_line(label: str, sha: str, message: str, author: str) -> str:
    """One commit on one line that fits the terminal: the message is shortened, never wrapped."""
    head = f"  {label:8} {sha[:12]} "
    tail = f" — {author}"
    room = out.width - len(head) - len(tail)
    if room < 16:  # a very narrow terminal: the message matters more than the author
        tail, room = "", out.width - len(head)
    subject = message.splitlines()[0] if message else ""
    if len(subject) > room:
        subject = subject[: max(room - 1, 0)] + "…"
    return f"{head}{escape(subject)}{escape(tail)}"


def _services_table(services: list[ServiceStatus]) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for column in ("SERVICE", "SYNC", "HEALTH", "VERSION", "CODE", "READY"):
        table.add_column(column)
    for svc in services:
        table.add_row(
            f"[bold]{svc.name}[/bold]",
            _styled(svc.sync, SYNC_STYLE),
            _styled(svc.health, HEALTH_STYLE),
            escape(svc.version or "-"),
            _code(svc),
            f"{svc.replicas.ready}/{svc.replicas.desired}",
        )
        reasons = [*svc.reasons, *([svc.health_reason] if svc.health_reason else [])]
        for reason in reasons:
            table.add_row("", f"[dim]{escape(reason)}[/dim]")
        for inst in svc.instances:
            table.add_row(
                f"  {inst.id}",
                inst.state,
                _styled(inst.health, HEALTH_STYLE),
                f"pid {inst.pid or '-'}",
                f"port {inst.port or '-'}",
                f"restarts {inst.restarts}" if inst.restarts else "",
            )
            for line in (inst.log_tail or "").strip().splitlines()[-5:]:
                table.add_row("", f"[dim]  | {escape(line)}[/dim]")
    return table


def _code(svc: ServiceStatus) -> str:
    """The commit the service's code runs from, short; `old→new` while it moves to another."""
    running, wanted = svc.code_revision, svc.desired_code_revision
    if running and wanted and running != wanted:
        return f"{running[:7]}→{wanted[:7]}"
    shown = running or wanted
    return shown[:7] if shown else "-"


def _styled(value: str, styles: dict[str, str]) -> str:
    return f"[{styles.get(value, 'white')}]{value}[/]"


def _who(author: str) -> str:
    """`Name <email>` shown as the name alone; --json keeps it whole."""
    return author.split(" <", 1)[0]


@app.command()
def sync(
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the sync is done.")] = False,
    env: EnvOpt = None,
    timeout: Annotated[
        str | None, typer.Option(help="With --wait: give up waiting after this long (5m).")
    ] = None,
    skip_backup: Annotated[
        bool,
        typer.Option("--skip-backup", help="Deploy without the before_deploy backups (recorded)."),
    ] = False,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Refresh from git now and sync."""
    if timeout is not None and not wait:
        raise UserError("--timeout is how long --wait waits: add --wait, or drop --timeout")
    seconds = parse_duration(timeout or "5m")
    started = time.monotonic()
    with err.status("fetching and syncing…") if wait and not json_out else contextlib.nullcontext():
        answer = _client(state_dir, api, token, app_name).post(
            "/api/v1/sync",
            {"env": env, "wait": wait, "timeout": seconds, "skip_backup": skip_backup},
            timeout=seconds + 10,
        )
    if json_out:
        print(json.dumps(answer, indent=2))
    elif not wait:
        err.print("sync requested; follow it with `ondeck status`")
    else:
        _print_status(answer["status"])
        err.print(f"done in {format_duration(time.monotonic() - started)}")
    if wait and (
        answer.get("error")
        or any(
            e["sync"] != "Synced"
            for e in answer["status"]["environments"]
            if env in (None, e["name"])
        )
    ):
        raise typer.Exit(1)


@app.command()
def down(
    env: Annotated[
        str | None,
        typer.Option("--env", help="Only this environment (held down until `ondeck sync --env`)."),
    ] = None,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Stop the app's instances gracefully, and the router; the state is kept for `ondeck up`."""
    with err.status("stopping instances gracefully…"):
        answer = _client(state_dir, api, token, app_name).post(
            "/api/v1/down", {"env": env}, timeout=DOWN_TIMEOUT
        )
    stopped = answer["stopped"]
    err.print(f"[green]stopped[/green] {len(stopped)} instance(s): {', '.join(stopped) or '-'}")
    for name, where in answer.get("on_cluster", {}).items():
        err.print(
            f"[yellow]{escape(name)} runs on Kubernetes ({escape(where)}): its pods keep "
            "running[/yellow]; scale them with kubectl, or take the environment out of ondeck.yaml"
        )
    if answer["exiting"]:
        err.print("the router and the controller have stopped; `ondeck up` starts it all again")
    elif env is None:  # one app of a host file: the host and its other apps go on
        again = f"ondeck sync --app {app_name}" if app_name else "ondeck sync"
        err.print(f"every environment is held down; `{again}` starts them again")
    else:
        err.print(f"{env} is held down; `ondeck sync --env {env}` starts it again")


@app.command()
def run(
    service: Annotated[str, typer.Argument(help="The service whose release and env to use.")],
    argv: Annotated[list[str], typer.Argument(help="The command, after `--`.", metavar="ARGV...")],
    env: EnvOpt = None,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Run a one-off command in SERVICE's current release with its environment and secrets.

    It runs here, in the foreground (interactive on a terminal), and is recorded in
    the environment's events. Example: `ondeck run web -- python3 manage.py shell`.
    """
    answer = _client(state_dir, api, token, app_name).post(
        f"/api/v1/run/{service}", {"env": env, "argv": argv}
    )
    environ = dict(answer["environ"])  # holds secret values: never printed
    for name in ("TERM", "COLORTERM", "COLUMNS", "LINES"):  # the terminal is the user's
        if name in os.environ:
            environ.setdefault(name, os.environ[name])
    err.print(f"[dim]{answer['env']}/{service} at {answer['revision'][:12]}: {answer['cwd']}[/dim]")
    sys.stdout.flush()
    os.chdir(answer["cwd"])
    try:
        os.execvpe(argv[0], argv, environ)
    except OSError as error:
        raise UserError(f"cannot run {argv[0]!r} in {answer['cwd']}: {error.strerror}") from error


@app.command()
def diff(
    env: EnvOpt = None,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """What differs between desired and live, and why."""
    doc = _client(state_dir, api, token, app_name).get("/api/v1/diff", env=env)
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    for environment in doc["environments"]:
        for svc in environment["services"]:
            mark = "[green]=[/green]" if svc["sync"] == "Synced" else "[yellow]~[/yellow]"
            out.print(f"{mark} {environment['name']}/{svc['name']}: {svc['sync']}")
            for reason in svc["reasons"]:
                out.print(f"    [yellow]{escape(reason)}[/yellow]")
            for line in svc.get("diff", "").splitlines():
                out.print(f"    {_diff_line(line)}")


def _diff_line(line: str) -> str:
    style = (
        "bold"
        if line.startswith(("---", "+++"))
        else {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "dim")
    )
    return f"[{style}]{escape(line)}[/{style}]"


@app.command()
def history(
    env: EnvOpt = None,
    limit: int = 20,
    json_out: JsonOpt = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Every sync: revision, author, message, trigger, result, duration, actions."""
    doc = _client(state_dir, api, token, app_name).get("/api/v1/history", env=env, limit=limit)
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    for row in doc["syncs"]:
        took = format_duration(row["duration"]) if row["duration"] is not None else "…"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started_at"]))
        where = f"{row['app']}/{row['env']}" if row.get("app") else row["env"]
        out.print(
            f"{when}  {escape(where)}  [bold]{row['revision'][:12]}[/bold]  "
            f"{_styled(row['result'] or 'Running', RESULT_STYLE)} in {took}  ({row['trigger']})  "
            f"{escape(row['message'])} — {escape(_who(row['author']))}"
        )
        for change in row.get("changes", []):
            out.print(f"    [cyan]{escape(change)}[/cyan]")
        for action in row["actions"]:
            out.print(f"    [dim]{escape(action)}[/dim]")
        for line in (row["error"] or "").splitlines()[:12]:
            out.print(f"    [red]{escape(line)}[/red]")


LOG_LINES = 100  # `ondeck logs` without -n


def _last_lines(text: str, count: int) -> str:
    """The last `count` lines of `text` (all of them when there are fewer)."""
    kept = text.splitlines(keepends=True)[-count:] if count > 0 else []
    return "".join(kept)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="The service (or, with --job, the job).")] = "",
    env: EnvOpt = None,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[
        int | None, typer.Option("-n", "--lines", help="How many last lines (default 100).")
    ] = None,
    release: Annotated[
        bool, typer.Option("--release", help="The whole output of its latest release task.")
    ] = False,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
    access: Annotated[
        bool, typer.Option("--access", help="The router's access log of the service instead.")
    ] = False,
    job: Annotated[
        str | None, typer.Option("--job", help="A scheduled job's output, every run.")
    ] = None,
) -> None:
    """A service's logs (every instance, prefixed by its id), or a job's (--job NAME)."""
    if job is not None or not service:
        if job is None:
            raise UserError(
                "name a service (`ondeck logs web`) or a job (`ondeck logs --job NAME`)"
            )
        service, params = job, {"job": "true"}
    else:
        params = {}
    if release and (follow or access or job is not None):
        extra = "-f" if follow else "--access" if access else "--job"
        raise UserError(
            f"--release shows the whole output of the latest release task, which ends: drop {extra}"
        )
    if access:
        from ondeck.commands.access import show

        where = (state_dir or default_state_dir()).resolve()
        show(where, service, env, LOG_LINES if lines is None else lines, follow, sys.stdout,
             app=app_name)  # fmt: skip
        return
    client = _client(state_dir, api, token, app_name)
    if release:
        output = client.get(f"/api/v1/release-task/{service}", env=env)
        sys.stdout.write(output if lines is None else _last_lines(output, lines))
        return
    lines = LOG_LINES if lines is None else lines
    if not follow:
        sys.stdout.write(client.get(f"/api/v1/logs/{service}", env=env, lines=lines, **params))
        return
    with contextlib.suppress(KeyboardInterrupt):
        chosen = {"env": env} if env else {}  # an empty env= names no environment: a 404
        for chunk in client.stream(
            f"/api/v1/logs/{service}", lines=lines, follow="true", **chosen, **params
        ):
            sys.stdout.write(chunk)
            sys.stdout.flush()


@app.command()
def install(
    repo: Annotated[
        str | None, typer.Option("--repo", help="One app: the repo `ondeck up` follows.")
    ] = None,
    host_file: Annotated[
        str | None,
        typer.Option(
            "--host-file",
            help="Every app of this host file, a path or REPO#PATH (the default, without "
            "--repo: $ONDECK_HOST_FILE, else STATE_DIR/ondeck.host.yaml).",
        ),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env")] = None,
    state_dir: StateDir = None,
    unit_dir: Annotated[Path, typer.Option(help="Where to write the units.")] = Path(
        "/etc/systemd/system"
    ),
    api: Annotated[str, typer.Option(help="Where the API listens.")] = "127.0.0.1:7070",
    listen: Annotated[str, typer.Option(help="Where the router serves users.")] = "127.0.0.1:8080",
    trusted_proxy: TrustedProxy = None,
    listen_tls: Annotated[
        str | None, typer.Option(help="Where the router serves HTTPS (e.g. 0.0.0.0:443).")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Overwrite units that run another repo, host file or state dir."
        ),
    ] = False,
) -> None:
    """Write systemd units so the router and `ondeck up` are kept running (Restart=always).

    One unit set per host: `ondeck up --host-file` runs every app of the host file
    (`ondeck app add`); `--repo` runs a single app.
    """
    from ondeck.install import write_units
    from ondeck.source.hostfile import locate, read_host_file

    directory = (state_dir or default_state_dir()).resolve()
    chosen = None
    if repo is None:
        if env:
            raise UserError("--env is per app with a host file: `ondeck app add NAME REPO --env E`")
        if listen_tls:
            raise UserError(
                "--listen-tls with a host file: not supported yet (`ondeck up --host-file` "
                "refuses it); install one app that needs HTTPS with --repo"
            )
        ref = locate(host_file, directory)
        read_host_file(ref, directory)  # a missing or bad host file: said now, not in a unit log
        chosen = ref.path if ref.repo is None else f"{ref.repo}#{ref.path}"
    elif host_file is not None:
        raise UserError("give --repo (one app) or --host-file (every app of the host), not both")
    again = (unit_dir / "ondeck.service").exists()
    for path in write_units(
        unit_dir,
        repo=repo,
        envs=env or [],
        state_dir=directory,
        api=api,
        listen=listen,
        trusted_proxies=_router_options(trusted_proxy).trusted_proxies,
        listen_tls=listen_tls,
        host_file=chosen,
        replace=replace,
    ):
        err.print(f"[green]wrote[/green] {path}")
    then = "restart" if again else "enable --now"
    err.print(
        f"next: [bold]systemctl daemon-reload && "
        f"systemctl {then} ondeck-router.service ondeck.service[/bold]"
    )


rollout_app = typer.Typer(help="Step into a blue/green or canary release.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")


def _rollout(
    action: str,
    service: str,
    env: str | None,
    state_dir: Path | None,
    api: str | None,
    token: str | None,
    app_name: str | None = None,
) -> None:
    answer = _client(state_dir, api, token, app_name).post(
        f"/api/v1/rollout/{service}/{action}" + (f"?env={env}" if env else ""), {}
    )
    release = answer["release"]
    out.print(
        f"{service}: {release['stage']} at {release['weight']}%"
        + (f" ({escape(release['reason'])})" if release.get("reason") else "")
    )


@rollout_app.command("promote")
def rollout_promote(
    service: str,
    env: EnvOpt = None,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Go past the current pause (or retry an aborted release)."""
    _rollout("promote", service, env, state_dir, api, token, app_name)


@rollout_app.command("abort")
def rollout_abort(
    service: str,
    env: EnvOpt = None,
    state_dir: StateDir = None,
    api: ApiUrl = None,
    token: Token = None,
    app_name: AppName = None,
) -> None:
    """Send all traffic back to the stable version and stop the new one."""
    _rollout("abort", service, env, state_dir, api, token, app_name)


app.add_typer(secret_app, name="secret")
app.add_typer(maintenance_app, name="maintenance")
app.add_typer(job_app, name="job")
app.add_typer(app_app, name="app")

token_app = typer.Typer(
    help="Scoped API tokens (read < sync < deploy, per environment and app).",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")


def _tokens(state_dir: Path | None) -> Any:
    from ondeck.store import Store
    from ondeck.tokens import Tokens, host_tokens

    directory = (state_dir or default_state_dir()).resolve()
    if (directory / "ondeck.db").exists():  # `ondeck up REPO`: one app
        return Tokens(Store(directory / "ondeck.db"))
    if (directory / "apps").is_dir():  # `ondeck up --host-file`: the host's tokens, every app
        return host_tokens(directory)
    raise UserError(
        f"no ondeck state in {directory}: run `ondeck up` there first, or pass --state-dir"
    )


@token_app.command("create")
def token_create(
    name: str,
    scope: Annotated[
        str, typer.Option(help="read, sync or deploy (each implies the ones before).")
    ] = "read",
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Only this environment; repeatable.")
    ] = None,
    app_name: Annotated[
        list[str] | None,
        typer.Option("--app", help="Only this app of the host file; repeatable."),
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Create a token; it is printed once, only its hash is kept."""
    from ondeck.tokens import parse_scope

    value = _tokens(state_dir).create(name, parse_scope(scope), env or [], app_name or [])
    print(value)
    where = ", ".join(env) if env else "every environment"
    if app_name:
        where += f" of app {', '.join(app_name)}"
    err.print(
        f"[green]token {name!r}[/green]: {scope} on {where}; store it now, it is not shown again"
    )


@token_app.command("list")
def token_list(json_out: JsonOpt = False, state_dir: StateDir = None) -> None:
    """The tokens: name, scope, environments, creation and last use (never the token)."""
    rows = _tokens(state_dir).list()
    if json_out:
        print(
            json.dumps(
                [
                    {
                        "name": t.name,
                        "scope": t.scope.label,
                        "envs": list(t.envs),
                        "apps": list(t.apps),
                        "prefix": t.prefix,
                        "created_at": t.created_at,
                        "last_used": t.last_used,
                    }
                    for t in rows
                ],
                indent=2,
            )
        )
        return
    for t in rows:
        used = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(t.last_used)) if t.last_used else "never"
        )
        apps = ", ".join(t.apps) or "all"
        out.print(
            f"{t.name:20} {t.scope.label:7} {', '.join(t.envs) or 'all':20} {apps:12} "
            f"{t.prefix}…  used {used}"
        )


@token_app.command("revoke")
def token_revoke(name: str, state_dir: StateDir = None) -> None:
    """Revoke a token at once."""
    _tokens(state_dir).revoke(name)
    err.print(f"[green]revoked[/green] {name}")


# -- the write path: every change to what runs is a commit ------------------------------------


def _assignments(pairs: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        service, sep, value = pair.partition("=")
        if not sep or not service or not value:
            example = "web=ghcr.io/acme/shop:1.4.3" if what == "IMAGE" else "web=1.4.3"
            raise UserError(f"{pair!r}: write SERVICE={what}, e.g. {example}")
        out.append((service, value))
    return out


def _set(
    field: Literal["version", "image", "source.ref"],
    assignments: list[str],
    env: str | None,
    push: bool,
    author: str | None,
    repo: str,
    branch: str | None,
    path: str,
    sync: bool,
    state_dir: Path | None,
) -> None:
    """`set-version` and `set-image`: the same one-line edit of a different field."""
    from ondeck.gitops import set_field

    pairs = _assignments(assignments, field.removeprefix("source.").upper())
    result = set_field(repo, pairs, field, env, push, author, branch, path)
    _report(result, repo, state_dir, nudge=sync)


@app.command("set-version")
def set_version(
    assignments: Annotated[list[str], typer.Argument(help="SERVICE=VERSION ...")],
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Commit a new version for services (CI's step after a build): a one-line diff."""
    _set("version", assignments, env, push, author, repo, branch, path, sync, state_dir)


@app.command("set-image")
def set_image(
    assignments: Annotated[list[str], typer.Argument(help="SERVICE=IMAGE ...")],
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Commit a new image reference for services: a one-line diff."""
    _set("image", assignments, env, push, author, repo, branch, path, sync, state_dir)


@app.command("set-ref")
def set_ref(
    assignments: Annotated[list[str], typer.Argument(help="SERVICE=REF ...")],
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Pin the code services run (source.ref: a branch, tag or sha): a one-line diff."""
    _set("source.ref", assignments, env, push, author, repo, branch, path, sync, state_dir)


@app.command("promote")
def promote_cmd(
    from_env: Annotated[str, typer.Argument(metavar="FROM_ENV")],
    to_env: Annotated[str, typer.Argument(metavar="TO_ENV")],
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Only these services.")
    ] = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Make TO_ENV run the versions, images and code (a full sha) FROM_ENV runs: one commit."""
    from ondeck.gitops import promote

    result = promote(repo, from_env, to_env, service, push, author, branch, path)
    _report(result, repo, state_dir, nudge=sync)


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option("--to", help="Restore what ran at this revision.")
    ] = None,
    env: EnvOpt = None,
    push: Push = False,
    author: Author = None,
    repo: Target = ".",
    branch: BranchOpt = None,
    path: PathOpt = "",
    sync: Nudge = True,
    state_dir: StateDir = None,
) -> None:
    """Undo the last deploy with a revert commit (git stays the truth; auto-sync deploys it)."""
    from ondeck.gitops import rollback as do_rollback

    result = do_rollback(repo, env, to, push, author, branch, path)
    _report(result, repo, state_dir, "rollback", nudge=sync)


@app.command()
def version() -> None:
    """Print ondeck's version."""
    print(__version__)
