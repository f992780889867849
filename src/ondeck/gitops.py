"""The write commands: set-version/set-image/set-ref, promote and rollback, each one commit.

The CLI calls these. Each opens a `Workspace` (the user's checkout, or a
temporary clone of a remote), decides the changes from the spec text alone
(`spec.edit`: effective values, minimal edits), refuses a result that is not a
valid spec, commits with a message saying what changed where, and pushes when
asked. Nothing to change is a named outcome: a `Result` with no sha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ondeck.errors import UserError
from ondeck.source.write import Workspace
from ondeck.spec import edit
from ondeck.spec.model import MAINTENANCE_MESSAGE, REF

Field = Literal["version", "image", "source.ref"]
# What an environment runs: its version, its image, and the code its `source` pins.
FIELDS: tuple[str, ...] = ("version", "image", "source.ref", "source.repo", "source.path")
PIN = ("source.ref", "source.repo", "source.path")
# How far back `rollback` looks for the last commit that changed what an environment runs.
ROLLBACK_DEPTH = 200

Deployed = dict[tuple[str, str], str]


@dataclass(frozen=True)
class Change:
    """One field of one service in one environment (None: the base) moving from old to new."""

    service: str
    field: str
    env: str | None
    old: str | None
    new: str

    def line(self) -> str:
        """`web: version 1.4.2 -> 1.4.3`, a commit body line."""
        return f"{self.service}: {self.field} {_shown(self.old)} -> {self.new}"


@dataclass(frozen=True)
class Result:
    """What a command did: the commit (None when there was nothing to do) and its message."""

    sha: str | None
    message: str
    changes: tuple[Change, ...]
    pushed: bool


# --- commands ------------------------------------------------------------------------------


def set_field(
    target: str,
    assignments: list[tuple[str, str]],
    field: Field,
    env: str | None,
    push: bool,
    author: str | None = None,
    branch: str | None = None,
    path: str = "",
) -> Result:
    """Set `field` of each `(service, value)` in `env` (None: the base) and commit it."""
    with _open(target, branch, path, push) as ws:
        text = ws.read()
        changes = _assignment_changes(text, assignments, field, env)
        if not changes:
            return _nothing(f"nothing to change: {_already(assignments, field, env)}")
        if field == "source.ref":
            _check_refs(ws, text, changes)
        return _commit(ws, text, changes, _deploy_message(changes), push, author)


def _check_refs(ws: Workspace, text: str, changes: list[Change]) -> None:
    """A pin that names nothing is refused before it is committed (the sync would refuse it)."""
    for c in changes:
        if not REF.match(c.new):
            continue  # not a ref at all: the spec's validation says so, in its words
        repo = edit.effective(text, c.service, "source.repo", c.env)
        try:
            ws.code_sha(c.new, repo)
        except UserError as err:
            raise UserError(f"refusing to pin {c.service} to {c.new!r}: {err}") from err


def promote(
    target: str,
    from_env: str,
    to_env: str,
    services: list[str] | None,
    push: bool,
    author: str | None = None,
    branch: str | None = None,
    path: str = "",
) -> Result:
    """Make `to_env` run the version, image and code `from_env` runs, one commit for all.

    The code is pinned to a full sha: the one `from_env`'s `source.ref` names now
    (a branch is resolved), or the spec's commit when it pins nothing.
    """
    if from_env == to_env:
        raise UserError(f"cannot promote {from_env!r} to itself: name two environments")
    with _open(target, branch, path, push) as ws:
        text = ws.read()
        chosen = _promoted_services(text, from_env, to_env, services)
        source = edit.effective_all(text, from_env, ("version", "image"))
        dest = edit.effective_all(text, to_env, FIELDS)
        for name in chosen:
            source.update(_code_of(ws, text, name, from_env, dest))
        changes = [
            Change(name, field, to_env, dest.get((name, field)), source[(name, field)])
            for name in chosen
            for field in FIELDS
            if (name, field) in source and dest.get((name, field)) != source[(name, field)]
        ]
        if not changes:
            return _nothing(f"nothing to promote: {to_env} already runs what {from_env} runs")
        subject = f"promote: {from_env} -> {to_env}"
        return _commit(ws, text, changes, _with_body(subject, changes), push, author)


def rollback(
    target: str,
    env: str | None,
    to: str | None,
    push: bool,
    author: str | None = None,
    branch: str | None = None,
    path: str = "",
) -> Result:
    """Undo the last deploy of `env` (a revert commit), or restore what it ran at `to`.

    Without `to`: revert the last commit that changed the version or image `env`
    runs, or HEAD itself when `env` is None. With `to`: one commit setting each
    service's version and image back to their effective values at `to`; a field
    unset at `to`, or a service gone since, is left as it is.
    """
    with _open(target, branch, path, push) as ws:
        edit.services(ws.read(), env)  # an unknown environment fails here, by name
        if to is None:
            return _revert_last(ws, env, push, author)
        return _restore(ws, env, to, push, author)


def set_maintenance(
    target: str,
    service: str,
    on: bool,
    message: str | None,
    env: str | None,
    push: bool,
    author: str | None = None,
    branch: str | None = None,
    path: str = "",
) -> Result:
    """Turn maintenance mode of `service` in `env` (None: the base) on or off: one commit.

    On writes `maintenance: {message: ...}` where `env` keeps its overrides; off
    removes it (and the overlay mappings it leaves empty). Off refuses when the
    base spec would keep the service in maintenance anyway.
    """
    if message is not None and not message.strip():
        raise UserError("--message is empty: write the text users should see")
    with _open(target, branch, path, push) as ws:
        text = ws.read()
        _check_known([service], edit.services(text, env), env)
        where = edit.deploy_path(service, "maintenance", env)
        current = _maintenance_message(text, service, env)
        if on:
            wanted = message or current or MAINTENANCE_MESSAGE
            if current == wanted:
                return _nothing(f"nothing to change: {service} is in maintenance in {_where(env)}")
            new = edit.set_value(text, [*where, "message"], wanted)
            change = Change(service, "maintenance", env, current, wanted)
        else:
            if current is None:
                return _nothing(
                    f"nothing to change: {service} is not in maintenance in {_where(env)}"
                )
            new = edit.remove_value(text, where, keep=2)
            if _maintenance_message(new, service, env) is not None:
                raise UserError(
                    f"{service} is in maintenance in the base spec, not only in {env}: "
                    f"run `ondeck maintenance off {service}` without --env"
                )
            change = Change(service, "maintenance", env, current, "off")
        state = "on" if on else "off"
        subject = f"maintenance({service}): {state}{_env_suffix(env)}"
        ws.write(new)
        sha = ws.commit(_with_body(subject, [change]), author)
        if sha is None:
            return _nothing("nothing to change: the spec is already as asked")
        if push:
            ws.push()
            sha = ws.head()
        return Result(sha, _with_body(subject, [change]), (change,), push)


def _maintenance_message(text: str, service: str, env: str | None) -> str | None:
    """The message `env` shows for `service` in maintenance; None when it serves."""
    value = edit.effective_value(text, service, "maintenance", env)
    if value is None:
        return None
    message = value.get("message") if isinstance(value, dict) else None
    return str(message) if message is not None else MAINTENANCE_MESSAGE


# --- set-version / set-image ---------------------------------------------------------------


def _assignment_changes(
    text: str, assignments: list[tuple[str, str]], field: Field, env: str | None
) -> list[Change]:
    wanted = dict(assignments)  # a service named twice: the last value wins
    _check_known(list(wanted), edit.services(text, env), env)
    changes = []
    for name, value in wanted.items():
        if not value.strip():
            raise UserError(f"empty {field} for {name}: write {name}=VALUE")
        old = edit.effective(text, name, field, env)
        if old != value:
            changes.append(Change(name, field, env, old, value))
    return changes


def _deploy_message(changes: list[Change]) -> str:
    env = _env_suffix(changes[0].env)
    if len(changes) == 1:
        c = changes[0]
        return f"deploy({c.service}): {_shown(c.old)} -> {c.new}{env}"
    listed = ", ".join(f"{c.service} {c.new}" for c in changes)
    return _with_body(f"deploy: {listed}{env}", changes)


def _already(assignments: list[tuple[str, str]], field: str, env: str | None) -> str:
    values = ", ".join(f"{name} {value}" for name, value in dict(assignments).items())
    return f"{_where(env)} already runs {field} {values}"


# --- promote -------------------------------------------------------------------------------


def _promoted_services(
    text: str, from_env: str, to_env: str, services: list[str] | None
) -> list[str]:
    """The services to promote: those asked for, or every one both environments run."""
    source, dest = edit.services(text, from_env), edit.services(text, to_env)
    if services is None:
        return [name for name in source if name in dest]
    _check_known(services, source, from_env)
    _check_known(services, dest, to_env)
    return list(dict.fromkeys(services))


def _code_of(ws: Workspace, text: str, name: str, env: str, dest: Deployed) -> Deployed:
    """`source.*` pinning exactly the code `env` runs for `name`: a full sha, repo and path."""
    pin = edit.effective_all(text, env, PIN)
    ref, repo = pin.get((name, "source.ref")), pin.get((name, "source.repo"))
    sha, follows = (ws.head(), True) if ref is None else ws.code_sha(ref, repo)
    if repo is None and follows:  # the commit that made this code, not a later spec edit
        sha = ws.code_commit(sha, pin.get((name, "source.path"), ws.prefix))
    found = {(name, "source.ref"): sha}
    for field in ("source.repo", "source.path"):
        if (name, field) in pin:
            found[(name, field)] = pin[(name, field)]
        elif (name, field) in dest:
            raise UserError(
                f"cannot promote {name}: the target sets {field} "
                f"({dest[(name, field)]}) and {env} does not; remove it there first"
            )
    return found


def _check_known(names: list[str], known: list[str], env: str | None) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(
            f"unknown service {', '.join(map(repr, unknown))} in {_where(env)}; "
            f"services: {', '.join(known) or 'none'}"
        )


# --- rollback ------------------------------------------------------------------------------


def _revert_last(ws: Workspace, env: str | None, push: bool, author: str | None) -> Result:
    target = ws.head() if env is None else _last_deploy(ws, env)
    short, subject = target[:12], ws.subject(target)
    message = f"rollback: revert {short} ({subject})"
    before = edit.effective_all(ws.read(), env, FIELDS)

    def valid(text: str) -> None:
        edit.ensure_valid(text, message)

    sha = ws.revert(target, message, check=valid, author=author)
    after = edit.effective_all(ws.read(), env, FIELDS)
    changes = tuple(_differences(before, after, env, removed=True))
    if push:
        ws.push()
        sha = ws.head()
    return Result(sha, f"{message}\n\nThis reverts commit {target}.", changes, push)


def _last_deploy(ws: Workspace, env: str) -> str:
    """The newest commit that changed a version or image `env` runs."""
    spec = ws.spec_relpath
    for commit in ws.log(ROLLBACK_DEPTH, path=spec):
        parents = ws.parents(commit.sha)
        if len(parents) != 1:
            continue  # a merge: the commits it brings in are listed on their own
        if _deployed_at(ws, commit.sha, env) != _deployed_at(ws, parents[0], env):
            return commit.sha
    raise UserError(
        f"no commit among the last {ROLLBACK_DEPTH} changed what {env} runs: "
        "nothing to roll back (use --to REV to restore an older state)"
    )


def _deployed_at(ws: Workspace, rev: str, env: str) -> Deployed:
    text = ws.show(rev, ws.spec_relpath)
    if text is None:
        return {}
    try:
        return edit.effective_all(text, env, FIELDS)
    except UserError:
        return {}  # an invalid spec (or no such environment yet) deploys nothing


def _restore(ws: Workspace, env: str | None, to: str, push: bool, author: str | None) -> Result:
    rev = ws.resolve(to)
    if not ws.is_ancestor(rev, "HEAD"):
        raise UserError(
            f"{to} is not an ancestor of {ws.branch}: rollback only goes back in its history"
        )
    old_text = ws.show(rev, ws.spec_relpath)
    if old_text is None:
        raise UserError(f"there is no {ws.spec_relpath} at {to}")
    text = ws.read()
    then = edit.effective_all(old_text, env, FIELDS)
    now = edit.effective_all(text, env, FIELDS)
    current = set(edit.services(text, env))
    changes = [c for c in _differences(now, then, env) if c.service in current]
    short = rev[:12]
    if not changes:
        return _nothing(f"nothing to roll back: {_where(env)} runs what it ran at {short}")
    return _commit(ws, text, changes, _rollback_message(changes, short), push, author)


def _differences(
    before: Deployed, after: Deployed, env: str | None, removed: bool = False
) -> list[Change]:
    """A change for every field `after` sets to a value other than `before`'s (and, with
    `removed`, for every field `after` no longer sets, to "unset")."""
    changes = [
        Change(name, field, env, before.get((name, field)), value)
        for (name, field), value in after.items()
        if before.get((name, field)) != value
    ]
    gone = [key for key in before if key not in after] if removed else []
    return changes + [
        Change(name, field, env, before[(name, field)], "unset") for name, field in gone
    ]


def _rollback_message(changes: list[Change], short: str) -> str:
    env = _env_suffix(changes[0].env)
    if len(changes) == 1:
        c = changes[0]
        return f"rollback({c.service}): {_shown(c.old)} -> {c.new}{env} (as of {short})"
    listed = ", ".join(f"{c.service} {c.new}" for c in changes)
    return _with_body(f"rollback: {listed}{env} (as of {short})", changes)


# --- shared --------------------------------------------------------------------------------


def _open(target: str, branch: str | None, path: str, push: bool) -> Workspace:
    ws = Workspace.open(target, branch, path)
    if ws.is_temporary and not push:
        ws.close()
        raise UserError(
            f"{target} is not a local checkout: add --push (an unpushed commit would be lost)"
        )
    return ws


def _commit(
    ws: Workspace,
    text: str,
    changes: list[Change],
    message: str,
    push: bool,
    author: str | None,
) -> Result:
    """Write every change into the spec, refuse an invalid result, commit, maybe push."""
    for c in changes:
        text = edit.set_value(text, edit.deploy_path(c.service, c.field, c.env), c.new, check=False)
    edit.ensure_valid(text, f"commit {message.splitlines()[0]!r}")
    ws.write(text)
    sha = ws.commit(message, author)
    if sha is None:
        return _nothing("nothing to change: the spec is already as asked")
    if push:
        ws.push()
        sha = ws.head()
    return Result(sha, message, tuple(changes), push)


def _nothing(message: str) -> Result:
    return Result(None, message, (), False)


def _with_body(subject: str, changes: list[Change]) -> str:
    return subject + "\n\n" + "\n".join(c.line() for c in changes)


def _env_suffix(env: str | None) -> str:
    return f" [{env}]" if env else ""


def _where(env: str | None) -> str:
    return f"environment {env!r}" if env else "the base spec"


def _shown(value: str | None) -> str:
    return "unset" if value is None else value
