"""The age-encrypted secrets file in git: `secrets: {file: secrets.age.yaml}`.

Names are clear (so validation and diffs can name them), each value is an
armored age message to every recipient the file lists. The controller decrypts
it with the host's identity (`ondeck secret keygen`); `ondeck secret encrypt`
and `ondeck secret edit` write it. A value left unchanged by an edit keeps its
ciphertext, so a commit's diff shows exactly which secrets changed.
Encryption is pyrage's (the age reference design in Rust), never ours.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyrage
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ondeck.errors import UserError
from ondeck.secrets.hoststore import check_name, check_value, secrets_dir, write_private

IDENTITY_FILE = "identity.txt"
ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
HEADER = (
    "# Secrets, encrypted with age (https://age-encryption.org) to the recipients below.\n"
    "# Edit with `ondeck secret edit FILE`; never put a value here in clear.\n"
)

Recipient = pyrage.x25519.Recipient | pyrage.ssh.Recipient
Identity = pyrage.x25519.Identity


@dataclass(frozen=True)
class AgeFile:
    """The file's content: recipients (public keys) and name -> armored ciphertext."""

    recipients: tuple[str, ...]
    values: Mapping[str, str] = field(default_factory=dict)

    def render(self) -> str:
        lines = [HEADER, "recipients:\n"]
        lines += [f"  - {json.dumps(r)}\n" for r in self.recipients]
        lines.append("secrets:" + ("\n" if self.values else " {}\n"))
        for name in sorted(self.values):
            body = "".join(f"    {line}\n" for line in self.values[name].strip().splitlines())
            lines.append(f"  {name}: |\n{body}")
        return "".join(lines)


# --- reading ---------------------------------------------------------------------------------


def parse(text: str | bytes, filename: str) -> AgeFile:
    """An `AgeFile` from its text; a malformed file is a `UserError` naming it."""
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as err:
        raise UserError(f"{filename}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("recipients"), list):
        raise UserError(
            f"{filename}: not an ondeck secrets file (it needs `recipients:` and `secrets:`); "
            "create one with `ondeck secret encrypt`"
        )
    values = data.get("secrets") or {}
    if not isinstance(values, dict):
        raise UserError(f"{filename}: `secrets:` must be a mapping of NAME: age message")
    for name, value in values.items():
        check_name(str(name))
        if not isinstance(value, str) or ARMOR_BEGIN not in value:
            raise UserError(
                f"{filename}: secret {name} is not an age message (a value in clear?); "
                "write values only with `ondeck secret edit` or `ondeck secret encrypt`"
            )
    recipients = tuple(str(r).strip() for r in data["recipients"])
    return AgeFile(recipients, {str(k): v for k, v in values.items()})


def read(path: Path) -> AgeFile:
    try:
        return parse(path.read_bytes(), str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such file; create it with `ondeck secret encrypt`") from err


def decrypt(doc: AgeFile, identities: Sequence[Identity], filename: str) -> dict[str, str]:
    """Every value in clear; an identity that cannot open one is a `UserError` naming the file."""
    if not identities:
        raise UserError(f"{filename}: no age identity to decrypt it with")
    out = {}
    for name, armored in doc.values.items():
        try:
            out[name] = pyrage.decrypt(armored.encode(), list(identities)).decode()
        except pyrage.DecryptError as err:
            raise UserError(
                f"{filename}: cannot decrypt secret {name}: it is not encrypted to this age "
                f"identity ({err}); re-encrypt the file to its public key "
                "(`ondeck secret keygen` prints the host's; then `ondeck secret edit "
                f"{filename} --recipient KEY`)"
            ) from err
        except UnicodeDecodeError as err:
            raise UserError(f"{filename}: secret {name} is not UTF-8 text") from err
    return out


# --- writing ---------------------------------------------------------------------------------


def parse_recipient(text: str) -> Recipient:
    """An age (`age1…`) or SSH (`ssh-ed25519 …`) public key."""
    text = text.strip()
    try:
        if text.startswith("ssh-"):
            return pyrage.ssh.Recipient.from_str(text)
        return pyrage.x25519.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError) as err:
        raise UserError(
            f"{text[:40]!r} is not an age public key (age1…) or an SSH public key"
        ) from err


def encrypt(value: str, recipients: Sequence[str]) -> str:
    """`value` as an armored age message readable by every recipient."""
    if not recipients:
        raise UserError("no recipients: give --recipient KEY (`ondeck secret keygen` prints one)")
    keys = [parse_recipient(r) for r in recipients]
    return pyrage.encrypt(value.encode(), keys, armored=True).decode()


def update(
    doc: AgeFile, values: Mapping[str, str | None], recipients: Sequence[str] | None = None
) -> AgeFile:
    """The file holding exactly the names of `values`: a value is encrypted to every recipient,
    None keeps that name's ciphertext (so a commit's diff shows only what changed)."""
    wanted = tuple(dict.fromkeys(recipients if recipients is not None else doc.recipients))
    out = {}
    for name, value in values.items():
        check_name(name)
        if value is not None:
            check_value(value)
            out[name] = encrypt(value, wanted)
        elif name in doc.values and wanted == doc.recipients:
            out[name] = doc.values[name]
        else:  # a bug in the caller: it must give the value to encrypt it again
            raise ValueError(f"no value for {name} to encrypt to the new recipients")
    return AgeFile(wanted, out)


def write(path: Path, doc: AgeFile) -> None:
    """Replace `path` atomically (values are ciphertext: the mode stays the repo's usual)."""
    write_private(path, doc.render().encode())
    path.chmod(0o644)


# --- the host's identity -----------------------------------------------------------------------


def identity_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / IDENTITY_FILE


def keygen(state_dir: Path) -> tuple[str, bool]:
    """The host's public key, creating its identity (mode 0600) the first time; (key, created)."""
    path = identity_path(state_dir)
    if path.exists():
        return str(load_identities(path)[0].to_public()), False
    secrets_dir(state_dir)
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    write_private(path, f"# ondeck host identity\n# public key: {public}\n{identity}\n".encode())
    return public, True


def load_identities(path: Path) -> list[Identity]:
    """The identities in an age identity file (`AGE-SECRET-KEY-…` lines, # comments)."""
    try:
        text = path.read_text()
    except FileNotFoundError as err:
        raise UserError(
            f"no age identity at {path}: run `ondeck secret keygen` (on the host) or pass "
            "--identity FILE"
        ) from err
    keys = []
    for raw in io.StringIO(text):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(pyrage.x25519.Identity.from_str(line))
            except (pyrage.IdentityError, ValueError) as err:
                raise UserError(f"{path}: not an age identity file") from err
    if not keys:
        raise UserError(f"{path}: holds no age identity")
    return list(keys)
