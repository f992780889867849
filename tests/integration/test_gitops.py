"""The write path against real git: a bare repository as the remote and clones of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ondeck import gitops
from ondeck.errors import UserError
from ondeck.source.write import Workspace, add_note, push_notes
from ondeck.spec.edit import effective

SPEC = """\
# The shop, everywhere.
app: shop
services:
  web:
    command: ["python3", "app.py"]
    version: "1.4.2"   # the base
  api:
    command: ["python3", "api.py"]
    version: "2.0.0"
environments:
  staging:
    services: {web: {replicas: 1}}
  production:
    services:
      web:
        version: "1.4.1"
"""


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(autouse=True)
def git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate from the host's git config; commits by a fixed identity unless a test unsets it."""
    config = tmp_path / "gitconfig"
    config.write_text("[init]\n\tdefaultBranch = main\n[user]\n\tuseConfigOnly = true\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Ada Lovelace")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "ada@example.org")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository holding one commit with SPEC, as the shared remote."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "--quiet", str(bare), str(seed))
    (seed / "ondeck.yaml").write_text(SPEC)
    (seed / "README.md").write_text("shop\n")
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "first")
    git(seed, "push", "--quiet", "origin", "main")
    return bare


def clone(origin: Path, name: str) -> Path:
    dest = origin.parent / name
    git(origin.parent, "clone", "--quiet", str(origin), str(dest))
    return dest


def remote_spec(origin: Path) -> str:
    return git(origin, "show", "main:ondeck.yaml") + "\n"


def subject(repo: Path, rev: str = "HEAD") -> str:
    return git(repo, "show", "-s", "--format=%s", rev)


