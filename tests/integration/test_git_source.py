"""GitSource against real repositories built in tmp_path with the real git."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondeck.errors import SourceError, UserError
from ondeck.source import CommitInfo, GitSource


class Remote:
    """A non-bare repository standing in for the watched remote."""

    def __init__(self, path: Path, branch: str = "main") -> None:
        self.path = path
        self._clock = 1_700_000_000
        self.git("init", "--quiet", "-b", branch, str(path), cwd=path.parent)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = {
            **os.environ,
            "GIT_COMMITTER_DATE": f"{self._clock} +0000",
            "GIT_AUTHOR_DATE": f"{self._clock} +0000",
        }
        out = subprocess.run(
            ["git", *args], cwd=cwd or self.path, env=env, check=True, capture_output=True
        )
        return out.stdout.decode().strip()

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        """Write (or delete, for None) files and commit them all; returns the sha."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self._clock += 60
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Isolate from the host's git config; give commits a fixed identity."""
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Ada Lovelace")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "ada@example.org")
    yield


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    repo = Remote(tmp_path / "remote")
    repo.commit(
        "first",
        {"ondeck.yaml": "app: shop\n", "app.py": "print('v1')\n", "conf/site.ini": "[site]\n"},
    )
    return repo


def source_for(remote: Remote, tmp_path: Path, branch: str | None = None) -> GitSource:
    return GitSource(str(remote.path), tmp_path / "state" / "mirror.git", branch=branch)


