"""Edits of the host file for `ondeck app add|remove`: one app's entry, nothing else.

Built on `spec.edit`'s splicing, so comments, key order and quoting survive and
an added app is one line (`  blog: {repo: /srv/git/blog.git}`). Every result is
checked with the host file model before it is returned: a bad name, a duplicate
or an invalid field is a `UserError` and the caller writes nothing. Pure: called
by source/hostfile.py.
"""

from __future__ import annotations

from ondeck.errors import SpecError, UserError
from ondeck.spec import edit
from ondeck.spec.host import HostApp, HostFile, load_host_file
from ondeck.spec.model import DNS_LABEL

NEW_HOST_FILE = (
    "# The apps this host runs (`ondeck up --host-file`); `ondeck app add|remove` edit it.\n"
)


def add_app(text: str | None, name: str, entry: HostApp, filename: str) -> str:
    """`text` (None: a new file) with app `name` added as the last entry of `apps:`."""
    if not DNS_LABEL.match(name):
        raise UserError(
            f"{name!r} is not a valid app name: use lowercase letters, digits and '-' "
            "(it names the app's state dir and its routes' owner)"
        )
    if text is None:
        text = NEW_HOST_FILE + "apps:\n"
    else:
        current = load_host_file(text, filename)
        if name in current.apps:
            raise UserError(
                f"app {name!r} is already in {filename} (repo {current.apps[name].repo}): "
                f"`ondeck app remove {name}` first, or pick another name"
            )
        if not current.apps:  # `apps: {}`: the entry goes on its own line, not inside the braces
            text = _bare_apps_key(text)
    new = edit.set_flow(text, ["apps", name], fields(entry))
    _checked(new, filename, f"add app {name!r}")
    return new


def remove_app(text: str, name: str, filename: str) -> str:
    """`text` without app `name`'s entry; the last app gone leaves `apps: {}`."""
    current = load_host_file(text, filename)
    if name not in current.apps:
        listed = ", ".join(current.apps) or "none"
        raise UserError(f"no app {name!r} in {filename} (apps: {listed}): see `ondeck app list`")
    new = edit.remove_value(text, ["apps", name], keep=1, check=False)
    if edit.get_value(new, ["apps"]) is None:
        new = edit.set_flow(new, ["apps"], {})
    _checked(new, filename, f"remove app {name!r}")
    return new


def fields(entry: HostApp) -> dict[str, edit.FlowValue]:
    """The fields written for `entry`: `repo`, and the others only where not the default."""
    written: dict[str, edit.FlowValue] = {"repo": entry.repo}
    if entry.branch is not None:
        written["branch"] = entry.branch
    if entry.path:
        written["path"] = entry.path
    if entry.envs:
        written["envs"] = list(entry.envs)
    return written


def _bare_apps_key(text: str) -> str:
    """`text` with its empty `apps: {}` as a bare `apps:`, ready for block entries."""
    return edit.clear_value(text, ["apps"])


def _checked(text: str, filename: str, what: str) -> HostFile:
    try:
        return load_host_file(text, filename)
    except SpecError as err:
        listed = "\n".join(f"  {p}" for p in err.problems)
        raise UserError(f"refusing to {what}: the host file would not be valid:\n{listed}") from err
