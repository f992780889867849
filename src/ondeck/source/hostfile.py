"""Where the host file is, how it is read, and how `ondeck app add|remove` change it.

A host file is a plain file, or `REPO#PATH`: the file PATH in a git repo, read
at the head of the repo's default branch (the host's own config is GitOps
too). Which one: `--host-file`, else `ONDECK_HOST_FILE`, else
STATE_DIR/ondeck.host.yaml. Reading a repo goes through a `GitSource` mirror in
the state dir; changing one is a commit (a `Workspace`: the checkout in place,
or a clone that must be pushed). A plain file is replaced atomically. Called by
commands/app.py and by `ondeck up --host-file`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ondeck.errors import SourceError, UserError
from ondeck.files import write_atomic
from ondeck.source.git import GitSource, _clean_path, _is_local, _redact
from ondeck.source.write import SPEC_FILE, Workspace
from ondeck.spec.host import HostApp, HostFile, load_host_file
from ondeck.spec.load import environment_names, parse

HOST_FILE_ENV = "ONDECK_HOST_FILE"
HOST_FILE_NAME = "ondeck.host.yaml"
MIRRORS = "host-file"  # STATE_DIR/host-file/<hash of the repo>: the mirror read from

# (current text or None when the file is new, the file's name) -> the new text
Change = Callable[[str | None, str], str]


@dataclass(frozen=True)
class HostFileRef:
    """A host file: `path` on this host (repo None), or `path` inside git repo `repo`."""

    repo: str | None
    path: str

    @property
    def shown(self) -> str:
        """How messages name it: the path, or `REPO#PATH` (credentials masked)."""
        return self.path if self.repo is None else f"{_redact(self.repo)}#{self.path}"


@dataclass(frozen=True)
class HostFileRead:
    """The host file as read: its apps, and the commit it was read at (None: a plain file)."""

    host: HostFile
    revision: str | None
    ref: HostFileRef


@dataclass(frozen=True)
class Edited:
    """What an edit did: the commit (None for a plain file), whether it was pushed."""

    ref: HostFileRef
    sha: str | None
    pushed: bool
    message: str


def parse_ref(text: str) -> HostFileRef:
    """`REPO#PATH` (when no file is named so) as a repo and a path in it; else a plain path."""
    if "#" in text and not os.path.lexists(os.path.expanduser(text)):
        repo, _, path = text.rpartition("#")
        if not repo or not path.strip("/"):
            raise UserError(
                f"{_redact(text)!r}: write REPO#PATH, e.g. /srv/git/hosts.git#web1/ondeck.host.yaml"
            )
        repo = str(Path(repo).expanduser().resolve()) if _is_local(repo) else repo
        return HostFileRef(repo, _clean_path(path))
    return HostFileRef(None, str(Path(text).expanduser().absolute()))


def locate(
    option: str | None, state_dir: Path, environ: Mapping[str, str] = os.environ
) -> HostFileRef:
    """The host file: `--host-file`, else $ONDECK_HOST_FILE, else STATE_DIR/ondeck.host.yaml."""
    chosen = option or environ.get(HOST_FILE_ENV, "").strip()
    return parse_ref(chosen) if chosen else HostFileRef(None, str(state_dir / HOST_FILE_NAME))


def default_host_file(
    state_dir: Path, environ: Mapping[str, str] = os.environ
) -> HostFileRef | None:
    """What `ondeck up` runs without REPO or --host-file: $ONDECK_HOST_FILE, else
    STATE_DIR/ondeck.host.yaml when `ondeck app add` made one; None: neither."""
    ref = locate(None, state_dir, environ)
    if ref.repo is None and not os.path.exists(ref.path) and not environ.get(HOST_FILE_ENV):
        return None
    return ref


def read_host_file(ref: str | HostFileRef, state_dir: Path) -> HostFileRead:
    """The host file's apps now: a plain file as it is, `REPO#PATH` fetched to its head.

    A missing or invalid file is a `UserError` (`SpecError` with FILE:LINE:COL);
    a repo that cannot be fetched a `SourceError`.
    """
    found = parse_ref(ref) if isinstance(ref, str) else ref
    text, revision = _read_raw(found, state_dir)
    return HostFileRead(load_host_file(text, found.shown), revision, found)


def _read_raw(ref: HostFileRef, state_dir: Path) -> tuple[str | bytes, str | None]:
    """The host file's bytes and the commit they were read at (None: a plain file)."""
    if ref.repo is None:
        text = read_plain(ref)
        if text is None:
            raise UserError(f"no host file at {ref.path}: `ondeck app add NAME REPO` makes one")
        return text, None
    source = GitSource(ref.repo, mirror_dir(state_dir, ref.repo))
    source.fetch()
    rev = source.resolve()
    data = source.read_file(rev, ref.path)
    if data is None:
        raise UserError(
            f"no {ref.path} at {rev[:12]} of {_redact(ref.repo)}: "
            "`ondeck app add NAME REPO --host-file REPO#PATH` makes one"
        )
    return data, rev


