"""The git source: a bare mirror of the watched repository, and reads from it.

The controller calls `fetch()` on every poll or webhook, `resolve()` to learn
the desired revision, then reads files, tree ids and exported trees at that
revision. Every failure of git surfaces as a `SourceError` (retry later).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ondeck.errors import SourceError, UserError

# Heads, tags and notes are mirrored exactly: forced, and pruned when deleted.
_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", "+refs/notes/*:refs/notes/*")

# Exports and reads are the blobs as committed: no eol conversion, no filters
# (LFS smudge), no export-ignore/export-subst; info/attributes wins over the tree.
_RAW_ATTRIBUTES = "* -text -filter -ident -export-ignore -export-subst -working-tree-encoding\n"

# Variables a git hook or wrapper may leave behind that would redirect our calls.
_LEAKY_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)

_STDERR_LINES = 10


@dataclass(frozen=True)
class CommitInfo:
    """Who committed a revision, when, and why (subject line only)."""

    sha: str
    author: str
    message: str
    committed_at: float


@dataclass(frozen=True)
class _Result:
    code: int
    stdout: bytes
    stderr: str


def _git_env() -> dict[str, str]:
    """The environment of every git call: C locale, never a credential prompt."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def _call(
    args: list[str],
    cwd: Path | None,
    timeout: float,
    input: bytes | None,
    stdout: IO[bytes] | None = None,
) -> _Result:
    """Run git; only a timeout or a missing git raises, the exit code is returned."""
    try:
        proc = subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            env=_git_env(),
            start_new_session=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise UserError("git is not installed (or not on PATH); ondeck needs it") from exc
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        raise SourceError(f"git {args[0]} timed out after {timeout:g}s") from exc
    except BaseException:
        _kill_group(proc)
        raise
    return _Result(proc.returncode, out or b"", _trim(err))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # git spawns ssh/https helpers that hold our pipes open: kill the whole session.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _trim(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-_STDERR_LINES:])


def run_git(
    args: list[str], cwd: Path | None = None, timeout: float = 60.0, input: bytes | None = None
) -> bytes:
    """Run `git ARGS` and return its stdout; a non-zero exit raises `SourceError`."""
    result = _call(args, cwd, timeout, input)
    if result.code != 0:
        raise SourceError(f"git {args[0]} failed: {result.stderr}")
    return result.stdout


def _is_local(url: str) -> bool:
    """True for a filesystem path, false for URLs and scp-like `host:path` (git's rule)."""
    if "://" in url:
        return False
    colon, slash = url.find(":"), url.find("/")
    return colon == -1 or (slash != -1 and slash < colon)


def _redact(url: str) -> str:
    """The URL without a password or token, for messages and logs."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1***@", url, flags=re.IGNORECASE)


def _clean_path(path: str) -> str:
    """A repo-relative POSIX path: "" for the root, no `..`, no leading `/` or `./`."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if ".." in parts or "\n" in path:
        raise UserError(f"invalid path in repository: {path!r}")
    return "/".join(parts)


