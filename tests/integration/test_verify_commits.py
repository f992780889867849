"""verify_commit against commits signed with the real ssh-keygen and gpg, read by real git."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ondeck.errors import SourceError, UserError
from ondeck.source import GitSource
from ondeck.source.verify import parse_allowed, verify_commit


def _run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        list(argv),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return out.stdout.decode().strip()


@dataclass(frozen=True)
class SshKey:
    public_file: Path
    line: str  # "ssh-ed25519 AAAA… comment", as an operator pastes it into signed_by
    fingerprint: str  # "SHA256:…", as ssh-keygen -l prints it


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str


class Repo:
    """A work tree whose commits are signed (or not) the way a developer's would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _run("git", "init", "--quiet", "-b", "main", str(path))

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        return _run("git", *args, cwd=self.path, env=env)

    def commit(self, message: str) -> str:
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def commit_ssh(self, message: str, key: SshKey) -> str:
        signing = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key.public_file}")
        self.git(*signing, "commit", "--quiet", "--allow-empty", "-S", "-m", message)
        return self.git("rev-parse", "HEAD")

    def commit_gpg(self, message: str, key: GpgKey) -> str:
        signing = ("-c", "gpg.program=gpg", "-c", f"user.signingkey={key.fingerprint}")
        self.git(
            *signing,
            "commit",
            "--quiet",
            "--allow-empty",
            "-S",
            "-m",
            message,
            env={"GNUPGHOME": str(key.home)},
        )
        return self.git("rev-parse", "HEAD")

    def tamper(self, sha: str) -> str:
        """A copy of commit `sha` with its message changed and its signature kept."""
        raw = self.git("cat-file", "commit", sha)
        forged = raw.rsplit("\n\n", 1)[0] + "\n\ndeploy the attacker's build\n"
        out = subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
            cwd=self.path,
            input=forged.encode(),
            check=True,
            capture_output=True,
        )
        return out.stdout.decode().strip()


@pytest.fixture(autouse=True)
def git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Isolate from the host's git config (tests may write to it); fix an identity."""
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Ada Lovelace")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "ada@example.org")
    yield config


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def _ssh_key(directory: Path, name: str, comment: str) -> SshKey:
    directory.mkdir(exist_ok=True)
    private = directory / name
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private))
    public = directory / f"{name}.pub"
    fingerprint = _run("ssh-keygen", "-l", "-f", str(public)).split()[1]
    return SshKey(public, public.read_text().strip(), fingerprint)


@pytest.fixture
def admin_ssh(tmp_path: Path) -> SshKey:
    return _ssh_key(tmp_path / "ssh", "admin", "admin@example.com")


@pytest.fixture
def intern_ssh(tmp_path: Path) -> SshKey:
    return _ssh_key(tmp_path / "ssh", "intern", "intern@example.com")


