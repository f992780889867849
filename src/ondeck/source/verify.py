"""Signed-commit policy: may this environment deploy this commit? (layer L2)

An environment with `protect: {signed_by: [...]}` deploys only commits signed by
one of those keys. The controller calls `verify_commit()` on the desired revision
before a sync. git does the cryptography (`git verify-commit --raw`): allowed SSH
keys reach it as a temporary allowed-signers file; OpenPGP fingerprints are
checked here against gpg's status lines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import os
import re
import signal
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ondeck.errors import SourceError, UserError
from ondeck.source.git import _git_env, run_git

_TIMEOUT = 60.0

_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)

_EXPECTED = (
    "expected an SSH public key line like 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... "
    "admin@example.com' (the contents of ~/.ssh/id_ed25519.pub) or an OpenPGP key "
    "fingerprint of 40 hex digits, spaces allowed (see `gpg --fingerprint KEY`)"
)

_BAD_SIGNATURE = (
    "bad signature: the commit changed after it was signed, or the signature is corrupt"
)

# `ssh-keygen -Y verify` as relayed by git; "for PRINCIPAL" only when the key is allowed.
_SSH_GOOD = re.compile(
    r'^Good "git" signature (?:for .* )?with \S+ key (SHA256:\S+)$', re.MULTILINE
)


class _Kind(enum.Enum):
    """The signature format, read from the armor line of the commit's signature header."""

    SSH = "SSH"
    OPENPGP = "OpenPGP"
    X509 = "X.509"
    UNKNOWN = "unknown"


_ARMORS = {
    b"-----BEGIN SSH SIGNATURE-----": _Kind.SSH,
    b"-----BEGIN PGP SIGNATURE-----": _Kind.OPENPGP,
    b"-----BEGIN PGP MESSAGE-----": _Kind.OPENPGP,
    b"-----BEGIN SIGNED MESSAGE-----": _Kind.X509,
}


@dataclass(frozen=True)
class Verdict:
    """Whether a commit may be deployed, why, and which key signed it (None if none did)."""

    ok: bool
    reason: str
    signer: str | None