class GitSource:
    """A watched repository, mirrored into `mirror_dir` and read from there."""

    def __init__(
        self, url: str, mirror_dir: Path, branch: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = str(Path(url).expanduser().resolve()) if _is_local(url) else url
        self.mirror_dir = mirror_dir
        self.branch = branch
        self.timeout = timeout
        if branch is not None:
            self._check_branch(branch)

    @property
    def _shown_url(self) -> str:
        return _redact(self.url)

    def _check_branch(self, branch: str) -> None:
        if _call(["check-ref-format", f"refs/heads/{branch}"], None, self.timeout, None).code:
            raise UserError(f"invalid branch name: {branch!r}")

    # -- fetching ---------------------------------------------------------------

    def fetch(self) -> None:
        """Bring the mirror up to date with the remote; on failure it stays as it was."""
        if (self.mirror_dir / "HEAD").is_file():
            self._fetch_into(self.mirror_dir)
            return
        if self.mirror_dir.exists() and any(self.mirror_dir.iterdir()):
            raise UserError(f"{self.mirror_dir} exists and is not a git mirror; remove it")
        self._first_fetch()

    def _first_fetch(self) -> None:
        # Built beside its final place and renamed: a crash never leaves half a mirror.
        self.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{self.mirror_dir.name}.", suffix=".tmp", dir=self.mirror_dir.parent
            )
        )
        try:
            run_git(["init", "--quiet", "--bare", str(tmp)], timeout=self.timeout)
            self._fetch_into(tmp)
            tmp.rename(self.mirror_dir)  # replaces an empty directory, checked by fetch()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fetch_into(self, git_dir: Path) -> None:
        attributes = git_dir / "info" / "attributes"
        if not attributes.is_file() or attributes.read_text() != _RAW_ATTRIBUTES:
            attributes.parent.mkdir(exist_ok=True)
            attributes.write_text(_RAW_ATTRIBUTES)
        # --atomic: either every ref moves or none does, so a failure keeps the old state.
        self._git(
            git_dir,
            "fetch",
            "--quiet",
            "--prune",
            "--atomic",
            "--no-write-fetch-head",
            "--",
            self.url,
            *_REFSPECS,
        )
        if self.branch is None:
            self._follow_remote_head(git_dir)

    def _follow_remote_head(self, git_dir: Path) -> None:
        """Point the mirror's HEAD where the remote's HEAD points (its default branch)."""
        out = self._git(git_dir, "ls-remote", "--symref", "--", self.url, "HEAD").stdout
        for line in out.decode("utf-8", "replace").splitlines():
            target, _, name = line.partition("\t")
            if name == "HEAD" and target.startswith("ref: refs/heads/"):
                self._git(git_dir, "symbolic-ref", "HEAD", target.removeprefix("ref: "))
                return

    # -- reading ----------------------------------------------------------------

    def resolve(self) -> str:
        """The full sha at the head of the watched branch, as of the last fetch."""
        branch = self.branch or self._default_branch()
        found = self._lookup(f"refs/heads/{branch}^{{commit}}")
        if found is None:
            raise SourceError(f"branch '{branch}' not found in {self._shown_url}")
        return found[0]

    def resolve_ref(self, ref: str) -> tuple[str, bool] | None:
        """(full commit sha, is a branch) that `ref` names in the mirror, or None.

        A full sha first, then a tag, then a branch (`refs/heads/...` or
        `refs/tags/...` spelled out choose), then an abbreviated sha of 7+ digits.
        """
        if re.fullmatch(r"[0-9a-f]{40}", ref):
            found = self._lookup(f"{ref}^{{commit}}")
            return (found[0], False) if found else None
        for full, follows in (
            (ref, ref.startswith("refs/heads/")),
            (f"refs/tags/{ref}", False),
            (f"refs/heads/{ref}", True),
        ):
            if full.startswith("refs/") and self._ref_exists(full):
                found = self._lookup(f"{full}^{{commit}}")
                return (found[0], follows) if found else None
        if re.fullmatch(r"[0-9a-f]{7,39}", ref):
            found = self._lookup(f"{ref}^{{commit}}")
            return (found[0], False) if found else None
        return None

    def code_commit(self, sha: str, path: str, spec_file: str) -> str:
        """The newest commit up to `sha` that changed `path` (its `spec_file` aside): the
        same code as `sha`, unmoved by commits that only edit the spec."""
        clean = _clean_path(path)
        spec = f"{clean}/{spec_file}" if clean else spec_file
        args = ("log", "-1", "--format=%H", sha, "--", f":(top){clean}", f":(top,exclude){spec}")
        found = self._mirror_git(*args).stdout.decode().strip()
        return found or sha

    def _ref_exists(self, full: str) -> bool:
        args = ("show-ref", "--verify", "--quiet", full)
        return self._mirror_git(*args, ok=(0, 1)).code == 0

    def _default_branch(self) -> str:
        ref = self._mirror_git("symbolic-ref", "--quiet", "HEAD").stdout.decode().strip()
        return ref.removeprefix("refs/heads/")

    def commit_info(self, rev: str) -> CommitInfo:
        sha = self._commit(rev)
        fmt = "--format=%H%x00%an <%ae>%x00%ct%x00%B"
        out = self._mirror_git("show", "-s", "--no-show-signature", fmt, sha).stdout
        full, author, when, body = out.decode("utf-8", "replace").split("\0", 3)
        subject = body.strip().split("\n", 1)[0].strip()
        return CommitInfo(sha=full, author=author, message=subject, committed_at=float(when))

    def read_file(self, rev: str, path: str) -> bytes | None:
        """The bytes of file `path` at `rev`, or None when there is no such file."""
        found = self._lookup(f"{self._commit(rev)}:{_clean_path(path)}")
        if found is None:
            return None
        oid, kind = found
        if kind != "blob":
            raise UserError(f"{path} is a {kind}, not a file, at {rev}")
        return self._mirror_git("cat-file", "blob", oid).stdout

    def tree_id(self, rev: str, path: str = "", exclude: frozenset[str] = frozenset()) -> str:
        """A content hash of directory `path` at `rev`, blind to top-level `exclude` names."""
        out = self._mirror_git("ls-tree", "-z", self._tree(rev, path)).stdout
        entries = [e for e in out.split(b"\0") if e]
        kept = sorted(
            e
            for e in entries
            if e.split(b"\t", 1)[1].decode("utf-8", "surrogateescape") not in exclude
        )
        return hashlib.sha256(b"\0".join(kept)).hexdigest()

    def export(self, rev: str, path: str, dest: Path) -> None:
        """Materialize directory `path` at `rev` as the new directory `dest`, all or nothing."""
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "export destination exists", str(dest))
        tree = self._tree(rev, path)
        self._refuse_submodules(rev, path, tree)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            archive = tmp / "tree.tar"
            with archive.open("wb") as out:
                self._mirror_git("archive", "--format=tar", tree, stdout=out)
            self._extract(archive, tmp / "tree", f"{path or '/'} at {rev}")
            (tmp / "tree").rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _refuse_submodules(self, rev: str, path: str, tree: str) -> None:
        """A submodule would be exported as an empty directory (git archive skips it): refuse.

        ondeck does not fetch submodules: they name other repositories, with
        their own credentials, at commits this repository's history does not hold.
        """
        out = self._mirror_git("ls-tree", "-r", "-z", tree).stdout
        for entry in filter(None, out.split(b"\0")):
            meta, name = entry.split(b"\t", 1)
            mode, _, oid = meta.decode().split(" ")
            if mode == "160000":
                where = "/".join(p for p in (_clean_path(path), name.decode(errors="replace")) if p)
                raise UserError(
                    f"{where} is a git submodule (at {oid[:12]}) in {rev[:12]}: ondeck does not "
                    "fetch submodules, and would deploy it as an empty directory; vendor its "
                    "files into this repository, or fetch them in the service's build step"
                )

    @staticmethod
    def _extract(archive: Path, into: Path, what: str) -> None:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(into, filter="data")
        except tarfile.FilterError as exc:
            raise UserError(f"cannot export {what}: {exc}") from exc
        except tarfile.TarError as exc:
            raise SourceError(f"cannot export {what}: {exc}") from exc

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when `older` is `newer` or in its history (a fast-forward)."""
        args = ("merge-base", "--is-ancestor", self._commit(older), self._commit(newer))
        return self._mirror_git(*args, ok=(0, 1)).code == 0

    # -- plumbing ---------------------------------------------------------------

    def _commit(self, rev: str) -> str:
        found = self._lookup(f"{rev}^{{commit}}")
        if found is None:
            raise SourceError(f"revision {rev!r} not found in the mirror of {self._shown_url}")
        return found[0]

    def _tree(self, rev: str, path: str) -> str:
        clean = _clean_path(path)
        sha = self._commit(rev)
        found = self._lookup(f"{sha}:{clean}" if clean else f"{sha}^{{tree}}")
        if found is None or found[1] != "tree":
            raise UserError(f"directory '{clean}' not found at {sha}")
        return found[0]

    def _lookup(self, spec: str) -> tuple[str, str] | None:
        """(object id, type) of a revision expression, or None if it names nothing."""
        if "\n" in spec:
            return None
        out = self._mirror_git("cat-file", "--batch-check", input=spec.encode() + b"\n").stdout
        fields = out.decode("utf-8", "replace").split()
        # "<oid> <type> <size>" when found; "<spec> missing" / "ambiguous" otherwise.
        return (fields[0], fields[1]) if len(fields) == 3 else None

    def _mirror_git(
        self,
        *args: str,
        ok: tuple[int, ...] = (0,),
        input: bytes | None = None,
        stdout: IO[bytes] | None = None,
    ) -> _Result:
        if not (self.mirror_dir / "HEAD").is_file():
            raise SourceError(f"no mirror of {self._shown_url} yet: fetch() first")
        return self._git(self.mirror_dir, *args, ok=ok, input=input, stdout=stdout)

    def _git(
        self,
        git_dir: Path,
        *args: str,
        ok: tuple[int, ...] = (0,),
        input: bytes | None = None,
        stdout: IO[bytes] | None = None,
    ) -> _Result:
        argv = ["--git-dir", str(git_dir), *args]
        try:
            result = _call(argv, None, self.timeout, input, stdout)
        except SourceError as exc:
            raise SourceError(f"{exc} for {self._shown_url}") from exc
        if result.code not in ok:
            stderr = result.stderr.replace(self.url, self._shown_url)
            raise SourceError(f"git {args[0]} failed for {self._shown_url}: {stderr}")
        return result
