"""The write side of the git source: a working copy to commit `ondeck.yaml` changes to.

`gitops` opens a `Workspace` on the user's checkout (edited in place) or on a
remote (cloned into a temporary directory), writes the spec, commits, and
pushes, rebasing onto whatever others pushed meanwhile. `add_note` and
`push_notes` attach ondeck's records to commits. Every git call goes through
`run_git`: argv lists, checked, C locale, never a credential prompt.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ondeck.errors import SourceError, UserError
from ondeck.files import write_atomic

# Same rules as the read side for what a local path is and what a repo-relative path may be.
from ondeck.source.git import CommitInfo, _clean_path, _is_local, _redact, run_git

SPEC_FILE = "ondeck.yaml"
NOTES_REF = "refs/notes/ondeck"
FALLBACK_NAME = "ondeck"
FALLBACK_EMAIL = "ondeck@localhost"
_AUTHOR = re.compile(r"^[^<>\n]+ <[^<>\n]+>$")
_CLONE_TIMEOUT = 300.0


class Workspace:
    """A work tree with a branch to commit to and, usually, a remote to push to."""

    def __init__(
        self,
        root: Path,
        prefix: str,
        branch: str,
        remote: tuple[str, str] | None,
        temp: Path | None = None,
        filename: str = SPEC_FILE,
    ) -> None:
        self.root = root
        self.filename = filename  # the file edited: ondeck.yaml, or a host file (`ondeck app`)
        self.prefix = prefix
        self.branch = branch
        self.remote = remote  # (remote name, branch on the remote), None when nowhere to push
        self._temp = temp
        self._ident = _identity_args(root)

    # -- opening and closing --------------------------------------------------------------

    @classmethod
    def open(
        cls, target: str, branch: str | None = None, path: str = "", filename: str = SPEC_FILE
    ) -> Workspace:
        """The checkout at `target` (edited in place), or a temporary clone of a remote/bare repo.

        The file edited is `filename` in directory `path` of the repository.
        """
        root = _work_tree(target)
        if root is None:
            return cls._clone(target, branch, _clean_path(path), filename)
        # A target inside the checkout is where the spec lives, relative to its top.
        inside = Path(target).expanduser().resolve().relative_to(root.resolve())
        return cls._in_place(root, branch, _clean_path(str(inside / path)), filename)

    @classmethod
    def _in_place(
        cls, root: Path, branch: str | None, prefix: str, filename: str = SPEC_FILE
    ) -> Workspace:
        if _git(root, "status", "--porcelain", "--untracked-files=no").strip():
            raise UserError(f"{root} has uncommitted changes: commit or stash your changes first")
        current = _git(root, "branch", "--show-current").strip()
        if not current:
            raise UserError(f"{root} is on a detached HEAD: check out a branch first")
        if branch is not None and branch != current:
            raise UserError(f"{root} is on branch {current!r}, not {branch!r}: check it out first")
        return cls(root, prefix, current, _push_target(root, current), filename=filename)

    @classmethod
    def _clone(
        cls, target: str, branch: str | None, prefix: str, filename: str = SPEC_FILE
    ) -> Workspace:
        url = str(Path(target).expanduser().resolve()) if _is_local(target) else target
        temp = Path(tempfile.mkdtemp(prefix="ondeck-write-"))
        try:
            chosen = ["--branch", branch] if branch else []
            args = ["clone", "--quiet", "--no-tags", *chosen, "--", url, str(temp / "repo")]
            try:
                _git(temp, *args, timeout=_CLONE_TIMEOUT)
            except SourceError as err:
                raise SourceError(str(err).replace(url, _redact(url))) from err
            root = temp / "repo"
            current = _git(root, "branch", "--show-current").strip()
            return cls(root, prefix, current, ("origin", current), temp, filename)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def close(self) -> None:
        """Remove the temporary clone, if this workspace made one."""
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_temporary(self) -> bool:
        """True for a clone that disappears on close: its commits exist only once pushed."""
        return self._temp is not None

    # -- the spec file --------------------------------------------------------------------

    @property
    def spec_relpath(self) -> str:
        """The spec's path inside the repository, as git names it."""
        return f"{self.prefix}/{self.filename}" if self.prefix else self.filename

    @property
    def spec_path(self) -> Path:
        return self.root / self.spec_relpath

    def read(self) -> str:
        try:
            return self.spec_path.read_bytes().decode("utf-8")
        except FileNotFoundError as err:
            where = f"'{self.prefix}'" if self.prefix else "the root"
            raise UserError(f"no {self.filename} in {where} of {self.root}: check --path") from err
        except UnicodeDecodeError as err:
            raise UserError(f"{self.spec_path} is not UTF-8 text") from err

    def write(self, text: str) -> None:
        """Replace the spec atomically (temp file + rename), keeping its permissions."""
        target = self.spec_path
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
        write_atomic(target, text.encode("utf-8"), mode)

    # -- committing -----------------------------------------------------------------------

    def commit(self, message: str, author: str | None = None) -> str | None:
        """Commit the spec; None (and no commit) when it did not change."""
        _git(self.root, "add", "--", self.spec_relpath)
        if not _git(self.root, "diff", "--cached", "--name-only").strip():
            return None
        self._git("commit", "--quiet", "-m", message, *_author_args(author))
        return self.head()

    def revert(
        self,
        rev: str,
        message: str | None = None,
        *,
        check: Callable[[str], None] | None = None,
        author: str | None = None,
    ) -> str:
        """Commit the inverse of `rev` (`git revert`), returning the new head.

        `check` sees the reverted spec before the commit; if it raises, nothing is committed.
        """
        sha = self.resolve(rev)
        if len(self.parents(sha)) != 1:
            raise UserError(f"{sha[:12]} is a merge or root commit: it cannot be reverted alone")
        try:
            self._git("revert", "--no-commit", sha)
        except SourceError as err:
            conflicts = self._unmerged()
            self._git_quiet("revert", "--abort")
            raise UserError(f"cannot revert {sha[:12]}: conflict in {conflicts}") from err
        if not _git(self.root, "diff", "--cached", "--name-only").strip():
            self._git_quiet("revert", "--abort")
            raise UserError(f"reverting {sha[:12]} changes nothing: it is already undone")
        if check is not None:
            self._check_staged(check)
        subject = self.subject(sha)
        text = message or f'Revert "{subject}"'
        body = f"{text}\n\nThis reverts commit {sha}."
        self._git("commit", "--quiet", "-m", body, *_author_args(author))
        return self.head()

    def _check_staged(self, check: Callable[[str], None]) -> None:
        try:
            check(self.read())
        except BaseException:
            self._git_quiet("revert", "--abort")
            raise

    # -- pushing --------------------------------------------------------------------------

    def push(self, retries: int = 5) -> None:
        """Push the branch; when others pushed first, rebase onto theirs and try again."""
        if self.remote is None:
            raise UserError(f"no remote to push to: {self.root} has no upstream and no 'origin'")
        name, branch = self.remote
        for _attempt in range(retries + 1):
            try:
                _git(self.root, "push", "--quiet", name, f"HEAD:refs/heads/{branch}")
                return
            except SourceError as err:
                if not self._remote_moved(name, branch, err):
                    raise
            self._rebase(f"refs/remotes/{name}/{branch}")
        raise SourceError(
            f"push to {name}/{branch} still rejected after {retries} rebases: "
            "others keep pushing; try again"
        )

    def _remote_moved(self, name: str, branch: str, push_error: SourceError) -> bool:
        """Fetch the remote branch: True when it gained commits we lack (non-fast-forward)."""
        tracking = f"refs/remotes/{name}/{branch}"
        try:
            _git(self.root, "fetch", "--quiet", name, f"+refs/heads/{branch}:{tracking}")
        except SourceError:
            raise push_error from None
        return not self.is_ancestor(tracking, "HEAD")

    def _rebase(self, onto: str) -> None:
        try:
            self._git("rebase", "--quiet", onto)
        except SourceError as err:
            conflicts = self._unmerged()
            self._git_quiet("rebase", "--abort")
            raise UserError(
                f"others changed {conflicts} on {onto.removeprefix('refs/remotes/')} "
                "in a conflicting way: pull, then redo the change"
            ) from err

    # -- reading history ------------------------------------------------------------------

    def head(self) -> str:
        return self.resolve("HEAD")

    def resolve(self, rev: str) -> str:
        """The full sha of commit `rev`; `UserError` when there is no such commit."""
        found = _lookup(self.root, f"{rev}^{{commit}}")
        if found is None:
            raise UserError(f"unknown revision {rev!r} in {self.root}")
        return found[0]

    def code_sha(self, ref: str, repo: str | None) -> tuple[str, bool]:
        """(full sha, is a branch) of what `ref` names now: in `repo` (an app repository),
        else in this repository as its remote has it (what ondeck fetches), else here.

        A tag wins over a branch, as when ondeck resolves a pin.
        """
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            return ref, False
        where = repo or (self.remote[0] if self.remote else ".")
        shown = _redact(repo) if repo else "this repository"
        try:
            # `REF^{}` too: an annotated tag's line names the tag object, its peeled one the commit
            args = ("ls-remote", "--", where, ref, f"{ref}^{{}}")
            out = _git(self.root, *args, timeout=_CLONE_TIMEOUT)
        except SourceError as err:
            raise UserError(f"cannot read the refs of {shown}: {err}") from err
        pairs = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        refs = {name: sha for sha, name in pairs}
        bare = ref.removeprefix("refs/tags/").removeprefix("refs/heads/")
        for name in (f"refs/tags/{bare}^{{}}", f"refs/tags/{bare}", f"refs/heads/{bare}"):
            if name in refs and (ref == bare or ref == name.removesuffix("^{}")):
                return refs[name], name.startswith("refs/heads/")
        if repo is None and re.fullmatch(r"[0-9a-f]{7,39}", ref):
            return self.resolve(ref), False  # an abbreviated sha of this repository
        raise UserError(
            f"{ref!r} names no branch or tag in {shown}"
            + ("" if repo is None else " (an abbreviated sha: write it in full)")
        )

    def code_commit(self, rev: str, path: str) -> str:
        """The newest commit up to `rev` that changed the code under `path` (the spec file
        at its root aside): the same code as `rev`, but a spec-only commit does not move it,
        so promoting twice pins the same sha. `rev` itself when this checkout lacks it."""
        if _lookup(self.root, f"{rev}^{{commit}}") is None:
            return rev
        where = _clean_path(path)
        spec = f"{where}/{SPEC_FILE}" if where else SPEC_FILE
        found = self._git(
            "log", "-1", "--format=%H", rev, "--", f":(top){where}", f":(top,exclude){spec}"
        ).strip()
        return found or rev

    def parents(self, rev: str) -> list[str]:
        return _git(self.root, "rev-list", "--parents", "-n", "1", self.resolve(rev)).split()[1:]

    def subject(self, rev: str) -> str:
        return _git(self.root, "show", "-s", "--no-show-signature", "--format=%s", rev).strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when `older` is `newer` or in its history."""
        base = _git(self.root, "merge-base", "--all", self.resolve(older), self.resolve(newer))
        return self.resolve(older) in base.split()

    def show(self, rev: str, path: str) -> str | None:
        """The text of repo-relative `path` at `rev`, or None when there is no such file."""
        found = _lookup(self.root, f"{self.resolve(rev)}:{_clean_path(path)}")
        if found is None or found[1] != "blob":
            return None
        return _git(self.root, "cat-file", "blob", found[0])

    def log(self, n: int, path: str | None = None) -> list[CommitInfo]:
        """The last `n` commits of HEAD (touching repo-relative `path`, when given), newest first."""
        fmt = "--format=%H%x00%an <%ae>%x00%ct%x00%s%x00"
        only = ["--", _clean_path(path)] if path is not None else []
        out = _git(self.root, "log", "--no-show-signature", f"-n{n}", fmt, "HEAD", *only)
        fields = out.split("\0")
        return [
            CommitInfo(sha.strip(), author, subject, float(when))
            for sha, author, when, subject in zip(*[iter(fields)] * 4, strict=False)
        ]

    # -- plumbing -------------------------------------------------------------------------

    def _unmerged(self) -> str:
        names = _git(self.root, "diff", "--name-only", "--diff-filter=U").split()
        return ", ".join(names) or self.spec_relpath

    def _git(self, *args: str) -> str:
        """git with a committer identity (ours when the user's config has none)."""
        return _git(self.root, *args, ident=self._ident)

    def _git_quiet(self, *args: str) -> None:
        """Clean-up after a failure: its own error would hide the one that matters."""
        try:
            _git(self.root, *args, ident=self._ident)
        except SourceError:
            return


# --- notes ---------------------------------------------------------------------------------


def add_note(repo: Path, rev: str, text: str, ref: str = NOTES_REF) -> None:
    """Append a line to the note of `rev` under `ref` (created when absent)."""
    _git(repo, "notes", "--ref", ref, "append", "-m", text, rev, ident=_identity_args(repo))


def push_notes(repo: Path, remote: str = "origin", ref: str = NOTES_REF) -> bool:
    """Merge the remote's notes into ours and push them; False when the remote refuses."""
    if not _git(repo, "for-each-ref", "--format=%(objectname)", ref).strip():
        return True  # no notes here: nothing the remote lacks
    try:
        if _git(repo, "ls-remote", remote, ref).strip():
            _merge_remote_notes(repo, remote, ref)
        _git(repo, "push", "--quiet", remote, f"{ref}:{ref}")
    except SourceError:
        return False
    return True


def _merge_remote_notes(repo: Path, remote: str, ref: str) -> None:
    incoming = f"{ref}-incoming"
    _git(repo, "fetch", "--quiet", remote, f"+{ref}:{incoming}")
    try:
        ident = _identity_args(repo)
        _git(
            repo,
            "notes",
            "--ref",
            ref,
            "merge",
            "--quiet",
            "-s",
            "cat_sort_uniq",
            incoming,
            ident=ident,
        )
    finally:
        _git(repo, "update-ref", "-d", incoming)


# --- git plumbing --------------------------------------------------------------------------


def _git(cwd: Path, *args: str, ident: tuple[str, ...] = (), timeout: float = 60.0) -> str:
    """`git ARGS` in `cwd`; `ident` are `-c user.*` options placed before the command."""
    try:
        return run_git([*ident, *args], cwd=cwd, timeout=timeout).decode("utf-8", "replace")
    except SourceError as err:
        if ident:  # run_git names the first argument: name the command instead of "-c"
            raise SourceError(str(err).replace("git -c failed", f"git {args[0]} failed")) from err
        raise


def _lookup(root: Path, spec: str) -> tuple[str, str] | None:
    """(object id, type) of a revision expression, or None when it names nothing."""
    if "\n" in spec:
        return None
    out = run_git(["cat-file", "--batch-check"], cwd=root, input=spec.encode() + b"\n")
    fields = out.decode("utf-8", "replace").split()
    return (fields[0], fields[1]) if len(fields) == 3 else None


def _identity_args(repo: Path) -> tuple[str, ...]:
    """Nothing when git knows who commits; else ondeck's own identity."""
    try:
        _git(repo, "var", "GIT_COMMITTER_IDENT")
    except SourceError:
        return ("-c", f"user.name={FALLBACK_NAME}", "-c", f"user.email={FALLBACK_EMAIL}")
    return ()


def _author_args(author: str | None) -> list[str]:
    if author is None:
        return []
    if not _AUTHOR.match(author.strip()):
        raise UserError(f"author must be 'Name <email>', not {author!r}")
    return [f"--author={author.strip()}"]


def checkout_root(target: str) -> Path | None:
    """The resolved top of the checkout commits to `target` land in; None for a URL or bare repo."""
    root = _work_tree(target)
    return root.resolve() if root is not None else None


def _work_tree(target: str) -> Path | None:
    """The top of the non-bare checkout `target`; None for a URL or a bare repository."""
    if not _is_local(target):
        return None
    path = Path(target).expanduser()
    if not path.is_dir():
        raise UserError(f"{target} is not a directory (nor a git URL)")
    try:
        bare = _git(path, "rev-parse", "--is-bare-repository").strip()
    except SourceError as err:
        raise UserError(f"{target} is not a git repository") from err
    if bare == "true":
        return None
    return Path(_git(path, "rev-parse", "--show-toplevel").strip())


def _push_target(root: Path, branch: str) -> tuple[str, str] | None:
    """Where `branch` pushes: its upstream, else the same branch on 'origin' (or the only remote)."""
    fmt = "--format=%(upstream:remotename)%00%(upstream:remoteref)"
    upstream = _git(root, "for-each-ref", fmt, f"refs/heads/{branch}").strip()
    name, _, ref = upstream.partition("\0")
    if name and name != "." and ref.startswith("refs/heads/"):
        return name, ref.removeprefix("refs/heads/")
    remotes = _git(root, "remote").split()
    if "origin" in remotes:
        return "origin", branch
    return (remotes[0], branch) if len(remotes) == 1 else None


__all__ = ["NOTES_REF", "Workspace", "add_note", "push_notes"]