@dataclass(frozen=True)
class _SshKey:
    kind: str
    data: str
    comment: str

    @property
    def fingerprint(self) -> str:
        """`SHA256:…` exactly as `ssh-keygen -l` and git print it."""
        digest = hashlib.sha256(base64.b64decode(self.data)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return " ".join(p for p in (self.kind, self.data, self.comment) if p)


@dataclass(frozen=True)
class _Output:
    code: int
    text: str


# -- the allowed list ---------------------------------------------------------


def parse_allowed(entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `signed_by` into (SSH public key lines, uppercase GPG fingerprints)."""
    ssh: list[str] = []
    gpg: list[str] = []
    for index, entry in enumerate(entries):
        if not entry.strip():
            raise _reject(index, entry, "the entry is empty")
        if re.fullmatch(r"[0-9A-Fa-f\s]+", entry):
            gpg.append(_fingerprint(index, entry))
        else:
            ssh.append(_ssh_key(index, entry).line)
    return ssh, gpg


def _reject(index: int, entry: str, problem: str) -> UserError:
    shown = entry if len(entry) <= 40 else entry[:37] + "..."
    return UserError(f"protect.signed_by[{index}] {shown!r}: {problem}; {_EXPECTED}")


def _ssh_key(index: int, entry: str) -> _SshKey:
    if "PRIVATE KEY" in entry:
        raise _reject(
            index, "<private key>", "this is a private key, never share it: use the .pub file"
        )
    if any(ord(c) < 32 for c in entry):
        raise _reject(index, entry, "control characters or line breaks are not allowed")
    kind, data, comment = [*entry.split(None, 2), "", ""][:3]
    if kind not in _SSH_KEY_TYPES:
        raise _reject(index, entry, f"{kind!r} is not a known SSH key type")
    if _blob_type(data) != kind:
        raise _reject(index, entry, f"the key data is not a valid {kind} key")
    return _SshKey(kind, data, comment.strip())


def _blob_type(data: str) -> str | None:
    """The key type named inside an SSH public key blob, or None when it is malformed."""
    try:
        blob = base64.b64decode(data, validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        return blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        return None


def _fingerprint(index: int, entry: str) -> str:
    hexes = "".join(entry.split()).upper()
    if len(hexes) in (8, 16):
        raise _reject(index, entry, "a short key id can be forged: give the full fingerprint")
    if len(hexes) != 40:
        raise _reject(index, entry, f"a fingerprint has 40 hex digits, not {len(hexes)}")
    return hexes


# -- the commit -----------------------------------------------------------------


def verify_commit(
    repo: Path, rev: str, allowed: Sequence[str], gnupg_home: Path | None = None
) -> Verdict:
    """Check that `rev` in `repo` (a git dir or work tree) is signed by an `allowed` key.

    Unsigned or badly signed commits give a failing `Verdict`, never an exception;
    a malformed `allowed` entry raises `UserError`, a missing `rev` `SourceError`.
    """
    ssh_lines, fingerprints = parse_allowed(allowed)
    ssh_keys = [_ssh_key(i, line) for i, line in enumerate(ssh_lines)]
    sha, body = _read_commit(repo, rev)
    kind = _signature_kind(sha, body)
    if kind is None:
        return Verdict(False, "not signed", None)
    if kind not in (_Kind.SSH, _Kind.OPENPGP):
        return Verdict(
            False, f"signed in {kind.value} format: only SSH and OpenPGP are accepted", None
        )
    output = _run_verify(repo, sha, ssh_keys, gnupg_home)
    if kind is _Kind.SSH:
        return _ssh_verdict(output, ssh_keys)
    return _gpg_verdict(output, fingerprints, gnupg_home)


def _repo_args(repo: Path) -> list[str]:
    # --git-dir for a bare mirror: works even where safe.bareRepository=explicit.
    return ["-C", str(repo)] if (repo / ".git").exists() else ["--git-dir", str(repo)]


def _read_commit(repo: Path, rev: str) -> tuple[str, bytes]:
    """(full sha, raw commit object) of `rev`; the name goes in on stdin, never as an option."""
    if "\n" in rev:
        raise SourceError(f"invalid revision {rev!r}")
    spec = f"{rev}^{{commit}}\n".encode()
    out = run_git([*_repo_args(repo), "cat-file", "--batch"], input=spec, timeout=_TIMEOUT)
    header, _, body = out.partition(b"\n")
    fields = header.decode("utf-8", "replace").split()
    if len(fields) != 3 or fields[1] != "commit":
        raise SourceError(f"revision {rev!r} not found in {repo}")
    return fields[0], body[: int(fields[2])]


def _signature_kind(sha: str, commit: bytes) -> _Kind | None:
    """The format of the signature git will check, or None for an unsigned commit."""
    # git reads the header of the repository's hash algorithm and ignores the other.
    wanted = b"gpgsig-sha256" if len(sha) == 64 else b"gpgsig"
    for line in commit.split(b"\n\n", 1)[0].split(b"\n"):
        name, _, value = line.partition(b" ")
        if name == wanted:
            return _ARMORS.get(value.strip(), _Kind.UNKNOWN)
    return None


def _run_verify(repo: Path, sha: str, ssh_keys: list[_SshKey], gnupg_home: Path | None) -> _Output:
    with tempfile.TemporaryDirectory(prefix="ondeck-verify-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(_allowed_signers(ssh_keys))
        argv = [
            "git",
            *_repo_args(repo),
            # Our list, not the user's or the mirror's, decides which SSH key is allowed.
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            # Trust is `allowed`, not the keyring's web of trust.
            "-c",
            "gpg.minTrustLevel=undefined",
            "verify-commit",
            "--raw",
            sha,
        ]
        return _run(argv, gnupg_home)


def _allowed_signers(keys: list[_SshKey]) -> str:
    # Principal "*": comments are free text, and principals are patterns. The comment
    # is kept out of the file too, so no entry can smuggle in options or lines.
    return "".join(f'* namespaces="git" {k.kind} {k.data}\n' for k in keys)


def _run(argv: list[str], gnupg_home: Path | None) -> _Output:
    env = _git_env()
    if gnupg_home is not None:
        env["GNUPGHOME"] = str(gnupg_home)
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError as exc:
        raise UserError("git is not installed (or not on PATH); ondeck needs it") from exc
    try:
        out, _ = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        raise SourceError(f"git verify-commit timed out after {_TIMEOUT:g}s") from exc
    return _Output(proc.returncode, out.decode("utf-8", "replace"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # git runs gpg or ssh-keygen in our session: stop them with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _unchecked(output: _Output) -> Verdict:
    tail = " ".join(output.text.strip().splitlines()[-3:]) or f"exit code {output.code}"
    return Verdict(False, f"the signature could not be checked: {tail}", None)


# -- SSH ----------------------------------------------------------------------


def _ssh_verdict(output: _Output, keys: list[_SshKey]) -> Verdict:
    good = _SSH_GOOD.search(output.text)
    if good is None:
        failed = "Signature verification failed" in output.text
        return Verdict(False, _BAD_SIGNATURE, None) if failed else _unchecked(output)
    fingerprint = good.group(1)
    names = {k.fingerprint: k.comment for k in keys}
    if output.code != 0 or fingerprint not in names:
        return Verdict(False, f"signed by an unknown key {fingerprint}", fingerprint)
    name = f" ({names[fingerprint]})" if names[fingerprint] else ""
    return Verdict(True, f"signed by SSH key {fingerprint}{name}", fingerprint)


# -- OpenPGP --------------------------------------------------------------------


def _gpg_status(text: str) -> dict[str, list[list[str]]]:
    """gpg's `[GNUPG:] KEYWORD ARGS` lines, by keyword; everything else is ignored."""
    status: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line.removeprefix("[GNUPG:] ").split(" ")
            status.setdefault(keyword, []).append(args)
    return status


def _who(args: list[str]) -> str:
    """`KEYID (User Name <mail>)` from the arguments of GOODSIG, BADSIG and friends."""
    keyid = args[0] if args else "?"
    user = unquote(" ".join(args[1:]))
    return f"{keyid} ({user})" if user else keyid


def _gpg_verdict(output: _Output, allowed: list[str], gnupg_home: Path | None) -> Verdict:
    status = _gpg_status(output.text)
    for keyword, problem in (
        ("BADSIG", "bad signature by GPG key {}: the commit changed after it was signed"),
        ("REVKEYSIG", "signed by GPG key {}, which has been revoked"),
        ("EXPKEYSIG", "signed by GPG key {}, which has expired"),
        ("EXPSIG", "the signature by GPG key {} has expired"),
    ):
        if keyword in status:
            return Verdict(False, problem.format(_who(status[keyword][0])), None)
    if "ERRSIG" in status:
        return _gpg_error(status, gnupg_home)
    if len(status.get("VALIDSIG", [])) != 1 or "GOODSIG" not in status:
        return _unchecked(output)
    return _gpg_good(output, status, allowed)


def _gpg_error(status: dict[str, list[list[str]]], gnupg_home: Path | None) -> Verdict:
    args = status["ERRSIG"][0]
    # ERRSIG KEYID PKALGO HASHALGO CLASS TIME RC [FPR]
    key = args[6] if len(args) > 6 and args[6] != "-" else args[0]
    if "NO_PUBKEY" not in status:
        code = args[5] if len(args) > 5 else "?"
        return Verdict(
            False, f"the signature by GPG key {key} could not be checked (gpg code {code})", None
        )
    keyring = f"the keyring at {gnupg_home}" if gnupg_home else "the default GnuPG keyring"
    return Verdict(
        False,
        f"signed by GPG key {key}, whose public key is not in {keyring}: "
        "import it there (gpg --import) to check this signature",
        None,
    )


def _gpg_good(output: _Output, status: dict[str, list[list[str]]], allowed: list[str]) -> Verdict:
    # VALIDSIG FPR DATE TIME EXPIRE VERSION RESERVED PKALGO HASHALGO CLASS [PRIMARY-FPR]
    valid = status["VALIDSIG"][0]
    signing = valid[0]
    primary = valid[9] if len(valid) > 9 else signing
    user = unquote(" ".join(status["GOODSIG"][0][1:]))
    who = f"{primary} ({user})" if user else primary
    if primary not in allowed and signing not in allowed:
        return Verdict(False, f"GPG key {who} is not allowed", primary)
    if output.code != 0:
        return _unchecked(output)
    return Verdict(True, f"signed by GPG key {who}", primary)