class HostFileWatch:
    """The host file as `ondeck up --host-file` follows it: read again only when it changed.

    A plain file is looked at (stat) at every `changed()`, which is cheap; a
    `REPO#PATH` is fetched at most every `poll` seconds (blocking: call it off
    the event loop). A read that fails raises, and the next call tries again.
    """

    def __init__(
        self,
        ref: HostFileRef,
        state_dir: Path,
        poll: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref, self.state_dir, self.poll, self._clock = ref, state_dir, poll, clock
        self._seen: object = None  # the stat of a plain file, the commit of a git one
        self._fetched_at: float | None = None

    def expire(self) -> None:
        """Fetch at the next `changed()`, however recent the last fetch (a webhook said so)."""
        self._fetched_at = None

    def load(self) -> HostFileRead:
        """The host file now, whatever was read before."""
        self._fetched_at = self._clock()
        stamp = _stamp(Path(self.ref.path)) if self.ref.repo is None else None
        text, revision = _read_raw(self.ref, self.state_dir)
        self._seen = revision if self.ref.repo is not None else stamp  # a bad file: said once
        return HostFileRead(load_host_file(text, self.ref.shown), revision, self.ref)

    def changed(self) -> HostFileRead | None:
        """The host file when it changed since the last read; None when it did not."""
        if self.ref.repo is None:
            if _stamp(Path(self.ref.path)) == self._seen:
                return None
            return self.load()
        if self._fetched_at is not None and self._clock() - self._fetched_at < self.poll:
            return None
        before = self._seen
        self._fetched_at = self._clock()
        text, revision = _read_raw(self.ref, self.state_dir)
        if revision == before:
            return None
        self._seen = revision
        return HostFileRead(load_host_file(text, self.ref.shown), revision, self.ref)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def probe_app(name: str, entry: HostApp, scratch: Path) -> None:
    """Refuse an app `ondeck up` could not run: its repo, branch and ondeck.yaml are read
    (fetched into `scratch`), its `app:` must be `name`, its `envs` defined there.

    A `SourceError` when the repo cannot be fetched, a `UserError` for the rest.
    """
    source = GitSource(entry.repo, scratch / "probe.git", entry.branch)
    source.fetch()
    rev = source.resolve()
    spec_path = "/".join(p for p in (_clean_path(entry.path), SPEC_FILE) if p)
    data = source.read_file(rev, spec_path)
    if data is None:
        raise UserError(f"no {spec_path} at {rev[:12]} of {_redact(entry.repo)}: check --path")
    doc = parse(data, spec_path)
    app = doc.data.get("app")
    if app != name:
        raise UserError(
            f"{spec_path} of {_redact(entry.repo)} says `app: {app}`: name the app {app!r} "
            f"here too (`ondeck app add {app} ...`), or change its app: to {name!r}"
        )
    known = environment_names(doc)
    missing = [env for env in entry.envs if env not in known]
    if missing:
        listed = ", ".join(known) or "none"
        raise UserError(
            f"{spec_path} of {_redact(entry.repo)} defines no environment "
            f"{', '.join(missing)} (it has: {listed})"
        )


def mirror_dir(state_dir: Path, repo: str) -> Path:
    """Where the host file's repo is mirrored in the state dir (one per repo)."""
    return state_dir / MIRRORS / hashlib.sha256(repo.encode()).hexdigest()[:16]


def read_plain(ref: HostFileRef) -> str | None:
    """The text of a plain host file; None when it does not exist yet."""
    try:
        return Path(ref.path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        raise UserError(f"{ref.path} is not UTF-8 text") from err
    except OSError as err:
        raise UserError(f"cannot read the host file {ref.path}: {err.strerror}") from err


def edit_host_file(
    ref: HostFileRef, change: Change, message: str, push: bool, author: str | None = None
) -> Edited:
    """Apply `change` to the host file: written in place, or committed (and pushed) in its repo.

    `change` raises on a refused edit; then nothing is written or committed.
    """
    if ref.repo is None:
        new = change(read_plain(ref), ref.path)
        _write_plain(Path(ref.path), new)
        return Edited(ref, None, False, message)
    directory, _, name = ref.path.rpartition("/")
    with Workspace.open(ref.repo, None, directory, filename=name) as ws:
        if ws.is_temporary and not push:
            raise UserError(
                f"{_redact(ref.repo)} is not a local checkout: add --push "
                "(an unpushed commit would be lost)"
            )
        current = ws.read() if ws.spec_path.exists() else None
        new = change(current, ref.shown)
        ws.spec_path.parent.mkdir(parents=True, exist_ok=True)
        ws.write(new)
        sha = ws.commit(message, author)
        if sha is None:
            raise SourceError(f"{ref.shown}: the edit changed nothing to commit")
        if push:
            ws.push()
            sha = ws.head()
        return Edited(ref, sha, push, message)


def _write_plain(path: Path, text: str) -> None:
    """Replace the file whole, keeping its mode; a new one is 0600 (a repo URL in it may
    carry credentials)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600
    write_atomic(path, text, mode)