class TestSetField:
    def test_commit_in_a_checkout(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        result = gitops.set_field(str(alice), [("web", "1.4.3")], "version", "staging", push=False)
        assert result.sha == git(alice, "rev-parse", "HEAD")
        assert result.message == "deploy(web): 1.4.2 -> 1.4.3 [staging]"
        assert result.changes == (gitops.Change("web", "version", "staging", "1.4.2", "1.4.3"),)
        assert not result.pushed
        diff = git(alice, "diff", "--unified=0", "HEAD~1", "--", "ondeck.yaml").splitlines()
        assert diff[-2:] == [
            "-    services: {web: {replicas: 1}}",
            '+    services: {web: {replicas: 1, version: "1.4.3"}}',
        ]
        assert remote_spec(origin) == SPEC  # not pushed

    def test_push_from_a_checkout(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        result = gitops.set_field(str(alice), [("web", "1.4.3")], "version", None, push=True)
        assert result.pushed
        assert result.message == "deploy(web): 1.4.2 -> 1.4.3"
        assert git(origin, "rev-parse", "main") == result.sha
        assert effective(remote_spec(origin), "web", "version", None) == "1.4.3"

    @pytest.mark.parametrize("form", ["path", "file-url"])
    def test_push_to_a_remote(self, origin: Path, form: str) -> None:
        target = str(origin) if form == "path" else origin.as_uri()
        result = gitops.set_field(
            target, [("web", "1.5.0"), ("api", "2.0.1")], "version", "production", push=True
        )
        assert result.sha == git(origin, "rev-parse", "main")
        assert result.message == (
            "deploy: web 1.5.0, api 2.0.1 [production]\n\n"
            "web: version 1.4.1 -> 1.5.0\n"
            "api: version 2.0.0 -> 2.0.1"
        )
        text = remote_spec(origin)
        assert effective(text, "api", "version", "production") == "2.0.1"
        assert effective(text, "api", "version", None) == "2.0.0"

    def test_a_remote_needs_push(self, origin: Path) -> None:
        with pytest.raises(UserError, match="add --push"):
            gitops.set_field(str(origin), [("web", "9")], "version", None, push=False)

    def test_unchanged_is_a_no_op(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        head = git(alice, "rev-parse", "HEAD")
        # staging runs the base's 1.4.2 already: nothing to write.
        result = gitops.set_field(str(alice), [("web", "1.4.2")], "version", "staging", push=True)
        assert (result.sha, result.changes, result.pushed) == (None, (), False)
        assert "already runs" in result.message
        assert git(alice, "rev-parse", "HEAD") == head

    def test_dirty_tree_is_refused(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        (alice / "README.md").write_text("edited\n")
        with pytest.raises(UserError, match="commit or stash your changes first"):
            gitops.set_field(str(alice), [("web", "2")], "version", None, push=False)

    def test_unknown_service_lists_the_services(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with pytest.raises(UserError, match=r"unknown service 'wbe' .*services: web, api"):
            gitops.set_field(str(alice), [("wbe", "2")], "version", None, push=False)

    def test_unknown_environment(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with pytest.raises(UserError, match="unknown environment 'prod'"):
            gitops.set_field(str(alice), [("web", "2")], "version", "prod", push=False)

    def test_image_with_an_author(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        result = gitops.set_field(
            str(alice),
            [("web", "ghcr.io/acme/shop:1.4.3")],
            "image",
            None,
            push=False,
            author="Grace Hopper <grace@example.org>",
        )
        assert result.message == "deploy(web): unset -> ghcr.io/acme/shop:1.4.3"
        assert git(alice, "show", "-s", "--format=%an <%ae>|%cn") == (
            "Grace Hopper <grace@example.org>|Ada Lovelace"
        )

    def test_without_a_git_identity_ondeck_commits(
        self, origin: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        alice = clone(origin, "alice")
        for role in ("AUTHOR", "COMMITTER"):
            monkeypatch.delenv(f"GIT_{role}_NAME")
            monkeypatch.delenv(f"GIT_{role}_EMAIL")
        gitops.set_field(str(alice), [("web", "2")], "version", None, push=False)
        assert git(alice, "show", "-s", "--format=%an <%ae>|%cn <%ce>") == (
            "ondeck <ondeck@localhost>|ondeck <ondeck@localhost>"
        )


class TestConcurrentPushers:
    def test_second_push_is_rebased(self, origin: Path) -> None:
        with Workspace.open(str(origin)) as first, Workspace.open(str(origin)) as second:
            first.write(first.read().replace('"1.4.2"', '"1.4.3"'))
            second.write(second.read().replace('"2.0.0"', '"2.1.0"'))
            assert first.commit("web") is not None
            assert second.commit("api") is not None
            first.push()
            second.push()  # rejected as non-fast-forward, rebased, pushed
            assert second.is_ancestor(first.head(), second.head())
        text = remote_spec(origin)
        assert effective(text, "web", "version", None) == "1.4.3"
        assert effective(text, "api", "version", None) == "2.1.0"
        assert git(origin, "log", "--format=%s", "main").splitlines() == ["api", "web", "first"]
        assert not first.root.exists()  # the temporary clones are gone

    def test_stale_checkout_is_rebased(self, origin: Path) -> None:
        alice, bob = clone(origin, "alice"), clone(origin, "bob")
        gitops.set_field(str(alice), [("web", "1.4.3")], "version", None, push=True)
        result = gitops.set_field(str(bob), [("api", "2.1.0")], "version", None, push=True)
        assert result.sha == git(origin, "rev-parse", "main") == git(bob, "rev-parse", "HEAD")
        assert subject(origin, "main~1") == "deploy(web): 1.4.2 -> 1.4.3"

    def test_conflicting_change_is_refused(self, origin: Path) -> None:
        alice, bob = clone(origin, "alice"), clone(origin, "bob")
        gitops.set_field(str(alice), [("web", "1.4.3")], "version", None, push=True)
        with pytest.raises(UserError, match=r"others changed ondeck\.yaml on origin/main"):
            gitops.set_field(str(bob), [("web", "1.5.0")], "version", None, push=True)
        assert git(bob, "status", "--porcelain") == ""  # no rebase left half done
        assert subject(bob) == "deploy(web): 1.4.2 -> 1.5.0"  # bob's commit kept locally

    def test_no_remote_to_push_to(self, tmp_path: Path) -> None:
        lonely = tmp_path / "lonely"
        git(tmp_path, "init", "--quiet", str(lonely))
        (lonely / "ondeck.yaml").write_text(SPEC)
        git(lonely, "add", "ondeck.yaml")
        git(lonely, "commit", "--quiet", "-m", "first")
        with pytest.raises(UserError, match="no remote to push to"):
            gitops.set_field(str(lonely), [("web", "2")], "version", None, push=True)


class TestPromote:
    def test_staging_to_production(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        code = git(alice, "rev-parse", "HEAD")  # staging pins nothing: it runs this code
        gitops.set_field(str(alice), [("api", "2.1.0")], "version", "staging", push=False)
        result = gitops.promote(str(alice), "staging", "production", None, push=True)
        assert result.message == (
            "promote: staging -> production\n\n"
            "web: version 1.4.1 -> 1.4.2\n"
            f"web: source.ref unset -> {code}\n"
            "api: version 2.0.0 -> 2.1.0\n"
            f"api: source.ref unset -> {code}"
        )
        text = remote_spec(origin)
        assert effective(text, "web", "version", "production") == "1.4.2"
        assert effective(text, "api", "version", "production") == "2.1.0"
        assert effective(text, "web", "source.ref", "production") == code
        assert effective(text, "web", "source.ref", "staging") is None  # staging still follows
        again = gitops.promote(str(alice), "staging", "production", None, push=True)
        assert again.sha is None  # the promote commit changed no code: the same pin

    def test_a_followed_branch_is_pinned_to_its_code_commit(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        (alice / "app.py").write_text("print('two')\n")
        git(alice, "add", "app.py")
        git(alice, "commit", "-q", "-m", "code two")
        two = git(alice, "rev-parse", "HEAD")
        gitops.set_field(str(alice), [("web", "main")], "source.ref", "staging", push=True)
        result = gitops.promote(str(alice), "staging", "production", ["web"], push=True)
        assert result.changes[-1] == gitops.Change("web", "source.ref", "production", None, two)
        text = remote_spec(origin)
        assert effective(text, "web", "source.ref", "production") == two
        assert effective(text, "web", "source.ref", "staging") == "main"
        # The pin is written beside the version, and a rollback takes exactly it back.
        diff = git(alice, "diff", "HEAD~1", "--", "ondeck.yaml").splitlines()
        added = [ln.strip("+ ").replace('"', "") for ln in diff if ln.startswith("+ ")]
        assert added == ["version: 1.4.2", "source:", f"ref: {two}"]
        back = gitops.rollback(str(alice), "production", None, push=True)
        assert ("web", "source.ref") in {(c.service, c.field) for c in back.changes}
        text = remote_spec(origin)
        assert effective(text, "web", "source.ref", "production") is None
        assert effective(text, "web", "source.ref", "staging") == "main"

    def test_a_tag_is_pinned_to_exactly_its_commit(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        gitops.set_field(str(alice), [("api", "2.1.0")], "version", "staging", push=True)
        tagged = git(alice, "rev-parse", "HEAD")  # a spec-only commit: still what the tag names
        git(alice, "tag", "-a", "-m", "release", "v2")
        git(alice, "push", "-q", "origin", "v2")
        gitops.set_field(str(alice), [("web", "v2")], "source.ref", "staging", push=True)
        gitops.promote(str(alice), "staging", "production", ["web"], push=True)
        assert effective(remote_spec(origin), "web", "source.ref", "production") == tagged

    def test_an_app_repo_pin_copies_repo_path_and_a_full_sha(
        self, origin: Path, tmp_path: Path
    ) -> None:
        app = tmp_path / "app"
        git(tmp_path, "init", "-q", "-b", "main", str(app))
        (app / "a.txt").write_text("a\n")
        git(app, "add", "a.txt")
        git(app, "commit", "-q", "-m", "app")
        sha = git(app, "rev-parse", "HEAD")
        git(app, "tag", "v1")
        alice = clone(origin, "alice")
        text = (
            (alice / "ondeck.yaml")
            .read_text()
            .replace(
                "    services: {web: {replicas: 1}}",
                f"    services: {{web: {{replicas: 1, source: {{repo: '{app}', ref: v1, path: src}}}}}}",
            )
        )
        (alice / "ondeck.yaml").write_text(text)
        git(alice, "commit", "-q", "-am", "staging takes its code from the app repo")
        result = gitops.promote(str(alice), "staging", "production", ["web"], push=False)
        moved = {c.field: c.new for c in result.changes}
        assert moved == {
            "version": "1.4.2",
            "source.ref": sha,
            "source.repo": str(app),
            "source.path": "src",
        }
        with pytest.raises(UserError, match=f"'nope' names no branch or tag in {app}"):
            gitops.set_field(str(alice), [("web", "nope")], "source.ref", "staging", push=False)

    def test_set_ref_writes_one_line_and_refuses_a_bad_ref(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        git(alice, "tag", "v1.4.2")
        git(alice, "push", "-q", "origin", "v1.4.2")
        result = gitops.set_field(
            str(alice), [("web", "v1.4.2")], "source.ref", "production", push=False
        )
        assert result.message == "deploy(web): unset -> v1.4.2 [production]"
        text = (alice / "ondeck.yaml").read_text()
        assert effective(text, "web", "source.ref", "production") == "v1.4.2"
        assert effective(text, "web", "version", "production") == "1.4.1"
        assert git(alice, "diff", "--numstat", "HEAD~1").split()[:2] == ["2", "0"]
        with pytest.raises(UserError, match="is not a git ref"):
            gitops.set_field(str(alice), [("web", "main~1")], "source.ref", None, push=False)
        with pytest.raises(UserError, match="refusing to pin web to 'v9': 'v9' names no branch"):
            gitops.set_field(str(alice), [("web", "v9")], "source.ref", None, push=False)

    def test_one_service(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        result = gitops.promote(str(alice), "staging", "production", ["web"], push=False)
        assert [(c.service, c.field) for c in result.changes] == [
            ("web", "version"),
            ("web", "source.ref"),
        ]
        with pytest.raises(UserError, match="unknown service 'db'"):
            gitops.promote(str(alice), "staging", "production", ["db"], push=False)


class TestRollback:
    def test_revert_the_last_deploy_of_an_environment(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        deploy = gitops.set_field(
            str(alice), [("web", "1.4.3")], "version", "production", push=False
        )
        gitops.set_field(str(alice), [("api", "3.0.0")], "version", "staging", push=False)
        assert deploy.sha is not None
        result = gitops.rollback(str(alice), "production", None, push=True)
        short = deploy.sha[:12]
        expected = f"rollback: revert {short} (deploy(web): 1.4.1 -> 1.4.3 [production])"
        assert subject(alice) == expected
        assert result.changes == (gitops.Change("web", "version", "production", "1.4.3", "1.4.1"),)
        assert result.pushed and result.sha == git(origin, "rev-parse", "main")
        text = (alice / "ondeck.yaml").read_text()
        assert effective(text, "web", "version", "production") == "1.4.1"
        assert effective(text, "api", "version", "staging") == "3.0.0"  # untouched

    def test_revert_head_without_an_environment(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        gitops.set_field(str(alice), [("web", "1.4.3")], "version", None, push=False)
        result = gitops.rollback(str(alice), None, None, push=False, author="Op <op@example.org>")
        assert subject(alice).startswith("rollback: revert ")
        assert git(alice, "show", "-s", "--format=%ae") == "op@example.org"
        assert (alice / "ondeck.yaml").read_text() == SPEC
        assert result.changes == (gitops.Change("web", "version", None, "1.4.3", "1.4.2"),)

    def test_a_revert_to_an_invalid_spec_is_refused(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        (alice / "ondeck.yaml").write_text(SPEC.replace("replicas: 1", "replicas: many"))
        git(alice, "commit", "--quiet", "-am", "broken")
        (alice / "ondeck.yaml").write_text(SPEC)
        git(alice, "commit", "--quiet", "-am", "fixed")
        with pytest.raises(UserError, match=r"(?s)refusing to rollback: revert .*replicas"):
            gitops.rollback(str(alice), None, None, push=False)
        assert subject(alice) == "fixed"
        assert git(alice, "status", "--porcelain") == ""

    def test_nothing_to_revert(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with pytest.raises(UserError, match="nothing to roll back"):
            gitops.rollback(str(alice), "staging", None, push=False)

    def test_to_a_revision(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        good = git(alice, "rev-parse", "HEAD")
        gitops.set_field(str(alice), [("web", "1.4.3")], "version", "production", push=False)
        gitops.set_field(str(alice), [("web", "1.4.4")], "version", "production", push=False)
        result = gitops.rollback(str(alice), "production", good, push=False)
        assert result.message == f"rollback(web): 1.4.4 -> 1.4.1 [production] (as of {good[:12]})"
        text = (alice / "ondeck.yaml").read_text()
        assert effective(text, "web", "version", "production") == "1.4.1"
        assert gitops.rollback(str(alice), "production", good, push=False).sha is None

    def test_to_a_revision_outside_the_branch(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        git(alice, "checkout", "--quiet", "-b", "side")
        side = gitops.set_field(str(alice), [("web", "9.9.9")], "version", None, push=False).sha
        git(alice, "checkout", "--quiet", "main")
        assert side is not None
        with pytest.raises(UserError, match="is not an ancestor of main"):
            gitops.rollback(str(alice), None, side, push=False)


class TestNotes:
    def test_notes_are_appended_and_pushed(self, origin: Path) -> None:
        alice, bob = clone(origin, "alice"), clone(origin, "bob")
        head = git(alice, "rev-parse", "HEAD")
        add_note(alice, head, "synced to production")
        add_note(alice, head, "healthy after 12s")
        assert push_notes(alice)
        add_note(bob, head, "synced to staging")  # bob never fetched alice's notes
        assert push_notes(bob)
        shown = git(origin, "notes", "--ref", "ondeck", "show", head).splitlines()
        assert set(shown) == {"synced to production", "healthy after 12s", "synced to staging"}

    def test_refused_push_is_false(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        add_note(alice, "HEAD", "synced")
        hook = origin / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho read-only >&2\nexit 1\n")
        hook.chmod(0o755)
        assert push_notes(alice) is False

    def test_unreachable_remote_is_false(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        add_note(alice, "HEAD", "synced")
        git(alice, "remote", "set-url", "origin", str(origin.parent / "missing.git"))
        assert push_notes(alice) is False


class TestWorkspace:
    def test_show_log_and_head(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with Workspace.open(str(alice)) as ws:
            first = ws.head()
            assert ws.show(first, "ondeck.yaml") == SPEC
            assert ws.show(first, "missing.txt") is None
            ws.write(SPEC.replace("1.4.2", "1.4.3"))
            sha = ws.commit("bump")
            assert sha == ws.head() != first
            assert [c.message for c in ws.log(5)] == ["bump", "first"]
            assert ws.log(1)[0].author == "Ada Lovelace <ada@example.org>"
            assert ws.commit("nothing") is None
        assert alice.exists()  # a checkout is worked on in place, never removed

    def test_revert_returns_the_new_head(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with Workspace.open(str(alice)) as ws:
            ws.write(SPEC.replace("1.4.2", "1.4.3"))
            bump = ws.commit("bump")
            assert bump is not None
            sha = ws.revert(bump)
            assert sha == ws.head()
            assert ws.read() == SPEC
            assert subject(alice) == 'Revert "bump"'

    def test_branch_must_match_the_checkout(self, origin: Path) -> None:
        alice = clone(origin, "alice")
        with pytest.raises(UserError, match="is on branch 'main', not 'prod'"):
            Workspace.open(str(alice), branch="prod")

    def test_subdirectory_path(self, tmp_path: Path) -> None:
        repo = tmp_path / "mono"
        git(tmp_path, "init", "--quiet", str(repo))
        (repo / "deploy").mkdir()
        (repo / "deploy" / "ondeck.yaml").write_text(SPEC)
        git(repo, "add", "--all")
        git(repo, "commit", "--quiet", "-m", "first")
        gitops.set_field(str(repo), [("web", "2.0")], "version", None, push=False, path="deploy")
        assert (
            effective((repo / "deploy" / "ondeck.yaml").read_text(), "web", "version", None)
            == "2.0"
        )
        assert subject(repo) == "deploy(web): 1.4.2 -> 2.0"
        # The same directory named as the target instead of with --path.
        gitops.set_field(str(repo / "deploy"), [("web", "2.1")], "version", None, push=False)
        assert subject(repo) == "deploy(web): 2.0 -> 2.1"