def _gnupg_home(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def _stop_agent(home: Path) -> None:
    # Key generation starts a gpg-agent for that home; do not leave it running.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


@pytest.fixture
def admin_gpg(tmp_path: Path) -> Iterator[GpgKey]:
    home = _gnupg_home(tmp_path / "gpg-admin")
    env = {"GNUPGHOME": str(home)}
    uid = "Admin <admin@example.com>"
    try:
        _run(
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
            env=env,
        )
        listing = _run("gpg", "--batch", "--with-colons", "--list-keys", uid, env=env)
        fingerprint = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
        yield GpgKey(home, fingerprint)
    finally:
        _stop_agent(home)


@pytest.fixture
def controller_keyring(tmp_path: Path, admin_gpg: GpgKey) -> Iterator[Path]:
    """A separate keyring holding only the admin's public key, imported and not trusted."""
    home = _gnupg_home(tmp_path / "gpg-controller")
    exported = _run(
        "gpg",
        "--batch",
        "--armor",
        "--export",
        admin_gpg.fingerprint,
        env={"GNUPGHOME": str(admin_gpg.home)},
    )
    (tmp_path / "admin.asc").write_text(exported + "\n")
    try:
        _run(
            "gpg", "--batch", "--import", str(tmp_path / "admin.asc"), env={"GNUPGHOME": str(home)}
        )
        yield home
    finally:
        _stop_agent(home)


def _spaced(fingerprint: str) -> str:
    """A fingerprint as `gpg --fingerprint` shows it: lowercase here, in groups of four."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, 40, 4)).lower()


class TestSshSignatures:
    def test_allowed_key_is_ok_and_named(self, repo: Repo, admin_ssh: SshKey) -> None:
        sha = repo.commit_ssh("release 1.4.2", admin_ssh)
        verdict = verify_commit(repo.path, sha, [admin_ssh.line])
        assert verdict.ok
        assert verdict.reason == f"signed by SSH key {admin_ssh.fingerprint} (admin@example.com)"
        assert verdict.signer == admin_ssh.fingerprint

    def test_one_of_several_allowed_keys_is_ok(
        self, repo: Repo, admin_ssh: SshKey, intern_ssh: SshKey
    ) -> None:
        sha = repo.commit_ssh("release", intern_ssh)
        allowed = [
            admin_ssh.line,
            "0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567",
            intern_ssh.line,
        ]
        assert verify_commit(repo.path, sha, allowed).ok

    def test_other_key_is_an_unknown_key(
        self, repo: Repo, admin_ssh: SshKey, intern_ssh: SshKey
    ) -> None:
        sha = repo.commit_ssh("sneaky release", intern_ssh)
        verdict = verify_commit(repo.path, sha, [admin_ssh.line])
        assert not verdict.ok
        assert verdict.reason == f"signed by an unknown key {intern_ssh.fingerprint}"
        assert verdict.signer == intern_ssh.fingerprint

    def test_unsigned_commit_is_not_signed(self, repo: Repo, admin_ssh: SshKey) -> None:
        sha = repo.commit("unsigned release")
        assert verify_commit(repo.path, sha, [admin_ssh.line]) == verify_commit(repo.path, sha, [])
        verdict = verify_commit(repo.path, sha, [admin_ssh.line])
        assert (verdict.ok, verdict.reason, verdict.signer) == (False, "not signed", None)

    def test_empty_allowed_list_accepts_no_signature(self, repo: Repo, admin_ssh: SshKey) -> None:
        sha = repo.commit_ssh("release", admin_ssh)
        verdict = verify_commit(repo.path, sha, [])
        assert not verdict.ok
        assert "unknown key" in verdict.reason

    def test_tampered_commit_is_a_bad_signature(self, repo: Repo, admin_ssh: SshKey) -> None:
        forged = repo.tamper(repo.commit_ssh("release", admin_ssh))
        verdict = verify_commit(repo.path, forged, [admin_ssh.line])
        assert not verdict.ok
        assert verdict.reason.startswith("bad signature")
        assert verdict.signer is None

    def test_global_git_config_cannot_widen_the_allowed_list(
        self, repo: Repo, git_identity: Path, admin_ssh: SshKey, intern_ssh: SshKey, tmp_path: Path
    ) -> None:
        sha = repo.commit_ssh("release", intern_ssh)
        loose = tmp_path / "loose_signers"
        loose.write_text(f'* namespaces="git" {intern_ssh.line}\n')
        git_identity.write_text(f'[gpg "ssh"]\n\tallowedSignersFile = {loose}\n')
        repo.git("config", "gpg.ssh.allowedSignersFile", str(loose))  # the repo's own config too
        assert not verify_commit(repo.path, sha, [admin_ssh.line]).ok
        assert verify_commit(repo.path, sha, [intern_ssh.line]).ok


class TestGpgSignatures:
    def test_allowed_fingerprint_is_ok(self, repo: Repo, admin_gpg: GpgKey) -> None:
        sha = repo.commit_gpg("release", admin_gpg)
        verdict = verify_commit(repo.path, sha, [_spaced(admin_gpg.fingerprint)], admin_gpg.home)
        assert verdict.ok
        assert (
            verdict.reason
            == f"signed by GPG key {admin_gpg.fingerprint} (Admin <admin@example.com>)"
        )
        assert verdict.signer == admin_gpg.fingerprint

    def test_fingerprint_not_allowed(
        self, repo: Repo, admin_gpg: GpgKey, admin_ssh: SshKey
    ) -> None:
        sha = repo.commit_gpg("release", admin_gpg)
        other = "0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567"
        verdict = verify_commit(repo.path, sha, [other, admin_ssh.line], admin_gpg.home)
        assert not verdict.ok
        assert verdict.reason.startswith(f"GPG key {admin_gpg.fingerprint} ")
        assert verdict.reason.endswith("is not allowed")

    def test_missing_public_key_says_where_to_import_it(
        self, repo: Repo, admin_gpg: GpgKey, tmp_path: Path
    ) -> None:
        sha = repo.commit_gpg("release", admin_gpg)
        empty = _gnupg_home(tmp_path / "gpg-empty")
        try:
            verdict = verify_commit(repo.path, sha, [admin_gpg.fingerprint], empty)
        finally:
            _stop_agent(empty)
        assert not verdict.ok
        assert admin_gpg.fingerprint in verdict.reason
        assert f"public key is not in the keyring at {empty}" in verdict.reason
        assert "gpg --import" in verdict.reason

    def test_imported_untrusted_key_is_enough_whatever_the_trust_config(
        self, repo: Repo, admin_gpg: GpgKey, controller_keyring: Path, git_identity: Path
    ) -> None:
        sha = repo.commit_gpg("release", admin_gpg)
        git_identity.write_text("[gpg]\n\tminTrustLevel = ultimate\n")
        verdict = verify_commit(repo.path, sha, [admin_gpg.fingerprint], controller_keyring)
        assert verdict.ok, verdict.reason

    def test_tampered_commit_is_a_bad_signature(self, repo: Repo, admin_gpg: GpgKey) -> None:
        forged = repo.tamper(repo.commit_gpg("release", admin_gpg))
        verdict = verify_commit(repo.path, forged, [admin_gpg.fingerprint], admin_gpg.home)
        assert not verdict.ok
        assert verdict.reason.startswith("bad signature by GPG key")
        assert verdict.signer is None


def _clone_mirror(origin: Path, mirror: Path) -> None:
    _run("git", "clone", "--quiet", "--mirror", str(origin), str(mirror))


def _fetch_mirror(origin: Path, mirror: Path) -> None:
    GitSource(str(origin), mirror, branch="main").fetch()


@pytest.mark.parametrize(
    "make_mirror", [_clone_mirror, _fetch_mirror], ids=["clone-mirror", "GitSource"]
)
def test_bare_mirror_verifies_like_the_work_tree(
    make_mirror: Callable[[Path, Path], None],
    repo: Repo,
    tmp_path: Path,
    admin_ssh: SshKey,
    intern_ssh: SshKey,
    controller_keyring: Path,
    admin_gpg: GpgKey,
) -> None:
    shas = {
        "ssh-admin": repo.commit_ssh("a", admin_ssh),
        "ssh-intern": repo.commit_ssh("b", intern_ssh),
        "unsigned": repo.commit("c"),
        "gpg-admin": repo.commit_gpg("d", admin_gpg),
    }
    mirror = tmp_path / "mirror.git"
    make_mirror(repo.path, mirror)
    allowed = [admin_ssh.line, admin_gpg.fingerprint]
    for name, sha in shas.items():
        in_tree = verify_commit(repo.path, sha, allowed, controller_keyring)
        assert verify_commit(mirror, sha, allowed, controller_keyring) == in_tree, name
    assert verify_commit(mirror, "main", allowed, controller_keyring).ok
    assert [verify_commit(mirror, s, allowed, controller_keyring).ok for s in shas.values()] == [
        True,
        False,
        False,
        True,
    ]


class TestCommitsThatCannotQualify:
    def test_x509_signature_is_refused_without_running_gpgsm(
        self, repo: Repo, admin_ssh: SshKey
    ) -> None:
        raw = repo.git("cat-file", "commit", repo.commit("base"))
        headers, message = raw.split("\n\n", 1)
        armor = " -----BEGIN SIGNED MESSAGE-----\n MIAGCSqGSIb3DQEHAqCAMIACAQEx\n -----END SIGNED MESSAGE-----"
        signed = f"{headers}\ngpgsig{armor}\n\n{message}\n"
        sha = (
            subprocess.run(
                ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
                cwd=repo.path,
                input=signed.encode(),
                check=True,
                capture_output=True,
            )
            .stdout.decode()
            .strip()
        )
        verdict = verify_commit(repo.path, sha, [admin_ssh.line])
        assert not verdict.ok
        assert "X.509" in verdict.reason

    def test_unknown_revision_is_a_source_error(self, repo: Repo, admin_ssh: SshKey) -> None:
        repo.commit("base")
        with pytest.raises(SourceError, match="not found"):
            verify_commit(repo.path, "no-such-branch", [admin_ssh.line])

    def test_option_like_revision_is_just_not_found(self, repo: Repo) -> None:
        repo.commit("base")
        with pytest.raises(SourceError, match="not found"):
            verify_commit(repo.path, "--output=/tmp/owned", [])

    def test_malformed_allowed_entry_raises_before_reading_git(self, tmp_path: Path) -> None:
        with pytest.raises(UserError, match=r"signed_by\[1\]"):
            verify_commit(tmp_path / "not-a-repo", "HEAD", ["A" * 40, "ssh-ed25519"])


class TestParseAllowed:
    def test_splits_and_normalizes(self, admin_ssh: SshKey) -> None:
        fingerprint = "04EA1FDEB6679C177B1E6F0DED6B0E48041C5853"
        ssh, gpg = parse_allowed([f"  {admin_ssh.line}  ", _spaced(fingerprint), fingerprint])
        assert ssh == [admin_ssh.line]
        assert gpg == [fingerprint, fingerprint]

    def test_empty_list_is_valid(self) -> None:
        assert parse_allowed([]) == ([], [])

    @pytest.mark.parametrize(
        ("entry", "problem"),
        [
            ("", "empty"),
            ("admin@example.com", "not a known SSH key type"),
            ("ssh-ed25519", "not a valid ssh-ed25519 key"),
            ("ssh-ed25519 not*base64 me", "not a valid ssh-ed25519 key"),
            # A genuine ed25519 blob announced as RSA.
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAkX/dOVUyVZKFzfjS0GAH8ltZ2ZAvAzy8VOiiJzJ2bd",
                "not a valid ssh-rsa",
            ),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not a known SSH key type"),
            ("ED6B0E48041C5853", "short key id"),
            ("041C5853", "short key id"),
            ("04EA1FDEB6679C177B1E6F0DED6B0E48041C585", "40 hex digits, not 39"),
            ("0xED6B0E48041C5853", "not a known SSH key type"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "private key"),
        ],
    )
    def test_bad_entries_say_what_a_good_one_looks_like(self, entry: str, problem: str) -> None:
        with pytest.raises(UserError) as caught:
            parse_allowed([entry])
        message = str(caught.value)
        assert message.startswith("protect.signed_by[0]")
        assert problem in message
        assert "ssh-ed25519 AAAA" in message
        assert "40 hex digits" in message

    def test_line_break_cannot_smuggle_a_second_key(
        self, admin_ssh: SshKey, intern_ssh: SshKey
    ) -> None:
        with pytest.raises(UserError, match="line breaks"):
            parse_allowed([f'{admin_ssh.line}\n* namespaces="git" {intern_ssh.line}'])

    def test_private_key_is_not_echoed(self) -> None:
        secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAASECRET"
        with pytest.raises(UserError) as caught:
            parse_allowed([secret])
        assert "SECRET" not in str(caught.value)
