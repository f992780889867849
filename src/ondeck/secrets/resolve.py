"""The secrets of one app in one environment, from both sources, for the controller.

The host store gives values scoped to app/environment; the spec's age file
(`secrets: {file: ...}`, read at the revision being deployed) gives more. When
both define a name, the file in git wins: what a commit says is what runs, and
reverting the commit brings its values back. Fingerprints are keyed with the
host key, so `ondeck diff` and a service's fingerprint change with a value
without ever holding it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ondeck.errors import UserError
from ondeck.secrets import agefile, known
from ondeck.secrets.hoststore import HostStore, fingerprint, host_key
from ondeck.state.desired import NO_SECRETS, SecretEnv


def secrets_file(data: Mapping[str, Any], env: str | None) -> str | None:
    """The age file a parsed spec names for `env` (an overlay's wins), before validation;
    a malformed value is left for validation to report."""
    environments = data.get("environments")
    overlay = environments.get(env) if env and isinstance(environments, dict) else None
    for where in (overlay, data):
        block = where.get("secrets") if isinstance(where, dict) else None
        if isinstance(block, dict) and "file" in block:
            name = block["file"]
            return name if isinstance(name, str) else None
    return None


def file_names(text: bytes, filename: str) -> list[str]:
    """The names an age file defines; they are written in clear, no identity needed."""
    return sorted(agefile.parse(text, filename).values)


def load(state_dir: Path, app: str, env: str, file: tuple[str, bytes] | None = None) -> SecretEnv:
    """Every secret `app` may use in `env`: the host store's, then the age file's (which win)."""
    values: dict[str, str] = HostStore(state_dir).values(app, env)
    if file is not None:
        filename, text = file
        doc = agefile.parse(text, filename)
        if doc.values:
            values.update(agefile.decrypt(doc, _identities(state_dir, filename), filename))
    if not values:
        return NO_SECRETS
    known.remember(values.values())
    key = host_key(state_dir)
    prints = {name: fingerprint(key, name, value) for name, value in values.items()}
    return SecretEnv(values, prints)


def _identities(state_dir: Path, filename: str) -> list[agefile.Identity]:
    path = agefile.identity_path(state_dir)
    if not path.exists():
        raise UserError(
            f"{filename}: cannot decrypt: this host has no age identity ({path}); run "
            "`ondeck secret keygen` and encrypt the file to the key it prints "
            f"(`ondeck secret edit {filename} --recipient KEY`)"
        )
    return agefile.load_identities(path)