class TestFetch:
    def test_first_fetch_creates_the_mirror(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        assert (tmp_path / "state" / "mirror.git" / "HEAD").is_file()
        assert src.resolve() == remote.git("rev-parse", "HEAD")
        assert [p.name for p in (tmp_path / "state").iterdir()] == ["mirror.git"]

    def test_relative_local_path_is_resolved(
        self, remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        src = GitSource("remote", tmp_path / "mirror.git")
        monkeypatch.chdir("/")
        src.fetch()
        assert src.url == str(remote.path)
        assert src.resolve() == remote.git("rev-parse", "HEAD")

    def test_new_commit_is_picked_up_by_next_fetch(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        new = remote.commit("second", {"app.py": "print('v2')\n"})
        assert src.resolve() != new
        src.fetch()
        assert src.resolve() == new

    def test_force_push_is_reflected(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        before = remote.commit("to be rewritten", {"app.py": "print('bad')\n"})
        src.fetch()
        remote.git("reset", "--quiet", "--hard", "HEAD~1")
        rewritten = remote.commit("rewritten", {"app.py": "print('good')\n"})
        src.fetch()
        assert src.resolve() == rewritten
        assert not src.is_ancestor(before, rewritten)

    def test_deleted_branch_fails_but_old_commits_stay_readable(
        self, remote: Remote, tmp_path: Path
    ) -> None:
        remote.git("checkout", "--quiet", "-b", "feature")
        old = remote.commit("feature work", {"app.py": "print('feature')\n"})
        src = source_for(remote, tmp_path, branch="feature")
        src.fetch()
        assert src.resolve() == old
        remote.git("checkout", "--quiet", "main")
        remote.git("branch", "--quiet", "-D", "feature")
        src.fetch()
        with pytest.raises(SourceError, match=f"branch 'feature' not found in {remote.path}"):
            src.resolve()
        assert src.commit_info(old).message == "feature work"
        assert src.read_file(old, "app.py") == b"print('feature')\n"

    def test_unreachable_remote_is_a_readable_source_error(self, tmp_path: Path) -> None:
        missing = tmp_path / "no-such-repo"
        src = GitSource(str(missing), tmp_path / "mirror.git")
        with pytest.raises(SourceError) as err:
            src.fetch()
        text = str(err.value)
        assert str(missing) in text
        assert "does not appear to be a git repository" in text
        assert not (tmp_path / "mirror.git").exists()
        assert [p.name for p in tmp_path.iterdir()] == ["gitconfig"]

    def test_failed_fetch_keeps_the_previous_mirror(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        head = src.resolve()
        remote.path.rename(tmp_path / "moved-away")
        with pytest.raises(SourceError, match="fetch failed"):
            src.fetch()
        assert src.resolve() == head
        assert src.read_file(head, "app.py") == b"print('v1')\n"

    def test_timeout_is_a_source_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A stand-in ssh that never answers: the only way to make a remote hang offline.
        monkeypatch.setenv("GIT_SSH_COMMAND", "sleep 60; :")
        src = GitSource("ssh://git.example.invalid/repo.git", tmp_path / "m.git", timeout=0.5)
        with pytest.raises(SourceError, match=r"timed out after 0\.5s for ssh://"):
            src.fetch()
        assert not (tmp_path / "m.git").exists()

    def test_notes_are_mirrored(self, remote: Remote, tmp_path: Path) -> None:
        remote.git("notes", "add", "-m", "deployed", "HEAD")
        src = source_for(remote, tmp_path)
        src.fetch()
        mirror = str(tmp_path / "state" / "mirror.git")
        notes = remote.git("--git-dir", mirror, "notes", "show", src.resolve())
        assert notes == "deployed"

    def test_reads_before_any_fetch_fail_clearly(self, remote: Remote, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match="fetch"):
            source_for(remote, tmp_path).resolve()


class TestDefaultBranch:
    def test_follows_the_remote_head(self, tmp_path: Path) -> None:
        remote = Remote(tmp_path / "remote", branch="trunk")
        trunk = remote.commit("on trunk", {"app.py": "t\n"})
        remote.git("checkout", "--quiet", "-b", "main")
        remote.commit("on main", {"app.py": "m\n"})
        remote.git("checkout", "--quiet", "trunk")
        src = source_for(remote, tmp_path)
        src.fetch()
        assert src.resolve() == trunk

    def test_a_changed_remote_head_is_followed(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        remote.git("checkout", "--quiet", "-b", "trunk")
        trunk = remote.commit("on trunk", {"app.py": "t\n"})
        src.fetch()
        assert src.resolve() == trunk

    def test_explicit_branch_wins(self, remote: Remote, tmp_path: Path) -> None:
        main = remote.git("rev-parse", "HEAD")
        remote.git("checkout", "--quiet", "-b", "trunk")
        remote.commit("on trunk", {"app.py": "t\n"})
        src = source_for(remote, tmp_path, branch="main")
        src.fetch()
        assert src.resolve() == main


class TestRead:
    @pytest.fixture
    def src(self, remote: Remote, tmp_path: Path) -> GitSource:
        source = source_for(remote, tmp_path)
        source.fetch()
        return source

    def test_read_file(self, src: GitSource) -> None:
        head = src.resolve()
        assert src.read_file(head, "ondeck.yaml") == b"app: shop\n"
        assert src.read_file(head, "conf/site.ini") == b"[site]\n"
        assert src.read_file(head, "./conf/site.ini") == b"[site]\n"
        assert src.read_file(head, "nope.yaml") is None
        assert src.read_file(head, "conf/nope.ini") is None

    def test_read_file_sees_each_revision(self, remote: Remote, src: GitSource) -> None:
        old = src.resolve()
        remote.commit("drop conf", {"conf/site.ini": None})
        src.fetch()
        assert src.read_file(src.resolve(), "conf/site.ini") is None
        assert src.read_file(old, "conf/site.ini") == b"[site]\n"

    def test_unknown_revision_is_a_source_error(self, src: GitSource) -> None:
        with pytest.raises(SourceError, match="revision"):
            src.read_file("0" * 40, "app.py")
        with pytest.raises(SourceError, match="revision"):
            src.commit_info("--output=/tmp/x")

    def test_commit_info(self, remote: Remote, src: GitSource) -> None:
        sha = remote.commit("Ship v2\n\nLonger body.", {"app.py": "print('v2')\n"})
        src.fetch()
        info = src.commit_info(sha[:10])
        assert info == CommitInfo(
            sha=sha,
            author="Ada Lovelace <ada@example.org>",
            message="Ship v2",
            committed_at=1_700_000_120.0,
        )

    def test_is_ancestor(self, remote: Remote, src: GitSource) -> None:
        old = src.resolve()
        new = remote.commit("second", {"app.py": "v2\n"})
        src.fetch()
        assert src.is_ancestor(old, new)
        assert src.is_ancestor(new, new)
        assert not src.is_ancestor(new, old)


class TestTreeId:
    def test_ignores_excluded_names_only(self, remote: Remote, tmp_path: Path) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        v1 = src.resolve()
        v2 = remote.commit("scale", {"ondeck.yaml": "app: shop\nreplicas: 3\n"})
        v3 = remote.commit("code", {"app.py": "print('v2')\n"})
        src.fetch()
        skip = frozenset({"ondeck.yaml"})
        assert src.tree_id(v1, exclude=skip) == src.tree_id(v2, exclude=skip)
        assert src.tree_id(v1) != src.tree_id(v2)
        assert src.tree_id(v2, exclude=skip) != src.tree_id(v3, exclude=skip)

    def test_subdirectory_and_same_content_across_commits(
        self, remote: Remote, tmp_path: Path
    ) -> None:
        src = source_for(remote, tmp_path)
        src.fetch()
        v1 = src.resolve()
        v2 = remote.commit("code", {"app.py": "print('v2')\n"})
        src.fetch()
        assert src.tree_id(v1, "conf") == src.tree_id(v2, "conf/")
        assert src.tree_id(v1, "conf") != src.tree_id(v1)
        assert len(src.tree_id(v1)) == 64


class TestExport:
    @pytest.fixture
    def src(self, remote: Remote, tmp_path: Path) -> GitSource:
        (remote.path / "bin").mkdir()
        (remote.path / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (remote.path / "bin" / "run.sh").chmod(0o755)
        (remote.path / "current.ini").symlink_to("conf/site.ini")
        (remote.path / ".gitattributes").write_text("app.py export-ignore\n")
        remote.commit("tools", {})
        source = source_for(remote, tmp_path)
        source.fetch()
        return source

    def test_exact_content_modes_and_symlinks(self, src: GitSource, tmp_path: Path) -> None:
        dest = tmp_path / "releases" / "r1"
        src.export(src.resolve(), "", dest)
        assert tree_of(dest) == {
            ".gitattributes": "app.py export-ignore\n",
            "app.py": "print('v1')\n",
            "bin/run.sh": "#!/bin/sh\necho hi\n",
            "conf/site.ini": "[site]\n",
            "current.ini": "-> conf/site.ini",
            "ondeck.yaml": "app: shop\n",
        }
        assert os.access(dest / "bin" / "run.sh", os.X_OK)
        assert not os.access(dest / "app.py", os.X_OK)
        assert (dest / "current.ini").read_text() == "[site]\n"
        assert [p.name for p in dest.parent.iterdir()] == ["r1"]

    def test_subdirectory(self, src: GitSource, tmp_path: Path) -> None:
        dest = tmp_path / "conf-only"
        src.export(src.resolve(), "conf", dest)
        assert tree_of(dest) == {"site.ini": "[site]\n"}

    def test_existing_dest_raises_and_is_untouched(self, src: GitSource, tmp_path: Path) -> None:
        dest = tmp_path / "taken"
        dest.mkdir()
        with pytest.raises(FileExistsError):
            src.export(src.resolve(), "", dest)
        assert list(dest.iterdir()) == []

    def test_unknown_revision_leaves_nothing(self, src: GitSource, tmp_path: Path) -> None:
        dest = tmp_path / "out" / "r1"
        with pytest.raises(SourceError):
            src.export("f" * 40, "", dest)
        assert not dest.exists()

    def test_unsafe_symlink_fails_midway_and_leaves_nothing(
        self, remote: Remote, src: GitSource, tmp_path: Path
    ) -> None:
        (remote.path / "zz-escape").symlink_to("../../etc/passwd")
        remote.commit("escape", {})
        src.fetch()
        dest = tmp_path / "out" / "r1"
        with pytest.raises(UserError, match="cannot export"):
            src.export(src.resolve(), "", dest)
        assert list((tmp_path / "out").iterdir()) == []

    def test_missing_directory_is_a_user_error(self, src: GitSource, tmp_path: Path) -> None:
        with pytest.raises(UserError, match="directory 'nope' not found"):
            src.export(src.resolve(), "nope", tmp_path / "r1")
        assert not (tmp_path / "r1").exists()


def tree_of(root: Path) -> dict[str, str]:
    """Every file under root as {relative path: text}; symlinks as '-> target'."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_text()
    return found


def test_a_submodule_is_refused_with_a_message_not_exported_empty(
    remote: Remote, tmp_path: Path
) -> None:
    lib = Remote(tmp_path / "lib")
    lib.commit("lib", {"lib.py": "VALUE = 1\n"})
    remote.git(
        "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib.path), "vendor/lib"
    )
    sha = remote.commit("vendor a submodule", {})
    src = source_for(remote, tmp_path)
    src.fetch()
    with pytest.raises(UserError) as caught:
        src.export(sha, "", tmp_path / "release")
    message = str(caught.value)
    assert message.startswith(
        f"vendor/lib is a git submodule (at {lib.git('rev-parse', 'HEAD')[:12]})"
    )
    assert "does not fetch submodules" in message
    assert not (tmp_path / "release").exists()  # nothing half-exported
    src.export(sha, "conf", tmp_path / "conf-only")  # a directory without one exports as before
    assert (tmp_path / "conf-only" / "site.ini").exists()


class TestResolveRef:
    """`source: {ref: ...}`: a branch follows, a tag or a sha is fixed, nothing else resolves."""

    def test_branches_tags_and_shas(self, remote: Remote, tmp_path: Path) -> None:
        first = remote.git("rev-parse", "HEAD")
        remote.git("tag", "-a", "-m", "release", "v1")  # annotated: peeled to its commit
        second = remote.commit("second", {"app.py": "print('v2')\n"})
        remote.git("branch", "develop", first)
        src = source_for(remote, tmp_path)
        src.fetch()
        assert src.resolve_ref("main") == (second, True)
        assert src.resolve_ref("develop") == (first, True)
        assert src.resolve_ref("refs/heads/develop") == (first, True)
        assert src.resolve_ref("v1") == (first, False)
        assert src.resolve_ref("refs/tags/v1") == (first, False)
        assert src.resolve_ref(first) == (first, False)
        assert src.resolve_ref(second[:9]) == (second, False)
        assert src.resolve_ref("nope") is None
        assert src.resolve_ref("0" * 40) is None
        blob = remote.git("rev-parse", "HEAD:app.py")
        assert src.resolve_ref(blob) is None  # an object, but not a commit

    def test_a_tag_wins_over_a_branch_of_the_same_name(
        self, remote: Remote, tmp_path: Path
    ) -> None:
        first = remote.git("rev-parse", "HEAD")
        remote.git("tag", "both")
        second = remote.commit("second", {"app.py": "print('v2')\n"})
        remote.git("branch", "both", second)
        src = source_for(remote, tmp_path)
        src.fetch()
        assert src.resolve_ref("both") == (first, False)
        assert src.resolve_ref("refs/heads/both") == (second, True)
